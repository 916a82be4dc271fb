"""Representational comparison: independent NumPy/SciPy references, invariances, planted truths."""

import sys

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from jaxmouse import compare as C

# ---- references written independently of jaxmouse.compare -------------------------------------


def ref_rdm(x):
  """rsatoolbox 'correlation': 1 - Pearson correlation between condition patterns."""
  return 1.0 - np.corrcoef(np.asarray(x, np.float64))


def ref_rsa(rdm_a, rdm_b):
  """rsatoolbox 'spearman': Pearson correlation of average ranks of the upper triangles."""
  iu = np.triu_indices(rdm_a.shape[0], k=1)
  a, b = stats.rankdata(rdm_a[iu]), stats.rankdata(rdm_b[iu])
  return np.corrcoef(a, b)[0, 1]


def ref_cka(x, y):
  """Linear CKA in feature space (Kornblith et al. 2019, eq. for centred X, Y)."""
  x = np.asarray(x, np.float64) - np.mean(x, 0)
  y = np.asarray(y, np.float64) - np.mean(y, 0)
  return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


# ---- RSA and CKA ------------------------------------------------------------------------------


def test_rdm_and_rsa_match_references_on_random_data():
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(25, p)) for p in (7, 40, 300)]
  ys = [rng.normal(size=(25, q)) + 0.5 * xs[0][:, :1] for q in (3, 60)]
  np.testing.assert_allclose(np.asarray(C.rdm(xs[1])), ref_rdm(xs[1]), atol=1e-5)
  got = np.asarray(C.rsa_matrix(jnp.stack([C.rdm(x) for x in xs]),
                                jnp.stack([C.rdm(y) for y in ys])))
  want = np.array([[ref_rsa(ref_rdm(x), ref_rdm(y)) for y in ys] for x in xs])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert C.rsa(xs[0], xs[0]) == pytest.approx(1.0, abs=1e-6)


def test_rsa_gives_tied_distances_their_average_rank_like_scipy():
  rng = np.random.default_rng(1)
  sym = lambda m: np.triu(m, 1) + np.triu(m, 1).T
  a = sym(rng.integers(0, 4, size=(12, 12)).astype(np.float32))  # 4 distinct values: many ties
  b = sym(rng.integers(0, 3, size=(12, 12)).astype(np.float32) + 0.1 * a)
  got = float(np.asarray(C.rsa_matrix(jnp.asarray(a)[None], jnp.asarray(b)[None]))[0, 0])
  np.testing.assert_allclose(got, ref_rsa(a, b), atol=1e-5)
  # Ordinal ranks (ties broken by position) would give a different value: the check can fail.
  iu = np.triu_indices(12, k=1)
  ordinal = np.corrcoef(stats.rankdata(a[iu], method="ordinal"),
                        stats.rankdata(b[iu], method="ordinal"))[0, 1]
  assert abs(ordinal - ref_rsa(a, b)) > 1e-3


def test_cka_matches_reference_and_its_invariances():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(40, 30))
  y = x[:, :10] @ rng.normal(size=(10, 8)) + rng.normal(size=(40, 8))
  got = np.asarray(C.cka_matrix(jnp.stack([C.centered_gram(x), C.centered_gram(y)]),
                                C.centered_gram(y)[None]))[:, 0]
  np.testing.assert_allclose(got, [ref_cka(x, y), 1.0], atol=1e-5)
  assert C.linear_cka(x, x) == pytest.approx(1.0, abs=1e-6)
  q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
  base = C.linear_cka(x, y)
  assert C.linear_cka(x @ q, y) == pytest.approx(base, abs=1e-5)  # orthogonal transform
  assert C.linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-5)  # isotropic scaling
  assert C.linear_cka(x + 3.0, y) == pytest.approx(base, abs=1e-5)  # offsets are centred away
  # ...but not to stretching one direction: the check can fail.
  stretch = np.ones(30)
  stretch[:10] = 10.0
  assert abs(C.linear_cka(x * stretch, y) - base) > 0.05
  with pytest.raises(ValueError, match="number of rows"):
    C.linear_cka(x, y[:5])


