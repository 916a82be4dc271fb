"""The simulated mouse: determinism, a truth that recomputes independently, FEVE of the truth
near 1, measured explainable variance equal to the planted one, per-area structure, stimuli."""

import numpy as np
import pytest

from jaxmouse import metrics
from jaxmouse.data import NeuralDataset, SimulationConfig, simulate
from jaxmouse.data import simulation
from jaxmouse.data.stimuli import natural_images

SMALL = dict(image_shape=(24, 32), n_images=260, n_test_images=60, n_repeats=10,
             neurons_per_area=(40, 30, 30, 30), layers=("conv1_2", ("conv2_1", "conv2_2"),
                                                       "conv2_2", "conv2_1"),
             gabor_fraction=(0.5, 0.2, 0.1, 0.0), rf_sigma=(2.0, 3.0, 3.5, 4.0))


@pytest.fixture(scope="module")
def weights():
  from jaxmouse.weights import random_init
  return random_init("vgg16", 0)


@pytest.fixture(scope="module")
def small(weights):
  config = SimulationConfig(seed=11, **SMALL)
  ds, truth = simulate(config, weights=weights)
  return config, ds, truth


def test_deterministic_from_the_seed(small, weights):
  config, ds, truth = small
  ds2, truth2 = simulate(config, weights=weights, batch_size=32, neuron_chunk=16)
  assert ds2.equals(ds)  # batch and chunk sizes change nothing
  np.testing.assert_allclose(truth2.rates, truth.rates, rtol=1e-5)
  other, _ = simulate(SimulationConfig(seed=12, **SMALL), weights=weights)
  assert not np.array_equal(other.images, ds.images)
  assert not np.array_equal(other.responses, ds.responses)


def test_sizes_and_tiers(small):
  config, ds, truth = small
  assert ds.n_neurons == config.n_neurons == 130
  assert ds.n_trials == config.n_trials == 200 + 60 * 10
  assert ds.area_names == ("V1", "LM", "AL", "RL")
  assert ds.neurons_per_area() == {"V1": 40, "LM": 30, "AL": 30, "RL": 30}
  np.testing.assert_array_equal(ds.repeats("test"), 10)
  assert ds.tier_images("test").size == 60
  assert ds.tier_images("validation").size == 40  # 20% of the 200 single-trial images
  assert truth.rates.shape == (260, 130) and (truth.rates > 0).all()
  np.testing.assert_allclose(truth.rates.mean(), config.mean_rate, rtol=0.25)
  assert ds.images.min() >= 0 and ds.images.max() <= 255


