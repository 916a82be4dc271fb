"""Sweeps: feature spaces (networks' layers, precomputed features, the energy model) x readouts x
areas.

A cell is one readout over its whole penalty grid for the neurons of one area, with a config
selected per neuron (or per area) on validation and scored on the test trials. The areas of one
(feature space, readout) are fitted together in one jitted program (neurons are independent, so
this equals fitting them one area at a time, and compiles once per feature shape), then each
area's cell is written at once and atomically under ``RUN/cells/<cell>/``:

  ``state/``      orbax checkpoint: the chosen per-neuron parameters, chosen config index,
                  validation correlations (chosen and whole grid) and test scores;
  ``rows.csv``    the cell's rows of the results table;
  ``cell.json``   what the cell is (weights, layer, readout, area, grid, unit ids, steps);
  ``history.npz`` validation correlation of every (config, neuron) pair per check (learning
                  curves: ``check_steps (c,)``, ``val_history (c, g, k)``, ``stop_step (g, k)``;
                  ridge: ``val_corr_grid (g, k)`` only), read by the report.

Re-running the same sweep skips finished cells (also after ``kill -9``: an unfinished cell
leaves only a hidden temporary folder that the next start removes), and since every cell is a
function of the data, its features and the sweep settings alone, the results equal an
uninterrupted run (bit for bit on CPU; on a GPU to float32 rounding, see the README).

``RUN/results.csv`` has one row per feature space x layer x readout x neuron with the columns
``COLUMNS``: the rows of the finished cells in plan order, as each cell's ``rows.csv`` holds
them. A run appends each fitted cell's rows when it is written (never re-reading the others) and
puts the file in plan order once at the end, so it is byte for byte what an uninterrupted run
writes; ``results.parquet`` (when pyarrow is installed) is written at the end. Both are written
only when their content changes, so a finished run re-runs in a read-only folder.

A sweep locks its run folder (``RUN/.jaxmouse.lock``, ``_io.FolderLock``) once its arguments are
checked, and nothing is written before that. A plain run locks it exclusively: a second command
in the folder is refused and touches nothing. The workers of a sharded sweep (``shard``,
``--shard I/N``) lock it shared and run side by side, each only the fits that ``shard_cells``
assigns to it. Every run claims a fit's unfinished cells before fitting them
(``RUN/claims/<cell>.claim``, ``_io.Claim``): cells that another live process holds are left to
it, and the claims of processes that are gone are taken over. ``RUN/claims/journal.jsonl``
records every claim, takeover, finish and release (host, pid, time). So workers started together
never fit a cell twice and never write one another's files. A worker that finds every cell done
writes ``results.csv``; the same command without a shard collects it too. Only temporaries whose
writer is gone are cleaned.

With several JAX processes (``cluster.initialize``), every process runs the sweep, each fit over
the devices of all; the lead process (0) alone locks, claims and writes, and tells the others
which fits to run (``cluster.lead_decides``).

Feature spaces are ``jaxmouse.feature_spaces``: weights checkpoints of any network (all layers a
checkpoint needs are extracted in one streaming pass to disk by ``FeatureCache``, then read one
layer at a time, so a sweep over all 13 VGG16 layers holds one layer in memory), folders or
``.npz`` files of precomputed features, and the energy model. ``RUN/feature_spaces.json`` records
each one's architecture, kind, layers in network order and fitted layers, for the reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxmouse import _io
from jaxmouse import cluster
from jaxmouse import fit as fitlib
from jaxmouse import metrics
from jaxmouse import readouts as readouts_lib

COLUMNS = ("weights", "layer", "readout", "area", "neuron", "config", "feve", "corr", "corr_avg",
           "oracle", "fev", "val_corr", "weights_kind", "recording")
# Per-neuron metadata that names the recording a neuron comes from (scan, session, experiment,
# animal), finest first as the loaders write it; joined into the ``recording`` column.
RECORDING_KEYS = ("experiment_id", "ophys_experiment_id", "animal_ids", "animal_id", "animal",
                  "sessions", "session", "session_id", "scan_idx", "scan")
ENERGY = ("energy", "gabor")  # (weights, layer) labels of the energy model in the table
SWEEP_FORMAT = 1
CLAIMS = "claims"  # RUN/claims/<cell>.claim while a process fits a cell, and the journal
JOURNAL = "journal.jsonl"
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
  """What a sweep fits.

  Attributes:
    weights: weights checkpoint folders of any network (``jaxmouse weights ...``); labelled by
      folder name.
    layers: layer names; each feature space is fitted on those it has (every name must belong to
      some space, every space must get one); ``("all",)`` for every layer of every space. Empty
      for precomputed features alone: all their layers.
    features: precomputed features: folders of ``<layer>.npy`` or ``.npz`` files
      (``jaxmouse.feature_spaces.PrecomputedSpace``); labelled by folder or file name.
    readouts: any of ``factorized``, ``full``, ``gaussian``, ``ridge``.
    energy: also fit the Gabor energy model feature space (``weights=energy``, ``layer=gabor``).
    areas: areas to fit (None: every area of the data set); one cell per area.
    grids: per readout ``{penalty: values}`` (a cartesian product); readouts not named get
      ``fit.default_grid``; ridge takes ``{"alpha": values}`` (multiples of the mean eigenvalue).
    fit: the FitConfig of every trained readout.
    select: ``neuron`` (best config per neuron) or ``area`` (one config per area).
    image_shape: resize the images to ``(H, W)`` before any feature space sees them.
  """
  weights: tuple[str, ...] = ()
  layers: tuple[str, ...] = ()
  readouts: tuple[str, ...] = ("factorized",)
  energy: bool = False
  areas: tuple[str, ...] | None = None
  grids: Mapping[str, Mapping[str, tuple[float, ...]]] = dataclasses.field(default_factory=dict)
  fit: fitlib.FitConfig = fitlib.FitConfig()
  select: str = "neuron"
  image_shape: tuple[int, int] | None = None
  features: tuple[str, ...] = ()

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("weights", tuple(str(w) for w in _as_tuple(self.weights)))
    set_("features", tuple(str(f) for f in _as_tuple(self.features)))
    set_("layers", tuple(dict.fromkeys(_as_tuple(self.layers))))  # duplicates dropped, in order
    set_("readouts", tuple(_as_tuple(self.readouts)))
    if self.areas is not None:
      set_("areas", tuple(dict.fromkeys(str(a) for a in _as_tuple(self.areas))))
      if not self.areas:
        raise ValueError("SweepConfig.areas is empty; name at least one area (e.g. --areas V1,LM) "
                         "or leave it unset for every area")
    if not self.readouts:
      raise ValueError("SweepConfig.readouts is empty; choose from "
                       f"{list(readouts_lib.NAMES)}")
    for r in self.readouts:
      if r not in readouts_lib.NAMES:
        raise ValueError(f"unknown readout {r!r}; available: {list(readouts_lib.NAMES)}")
    if len(set(self.readouts)) != len(self.readouts):
      raise ValueError(f"SweepConfig.readouts has duplicates: {self.readouts}")
    if self.weights and not self.layers:
      raise ValueError("SweepConfig: weights given but no layers (e.g. layers=('conv2_2',))")
    if self.layers and not (self.weights or self.features):
      raise ValueError("SweepConfig: layers given but no weights checkpoint or features to read "
                       "them from")
    if not self.weights and not self.features and not self.energy:
      raise ValueError("SweepConfig: nothing to sweep; give weights and layers, features, or "
                       "energy=True")
    if self.select not in ("neuron", "area"):
      raise ValueError(f"SweepConfig.select must be 'neuron' or 'area', got {self.select!r}")
    grids = {}
    for r, g in dict(self.grids).items():
      if r not in readouts_lib.NAMES:
        raise ValueError(f"SweepConfig.grids names unknown readout {r!r}")
      if r == "ridge":
        if set(g) != {"alpha"}:
          raise ValueError(f"the ridge grid is {{'alpha': values}}, got keys {sorted(g)}")
        fitlib.ridge_lib.check_alphas(g["alpha"])
      else:
        readouts_lib.check_grid(readouts_lib.make_grid(**g), readouts_lib.get(r).penalties,
                                readout=r)
      grids[r] = {k: tuple(float(x) for x in np.atleast_1d(v)) for k, v in g.items()}
    set_("grids", grids)
    if self.image_shape is not None:
      set_("image_shape", tuple(int(s) for s in self.image_shape))

  def grid(self, readout: str) -> dict[str, np.ndarray]:
    """The ``{penalty: (g,)}`` grid of a readout (product of the given values, or the default)."""
    if readout not in self.grids:
      return fitlib.default_grid(readout)
    if readout == "ridge":
      return {"alpha": np.asarray(self.grids[readout]["alpha"], np.float32)}
    return readouts_lib.make_grid(**self.grids[readout])

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["fit"] = dataclasses.asdict(self.fit)
    if d["fit"]["stop_on"] == "pair":
      del d["fit"]["stop_on"]  # as before the option existed: older run folders still resume
    if d["fit"]["warmup"] is None:
      del d["fit"]["warmup"]  # likewise (per pair, None is no warm-up, as before)
    if not d["features"]:
      del d["features"]  # the manifest of a sweep without them is what it always was
    return json.loads(json.dumps(d))


def _as_tuple(x) -> tuple:
  if x is None:
    return ()
  if isinstance(x, str):
    return tuple(s for s in x.split(",") if s)
  return tuple(x)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One fit: a feature space (weights label + layer), a readout and an area."""
  weights: str
  layer: str
  readout: str
  area: str

  @property
  def id(self) -> str:
    raw = f"{self.weights}__{self.layer}__{self.readout}__{self.area}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", raw)
    if safe != raw:  # keep distinct names distinct after sanitizing
      safe += "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return safe


