"""Neural data sets: the in-memory type, real-format loaders, the simulated mouse, TFDS.

``NeuralDataset`` is the one type every later stage consumes. ``load(path)`` reads any supported
format (plain npz/HDF5, Sensorium static file tree, Allen Brain Observatory NWB, TFDS ArrayRecord);
``save(ds, path, format=...)`` writes one; ``simulate(SimulationConfig(...))`` draws a mouse whose
true models are known.
"""

from __future__ import annotations

import importlib

from jaxmouse.data.dataset import TIERS, NeuralDataset

# Modules are named apart from the functions they export (`simulation` holds `simulate`), so that
# importing a submodule never shadows a function on this package.

# Heavier parts load on first use, so `from jaxmouse.data import NeuralDataset` stays light.
_LAZY = {
    "load": "jaxmouse.data.io",
    "save": "jaxmouse.data.io",
    "FORMATS": "jaxmouse.data.io",
    "simulate": "jaxmouse.data.simulation",
    "SimulationConfig": "jaxmouse.data.simulation",
    "Truth": "jaxmouse.data.simulation",
    "load_truth": "jaxmouse.data.simulation",
    "save_truth": "jaxmouse.data.simulation",
}

__all__ = ["TIERS", "NeuralDataset", *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'jaxmouse.data' has no attribute {name!r}")