def test_planted_structure_per_area(small):
  config, ds, truth = small
  for area, n, layers, gf in zip(config.areas, config.neurons_per_area, config.layers,
                                 config.gabor_fraction):
    m = truth.areas == area
    assert np.sum(truth.model[m] == "gabor") == round(gf * n)
    cnn = m & (truth.model == "cnn")
    assert set(truth.layer[cnn]) <= set(layers) and (truth.layer[m & ~cnn] == "").all()
    assert np.isnan(truth.gabor[cnn]).all() and np.isfinite(truth.gabor[m & ~cnn]).all()
    # Each CNN neuron has exactly n_features non-zero channel weights of unit norm.
    nz = (truth.feature_weights[cnn] != 0).sum(axis=1)
    np.testing.assert_array_equal(nz, config.n_features)
    np.testing.assert_allclose(np.linalg.norm(truth.feature_weights[cnn], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(truth.spatial_mask[cnn].sum(axis=(1, 2)), 1, rtol=1e-5)
  sig = [np.median(truth.rf_sigma[truth.areas == a]) for a in config.areas]
  assert sig == sorted(sig)  # receptive fields grow along the planted hierarchy


def test_default_hierarchy_or_none():
  cfg = SimulationConfig()
  assert cfg.layers == (("conv2_2",),) + (("conv3_3", "conv4_1"),) * 3
  assert cfg.gabor_fraction[0] > cfg.gabor_fraction[1] and cfg.rf_sigma[0] < cfg.rf_sigma[1]
  flat = SimulationConfig(hierarchy=False, areas=simulation.ALLEN_AREAS)
  assert len(set(flat.layers)) == 1 and len(flat.layers) == 6
  assert len(set(flat.gabor_fraction)) == 1 and len(set(flat.rf_sigma)) == 1
  one = SimulationConfig(layers="conv3_1")
  assert one.layers == (("conv3_1",),) * 4
  mix = SimulationConfig(layers=(("conv3_1", "conv4_2"),))
  assert mix.layers == (("conv3_1", "conv4_2"),) * 4
  per_area = SimulationConfig(layers=("conv1_2", "conv2_1", "conv2_1", "conv2_2"))
  assert per_area.layers == (("conv1_2",), ("conv2_1",), ("conv2_1",), ("conv2_2",))
  assert SimulationConfig.from_dict(flat.to_dict()) == flat
  tiny = SimulationConfig.tiny(seed=3)
  assert tiny.image_shape == (24, 32) and tiny.n_neurons == 48 and tiny.seed == 3


@pytest.mark.parametrize("kwargs, words", [
    (dict(layers="conv9_9"), "conv9_9"),
    (dict(n_repeats=1), "n_repeats >= 2"),
    (dict(image_shape=(12, 12), layers="conv5_1"), "too small"),
    (dict(neurons_per_area=(5, 5)), "one entry per area (4)"),
    (dict(layers=("conv2_2", "conv3_3")), "layers: expected one entry per area (4)"),
    (dict(noise="gamma_poisson"), "noise_level"),
    (dict(noise="gaussian"), "noise"),
    (dict(n_images=100, n_test_images=100), "no training image"),
    (dict(gabor_fraction=1.5), "gabor_fraction"),
    (dict(n_features=100, layers="conv1_1"), "exceeds the 64 channels"),
])
def test_config_errors(kwargs, words):
  with pytest.raises(ValueError) as e:
    SimulationConfig(**kwargs)
  assert words in str(e.value)


def _numpy_rates(truth, images, features, idx):
  """Recomputes the rates of neurons ``idx`` from the truth's parameters with NumPy loops."""
  out = np.empty((images.shape[0], len(idx)))
  x = images.astype(np.float64) / 255.0 - 0.5
  H, W = images.shape[1:]
  yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
  for j, i in enumerate(idx):
    if truth.model[i] == "cnn":
      f = features[truth.layer[i]].astype(np.float64)
      h, w, c = f.shape[1:]
      subunits = (truth.feature_weights[i, None] if truth.subunit_weights is None
                  else truth.subunit_weights[i])
      r = [(f * truth.spatial_mask[i, :h, :w, None] * wt[None, None, :c]).sum(axis=(1, 2, 3))
           for wt in subunits]
      if len(r) == 1:
        drive = r[0]
      else:
        off, sc = truth.subunit_offset[i], truth.subunit_scale[i]
        drive = sum(np.maximum((v - o) / s_, 0) ** 2 for v, o, s_ in zip(r, off, sc))
    else:
      (cy, cx), s = truth.rf_center[i], truth.rf_sigma[i]
      theta, freq = truth.gabor[i]
      env = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2))
      carrier = 2 * np.pi * freq * ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta))
      even = env * np.cos(carrier)
      even -= env * even.sum() / env.sum()
      odd = env * np.sin(carrier)
      even, odd = even / np.linalg.norm(even), odd / np.linalg.norm(odd)
      drive = np.hypot((x * even).sum(axis=(1, 2)), (x * odd).sum(axis=(1, 2)))
    u = truth.gain[i] * drive + truth.bias[i]
    out[:, j] = truth.scale[i] * np.where(u > 1, u, np.exp(u - 1))
  return out


