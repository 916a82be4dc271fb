"""jaxmouse: how well does a feature space predict mouse visual cortex, at scale, in JAX.

Data flows one way: stimuli -> features -> readouts -> metrics -> sweeps -> reports.

The main names, loaded on first use:

- ``jaxmouse.score(features, data, ...)``: the results table of a feature space (a weights
  checkpoint, a network, a callable or arrays) on a data set, as ``jaxmouse sweep`` computes it;
- ``jaxmouse.load(path)``: a neural data set in any supported format (``jaxmouse.data.load``);
- ``jaxmouse.fit``: readouts for every neuron and penalty config at once (``fit.fit_and_score``);
- ``jaxmouse.report(run)``: tables, figures and summary.md of a sweep or study run
  (``jaxmouse.reports.write_report``).
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute); submodules (jaxmouse.fit, jaxmouse.sweeps, ...) load as usual.
_LAZY = {
    "score": ("jaxmouse.scoring", "score"),
    "load": ("jaxmouse.data.io", "load"),
    "report": ("jaxmouse.reports.summary", "write_report"),
}

__all__ = ["score", "load", "fit", "report", "JaxmouseWarning", "__version__"]


class JaxmouseWarning(UserWarning):
  """A doubtful input that jaxmouse still accepts (the command line prints it as one line)."""


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  try:
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
  raise AttributeError(f"module 'jaxmouse' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY) | {"fit"})
