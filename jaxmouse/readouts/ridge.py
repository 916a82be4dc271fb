"""Ridge regression in closed form for every neuron and every penalty at once.

One symmetric eigendecomposition per feature space: of the ``(d, d)`` covariance ``X^T X`` when
there are fewer features than images, else of the ``(n, n)`` kernel ``X X^T`` (the dual form).
Either way the solution for penalty ``alpha`` is

    coef(alpha) = B R diag(1 / (lam + alpha)) Q,     B (d, r), R (r, r), lam (r,), Q (r, k),

so predictions for all penalties and neurons cost one ``(m, d) x (d, r)`` product, one
``(m, r) x (r, r)`` rotation and a rescale. In the primal form B holds the eigenvectors and R is
the identity (omitted); in the dual form B is the centred training features ``X^T`` themselves and
R the kernel's eigenvectors, so the ``(d, n) x (n, n)`` product ``X^T U`` is never formed (a new
image costs ``d n + n^2`` multiply-adds either way). The eigendecomposition is LAPACK's
divide-and-conquer ``syevd`` in float32 on a kernel accumulated in float32, as scikit-learn's
``Ridge`` solves its float32 problems.
Images may carry weights (their number of repeats): fitting image means with weights equals
fitting every trial. The intercept is not penalized (X and Y are centred), as in scikit-learn's
``Ridge(fit_intercept=True)``; the objective is ``sum_i w_i (y_i - x_i coef - b)^2 + alpha |coef|^2``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg


class RidgeSolution(NamedTuple):
  """Everything needed to predict with any penalty. Shapes: d features, r rank, k neurons."""
  x_mean: np.ndarray   # (d,)
  y_mean: np.ndarray   # (k,)
  basis: np.ndarray    # (d, r)
  eigvals: np.ndarray  # (r,) eigenvalues of the weighted, centred X^T X (or X X^T)
  proj: np.ndarray     # (r, k)
  rotation: np.ndarray | None = None  # (r, r) applied after ``basis`` (dual form), or None


def check_alphas(alphas) -> np.ndarray:
  alphas = np.atleast_1d(np.asarray(alphas, np.float64))
  if alphas.ndim != 1 or alphas.size == 0:
    raise ValueError(f"alphas must be a non-empty 1-D array, got shape {alphas.shape}")
  if not np.isfinite(alphas).all() or (alphas <= 0).any():
    raise ValueError(f"ridge penalties (alpha) must be finite and > 0 (alpha = 0 is an "
                     f"unregularized fit, undefined with more features than images), got "
                     f"{alphas.tolist()}")
  return alphas


@jax.jit
def _gram(xs):
  return xs.T @ xs  # (d, d)


@jax.jit
def _kernel(xs):
  return xs @ xs.T  # (n, n)


@jax.jit
def _weighted_mean(x, p):
  return jnp.einsum("n,nd->d", p, x, precision="highest")


def _eigh(a):
  """Eigenvalues (ascending, clipped at 0) and eigenvectors of a symmetric PSD float32 matrix."""
  lam, v = scipy.linalg.eigh(np.asarray(a, np.float32), driver="evd", overwrite_a=True,
                             check_finite=False)
  # round-off can make the smallest eigenvalues slightly negative
  return np.clip(lam, 0.0, None).astype(np.float32), v.astype(np.float32)


def solve(x, y, *, weights=None) -> RidgeSolution:
  """Decomposes once; the returned solution predicts for any penalty.

  Args:
    x: ``(n, d)`` features (one row per image).
    y: ``(n, k)`` responses (image means when ``weights`` counts the repeats).
    weights: ``(n,)`` non-negative sample weights, or None for ones.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.float32)
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f"ridge needs x (n, d) and y (n, k) with one n, got {x.shape} and {y.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"ridge features x {x.shape} contain NaN or infinite values")
  if not np.isfinite(y).all():
    raise ValueError(f"ridge responses y {y.shape} contain NaN or infinite values")
  n, d = x.shape
  w = np.ones(n, np.float64) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
    raise ValueError(f"weights must be (n,) = ({n},) non-negative with a positive sum, "
                     f"got shape {w.shape}")
  x_mean = np.asarray(_weighted_mean(jnp.asarray(x), jnp.asarray(w / w.sum(), jnp.float32)))
  y_mean = ((w / w.sum()) @ y.astype(np.float64)).astype(np.float32)
  sw = np.sqrt(w).astype(np.float32)[:, None]
  xs = jnp.asarray(x) - x_mean
  xs = xs * sw if weights is not None else xs  # (n, d)
  ys = jnp.asarray((y - y_mean) * sw)  # (n, k)
  if d <= n:
    lam, v = _eigh(_gram(xs))
    return RidgeSolution(x_mean, y_mean, v, lam, np.asarray(v.T @ np.asarray(xs.T @ ys)))
  lam, u = _eigh(_kernel(xs))
  return RidgeSolution(x_mean, y_mean, np.asarray(xs.T), lam, np.asarray(u.T @ np.asarray(ys)),
                       rotation=u)


