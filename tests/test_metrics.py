"""jaxmouse.metrics against loop-by-loop NumPy references and a planted-truth population."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from jaxmouse import metrics


def _repeated(rng, n_images=30, repeats=(2, 10), n_neurons=7, noise=1.0):
  """Trials of images with unequal repeat counts; returns rates per trial and noisy responses."""
  counts = rng.integers(repeats[0], repeats[1] + 1, size=n_images)
  image_ids = np.repeat(np.arange(n_images) * 3 + 5, counts)  # ids need not be 0..n-1
  rng.shuffle(image_ids)
  signal = rng.gamma(2.0, 1.0, size=(n_images * 3 + 5, n_neurons))
  rates = signal[image_ids]
  responses = rates + noise * rng.standard_normal(rates.shape)
  return image_ids, rates, responses


def _reference(pred, resp, ids):
  """Straight loops over images, as the formulas in the study read."""
  uniq = np.unique(ids)
  per_image = [resp[ids == i] for i in uniq]
  noise = np.mean([r.var(axis=0, ddof=1) for r in per_image if len(r) > 1], axis=0)
  total = resp.var(axis=0, ddof=1)
  mse = ((pred - resp) ** 2).mean(axis=0)
  feve = 1 - (mse - noise) / (total - noise)
  avg_r = np.stack([r.mean(0) for r in per_image])
  avg_p = np.stack([pred[ids == i].mean(0) for i in uniq])
  c_avg = np.array([stats.pearsonr(avg_p[:, j], avg_r[:, j])[0] for j in range(resp.shape[1])])
  c_single = np.array([stats.pearsonr(pred[:, j], resp[:, j])[0] for j in range(resp.shape[1])])
  xs, loos = [], []
  for r in per_image:
    if len(r) < 2:
      continue
    for t in range(len(r)):
      xs.append(r[t])
      loos.append(np.delete(r, t, axis=0).mean(0))
  xs, loos = np.array(xs), np.array(loos)
  oracle = np.array([stats.pearsonr(xs[:, j], loos[:, j])[0] for j in range(resp.shape[1])])
  return noise, total, feve, c_avg, c_single, oracle


def test_against_loop_reference():
  rng = np.random.default_rng(0)
  ids, rates, resp = _repeated(rng)
  pred = rates + 0.3 * rng.standard_normal(rates.shape)
  pred = pred - pred.mean(0) + rates.mean(0)
  # Predictions are per image: average the noisy prediction within each image.
  _, means, _ = metrics.image_means(pred, ids)
  pred = means[np.unique(ids, return_inverse=True)[1].ravel()]
  noise, total, feve, c_avg, c_single, oracle = _reference(pred, resp, ids)
  np.testing.assert_allclose(metrics.noise_variance(resp, ids), noise, rtol=1e-10)
  np.testing.assert_allclose(metrics.total_variance(resp), total, rtol=1e-10)
  np.testing.assert_allclose(metrics.feve(pred, resp, ids), feve, rtol=1e-9)
  np.testing.assert_allclose(metrics.corr_to_average(pred, resp, ids), c_avg, rtol=1e-9)
  np.testing.assert_allclose(metrics.corr(pred, resp), c_single, rtol=1e-9)
  np.testing.assert_allclose(metrics.oracle_corr(resp, ids), oracle, rtol=1e-9)
  np.testing.assert_allclose(
      metrics.explainable_variance_fraction(resp, ids), (total - noise) / total, rtol=1e-10)


def test_planted_truth_feve():
  """True rates score FEVE ~ 1, a constant prediction <= 0, and the noise level is recovered."""
  rng = np.random.default_rng(1)
  ids, rates, resp = _repeated(rng, n_images=400, repeats=(10, 10), n_neurons=5, noise=0.7)
  np.testing.assert_allclose(metrics.noise_variance(resp, ids), 0.49, rtol=0.08)
  f_true = metrics.feve(rates, resp, ids)
  assert np.all(np.abs(f_true - 1) < 0.05), f_true
  const = np.broadcast_to(resp.mean(0), resp.shape)
  assert np.all(metrics.feve(const, resp, ids) < 0.01)
  # A prediction with half the signal amplitude explains less.
  half = 0.5 * (rates - rates.mean(0)) + rates.mean(0)
  assert np.all(metrics.feve(half, resp, ids) < f_true - 0.1)


def test_constant_columns_and_errors():
  ids = np.array([0, 0, 1, 1])
  resp = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0], [1.0, 4.0]])
  assert metrics.corr(resp, resp)[0] == 0.0
  assert metrics.corr(resp, resp)[1] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="image_ids"):
    metrics.noise_variance(resp, ids[:3])
  with pytest.raises(ValueError, match=r"predictions shape \(4, 3\)"):
    metrics.feve(np.zeros((4, 3)), resp, ids)
  with pytest.raises(ValueError, match="repeated images"):
    metrics.noise_variance(resp, np.arange(4))


def test_no_explainable_variance_gives_nan_never_inf_or_a_flipped_sign():
  ids = np.repeat(np.arange(6), 3)
  rng = np.random.default_rng(0)
  constant = np.full(18, 2.0)
  # Noise only: the across-repeat variance exceeds the variance over images, so
  # total - noise < 0 and the plain formula would flip sign (and exceed 1).
  noise_only = np.tile([0.0, 4.0, 8.0], 6) + rng.normal(0, 0.01, 18)
  driven = np.repeat(rng.normal(0, 3, 6), 3) + rng.normal(0, 0.5, 18)
  resp = np.stack([constant, noise_only, driven], axis=1)
  assert metrics.total_variance(resp)[1] < metrics.noise_variance(resp, ids)[1]
  pred = resp + rng.normal(0, 1.0, resp.shape)
  f = metrics.feve(pred, resp, ids)
  assert np.isnan(f[0]) and np.isnan(f[1]) and np.isfinite(f[2]) and f[2] <= 1
  ev = metrics.explainable_variance_fraction(resp, ids)
  assert np.isnan(ev[0]) and ev[1] < 0 and 0 < ev[2] <= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(2, 5), st.integers(0, 2**31 - 1), st.floats(0.0, 5.0))
def test_feve_is_nan_or_at_most_that_of_the_repeat_means(n_images, repeats, seed, signal):
  """For any data and prediction, FEVE is NaN (no explainable variance) or finite, and never
  above the FEVE of the repeat means (the best prediction one value per image can give; it
  exceeds 1 slightly because the noise variance uses ddof=1)."""
  rng = np.random.default_rng(seed)
  ids = np.repeat(np.arange(n_images), repeats)
  resp = np.repeat(rng.normal(0, signal, (n_images, 3)), repeats, axis=0) + rng.normal(
      0, 1, (n_images * repeats, 3))
  resp[:, 2] = np.round(resp[:, 2])  # ties and constant columns happen
  pred = rng.normal(0, 2, (n_images, 3))[ids]  # one prediction per image, as a model gives
  f = metrics.feve(pred, resp, ids)
  assert not np.isinf(f).any()
  _, means, _ = metrics.image_means(resp, ids)
  best = metrics.feve(means[ids], resp, ids)
  assert np.all(np.isnan(f) | (f <= best + 1e-9))


def test_feve_from_image_stats_equals_feve_and_a_resampled_trial_table():
  rng = np.random.default_rng(3)
  ids, rates, resp = _repeated(rng, n_images=25, repeats=(2, 6), n_neurons=4, noise=0.8)
  pred = (rates * 0.7 + rng.normal(0, 0.2, (1, 4)))
  stats = metrics.image_stats(pred, resp, ids)
  np.testing.assert_allclose(metrics.feve_from_stats(stats), metrics.feve(pred, resp, ids),
                             rtol=1e-9)
  # Weights are image multiplicities: equal to FEVE on the trial table with images repeated.
  draws = rng.integers(0, 25, size=(3, 25))
  weights = np.stack([np.bincount(d, minlength=25) for d in draws])
  got = metrics.feve_from_stats(stats, weights)
  uniq = stats["image"]
  for b, d in enumerate(draws):
    rows = np.concatenate([np.flatnonzero(ids == uniq[i]) for i in d])
    # Copies of an image are separate images (their own repeats), as in the resample.
    new_ids = np.concatenate([np.full(np.sum(ids == uniq[i]), j) for j, i in enumerate(d)])
    np.testing.assert_allclose(got[b], metrics.feve(pred[rows], resp[rows], new_ids), rtol=1e-9)


def test_feve_from_stats_applies_the_inclusion_threshold_to_each_reweighting():
  rng = np.random.default_rng(4)
  ids = np.repeat(np.arange(20), 3)
  signal = rng.normal(0, 1, (20, 3)) * np.array([2.0, 2.0, 0.5])  # the third neuron is weak
  resp = signal[ids] + rng.normal(0, 1, (60, 3))
  stats = metrics.image_stats(signal[ids], resp, ids)
  draws = rng.integers(0, 20, size=(50, 20))
  weights = np.stack([np.bincount(d, minlength=20) for d in draws]).astype(float)
  got = metrics.feve_from_stats(stats, weights, min_fev=0.15)
  plain = metrics.feve_from_stats(stats, weights)
  ev_b = []
  for d in draws:  # the resampled data set, written out trial by trial
    rows = np.concatenate([np.flatnonzero(ids == i) for i in d])
    new_ids = np.repeat(np.arange(20), 3)
    ev_b.append(metrics.explainable_variance_fraction(resp[rows], new_ids))
  ev_b = np.array(ev_b)
  excluded = np.isnan(got) & ~np.isnan(plain)
  np.testing.assert_array_equal(excluded, ~np.isnan(plain) & (ev_b < 0.15))
  assert excluded[:, 2].sum() >= 3 and not excluded[:, :2].any()  # only the weak neuron drops
  np.testing.assert_allclose(got[~np.isnan(got)], plain[~np.isnan(got)])
