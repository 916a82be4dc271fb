"""The plain layout of a ``NeuralDataset`` as one ``.npz`` or HDF5 file, for users' own data.

Both containers hold the same named arrays (HDF5: datasets at the file root):

  images         (n_images, H, W)        float32 (uint8 accepted), grayscale 0-255
  responses      (n_trials, n_neurons)   float32 (any float/int accepted), finite
  trial_image    (n_trials,)             integer index into images
  tiers          (n_trials,)             str: train | validation | test
  unit_ids       (n_neurons,)            int or str
  areas          (n_neurons,)            str
  neuron_meta/<key>  (n_neurons, ...)    optional per-neuron fields (depth, cre_line, animal, ...)
  info/<key>     ()                      str, optional facts about the data set (response_type, ...)
  name           ()                      str, optional (default: the file name)
  format         ()                      "jaxmouse.NeuralDataset", optional
  format_version ()                      1, optional

Strings are stored as fixed-width unicode in ``.npz`` (read without pickle) and as UTF-8 strings in
HDF5. Writing is atomic: the file appears complete or not at all.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from jaxmouse._io import atomic_path
from jaxmouse.data.dataset import NeuralDataset

FORMAT = "jaxmouse.NeuralDataset"
FORMAT_VERSION = 1
REQUIRED = ("images", "responses", "trial_image", "tiers", "unit_ids", "areas")
META_PREFIX = "neuron_meta/"
INFO_PREFIX = "info/"


def to_arrays(ds: NeuralDataset) -> dict[str, np.ndarray]:
  """The named arrays of the plain layout."""
  arrays = {k: getattr(ds, k) for k in REQUIRED}
  arrays.update({META_PREFIX + k: v for k, v in ds.neuron_meta.items()})
  arrays.update({INFO_PREFIX + k: np.array(v) for k, v in ds.info.items()})
  arrays["name"] = np.array(ds.name)
  arrays["format"] = np.array(FORMAT)
  arrays["format_version"] = np.array(FORMAT_VERSION)
  return arrays


def from_arrays(arrays: dict[str, np.ndarray], *, source: str, default_name: str) -> NeuralDataset:
  """A data set from the named arrays; errors name ``source`` and the field."""
  missing = [k for k in REQUIRED if k not in arrays]
  if missing:
    raise ValueError(f"{source}: missing field(s) {missing}; a plain data set needs {list(REQUIRED)} "
                     f"(found {sorted(arrays)})")
  version = int(arrays.get("format_version", FORMAT_VERSION))
  if version > FORMAT_VERSION:
    raise ValueError(f"{source}: format_version {version} is newer than this jaxmouse reads "
                     f"({FORMAT_VERSION})")
  name = arrays.get("name")
  name = default_name if name is None else _to_str(np.asarray(name).reshape(()).item())
  meta = {k[len(META_PREFIX):]: v for k, v in arrays.items() if k.startswith(META_PREFIX)}
  info = {k[len(INFO_PREFIX):]: v for k, v in arrays.items() if k.startswith(INFO_PREFIX)}
  try:
    return NeuralDataset(**{k: arrays[k] for k in REQUIRED}, neuron_meta=meta, name=name,
                         info=info)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None


def _to_str(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


# ---- npz -------------------------------------------------------------------------------------


def save_npz(ds: NeuralDataset, path: str | os.PathLike, *, compress: bool = False) -> Path:
  """Writes ``ds`` to one ``.npz`` file (atomically)."""
  path = Path(path)
  arrays = {k: _plain_strings(v) for k, v in to_arrays(ds).items()}
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
      (np.savez_compressed if compress else np.savez)(f, **arrays)
  return path


def read_npz(path: Path, *, what: str) -> dict[str, np.ndarray]:
  """Every array of an .npz file, without pickle; a truncated or corrupt file is a ValueError
  naming the file and ``what`` it should have been."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from None


def load_npz(path: str | os.PathLike) -> NeuralDataset:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such data set file")
  arrays = read_npz(path, what=".npz data set")
  return from_arrays(arrays, source=str(path), default_name=_stem(path))


def _plain_strings(v: np.ndarray) -> np.ndarray:
  v = np.asarray(v)
  return v.astype(str) if v.dtype.kind in "OS" else v


def _stem(path: Path) -> str:
  return path.name.split(".")[0] or path.name


# ---- HDF5 ------------------------------------------------------------------------------------


def save_hdf5(ds: NeuralDataset, path: str | os.PathLike, *, compression: str | None = None) -> Path:
  """Writes ``ds`` to one HDF5 file (atomically)."""
  import h5py

  path = Path(path)
  with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    for key, value in to_arrays(ds).items():
      value = np.asarray(value)
      if value.dtype.kind in "US":
        value = value.astype(object)
        f.create_dataset(key, data=value, dtype=h5py.string_dtype())
      elif value.ndim == 0:
        f.create_dataset(key, data=value)
      else:
        f.create_dataset(key, data=value, compression=compression)
  return path


def is_plain_hdf5(path: Path) -> bool:
  import h5py

  try:
    with h5py.File(path, "r") as f:
      return f.attrs.get("format") == FORMAT or all(k in f for k in REQUIRED)
  except OSError:
    return False


def load_hdf5(path: str | os.PathLike) -> NeuralDataset:
  import h5py

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such data set file")
  try:
    with h5py.File(path, "r") as f:
      arrays = {}

      def visit(key, obj):
        if isinstance(obj, h5py.Dataset):
          value = obj[()]
          if obj.dtype.kind == "O" or obj.dtype.kind == "S" or h5py.check_string_dtype(obj.dtype):
            value = np.asarray(obj.asstr()[()])
            value = value.astype(str)
          arrays[key] = value

      f.visititems(visit)
  except OSError as e:
    raise ValueError(f"{path}: not a readable HDF5 data set (truncated or corrupt?): {e}") from None
  return from_arrays(arrays, source=str(path), default_name=_stem(path))
