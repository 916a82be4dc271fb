"""Read tensors from weight files without the frameworks that wrote them.

- PyTorch ``.pth``/``.pt``: both the zip format (torch >= 1.6) and the legacy pickle stream the
  official torchvision VGG files use. Every pickle in the file (in the legacy format also the
  magic number, protocol version, system info and storage keys) is read by a restricted unpickler
  that builds NumPy arrays and refuses every class outside a short list, so no code from the file
  is run and torch is not needed. Every tensor's extent (offset + strides x shape) is checked
  against its storage before it is built.
- ``.safetensors`` through ``safetensors.numpy`` (bfloat16 tensors through ``ml_dtypes``).
- Keras HDF5 through h5py: the classic ``save_weights`` layout (``vgg16_weights_tf_dim_ordering_tf_
  kernels_notop.h5``) and the Keras 3 ``.weights.h5`` layout.

Damaged or hostile files are ``ValueError`` naming the file and, where there is one, the tensor.
"""

from __future__ import annotations

import collections
import io
import lzma
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _Refused(ValueError):
  """A weight file that is damaged or holds something other than tensors."""


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]

  @property
  def itemsize(self) -> int:
    return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

  def view(self, raw: bytes | memoryview, key: str) -> np.ndarray:
    if len(raw) % self.itemsize:
      raise _Refused(f"storage {key!r} holds {len(raw)} bytes, not a whole number of "
                     f"{self.name} elements ({self.itemsize} bytes each)")
    if self.dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 bit-exactly
      return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, np.dtype(self.dtype).newbyteorder("<"))


class _Storage:
  """One storage of a file: its type, its key, and its elements once they are read."""

  def __init__(self, stype: _StorageType, key: str):
    self.stype, self.key = stype, key
    self.data: np.ndarray | None = None
    self.missing = ""  # why ``data`` could not be read

  def refusal(self) -> str:
    return f"storage {self.key!r} is missing: {self.missing or 'the file is truncated'}"


class _LazyTensor:
  """A tensor whose storage may still be unread; built by ``_resolve``, which knows its name."""

  def __init__(self, storage, storage_offset, size, stride, *_):
    self.storage, self.offset, self.size, self.stride = storage, storage_offset, size, stride


def _rebuild_parameter(data, *args):
  del args  # requires_grad, backward hooks, state
  return data


def _ints(x, what: str) -> tuple[int, ...]:
  if not isinstance(x, (tuple, list)) or not all(type(v) is int and v >= 0 for v in x):
    raise _Refused(f"{what} must be a tuple of non-negative integers, got {x!r:.80}")
  return tuple(x)


def build_tensor(data: np.ndarray, offset, size, stride, *, name: str) -> np.ndarray:
  """The tensor ``name`` as a fresh array, after checking that it lies inside ``data``.

  ``offset``, ``size`` and ``stride`` count elements, as torch records them. The last element
  the tensor touches is ``offset + sum((size - 1) * stride)``; it must exist in the storage, and a
  tensor may not hold more elements than its storage (expanded tensors are not weights).
  """
  if type(offset) is not int or offset < 0:
    raise _Refused(f"tensor {name!r}: storage offset must be a non-negative integer, got "
                   f"{offset!r:.80}")
  size, stride = _ints(size, f"tensor {name!r}: its shape"), _ints(stride, f"tensor {name!r}: "
                                                                          "its strides")
  if len(size) != len(stride):
    raise _Refused(f"tensor {name!r}: shape {size} and strides {stride} differ in length")
  numel = math.prod(size)
  if numel == 0:
    return np.zeros(size, data.dtype)
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
  if end > len(data) or numel > len(data):
    raise _Refused(f"tensor {name!r} of shape {size} (strides {stride}, offset {offset}) needs "
                   f"{max(end, numel)} elements but its storage holds {len(data)} (the file is "
                   "truncated or corrupt)")
  view = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                         strides=[s * data.itemsize for s in stride])
  return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
  """Builds lazy tensors from torch's pickles; any class outside the list is refused.

  Without ``load_storage`` (the small header pickles of a legacy file) every class and every
  persistent id is refused: those pickles hold plain numbers, strings, lists and dicts.
  """

  def __init__(self, file, load_storage=None):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if self._load_storage is None:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a header pickle holds "
                                   "plain values only")
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _LazyTensor
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: only tensors in plain (Ordered)dicts are read")

  def persistent_load(self, pid):
    if self._load_storage is None:
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80} in a header pickle")
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    return self._load_storage(pid)


