"""How far an RSA or CKA score can go (noise ceilings) and how sure it is (bootstrap over images).

Noise ceiling. A group's repeat-averaged responses are noisy, so even the true model of the
neurons would not reach RSA or CKA 1 with them. Each image's trials are split at random into two
halves (``split_half_means``); the RSA (or CKA) between the two halves' representations, averaged
over several random splits, is the split-half reliability ``r``, and the Spearman-Brown
correction ``2r / (1 + r)`` (``spearman_brown``) estimates the agreement between the data with
all their repeats and an independent replicate of them. That is the ceiling; a score is also
shown as ``score / ceiling`` (the convention of Brain-Score's ceiled scores). On planted data
(tests/test_reliability.py) the RSA ceiling matches the agreement with a fresh replicate, and a
model equal to the noise-free representation scores about ``sqrt(ceiling)`` (it is compared with
one noisy copy, not two), so a normalized score above 1 means the data are noisy, not that the
model beats them. CKA of noisy data is biased upward, which the correction does not remove: at
low reliability the CKA ceiling is higher than the agreement of two replicates.

Bootstrap. Neurons share the images, and RDMs are pairs of images, so the images are what is
resampled (``bootstrap_counts``: each resample draws the evaluate images with replacement). As in
rsatoolbox's pattern bootstrap, an RDM is not recomputed from the resampled data: the RDM of the
drawn images is the original RDM's rows and columns of the draw, with the pairs of an image with
its own copy left out. An image drawn ``c`` times makes each of its pairs count ``c_i c_j`` times,
so every resampled statistic is a quadratic form in the draw counts and a whole bootstrap is a
few matrix products: CKA exactly, with the entries between an image and its own copy left out
likewise (``resampled_cka``; kept, they bias resampled CKA upward and put the estimate at the
bottom of its bootstrap distribution), RSA as the weighted correlation of each
RDM's ranks among all pairs (``resampled_rsa``; re-ranking every resample, as rsatoolbox does,
costs a sort per RDM and resample and gives intervals within about 0.01, see
tests/test_reliability.py).

Everything here is a pure function of arrays; ``jaxmouse.compare.compare_dataset`` calls it on the
evaluate images only, so ceilings and intervals, like the scores, never see the select images.
"""

from __future__ import annotations

import warnings

import numpy as np


def spearman_brown(r, factor: float = 2.0):
  """Reliability of ``factor`` times the data from the reliability ``r`` of one part:
  ``factor r / (1 + (factor - 1) r)``; NaN where the denominator is not positive."""
  r = np.asarray(r, np.float64)
  den = 1.0 + (factor - 1.0) * r
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, factor * r / den, np.nan)