def weights_labels(paths: Sequence[str]) -> dict[str, str]:
  """``{label: path}`` with the folder name as label (made unique with a suffix)."""
  from jaxmouse.feature_spaces import labels

  return labels(paths)


def open_spaces(config: SweepConfig, *, cache=None) -> dict:
  """``{label: FeatureSpace}`` of a sweep: its weights, precomputed features and energy model."""
  from jaxmouse import feature_spaces

  return feature_spaces.open_spaces(weights=config.weights, features=config.features,
                                    energy=config.energy, cache=cache, layer_order=config.layers)


def space_layers(config: SweepConfig, spaces: Mapping | None = None) -> dict[str, tuple[str, ...]]:
  """``{label: layers}``: the layers each feature space of the sweep is fitted on."""
  from jaxmouse import feature_spaces

  return feature_spaces.resolve_layers(spaces or open_spaces(config), config.layers)


def plan(config: SweepConfig, areas: Sequence[str], *,
         layers: Mapping[str, Sequence[str]] | None = None) -> list[Cell]:
  """Every cell of a sweep, in the order they run (feature space, then readout, then area).
  ``layers``: ``space_layers(config)``, computed when not given."""
  layers = space_layers(config) if layers is None else layers
  spaces = [(label, layer) for label, names in layers.items() for layer in names]
  return [Cell(w, l, r, a) for w, l in spaces for r in config.readouts for a in areas]