@jax.jit
def _matmul(a, b):
  return jnp.matmul(a, b, precision="highest")


def _rotate(z, rotation):
  return z if rotation is None else z @ rotation


@jax.jit
def _predict(x_mean, y_mean, basis, eigvals, proj, rotation, x, alphas):
  z = _rotate((x - x_mean) @ basis, rotation)  # (m, r)
  scale = 1.0 / (eigvals[None, :] + alphas[:, None])  # (a, r)
  return jnp.einsum("mr,ar,rk->amk", z, scale, proj) + y_mean  # (a, m, k)


def predict(sol: RidgeSolution, x, alphas):
  """Predictions for every penalty: ``x (m, d)``, ``alphas (a,)`` -> ``(a, m, k)``."""
  alphas = check_alphas(alphas)
  return np.asarray(_predict(*sol, jnp.asarray(x, jnp.float32), jnp.asarray(alphas, jnp.float32)))


@jax.jit
def _predict_chosen(x_mean, y_mean, basis, eigvals, proj, rotation, x, alpha):
  z = _rotate((x - x_mean) @ basis, rotation)  # (m, r)
  scale = 1.0 / (eigvals[:, None] + alpha[None, :])  # (r, k)
  return z @ (scale * proj) + y_mean  # (m, k)


def predict_chosen(sol: RidgeSolution, x, alpha):
  """Predictions with one penalty per neuron: ``x (m, d)``, ``alpha (k,)`` -> ``(m, k)``."""
  alpha = check_alphas(alpha)
  k = sol.proj.shape[1]
  alpha = np.broadcast_to(alpha, (k,)) if alpha.size == 1 else alpha
  if alpha.shape != (k,):
    raise ValueError(f"alpha must be a scalar or (k,) = ({k},), got shape {alpha.shape}")
  return np.asarray(_predict_chosen(*sol, jnp.asarray(x, jnp.float32),
                                    jnp.asarray(alpha, jnp.float32)))


def coef(sol: RidgeSolution, alpha):
  """Weights ``(d, k)`` and intercepts ``(k,)`` with one penalty per neuron (or a scalar)."""
  alpha = np.broadcast_to(check_alphas(alpha), (sol.proj.shape[1],))
  scaled = jnp.asarray(sol.proj / (sol.eigvals[:, None].astype(np.float64) + alpha[None, :]),
                       jnp.float32)  # (r, k)
  if sol.rotation is not None:
    scaled = _matmul(sol.rotation, scaled)
  w = np.asarray(_matmul(sol.basis, scaled), np.float64)
  return w.astype(np.float32), (sol.y_mean - sol.x_mean @ w).astype(np.float32)


def correlations(pred, y):
  """Pearson correlation of ``pred (a, m, k)`` with ``y (m, k)`` per (penalty, neuron): ``(a, k)``.

  Constant columns give 0 (as ``jaxmouse.metrics.corr``).
  """
  pred = np.asarray(pred, np.float64)
  y = np.asarray(y, np.float64)
  pc = pred - pred.mean(axis=1, keepdims=True)
  yc = y - y.mean(axis=0)
  num = np.einsum("amk,mk->ak", pc, yc)  # (a, k)
  den = np.sqrt((pc**2).sum(axis=1) * (yc**2).sum(axis=0))
  return np.where(den > 1e-12, num / np.maximum(den, 1e-12), 0.0)


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
  """An uninitialized array whose data start on an ``alignment``-byte boundary: on a CPU device,
  ``jax.device_put`` and ``jnp.asarray`` then use the host memory itself instead of copying it."""
  size = int(np.prod(shape)) * np.dtype(dtype).itemsize
  buf = np.empty(size + alignment, np.uint8)
  start = -buf.ctypes.data % alignment
  return buf[start:start + size].view(dtype).reshape(shape)


def relative_alphas(alphas, eigvals) -> np.ndarray:
  """``alphas`` as multiples of the mean non-zero eigenvalue (one grid for layers of any size)."""
  lam = eigvals[eigvals > 1e-6 * max(float(eigvals.max()), 1e-30)]
  return np.asarray(alphas, np.float64) * (float(lam.mean()) if lam.size else 1.0)


class StreamedDual(NamedTuple):
  """The dual ridge solution of ``streamed_dual``, from which ``streamed_weights`` makes the
  primal weights of any neurons (one more pass over the training features)."""
  dual: jax.Array         # (n, k) dual coefficients, one column per neuron
  means: list             # per feature chunk, the weighted mean (chunk,)
  scale: jax.Array        # (n, 1) square roots of the training weights
  rows: np.ndarray        # (n,) training rows of ``flat``
  y_mean: np.ndarray      # (k,) weighted response means
  step: int               # features per chunk


