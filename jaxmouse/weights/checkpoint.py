"""Orbax checkpoints of ``Weights``: ``DIR/params`` (orbax) beside ``DIR/metadata.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from jaxmouse import _io
from jaxmouse.models import zoo
from jaxmouse.weights._types import Weights, check_params, fingerprint

FORMAT = "jaxmouse-weights"
FORMAT_VERSION = 1


def save(weights: Weights, dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
  """Writes ``weights`` to ``dir`` atomically (complete or absent); returns the path."""
  dir = _io.check_output_path(dir, overwrite=overwrite)
  meta = {
      "format": FORMAT,
      "format_version": FORMAT_VERSION,
      "arch": weights.arch,
      "normalization": weights.normalization,
      "layers": list(zoo.layers(weights.arch)),  # network order, for reports
      "kind": weights.kind,
      "params_sha256": weights.fingerprint,
      **{k: v for k, v in weights.metadata.items()
         if k not in ("format", "format_version", "kind")},
  }
  _io.check_free_space(dir, sum(a.nbytes for d in weights.params.values() for a in d.values()))
  with _io.atomic_path(dir, is_dir=True) as tmp:
    tmp = Path(tmp).resolve()
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / "params", {k: dict(v) for k, v in weights.params.items()})
      ckptr.wait_until_finished()
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
  return dir


def read_metadata(dir: str | os.PathLike) -> dict:
  """The ``metadata.json`` of a weights checkpoint, with a clear error if ``dir`` is not one."""
  dir = Path(dir)
  if not dir.exists():
    raise FileNotFoundError(f"weights checkpoint {dir} does not exist")
  path = dir / "metadata.json"
  if not path.is_file() or not (dir / "params").is_dir():
    raise FileNotFoundError(
        f"{dir} is not a jaxmouse weights checkpoint (expected {path} and {dir / 'params'}/); "
        "create one with `jaxmouse weights convert|random|fetch`")
  meta = _io.read_json(path, what="a weights checkpoint's metadata (arch, normalization, ...)")
  for field in ("arch", "normalization"):
    if field not in meta:
      raise ValueError(f"{path} lacks the field {field!r}")
  return meta


def load(dir: str | os.PathLike) -> Weights:
  """Reads a checkpoint written by ``save``; checks every tensor's shape against the arch, and
  the params' sha256 against the ``params_sha256`` that ``save`` recorded."""
  dir = Path(dir)
  meta = read_metadata(dir)
  try:
    arch = zoo.check_arch(meta["arch"])
  except ValueError as e:
    raise ValueError(f"weights checkpoint {dir}: {dir / 'metadata.json'}: {e}") from None
  recorded = meta.get("params_sha256")
  if not isinstance(recorded, str):
    raise ValueError(f"weights checkpoint {dir}: {dir / 'metadata.json'} lacks the string field "
                     "'params_sha256' that `jaxmouse weights` writes; the checkpoint cannot be "
                     "verified")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore((dir / "params").resolve())
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"weights checkpoint {dir}: cannot restore {dir / 'params'} (truncated or "
                     f"corrupt?): {' '.join(str(e).split())[:300]}") from None
  params = check_params(arch, restored, source=f"checkpoint {dir} (metadata says arch={arch})",
                        values=False)
  got = fingerprint(arch, meta["normalization"], params)
  if got != recorded:
    raise ValueError(f"weights checkpoint {dir} is corrupt: its params hash to {got[:16]}..., but "
                     f"metadata.json records params_sha256 {recorded[:16]}... (changed bytes in "
                     f"{dir / 'params'}, or an edited arch or normalization); write it again with "
                     "`jaxmouse weights`")
  metadata = {k: v for k, v in meta.items()
              if k not in ("format", "format_version", "arch", "normalization", "layers",
                           "params_sha256")}
  weights = Weights(arch=arch, params=params, normalization=meta["normalization"],
                    metadata=metadata)
  return weights
