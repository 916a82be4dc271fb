"""Scores of predicted against recorded responses on repeated test images.

Pure NumPy functions of arrays. Throughout:

- ``responses``: ``(n_trials, n_neurons)`` recorded single-trial responses;
- ``predictions``: ``(n_trials, n_neurons)`` model predictions for the same trials (the prediction of
  a trial is the prediction of its image, so it repeats across repeats);
- ``image_ids``: ``(n_trials,)`` which image each trial showed; trials with the same id are repeats.

Conventions follow neuralpredictors' measures: variances over repeats and over all trials use
``ddof=1``; the noise variance is the mean over images of the across-repeat variance; images with a
single trial contribute nothing to it. Results are float64 ``(n_neurons,)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "noise_variance",
    "total_variance",
    "explainable_variance_fraction",
    "feve",
    "corr",
    "corr_to_average",
    "oracle_corr",
    "image_means",
    "image_stats",
    "feve_from_stats",
]


def _check(responses, image_ids, predictions=None):
  responses = np.asarray(responses, dtype=np.float64)
  image_ids = np.asarray(image_ids)
  if responses.ndim != 2:
    raise ValueError(f"responses must be (n_trials, n_neurons), got shape {responses.shape}")
  if image_ids.shape != (responses.shape[0],):
    raise ValueError(
        f"image_ids must be (n_trials,) = ({responses.shape[0]},), got shape {image_ids.shape}")
  if predictions is not None:
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.shape != responses.shape:
      raise ValueError(
          f"predictions shape {predictions.shape} != responses shape {responses.shape}")
  return responses, image_ids, predictions


def _groups(image_ids):
  """(inverse (n_trials,), counts (n_images,)) of the distinct images."""
  _, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
  return inverse.ravel(), counts


def image_means(responses, image_ids):
  """Mean response per distinct image. Returns (ids (m,), means (m, n_neurons), counts (m,))."""
  responses, image_ids, _ = _check(responses, image_ids)
  ids, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
  sums = np.zeros((len(ids), responses.shape[1]))
  np.add.at(sums, inverse.ravel(), responses)
  return ids, sums / counts[:, None], counts


def noise_variance(responses, image_ids):
  """Mean over repeated images of the across-repeat variance (ddof=1). Returns (n_neurons,)."""
  responses, image_ids, _ = _check(responses, image_ids)
  inverse, counts = _groups(image_ids)
  repeated = counts >= 2
  if not repeated.any():
    raise ValueError("noise variance needs repeated images: every image has a single trial")
  means = np.zeros((len(counts), responses.shape[1]))
  np.add.at(means, inverse, responses)
  means /= counts[:, None]
  sq = np.zeros_like(means)
  np.add.at(sq, inverse, (responses - means[inverse]) ** 2)
  var = sq[repeated] / (counts[repeated, None] - 1)  # (images with repeats, n)
  return var.mean(axis=0)


def total_variance(responses):
  """Variance over all trials (ddof=1). Returns (n_neurons,)."""
  return np.asarray(responses, dtype=np.float64).var(axis=0, ddof=1)


def explainable_variance_fraction(responses, image_ids):
  """Fraction of the trial variance that is stimulus driven: 1 - noise_var / total_var.

  NaN for a neuron whose responses do not vary (no variance to explain).
  """
  responses, image_ids, _ = _check(responses, image_ids)
  total = total_variance(responses)
  explainable = total - noise_variance(responses, image_ids)
  ok = total > 0
  return np.where(ok, explainable / np.where(ok, total, 1.0), np.nan)


def feve(predictions, responses, image_ids):
  """Fraction of explainable variance explained, per neuron.

  FEVE = 1 - (MSE - noise_var) / (total_var - noise_var), MSE over all trials. A neuron whose
  explainable variance ``total_var - noise_var`` is zero or negative (constant, or all noise)
  gets NaN: the ratio would be infinite or flip sign. Filter neurons with
  ``explainable_variance_fraction`` first.
  """
  responses, image_ids, predictions = _check(responses, image_ids, predictions)
  noise = noise_variance(responses, image_ids)
  total = total_variance(responses)
  mse = ((predictions - responses) ** 2).mean(axis=0)
  explainable = total - noise
  ok = explainable > 1e-12 * np.maximum(total, 1e-300)
  return np.where(ok, 1.0 - (mse - noise) / np.where(ok, explainable, 1.0), np.nan)


def corr(x, y, *, eps: float = 1e-12):
  """Pearson correlation per column of two (n_samples, n) arrays; 0 where either is constant."""
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.shape != y.shape or x.ndim != 2:
    raise ValueError(f"corr needs two (n_samples, n) arrays of one shape, got {x.shape} and {y.shape}")
  xc = x - x.mean(axis=0)
  yc = y - y.mean(axis=0)
  num = (xc * yc).sum(axis=0)
  den = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum(axis=0))
  return np.where(den > eps, num / np.maximum(den, eps), 0.0)


def corr_to_average(predictions, responses, image_ids):
  """Correlation of predictions with the mean response over repeats, across images."""
  responses, image_ids, predictions = _check(responses, image_ids, predictions)
  _, mean_resp, _ = image_means(responses, image_ids)
  _, mean_pred, _ = image_means(predictions, image_ids)
  return corr(mean_pred, mean_resp)


def oracle_corr(responses, image_ids):
  """Leave-one-out oracle: correlation of each trial with the mean of its image's other repeats.

  Only images with at least two repeats take part.
  """
  responses, image_ids, _ = _check(responses, image_ids)
  inverse, counts = _groups(image_ids)
  keep = counts[inverse] >= 2
  if not keep.any():
    raise ValueError("oracle correlation needs repeated images: every image has a single trial")
  sums = np.zeros((len(counts), responses.shape[1]))
  np.add.at(sums, inverse, responses)
  loo = (sums[inverse] - responses) / np.maximum(counts[inverse] - 1, 1)[:, None]
  return corr(responses[keep], loo[keep])


# ---- per-image sufficient statistics: FEVE under resampled test images --------------------------

def image_stats(predictions, responses, image_ids) -> dict[str, np.ndarray]:
  """What FEVE needs per test image, so that it can be recomputed for any reweighting of images.

  The prediction of a trial is the prediction of its image (a model sees only the image), so
  per image and neuron the trial count, the prediction, and the sum and sum of squares of the
  responses determine the squared error, the across-repeat variance and the total variance.

  Returns ``{"image": (m,), "count": (m,), "pred": (m, n), "sum": (m, n), "sum_sq": (m, n)}``
  (float64; ``pred`` is the mean prediction over an image's trials).
  """
  responses, image_ids, predictions = _check(responses, image_ids, predictions)
  ids, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
  inverse = inverse.ravel()
  out = {"image": ids, "count": counts.astype(np.float64)}
  for name, v in (("pred", predictions), ("sum", responses), ("sum_sq", responses**2)):
    acc = np.zeros((len(ids), responses.shape[1]))
    np.add.at(acc, inverse, v)
    out[name] = acc
  out["pred"] /= counts[:, None]
  return out


def feve_from_stats(stats: dict, weights=None, *, min_fev: float | None = None) -> np.ndarray:
  """FEVE from ``image_stats`` with images weighted, e.g. by bootstrap multiplicities.

  Args:
    stats: ``image_stats(...)`` (m images, n neurons).
    weights: ``(m,)`` or ``(B, m)`` non-negative image weights (None: ones, which equals
      ``feve`` on the original trials).
    min_fev: NaN where the weighted explainable-variance fraction is below this (the inclusion
      rule of an analysis, applied to the reweighted data as it would be to new data).

  Returns:
    ``(n,)`` or ``(B, n)``; NaN where the weighted explainable variance is not positive.
  """
  count, pred, s, sq = (np.asarray(stats[k], np.float64) for k in ("count", "pred", "sum", "sum_sq"))
  w = np.ones(len(count)) if weights is None else np.asarray(weights, np.float64)
  single = w.ndim == 1
  w = np.atleast_2d(w)  # (B, m)
  if w.shape[1] != len(count):
    raise ValueError(f"weights must be (m,) or (B, m) with m = {len(count)} images, got "
                     f"{np.shape(weights)}")
  n_trials = w @ count  # (B,)
  sse = sq - 2 * pred * s + count[:, None] * pred**2  # (m, n) squared error summed over trials
  mse = (w @ sse) / n_trials[:, None]
  mean = (w @ s) / n_trials[:, None]
  total = ((w @ sq) - n_trials[:, None] * mean**2) / (n_trials[:, None] - 1)
  repeated = count >= 2
  within = np.zeros_like(s)
  within[repeated] = ((sq[repeated] - s[repeated]**2 / count[repeated, None])
                      / (count[repeated, None] - 1))
  wr = w * repeated  # (B, m)
  with np.errstate(invalid="ignore", divide="ignore"):
    noise = (wr @ within) / wr.sum(axis=1, keepdims=True)
  explainable = total - noise
  ok = np.isfinite(noise) & (explainable > 1e-12 * np.maximum(np.abs(total), 1e-300))
  if min_fev is not None:
    ok &= explainable >= min_fev * total
  out = np.where(ok, 1.0 - (mse - noise) / np.where(ok, explainable, 1.0), np.nan)
  return out[0] if single else out