def streamed_dual(flat, rows, y, weights, val_rows, val_y, alphas, *,
                  chunk_mb: float = 256.0) -> StreamedDual:
  """Ridge with one penalty per neuron, chosen on validation, in its dual form and in bounded
  memory: see ``streamed_coef``. Memory: the ``(n, n)`` kernel, a chunk of features and the
  ``(n, k)`` dual coefficients."""
  alphas = check_alphas(alphas)
  n, d = len(rows), flat.shape[1]
  step = max(1, int(chunk_mb * 2**20 // (4 * max(n, 1))))
  w = np.asarray(weights, np.float64)
  p = jnp.asarray(w / w.sum(), jnp.float32)
  sw = jnp.asarray(np.sqrt(w), jnp.float32)[:, None]
  y_mean = (w / w.sum()) @ np.asarray(y, np.float64)
  ys = jnp.asarray((np.asarray(y, np.float64) - y_mean) * np.sqrt(w)[:, None], jnp.float32)
  val_ids, val_inverse = np.unique(np.asarray(val_rows), return_inverse=True)
  chunk = lambda a, ix: jnp.asarray(np.asarray(flat[ix, a:a + step], np.float32))
  kernel = jnp.zeros((n, n), jnp.float32)
  cross = jnp.zeros((len(val_ids), n), jnp.float32)
  means = []
  for a in range(0, d, step):  # the kernel, the validation cross-kernel, the means
    xc = chunk(a, rows)
    mu = _weighted_mean(xc, p)
    xs = (xc - mu) * sw
    kernel, cross = kernel + _matmul(xs, xs.T), cross + _matmul(chunk(a, val_ids) - mu, xs.T)
    means.append(np.asarray(mu))
  lam, u = _eigh(kernel)
  alphas = relative_alphas(alphas, lam)
  proj = _matmul(jnp.asarray(u).T, ys)  # (n, k)
  z = _matmul(cross, jnp.asarray(u))  # (v_images, n)
  pred = _predict_from_z(z, jnp.asarray(lam), proj, jnp.asarray(alphas, jnp.float32))
  pred = np.asarray(pred)[:, val_inverse.reshape(-1)] + y_mean.astype(np.float32)
  alpha = alphas[np.argmax(correlations(pred, val_y), axis=0)]  # (k,)
  dual = _matmul(jnp.asarray(u), proj / (jnp.asarray(lam)[:, None]
                                         + jnp.asarray(alpha, jnp.float32)[None, :]))  # (n, k)
  return StreamedDual(dual, means, sw, np.asarray(rows), y_mean, step)


def streamed_weights(sol: StreamedDual, flat, neurons=slice(None)):
  """The primal weights ``coef (k', d)`` (64-byte aligned, so that a CPU device can use them in
  place) and ``intercept (k',)`` of the ``neurons`` (a slice or indices) of ``sol``: one pass
  over the training rows of ``flat (N, d)``, chunk by chunk."""
  dual = sol.dual[:, neurons]  # (n, k')
  d = flat.shape[1]
  coef = aligned_empty((dual.shape[1], d), np.float32)
  offset = np.zeros(dual.shape[1])
  for a, mu in zip(range(0, d, sol.step), sol.means):
    xs = (jnp.asarray(np.asarray(flat[sol.rows, a:a + sol.step], np.float32)) - mu) * sol.scale
    c = _matmul(dual.T, xs)  # (k', chunk)
    coef[:, a:a + sol.step] = np.asarray(c)
    offset += np.asarray(_matmul(c, jnp.asarray(mu)[:, None]))[:, 0]
  return coef, (sol.y_mean[neurons] - offset).astype(np.float32)


def streamed_coef(flat, rows, y, weights, val_rows, val_y, alphas, *, chunk_mb: float = 256.0):
  """Ridge weights with one penalty per neuron, chosen on validation, in bounded memory.

  The dual form read in column chunks of ``flat (N, d)`` (e.g. a layer's features, flattened):
  ``rows (n,)`` training images with responses ``y (n, k)`` and ``weights (n,)``,
  ``val_rows (v,)`` validation trials with ``val_y (v, k)``; ``alphas`` relative
  (``relative_alphas``). Memory: the ``(n, n)`` kernel, a chunk and the result, never a copy of
  the training features. Returns ``coef (k, d)`` (one row per neuron, 64-byte aligned so that a
  CPU device can use it in place) and ``intercept (k,)``.
  """
  sol = streamed_dual(flat, rows, y, weights, val_rows, val_y, alphas, chunk_mb=chunk_mb)
  return streamed_weights(sol, flat)


@jax.jit
def _predict_from_z(z, eigvals, proj, alphas):
  scale = 1.0 / (eigvals[None, :] + alphas[:, None])  # (a, r)
  return jnp.einsum("mr,ar,rk->amk", z, scale, proj)  # (a, m, k)
