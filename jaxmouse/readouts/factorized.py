"""Factorized readout (Klindt et al. 2017): weight[h, w, c] = spatial_mask[h, w] * features[c].

Parameters carry leading axes ``(g, k)`` = (hyperparameter configs, neurons):
  ``spatial (g, k, h, w)``, ``features (g, k, c)``, ``bias (g, k)``.
As in neuralpredictors' ``FullFactorized2d``, the mask is used with unit L2 norm, which removes
the scale ambiguity between mask and feature weights; the response scale lives in the features.

Penalties (each ``(g,)`` strengths, or ``(g, k)`` ones per slot, times a ``(g, k)`` value):
  ``l1``      sum_c |features|                                   (feature sparsity)
  ``smooth``  sum_{x,y} (Laplace * mask)^2                      (smooth, local masks)
  ``l1_mask`` sum_{x,y} |mask|                                   (spatially sparse masks)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmouse.readouts._common import laplacian, neuron_rngs, per_pair, tile_configs

PENALTIES = ("l1", "smooth", "l1_mask")
_EPS = 1e-6


def init(key, *, n_configs: int, n_neurons: int, feature_shape, bias=None,
         init_scale: float = 1e-2, first: int = 0):
  """Initial parameters, the same for every config: a random mask and small feature weights.

  Args:
    key: ``jax.random.key``; neuron ``i`` draws from a generator seeded by ``(key, i)``.
    feature_shape: ``(h, w, c)``.
    first: the index of the first neuron (a block of a larger population).
    bias: ``(k,)`` initial bias (from the mean response), or zeros.
  """
  h, w, c = (int(s) for s in feature_shape)
  rngs = neuron_rngs(key, n_neurons, first)
  spatial = np.stack([r.standard_normal((h, w)) for r in rngs]) / np.sqrt(h * w)
  features = init_scale * np.stack([r.standard_normal(c) for r in rngs])
  bias = np.zeros(n_neurons) if bias is None else np.asarray(bias)
  return {"spatial": tile_configs(spatial, n_configs), "features": tile_configs(features, n_configs),
          "bias": tile_configs(bias, n_configs)}


def from_linear(weight, bias, *, n_configs: int, iterations: int = 30):
  """Parameters closest to linear weights ``(k, h, w, c)`` (e.g. a ridge solution): per neuron
  the rank-1 factor of its ``(h*w, c)`` weight matrix (power iteration), the unit mask signed
  to sum positive, the singular value in the feature weights; ``bias (k,)``. Every config
  starts from them."""
  k, h, w, c = weight.shape
  m = jnp.asarray(weight, jnp.float32).reshape(k, h * w, c)
  v = jnp.sum(jnp.abs(m), axis=1) + 1e-12  # (k, c) a start inside the leading direction's cone
  for _ in range(iterations):
    u = jnp.einsum("kpc,kc->kp", m, v)
    u = u / (jnp.linalg.norm(u, axis=1, keepdims=True) + 1e-30)
    v = jnp.einsum("kpc,kp->kc", m, u)
  sign = jnp.where(jnp.sum(u, axis=1, keepdims=True) < 0, -1.0, 1.0)
  spatial, features = np.asarray(u * sign).reshape(k, h, w), np.asarray(v * sign)
  return {"spatial": tile_configs(spatial, n_configs),
          "features": tile_configs(features, n_configs),
          "bias": tile_configs(np.asarray(bias), n_configs)}


def normalized_mask(spatial):
  """``spatial (..., h, w)`` divided by its L2 norm over ``(h, w)``."""
  norm = jnp.sqrt(jnp.sum(spatial**2, axis=(-2, -1), keepdims=True))
  return spatial / (norm + _EPS)


def predict(params, x, *, key=None):
  """Linear prediction (before the output nonlinearity) for every (config, neuron).

  Args:
    params: ``spatial (g, k, h, w)``, ``features (g, k, c)``, ``bias (g, k)``.
    x: features ``(b, h, w, c)``.
    key: unused (the factorized readout is deterministic).

  Returns:
    ``(b, g, k)``.
  """
  del key
  b, h, w, c = x.shape
  g, k = params["bias"].shape
  mask = normalized_mask(params["spatial"]).reshape(g, k, h * w)
  # One three-operand contraction: XLA contracts the mask first, as one (g*k, h*w) x (h*w, b*c)
  # matmul, then reduces over c; measured faster on CPU than contracting the channels first.
  # (g, k) stay two axes: merged into one, a neuron-sharded mesh would gather every parameter.
  # bfloat16 features multiply bfloat16 copies of the parameters, accumulating in float32.
  y = jnp.einsum("bpc,gkp,gkc->bgk", x.reshape(b, h * w, c), mask.astype(x.dtype),
                 params["features"].astype(x.dtype), preferred_element_type=jnp.float32)
  return y + params["bias"]


def penalty(params, reg):
  """Penalty of every (config, neuron): ``(g, k)``. ``reg``: ``{name: (g,) or (g, k)}`` for PENALTIES."""
  mask = normalized_mask(params["spatial"])
  out = per_pair(reg["l1"]) * jnp.sum(jnp.abs(params["features"]), axis=-1)
  out += per_pair(reg["smooth"]) * jnp.sum(laplacian(mask)**2, axis=(-2, -1))
  out += per_pair(reg["l1_mask"]) * jnp.sum(jnp.abs(mask), axis=(-2, -1))
  return out


# ---- one neuron, one config: the readable reference the batched path is tested against -------

def predict_one(p, x):
  """``p``: ``spatial (h, w)``, ``features (c,)``, ``bias ()``; ``x (b, h, w, c)`` -> ``(b,)``."""
  mask = normalized_mask(p["spatial"])
  return jnp.einsum("bhwc,hw,c->b", x, mask, p["features"]) + p["bias"]  # (b,)


def penalty_one(p, reg):
  """``reg``: ``{name: ()}`` -> scalar."""
  mask = normalized_mask(p["spatial"])
  return (reg["l1"] * jnp.sum(jnp.abs(p["features"]))
          + reg["smooth"] * jnp.sum(laplacian(mask)**2)
          + reg["l1_mask"] * jnp.sum(jnp.abs(mask)))


def weights(params):
  """The full weight tensor ``(..., h, w, c)`` = normalized mask x features."""
  return normalized_mask(params["spatial"])[..., None] * params["features"][..., None, None, :]
