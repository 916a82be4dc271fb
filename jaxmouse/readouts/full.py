"""Full linear readout with the penalties of Cadena et al. 2019 (PLoS CB).

Parameters with leading axes ``(g, k)`` = (configs, neurons): ``weight (g, k, h, w, c)``,
``bias (g, k)``. Penalties (per (config, neuron), summed over the weight's axes):
  ``smooth``  sum_{x,y,c} (Laplace * w[..., c])^2, the 3x3 Laplacian over (x, y), zero padded
  ``group``   sum_c sqrt(sum_{x,y} w^2)           (whole channels in or out)
  ``l1``      sum |w|
The paper's figures average these over neurons; per neuron they are the terms above.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmouse.readouts._common import laplacian, neuron_rngs, per_pair, tile_configs

PENALTIES = ("smooth", "group", "l1")
_GROUP_EPS = 1e-12  # keeps the gradient of sqrt finite at an all-zero channel


def init(key, *, n_configs: int, n_neurons: int, feature_shape, bias=None,
         init_scale: float = 1e-3, first: int = 0):
  """Small random weights, the same for every config; neuron ``i`` (counted from ``first``)
  draws from ``(key, i)``."""
  h, w, c = (int(s) for s in feature_shape)
  rngs = neuron_rngs(key, n_neurons, first)
  weight = init_scale * np.stack([r.standard_normal((h, w, c)) for r in rngs])
  bias = np.zeros(n_neurons) if bias is None else np.asarray(bias)
  return {"weight": tile_configs(weight, n_configs), "bias": tile_configs(bias, n_configs)}


def from_linear(weight, bias, *, n_configs: int):
  """Linear weights ``(k, h, w, c)`` and ``bias (k,)`` (e.g. a ridge solution) as the start of
  every config."""
  return {"weight": tile_configs(weight, n_configs), "bias": tile_configs(bias, n_configs)}


def predict(params, x, *, key=None):
  """``x (b, h, w, c)`` -> linear prediction ``(b, g, k)`` (before the output nonlinearity)."""
  del key
  b = x.shape[0]
  g, k = params["bias"].shape
  # (g, k) stay two axes: merged into one, a neuron-sharded mesh would gather every weight.
  y = jnp.einsum("bq,gkq->bgk", x.reshape(b, -1), params["weight"].reshape(g, k, -1).astype(x.dtype),
                 preferred_element_type=jnp.float32)  # (b, g, k); float32 sums for bfloat16 x
  return y + params["bias"]


def _terms(weight):
  """``weight (..., h, w, c)`` -> (smooth, group, l1), each ``(...)``; no transposes, so XLA
  fuses each term into one pass over the weights."""
  smooth = jnp.sum(laplacian(weight, axes=(-3, -2))**2, axis=(-3, -2, -1))
  group = jnp.sum(jnp.sqrt(jnp.sum(weight**2, axis=(-3, -2)) + _GROUP_EPS), axis=-1)
  l1 = jnp.sum(jnp.abs(weight), axis=(-3, -2, -1))
  return smooth, group, l1


def penalty(params, reg):
  """``(g, k)`` penalty; ``reg``: ``{name: (g,) or (g, k)}``."""
  smooth, group, l1 = _terms(params["weight"])
  return (per_pair(reg["smooth"]) * smooth + per_pair(reg["group"]) * group
          + per_pair(reg["l1"]) * l1)


def predict_one(p, x):
  """``p``: ``weight (h, w, c)``, ``bias ()``; ``x (b, h, w, c)`` -> ``(b,)``."""
  return jnp.einsum("bhwc,hwc->b", x, p["weight"]) + p["bias"]  # (b,)


def penalty_one(p, reg):
  smooth, group, l1 = _terms(p["weight"])
  return reg["smooth"] * smooth + reg["group"] * group + reg["l1"] * l1


def weights(params):
  """The weight tensor ``(..., h, w, c)``."""
  return params["weight"]
