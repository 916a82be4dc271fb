"""Noise ceilings and image-bootstrap intervals of RSA and CKA against NumPy / SciPy references
written from the definitions, and on planted data whose true reliability is known."""

import itertools

import numpy as np
import pytest
from scipy import stats

from jaxmouse import compare as C
from jaxmouse import reliability as R


def _rdm(x):
  """Correlation-distance RDM of the rows of x, in NumPy."""
  return 1.0 - np.corrcoef(np.asarray(x, np.float64))


def _zscore(x):
  x = np.asarray(x, np.float64)
  return (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)


def _cka(x, y, keep=None):
  """Linear CKA of x (n, p) and y (n, q) from centred Gram matrices; ``keep (n, n)`` masks the
  entries of the inner products."""
  x = x - x.mean(0)
  y = y - y.mean(0)
  k, l = x @ x.T, y @ y.T
  keep = np.ones_like(k, bool) if keep is None else keep
  return (k * l * keep).sum() / np.sqrt((k * k * keep).sum() * (l * l * keep).sum())


def _expand(counts):
  return np.repeat(np.arange(len(counts)), counts)


@pytest.fixture(scope="module")
def pair():
  rng = np.random.default_rng(0)
  n = 40
  x = rng.normal(size=(n, 6))
  y = rng.normal(size=(n, 9)) + 0.8 * x[:, :1]
  return x, y


def test_resampled_rsa_is_the_rank_correlation_of_the_resampled_pairs(pair):
  x, y = pair
  n = len(x)
  rdms = np.stack([_rdm(x), np.round(_rdm(y), 1)])  # rounded: ties in the second RDM
  counts = R.bootstrap_counts(n, 300, seed=1)
  got = R.resampled_rsa(rdms, np.array([[0, 1]]), counts)[:, 0]
  i, j = np.triu_indices(n, 1)
  ranks = [stats.rankdata(r[i, j]) for r in rdms]
  fixed, reranked = [], []
  for c in counts:
    idx = _expand(c)
    a, b = np.triu_indices(len(idx), 1)
    other = idx[a] != idx[b]  # pairs of an image with its own copy are left out
    ra, rb = rdms[0][idx][:, idx][a, b][other], rdms[1][idx][:, idx][a, b][other]
    reranked.append(stats.spearmanr(ra, rb).statistic)
    w = c[i] * c[j]
    fixed.append(np.corrcoef(np.repeat(ranks[0], w), np.repeat(ranks[1], w))[0, 1])
  np.testing.assert_allclose(got, fixed, atol=1e-10)
  # Re-ranking each resample changes the spacing of the ranks, not their order: the intervals
  # agree closely.
  np.testing.assert_allclose(np.percentile(got, [2.5, 50, 97.5]),
                             np.percentile(reranked, [2.5, 50, 97.5]), atol=0.015)
  # Without resampling: Spearman's rho of the upper triangles.
  one = R.resampled_rsa(rdms, np.array([[0, 1]]), np.ones((1, n)))[0, 0]
  assert one == pytest.approx(stats.spearmanr(rdms[0][i, j], rdms[1][i, j]).statistic, abs=1e-10)
  assert one == pytest.approx(float(C.rsa_matrix(rdms[:1], rdms[1:])[0, 0]), abs=1e-6)


def test_resampled_cka_is_linear_cka_of_the_resampled_rows(pair):
  x, y = pair
  n = len(x)
  grams = np.stack([x @ x.T, (y - y.mean(0)) @ (y - y.mean(0)).T])  # centred or not
  counts = R.bootstrap_counts(n, 60, seed=2)
  got = R.resampled_cka(grams, np.array([[0, 1], [1, 0], [0, 0]]), counts)
  ref = []
  for c in counts:
    idx = _expand(c)
    keep = (idx[:, None] != idx[None, :]) | np.eye(len(idx), dtype=bool)
    ref.append(_cka(x[idx], y[idx], keep))
  np.testing.assert_allclose(got[:, 0], ref, atol=1e-10)
  np.testing.assert_allclose(got[:, 1], got[:, 0], atol=1e-12)
  np.testing.assert_allclose(got[:, 2], 1.0, atol=1e-12)
  one = R.resampled_cka(grams, np.array([[0, 1]]), np.ones((1, n)))[0, 0]
  assert one == pytest.approx(_cka(x, y), abs=1e-10)
  assert one == pytest.approx(C.linear_cka(x, y), abs=1e-5)


def test_the_cka_estimate_sits_inside_its_bootstrap_distribution(pair):
  """Counting an image's copies as distinct pairs would inflate resampled CKA; leaving them out
  keeps the estimate near the middle of the draws (with them, ~2% of draws fall below it)."""
  x, y = pair
  grams = np.stack([x @ x.T, y @ y.T])
  est = R.resampled_cka(grams, np.array([[0, 1]]), np.ones((1, len(x))))[0, 0]
  draws = R.resampled_cka(grams, np.array([[0, 1]]), R.bootstrap_counts(len(x), 500))[:, 0]
  assert 0.3 < np.mean(draws < est) < 0.7


