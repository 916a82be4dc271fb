"""Feature spaces in a sweep: networks of any architecture side by side, features brought from
elsewhere as .npy folders or .npz files (equal to the network's own when they are the same
numbers), flat features for ridge only, and every bad input named in one line."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxmouse import feature_spaces as fs
from jaxmouse import sweeps
from jaxmouse.cli import main
from jaxmouse.data import NeuralDataset
from jaxmouse.features import extract
from jaxmouse.models import zoo
from jaxmouse.weights import random_init, save

RIDGE = dict(readouts=("ridge",), grids={"ridge": {"alpha": (0.1, 1.0, 10.0)}})


def _dataset(seed=0, n=90, shape=(36, 44)):
  """n images: 60 train, 14 validation, 16 test x 3 repeats; 10 neurons in V1 and LM that
  follow local image contrast."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (n,) + shape).astype(np.float32)
  trial_image = np.concatenate([np.arange(74), np.repeat(np.arange(74, n), 3)])
  tiers = np.array(["train"] * 60 + ["validation"] * 14 + ["test"] * 48)
  patches = images[:, 10:26, 10:34].reshape(n, 4, 4, 4, 6).std(axis=(2, 4)).reshape(n, -1)
  drive = patches[:, :10] / 20.0
  responses = rng.poisson(drive[trial_image] + 0.5).astype(np.float32)
  return NeuralDataset(images=images, responses=responses, trial_image=trial_image, tiers=tiers,
                       unit_ids=np.arange(10), areas=np.array(["V1"] * 5 + ["LM"] * 5),
                       name="contrast")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("spaces")
  ds = _dataset()
  save(random_init("resnet18", 0), root / "r18")
  save(random_init("vgg16", 0), root / "vgg")
  return root, ds


def test_precomputed_features_give_the_networks_results(setup):
  root, ds = setup
  layers = ("layer1", "layer2")
  net = sweeps.run_sweep(ds, sweeps.SweepConfig(weights=(str(root / "r18"),), layers=layers,
                                                **RIDGE), root / "net")
  # The same numbers written as a folder of <layer>.npy, with a metadata.json.
  feats = extract(random_init("resnet18", 0), ds.images, layers=layers)
  folder = root / "mine"
  folder.mkdir()
  for l, f in feats.items():
    np.save(folder / f"{l}.npy", f)
  (folder / "metadata.json").write_text(json.dumps(
      {"arch": "resnet18", "kind": "random", "layers": list(zoo.layers("resnet18"))}))
  own = sweeps.run_sweep(ds, sweeps.SweepConfig(features=(str(folder),), **RIDGE), root / "own")
  assert set(own["weights"]) == {"mine"} and list(dict.fromkeys(own["layer"])) == list(layers)
  assert set(own["weights_kind"]) == {"random"}
  key = ["layer", "area", "neuron"]
  a = net.sort_values(key).reset_index(drop=True)
  b = own.sort_values(key).reset_index(drop=True)
  for col in ("feve", "val_corr", "corr", "config"):
    pd.testing.assert_series_equal(a[col], b[col], check_exact=False, rtol=1e-5)
  assert np.nanmax(a["val_corr"]) > 0.3  # the neurons are predictable at all
  spaces = json.loads((root / "own" / sweeps.FEATURE_SPACES).read_text())
  assert spaces["mine"]["layers"][:3] == ["conv1", "maxpool", "layer1.0"]
  assert spaces["mine"]["fitted"] == ["layer1", "layer2"] and spaces["mine"]["arch"] == "resnet18"
  spaces = json.loads((root / "net" / sweeps.FEATURE_SPACES).read_text())
  assert spaces["r18"]["kind"] == "random" and spaces["r18"]["fitted"] == ["layer1", "layer2"]


def test_flat_features_fit_ridge_and_spatial_readouts_refuse_them(setup, capsys):
  root, ds = setup
  feats = extract(random_init("resnet18", 0), ds.images, layers=["layer2", "layer3"])
  npz = root / "pooled.npz"
  # An .npz keeps its arrays' order: layer3 before layer2 here is the network order it states.
  np.savez(npz, layer3=feats["layer3"].mean(axis=(1, 2)), layer2=feats["layer2"].mean(axis=(1, 2)))
  space = fs.PrecomputedSpace(npz)
  assert space.layers == ("layer3", "layer2") and space.is_flat("layer2")
  assert space.feature_shape("layer2", ds.images.shape) == (1, 1, 128)
  table = sweeps.run_sweep(ds, sweeps.SweepConfig(features=(str(npz),), **RIDGE), root / "flat")
  assert set(table["layer"]) == {"layer2", "layer3"} and table["val_corr"].notna().all()
  out = root / "flat_f"
  assert main(["sweep", "--data", str(_save(ds, root)), "--features", str(npz), "--readout",
               "factorized", "--no-progress", "--out", str(out)]) == 1
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  assert (f"{npz}: layer 'layer3' is flat, (90, 256); the factorized readout needs spatial "
          "features (n, h, w, c). Fit flat features with the ridge readout") in err, err
  assert not out.exists()