def fits(cells: Sequence[Cell]) -> list[list[Cell]]:
  """The cells of a plan grouped by fit (one feature space and readout, fitted for all its areas
  in one program), in plan order."""
  groups: dict[tuple[str, str, str], list[Cell]] = {}
  for c in cells:
    groups.setdefault((c.weights, c.layer, c.readout), []).append(c)
  return list(groups.values())


def shard_cells(cells: Sequence[Cell], shard, *, cost=None) -> list[Cell]:
  """The cells that worker ``shard`` (a ``cluster.Shard`` or ``(index, count)``; None: all)
  runs, in plan order.

  A fit's area cells stay together: they are one program, and a fit of other neurons would
  start from other random numbers. The fits are dealt largest first, each to the worker with
  the least estimated work so far (the lowest index on a tie): ``cost(fit_cells)`` estimates a
  fit's work (default 1 each). Among fits of equal cost, readout by readout in plan order, so
  that with equal costs each worker gets its share of every readout, round-robin. The deal
  depends on the sweep alone: every worker computes the same one.
  """
  shard = cluster.check_shard(shard)
  if shard is None:
    return list(cells)
  groups = fits(cells)
  costs = [float(cost(g)) if cost is not None else 1.0 for g in groups]
  readouts = list(dict.fromkeys(g[0].readout for g in groups))
  order = sorted(range(len(groups)),
                 key=lambda j: (-costs[j], readouts.index(groups[j][0].readout), j))
  load, mine = [0.0] * shard.count, set()
  for j in order:
    worker = min(range(shard.count), key=lambda w: (load[w], w))
    load[worker] += costs[j]
    if worker == shard.index:
      mine.add(j)
  return [c for j, group in enumerate(groups) if j in mine for c in group]


def data_fingerprint(ds) -> str:
  """sha256 of what a sweep's results depend on in a data set (a guard against mixing runs)."""
  from jaxmouse.features import images_fingerprint

  h = hashlib.sha256(images_fingerprint(ds.images).encode())
  for a in (ds.responses, ds.trial_image, ds.tiers.astype(str), ds.unit_ids.astype(str),
            ds.areas.astype(str)):
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


# ---- checkpoints of cells ----------------------------------------------------------------------

def cell_dir(run: str | os.PathLike, cell: Cell) -> Path:
  return Path(run) / "cells" / cell.id


def is_done(run, cell: Cell) -> bool:
  d = cell_dir(run, cell)
  return (d / "cell.json").is_file() and (d / "rows.csv").is_file() and (d / "state").is_dir()


def weights_kind(path) -> str:
  """``trained`` or ``random``, from a weights checkpoint's ``metadata.json`` (never its name)."""
  from jaxmouse.weights import read_metadata

  meta = read_metadata(path)
  kind = meta.get("kind") or ("random" if meta.get("source") == "random" else "trained")
  return str(kind)


def recordings(ds) -> np.ndarray | None:
  """Per neuron, the recording it comes from (``"animal_ids=1/sessions=2/scan_idx=3"``), built
  from the ``RECORDING_KEYS`` present in ``ds.neuron_meta``; None when there are none."""
  keys = [k for k in RECORDING_KEYS if k in ds.neuron_meta]
  if not keys:
    return None
  parts = [np.char.add(f"{k}=", np.asarray(ds.neuron_meta[k]).astype(str)) for k in keys]
  out = parts[0]
  for p in parts[1:]:
    out = np.char.add(np.char.add(out, "/"), p)
  return out


