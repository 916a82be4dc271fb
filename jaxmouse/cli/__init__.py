"""The ``jaxmouse`` command: parses flags and hands over to library functions.

Each subcommand lives in its own module here with a ``register(subparsers)`` function that adds
its parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace``. Modules are
imported lazily only as far as argparse needs them, so a broken optional dependency of one
subcommand does not break the others.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path

from jaxmouse import JaxmouseWarning

# (module, summary) in the order of the data flow.
SUBCOMMANDS = {
    "weights": ("jaxmouse.cli.weights", "convert, fetch or draw CNN weights into orbax checkpoints"),
    "extract": ("jaxmouse.cli.extract", "extract named layer features of images"),
    "data": ("jaxmouse.cli.data", "inspect or simulate neural data sets"),
    "sweep": ("jaxmouse.cli.sweep", "fit readouts over feature spaces x areas x readouts"),
    "report": ("jaxmouse.cli.report", "tables and figures from a sweep's results"),
    "run": ("jaxmouse.cli.run", "run a study end to end (fetch, simulate, extract, sweep, report)"),
    "compare": ("jaxmouse.cli.compare", "representational comparison of areas with DNN layers"),
    "bench": ("jaxmouse.cli.bench", "benchmarks that print figures"),
}

EPILOG = """examples:
  jaxmouse weights fetch hed --out weights/hed
  jaxmouse weights random --arch vgg16 --seed 0 --out weights/random0
  jaxmouse extract --weights weights/hed --images images.npy --layers conv2_2,conv3_3 --out feats.npz
  jaxmouse run cadena2019 --config quick --out runs/quick
"""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jaxmouse",
      description="How well does a feature space predict mouse visual cortex? Fit, score, report.",
      epilog=EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  from jaxmouse import __version__

  parser.add_argument("--version", action="version", version=f"jaxmouse {__version__}")
  _add_verbosity(parser, default=0)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, (module, summary) in SUBCOMMANDS.items():
    try:
      mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name == module:  # subcommand not part of this build
        continue
      raise
    mod.register(sub, name=name, help=summary)
    # -v / -q also after the subcommand (``jaxmouse run cadena2019 -q``).
    _add_verbosity(sub.choices[name], default=argparse.SUPPRESS)
  return parser


def _add_verbosity(parser: argparse.ArgumentParser, *, default) -> None:
  parser.add_argument("-v", "--verbose", action="count", default=default,
                      help="more messages: -v adds the details of each stage (debug level)")
  parser.add_argument("-q", "--quiet", action="count", default=default,
                      help="only warnings and errors, and no progress bars")


def log_level(args: argparse.Namespace) -> int:
  """The ``logging`` level of the ``jaxmouse`` loggers for ``-v`` / ``-q``."""
  if getattr(args, "quiet", 0):
    return logging.WARNING
  return logging.DEBUG if getattr(args, "verbose", 0) else logging.INFO


def show_progress(args: argparse.Namespace) -> bool:
  """Progress bars are drawn unless ``-q`` was given."""
  return not getattr(args, "quiet", 0)


class _Handler(logging.Handler):
  """Log records as lines on stderr, written through tqdm so that progress bars stay intact;
  warnings and errors carry the command's prefix, as the CLI's own warnings do."""

  def __init__(self, prefix: str):
    super().__init__()
    self.prefix = prefix

  def emit(self, record: logging.LogRecord) -> None:
    try:
      msg = record.getMessage()
      if record.levelno >= logging.WARNING:
        msg = f"{self.prefix}: {record.levelname.lower()}: {msg}"
      try:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)
      except ImportError:
        print(msg, file=sys.stderr)
    except Exception:  # noqa: BLE001 -- logging must never break the command
      self.handleError(record)


@contextlib.contextmanager
def configure_logging(args: argparse.Namespace, prefix: str):
  """While the command runs, the ``jaxmouse`` loggers write to stderr at the level of ``-v`` /
  ``-q``; afterwards they are as they were (the command may run inside another program)."""
  logger = logging.getLogger("jaxmouse")
  saved = (logger.level, logger.propagate)
  handler = _Handler(prefix)
  logger.addHandler(handler)
  logger.setLevel(log_level(args))
  logger.propagate = False
  try:
    yield logger
  finally:
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def describe_error(e: BaseException) -> str | None:
  """The one line the CLI prints for an expected failure, or None for a bug (a traceback).

  Expected: bad input (ValueError, KeyError), missing or existing files, a folder in use, the
  failure of the lead process of a multi-process run (on the others), and every OSError
  (read-only folder, disk full, ...) with the path and the cause; out of memory.
  """
  from jaxmouse._io import FolderLocked
  from jaxmouse.cluster import LeadFailed

  if isinstance(e, OSError) and e.errno is not None and e.strerror:
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    full = e.errno == errno.ENOSPC and e.strerror == os.strerror(errno.ENOSPC)
    cause = e.strerror + (" (the disk is full)" if full else "")
    return f"{paths}: {cause}" if paths else cause
  if isinstance(e, MemoryError):
    return f"out of memory: {e}" if str(e) else "out of memory"
  if isinstance(e, RuntimeError) and str(e).startswith("RESOURCE_EXHAUSTED"):  # XLA
    return "out of accelerator memory: " + str(e).splitlines()[0]
  if isinstance(e, (ValueError, OSError, KeyError, FolderLocked, LeadFailed)):
    return str(e.args[0] if isinstance(e, KeyError) and e.args else e)
  return None


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if not getattr(args, "func", None):
    parser.print_help()
    return 2
  prefix = f"jaxmouse {args.command}"
  with configure_logging(args, prefix), warnings.catch_warnings():
    # jaxmouse's own warnings (e.g. images on a 0-1 scale) as one line each, like the errors.
    warnings.simplefilter("default")
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
      # A skipped file or a withheld tier, warned about by a loader, is one line too.
      ours = issubclass(category, UserWarning) and "jaxmouse" in Path(filename).parts
      if issubclass(category, JaxmouseWarning) or ours:
        print(f"{prefix}: warning: {message}", file=sys.stderr)
      else:
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
      result = args.func(args)
    except Exception as e:  # noqa: BLE001 -- sorted into expected failures and bugs below
      msg = describe_error(e)
      if msg is None:
        raise
      print(f"{prefix}: error: {msg}", file=sys.stderr)
      return 1
  return int(result or 0)