# ---- neural representations ---------------------------------------------------------------------


def test_neural_representations_equal_the_trial_sum():
  rng = np.random.default_rng(3)
  images = rng.uniform(0, 255, size=(6, 5, 4)).astype(np.float32)
  trial_image = rng.integers(0, 6, size=40)
  responses = rng.poisson(3.0, size=(40, 3)).astype(np.float32)
  got = C.neural_representations(responses, trial_image, images)
  stim = images[trial_image].reshape(40, -1).astype(np.float64)
  centred = responses - responses.mean(0)
  want = np.einsum("tn,tp->np", centred, stim) / 40  # (t, n) x (t, P) -> (n, P)
  np.testing.assert_allclose(got.reshape(3, -1), want, rtol=1e-4, atol=1e-3)
  plain = C.neural_representations(responses, trial_image, images, center=False)
  want_plain = np.einsum("tn,tp->np", responses, stim) / responses.sum(0)[:, None]
  np.testing.assert_allclose(plain.reshape(3, -1), want_plain, rtol=1e-4)


def test_response_weighted_average_recovers_a_planted_receptive_field():
  rng = np.random.default_rng(4)
  yy, xx = np.mgrid[:16, :16]
  d2 = (yy - 5) ** 2 + (xx - 10) ** 2
  rf = np.exp(-d2 / 8.0) - 0.5 * np.exp(-d2 / 30.0)  # centre-surround
  images = rng.normal(128, 40, size=(4000, 16, 16)).astype(np.float32)
  drive = np.einsum("ihw,hw->i", images - 128, rf)  # (i, h, w) x (h, w) -> (i,)
  rate = np.maximum(2 * drive / drive.std() + 6, 0)
  responses = rng.poisson(rate)[:, None].astype(np.float32)
  maps = C.neural_representations(responses, np.arange(4000), images)
  assert np.corrcoef(maps[0].ravel(), rf.ravel())[0, 1] > 0.9


# ---- RMSE, matching, clusters ----------------------------------------------------------------


def test_best_match_and_normalisation_match_numpy():
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(37, 30)), rng.normal(size=(11, 30))
  rmse, index = C.best_match(jnp.asarray(a), jnp.asarray(b), chunk=8)
  full = np.sqrt(((a[:, None] - b[None]) ** 2).mean(-1))
  np.testing.assert_allclose(np.asarray(rmse), full.min(1), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(index), full.argmin(1))
  z = np.asarray(C.normalize_maps(jnp.asarray(a.reshape(37, 5, 6))))
  np.testing.assert_allclose(z, (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True), atol=1e-5)
  mm = np.asarray(C.normalize_maps(jnp.asarray(a), method="minmax"))
  assert mm.min() == pytest.approx(0.0) and mm.max() == pytest.approx(1.0)


def test_grouped_rmse_finds_the_planted_detector():
  rng = np.random.default_rng(6)
  detectors = rng.normal(size=(20, 8, 8))
  pick = rng.integers(0, 20, size=30)
  maps = 3.0 * detectors[pick] + 0.3 * rng.normal(size=(30, 8, 8)) + 1.0  # scaled, shifted copies
  groups = {"a": np.arange(15), "b": np.arange(15, 30)}
  summary, best, unit = C.grouped_rmse(maps, detectors, groups, n_clusters=3, n_central=2)
  np.testing.assert_array_equal(unit, pick)
  assert set(summary) == {"a", "b"} and summary["a"]["n_central"] <= 6
  assert all(s["bottom_up"] < 0.2 and s["top_down"] < 0.2 for s in summary.values())
  with pytest.raises(ValueError, match="pixel space"):
    C.grouped_rmse(maps, detectors[:, :4], groups)