def cell_rows(cell: Cell, result: fitlib.ReadoutFit, unit_ids, *, kind: str = "",
              recording=None) -> "pandas.DataFrame":
  import pandas as pd

  k = len(unit_ids)
  rows = {"weights": [cell.weights] * k, "layer": [cell.layer] * k,
          "readout": [cell.readout] * k, "area": [cell.area] * k,
          "neuron": list(np.asarray(unit_ids)),
          "config": [result.configs[i] for i in result.choice]}
  for m in ("feve", "corr", "corr_avg", "oracle", "fev"):
    rows[m] = np.asarray(result.scores[m], np.float64)
  rows["val_corr"] = np.asarray(result.val_corr, np.float64)
  rows["weights_kind"] = [kind] * k
  rows["recording"] = [""] * k if recording is None else list(np.asarray(recording).astype(str))
  return pd.DataFrame(rows, columns=list(COLUMNS))


TEST_IMAGES = "test_images.npz"
HISTORY = "history.npz"


def save_cell(run, cell: Cell, result: fitlib.ReadoutFit, unit_ids, grid, *, kind: str = "",
              recording=None) -> Path:
  """Writes a finished cell atomically (orbax state, rows.csv, cell.json, and the per-test-image
  statistics ``test_images.npz`` that let a report resample test images)."""
  import jax
  import orbax.checkpoint as ocp

  state = {
      "params": {k: np.asarray(v) for k, v in result.params.items()},
      "choice": np.asarray(result.choice),
      "val_corr": np.asarray(result.val_corr),
      "val_corr_grid": np.asarray(result.val_corr_grid),
      "scores": {k: np.asarray(v, np.float64) for k, v in result.scores.items()},
  }
  meta = {"format": SWEEP_FORMAT, "cell": dataclasses.asdict(cell), "id": cell.id,
          "configs": result.configs, "steps": int(result.steps),
          "grid": {k: np.asarray(v, np.float64).tolist() for k, v in grid.items()},
          "unit_ids": [str(u) for u in np.asarray(unit_ids)]}
  target = cell_dir(run, cell)
  _io.check_free_space(target, sum(np.asarray(a).nbytes for a in jax.tree.leaves(state)))
  with _io.atomic_path(target, is_dir=True) as tmp:
    tmp = Path(tmp).resolve()
    with _checkpointer() as ckptr:
      ckptr.save(tmp / "state", state)
      ckptr.wait_until_finished()
    cell_rows(cell, result, unit_ids, kind=kind, recording=recording).to_csv(
        tmp / "rows.csv", index=False)
    if result.test_stats is not None:
      with open(tmp / TEST_IMAGES, "wb") as f:
        np.savez(f, unit_ids=np.asarray(unit_ids).astype(str),
                 **{k: np.asarray(v) for k, v in result.test_stats.items()})
    curves = {k: np.asarray(getattr(result, k)) for k in ("val_history", "check_steps",
                                                          "stop_step")
              if getattr(result, k) is not None}
    with open(tmp / HISTORY, "wb") as f:
      np.savez(f, unit_ids=np.asarray(unit_ids).astype(str),
               configs=np.asarray(result.configs, dtype=str),
               val_corr_grid=np.asarray(result.val_corr_grid, np.float32), **curves)
    (tmp / "cell.json").write_text(json.dumps(meta, indent=2) + "\n")
  return target


def _checkpointer():
  """An orbax checkpointer of this process alone: cells are written and read by one process,
  also when several run a sweep together (the others are not waited for)."""
  import jax
  import orbax.checkpoint as ocp

  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def load_cell(run, cell: Cell) -> dict:
  """A finished cell: ``{"meta": cell.json, "state": the orbax pytree}``."""
  d = cell_dir(run, cell)
  if not is_done(run, cell):
    raise FileNotFoundError(f"cell {cell.id} is not finished under {d}")
  with _checkpointer() as ckptr:
    state = ckptr.restore((d / "state").resolve())
  return {"meta": json.loads((d / "cell.json").read_text()), "state": state}


def collect(run, cells: Iterable[Cell]) -> "pandas.DataFrame":
  """The results table of the finished cells (in plan order)."""
  import pandas as pd

  frames = [pd.read_csv(cell_dir(run, c) / "rows.csv", dtype={"neuron": str, "area": str,
                                                                "weights": str, "layer": str})
            for c in cells if is_done(run, c)]
  if not frames:
    return pd.DataFrame(columns=list(COLUMNS))
  return pd.concat(frames, ignore_index=True)


def write_results(run, table) -> Path:
  """``RUN/results.csv`` (and ``results.parquet`` when pyarrow is available), atomically, and
  only when their content changes (a finished run re-read from a read-only folder writes
  nothing)."""
  run = Path(run)
  _io.write_if_changed(run / "results.csv", table.to_csv(index=False).encode())
  _write_parquet(run, table)
  return run / "results.csv"


def _write_parquet(run: Path, table) -> None:
  try:
    import pyarrow  # noqa: F401
  except ImportError:
    return
  buffer = io.BytesIO()
  table.to_parquet(buffer, index=False)
  _io.write_if_changed(Path(run) / "results.parquet", buffer.getvalue())


