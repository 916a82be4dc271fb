"""``jaxmouse bench fit|features|compare|scaling``: benchmarks that print a table of measured
figures."""

from __future__ import annotations

import argparse
import importlib

EXAMPLES = """examples:
  jaxmouse bench fit                       # ~2 min on 2 CPU cores: 16x16x256 layer, 16 configs
  jaxmouse bench fit --neurons 2000 --steps 50 --torch-configs 1
  jaxmouse bench fit --full                # the issue's size: 5000 images, 2000 neurons
  jaxmouse bench features --sizes 64x64,128x128
  jaxmouse bench features --arch resnet18 --sizes 36x64,128x128,224x224
  jaxmouse bench scaling                   # cells/hour with 1, 2 shard workers; a fit in 1, 2 processes
"""

BENCHES = {
    "fit": ("jaxmouse.benchmarks.fit",
            "readout fitting: all configs in one program vs PyTorch config after config; "
            "FLOP/s vs matmul peak; ridge vs scikit-learn"),
    "features": ("jaxmouse.benchmarks.features",
                 "feature extraction images/s of any network (--arch) vs a PyTorch forward"),
    "compare": ("jaxmouse.benchmarks.compare",
                "mice-to-machines table (RMSE, RSA, CKA; areas x layers x neurons) vs a SciPy loop"),
    "scaling": ("jaxmouse.benchmarks.scaling",
                "cells/hour of a sweep with 1 and 2 shard workers; one fit in 1 and 2 JAX "
                "processes"),
}


def register(sub, *, name: str, help: str) -> None:
  p = sub.add_parser(name, help=help, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Benchmarks that print measured figures (nothing is asserted).")
  benches = p.add_subparsers(dest="bench", metavar="BENCH")
  for bench, (module, summary) in BENCHES.items():
    b = benches.add_parser(bench, help=summary, description=summary,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
      mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise
      b.set_defaults(func=_missing(module))
      continue
    mod.add_arguments(b)
    b.set_defaults(func=_runner(module))
  p.set_defaults(func=lambda args: p.print_help() or 2)


def _runner(module: str):
  def run(args):
    try:
      importlib.import_module(module).run(args)
    except ModuleNotFoundError as e:
      if e.name != "torch":
        raise
      # make main installs jaxmouse without PyTorch; only the benchmarks' references need it.
      raise ValueError("this benchmark compares with a PyTorch reference, and PyTorch is not "
                       "installed: pip install -e '.[test]' (or make test)") from None
  return run


def _missing(module: str):
  def run(args):
    raise ValueError(f"benchmark module {module} is not part of this build")
  return run