def test_kernel_detectors_and_unit_responses():
  kernel = np.arange(3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4)
  maps = C.kernel_detectors(kernel)
  np.testing.assert_allclose(maps[2], kernel[:, :, :, 2].mean(-1))
  assert C.kernel_detectors(kernel, (6, 6)).shape == (4, 6, 6)
  feats = np.arange(2 * 6 * 8 * 3, dtype=np.float32).reshape(2, 6, 8, 3)
  np.testing.assert_array_equal(C.unit_responses(feats), feats[:, 3, 4, :])
  grid = C.unit_responses(feats, grid=2)
  assert grid.shape == (2, 12)
  np.testing.assert_array_equal(grid[:, 3:6], feats[:, 1, 6, :])  # row 0, column 1 of the grid


def test_best_match_never_picks_a_flat_map():
  rng = np.random.default_rng(11)
  a = np.asarray(C.normalize_maps(jnp.asarray(rng.normal(size=(5, 400)))))
  b = np.asarray(C.normalize_maps(jnp.asarray(np.concatenate(
      [np.full((1, 400), 3.0), 0.2 * a + rng.normal(size=(5, 400))]))))  # a flat map first
  assert not b[0].any()
  rmse, index = C.best_match(jnp.asarray(a), jnp.asarray(b))
  full = np.sqrt(((a[:, None] - b[None]) ** 2).mean(-1))
  # The flat map is 1.0 from every map, closer than the real detectors: it must still not win.
  assert (full[:, 0] < full[:, 1:].min(1)).all()
  np.testing.assert_array_equal(np.asarray(index), full[:, 1:].argmin(1) + 1)
  np.testing.assert_allclose(np.asarray(rmse), full[:, 1:].min(1), atol=1e-5)


def test_match_units_agrees_with_numpy_correlations():
  rng = np.random.default_rng(7)
  units = rng.normal(size=(50, 500))
  responses = np.stack([-2 * units[:, 17], units[:, 400] + 0.5 * rng.normal(size=50),
                        rng.normal(size=50)], 1)
  index, corr = C.match_units(responses, units, chunk=64)
  full = np.corrcoef(responses.T, units.T)[:3, 3:]
  np.testing.assert_array_equal(index, np.abs(full).argmax(1))
  np.testing.assert_allclose(corr, full[np.arange(3), index], atol=1e-5)
  assert index[0] == 17 and corr[0] == pytest.approx(-1.0, abs=1e-5)


def test_clusters_and_pca_fallback(monkeypatch):
  monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
  rng = np.random.default_rng(8)
  centres = rng.normal(size=(3, 64)) * 5
  label = np.repeat(np.arange(3), 10)
  maps = (centres[label] + rng.normal(size=(30, 64))).reshape(30, 8, 8)
  emb, method = C.embed(maps, n_components=2)
  assert method == "pca" and emb.shape == (30, 2)
  cl = C.cluster(emb, n_clusters=3, n_central=2)
  assert len({tuple(np.unique(cl.labels[label == c])) for c in range(3)}) == 3  # planted clusters
  for c in range(3):
    members = np.flatnonzero(cl.labels == c)
    d = np.linalg.norm(emb[members] - cl.centers[c], axis=1)
    np.testing.assert_array_equal(np.sort(cl.central[c]), np.sort(members[np.argsort(d)[:2]]))
  with pytest.raises(ValueError, match="umap-learn"):
    C.embed(maps, method="umap")


# ---- choosing on select images, scoring on evaluate images -------------------------------------


def test_split_images_are_disjoint_and_cover_every_image():
  sets = C.split_images(50, select_fraction=0.4, seed=3)
  assert sets["select"].size == 20 and sets["evaluate"].size == 30
  assert np.intersect1d(sets["select"], sets["evaluate"]).size == 0
  np.testing.assert_array_equal(np.union1d(sets["select"], sets["evaluate"]), np.arange(50))
  np.testing.assert_array_equal(np.union1d(sets["select_a"], sets["select_b"]), sets["select"])
  assert np.intersect1d(sets["select_a"], sets["select_b"]).size == 0
  assert not np.array_equal(sets["select"], np.arange(20))  # shuffled, not the first images
  with pytest.raises(ValueError, match="each needs >= 3"):
    C.split_images(8, select_fraction=0.5)


