"""Readouts: per-neuron maps from a frozen feature map ``(b, h, w, c)`` to responses.

Each trained readout is a set of pure functions over parameters with leading axes ``(g, k)`` =
(hyperparameter configs, neurons):

  ``init(key, *, n_configs, n_neurons, feature_shape, bias=None) -> params``
  ``predict(params, x, *, key=None) -> (b, g, k)``   linear prediction, before the output nonlinearity
  ``penalty(params, reg) -> (g, k)``                 ``reg = {name: (g,) or (g, k)}`` for ``penalties``
  ``predict_one`` / ``penalty_one``                  one (config, neuron): the readable reference
  ``from_linear(weight, bias, *, n_configs)``        (factorized, full) the start nearest linear
                                                     weights ``(k, h, w, c)``: a warm start

``ridge`` is the closed-form linear baseline (no training loop).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from jaxmouse.readouts import factorized, full, gaussian, ridge
from jaxmouse.readouts._common import check_grid, describe_config, grid_size, laplacian, make_grid


class Readout(NamedTuple):
  name: str
  init: Callable
  predict: Callable
  penalty: Callable
  predict_one: Callable
  penalty_one: Callable
  penalties: tuple[str, ...]
  stochastic: bool  # predict uses a key during training
  from_linear: Callable | None  # (weight (k, h, w, c), bias (k,), *, n_configs) -> params


READOUTS = {
    m.__name__.rsplit(".", 1)[-1]: Readout(
        name=m.__name__.rsplit(".", 1)[-1], init=m.init, predict=m.predict, penalty=m.penalty,
        predict_one=m.predict_one, penalty_one=m.penalty_one, penalties=m.PENALTIES,
        stochastic=m is gaussian, from_linear=getattr(m, "from_linear", None))
    for m in (factorized, full, gaussian)
}
NAMES = (*READOUTS, "ridge")


def get(name: str) -> Readout:
  """The trained readout called ``name`` (``factorized``, ``full``, ``gaussian``)."""
  if name not in READOUTS:
    hint = " (ridge is closed form: jaxmouse.readouts.ridge / jaxmouse.fit.fit_ridge)" \
        if name == "ridge" else ""
    raise ValueError(f"unknown readout {name!r}; available: {list(NAMES)}{hint}")
  return READOUTS[name]


__all__ = ["Readout", "READOUTS", "NAMES", "get", "factorized", "full", "gaussian", "ridge",
           "check_grid", "make_grid", "grid_size", "describe_config", "laplacian"]
