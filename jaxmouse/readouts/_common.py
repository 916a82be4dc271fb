"""Pieces every readout shares: per-neuron random keys, the Laplacian, grids of penalties."""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The discrete Laplacian of Cadena et al. 2019: [[0,-1,0],[-1,4,-1],[0,-1,0]], zero padded ("SAME").
LAPLACE_KERNEL = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)


def laplacian(x, axes: tuple[int, int] = (-2, -1)):
  """Laplacian over two ``axes`` (rows, columns) with zero padding; same shape as ``x``.

  Works in any layout (e.g. ``(..., h, w, c)`` with ``axes=(-3, -2)``) without a transpose.
  """
  ay, ax = (a % x.ndim for a in axes)
  pad = [(0, 0)] * x.ndim
  pad[ay] = pad[ax] = (1, 1)
  p = jnp.pad(x, pad)

  def window(dy, dx):  # p shifted by (dy, dx), cut back to x's shape
    idx = [slice(None)] * x.ndim
    idx[ay] = slice(1 + dy, 1 + dy + x.shape[ay])
    idx[ax] = slice(1 + dx, 1 + dx + x.shape[ax])
    return p[tuple(idx)]

  return 4 * x - window(-1, 0) - window(1, 0) - window(0, -1) - window(0, 1)


def per_pair(strength):
  """A penalty strength as a ``(g, k)``-broadcastable array: ``(g,)`` per config becomes
  ``(g, 1)``; a ``(g, k)`` table (one strength per (config, neuron) slot) is used as it is."""
  return strength[:, None] if strength.ndim == 1 else strength


def neuron_keys(key, n_neurons: int):
  """One key per neuron, ``fold_in(key, i)``: the draw of neuron ``i`` does not depend on how
  many neurons are fitted together, how they are padded or how they are sharded."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_neurons))


def neuron_rngs(key, n_neurons: int, first: int = 0) -> list[np.random.Generator]:
  """One NumPy generator per neuron ``first .. first + n_neurons - 1``, seeded by ``(key data, i)``.

  Initial parameters are drawn on the host: the draw of neuron ``i`` depends only on the key and
  ``i`` (not on how many neurons are fitted, padded or sharded), and no per-shape random-number
  program has to be compiled.
  """
  data = [int(v) for v in np.asarray(jax.random.key_data(key)).ravel()]
  return [np.random.default_rng([*data, i]) for i in range(first, first + n_neurons)]


def tile_configs(a, n_configs: int):
  """``(k, ...)`` -> ``(g, k, ...)`` float32: every config starts from the same parameters."""
  a = np.asarray(a, np.float32)
  return jnp.asarray(np.broadcast_to(a, (n_configs,) + a.shape))


def make_grid(**values: Sequence[float] | float) -> dict[str, np.ndarray]:
  """Cartesian product of penalty values: ``make_grid(l1=[0, .01], smooth=[.1, 1])`` -> 4 configs.

  Returns ``{name: (g,) float32}``, the last name varying fastest.
  """
  names = list(values)
  lists = [np.atleast_1d(np.asarray(values[n], np.float64)) for n in names]
  rows = list(itertools.product(*lists)) or [()]
  return {n: np.array([r[i] for r in rows], np.float32) for i, n in enumerate(names)}


def check_grid(grid: Mapping[str, object], penalties: Sequence[str], *, readout: str
               ) -> dict[str, np.ndarray]:
  """Validates a grid ``{penalty: (g,)}`` for a readout; fills penalties it omits with zeros.

  Raises ValueError for an unknown penalty name, unequal lengths, an empty grid, or values that
  are negative or not finite.
  """
  if not isinstance(grid, Mapping):
    raise ValueError(f"grid must be a mapping {{penalty: (g,) values}}, got {type(grid).__name__}")
  unknown = sorted(set(grid) - set(penalties))
  if unknown:
    raise ValueError(f"grid has penalties {unknown} that the {readout} readout does not know; "
                     f"it takes {list(penalties)}")
  arrays = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in grid.items()}
  for k, v in arrays.items():
    if v.ndim != 1:
      raise ValueError(f"grid[{k!r}] must be 1-D (g,), got shape {v.shape}")
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"grid entries must have one length g, got {lengths}")
  g = next(iter(lengths.values()), 1)
  if g == 0:
    raise ValueError("grid is empty: every penalty has 0 values")
  for k, v in arrays.items():
    if not np.isfinite(v).all():
      raise ValueError(f"grid[{k!r}] has NaN or infinite values: {v.tolist()}")
    if (v < 0).any():
      raise ValueError(f"grid[{k!r}] has negative penalties {v[v < 0].tolist()}; "
                       "penalty strengths must be >= 0")
  return {p: arrays[p].astype(np.float32) if p in arrays else np.zeros(g, np.float32)
          for p in penalties}


def grid_size(grid: Mapping[str, np.ndarray]) -> int:
  return len(next(iter(grid.values()))) if grid else 1


def describe_config(grid: Mapping[str, np.ndarray], index: int) -> str:
  """``"l1=0.01 smooth=0.1"`` for config ``index`` of a grid (the results table's ``config``)."""
  return " ".join(f"{k}={float(v[index]):g}" for k, v in grid.items())