_HEADER = (",".join(COLUMNS) + "\n").encode()


def _rows_lines(run, cell: Cell) -> bytes:
  """A finished cell's lines of the results table: its ``rows.csv`` without the header."""
  data = (cell_dir(run, cell) / "rows.csv").read_bytes()
  return data.partition(b"\n")[2]


class _ResultsFile:
  """``RUN/results.csv`` of a run: each fitted cell's rows appended as it is written (no other
  cell is read again), and the file put in plan order once at the end, so that it is the same
  bytes whatever order the cells were fitted in."""

  def __init__(self, run: Path, cells: Sequence[Cell]):
    self.run, self.cells = run, list(cells)
    self.path = run / "results.csv"
    self.written: list[Cell] | None = None  # the cells in the file, in its order

  def _write(self, cells: list[Cell]) -> None:
    _io.write_if_changed(self.path, _HEADER + b"".join(_rows_lines(self.run, c) for c in cells))
    self.written = list(cells)

  def append(self, cells: Sequence[Cell]) -> None:
    if self.written is None:  # the first cells of this run: the file as the finished cells say
      self._write([c for c in self.cells if is_done(self.run, c)])
      return
    _io.append_bytes(self.path, b"".join(_rows_lines(self.run, c) for c in cells))
    self.written += cells

  def finish(self, done: list[Cell]) -> None:
    """``done``: the finished cells, in plan order."""
    if self.written != done:
      self._write(done)


def _clean_temporaries(run: Path) -> None:
  """Removes what killed runs left half written (hidden ``.tmp-`` / ``.old-`` siblings); a live
  process's temporaries are kept (see ``_io.clean_stale_temporaries``)."""
  for d in (run, run / "cells"):
    _io.clean_stale_temporaries(d)


def _check_manifest(run: Path, manifest: dict) -> None:
  path = run / "sweep.json"
  if not path.exists():  # of workers starting together, one writes it; the others compare
    _io.create_once(path, (json.dumps(manifest, indent=2) + "\n").encode())
  old = _io.read_json(path, what="the manifest of a jaxmouse sweep")
  if old != manifest:
    raise FileExistsError(
        f"{run} holds a different sweep (differs in {_differences(old, manifest)}); use a new "
        "--out folder, or delete it to start over")


def _differences(old, new, prefix: str = "") -> list[str]:
  """The dotted keys (``config.fit.stop_on``) where two manifests differ; a key one of them
  lacks counts."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}")
  return out


class _Claims:
  """The cells this process claims (``RUN/claims/<cell>.claim``) and the journal of claims."""

  def __init__(self, run: Path, *, timeout: float, shard):
    self.run, self.folder = run, run / CLAIMS
    self.timeout, self.shard = timeout, shard
    self.held: dict[str, tuple[Cell, _io.Claim]] = {}

  def _journal(self, event: str, cell: Cell, **extra) -> None:
    import datetime

    line = {"event": event, "cell": cell.id, "host": socket.gethostname(), "pid": os.getpid(),
            "time": datetime.datetime.now().isoformat(timespec="milliseconds"), **extra}
    if self.shard is not None:
      line["shard"] = str(self.shard)
    _io.append_bytes(self.folder / JOURNAL, (json.dumps(line) + "\n").encode())

  def take(self, cell: Cell) -> bool | None:
    """Claims an unfinished cell: True if claimed, False if another live process holds it,
    None if it is finished."""
    if is_done(self.run, cell):
      return None
    note = {"cell": cell.id} if self.shard is None else {"cell": cell.id, "shard": str(self.shard)}
    claim = _io.Claim(self.folder / f"{cell.id}.claim", timeout=self.timeout, **note)
    if not claim.acquire():
      return False
    if is_done(self.run, cell):  # finished by the previous holder just before it let go
      claim.release()
      return None
    self.held[cell.id] = (cell, claim)
    if claim.previous is None:
      self._journal("claim", cell)
    else:
      self._journal("takeover", cell, previous={k: claim.previous.get(k)
                                                for k in ("host", "pid", "since")})
    return True

  def take_fits(self, groups: Sequence[Sequence[Cell]]) -> np.ndarray:
    """Per cell of ``groups`` (fits), whether this process claimed it. Within a fit, cells are
    claimed in plan order and the first one held elsewhere ends it: that process claims the
    fit's other cells in the same order, so two processes never run one fit for its halves."""
    out = []
    for group in groups:
      blocked = False
      for cell in group:
        got = None if blocked else self.take(cell)
        blocked = blocked or got is False
        out.append(got is True)
    return np.asarray(out, np.int32)

  def finish(self, cell: Cell) -> None:
    self._journal("finish", cell)
    self.held.pop(cell.id)[1].release()

  def release_all(self) -> None:
    """Lets go of unfinished claims (a failure): other processes may take those cells."""
    for cell, claim in list(self.held.values()):
      try:
        self._journal("release", cell)
      finally:
        claim.release()
    self.held.clear()