def _linear_problem(seed=0, n=60, side=8, n_neurons=10, noise=2.0, n_noise_units=2048):
  """Neurons = one linear filter of white-noise images + noise; a 'signal' layer holding that
  filter and three others, and a wide 'noise' layer of units blind to the image."""
  from jaxmouse.data import NeuralDataset

  rng = np.random.default_rng(seed)
  images = rng.normal(128, 40, size=(n, side, side)).astype(np.float32)
  filters = rng.normal(size=(side * side, 4)).astype(np.float32)
  noise_units = rng.gamma(1.0, 1.0, size=(n, 1, 1, n_noise_units)).astype(np.float32)

  def features(im, layers):
    (layer,) = layers
    if layer == "signal":
      return {layer: ((np.asarray(im).reshape(len(im), -1) - 128) @ filters).reshape(-1, 1, 1, 4)}
    return {layer: noise_units}

  drive = features(images, ["signal"])["signal"][:, 0, 0, :1]
  resp = drive + noise * drive.std() * rng.normal(size=(n, n_neurons))
  ds = NeuralDataset(images=images, responses=resp.astype(np.float32), trial_image=np.arange(n),
                     tiers=np.full(n, "train"), unit_ids=np.arange(n_neurons),
                     areas=np.array(["A"] * 5 + ["B"] * 5))
  return ds, features


def _ref_maps(responses, images, subset):
  """Centred response-weighted average over the images in subset, z-scored: (units, pixels)."""
  r = np.asarray(responses, np.float64)[subset]
  m = (r - r.mean(0)).T @ images[subset].reshape(len(subset), -1).astype(np.float64) / len(subset)
  m = m - m.mean(1, keepdims=True)
  return m / m.std(1, keepdims=True)


def _ref_held_out(neurons, units, images, choose, score):
  """NumPy: each neuron's unit chosen by the lowest RMSE on ``choose``, its RMSE on ``score``."""
  rmse = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).mean(-1))
  unit = rmse(_ref_maps(neurons, images, choose), _ref_maps(units, images, choose)).argmin(1)
  diff = _ref_maps(neurons, images, score) - _ref_maps(units, images, score)[unit]
  return np.sqrt((diff ** 2).mean(1)), unit


def test_rmse_rows_match_a_numpy_reference_of_choose_on_select_score_on_evaluate():
  ds, features = _linear_problem()
  central = {"area": {"A": np.array([1, 3]), "B": np.array([5, 6, 9])}}
  out = C.compare_dataset(ds, features, C.CompareConfig(layers=("signal",), map_shape=(8, 8)),
                          central=central)
  sets = C.split_images(60, select_fraction=0.5, seed=0)
  units = features(ds.images, ["signal"])["signal"].reshape(60, -1)
  want, unit = _ref_held_out(ds.responses, units, ds.images, sets["select"], sets["evaluate"])
  ab, _ = _ref_held_out(ds.responses, units, ds.images, sets["select_a"], sets["select_b"])
  ba, _ = _ref_held_out(ds.responses, units, ds.images, sets["select_b"], sets["select_a"])
  criterion = (ab + ba) / 2
  neurons = pd.DataFrame(out["neurons"])
  np.testing.assert_array_equal(neurons.best_unit, unit)
  np.testing.assert_allclose(neurons.best_rmse, want, atol=1e-4)
  rmse = pd.DataFrame(out["rmse"]).set_index(["group", "level"])
  for g, idx in (("A", np.arange(5)), ("B", np.arange(5, 10))):
    c = central["area"][g]
    assert rmse.loc[(g, "bottom_up"), "rmse"] == pytest.approx(want[idx].mean(), abs=1e-4)
    assert rmse.loc[(g, "top_down"), "rmse"] == pytest.approx(want[c].mean(), abs=1e-4)
    assert rmse.loc[(g, "bottom_up"), "rmse_select"] == pytest.approx(criterion[idx].mean(),
                                                                        abs=1e-4)
    assert rmse.loc[(g, "top_down"), "rmse_select"] == pytest.approx(criterion[c].mean(), abs=1e-4)