class _Bounded:
  """A read-only view of a file that never reads (or allocates) past its end.

  A pickle may claim a length larger than the file; reads are clamped to what is left, and the
  unpickler then reports truncated data instead of allocating the claimed size. (No
  ``readinto``: the unpickler then reads through ``read`` only.)
  """

  def __init__(self, f, size: int):
    self._f, self._size = f, size

  def left(self) -> int:
    return max(0, self._size - self._f.tell())

  def read(self, n=-1):
    n = self.left() if n is None or n < 0 else min(n, self.left())
    return self._f.read(n)

  def readline(self, size=-1):
    size = self.left() if size is None or size < 0 else min(size, self.left())
    return self._f.readline(size)

  def tell(self):
    return self._f.tell()

  def seek(self, pos):
    return self._f.seek(pos)


# Out-of-band buffers (pickle protocol 5) are never in a torch file; a corrupt length in one
# would make the unpickler allocate it before reading.
_REFUSED_OPCODES = {"BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}


def _unpickle(f, what: str, load_storage=None):
  """The next pickle of ``f`` (``what`` it should be, for messages), restricted.

  Its opcodes are parsed first by ``pickletools`` (which runs nothing and reads lengths only as
  far as the data goes), then the same bytes are loaded by ``_TorchUnpickler``.
  """
  start = f.tell()
  try:
    for op, _arg, _pos in pickletools.genops(f):
      if op.name in _REFUSED_OPCODES:
        raise _Refused(f"its {what} holds the opcode {op.name}, which torch files never use")
  except ValueError as e:
    if isinstance(e, _Refused):
      raise
    if f.tell() == start or "exhausted" in str(e) or "remain" in str(e):
      where = "before" if f.tell() == start else "inside"
      raise _Refused(f"the file ends {where} its {what} (truncated?)") from None
    raise _Refused(f"its {what} is not a valid pickle: {e}") from None
  f.seek(start)
  try:
    return _TorchUnpickler(f, load_storage).load()
  except EOFError:
    raise _Refused(f"the file ends inside its {what} (truncated?)") from None
  except pickle.UnpicklingError as e:
    if load_storage is None:
      raise _Refused(f"its {what} is not a plain pickle: {e}") from None
    raise


def _read_torch_zip(path: Path) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise _Refused("it is a zip file but not a PyTorch checkpoint (no data.pkl)")
    prefix = pkl[: -len("data.pkl")]
    if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
      raise _Refused("big-endian PyTorch files are not supported")
    storages: dict[str, _Storage] = {}

    def load_storage(pid):
      stype, key = pid[1], pid[2]
      if key not in storages:
        member = f"{prefix}data/{key}"
        if member not in names:
          raise _Refused(f"storage {key!r} is missing (no member {member})")
        storages[key] = _Storage(stype, key)
        storages[key].data = stype.view(zf.read(member), key)
      return storages[key]

    return _unpickle(io.BytesIO(zf.read(pkl)), pkl, load_storage), storages


def _read_torch_legacy(path: Path) -> Any:
  with open(path, "rb") as raw:
    f = _Bounded(raw, os.fstat(raw.fileno()).st_size)
    try:
      magic = _unpickle(f, "magic number")
    except _Refused as e:
      raise _Refused(f"it is neither a zip nor a legacy torch.save file ({e})") from None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
      raise _Refused("it is neither a zip nor a legacy torch.save file (no PyTorch magic number "
                     "at its start)")
    protocol = _unpickle(f, "protocol version")
    if protocol != _LEGACY_PROTOCOL:
      raise _Refused(f"unsupported legacy protocol version {protocol!r:.40} (expected "
                     f"{_LEGACY_PROTOCOL})")
    sys_info = _unpickle(f, "system info")
    if not isinstance(sys_info, dict):
      raise _Refused(f"its system info is a {type(sys_info).__name__}, expected a dict")
    if sys_info.get("little_endian") is False:
      raise _Refused("big-endian PyTorch files are not supported")
    # Storage bytes follow the body, so tensors stay lazy until every storage is read.
    storages: dict[str, _Storage] = {}

    def load_storage(pid):
      if len(pid) != 6:
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
      stype, key = pid[1], pid[2]
      storage = storages.setdefault(key, _Storage(stype, key))
      if storage.stype.name != stype.name:
        raise _Refused(f"storage {key!r} is used as both {storage.stype.name} and {stype.name}")
      view = pid[5]
      if view is None:
        return storage
      if not (isinstance(view, tuple) and len(view) == 3):
        raise _Refused(f"storage {key!r}: unsupported view {view!r:.80}")
      return _StorageView(storage, *view[1:])

    body = _unpickle(f, "tensor pickle", load_storage)
    keys = _unpickle(f, "list of storage keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise _Refused(f"its storage keys are a {type(keys).__name__}, expected a list of strings")
    for key in keys:
      if key not in storages:
        raise _Refused(f"storage {key!r} is listed but no tensor uses it")
      storage = storages[key]
      head = f.read(8)
      if len(head) < 8:
        storage.missing = "the file ends before it (truncated?)"
        break
      (count,) = struct.unpack("<q", head)
      nbytes = count * storage.stype.itemsize
      if count < 0 or nbytes > f.left():
        storage.missing = (f"it claims {count} elements ({nbytes} bytes) but only {f.left()} "
                           "bytes are left in the file (truncated?)")
        break
      storage.data = storage.stype.view(f.read(nbytes), key)
  # Tensors of storages that could not be read are refused by name when they are built.
  return body, storages


class _StorageView:
  """A legacy view into a storage: elements ``offset .. offset + size`` of it."""

  def __init__(self, storage: _Storage, offset, size):
    self.storage, self.offset, self.size = storage, offset, size


def _storage_data(storage, name: str) -> np.ndarray:
  if isinstance(storage, _StorageView):
    data = _storage_data(storage.storage, name)
    offset, size = storage.offset, storage.size
    if type(offset) is not int or type(size) is not int or offset < 0 or size < 0 or \
        offset + size > len(data):
      raise _Refused(f"tensor {name!r}: its storage view [{offset!r:.20}, +{size!r:.20}) lies "
                     f"outside storage {storage.storage.key!r} of {len(data)} elements")
    return data[offset:offset + size]
  if not isinstance(storage, _Storage):
    raise _Refused(f"tensor {name!r}: its storage is a {type(storage).__name__}, not a storage")
  if storage.data is None:
    raise _Refused(f"tensor {name!r}: its {storage.refusal()}")
  return storage.data


def _resolve(obj, name: str = ""):
  if isinstance(obj, _LazyTensor):
    return build_tensor(_storage_data(obj.storage, name), obj.offset, obj.size, obj.stride,
                        name=name)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v, f"{name}.{k}" if name else str(k))) for k, v in obj.items())
  return obj


