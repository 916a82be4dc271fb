"""Read tensors from weight files without the frameworks that wrote them.

- PyTorch ``.pth``/``.pt``: both the zip format (torch >= 1.6) and the legacy pickle stream the
  official torchvision VGG files use, read by a restricted unpickler that builds NumPy arrays and
  refuses every class outside a short list (no code from the file is run, and torch is not needed).
- ``.safetensors`` through ``safetensors.numpy``.
- Keras HDF5 through h5py: the classic ``save_weights`` layout (``vgg16_weights_tf_dim_ordering_tf_
  kernels_notop.h5``) and the Keras 3 ``.weights.h5`` layout.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]

  @property
  def itemsize(self) -> int:
    return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

  def view(self, raw: bytes | memoryview) -> np.ndarray:
    if self.dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 bit-exactly
      return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, np.dtype(self.dtype).newbyteorder("<"))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  if len(size) == 0:
    return np.array(storage[storage_offset])
  strides = [s * storage.itemsize for s in stride]
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size, strides=strides)
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Builds NumPy arrays from torch's pickles; any class outside the list is refused."""

  def __init__(self, file, load_storage, rebuild=None):
    super().__init__(file)
    self._load_storage = load_storage
    self._rebuild = rebuild or _rebuild_tensor_v2

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return self._rebuild
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: only tensors in plain (Ordered)dicts are read")

  def persistent_load(self, pid):
    return self._load_storage(pid)


def _read_torch_zip(path: Path) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
    prefix = pkl[: -len("data.pkl")]
    if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
      raise ValueError(f"{path}: big-endian PyTorch files are not supported")
    storages = {}

    def load_storage(pid):
      _, stype, key, _location, _numel = pid
      if key not in storages:
        storages[key] = stype.view(zf.read(f"{prefix}data/{key}"))
      return storages[key]

    return _TorchUnpickler(io.BytesIO(zf.read(pkl)), load_storage).load()


def _read_torch_legacy(path: Path) -> Any:
  with open(path, "rb") as f:
    try:
      magic = pickle.load(f)
    except Exception as e:
      raise ValueError(f"{path} is not a PyTorch file: {e}") from None
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path} is not a PyTorch file (bad magic number)")
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info
    # Storage bytes follow the pickle, so tensors are built lazily once all storages are read.
    roots: dict[str, tuple[_StorageType, list]] = {}  # key -> (type, [array once read])

    def load_storage(pid):
      if pid[0] != "storage":
        raise pickle.UnpicklingError(f"unsupported persistent id {pid[0]!r}")
      stype, key, _location, _numel, view = pid[1:6]
      holder = roots.setdefault(key, (stype, [None]))
      return _Lazy(holder, None if view is None else view[1:])

    body = _TorchUnpickler(f, load_storage, _LazyTensor).load()
    keys = pickle.load(f)
    for key in keys:
      stype, cell = roots[key]
      (count,) = struct.unpack("<q", f.read(8))
      cell[0] = stype.view(f.read(count * stype.itemsize))
  return _resolve(body)


class _Lazy:
  """A legacy storage (or a view of one) whose bytes come after the pickle."""

  def __init__(self, holder, view):
    self.holder, self.view = holder, view
    self.itemsize = holder[0].itemsize


class _LazyTensor:
  def __init__(self, storage, *args):
    self.storage, self.args = storage, args


def _resolve(obj):
  if isinstance(obj, _LazyTensor):
    data = obj.storage.holder[1][0]
    if obj.storage.view is not None:
      offset, size = obj.storage.view
      data = data[offset:offset + size]
    return _rebuild_tensor_v2(data, *obj.args)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v)) for k, v in obj.items())
  return obj


def read_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch state dict (``torch.save(model.state_dict())``) as ``{name: ndarray}``."""
  path = Path(path)
  try:
    obj = _read_torch_zip(path) if zipfile.is_zipfile(path) else _read_torch_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, struct.error) as e:
    raise ValueError(f"cannot read {path} as a PyTorch state dict: {e}") from None
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict of tensors")
  return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    return dict(load_file(str(path)))
  except Exception as e:  # e.g. a bfloat16 tensor, which numpy cannot hold
    raise ValueError(f"cannot read {path} as safetensors: {e}") from None


def read_keras_h5(path: str | os.PathLike) -> tuple[str, list[tuple[str, str, list[np.ndarray]]]]:
  """Keras layer weights as ``(layout, [(group path, layer name, [kernel, bias, ...]), ...])``.

  Classic ``save_weights`` files list their layers in the root attribute ``layer_names`` and each
  layer's tensors in its ``weight_names`` attribute (e.g. ``block1_conv1/block1_conv1_W_1:0``).
  Keras 3 ``.weights.h5`` files nest ``<attr>/layers/<class>[_k]/vars/<i>`` groups whose ``vars``
  group carries the layer's name in its ``name`` attribute (e.g. ``block1_conv1``).
  """
  import h5py
  path = Path(path)
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"cannot open {path} as HDF5: {e}") from None
  with f:
    root = f["model_weights"] if "model_weights" in f else f  # full-model .h5 files nest weights
    out = []
    if "layer_names" in root.attrs:
      for name in _strs(root.attrs["layer_names"]):
        if name not in root:
          raise ValueError(f"{path}: layer {name!r} is listed in 'layer_names' but has no group")
        g = root[name]
        wnames = _strs(g.attrs.get("weight_names", []))
        missing = [w for w in wnames if w not in g]
        if missing:
          raise ValueError(f"{path}: layer {name!r} lists weights {missing} that it lacks")
        if wnames:
          out.append((name, name, [np.asarray(g[w]) for w in wnames]))
      return "keras-h5", out

    def visit(name, obj):
      if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars" and len(obj):
        group = name[: -len("/vars")]
        layer = _str(obj.attrs["name"]) if "name" in obj.attrs else group
        keys = sorted(obj.keys(), key=lambda k: int(k) if k.isdigit() else k)
        out.append((group, layer, [np.asarray(obj[k]) for k in keys]))

    root.visititems(visit)
    if not out:
      raise ValueError(f"{path} holds no Keras layer weights (neither a 'layer_names' attribute "
                       "nor '.../vars/<i>' datasets)")
    return "keras3-weights-h5", out


def _str(s) -> str:
  return s.decode() if isinstance(s, bytes) else str(s)


def _strs(a) -> list[str]:
  return [_str(s) for s in np.asarray(a).ravel()]
