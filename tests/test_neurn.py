"""NeuRN against an independent SciPy implementation, on planted shapes, and as a layer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from jaxmouse.models.neurn import DEFAULT_K, NeuRN, local_std, neurn


def scipy_neurn(x, k, mode, eps=1e-6):
  """One-pass reference: sqrt(E[x^2] - E[x]^2) with uniform filters, float64, then / max."""
  x = np.asarray(x, np.float64)
  size = (1,) * (x.ndim - 3) + (k, k, 1)
  m = ndimage.uniform_filter(x, size=size, mode=mode)
  m2 = ndimage.uniform_filter(x * x, size=size, mode=mode)
  sigma = np.sqrt(np.maximum(m2 - m * m, 0.0))
  return sigma / np.maximum(sigma.max(axis=(-3, -2), keepdims=True), eps)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror", "constant"])
def test_matches_scipy_uniform_filters(k, mode):
  rng = np.random.default_rng(k)
  x = rng.uniform(0, 255, size=(3, 19, 14, 2)).astype(np.float32)
  out = jax.jit(lambda a: neurn(a, k=k, mode=mode))(x)
  np.testing.assert_allclose(np.asarray(out), scipy_neurn(x, k, mode), atol=1e-5, rtol=0)


def test_local_std_is_the_patch_std_at_an_interior_pixel():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 9, 9, 1)).astype(np.float32)
  got = np.asarray(local_std(x, k=5))[0, 4, 4, 0]
  np.testing.assert_allclose(got, x[0, 2:7, 2:7, 0].std(), rtol=1e-5)


def test_filled_disk_becomes_a_ring():
  yy, xx = np.mgrid[:48, :48]
  r = np.hypot(yy - 23.5, xx - 23.5)
  disk = np.where(r < 12, 200.0, 20.0).astype(np.float32)[None, :, :, None]
  out = np.asarray(neurn(disk, k=3))[0, :, :, 0]
  inside, outside, edge = r < 9, r > 15, np.abs(r - 12) < 1
  assert out[inside].max() == 0.0 and out[outside].max() == 0.0  # flat regions vanish
  assert out[edge].mean() > 0.4 and out.max() == pytest.approx(1.0)  # the contour survives
  # Every non-zero pixel lies within k // 2 + 1 pixels of the disk's edge: a ring.
  assert np.all(np.abs(r[out > 0] - 12) < 3)


def test_invariant_to_affine_intensity_changes_per_channel():
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, size=(2, 16, 16, 3)).astype(np.float32)
  y = 0.3 - 2.5 * x  # contrast inversion, gain and offset
  np.testing.assert_allclose(np.asarray(neurn(y)), np.asarray(neurn(x)), atol=1e-5)


def test_flat_image_maps_to_zeros_with_finite_gradients():
  flat = jnp.full((1, 8, 8, 3), 7.0)
  np.testing.assert_array_equal(np.asarray(neurn(flat)), 0.0)
  grad = jax.grad(lambda a: neurn(a, k=3).sum())(flat)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_gradient_matches_finite_differences():
  rng = np.random.default_rng(2)
  x = rng.uniform(0, 1, size=(1, 7, 6, 1))
  w = rng.normal(size=x.shape)
  with jax.enable_x64():
    f = lambda a: jnp.sum(jnp.asarray(w) * local_std(a, k=3))
    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    i = (0, 3, 2, 0)
    e = np.zeros_like(x)
    e[i] = 1e-6
    fd = (f(jnp.asarray(x + e)) - f(jnp.asarray(x - e))) / 2e-6
  np.testing.assert_allclose(g[i], float(fd), rtol=1e-4)


def test_module_in_front_of_a_model_jits_once():
  model = nnx.Sequential(NeuRN(5, scale=255.0), nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)))

  @nnx.jit
  @chex.assert_max_traces(n=1)
  def forward(m, x):
    return m(x)

  x = np.random.default_rng(0).uniform(0, 255, size=(2, 12, 12, 3)).astype(np.float32)
  forward(model, x)
  out = forward(model, x + 1.0)
  assert out.shape == (2, 12, 12, 4)
  assert not nnx.state(model.layers[0], nnx.Param)  # no learned parameters


def test_bad_arguments_are_value_errors():
  with pytest.raises(ValueError, match="odd"):
    NeuRN(4)
  with pytest.raises(ValueError, match="mode"):
    neurn(jnp.zeros((1, 4, 4, 1)), mode="wrap")
  with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
    neurn(jnp.zeros((4, 4)))
  assert DEFAULT_K % 2 == 1
