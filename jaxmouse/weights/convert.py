"""Convert weight files in torchvision's or Keras's layout into ``Weights``.

VGG files are read here (torchvision's ``features.<i>`` indices, Keras's ``blockB_convI``);
AlexNet, ResNet, MobileNetV2 and ViT state dicts by ``jaxmouse.weights.torchvision``, through
the same restricted readers.

PyTorch kernels are ``(c_out, c_in, kh, kw)`` and become HWIO ``(kh, kw, c_in, c_out)``; Keras
kernels are HWIO already. Both frameworks compute cross-correlations, as XLA does, so no kernel is
flipped. Parts of a file that are not the conv stack (torchvision's ``classifier.*``, Keras's
``fc1``/``fc2``/``predictions``, HED's side outputs ``dsn*``/``fuse``) are skipped and listed in
the metadata; anything else that does not fit the architecture is an error naming every tensor.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from jaxmouse import _io
from jaxmouse.models import vgg, zoo
from jaxmouse.weights import readers, torchvision
from jaxmouse.weights._types import Weights, check_params

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Layers of whole-network files that are not the conv feature stack.
_TORCH_SKIP = re.compile(r"^classifier\.")
_KERAS_SKIP = re.compile(r"^(fc\d*|predictions|flatten|dsn\d+|fuse)$")
_KERAS_CONV = re.compile(r"^block(\d+)_conv(\d+)$")


def detect_format(path: str | os.PathLike) -> str:
  """``"torch"``, ``"safetensors"`` or ``"keras"`` from the file's suffix and first bytes."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weight file {path} does not exist")
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(b"\x89HDF\r\n\x1a\n"):
    return "keras"
  if path.suffix == ".safetensors":
    return "safetensors"
  if path.suffix in TORCH_SUFFIXES or head.startswith(b"PK") or head[:1] == b"\x80":
    return "torch"
  raise ValueError(f"cannot tell the format of {path}: expected a PyTorch state dict "
                   f"({', '.join(TORCH_SUFFIXES)}), .safetensors, or a Keras .h5")


def params_from_torchvision(state: dict[str, np.ndarray], *, arch: str, source: str
                            ) -> tuple[dict, list[str]]:
  """torchvision ``features.<i>.weight|bias`` tensors -> params; returns (params, skipped names)."""
  index = {i: name for name, i in vgg.torchvision_indices(arch).items()}
  params: dict[str, dict[str, np.ndarray]] = {}
  skipped, extra, labels = [], {}, {}
  for key, value in state.items():
    k = key[len("module."):] if key.startswith("module.") else key
    if _TORCH_SKIP.match(k):
      skipped.append(key)
      continue
    m = re.fullmatch(r"(?:features\.)?(\d+)\.(weight|bias)", k)
    if m is None or int(m.group(1)) not in index:
      extra[key] = value
      continue
    name = index[int(m.group(1))]
    if m.group(2) == "weight":
      v = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value  # OIHW -> HWIO
      params.setdefault(name, {})["kernel"] = v
      labels[f"{name}/kernel"] = key
    else:
      params.setdefault(name, {})["bias"] = value
      labels[f"{name}/bias"] = key
  # Name unmatched tensors by their own keys; shapes of matched ones are checked by check_params.
  _raise_with_extra(arch, params, extra, source, torch_names=True)
  check_params(arch, params, source=source, labels=labels)  # dtypes and values
  return params, skipped


def params_from_keras(layers: list[tuple[str, str, list[np.ndarray]]], *, arch: str, source: str
                      ) -> tuple[dict, list[str]]:
  """Keras ``(group, "blockB_convI", [kernel, bias])`` -> params; returns (params, skipped groups)."""
  params, skipped, extra, labels = {}, [], {}, {}
  for group, lname, tensors in layers:
    top = group.split("/")[0]
    m = _KERAS_CONV.match(lname)
    if m is None and (_KERAS_SKIP.match(lname) or _KERAS_SKIP.match(top)):
      skipped.append(group)
      continue
    if m is None:
      for i, t in enumerate(tensors):
        extra[f"{group}[{i}] ({lname})"] = t
      continue
    name = f"conv{m.group(1)}_{m.group(2)}"
    if name in params:
      raise ValueError(f"{source}: two groups hold layer {lname!r} (the second is {group})")
    d = params[name] = {}
    for i, t in enumerate(tensors):
      if i < 2:
        d["kernel" if i == 0 else "bias"] = t
        labels[f"{name}/{'kernel' if i == 0 else 'bias'}"] = f"{group}[{i}]"
      else:
        extra[f"{group}[{i}] ({lname})"] = t
  _raise_with_extra(arch, params, extra, source, torch_names=False)
  check_params(arch, params, source=source, labels=labels)  # dtypes and values
  return params, skipped


def _raise_with_extra(arch, params, extra, source, *, torch_names):
  """check_params, with tensors that map to no layer named as in the file."""
  try:
    check_params(arch, {k: v for k, v in params.items()}, source=source, values=False)
    problems = None
  except ValueError as e:
    problems = str(e)
  if not extra and problems is None:
    return
  # A layer that exists in the file but not in arch shows up as an extra params key.
  msg = problems or f"{source} does not hold {arch} weights:"
  if extra:
    listed = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in extra.items())
    msg += f" | tensors that fit no {arch} layer ({len(extra)}): {listed}"
  if torch_names:
    msg += (" | expected torchvision names features.<i>.weight/bias with i in "
            f"{sorted(vgg.torchvision_indices(arch).values())}")
  raise ValueError(msg)


def convert(src: str | os.PathLike, *, arch: str = "vgg16", normalization: str | None = None,
            kind: str = "trained") -> Weights:
  """Reads a torchvision state dict (.pth/.safetensors) of any ``zoo.ARCHS`` network, or a Keras
  VGG .h5, into ``Weights``.

  ``normalization`` defaults to the source's convention: ``"torchvision"`` for PyTorch files,
  ``"caffe"`` for Keras files (Keras's VGG16 and HED were trained on BGR minus channel means).
  ``kind`` (``trained`` or ``random``) is recorded in the metadata for the reports.
  """
  src = Path(src)
  zoo.check_arch(arch)
  if kind not in ("trained", "random"):
    raise ValueError(f"kind must be 'trained' or 'random', got {kind!r}")
  fmt = detect_format(src)
  if fmt == "keras" and arch not in vgg.ARCHS:
    raise ValueError(f"{src} is a Keras HDF5 file; Keras files are read for VGG only, not {arch} "
                     "(convert a torchvision .pth or .safetensors file instead)")
  if fmt != "keras" and arch not in vgg.ARCHS:
    state = readers.read_torch(src) if fmt == "torch" else readers.read_safetensors(src)
    layout = "torch-state-dict" if fmt == "torch" else "safetensors"
    params, skipped = torchvision.params_from_state_dict(state, arch=arch, source=str(src))
    default_norm = "torchvision"
  elif fmt == "keras":
    layout, layers = readers.read_keras_h5(src)
    params, skipped = params_from_keras(layers, arch=arch, source=str(src))
    default_norm = "caffe"
  else:
    state = readers.read_torch(src) if fmt == "torch" else readers.read_safetensors(src)
    layout = "torch-state-dict" if fmt == "torch" else "safetensors"
    params, skipped = params_from_torchvision(state, arch=arch, source=str(src))
    default_norm = "torchvision"
  return Weights(arch=arch, params=params, normalization=normalization or default_norm,
                 metadata={"source": str(src.resolve()), "source_name": src.name,
                           "source_sha256": _io.sha256_file(src), "source_format": layout,
                           "skipped": skipped, "kind": kind})