def test_truth_recomputes_independently(small, weights):
  from jaxmouse.features import extract

  config, ds, truth = small
  rng = np.random.default_rng(0)
  cnn = np.flatnonzero(truth.model == "cnn")
  gab = np.flatnonzero(truth.model == "gabor")
  idx = np.concatenate([rng.choice(cnn, 6, replace=False), rng.choice(gab, 4, replace=False)])
  images = ds.images[:50]
  features = extract(weights, images, layers=sorted(set(truth.layer[cnn])))
  ref = _numpy_rates(truth, images, features, idx)
  np.testing.assert_allclose(truth.rates[:50, idx], ref, rtol=2e-3, atol=1e-4)


def test_subunit_neurons_recompute_and_lie_outside_the_linear_readout_family(weights):
  from jaxmouse.features import extract

  config = SimulationConfig.tiny(areas=("V1",), neurons_per_area=12, gabor_fraction=0.0,
                                 layers="conv2_2", subunits=3, n_features=4, n_images=400,
                                 drive_gain=1.0)
  ds, truth = simulate(config, weights=weights)
  assert truth.subunit_weights.shape[:2] == (12, 3)
  chans = [set(np.flatnonzero(w)) for w in truth.subunit_weights[0]]
  assert all(len(c) == 4 for c in chans) and not (chans[0] & chans[1] | chans[1] & chans[2])
  f = extract(weights, ds.images, layers=["conv2_2"])
  ref = _numpy_rates(truth, ds.images, f, np.arange(12))
  np.testing.assert_allclose(truth.rates, ref, rtol=2e-3, atol=1e-4)
  # Out of sample, a ridge readout of the whole planted layer predicts a subunit's own linear
  # drive r_0 almost perfectly, and the neuron's drive sum_j relu(r_j)^2 much worse.
  from sklearn.linear_model import Ridge

  x = f["conv2_2"].reshape(len(f["conv2_2"]), -1).astype(np.float64)
  h, w, c = f["conv2_2"].shape[1:]
  mask = truth.spatial_mask[:, :h, :w]
  r = np.einsum("nhwc,khw,ksc->nks", f["conv2_2"], mask, truth.subunit_weights[:, :, :c])
  z = (r - truth.subunit_offset) / truth.subunit_scale
  drives = {"linear": r[:, :, 0], "subunit": (np.maximum(z, 0) ** 2).sum(axis=2)}
  score = {}
  for name, d in drives.items():
    model = Ridge(alpha=1e-3 * (x**2).sum() / len(x)).fit(x[:300], d[:300])
    pred = model.predict(x[300:])
    score[name] = [np.corrcoef(pred[:, i], d[300:, i])[0, 1] ** 2 for i in range(12)]
  assert np.median(score["linear"]) > 0.95, score
  assert np.median(score["subunit"]) < np.median(score["linear"]) - 0.15, score


def test_truth_is_checkable_with_metrics(small):
  config, ds, truth = small
  ti, r = ds.tier("test")
  feve = metrics.feve(truth.rates[ti], r, ti)
  assert abs(np.median(feve) - 1) < 0.05, np.median(feve)
  # A wrong model (rates of another neuron) is far from 1: the check can fail.
  wrong = metrics.feve(np.roll(truth.rates, 1, axis=1)[ti], r, ti)
  assert np.median(wrong) < 0.5
  measured = metrics.explainable_variance_fraction(r, ti)
  planted = truth.expected_explainable_variance_fraction(np.unique(ti))
  assert abs(np.mean(measured - planted)) < 0.03
  assert np.corrcoef(measured, planted)[0, 1] > 0.8
  noise = metrics.noise_variance(r, ti)
  np.testing.assert_allclose(noise.mean() / truth.expected_noise_variance(np.unique(ti)).mean(),
                             1, atol=0.05)