def test_split_halves_partition_each_images_trials():
  rng = np.random.default_rng(0)
  trial_image = np.array([0, 0, 0, 1, 1, 1, 1, 2, 3, 3])
  responses = rng.normal(size=(10, 4))
  halves, ok = R.split_half_means(responses, trial_image, np.array([3, 0, 2, 1]), n_splits=3)
  assert halves.shape == (3, 2, 4, 4)
  np.testing.assert_array_equal(ok, [True, True, False, True])
  assert np.isnan(halves[:, :, 2]).all()
  for s in range(3):
    for row, image in ((0, 3), (1, 0), (3, 1)):
      trials = responses[trial_image == image]
      # The two halves are the means of complementary subsets, sizes differing by at most one.
      splits = [(list(a), [t for t in range(len(trials)) if t not in a])
                for k in (len(trials) // 2, len(trials) - len(trials) // 2)
                for a in itertools.combinations(range(len(trials)), k)]
      assert any(np.allclose(halves[s, 0, row], trials[a].mean(0), atol=1e-5)
                 and np.allclose(halves[s, 1, row], trials[b].mean(0), atol=1e-5)
                 for a, b in splits)


def test_spearman_brown():
  np.testing.assert_allclose(R.spearman_brown([0.0, 0.5, 1.0]), [0.0, 2 / 3, 1.0])
  assert np.isnan(R.spearman_brown(-1.0))


def test_compare_dataset_ceilings_match_a_numpy_reference():
  """The rows' ceilings, from the data alone: split halves of each evaluate image's trials,
  z-scored, correlation-distance RDMs compared by Spearman (linear CKA), averaged over splits,
  Spearman-Brown corrected."""
  from jaxmouse.data import NeuralDataset

  rng = np.random.default_rng(3)
  n_images, reps, n = 40, 4, 12
  signal = rng.normal(size=(n_images, n))
  trial_image = np.repeat(np.arange(n_images), reps)
  responses = signal[trial_image] + 0.8 * rng.normal(size=(trial_image.size, n))
  areas = np.array(["A"] * 7 + ["B"] * 5)
  ds = NeuralDataset(images=rng.uniform(0, 255, (n_images, 16, 16)).astype(np.float32),
                     responses=responses.astype(np.float32), trial_image=trial_image,
                     tiers=np.full(trial_image.size, "train"), unit_ids=np.arange(n), areas=areas)
  features = lambda images, layers: {layers[0]: np.asarray(images)[:, ::4, ::4, None]}
  config = C.CompareConfig(layers=("pixels",), map_shape=(8, 8), ceiling_splits=3, n_boot=200,
                           n_clusters=2)
  out = C.compare_dataset(ds, features, config)
  evaluate = C.split_images(n_images, select_fraction=0.5, seed=0)["evaluate"]
  halves, ok = R.split_half_means(responses, trial_image, evaluate, n_splits=3, seed=0)
  assert ok.all()
  i, j = np.triu_indices(len(evaluate), 1)
  for group in ("A", "B"):
    idx = np.flatnonzero(areas == group)
    rsa = np.mean([stats.spearmanr(_rdm(_zscore(halves[s, 0][:, idx]))[i, j],
                                   _rdm(_zscore(halves[s, 1][:, idx]))[i, j]).statistic
                   for s in range(3)])
    cka = np.mean([_cka(_zscore(halves[s, 0][:, idx]), _zscore(halves[s, 1][:, idx]))
                   for s in range(3)])
    for measure, r in (("rsa", rsa), ("cka", cka)):
      rows = [row for row in out[measure] if row["kind"] == "area" and row["group"] == group]
      assert len(rows) == 2  # the layer and the matched form, one layer
      for row in rows:
        assert row["ceiling"] == pytest.approx(2 * r / (1 + r), abs=1e-4), (measure, row)
        assert row["normalized"] == pytest.approx(row["value"] / row["ceiling"], rel=1e-6)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        assert row["normalized_ci_low"] <= row["normalized"] <= row["normalized_ci_high"]
        assert row["ceiling_images"] == len(evaluate)


def _noisy_population(seed, *, noise, m=60, n=40, reps=6):
  rng = np.random.default_rng(seed)
  signal = rng.normal(size=(m, n)) @ rng.normal(size=(n, n)) / np.sqrt(n)
  trial_image = np.repeat(np.arange(m), reps)
  draw = lambda: signal[trial_image] + noise * rng.normal(size=(trial_image.size, n))
  return signal, trial_image, draw(), draw()


@pytest.mark.parametrize("measure", ["rsa", "cka"])
def test_on_planted_data_the_ceiling_is_the_agreement_with_a_fresh_replicate(measure):
  """Data = signal + noise, repeated trials. The ceiling estimates how well the data agree with
  an independent replicate (drawn here); for RSA a model equal to the signal scores about
  sqrt(ceiling)."""
  matrix = ((lambda x: np.asarray(C.rdm(C.standardize(x)))) if measure == "rsa" else
            (lambda x: np.asarray(C.centered_gram(C.standardize(x)))))
  got = []
  for seed in range(6):
    signal, trial_image, data, replicate = _noisy_population(seed, noise=1.0)
    m = signal.shape[0]
    mean = lambda r: C.image_average(r, trial_image, m)
    halves, ok = R.split_half_means(data, trial_image, np.arange(m), n_splits=5, seed=seed)
    half = np.stack([[[matrix(halves[s, h]) for h in range(2)] for s in range(5)]])
    res = R.ceiling_and_intervals(measure=measure, neural=matrix(mean(data))[None],
                                  models=np.stack([matrix(mean(replicate)), matrix(signal)]),
                                  pairs=np.array([[0, 0], [0, 1]]), halves=half, ok=ok, n_boot=0)
    got.append((res["ceiling"][0], res["value"][0], res["value"][1]))
  ceiling, replicate_agreement, true_model = np.mean(got, axis=0)
  assert 0.6 < ceiling < 0.95  # a noise level where the ceiling matters
  assert ceiling == pytest.approx(replicate_agreement, abs=0.03)
  if measure == "rsa":
    assert true_model == pytest.approx(np.sqrt(ceiling), abs=0.03)