def _save(ds, root):
  from jaxmouse import data
  path = root / "data.npz"
  if not path.exists():
    data.save(ds, path)
  return path


def test_networks_side_by_side_each_on_its_own_layers(setup, capsys):
  root, ds = setup
  out = root / "zoo"
  assert main(["sweep", "--data", str(_save(ds, root)), "--weights",
               f"{root / 'vgg'},{root / 'r18'}", "--layers", "layer2,conv2_2,conv1_2",
               "--readout", "ridge", "--grid", "alpha=1", "--no-progress",
               "--out", str(out)]) == 0
  table = pd.read_csv(out / "results.csv")
  got = table.groupby("weights")["layer"].unique().map(list).to_dict()
  assert got == {"vgg": ["conv1_2", "conv2_2"], "r18": ["layer2"]}
  spaces = json.loads((out / sweeps.FEATURE_SPACES).read_text())
  assert spaces["vgg"]["arch"] == "vgg16" and spaces["vgg"]["layers"][:3] == [
      "conv1_1", "conv1_2", "pool1"]
  # A name no network has, and a network left without layers, are refused before any work.
  for layers, msg in (("layer2,conv9_9", "unknown layer(s) ['conv9_9']: no feature space has "
                                         "them. Valid layers: vgg (vgg16): conv1_1"),
                      ("conv2_2", "r18 (resnet18) has none of the layers ['conv2_2']; its "
                                  "layers: conv1, maxpool, layer1.0")):
    assert main(["sweep", "--data", str(_save(ds, root)), "--weights",
                 f"{root / 'vgg'},{root / 'r18'}", "--layers", layers, "--readout", "ridge",
                 "--no-progress", "--out", str(root / "bad")]) == 1
    assert msg in capsys.readouterr().err
  assert not (root / "bad").exists()


def test_layers_all_and_resolution():
  spaces = {"a": fs.EnergySpace()}
  assert fs.resolve_layers(spaces, ()) == {"a": ("gabor",)}


def test_precomputed_inputs_are_checked(tmp_path):
  d = tmp_path / "f"
  d.mkdir()
  np.save(d / "a.npy", np.zeros((5, 3), np.float32))
  np.save(d / "b.npy", np.zeros((4, 2, 2, 3), np.float32))
  space = fs.PrecomputedSpace(d, layer_order=["b", "a"])
  assert space.layers == ("b", "a") and space.kind == "trained"
  with pytest.raises(ValueError, match=r"one row per image of the data set \(5 images.*b.npy has "
                                       r"4 rows"):
    space.check_data(["a", "b"], (5, 8, 8))
  with pytest.raises(ValueError, match=r"unknown layer\(s\) \['c'\] for f \(precomputed\); valid "
                                       r"layers: b, a"):
    space.check_layers(["c"])
  np.save(d / "c.npy", np.zeros((5, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r"c.npy: features must be \(n_images, d\) or \(n_images, h, "
                                       r"w, c\), got shape \(5, 2, 3\)"):
    fs.PrecomputedSpace(d)
  (d / "c.npy").unlink()
  np.save(d / "c.npy", np.array([{"x": 1}] * 5, dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="c.npy holds Python objects"):
    fs.PrecomputedSpace(d)
  (d / "c.npy").unlink()
  (d / "metadata.json").write_text(json.dumps({"layers": ["z", "a"]}))
  with pytest.raises(ValueError, match=r"metadata.json: its 'layers' \(the network order\) lack "
                                       r"\['b'\], which .* holds"):
    fs.PrecomputedSpace(d)
  (d / "metadata.json").write_text(json.dumps({"layers": ["z", "a", "y", "b"]}))
  space = fs.PrecomputedSpace(d)
  assert space.layers == ("a", "b") and space.depth("b") == 1.0 and space.depth("a") == 1 / 3
  (d / "metadata.json").write_text(json.dumps({"layers": ["a", "b"], "kind": "untrained"}))
  with pytest.raises(ValueError, match="'kind' must be 'trained' or 'random', got 'untrained'"):
    fs.PrecomputedSpace(d)
  with pytest.raises(FileNotFoundError, match="features .*nothing do not exist"):
    fs.PrecomputedSpace(tmp_path / "nothing")
  (tmp_path / "x.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match=r"x.npz is not an .npz \(zip\) file"):
    fs.PrecomputedSpace(tmp_path / "x.npz")
