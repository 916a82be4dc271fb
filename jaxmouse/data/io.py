"""``load`` and ``save`` for every data set format, with the format detected from the path.

Formats:
  npz       one ``.npz`` file in the plain layout (``jaxmouse.data.plain``)
  hdf5      one ``.h5``/``.hdf5`` file in the same plain layout
  filetree  the Sensorium / neuralpredictors "static" folder, or a .zip of it as Sensorium
            distributes them (``jaxmouse.data.filetree``)
  allen     Allen Brain Observatory Visual Coding NWB 1 files, natural scenes (read only;
            ``jaxmouse.data.allen``); a folder of ``.nwb`` files, a list of them or a glob
            pattern (``"allen/*.nwb"``) combine
  tfds      a tensorflow-datasets ArrayRecord folder (``jaxmouse.data.tfds``)
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from jaxmouse._io import check_output_path
from jaxmouse.data.dataset import NeuralDataset

FORMATS = ("npz", "hdf5", "filetree", "allen", "tfds")
WRITABLE = ("npz", "hdf5", "filetree", "tfds")

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


def expand(path):
  """A path as given, or the sorted files a glob pattern (``"allen/*.nwb"``) matches, as a list;
  a pattern that matches nothing is a FileNotFoundError."""
  if isinstance(path, (list, tuple)) or Path(path).exists():
    return path
  text = str(path)
  if any(c in text for c in "*?["):
    files = sorted(glob.glob(os.path.expanduser(text)))
    if not files:
      raise FileNotFoundError(f"{text}: no file matches this pattern")
    return files[0] if len(files) == 1 else files
  return path


def detect_format(path: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
  """The format of a data set path (see the module docstring); raises if none fits."""
  path = expand(path)
  if isinstance(path, (list, tuple)):
    return "allen"
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such data set file or folder")
  if path.is_dir():
    from jaxmouse.data import filetree, tfds

    if filetree.is_filetree(path):
      return "filetree"
    if tfds.is_tfds(path):
      return "tfds"
    if any(path.glob("*.nwb")):
      return "allen"
    raise ValueError(f"{path}: folder is neither a Sensorium file tree (data/, meta/trials/), a "
                     f"TFDS ArrayRecord folder (dataset_info.json) nor a folder of .nwb files")
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(_ZIP_MAGIC):
    from jaxmouse.data import filetree

    return "filetree" if filetree.is_filetree(path) else "npz"
  if head == _HDF5_MAGIC:
    # Only NWB files go to the Allen reader; any other HDF5 file is read as a plain data set,
    # whose reader names the fields it lacks.
    return "allen" if path.suffix == ".nwb" or _is_nwb(path) else "hdf5"
  if path.suffix == ".npz":
    raise ValueError(f"{path}: named .npz but not a zip archive (first bytes {head!r}); expected "
                     "an .npz data set written by numpy.savez or `jaxmouse data`")
  raise ValueError(f"{path}: unrecognised data set file (neither .npz/zip nor HDF5; first bytes "
                   f"{head!r}); formats: {list(FORMATS)}")


def _is_nwb(path: Path) -> bool:
  """NWB 1 files keep ``nwb_version`` as a root dataset, NWB 2 files as a root attribute."""
  import h5py

  try:
    with h5py.File(path, "r") as f:
      return "nwb_version" in f.attrs or "nwb_version" in f
  except OSError:  # unreadable: the plain reader says so, naming the file
    return False


def load(path: str | os.PathLike | Sequence[str | os.PathLike], *, format: str | None = None,
         **options) -> NeuralDataset:
  """Reads a data set in any supported format (also ``jaxmouse.load``).

  ``options`` go to the format's loader, e.g. ``final_test="test"`` (filetree) or
  ``response="dff"``, ``n_test_images=...`` (allen); see each module.

  Example:

  >>> import os, tempfile, jaxmouse
  >>> from jaxmouse.data import SimulationConfig, save, simulate
  >>> tmp = tempfile.TemporaryDirectory()
  >>> ds, _ = simulate(SimulationConfig.tiny(seed=1))
  >>> path = save(ds, os.path.join(tmp.name, "mouse.npz"))
  >>> back = jaxmouse.load(path)
  >>> (back.n_neurons, back.n_images) == (ds.n_neurons, ds.n_images)
  True
  >>> back.tier("test")[1].shape == ds.tier("test")[1].shape
  True
  >>> tmp.cleanup()
  """
  path = expand(path)
  format = format or detect_format(path)
  if format == "npz":
    from jaxmouse.data import plain
    return plain.load_npz(path, **options)
  if format == "hdf5":
    from jaxmouse.data import plain
    return plain.load_hdf5(path, **options)
  if format == "filetree":
    from jaxmouse.data import filetree
    return filetree.load(path, **options)
  if format == "allen":
    from jaxmouse.data import allen
    return allen.load(path, **options)
  if format == "tfds":
    from jaxmouse.data import tfds
    return tfds.load(path, **options)
  raise ValueError(f"unknown data set format {format!r}; formats: {list(FORMATS)}")


def format_from_suffix(path: str | os.PathLike) -> str:
  """The write format implied by a file name: .npz -> npz, .h5/.hdf5 -> hdf5, else filetree."""
  suffix = Path(path).suffix.lower()
  return {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}.get(suffix, "filetree")


def save(ds: NeuralDataset, path: str | os.PathLike, *, format: str | None = None,
         overwrite: bool = False, **options) -> Path:
  """Writes a data set atomically; ``format`` defaults to the one the suffix implies."""
  if not isinstance(ds, NeuralDataset):
    raise ValueError(f"save expects a NeuralDataset, got {type(ds).__name__}")
  format = format or format_from_suffix(path)
  if format not in WRITABLE:
    raise ValueError(f"cannot write format {format!r}; writable formats: {list(WRITABLE)}")
  path = check_output_path(path, overwrite=overwrite)
  if format == "npz":
    from jaxmouse.data import plain
    return plain.save_npz(ds, path, **options)
  if format == "hdf5":
    from jaxmouse.data import plain
    return plain.save_hdf5(ds, path, **options)
  if format == "filetree":
    from jaxmouse.data import filetree
    return filetree.save(ds, path, **options)
  from jaxmouse.data import tfds
  return tfds.save(ds, path, **options)
