"""jaxmouse.score on every kind of feature input gives the sweep's results: a checkpoint folder is
the sweep itself; a network, a callable, a dict of arrays (maps or flat vectors) and a folder or
.npz of arrays must give the same rows as the sweep of the same features."""

import numpy as np
import pandas as pd
import pytest

import jaxmouse
from jaxmouse import fit as fitlib
from jaxmouse import sweeps

LAYERS = ["conv1_2", "conv2_2"]


@pytest.fixture(scope="module")
def mouse(tmp_path_factory):
  from jaxmouse import weights
  from jaxmouse.data import SimulationConfig, save, simulate
  from jaxmouse.features import extract

  root = tmp_path_factory.mktemp("score")
  ds, _ = simulate(SimulationConfig.tiny(seed=3, layers=("conv1_2", "conv2_2", "conv2_2",
                                                          "conv1_2")))
  net = weights.random_init("vgg16", 0)
  ckpt = weights.save(net, root / "random0")
  feats = extract(net, ds.images, layers=LAYERS)
  data = save(ds, root / "mouse.npz")
  table = jaxmouse.score(ckpt, ds, layers=LAYERS)  # the sweep itself
  return ds, net, ckpt, feats, data, table, root


def _same(a, b, *, rtol=1e-4, atol=1e-5):
  key = ["layer", "area", "neuron"]
  a = a.sort_values(key).reset_index(drop=True)
  b = b.sort_values(key).reset_index(drop=True)
  cols = key + ["readout", "config", "recording"]
  plain = lambda df: df[cols].astype(object).where(df[cols].notna(), "").astype(str)
  pd.testing.assert_frame_equal(plain(a), plain(b))
  for c in ("feve", "corr", "corr_avg", "oracle", "fev", "val_corr"):
    np.testing.assert_allclose(a[c], b[c], rtol=rtol, atol=atol, err_msg=c)


def test_a_checkpoint_folder_is_scored_by_the_sweep(mouse, tmp_path):
  ds, _, ckpt, _, _, table, _ = mouse
  assert list(table.columns) == list(sweeps.COLUMNS)
  assert len(table) == 2 * ds.n_neurons and set(table["weights"]) == {"random0"}
  assert set(table["weights_kind"]) == {"random"} and set(table["layer"]) == set(LAYERS)
  config = sweeps.SweepConfig(weights=(str(ckpt),), layers=LAYERS, readouts=("ridge",))
  direct = sweeps.run_sweep(ds, config, tmp_path / "run")
  _same(table, direct, rtol=0, atol=0)
  assert (table["recording"] == "").all() and table["neuron"].map(type).eq(str).all()


def test_a_dict_of_arrays_gives_the_sweeps_rows(mouse):
  ds, _, _, feats, _, table, _ = mouse
  got = jaxmouse.score(feats, ds, name="random0", kind="random")
  assert list(got.columns) == list(sweeps.COLUMNS)
  _same(got, table)
  pd.testing.assert_series_equal(got["weights"], table["weights"])


def test_a_network_and_a_callable_give_the_same_rows(mouse):
  from jaxmouse.features import extract

  ds, net, _, _, _, table, _ = mouse
  _same(jaxmouse.score(net, ds, layers=LAYERS), table)
  calls = []

  def network(images):
    calls.append(images.shape)
    return extract(net, images, layers=LAYERS)

  _same(jaxmouse.score(network, ds), table)
  assert calls == [ds.images.shape]  # called once, on every image of the data set


def test_a_folder_of_npy_an_npz_and_a_data_path(mouse):
  ds, _, _, feats, data, table, root = mouse
  folder = root / "feats"
  folder.mkdir(exist_ok=True)
  for layer, a in feats.items():
    np.save(folder / f"{layer}.npy", a)
  np.savez(root / "feats.npz", **feats)
  _same(jaxmouse.score(str(folder), data), table)
  _same(jaxmouse.score(root / "feats.npz", ds, layers=["conv2_2"]),
        table[table["layer"] == "conv2_2"])


def test_flat_features_are_fitted_as_n_1_1_d_by_ridge_and_refused_by_spatial_readouts(mouse):
  ds, _, _, feats, _, _, _ = mouse
  x = feats["conv2_2"]
  flat = {"conv2_2": x.reshape(len(x), -1)}
  _same(jaxmouse.score(flat, ds), jaxmouse.score({"conv2_2": x.reshape(len(x), 1, 1, -1)}, ds))
  with pytest.raises(ValueError, match=r"factorized readout needs spatial features .*conv2_2 "
                     rf"\(200, 1, 1, {x[0].size}\)"):
    jaxmouse.score(flat, ds, readout="factorized")


def test_a_trained_readout_through_the_adapter_equals_the_sweep(mouse):
  ds, _, ckpt, feats, _, _, _ = mouse
  fit = fitlib.FitConfig(max_steps=100, eval_every=50, batch_size=64, lr=1e-2)
  kw = dict(readout="factorized", layers=["conv2_2"], grid={"l1": [1e-3, 1e-2]}, fit_config=fit,
            select="area", areas=["LM", "AL"])
  a = jaxmouse.score(ckpt, ds, **kw)
  b = jaxmouse.score(feats, ds, **kw)
  assert set(a["area"]) == {"LM", "AL"} and a.groupby("area")["config"].nunique().max() == 1
  _same(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("features, match", [
    ({"conv1_2": np.zeros((5, 4, 4, 2))}, r"layer 'conv1_2' of the features dict has shape "
     r"\(5, 4, 4, 2\); expected \(200, h, w, c\) or \(200, d\)"),
    ({"x": np.zeros((200, 3, 2))}, r"layer 'x' .* has shape \(200, 3, 2\)"),
    ({}, "has no layers"),
    (lambda images: np.zeros(3), "must return {layer: array}"),
    (3.5, "features must be a weights checkpoint folder"),
])
def test_bad_features_are_one_clear_error(mouse, features, match):
  ds = mouse[0]
  with pytest.raises(ValueError, match=match):
    jaxmouse.score(features, ds)


def test_unknown_layers_and_paths_are_named(mouse, tmp_path):
  ds, _, _, feats, _, _, _ = mouse
  with pytest.raises(ValueError, match=r"layers \['conv9_9'\] are not in the features dict; it "
                     r"has \['conv1_2', 'conv2_2'\]"):
    jaxmouse.score(feats, ds, layers=["conv9_9"])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    jaxmouse.score(tmp_path / "nowhere", ds)
  with pytest.raises(ValueError, match="neither a weights checkpoint"):
    jaxmouse.score(tmp_path, ds)
  bad = {"conv1_2": np.full_like(feats["conv1_2"], np.nan)}
  with pytest.raises(ValueError, match="layer 'conv1_2': features .* NaN"):
    jaxmouse.score(bad, ds)