@pytest.mark.parametrize("level", [0.2, 1.0])
def test_gamma_poisson_noise_level_is_measured(small, level):
  config, ds, truth = small
  rng = np.random.default_rng(5)
  test_images = np.repeat(np.arange(60), 20)
  r = simulation.draw_responses(rng, truth.rates, test_images, noise="gamma_poisson",
                                noise_level=level)
  planted = simulation.Truth(**{**truth.__dict__, "noise": "gamma_poisson", "noise_level": level})
  expected_noise = planted.expected_noise_variance(np.arange(60))
  measured_noise = metrics.noise_variance(r, test_images)
  np.testing.assert_allclose(measured_noise.mean() / expected_noise.mean(), 1, atol=0.05)
  ev = metrics.explainable_variance_fraction(r, test_images)
  assert abs(np.mean(ev - planted.expected_explainable_variance_fraction(np.arange(60)))) < 0.03
  poisson_ev = truth.expected_explainable_variance_fraction(np.arange(60))
  assert np.mean(ev) < np.mean(poisson_ev) - 0.02  # more noise, less explainable variance


def test_truth_file_round_trip(small, tmp_path):
  _, _, truth = small
  path = simulation.save_truth(truth, simulation.truth_path(tmp_path / "sim.npz"))
  assert path.name == "sim.truth.npz"
  back = simulation.load_truth(tmp_path / "sim.npz")
  for f in ("unit_ids", "areas", "model", "layer", "spatial_mask", "feature_weights", "gabor",
            "rates", "gain", "bias", "scale"):
    np.testing.assert_array_equal(getattr(back, f), getattr(truth, f))
  assert back.config == truth.config and back.weights["source"] == "random"
  assert simulation.truth_path(tmp_path) == tmp_path / "truth.npz"
  with pytest.raises(FileNotFoundError, match="truth"):
    simulation.load_truth(tmp_path / "other.npz")


def test_natural_images_are_deterministic_photographs():
  a = natural_images(12, (18, 32), seed=4)
  assert a.shape == (12, 18, 32) and a.dtype == np.float32
  assert a.min() >= 0 and a.max() <= 255 and a.std() > 10
  np.testing.assert_array_equal(natural_images(5, (18, 32), seed=4), a[:5])  # prefix-stable
  assert not np.array_equal(natural_images(5, (18, 32), seed=5), a[:5])
  # Natural images have most power at low spatial frequencies (unlike white noise).
  spec = np.abs(np.fft.fft2(a - a.mean(axis=(1, 2), keepdims=True))) ** 2
  low = spec[:, :3, :3].sum() + spec[:, -2:, :3].sum()
  assert low / spec.sum() > 0.2


def test_cli_simulate_info_convert(tmp_path, capsys):
  from jaxmouse.cli import main

  out = tmp_path / "sim.npz"
  assert main(["data", "simulate", "--out", str(out), "--neurons", "8,6,5,5", "--n-images", "60",
               "--n-test-images", "8", "--n-repeats", "4", "--image-shape", "24x32",
               "--noise", "gamma_poisson", "--noise-level", "0.3", "--gabor-fraction", "0.5,0,0,0",
               "--layers", "conv1_2,conv2_1+conv2_2,conv2_1,conv2_2", "--quiet"]) == 0
  text = capsys.readouterr().out
  assert "simulated in" in text and "random VGG16" in text
  assert main(["data", "info", str(out)]) == 0
  text = capsys.readouterr().out
  for line in ("V1", "LM", "AL", "RL"):
    assert any(l.startswith(line) for l in text.splitlines())
  assert "planted models" in text and "test       8 images, repeats per image 4..4" in text
  rows = {l.split()[0]: l for l in text.splitlines() if l.split()}
  assert "conv1_2 4, gabor 4" in rows["V1"] and "conv2_1 5" in rows["AL"]
  assert "gabor" not in rows["LM"] and "conv2_2" in rows["RL"]
  assert main(["data", "convert", str(out), "--out", str(tmp_path / "tree")]) == 0
  capsys.readouterr()
  assert main(["data", "info", str(tmp_path / "tree")]) == 0
  assert "filetree" in capsys.readouterr().out
  assert main(["data", "simulate", "--out", str(out), "--quiet"]) == 1  # exists, no --overwrite
  assert "already exists" in capsys.readouterr().err
  assert main(["data", "info", str(tmp_path / "nothing.npz")]) == 1
  assert "nothing.npz" in capsys.readouterr().err
