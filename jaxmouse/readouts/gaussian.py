"""Gaussian readout (Lurz et al. 2021): each neuron reads the feature vector at one learned
position of the feature map, times its own feature weights.

Parameters with leading axes ``(g, k)``: ``mu (g, k, 2)`` the (row, column) position in [-1, 1]
(-1 = first pixel, 1 = last, as ``grid_sample(align_corners=True)``), ``sigma (g, k)`` the spread
of the training-time position noise, ``features (g, k, c)``, ``bias (g, k)``.

Training (``key`` given) reads at ``mu + sigma * eps``, one draw per (config, neuron) and step,
so the position explores; prediction (no key) reads at ``mu``. Reading between pixels is
bilinear interpolation, written as a tent-function mask over the map so that it shares the
factorized readout's matmul and is differentiable in ``mu``.

Penalty: ``l1`` sum_c |features|.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmouse.readouts._common import neuron_keys, neuron_rngs, per_pair, tile_configs

PENALTIES = ("l1",)


def init(key, *, n_configs: int, n_neurons: int, feature_shape, bias=None,
         init_scale: float = 1e-2, init_mu_range: float = 0.5,
         init_sigma: float = 0.5, first: int = 0):
  """Positions uniform in ``[-init_mu_range, init_mu_range]``; small random feature weights.
  Neuron ``i`` (counted from ``first``) draws from ``(key, i)``."""
  c = int(feature_shape[-1])
  rngs = neuron_rngs(key, n_neurons, first)
  mu = np.stack([r.uniform(-init_mu_range, init_mu_range, 2) for r in rngs])
  features = init_scale * np.stack([r.standard_normal(c) for r in rngs])
  bias = np.zeros(n_neurons) if bias is None else np.asarray(bias)
  return {"mu": tile_configs(mu, n_configs),
          "sigma": tile_configs(np.full(n_neurons, init_sigma), n_configs),
          "features": tile_configs(features, n_configs), "bias": tile_configs(bias, n_configs)}


def positions(params, key=None):
  """Where every (config, neuron) reads, ``(g, k, 2)`` in [-1, 1]; sampled when ``key`` is given."""
  mu = params["mu"]
  if key is not None:
    g, k, _ = mu.shape
    # One draw per neuron from fold_in(key, i): independent of padding and sharding.
    eps = jax.vmap(lambda kk: jax.random.normal(kk, (g, 2)), out_axes=1)(neuron_keys(key, k))
    mu = mu + jnp.abs(params["sigma"])[..., None] * eps
  return jnp.clip(mu, -1.0, 1.0)


def tent_mask(pos, h: int, w: int):
  """Bilinear interpolation weights of reading at ``pos (..., 2)``: ``(..., h, w)``."""
  py = (pos[..., 0] + 1) / 2 * (h - 1)
  px = (pos[..., 1] + 1) / 2 * (w - 1)
  wy = jax.nn.relu(1 - jnp.abs(jnp.arange(h) - py[..., None]))  # (..., h)
  wx = jax.nn.relu(1 - jnp.abs(jnp.arange(w) - px[..., None]))  # (..., w)
  return wy[..., :, None] * wx[..., None, :]


def predict(params, x, *, key=None):
  """``x (b, h, w, c)`` -> linear prediction ``(b, g, k)``; ``key`` samples positions (training)."""
  b, h, w, c = x.shape
  g, k = params["bias"].shape
  mask = tent_mask(positions(params, key), h, w).reshape(g, k, h * w)
  # (g, k) stay two axes: merged into one, a neuron-sharded mesh would gather every parameter.
  y = jnp.einsum("bpc,gkp,gkc->bgk", x.reshape(b, h * w, c), mask.astype(x.dtype),
                 params["features"].astype(x.dtype), preferred_element_type=jnp.float32)
  return y + params["bias"]


def penalty(params, reg):
  """``(g, k)``; ``reg``: ``{"l1": (g,) or (g, k)}``."""
  return per_pair(reg["l1"]) * jnp.sum(jnp.abs(params["features"]), axis=-1)


def predict_one(p, x):
  """Deterministic reference for one neuron: ``mu (2,)``, ``features (c,)``, ``bias ()``."""
  _, h, w, _ = x.shape
  mask = tent_mask(jnp.clip(p["mu"], -1.0, 1.0), h, w)
  return jnp.einsum("bhwc,hw,c->b", x, mask, p["features"]) + p["bias"]  # (b,)


def penalty_one(p, reg):
  return reg["l1"] * jnp.sum(jnp.abs(p["features"]))

