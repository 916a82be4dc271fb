"""The ``Weights`` value: an architecture, its params pytree and the input normalization."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, Mapping

import numpy as np

from jaxmouse.models import zoo


def check_params(arch: str, params: Mapping[str, Any], *, source: str = "params",
                 labels: Mapping[str, str] | None = None, values: bool = True) -> dict:
  """Validates a params pytree against ``arch``; names every missing, extra and misshaped tensor,
  every tensor that is not floating point and every one with NaN or infinite values.

  float16, bfloat16 and float64 tensors are cast to float32 (a float64 value beyond float32's
  range becomes inf and is refused). ``labels`` maps ``"layer/kernel"`` to the tensor's name in
  the source file, for the messages; ``values=False`` checks names and shapes only.

  Returns ``{module: {leaf: float32 ndarray}}`` (``zoo.param_shapes(arch)``'s structure).
  """
  expected = zoo.param_shapes(arch)
  flat_expected = {f"{layer}/{k}": s for layer, d in expected.items() for k, s in d.items()}
  flat_got = {}
  for layer, d in params.items():
    if isinstance(d, Mapping):
      for k, v in d.items():
        flat_got[f"{layer}/{k}"] = v
    else:
      flat_got[str(layer)] = d
  missing = [n for n in flat_expected if n not in flat_got]
  extra = [n for n in flat_got if n not in flat_expected]
  wrong = [f"{n}: expected {flat_expected[n]}, got {tuple(np.shape(v))}"
           for n, v in flat_got.items() if n in flat_expected and tuple(np.shape(v)) != flat_expected[n]]
  if missing or extra or wrong:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)}: {_listed(missing)}")
    if extra:
      parts.append(f"unexpected {len(extra)}: {_listed(extra)}")
    if wrong:
      parts.append(f"wrong shape {len(wrong)}: {_listed(wrong, '; ')}")
    raise ValueError(f"{source} does not hold {arch} weights: " + " | ".join(parts))
  if not values:
    return {layer: {k: flat_got[f"{layer}/{k}"] for k in d} for layer, d in expected.items()}
  return _check_values(expected, flat_got, source, labels or {})


def _listed(items, sep: str = ", ", most: int = 16) -> str:
  more = len(items) - most
  return sep.join(items[:most]) + (f"{sep}... ({more} more)" if more > 0 else "")


def _is_float(dtype) -> bool:
  dtype = np.dtype(dtype)
  return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"  # ml_dtypes.bfloat16


def _check_values(expected, flat_got, source, labels) -> dict:
  """float32 copies of every expected tensor; refuses non-float dtypes and non-finite values."""
  name = lambda n: f"{n} ({labels[n]})" if n in labels else n
  not_float, not_finite, out = [], [], {}
  for layer, d in expected.items():
    out[layer] = {}
    for k in d:
      n = f"{layer}/{k}"
      v = flat_got[n]
      dtype = getattr(v, "dtype", None)
      if dtype is None or not _is_float(dtype):
        not_float.append(f"{name(n)} {dtype}")
        continue
      with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
        a = np.asarray(v, np.float32)
      bad = int(a.size - np.count_nonzero(np.isfinite(a)))
      if bad:
        not_finite.append(f"{name(n)} ({bad} of {a.size})")
      out[layer][k] = a
  parts = []
  if not_float:
    parts.append(f"not floating point ({len(not_float)}): {', '.join(not_float)}")
  if not_finite:
    parts.append(f"NaN or infinite values after the cast to float32 ({len(not_finite)}): "
                 f"{', '.join(not_finite)}")
  if parts:
    raise ValueError(f"{source}: {len(not_float) + len(not_finite)} weight tensor(s) are "
                     "unusable: " + " | ".join(parts))
  return out


def fingerprint(arch: str, normalization: str, params: Mapping[str, Mapping[str, Any]]) -> str:
  """sha256 of the architecture, normalization and every parameter's float32 bytes."""
  h = hashlib.sha256(f"{arch}|{normalization}".encode())
  for layer in sorted(params):
    for k in sorted(params[layer]):
      a = np.ascontiguousarray(params[layer][k], np.float32)
      h.update(f"|{layer}/{k}{a.shape}".encode())
      h.update(a.tobytes())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Weights:
  """A CNN's weights and how its inputs are normalized.

  Attributes:
    arch: one of ``jaxmouse.models.zoo.ARCHS`` (``"vgg16"``, ``"resnet18"``, ``"vit_b_16"``, ...).
    params: ``{module: {leaf: array}}`` float32 as ``zoo.param_shapes(arch)`` (VGG:
      ``{layer: {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)}}``; kernels HWIO).
    normalization: ``"torchvision"`` (0-1, ImageNet mean/std) or ``"caffe"`` (BGR minus means, 0-255).
    metadata: provenance, e.g. ``source``, ``source_sha256``, ``seed``; saved as JSON.
  """

  arch: str
  params: Mapping[str, Mapping[str, np.ndarray]]
  normalization: str
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    zoo.check_arch(self.arch)
    if self.normalization not in zoo.NORMALIZATIONS:
      raise ValueError(
          f"unknown normalization {self.normalization!r}; expected one of {zoo.NORMALIZATIONS}")
    object.__setattr__(self, "params", check_params(self.arch, self.params))
    try:
      json.dumps(dict(self.metadata))
    except TypeError as e:
      raise ValueError(f"Weights.metadata must be JSON-serializable: {e}") from None
    object.__setattr__(self, "metadata", dict(self.metadata))

  @property
  def layers(self) -> tuple[str, ...]:
    """Every layer of the network, in network order."""
    return zoo.layers(self.arch)

  @property
  def kind(self) -> str:
    """``trained`` or ``random``: the metadata's ``kind``, else ``random`` for drawn weights."""
    kind = self.metadata.get("kind")
    return str(kind) if kind else ("random" if self.metadata.get("source") == "random"
                                   else "trained")

  @functools.cached_property
  def fingerprint(self) -> str:
    """sha256 of the architecture, normalization and every parameter's bytes (a cache key)."""
    return fingerprint(self.arch, self.normalization, self.params)

  def __repr__(self) -> str:
    n = sum(a.size for d in self.params.values() for a in d.values())
    return (f"Weights(arch={self.arch!r}, normalization={self.normalization!r}, "
            f"{n:,} params, metadata={self.metadata!r})")