FEATURE_SPACES = "feature_spaces.json"


def write_feature_spaces(run, spaces: Mapping, layers: Mapping[str, Sequence[str]]) -> Path:
  """``RUN/feature_spaces.json``: per label, the feature space's ``arch``, ``kind``, ``layers``
  (network order), ``normalization``, ``source`` and the ``fitted`` layers; what a report orders
  and groups layers and networks by."""
  doc = {label: {**space.describe(), "fitted": list(layers[label])}
         for label, space in spaces.items()}
  path = Path(run) / FEATURE_SPACES
  _io.write_if_changed(path, (json.dumps(doc, indent=2) + "\n").encode())
  return path


# ---- the sweep ---------------------------------------------------------------------------------

def subset(result: fitlib.ReadoutFit, idx) -> fitlib.ReadoutFit:
  """The neurons ``idx`` of a ReadoutFit (every per-neuron field indexed)."""
  idx = np.asarray(idx)
  return result._replace(
      params={k: np.asarray(v)[idx] for k, v in result.params.items()},
      choice=result.choice[idx], val_corr=result.val_corr[idx],
      val_corr_grid=result.val_corr_grid[:, idx],
      scores={k: np.asarray(v)[idx] for k, v in result.scores.items()},
      test_stats=None if result.test_stats is None else {
          k: (np.asarray(v)[:, idx] if np.ndim(v) == 2 else np.asarray(v))
          for k, v in result.test_stats.items()},
      val_history=None if result.val_history is None else result.val_history[:, :, idx],
      stop_step=None if result.stop_step is None else result.stop_step[:, idx])


@contextlib.contextmanager
def fit_progress_bar(show: bool, *, desc: str):
  """A tqdm bar inside one fit (steps, active pairs, best validation correlation so far), fed by
  ``fit``'s progress callback; yields the callback (None when ``show`` is false)."""
  if not show:
    yield None
    return
  from tqdm.auto import tqdm

  bar = tqdm(total=None, unit="step", desc=desc, leave=False, position=1)

  def on_check(p: fitlib.FitProgress) -> None:
    bar.total = p.max_steps
    bar.n = p.step
    bar.set_postfix_str(f"active {p.active}/{p.pairs} pairs, best val r {p.best_val_corr:.3f}",
                        refresh=False)
    bar.refresh()
    _log.debug("%s: step %d, %d of %d pairs active, median best validation r %.4f", desc,
               p.step, p.active, p.pairs, p.best_val_corr)

  try:
    yield on_check
  finally:
    bar.close()


def fit_readout(feats, tiers: Mapping[str, fitlib.Trials], *, readout: str, config: SweepConfig,
                fit_config: fitlib.FitConfig, groups, mesh=None, progress: bool = False,
                desc: str = "") -> fitlib.ReadoutFit:
  """What a sweep does for one feature space and readout: the readout over its grid
  (``config.grid``) for every neuron of the swept areas at once, a config chosen per neuron or
  per area (``config.select``, ``groups (k,)`` the neurons' areas) on validation, scores on
  test. ``feats``: prepared features (``fitlib.prepare_features``); ``progress``: a bar inside
  the fit."""
  with fit_progress_bar(progress and readout != "ridge", desc=desc) as on_check:
    return fitlib.fit_and_score(
        feats, train=tiers["train"], validation=tiers["validation"], test=tiers["test"],
        readout=readout, grid=config.grid(readout), config=fit_config, select=config.select,
        groups=groups, mesh=mesh, prepared=True, progress=on_check)


def _tiers(ds, neurons):
  out = {}
  for t in ("train", "validation", "test"):
    image, resp = ds.tier(t)
    out[t] = fitlib.Trials(np.asarray(image, np.int64), np.asarray(resp[:, neurons], np.float32))
  return out


