"""torchvision state dicts of AlexNet, ResNet, MobileNetV2 and ViT into jaxmouse params.

The params of these networks are keyed by torchvision's module names already, so each tensor's
key follows from its params path: ``{module: {leaf}}`` reads ``module.<torch leaf>`` with

  ``kernel`` <- ``weight`` (conv ``(c_out, c_in, kh, kw)`` -> HWIO; linear ``(out, in)`` ->
  ``(in, out)``)
  ``scale`` <- ``weight`` (batch and layer norms), ``bias`` <- ``bias``,
  ``mean`` <- ``running_mean``, ``var`` <- ``running_var``,
  ``in_kernel`` / ``in_bias`` <- ``in_proj_weight`` (transposed) / ``in_proj_bias`` (attention),
  ``class_token`` <- ``class_token``, ``encoder/pos_embedding`` <- ``encoder.pos_embedding``.

Heads (``fc``, ``classifier``, ``heads``, ViT's final ``encoder.ln``) and the batch norms'
``num_batches_tracked`` counters are skipped and listed in the metadata; a missing, misshaped or
unknown tensor is an error that names every one by its key in the file. VGG has its own converter
(``jaxmouse.weights.convert``), as its layer names are the papers'.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from jaxmouse.models import zoo
from jaxmouse.weights._types import check_params

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var", "in_kernel": "in_proj_weight", "in_bias": "in_proj_bias"}
# Parts of whole-network files that are not the feature stack, per network family.
_SKIP = {
    "alexnet": r"^classifier\.",
    "resnet": r"^fc\.",
    "mobilenet": r"^classifier\.",
    "vit": r"^(heads\.|encoder\.ln\.)",
}
_ALWAYS_SKIP = re.compile(r"\.num_batches_tracked$")
# Older torchvision releases named the ViT MLP's linears linear_1 / linear_2.
_ALIASES = ((".mlp.0", ".mlp.linear_1"), (".mlp.3", ".mlp.linear_2"))
_MAX_LISTED = 12


def torch_keys(module: str, leaf: str) -> tuple[str, ...]:
  """The key(s) torchvision's state dict may hold ``module/leaf`` under (first: the current one)."""
  if module == "class_token":
    return ("class_token",)
  if leaf == "pos_embedding":
    return (f"{module}.pos_embedding",)
  key = f"{module}.{_LEAF[leaf]}"
  for new, old in _ALIASES:
    if module.endswith(new):
      return key, f"{module[:-len(new)]}{old}.{_LEAF[leaf]}"
  return (key,)


def to_jax(leaf: str, value: np.ndarray) -> np.ndarray:
  """A torch tensor in jaxmouse's layout (kernels HWIO or ``(in, out)``)."""
  if leaf == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if leaf in ("kernel", "in_kernel") and value.ndim == 2:
    return np.transpose(value)
  return value


def to_torch(leaf: str, value: np.ndarray) -> np.ndarray:
  """The inverse of ``to_jax``: a jaxmouse tensor in torchvision's layout."""
  if leaf == "kernel" and value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))
  if leaf in ("kernel", "in_kernel") and value.ndim == 2:
    return np.transpose(value)
  return value


def state_dict_from_params(params: Mapping[str, Mapping[str, np.ndarray]], *, arch: str
                           ) -> dict[str, np.ndarray]:
  """``params`` as a torchvision state dict (feature stack only), e.g. to run the same weights
  in PyTorch."""
  return {torch_keys(m, leaf)[0]: np.ascontiguousarray(to_torch(leaf, np.asarray(v)))
          for m, d in params.items() if m in zoo.param_shapes(arch) for leaf, v in d.items()}


def torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape torchvision stores a jaxmouse ``leaf`` of ``shape`` with."""
  if leaf == "kernel" and len(shape) == 4:
    kh, kw, ci, co = shape
    return (co, ci, kh, kw)
  if leaf in ("kernel", "in_kernel") and len(shape) == 2:
    return shape[::-1]
  return tuple(shape)


def _listed(items: list[str]) -> str:
  more = len(items) - _MAX_LISTED
  return ", ".join(items[:_MAX_LISTED]) + (f", ... ({more} more)" if more > 0 else "")


def params_from_state_dict(state: Mapping[str, np.ndarray], *, arch: str, source: str
                           ) -> tuple[dict, list[str]]:
  """torchvision tensors -> ``(params, skipped keys)`` for ``arch``; a ValueError names every
  missing, misshaped and unknown tensor by its key, and every tensor that is not floating point
  or holds NaN or infinite values."""
  state = {(k[len("module."):] if k.startswith("module.") else k): (k, v)
           for k, v in state.items()}
  skip = re.compile(_SKIP[zoo.family(arch)])
  used: set[str] = set()
  params: dict[str, dict[str, np.ndarray]] = {}
  labels: dict[str, str] = {}
  missing, wrong = [], []
  for module, leaves in zoo.param_shapes(arch).items():
    for leaf, shape in leaves.items():
      keys = torch_keys(module, leaf)
      key = next((k for k in keys if k in state), None)
      if key is None:
        missing.append(f"{keys[0]} {torch_shape(leaf, shape)}")
        continue
      used.add(key)
      original, value = state[key]
      want = torch_shape(leaf, shape)
      if tuple(np.shape(value)) != want:
        wrong.append(f"{original}: expected {want}, got {tuple(np.shape(value))}")
        continue
      params.setdefault(module, {})[leaf] = to_jax(leaf, np.asarray(value))
      labels[f"{module}/{leaf}"] = original
  skipped, extra = [], []
  for key, (original, value) in state.items():
    if key in used:
      continue
    if skip.search(key) or _ALWAYS_SKIP.search(key):
      skipped.append(original)
    else:
      extra.append(f"{original} {tuple(np.shape(value))}")
  if missing or wrong or extra:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)}: {_listed(missing)}")
    if wrong:
      parts.append(f"wrong shape {len(wrong)}: {_listed(wrong)}")
    if extra:
      parts.append(f"tensors that fit no {arch} module {len(extra)}: {_listed(extra)}")
    raise ValueError(f"{source} does not hold {arch} weights in torchvision's layout: "
                     + " | ".join(parts))
  params = check_params(arch, params, source=source, labels=labels)  # dtypes and values
  return params, skipped