# Everything a damaged or hostile pickle can make the readers raise.
_BROKEN = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
           AttributeError, struct.error, OverflowError, RecursionError, zipfile.BadZipFile,
           zipfile.LargeZipFile, UnicodeDecodeError, NotImplementedError, zlib.error,
           lzma.LZMAError, RuntimeError, OSError)  # zipfile: encrypted members, bad offsets


def read_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch state dict (``torch.save(model.state_dict())``) as ``{name: ndarray}``."""
  path = Path(path)
  try:
    if zipfile.is_zipfile(path):
      obj, storages = _read_torch_zip(path)
    else:
      with open(path, "rb") as f:
        if f.read(2) == b"PK":
          raise _Refused("it starts like a zip file but has no zip directory (truncated?)")
      obj, storages = _read_torch_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
      obj = obj["state_dict"]
    if not isinstance(obj, dict):
      raise _Refused(f"it holds a {type(obj).__name__}, expected a state dict of tensors")
    obj = _resolve(obj)
    unread = [st for st in storages.values() if st.data is None]
    if unread:  # used only outside the state dict, but a damaged file all the same
      raise _Refused(unread[0].refusal())
  except MemoryError:
    raise ValueError(f"cannot read {path} as a PyTorch state dict: out of memory while reading "
                     "it (a corrupt length field?)") from None
  except _BROKEN as e:
    raise ValueError(f"cannot read {path} as a PyTorch state dict: {e}") from None
  return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of a ``.safetensors`` file; bfloat16 tensors come as ``ml_dtypes.bfloat16``."""
  from safetensors import SafetensorError, deserialize
  from safetensors.numpy import load_file
  try:
    return dict(load_file(str(path)))
  except TypeError as e:  # numpy has no bfloat16: read the raw bytes instead
    if "bfloat16" not in str(e):
      raise ValueError(f"cannot read {path} as safetensors: {e}") from None
  except (SafetensorError, ValueError, OSError) as e:
    raise ValueError(f"cannot read {path} as safetensors: {e}") from None
  import ml_dtypes
  out = {}
  for name, t in deserialize(Path(path).read_bytes()):
    dtype = ml_dtypes.bfloat16 if t["dtype"] == "BF16" else _SAFETENSORS_DTYPES.get(t["dtype"])
    if dtype is None:
      raise ValueError(f"cannot read {path} as safetensors: tensor {name!r} has dtype "
                       f"{t['dtype']}, expected a float type")
    out[name] = np.frombuffer(t["data"], np.dtype(dtype).newbyteorder("<")).reshape(t["shape"])
  return out


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
  try:
    with f:
      return _read_keras_layers(f, path)
  except (OSError, KeyError, TypeError, RuntimeError) as e:  # h5py's errors for damaged files
    raise ValueError(f"cannot read {path} as Keras weights (truncated or corrupt?): {e}") from None


def _read_keras_layers(f, path: Path):
  import h5py
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
