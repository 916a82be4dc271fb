"""What a result was computed with: package versions, devices, the command, the time.

A run's numbers depend on its config, its data and the software that computed them; studies write
``RUN/run.json`` from ``run_record`` so that a reader can tell two runs apart without rerunning
them.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import sys
from typing import Any, Mapping

PACKAGES = ("jaxmouse", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy")


def versions(packages=PACKAGES) -> dict[str, str]:
  """``{package: version}`` of the installed distributions (``"not installed"`` if missing)."""
  out = {"python": platform.python_version()}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  if out.get("jaxmouse") == "not installed":  # run from a source tree without installing
    from jaxmouse import __version__

    out["jaxmouse"] = __version__
  return out


def devices() -> list[dict[str, Any]]:
  """The JAX devices a run computes on: ``[{"id", "platform", "kind", "process"}]``."""
  import jax

  return [{"id": d.id, "platform": d.platform, "kind": getattr(d, "device_kind", ""),
           "process": d.process_index} for d in jax.devices()]


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_record(*, config: Mapping, data: Mapping, **extra) -> dict[str, Any]:
  """``RUN/run.json``: the resolved ``config``, the ``data`` (name, fingerprint, source), the
  versions, the devices, the command line and the start time; ``extra`` keys are added."""
  return {"config": dict(config), "data": dict(data), "versions": versions(),
          "devices": devices(), "command": list(sys.argv), "started": now(), **extra}