def run_sweep(ds, config: SweepConfig, out: str | os.PathLike, *, feature_cache=None,
              progress: bool = False, mesh=None, shard=None,
              claim_timeout: float = _io.CLAIM_TIMEOUT_S) -> "pandas.DataFrame":
  """Runs (or resumes) a sweep; returns the results table of the finished cells, also written
  to ``out/results.csv``.

  Args:
    ds: a ``jaxmouse.data.NeuralDataset`` with train, validation and (repeated) test tiers.
    config: the SweepConfig.
    out: the run folder; an existing one must hold the same sweep (it is resumed).
    feature_cache: a ``FeatureCache`` or its root folder (default ``out/features``).
    progress: tqdm bars over cells (and feature extraction).
    mesh: a ``fit.make_mesh()`` to shard neurons over devices (default: all devices when
      there are several, of every process, else none).
    shard: a ``cluster.Shard`` (or ``(index, count)``, ``"I/N"``): run only the cells that
      ``shard_cells`` gives this worker, beside the other workers in the same folder.
      ``results.csv`` is then written only when every cell of the sweep is done.
    claim_timeout: seconds after which a claim of another host that is no longer refreshed
      counts as left by a process that is gone (``_io.Claim``).
  """
  out = Path(out)
  shard = cluster.check_shard(shard)
  if config.image_shape is not None:
    ds = ds.resize(config.image_shape)
  areas = list(config.areas) if config.areas is not None else list(ds.area_names)
  missing = [a for a in areas if a not in ds.area_names]
  if missing:
    raise ValueError(f"data set {ds.name!r} has no neurons in area(s) {missing}; available: "
                     f"{list(ds.area_names)}")
  # FileNotFoundError names a folder that is no checkpoint; ValueError lists the valid layers.
  spaces = open_spaces(config)
  layers = space_layers(config, spaces)
  for label, space in spaces.items():
    space.check_data(layers[label], ds.images.shape)  # images too small, rows != images
    for layer in layers[label]:
      for readout in config.readouts:
        space.check_readout(layer, readout)  # spatial readouts need (n, h, w, c)
  for t in ("train", "validation", "test"):
    ds.tier(t)  # a missing tier is an error before any work
  _check_memory(ds, config, spaces, layers, areas, out)

  # One loss for every cell, fitted to the response type (FitConfig.loss "auto": Gaussian when
  # any training response of the swept neurons is negative); recorded in sweep.json.
  fit_config, loss = config.fit, "least squares (ridge readouts only)"
  if any(r != "ridge" for r in config.readouts):
    fit_config, why = fitlib.resolve_loss(config.fit,
                                          ds.tier("train")[1][:, np.isin(ds.areas, areas)])
    loss = f"{fit_config.loss} ({why})"
  def cost(fit_cells):
    """A fit's work, roughly, for dealing fits to shards: the features of one image, times
    configs x steps / 10 for a readout trained by gradient descent (ridge: about ten steps)."""
    c = fit_cells[0]
    size = math.prod(spaces[c.weights].feature_shape(c.layer, ds.images.shape))
    if c.readout == "ridge":
      return size
    return size * len(next(iter(config.grid(c.readout).values()))) * max(
        config.fit.max_steps / 10, 1)

  # Nothing is written before this point; from here on the run folder is this process's alone,
  # or shared with the other workers of a sharded sweep.
  with contextlib.ExitStack() as stack:
    def lock():
      out.mkdir(parents=True, exist_ok=True)
      stack.enter_context(_io.lock_folder(out, shared=shard is not None))
    cluster.on_lead(lock)
    return _run_locked(ds, config, out, areas=areas, spaces=spaces, layers=layers,
                       fit_config=fit_config, loss=loss, feature_cache=feature_cache,
                       progress=progress, mesh=mesh, shard=shard, claim_timeout=claim_timeout,
                       cost=cost)


def _check_memory(ds, config: SweepConfig, spaces: Mapping, layers: Mapping, areas,
                  out: Path) -> None:
  """Refuses (MemoryError) a sweep whose largest unfinished fit cannot fit in memory."""
  n_neurons = int(np.isin(ds.areas, list(areas)).sum())
  n_train = len(np.unique(np.asarray(ds.tier("train")[0])))
  need, what = 0, ""
  for label, layer, readout in dict.fromkeys((c.weights, c.layer, c.readout)
                                             for c in plan(config, areas, layers=layers)
                                             if not is_done(out, c)):
    shape = spaces[label].feature_shape(layer, ds.images.shape)
    g = 1 if readout == "ridge" else len(next(iter(config.grid(readout).values())))
    n = fitlib.memory_bytes(readout=readout, feature_shape=shape, n_images=ds.n_images,
                            n_train_images=n_train, n_neurons=n_neurons, n_configs=g,
                            state_mb=config.fit.state_mb, select=config.select,
                            stop_on=config.fit.stop_on)
    if n > need:
      need = n
      what = (f"fitting the {readout} readout on {label} {layer} ({ds.n_images} images x "
              f"{'x'.join(map(str, shape))} features, {n_neurons} neurons x {g} configs)")
  if need:
    _io.check_memory(need, what=what, hint="fit fewer areas or configs, fewer layers at a time, "
                     "or smaller images (--resize)")


