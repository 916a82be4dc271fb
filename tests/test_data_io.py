"""Files that are not what their name or format says are refused naming the file and what was
expected."""

import json

import h5py
import numpy as np
import pytest

from jaxmouse.cli import main
from jaxmouse.data import NeuralDataset, io, load, save


def _tiny() -> NeuralDataset:
  rng = np.random.default_rng(0)
  return NeuralDataset(
      images=rng.uniform(0, 255, (12, 8, 8)).astype(np.float32),
      responses=rng.poisson(2.0, (16, 3)).astype(np.float32),
      trial_image=np.concatenate([np.arange(8), np.repeat(np.arange(8, 12), 2)]),
      tiers=np.array(["train"] * 6 + ["validation"] * 2 + ["test"] * 8),
      unit_ids=np.arange(3), areas=np.array(["V1"] * 3))


def test_text_file_named_npz(tmp_path, capsys):
  path = tmp_path / "mouse.npz"
  path.write_text("images,responses\n1,2\n")
  with pytest.raises(ValueError, match=r"mouse.npz: named .npz but not a zip archive .*expected "
                                       r"an .npz data set"):
    load(path)
  assert main(["data", "info", str(path)]) == 1
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "pickled" not in err and str(path) in err, err


def test_hdf5_without_format_attribute_is_not_called_an_nwb_file(tmp_path):
  path = save(_tiny(), tmp_path / "d.h5")
  with h5py.File(path, "a") as f:
    del f.attrs["format"]
    del f["areas"]
  assert io.detect_format(path) == "hdf5"
  with pytest.raises(ValueError) as e:
    load(path)
  assert "d.h5: missing field(s) ['areas']" in str(e.value) and "NWB" not in str(e.value)
  other = tmp_path / "weights.h5"  # any other HDF5 file
  with h5py.File(other, "w") as f:
    f["x"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"weights.h5: missing field\(s\) \['images', 'responses'"):
    load(other)
  nwb2 = tmp_path / "session"  # NWB without the suffix: recognised by its root attribute
  with h5py.File(nwb2, "w") as f:
    f.attrs["nwb_version"] = "2.5.0"
  assert io.detect_format(nwb2) == "allen"


def test_tfds_metadata_that_is_not_json(tmp_path):
  path = save(_tiny(), tmp_path / "tfds_dir", format="tfds")
  meta = next(path.rglob("metadata.json"))
  meta.write_text("{name: tiny")
  with pytest.raises(ValueError, match=r"metadata.json: not valid JSON .*expected the data "
                                       r"set's name"):
    load(path)
  meta.write_text(json.dumps(["tiny"]))
  with pytest.raises(ValueError, match=r"metadata.json: holds a JSON list"):
    load(path)
