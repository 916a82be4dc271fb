"""Allen Brain Observatory Visual Coding (two-photon, NWB 1 / HDF5), natural scenes stimulus.

Read from each experiment file (paths as AllenSDK's ``BrainObservatoryNwbDataSet`` reads them):

  processing/brain_observatory_pipeline/DfOverF/imaging_plane_1/data        (n_cells, n_frames) dF/F
  processing/brain_observatory_pipeline/DfOverF/imaging_plane_1/timestamps  (n_frames,)
  processing/brain_observatory_pipeline/ImageSegmentation/cell_specimen_ids (n_cells,)
  stimulus/presentation/natural_scenes_stimulus/data            (n_presentations,) template frame,
                                                                -1 = blank (excluded)
  stimulus/presentation/natural_scenes_stimulus/frame_duration  (n_presentations, 2) start, end
                                                                imaging frame of each presentation
  stimulus/templates/natural_scenes_image_stack/data            (118, 918, 1174) uint8
  general/optophysiology/imaging_plane_1/location               targeted structure, e.g. "VISp"
  general/optophysiology/imaging_plane_1/imaging depth          e.g. "175 microns"
  general/subject/genotype (else general/specimen_name)         Cre line = its first part
  general/session_id                                            the ophys experiment id

L0 events (``response="events"``) are not in the NWB file; AllenSDK caches them per experiment as
``ophys_experiment_events/<id>_events.npz`` (array ``ev``, cells x frames); they are looked up next
to the NWB file (``<stem>_events.npz``) or in a sibling ``ophys_experiment_events`` folder, or
passed with ``events=``.

A trial's response is the mean of the trace over its presentation window: imaging frames
``start .. end-1`` (or ``start+a .. start+b-1`` with ``window=(a, b)``).

Several experiments (one area / depth / Cre line each, recorded in different sessions) combine into
one data set with pseudo-simultaneous trials: the k-th presentation of image i in every file forms
trial (i, k); an image keeps as many repeats as its least-shown file has. The template stack is
shared by all sessions, so ``images`` is the whole stack and ``trial_image`` the template frame.

Tiers: natural scenes show every image ~50 times and no image once, so the split is chosen here:
``n_test_images`` images (a seeded draw, or ``test_images=``) form the test tier with all their
repeats; the trials of the other images are split per trial, ``validation_fraction`` of them
(seeded) into validation and the rest into train.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from jaxmouse._io import atomic_path
from jaxmouse.data.dataset import NeuralDataset

PIPELINE = "processing/brain_observatory_pipeline"
DFF = f"{PIPELINE}/DfOverF/imaging_plane_1/data"
DFF_TIMESTAMPS = f"{PIPELINE}/DfOverF/imaging_plane_1/timestamps"
CELL_IDS = f"{PIPELINE}/ImageSegmentation/cell_specimen_ids"
PRESENTATION = "stimulus/presentation/{}_stimulus"
TEMPLATE = "stimulus/templates/{}_image_stack/data"
LOCATION = ("general/optophysiology/imaging_plane_1/location", "general/targeted_structure")
DEPTH = ("general/optophysiology/imaging_plane_1/imaging depth", "general/imaging_depth")
GENOTYPE = ("general/subject/genotype", "general/cre_line", "general/specimen_name")
SESSION = ("general/session_id",)
INHIBITORY_CRE = ("Sst", "Vip", "Pvalb", "Gad2", "Htr3a", "Ndnf", "Npy", "Chat")


def _text(v) -> str:
  v = np.asarray(v)
  v = v.reshape(-1)[0] if v.size else ""
  return v.decode() if isinstance(v, bytes) else str(v)


def _first(f, paths: Sequence[str]):
  for p in paths:
    if p in f:
      return f[p][()]
  return None


def cre_line(genotype: str) -> str:
  """``"Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/..."`` -> ``"Cux2-CreERT2"``."""
  return genotype.split(";")[0].split("/")[0].strip() or "unknown"


def cell_class(cre: str) -> str:
  """``"inhibitory"`` for interneuron Cre lines (Sst, Vip, Pvalb, ...), else ``"excitatory"``."""
  return "inhibitory" if cre.startswith(INHIBITORY_CRE) else "excitatory"


def _depth(v) -> int:
  if v is None:
    return -1
  if np.asarray(v).dtype.kind in "SUO":
    text = _text(v).split()
    try:
      return int(float(text[0])) if text else -1
    except ValueError:
      return -1
  return int(np.asarray(v).reshape(-1)[0])


def _events_for(path: Path, session_id: str) -> Path | None:
  candidates = [path.with_name(f"{path.stem}_events.npz"),
                path.parent.parent / "ophys_experiment_events" / f"{path.stem}_events.npz"]
  if session_id:
    candidates.append(path.parent.parent / "ophys_experiment_events" / f"{session_id}_events.npz")
  return next((c for c in candidates if c.is_file()), None)


def read_experiment(path: str | os.PathLike, *, stimulus: str = "natural_scenes",
                    response: str = "dff", window: tuple[int, int] | None = None,
                    events: str | os.PathLike | np.ndarray | None = None) -> dict:
  """One NWB file: per-presentation responses and metadata.

  Returns a dict with ``frame (p,)`` template frame of each non-blank presentation in time order,
  ``responses (p, n_cells)`` float32, ``cell_ids (n_cells,)``, ``area``, ``depth``, ``cre_line``,
  ``session_id``, and ``template_shape``.
  """
  import h5py

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such NWB file")
  if response not in ("dff", "events"):
    raise ValueError(f"response must be 'dff' or 'events', got {response!r}")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not a readable HDF5/NWB file (truncated or corrupt?): {e}") from None
  with f:
    pres = PRESENTATION.format(stimulus)
    if pres not in f and f"stimulus/presentation/{stimulus}" in f:
      pres = f"stimulus/presentation/{stimulus}"
    for need in (DFF, CELL_IDS, f"{pres}/data", f"{pres}/frame_duration"):
      if need not in f:
        raise ValueError(f"{path}: missing {need!r}; not an Allen Brain Observatory NWB file with "
                         f"the {stimulus} stimulus")
    try:
      cell_ids = np.asarray(f[CELL_IDS][()]).reshape(-1)
      frames = np.asarray(f[f"{pres}/data"][()]).reshape(-1)
      duration = np.asarray(f[f"{pres}/frame_duration"][()])
      session_id = _text(_first(f, SESSION)) if _first(f, SESSION) is not None else ""
      trace = np.asarray(f[DFF][()], np.float32) if response == "dff" else None
      timestamps = f[DFF_TIMESTAMPS][()] if DFF_TIMESTAMPS in f else None
      area = _text(_first(f, LOCATION)) if _first(f, LOCATION) is not None else "unknown"
      depth = _depth(_first(f, DEPTH))
      genotype = _first(f, GENOTYPE)
      cre = cre_line(_text(genotype)) if genotype is not None else "unknown"
      tpath = TEMPLATE.format(stimulus)
      template_shape = tuple(f[tpath].shape) if tpath in f else None
    except (OSError, KeyError) as e:
      raise ValueError(f"{path}: unreadable NWB content (truncated or corrupt?): {e}") from None
  source = DFF
  if response == "events":
    trace, source = _load_events(path, session_id, events)

  n_cells = cell_ids.size
  if trace.ndim != 2 or n_cells not in trace.shape:
    raise ValueError(f"{path}: {source} has shape {trace.shape}, but {CELL_IDS} lists {n_cells} "
                     f"cells; expected (n_cells, n_frames)")
  if trace.shape[0] != n_cells:
    trace = trace.T  # (n_frames, n_cells) -> (n_cells, n_frames)
  n_frames = trace.shape[1]
  if timestamps is not None and response == "dff" and np.asarray(timestamps).shape[0] != n_frames:
    raise ValueError(f"{path}: {DFF_TIMESTAMPS} has {np.asarray(timestamps).shape[0]} frames but "
                     f"{source} has {n_frames}")
  if duration.shape != (frames.size, 2):
    raise ValueError(f"{path}: {pres}/frame_duration has shape {duration.shape}; expected "
                     f"({frames.size}, 2) to match {pres}/data")
  keep = frames >= 0  # -1 marks a blank
  frames = frames[keep].astype(np.int64)
  start = duration[keep, 0].astype(np.int64)
  end = duration[keep, 1].astype(np.int64)
  if window is not None:
    a, b = (int(x) for x in window)
    if b <= a:
      raise ValueError(f"window must be (a, b) with b > a, got {window}")
    start, end = start + a, start + b
  if np.any(end <= start) or start.min(initial=0) < 0 or end.max(initial=0) > n_frames:
    raise ValueError(f"{path}: presentation windows [{start.min(initial=0)}, {end.max(initial=0)}) "
                     f"do not fit {source} with {n_frames} frames (or some window is empty)")
  # Window means through a running sum: (n_cells, n_frames + 1) in float64.
  csum = np.zeros((n_cells, n_frames + 1), np.float64)
  np.cumsum(trace, axis=1, dtype=np.float64, out=csum[:, 1:])
  responses = ((csum[:, end] - csum[:, start]) / (end - start)).T.astype(np.float32)  # (p, n)
  bad = ~np.isfinite(responses)
  if bad.any():
    p, c = np.argwhere(bad)[0]
    raise ValueError(f"{path}: field {source!r}: non-finite values (NaN or inf) in the windows of "
                     f"{int(bad.any(axis=1).sum())} presentations of shape {responses.shape}, e.g. "
                     f"presentation {p}, cell {c}")
  return {"frame": frames, "responses": responses, "cell_ids": cell_ids, "area": area,
          "depth": depth, "cre_line": cre, "session_id": session_id,
          "template_shape": template_shape, "path": path}


def _load_events(path: Path, session_id: str, events) -> tuple[np.ndarray, str]:
  if isinstance(events, np.ndarray):
    return events.astype(np.float32), "events"
  file = Path(events) if events is not None else _events_for(path, session_id)
  if file is None or not file.is_file():
    raise FileNotFoundError(f"{path}: no L0 events file found (looked for {path.stem}_events.npz "
                            f"next to it and in ../ophys_experiment_events/); pass events=")
  try:
    with np.load(file, allow_pickle=False) as z:
      return np.asarray(z["ev"], np.float32), f"{file}:ev"
  except KeyError:
    raise ValueError(f"{file}: no array 'ev' (AllenSDK events files hold cells x frames in 'ev')")
  except Exception as e:
    raise ValueError(f"{file}: unreadable events file (truncated or corrupt?): {e}") from None


def read_template(path: str | os.PathLike, *, stimulus: str = "natural_scenes",
                  image_shape: tuple[int, int] | None = None, chunk: int = 16) -> np.ndarray:
  """The stimulus template stack ``(n_frames, H, W)`` float32 0-255, optionally resized."""
  import h5py

  tpath = TEMPLATE.format(stimulus)
  with h5py.File(path, "r") as f:
    if tpath not in f:
      raise ValueError(f"{path}: missing {tpath!r} (the {stimulus} template stack)")
    data = f[tpath]
    if data.ndim != 3:
      raise ValueError(f"{path}: {tpath} has shape {data.shape}; expected (n_frames, H, W)")
    n = data.shape[0]
    shape = tuple(image_shape) if image_shape is not None else tuple(data.shape[1:])
    out = np.empty((n, *shape), np.float32)
    for s in range(0, n, chunk):
      block = np.asarray(data[s:s + chunk], np.float32)
      if shape != block.shape[1:]:
        import jax
        block = np.asarray(jax.image.resize(block, (block.shape[0], *shape), "linear",
                                            antialias=True))
      out[s:s + chunk] = block
  return out


def _nwb_files(paths) -> list[Path]:
  if isinstance(paths, (str, os.PathLike)):
    p = Path(paths)
    if p.is_dir():
      files = sorted(p.glob("*.nwb"))
      if not files:
        raise FileNotFoundError(f"{p}: no .nwb files in this folder")
      return files
    return [p]
  files = [Path(p) for p in paths]
  if not files:
    raise ValueError("no NWB files given")
  return files


def load(paths, *, stimulus: str = "natural_scenes", response: str = "dff",
         window: tuple[int, int] | None = None, events: Mapping | Sequence | None = None,
         n_test_images: int = 20, test_images: Sequence[int] | None = None,
         validation_fraction: float = 0.2, seed: int = 0,
         image_shape: tuple[int, int] | None = None, name: str | None = None) -> NeuralDataset:
  """One data set from one or several Allen NWB files (a file, a list, or a folder of .nwb).

  Args:
    stimulus: the indexed stimulus (``"natural_scenes"``).
    response: ``"dff"`` (dF/F traces in the file) or ``"events"`` (L0 events files).
    window: ``(a, b)`` imaging frames after each onset to average; default the presentation.
    events: per file, an events array or ``.npz`` path (a list aligned with the files, or a dict
      keyed by file path); default: looked up next to each file.
    n_test_images / test_images: the test images (a seeded draw of ``n_test_images``, or these
      template frames).
    validation_fraction: fraction of the other images' trials put in validation (seeded).
    image_shape: resize the template to ``(h, w)`` while reading.
  """
  files = _nwb_files(paths)
  if isinstance(events, Mapping):
    events = [events.get(str(f), events.get(f)) for f in files]
  elif events is not None and len(events) != len(files):
    raise ValueError(f"events: got {len(events)} entries for {len(files)} NWB files")
  exps = [read_experiment(f, stimulus=stimulus, response=response, window=window,
                          events=None if events is None else events[i])
          for i, f in enumerate(files)]
  with_template = [e for e in exps if e["template_shape"] is not None]
  if not with_template:
    raise ValueError(f"none of {[str(f) for f in files]} holds the {stimulus} template stack "
                     f"({TEMPLATE.format(stimulus)})")
  shapes = {e["template_shape"] for e in with_template}
  if len(shapes) > 1:
    raise ValueError(f"template stacks differ in shape across files: "
                     f"{ {str(e['path']): e['template_shape'] for e in with_template} }")
  n_frames = with_template[0]["template_shape"][0]
  for e in exps:
    if e["frame"].size and e["frame"].max() >= n_frames:
      raise ValueError(f"{e['path']}: presentations show template frame {e['frame'].max()}, but "
                       f"the template has {n_frames} frames")

  # Pseudo-simultaneous trials: the k-th showing of image i in every file.
  counts = np.stack([np.bincount(e["frame"], minlength=n_frames) for e in exps])  # (files, frames)
  repeats = counts.min(axis=0)
  shown = np.flatnonzero(repeats > 0)
  if shown.size == 0:
    raise ValueError(f"no image is shown in every file of {[str(f) for f in files]}")
  trial_image = np.concatenate([np.full(repeats[i], i) for i in shown])
  trial_rep = np.concatenate([np.arange(repeats[i]) for i in shown])
  blocks = []
  for e in exps:
    order = np.argsort(e["frame"], kind="stable")  # presentations grouped by image, in time order
    first = np.concatenate([[0], np.cumsum(np.bincount(e["frame"], minlength=n_frames))[:-1]])
    blocks.append(e["responses"][order[first[trial_image] + trial_rep]])
  responses = np.concatenate(blocks, axis=1)

  tiers = _allen_tiers(trial_image, shown, n_test_images=n_test_images, test_images=test_images,
                       validation_fraction=validation_fraction, seed=seed)
  images = read_template(with_template[0]["path"], stimulus=stimulus, image_shape=image_shape)
  per_cell = lambda key: np.concatenate([np.full(e["cell_ids"].size, e[key]) for e in exps])
  cre = per_cell("cre_line")
  meta = {"depth": per_cell("depth").astype(np.int64), "cre_line": cre,
          "cell_class": np.array([cell_class(c) for c in cre]),
          "experiment_id": per_cell("session_id")}
  try:
    return NeuralDataset(images=images, responses=responses, trial_image=trial_image, tiers=tiers,
                         unit_ids=np.concatenate([e["cell_ids"] for e in exps]),
                         areas=per_cell("area"), neuron_meta=meta,
                         name=name or ("allen_" + "_".join(f.stem for f in files[:3])
                                       + ("_etc" if len(files) > 3 else "")))
  except ValueError as e:
    raise ValueError(f"{[str(f) for f in files]}: {e}") from None


def _allen_tiers(trial_image, shown, *, n_test_images, test_images, validation_fraction, seed):
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA11E]))
  if test_images is not None:
    test = np.unique(np.asarray(test_images, np.int64))
    missing = np.setdiff1d(test, shown)
    if missing.size:
      raise ValueError(f"test_images {missing.tolist()} are not shown in every file")
  else:
    if not 0 < n_test_images < shown.size:
      raise ValueError(f"n_test_images must be in 1..{shown.size - 1} (images shown), got "
                       f"{n_test_images}")
    test = np.sort(rng.choice(shown, size=n_test_images, replace=False))
  if not 0 <= validation_fraction < 1:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  is_test = np.isin(trial_image, test)
  tiers = np.where(is_test, "test", "train").astype("<U10")
  rest = np.flatnonzero(~is_test)
  n_val = int(round(validation_fraction * rest.size))
  tiers[rng.choice(rest, size=n_val, replace=False)] = "validation"
  return tiers


def write_nwb(path: str | os.PathLike, *, dff: np.ndarray, frames: np.ndarray,
              frame_duration: np.ndarray, cell_specimen_ids: np.ndarray, template: np.ndarray | None,
              location: str, imaging_depth_um: int, genotype: str, session_id: str,
              timestamps: np.ndarray | None = None, stimulus: str = "natural_scenes") -> Path:
  """Writes a minimal NWB 1 file with exactly the datasets ``read_experiment`` reads.

  Strings are stored as fixed-length bytes scalars, as in the Allen files. For tests and demos;
  real files come from the Allen Brain Observatory (AllenSDK's ``BrainObservatoryCache``).
  """
  import h5py

  path = Path(path)
  dff = np.asarray(dff, np.float32)
  if timestamps is None:
    timestamps = np.arange(dff.shape[1]) / 30.0
  with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
    f.attrs["nwb_version"] = "NWB-1.0.5"
    f[DFF] = dff
    f[DFF_TIMESTAMPS] = np.asarray(timestamps, np.float64)
    f[CELL_IDS] = np.asarray(cell_specimen_ids, np.int64)
    pres = PRESENTATION.format(stimulus)
    f[f"{pres}/data"] = np.asarray(frames, np.float32)[:, None]
    f[f"{pres}/frame_duration"] = np.asarray(frame_duration, np.float64)
    if template is not None:
      f[TEMPLATE.format(stimulus)] = np.asarray(template, np.uint8)
    f[LOCATION[0]] = np.bytes_(location)
    f[DEPTH[0]] = np.bytes_(f"{int(imaging_depth_um)} microns")
    f[GENOTYPE[0]] = np.bytes_(genotype)
    f[SESSION[0]] = np.bytes_(str(session_id))
    f["general/session_type"] = np.bytes_("three_session_B")
  return path