def _run_locked(ds, config: SweepConfig, out: Path, *, areas, spaces, layers, fit_config, loss,
                feature_cache, progress, mesh, shard, claim_timeout,
                cost=None) -> "pandas.DataFrame":
  """``run_sweep`` once its arguments are valid and its run folder is locked."""
  import jax

  from jaxmouse.feature_spaces import NetworkSpace, PrecomputedSpace
  from jaxmouse.features import FeatureCache

  lead = cluster.is_lead()
  manifest = {"format": SWEEP_FORMAT, "data": data_fingerprint(ds), "data_name": ds.name,
              "config": config.to_dict(),
              "weights": {l: str(Path(s.path).resolve()) for l, s in spaces.items()
                          if isinstance(s, NetworkSpace)},
              "loss": loss}
  features = {l: str(Path(s.path).resolve()) for l, s in spaces.items()
              if isinstance(s, PrecomputedSpace)}
  if features:
    manifest["features"] = features

  cells = plan(config, areas, layers=layers)
  if mesh is None and len(jax.devices()) > 1:
    mesh = fitlib.make_mesh()
  if feature_cache is None or isinstance(feature_cache, (str, os.PathLike)):
    feature_cache = FeatureCache(feature_cache or out / "features", progress=progress and lead)
  for space in spaces.values():
    if isinstance(space, NetworkSpace):
      space.cache = feature_cache

  def start():
    _clean_temporaries(out)
    _check_manifest(out, manifest)
    write_feature_spaces(out, spaces, layers)
    feature_cache.clean()
  cluster.on_lead(start)
  # Neurons of every area fitted, in area order; a readout is fitted for all of them at once
  # (pairs are independent, so this equals fitting area by area) and split into area cells.
  neurons = np.concatenate([np.flatnonzero(ds.areas == a) for a in areas])
  tiers = _tiers(ds, neurons)
  neuron_area = ds.areas[neurons]
  neuron_recording = recordings(ds)
  if neuron_recording is not None:
    neuron_recording = neuron_recording[neurons]
  train_images = tiers["train"].image
  ev = metrics.explainable_variance_fraction(tiers["test"].responses, tiers["test"].image)
  n_flat = int(np.sum(~(ev > 0)))
  if n_flat and lead:
    _log.warning("%d of %d neurons have no explainable variance on the test images (constant, "
                 "or noise only): their FEVE is NaN", n_flat, len(ev))

  mine = shard_cells(cells, shard, cost=cost)
  results = _ResultsFile(out, cells)
  claims = _Claims(out, timeout=claim_timeout, shard=shard)
  bar = None
  if progress and lead:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(mine), unit="cell", desc="sweep" if shard is None else f"shard {shard}")
    bar.update(sum(is_done(out, c) for c in mine))
  try:
    by_space: dict[tuple[str, str], list[list[Cell]]] = {}
    for group in fits(mine):
      by_space.setdefault((group[0].weights, group[0].layer), []).append(group)
    ensured = set()
    for (label, layer), groups in by_space.items():
      # The lead claims the unfinished cells of this feature space's fits; every process is
      # told which, and fits the same ones.
      chosen = cluster.lead_decides(lambda: claims.take_fits(groups),
                                    size=sum(map(len, groups)))
      if not chosen.any():
        continue
      space = spaces[label]
      if isinstance(space, NetworkSpace) and label not in ensured:
        # Every layer of this checkpoint in one pass over the images, by the lead; the other
        # processes then read them.
        cluster.on_lead(lambda: feature_cache.ensure(space.path, ds.images,
                                                     space.check_layers(layers[label])))
        ensured.add(label)
      raw = space.features(ds.images, layer, layers=layers[label])
      # Batch norm + ReLU is for CNN layers; the energy model's features are rectified
      # already (ReLU of the simple subunits, the energy's norm) and are only scaled.
      feats = fitlib.prepare_features(raw, train_images=train_images,
                                      batch_norm=config.fit.batch_norm and space.kind != "energy")
      del raw
      offsets = np.cumsum([0] + [len(g) for g in groups])
      for group, start_ in zip(groups, offsets):
        todo = [c for c, m in zip(group, chosen[start_:start_ + len(group)]) if m]
        if not todo:
          continue
        readout = group[0].readout
        if bar is not None:
          bar.set_postfix_str(f"{label} {layer} {readout}")
        # The whole group is refitted even if a kill left some of its cells written: the same
        # program on the same neurons gives the same results for the missing ones.
        grid = config.grid(readout)
        result = fit_readout(feats, tiers, readout=readout, config=config, fit_config=fit_config,
                             groups=neuron_area, mesh=mesh, progress=progress and lead,
                             desc=f"{label} {layer} {readout}")

        def save():
          for cell in todo:
            idx = np.flatnonzero(neuron_area == cell.area)
            save_cell(out, cell, subset(result, idx), ds.unit_ids[neurons[idx]], grid,
                      kind=space.kind,
                      recording=None if neuron_recording is None else neuron_recording[idx])
            claims.finish(cell)
            if bar is not None:
              bar.update(1)
          if shard is None:  # sharded workers leave results.csv to whoever finds all done
            results.append(todo)
        cluster.on_lead(save)
      del feats
  finally:
    if lead:
      claims.release_all()
    if bar is not None:
      bar.close()

  def finish():
    done = [c for c in cells if is_done(out, c)]
    table = collect(out, done)
    if shard is None or len(done) == len(cells):
      results.finish(done)
      _write_parquet(out, table)
    if shard is None and len(done) < len(cells):
      _log.warning("%d of %d cells were left to other live processes that claim them (%s); run "
                   "the same command again when they have finished", len(cells) - len(done),
                   len(cells), out / CLAIMS)
    return table
  table = cluster.on_lead(finish)
  return table if table is not None else collect(out, cells)