def test_layer_criterion_does_not_reward_a_wide_layer_of_blind_units():
  """Scored on the images that chose the unit, the best of 2,048 image-blind units beats the
  neurons' own (noisy) filter; the held-out criterion and the evaluate RMSE do not."""
  ds, features = _linear_problem()
  out = C.compare_dataset(ds, features, C.CompareConfig(layers=("signal", "noise"),
                                                        map_shape=(8, 8)))
  rmse = pd.DataFrame(out["rmse"])
  rmse = rmse[(rmse.kind == "area") & (rmse.level == "bottom_up")].set_index(["group", "layer"])
  select = C.split_images(60, select_fraction=0.5, seed=0)["select"]
  in_sample = {}
  for layer in ("signal", "noise"):
    units = features(ds.images, [layer])[layer].reshape(60, -1)
    in_sample[layer], _ = _ref_held_out(ds.responses, units, ds.images, select, select)
  assert in_sample["noise"].mean() < in_sample["signal"].mean()  # the trap is real
  for g in ("A", "B"):
    assert rmse.loc[(g, "signal"), "rmse_select"] < rmse.loc[(g, "noise"), "rmse_select"] - 0.1
    assert rmse.loc[(g, "signal"), "rmse"] < rmse.loc[(g, "noise"), "rmse"] - 0.1
    assert rmse.loc[(g, "noise"), "rmse"] == pytest.approx(np.sqrt(2), abs=0.15)  # r ~ 0


# ---- the planted mouse -----------------------------------------------------------------------


PLANTED = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")


@pytest.fixture(scope="module")
def planted_mouse():
  from jaxmouse.data import SimulationConfig, simulate
  from jaxmouse.weights import random_init

  weights = random_init("vgg16", 0)
  # Each neuron reads one unit (one channel near one position) of its area's layer.
  config = SimulationConfig.tiny(areas=("A", "B", "C", "D"), layers=PLANTED, gabor_fraction=0.0,
                                 neurons_per_area=25, mean_rate=5.0, rf_sigma=0.3, n_features=1,
                                 seed=1)
  ds, truth = simulate(config, weights=weights)
  cre = np.where(np.arange(ds.n_neurons) % 2 == 0, "Cux2-CreERT2", "Sst-IRES-Cre")
  ds = ds.replace(neuron_meta={**ds.neuron_meta, "cre_line": cre})
  return ds, weights


def test_planted_area_is_most_similar_to_its_layer_under_rsa_and_cka(planted_mouse):
  from jaxmouse.features import extract

  ds, weights = planted_mouse
  assert ds.images.shape == (200, 24, 32) and ds.n_neurons == 100
  out = C.compare_dataset(ds, lambda im, ls: extract(weights, im, layers=ls),
                          C.CompareConfig(layers=PLANTED, map_shape=(12, 16)),
                          kernel=weights.params["conv1_1"]["kernel"])
  for measure in ("rsa", "cka"):
    df = pd.DataFrame(out[measure])
    areas = df[(df.kind == "area") & (df.method == "matched")]
    table = areas.pivot(index="group", columns="layer", values="value")
    table = table.loc[list("ABCD"), list(PLANTED)]
    best = [PLANTED[j] for j in table.values.argmax(1)]
    assert best == list(PLANTED), f"{measure}:\n{table.round(3)}"
    assert set(df.kind) == {"area", "cre_line"} and set(df.method) == {"layer", "matched"}
  rmse = pd.DataFrame(out["rmse"])
  assert set(rmse.layer) == {"kernels", *PLANTED} and set(rmse.level) == {"top_down", "bottom_up"}
  assert out["maps"].shape == out["maps_select"].shape == (100, 12, 16)
  assert out["images"]["select"].size + out["images"]["evaluate"].size == 200


def test_compare_config_validates():
  with pytest.raises(ValueError, match="neurn_k"):
    C.CompareConfig(layers=("conv1_1",), neurn_k=4)
  with pytest.raises(ValueError, match="layers is empty"):
    C.CompareConfig(layers=())