def split_half_means(responses: np.ndarray, trial_image: np.ndarray, images: np.ndarray, *,
                     n_splits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean responses to each of ``images`` over two random halves of its trials, ``n_splits``
  times.

  Args:
    responses: (n_trials, n_neurons).
    trial_image: (n_trials,) the image of each trial.
    images: (m,) the images to average over (e.g. the evaluate images).
    n_splits: independent random splits.
    seed: the splits' seed.

  Returns:
    ``(halves (n_splits, 2, m, n_neurons) float32, ok (m,) bool)``: ``ok`` marks images with at
    least two trials (the others' rows are NaN). An image with an odd number of trials gives
    its extra trial to the first or the second half at random.
  """
  responses = np.asarray(responses, np.float64)
  trial_image = np.asarray(trial_image)
  images = np.asarray(images)
  if responses.ndim != 2 or trial_image.shape != responses.shape[:1]:
    raise ValueError(f"split_half_means: expected responses (n_trials, n_neurons) and "
                     f"trial_image (n_trials,), got {responses.shape} and {trial_image.shape}")
  if n_splits < 1:
    raise ValueError(f"split_half_means: n_splits must be >= 1, got {n_splits}")
  rng = np.random.default_rng([seed, 0x5A1F])
  pos = {int(im): i for i, im in enumerate(images)}
  trials = [[] for _ in images]
  for t, im in enumerate(trial_image):
    i = pos.get(int(im))
    if i is not None:
      trials[i].append(t)
  ok = np.array([len(t) >= 2 for t in trials])
  out = np.full((n_splits, 2, len(images), responses.shape[1]), np.nan)
  for s in range(n_splits):
    for i, t in enumerate(trials):
      if len(t) < 2:
        continue
      t = rng.permutation(t)
      half = len(t) // 2 + (int(rng.integers(2)) if len(t) % 2 else 0)
      out[s, 0, i] = responses[t[:half]].mean(0)
      out[s, 1, i] = responses[t[half:]].mean(0)
  return out.astype(np.float32), ok


def bootstrap_counts(n: int, n_boot: int, *, seed: int = 0) -> np.ndarray:
  """How often each of ``n`` items is drawn in each of ``n_boot`` resamples with replacement:
  ``(n_boot, n)`` int32, rows summing to ``n``."""
  rng = np.random.default_rng([seed, 0xB007])
  draws = rng.integers(0, n, size=(n_boot, n))
  return np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.int32)


def _quad(counts: np.ndarray, mats: np.ndarray) -> np.ndarray:
  """``c^T M c`` for every resample's counts ``c`` (rows of ``(B, n)``) and every matrix of
  ``mats (q, n, n)``: ``(B, q)`` float64, as one matrix product."""
  q, n = mats.shape[0], mats.shape[1]
  c = np.asarray(counts, np.float64)
  mc = (mats.reshape(q * n, n) @ c.T).reshape(q, n, -1)  # (q, n, B): M c for every resample
  return np.einsum("qnb,bn->bq", mc, c)


def _ranks(rdms: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
  """Each RDM's upper-triangle entries replaced by their ranks among the pairs of ``valid``
  images (ties averaged), centred, as symmetric matrices with a zero diagonal (and zeros where an
  image is not valid): (m, n, n) float64."""
  from scipy.stats import rankdata

  m, n = rdms.shape[0], rdms.shape[1]
  i, j = np.triu_indices(n, k=1)
  if valid is not None:
    keep = np.asarray(valid, bool)[i] & np.asarray(valid, bool)[j]
    i, j = i[keep], j[keep]
  out = np.zeros((m, n, n))
  if i.size:
    r = rankdata(np.asarray(rdms, np.float64)[:, i, j], axis=1)
    out[:, i, j] = r - r.mean(axis=1, keepdims=True)
    out[:, j, i] = out[:, i, j]
  return out


def resampled_rsa(rdms: np.ndarray, pairs: np.ndarray, counts: np.ndarray, *,
                  valid: np.ndarray | None = None) -> np.ndarray:
  """Spearman correlation of RDM pairs for each resample of the images, the ranks taken over all
  images.

  Args:
    rdms: (m, n, n) RDMs over the same n images.
    pairs: (q, 2) indices into ``rdms`` of the RDMs to compare.
    counts: (B, n) how often each image is drawn (``bootstrap_counts``; ones for the RDMs
      themselves).
    valid: (n,) the images whose pairs are ranked and counted (default: all).

  Returns:
    (B, q): the Pearson correlation of the RDMs' ranks over the pairs of drawn images, each pair
    ``(i, j)`` counted ``c_i c_j`` times (the pairs of an image with its own copy left out). With
    every count 1 this is Spearman's rho; for a resample it differs from re-ranking the resampled
    entries only in the spacing of the ranks, not their order (tests/test_reliability.py
    compares the intervals with SciPy's re-ranked ones), and it costs matrix products instead of
    a sort per RDM and resample.
  """
  ranks = _ranks(rdms, valid)
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  n = ranks.shape[1]
  if valid is not None:
    counts = np.asarray(counts) * np.asarray(valid, bool)
  off = np.ones((1, n, n)) - np.eye(n)[None]
  uniq = np.unique(pairs)
  # Per resample: total weight, weighted sums, sums of squares and cross products.
  total = _quad(counts, off)[:, 0]  # (B,)
  first = _quad(counts, ranks[uniq])  # (B, u)
  second = _quad(counts, ranks[uniq] ** 2)
  cross = _quad(counts, ranks[pairs[:, 0]] * ranks[pairs[:, 1]])  # (B, q)
  at = {int(u): k for k, u in enumerate(uniq)}
  a = np.array([at[int(x)] for x in pairs[:, 0]])
  b = np.array([at[int(x)] for x in pairs[:, 1]])
  with np.errstate(invalid="ignore", divide="ignore"):
    t = total[:, None]
    cov = cross - first[:, a] * first[:, b] / t
    var_a = second[:, a] - first[:, a] ** 2 / t
    var_b = second[:, b] - first[:, b] ** 2 / t
    return cov / np.sqrt(var_a * var_b)


def resampled_cka(grams: np.ndarray, pairs: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Linear CKA of Gram-matrix pairs for each resample of the images.

  Args:
    grams: (m, n, n) Gram matrices ``X X^T`` (centred or not) over the same n images.
    pairs: (q, 2) indices into ``grams`` of the pairs to compare.
    counts: (B, n) how often each image is drawn (ones for the matrices themselves).

  Returns:
    (B, q): linear CKA of the resampled data (rows of ``X`` repeated as often as they were drawn,
    then centred), with the entries between an image and its own copy left out of the inner
    products, as the RSA leaves out such pairs. Those entries equal the image's diagonal entry
    and would count it ``c^2`` instead of ``c`` times, which biases resampled CKA upward (the
    estimate would sit near the bottom of its bootstrap distribution). With every count 1 this is
    linear CKA. With ``N = sum c``, ``r = K c / N``, ``t = c^T K c / N^2`` and ``K~ = K - r 1^T -
    1 r^T + t``, the inner product is ``c^T (K~_a * K~_b) c - sum_i (c_i^2 - c_i) K~_a,ii K~_b,ii``.
  """
  grams = np.asarray(grams, np.float64)
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  c = np.asarray(counts, np.float64)
  big_n = c.sum(-1)  # (B,)
  rows = np.einsum("mij,bj->bmi", grams, c) / big_n[:, None, None]  # (B, m, n)
  tot = np.einsum("bmi,bi->bm", rows, c) / big_n[:, None]  # (B, m)
  diag = (np.einsum("mii->mi", grams)[None] - 2 * rows + tot[..., None])  # (B, m, n) of K~
  copies = c * c - c  # (B, n) entries between an image and its own copies

  def inner(i, j, prod):
    # c^T (K~_i * K~_j) c expanded: the uncentred term, minus the row and total corrections.
    cross = np.einsum("bqi,bqi->bq", rows[:, i] * c[:, None, :], rows[:, j])
    full = prod - 2 * big_n[:, None] * cross + big_n[:, None] ** 2 * tot[:, i] * tot[:, j]
    return full - np.einsum("bqi,bqi,bi->bq", diag[:, i], diag[:, j], copies)

  ab = inner(pairs[:, 0], pairs[:, 1], _quad(c, grams[pairs[:, 0]] * grams[pairs[:, 1]]))
  uniq = np.unique(pairs)
  self_ = inner(uniq, uniq, _quad(c, grams[uniq] ** 2))
  at = {int(u): k for k, u in enumerate(uniq)}
  norm_a = self_[:, [at[int(x)] for x in pairs[:, 0]]]
  norm_b = self_[:, [at[int(x)] for x in pairs[:, 1]]]
  with np.errstate(invalid="ignore", divide="ignore"):
    return ab / np.sqrt(norm_a * norm_b)


# ---- ceilings and intervals of a comparison --------------------------------------------------------

def percentile_ci(draws: np.ndarray, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
  """Percentile interval over axis 0 of ``draws (B, ...)``, NaN draws ignored."""
  a = (1.0 - ci) / 2.0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
    lo, hi = np.nanquantile(np.asarray(draws, np.float64), [a, 1.0 - a], axis=0)
  return lo, hi


def ceiling_and_intervals(*, measure: str, neural: np.ndarray, models: np.ndarray,
                          pairs: np.ndarray, halves: np.ndarray, ok: np.ndarray, n_boot: int,
                          seed: int = 0, ci: float = 0.95) -> dict[str, np.ndarray]:
  """Noise ceilings of the groups and bootstrap intervals of their scores, for RSA or CKA.

  Args:
    measure: ``"rsa"`` (``neural``, ``models``, ``halves`` are RDMs) or ``"cka"`` (centred Gram
      matrices).
    neural: (G, n, n) each group's matrix over the n evaluate images.
    models: (M, n, n) the matrices the groups are scored against (layers, matched units).
    pairs: (q, 2) (group, model) index pairs: the scores to give intervals.
    halves: (G, S, 2, n, n) each group's matrices from the two halves of its trials, S splits
      (rows and columns of images without two trials are ignored, ``ok``).
    ok: (n,) images with at least two trials (the ceiling rests on these; NaN ceilings with
      fewer than 3).
    n_boot: resamples of the evaluate images (0: no intervals).
    seed, ci: the resamples' seed and the interval's level.

  Returns:
    ``ceiling (G,)``, ``reliability (G,)`` (split-half, before Spearman-Brown), ``value (q,)``,
    ``ci_low``, ``ci_high``, ``normalized`` (value / ceiling; NaN where the ceiling is not
    positive), ``normalized_ci_low``, ``normalized_ci_high`` (each resample's value over its
    own ceiling), all float64; NaN intervals when ``n_boot`` is 0.
  """
  fn = {"rsa": resampled_rsa, "cka": resampled_cka}[measure]
  neural = np.asarray(neural, np.float32)
  models = np.asarray(models, np.float32)
  g, n = neural.shape[0], neural.shape[1]
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  halves = np.nan_to_num(np.asarray(halves, np.float32))  # rows of unusable images weigh 0
  s = halves.shape[1]
  stack = np.concatenate([neural, models])
  score_pairs = np.stack([pairs[:, 0], g + pairs[:, 1]], 1)
  half_stack = halves.reshape(g * s * 2, n, n)
  first = np.arange(g * s) * 2
  half_pairs = np.stack([first, first + 1], 1)
  ok = np.asarray(ok, np.float32)

  def ceilings(counts):
    if ok.sum() < 3:  # too few repeated images for a ceiling
      r = np.full((len(counts), g), np.nan)
      return r, r
    counts = counts * ok
    valid = {"valid": ok} if measure == "rsa" else {}
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample may draw < 2 of them
      r = fn(half_stack, half_pairs, counts, **valid).reshape(len(counts), g, s).mean(-1)
    return r, spearman_brown(r)

  ones = np.ones((1, n), np.float32)
  value = fn(stack, score_pairs, ones)[0].astype(np.float64)
  reliability, ceiling = (a[0] for a in ceilings(ones))
  with np.errstate(invalid="ignore", divide="ignore"):
    normalized = np.where(ceiling[pairs[:, 0]] > 0, value / ceiling[pairs[:, 0]], np.nan)
  out = {"ceiling": ceiling, "reliability": reliability, "value": value,
         "normalized": normalized}
  nan = np.full(len(pairs), np.nan)
  if n_boot <= 0:
    return {**out, "ci_low": nan, "ci_high": nan, "normalized_ci_low": nan,
            "normalized_ci_high": nan}
  counts = bootstrap_counts(n, n_boot, seed=seed)
  draws = fn(stack, score_pairs, counts)  # (B, q)
  _, ceil_draws = ceilings(counts)  # (B, G)
  den = ceil_draws[:, pairs[:, 0]]
  with np.errstate(invalid="ignore", divide="ignore"):
    norm_draws = np.where(den > 0, draws / den, np.nan)
  out["ci_low"], out["ci_high"] = percentile_ci(draws, ci)
  out["normalized_ci_low"], out["normalized_ci_high"] = percentile_ci(norm_draws, ci)
  return out
