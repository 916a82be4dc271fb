"""Readouts: batched paths against per-neuron references, penalties and ridge against NumPy,
SciPy and scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from sklearn.linear_model import Ridge

from jaxmouse import fit as fitlib
from jaxmouse import readouts
from jaxmouse.readouts import factorized, full, gaussian, ridge


G, K, H, W, C, B = 3, 5, 6, 7, 4, 9


def _random_params(name, key):
  """Initial parameters, perturbed so that configs differ and nothing sits at zero."""
  r = readouts.get(name)
  p = r.init(key, n_configs=G, n_neurons=K, feature_shape=(H, W, C),
             bias=np.linspace(0.1, 1.0, K))
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
  leaves = [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  return jax.tree.unflatten(tree, leaves)


def _reg(name):
  r = readouts.get(name)
  return {p: jnp.asarray(np.linspace(0.01, 0.3, G) * (i + 1), jnp.float32)
          for i, p in enumerate(r.penalties)}


@pytest.mark.parametrize("name", ["factorized", "full", "gaussian"])
def test_batched_prediction_and_gradients_match_per_neuron_reference(name):
  key = jax.random.key(0)
  params = _random_params(name, key)
  x = jax.random.normal(jax.random.fold_in(key, 1), (B, H, W, C))
  y = jax.random.poisson(jax.random.fold_in(key, 2), 2.0, (B, K)).astype(jnp.float32)
  reg = _reg(name)
  r = readouts.get(name)

  # Reference: vmap of one neuron's function over neurons, then over configs.
  per_pair = jax.vmap(jax.vmap(r.predict_one, in_axes=(0, None), out_axes=1),
                      in_axes=(0, None), out_axes=1)
  np.testing.assert_allclose(jax.jit(r.predict)(params, x), jax.jit(per_pair)(params, x),
                             rtol=1e-5, atol=1e-5)

  def ref_total(p):
    one = lambda pp, yy, rr: fitlib.reference_loss_one(pp, x, yy, rr, readout=name, output="elu")
    per_neuron = jax.vmap(one, in_axes=(0, 1, None))
    per_config = jax.vmap(per_neuron, in_axes=(0, None, 0))
    return jnp.sum(per_config(p, y, reg))

  def fast_total(p):
    return jnp.sum(fitlib.loss_per_pair(p, x, y, reg, readout=name, output="elu"))

  v_ref, g_ref = jax.jit(jax.value_and_grad(ref_total))(params)
  v_fast, g_fast = jax.jit(jax.value_and_grad(fast_total))(params)
  np.testing.assert_allclose(v_fast, v_ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_laplacian_matches_scipy_convolution():
  x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
  ref = np.stack([scipy.ndimage.convolve(m, readouts._common.LAPLACE_KERNEL, mode="constant")
                  for m in x])
  np.testing.assert_allclose(readouts.laplacian(x), ref, rtol=1e-6, atol=1e-6)
  hwc = np.moveaxis(x, 0, -1)  # (5, 8, 2): the same maps in channels-last layout
  np.testing.assert_allclose(readouts.laplacian(hwc, axes=(-3, -2)), np.moveaxis(ref, 0, -1),
                             rtol=1e-6, atol=1e-6)


def test_full_penalties_match_numpy():
  w = np.random.default_rng(1).standard_normal((G, K, H, W, C)).astype(np.float32)
  params = {"weight": jnp.asarray(w), "bias": jnp.zeros((G, K))}
  reg = {"smooth": jnp.array([1.0, 0, 0]), "group": jnp.array([0, 1.0, 0]),
         "l1": jnp.array([0, 0, 1.0])}
  got = np.asarray(full.penalty(params, reg))
  lap = np.stack([[np.stack([scipy.ndimage.convolve(w[g, k, :, :, c], readouts._common.LAPLACE_KERNEL,
                                                    mode="constant") for c in range(C)])
                   for k in range(K)] for g in range(G)])
  smooth = (lap**2).sum(axis=(2, 3, 4))
  group = np.sqrt((w**2).sum(axis=(2, 3))).sum(axis=-1)
  l1 = np.abs(w).sum(axis=(2, 3, 4))
  np.testing.assert_allclose(got[0], smooth[0], rtol=1e-5)
  np.testing.assert_allclose(got[1], group[1], rtol=1e-5)
  np.testing.assert_allclose(got[2], l1[2], rtol=1e-5)


def test_factorized_mask_is_unit_norm_and_penalties_match_numpy():
  params = _random_params("factorized", jax.random.key(3))
  m = np.asarray(factorized.normalized_mask(params["spatial"]))
  np.testing.assert_allclose((m**2).sum(axis=(-2, -1)), 1.0, rtol=1e-5)
  reg = {"l1": jnp.array([0.5, 0, 0]), "smooth": jnp.array([0, 2.0, 0]),
         "l1_mask": jnp.array([0, 0, 3.0])}
  got = np.asarray(factorized.penalty(params, reg))
  f = np.asarray(params["features"])
  lap = np.stack([[scipy.ndimage.convolve(m[g, k], readouts._common.LAPLACE_KERNEL, mode="constant")
                   for k in range(K)] for g in range(G)])
  np.testing.assert_allclose(got[0], 0.5 * np.abs(f[0]).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(got[1], 2.0 * (lap[1]**2).sum((-2, -1)), rtol=1e-5)
  np.testing.assert_allclose(got[2], 3.0 * np.abs(m[2]).sum((-2, -1)), rtol=1e-5)


def test_gaussian_reads_bilinear_interpolation():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((B, H, W, C)).astype(np.float32)
  params = gaussian.init(jax.random.key(0), n_configs=1, n_neurons=K, feature_shape=(H, W, C),
                         init_mu_range=0.9)
  pred = np.asarray(gaussian.predict(params, x))[:, 0]  # (b, k)
  mu, f = np.asarray(params["mu"][0]), np.asarray(params["features"][0])
  for n in range(K):
    row, col = (mu[n, 0] + 1) / 2 * (H - 1), (mu[n, 1] + 1) / 2 * (W - 1)
    sampled = np.stack([[scipy.ndimage.map_coordinates(x[b, :, :, c], [[row], [col]], order=1)[0]
                         for c in range(C)] for b in range(B)])  # (b, c)
    np.testing.assert_allclose(pred[:, n], sampled @ f[n], rtol=1e-4, atol=1e-5)
  # Training reads at sampled positions; the draw of neuron i does not depend on k.
  a = gaussian.positions(params, jax.random.key(5))
  small = jax.tree.map(lambda v: v[:, :3], params)
  np.testing.assert_array_equal(gaussian.positions(small, jax.random.key(5)), a[:, :3])
  assert not np.allclose(a, np.clip(params["mu"], -1, 1))


@pytest.mark.parametrize("name", ["factorized", "full", "gaussian"])
def test_init_of_a_neuron_does_not_depend_on_how_many_are_fitted(name):
  r = readouts.get(name)
  a = r.init(jax.random.key(4), n_configs=2, n_neurons=8, feature_shape=(H, W, C))
  b = r.init(jax.random.key(4), n_configs=2, n_neurons=3, feature_shape=(H, W, C))
  for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(la[:, :3], lb)
    np.testing.assert_array_equal(la[0], la[1])  # every config starts alike


def test_grid_product_and_validation():
  grid = readouts.make_grid(l1=[0, 0.1], smooth=[1, 2, 3])
  np.testing.assert_allclose(grid["l1"], [0, 0, 0, 0.1, 0.1, 0.1])
  assert grid["smooth"].tolist() == [1, 2, 3, 1, 2, 3]
  full_grid = readouts.check_grid(grid, factorized.PENALTIES, readout="factorized")
  assert full_grid["l1_mask"].tolist() == [0] * 6
  with pytest.raises(ValueError, match="negative"):
    readouts.check_grid({"l1": [0.1, -1]}, factorized.PENALTIES, readout="factorized")
  with pytest.raises(ValueError, match="NaN"):
    readouts.check_grid({"l1": [np.nan]}, factorized.PENALTIES, readout="factorized")
  with pytest.raises(ValueError, match="one length"):
    readouts.check_grid({"l1": [0, 1], "smooth": [1]}, factorized.PENALTIES, readout="factorized")
  with pytest.raises(ValueError, match="group"):
    readouts.check_grid({"group": [1]}, factorized.PENALTIES, readout="factorized")
  with pytest.raises(ValueError, match="unknown readout"):
    readouts.get("fancy")


@pytest.mark.parametrize("n,d", [(40, 12), (15, 30)])  # primal (d <= n) and dual (d > n) forms
def test_ridge_matches_numpy_solve_and_sklearn_per_penalty(n, d):
  rng = np.random.default_rng(n)
  x = rng.standard_normal((n, d)).astype(np.float32) + 0.5
  y = (x @ rng.standard_normal((d, 3)) + rng.standard_normal((n, 3)) + 2).astype(np.float32)
  wts = rng.integers(1, 4, n).astype(np.float64)
  alphas = np.array([1e-6 if d <= n else 1e-2, 0.1, 3.0, 100.0])
  sol = ridge.solve(x, y, weights=wts)
  xt = rng.standard_normal((7, d)).astype(np.float32)
  pred = ridge.predict(sol, xt, alphas)  # (a, 7, 3)
  xm = wts @ x / wts.sum()
  ym = wts @ y / wts.sum()
  xc, yc = (x - xm) * np.sqrt(wts)[:, None], (y - ym) * np.sqrt(wts)[:, None]
  for i, a in enumerate(alphas):
    coef_np = np.linalg.solve(xc.T.astype(np.float64) @ xc + a * np.eye(d), xc.T @ yc)
    ref = (xt - xm) @ coef_np + ym
    np.testing.assert_allclose(pred[i], ref, rtol=2e-3, atol=2e-3)
    sk = Ridge(alpha=a, fit_intercept=True).fit(x, y, sample_weight=wts)
    np.testing.assert_allclose(pred[i], sk.predict(xt), rtol=2e-3, atol=2e-3)
    w_i, b_i = ridge.coef(sol, a)
    np.testing.assert_allclose(w_i, sk.coef_.T, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(b_i, sk.intercept_, rtol=2e-3, atol=2e-3)
  chosen = np.array([1, 3, 0])
  np.testing.assert_allclose(ridge.predict_chosen(sol, xt, alphas[chosen]),
                             pred[chosen, :, np.arange(3)].T, rtol=1e-4, atol=1e-4)


def test_ridge_rejects_bad_input():
  x = np.ones((5, 3), np.float32)
  with pytest.raises(ValueError, match="one n"):
    ridge.solve(x, np.ones((4, 2), np.float32))
  bad = x.copy()
  bad[1, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    ridge.solve(bad, np.ones((5, 2), np.float32))
  for bad_alphas in ([1.0, -2.0], [0.0, 1.0], [np.inf]):
    with pytest.raises(ValueError, match=r"finite and > 0"):
      ridge.check_alphas(bad_alphas)


def test_from_linear_recovers_a_rank_one_readout_and_the_best_rank_one_of_any_other():
  rng = np.random.default_rng(3)
  k, h, w, c = 5, 6, 7, 9
  mask = rng.random((k, h, w)) + 0.1  # positive masks: the sign convention is recoverable
  feat = rng.standard_normal((k, c))
  bias = rng.standard_normal(k).astype(np.float32)
  planted = mask[..., None] * feat[:, None, None, :]  # (k, h, w, c) exactly rank 1
  p = factorized.from_linear(planted, bias, n_configs=2)
  x = rng.standard_normal((11, h, w, c)).astype(np.float32)
  want = np.einsum("bhwc,khwc->bk", x, planted) + bias
  np.testing.assert_allclose(np.asarray(factorized.predict(p, x))[:, 1], want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(factorized.normalized_mask(p["spatial"]))[0],
                             mask / np.linalg.norm(mask.reshape(k, -1), axis=1)[:, None, None],
                             atol=1e-5)
  # A general weight: the factorized start is its best rank-1 approximation (Eckart-Young).
  general = rng.standard_normal((k, h, w, c))
  p = factorized.from_linear(general, bias, n_configs=1)
  approx = np.asarray(factorized.weights(p))[0]
  s = np.linalg.svd(general.reshape(k, h * w, c), compute_uv=False)
  err = np.linalg.norm((general - approx).reshape(k, -1), axis=1)
  np.testing.assert_allclose(err, np.sqrt((s[:, 1:]**2).sum(axis=1)), rtol=1e-3)
  pf = full.from_linear(general.astype(np.float32), bias, n_configs=3)
  np.testing.assert_allclose(np.asarray(pf["weight"])[2], general, rtol=1e-6)
  assert readouts.get("gaussian").from_linear is None


@pytest.mark.parametrize("n, d", [(40, 90), (60, 25)])
def test_streamed_ridge_chooses_and_fits_as_the_whole_solution_does(n, d):
  rng = np.random.default_rng(11)
  x = rng.standard_normal((n + 30, d)).astype(np.float32) + 3.0
  truth = rng.standard_normal((d, 4)) * (rng.random((d, 4)) < 0.3)
  y = (x @ truth + 2.0 * rng.standard_normal((n + 30, 4))).astype(np.float32)
  rows, val = np.arange(n), np.repeat(np.arange(n, n + 30), 2)
  wts = rng.integers(1, 4, n).astype(np.float64)
  rel = np.logspace(-3, 3, 7)
  sol = ridge.solve(x[rows], y[rows], weights=wts)
  alphas = ridge.relative_alphas(rel, sol.eigvals)
  val_y = y[val] + rng.standard_normal((len(val), 4)).astype(np.float32)
  pick = alphas[np.argmax(ridge.correlations(ridge.predict(sol, x[val], alphas), val_y), axis=0)]
  want_w, want_b = ridge.coef(sol, pick)
  for chunk_mb in (1e-3, 256.0):  # many column chunks, and one
    got_w, got_b = ridge.streamed_coef(x, rows, y[rows], wts, val, val_y, rel, chunk_mb=chunk_mb)
    assert got_w.ctypes.data % 64 == 0
    np.testing.assert_allclose(got_w.T, want_w, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(got_b, want_b, rtol=2e-3, atol=2e-3)
    # The weights of some neurons only, from the same dual solution (a fit's block of neurons).
    dual = ridge.streamed_dual(x, rows, y[rows], wts, val, val_y, rel, chunk_mb=chunk_mb)
    for neurons in (slice(1, 3), np.array([3, 0])):
      part_w, part_b = ridge.streamed_weights(dual, x, neurons)
      np.testing.assert_allclose(part_w, got_w[neurons], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(part_b, got_b[neurons], rtol=1e-5, atol=1e-5)
