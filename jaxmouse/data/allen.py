"""Allen Brain Observatory Visual Coding (two-photon, NWB 1 / HDF5), natural scenes stimulus.

Read from each experiment file (paths as AllenSDK's ``BrainObservatoryNwbDataSet`` reads them):

  processing/brain_observatory_pipeline/DfOverF/imaging_plane_1/data        (n_cells, n_frames) dF/F
  processing/brain_observatory_pipeline/DfOverF/imaging_plane_1/timestamps  (n_frames,) seconds
  processing/brain_observatory_pipeline/ImageSegmentation/cell_specimen_ids (n_cells,)
  stimulus/presentation/natural_scenes_stimulus/data            (n_presentations,) template frame,
                                                                -1 = blank (excluded)
  stimulus/presentation/natural_scenes_stimulus/frame_duration  (n_presentations, 2) start, end
                                                                imaging frame of each presentation
  stimulus/templates/natural_scenes_image_stack/data            (118, 918, 1174) uint8
  general/optophysiology/imaging_plane_1/location               targeted structure, e.g. "VISp"
  general/optophysiology/imaging_plane_1/imaging depth          e.g. "175 microns"
  general/subject/genotype (else general/specimen_name)         the mouse's genotype
  general/session_id                                            the ophys experiment id
  general/session_type                                          e.g. "three_session_B"

Natural scenes are shown in session B only: files of sessions A and C (no natural scenes
presentation) in a folder or list are skipped with a warning naming them.

Responses (``response=``): ``"auto"`` (default) takes the L0 event traces when every file has
one, else dF/F; ``"events"`` or ``"dff"`` force one. L0 events are not in the NWB file; AllenSDK's
``BrainObservatoryCache`` keeps them per experiment as ``ophys_experiment_events/<id>_events.npz``
(array ``ev``, cells x frames, non-negative) next to ``ophys_experiment_data/<id>.nwb``; they are
looked up there (by file stem and by session id), next to the NWB file (``<stem>_events.npz``), or
passed with ``events=``.

Response window (``window=``): a trial's response is the mean of the trace over imaging frames
after each presentation's onset ``start``:
  ``"allen"`` (default)  ``[start, start + 2 x duration)``, duration = ``end - start``: the
                         window of AllenSDK's natural scenes analysis (``NaturalScenes``: the
                         sweep length plus as much again, ~0-500 ms for the 250 ms images), which
                         covers the calcium indicator's lag. AllenSDK takes one sweep length for
                         all presentations (the table's second row) and averages its own
                         baseline-normalised trace; jaxmouse uses each presentation's own
                         duration and the file's dF/F (or events) as they are.
  ``"presentation"``     ``[start, end)``: the 250 ms of the image only (calcium responses lag;
                         most of the response comes after it).
  ``"A-Bms"``            frames whose timestamps lie in ``[t_start + A ms, t_start + B ms)``,
                         e.g. ``"0-500ms"``.
  ``(a, b)``             imaging frames ``[start + a, start + b)``.
Presentations are sorted by ``(start, end)`` before repeats are numbered, as AllenSDK sorts its
stimulus tables.

Cre line: the genotype's first part before ";" (AllenSDK's ``get_metadata`` cre_line) without
its allele after "/", as in the Brain Observatory's experiment tables:
``"Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt"`` -> ``"Cux2-CreERT2"``. The raw genotype
is kept next to it (``neuron_meta["genotype"]``); ``cell_class`` is ``inhibitory`` for
interneuron lines (Sst, Vip, Pvalb, ...), else ``excitatory``.

Several experiments (one area / depth / Cre line each, recorded in different sessions) combine into
one data set with pseudo-simultaneous trials: the k-th presentation (in time) of image i in every
file forms trial (i, k); an image keeps as many repeats as its least-shown file has. The template
stack is shared by all sessions, so ``images`` is the whole stack and ``trial_image`` the template
frame.

Tiers, by image: natural scenes show every image ~50 times and no image once, so the split is
chosen here and no image is in two tiers: ``n_test_images`` images (a seeded draw, or
``test_images=``) form the test tier with all their repeats; of the other images,
``validation_fraction`` (a seeded draw) form validation and the rest train.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from jaxmouse._io import atomic_path
from jaxmouse.data.dataset import NeuralDataset, resize_images

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
SESSION_TYPE = "general/session_type"
INHIBITORY_CRE = ("Sst", "Vip", "Pvalb", "Gad2", "Htr3a", "Ndnf", "Npy", "Chat")
RESPONSES = ("auto", "dff", "events")
RESPONSE_TYPES = {"dff": "dF/F", "events": "L0 events"}
WINDOWS = ("allen", "presentation")  # or "A-Bms", or (a, b) frames
DEFAULT_WINDOW = "allen"
_MS = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*ms\s*$")


class NoStimulus(ValueError):
  """An NWB file without the requested stimulus (e.g. a session A or C file for natural scenes)."""


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


def parse_window(window) -> str | tuple:
  """A response window in one form: ``"allen"`` | ``"presentation"`` | ``("ms", A, B)`` |
  ``(a, b)`` imaging frames. Accepts those, ``None`` (the default), ``"A-Bms"`` and ``"a:b"``
  (frames, as the command line writes them)."""
  bad = ValueError(f"window must be 'allen', 'presentation', 'A-Bms' (e.g. '0-500ms') or frames "
                   f"'a:b' / (a, b), got {window!r}")
  if window is None:
    return DEFAULT_WINDOW
  if isinstance(window, str):
    text = window.strip().lower()
    if text in WINDOWS:
      return text
    m = _MS.match(text)
    if m:
      window = ("ms", float(m.group(1)), float(m.group(2)))
    elif ":" in text:
      window = tuple(text.split(":"))
    else:
      raise bad
  if isinstance(window, (tuple, list)) and len(window) == 3 and window[0] == "ms":
    a, b = float(window[1]), float(window[2])
    if b <= a:
      raise ValueError(f"window {a:g}-{b:g} ms: the end must come after the start")
    return ("ms", a, b)
  try:
    a, b = (int(x) for x in window)
  except (TypeError, ValueError):
    raise bad from None
  if b <= a:
    raise ValueError(f"window must be (a, b) frames with b > a, got ({a}, {b})")
  return (a, b)


def describe_window(window) -> str:
  """A readable statement of a response window, for reports."""
  window = parse_window(window)
  if window == "allen":
    return ("[start, start + 2 x duration) after onset (AllenSDK's natural scenes convention: "
            "the presentation and as long again, for the calcium indicator's lag)")
  if window == "presentation":
    return "[start, end): the presentation only"
  if window[0] == "ms":
    return f"{window[1]:g}-{window[2]:g} ms after onset"
  return f"imaging frames [start + {window[0]}, start + {window[1]}) after onset"


def _window_frames(window, start, end, timestamps, path, n_frames):
  """First and one-past-last imaging frame of every presentation's window."""
  if window == "allen":
    return start, start + 2 * (end - start)
  if window == "presentation":
    return start, end
  if window[0] == "ms":
    if timestamps is None:
      raise ValueError(f"{path}: window {window[1]:g}-{window[2]:g} ms needs the imaging "
                       f"timestamps ({DFF_TIMESTAMPS}), which this file lacks")
    t0 = timestamps[np.minimum(start, n_frames - 1)]
    return (np.searchsorted(timestamps, t0 + window[1] / 1e3, "left"),
            np.searchsorted(timestamps, t0 + window[2] / 1e3, "left"))
  return start + window[0], start + window[1]


def _events_for(path: Path, session_id: str) -> Path | None:
  events = path.parent.parent / "ophys_experiment_events"
  candidates = [events / f"{path.stem}_events.npz", path.with_name(f"{path.stem}_events.npz")]
  if session_id:
    candidates += [events / f"{session_id}_events.npz",
                   path.with_name(f"{session_id}_events.npz")]
  return next((c for c in candidates if c.is_file()), None)


def _presentation(f, stimulus: str) -> str | None:
  for pres in (PRESENTATION.format(stimulus), f"stimulus/presentation/{stimulus}"):
    if pres in f:
      return pres
  return None


def _peek(path: Path, stimulus: str) -> tuple[bool, str]:
  """Whether an NWB file holds the stimulus' presentation table (session B for natural scenes),
  and its session id. An unreadable file passes, for ``read_experiment`` to name its problem."""
  import h5py

  try:
    with h5py.File(path, "r") as f:
      session = _first(f, SESSION)
      return _presentation(f, stimulus) is not None, _text(session) if session is not None else ""
  except OSError:
    return True, ""


def read_experiment(path: str | os.PathLike, *, stimulus: str = "natural_scenes",
                    response: str = "dff", window=DEFAULT_WINDOW,
                    events: str | os.PathLike | np.ndarray | None = None) -> dict:
  """One NWB file: per-presentation responses and metadata.

  Args:
    response: ``"dff"``, ``"events"`` or ``"auto"`` (events when an events file is found).
    window: see the module docstring (``"allen"``, ``"presentation"``, ``"A-Bms"``, ``(a, b)``).

  Returns a dict with ``frame (p,)`` template frame of each non-blank presentation, sorted by
  ``(start, end)``; ``responses (p, n_cells)`` float32; ``cell_ids (n_cells,)``; ``area``,
  ``depth``, ``genotype``, ``cre_line``, ``session_id``, ``session_type``, ``template_shape``,
  ``response`` (the one read) and ``window_ms`` (median window in ms after onset, or None).
  Raises ``NoStimulus`` for a file without the stimulus.
  """
  import h5py

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such NWB file")
  if response not in RESPONSES:
    raise ValueError(f"response must be one of {RESPONSES}, got {response!r}")
  window = parse_window(window)
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not a readable HDF5/NWB file (truncated or corrupt?): {e}") from None
  with f:
    pres = _presentation(f, stimulus)
    session_type = _text(f[SESSION_TYPE][()]) if SESSION_TYPE in f else "unknown"
    if pres is None:
      raise NoStimulus(f"{path}: no {stimulus} stimulus (session type {session_type}; natural "
                       "scenes are in session B files)")
    for need in (DFF, CELL_IDS, f"{pres}/data", f"{pres}/frame_duration"):
      if need not in f:
        raise ValueError(f"{path}: missing {need!r}; not an Allen Brain Observatory NWB file with "
                         f"the {stimulus} stimulus")
    try:
      cell_ids = np.asarray(f[CELL_IDS][()]).reshape(-1)
      frames = np.asarray(f[f"{pres}/data"][()]).reshape(-1)
      duration = np.asarray(f[f"{pres}/frame_duration"][()])
      session_id = _text(_first(f, SESSION)) if _first(f, SESSION) is not None else ""
      timestamps = np.asarray(f[DFF_TIMESTAMPS][()], np.float64) if DFF_TIMESTAMPS in f else None
      area = _text(_first(f, LOCATION)) if _first(f, LOCATION) is not None else "unknown"
      depth = _depth(_first(f, DEPTH))
      genotype = _first(f, GENOTYPE)
      genotype = _text(genotype) if genotype is not None else "unknown"
      tpath = TEMPLATE.format(stimulus)
      template_shape = tuple(f[tpath].shape) if tpath in f else None
      events_file = None if isinstance(events, np.ndarray) else (
          Path(events) if events is not None else _events_for(path, session_id))
      if response == "auto":
        response = "events" if isinstance(events, np.ndarray) or (
            events_file is not None and events_file.is_file()) else "dff"
      trace = np.asarray(f[DFF][()], np.float32) if response == "dff" else None
    except (OSError, KeyError) as e:
      raise ValueError(f"{path}: unreadable NWB content (truncated or corrupt?): {e}") from None
  source = DFF
  if response == "events":
    trace, source = _load_events(path, session_id, events if isinstance(events, np.ndarray)
                                 else events_file)

  n_cells = cell_ids.size
  if trace.ndim != 2 or n_cells not in trace.shape:
    raise ValueError(f"{path}: {source} has shape {trace.shape}, but {CELL_IDS} lists {n_cells} "
                     f"cells; expected (n_cells, n_frames)")
  if trace.shape[0] != n_cells:
    trace = trace.T  # (n_frames, n_cells) -> (n_cells, n_frames)
  n_frames = trace.shape[1]
  if timestamps is not None and timestamps.shape[0] != n_frames:
    raise ValueError(f"{path}: {DFF_TIMESTAMPS} has {timestamps.shape[0]} frames but "
                     f"{source} has {n_frames}")
  if duration.shape != (frames.size, 2):
    raise ValueError(f"{path}: {pres}/frame_duration has shape {duration.shape}; expected "
                     f"({frames.size}, 2) to match {pres}/data")
  # AllenSDK sorts its stimulus tables by (start, end): repeats are numbered in time order.
  order = np.lexsort((duration[:, 1], duration[:, 0]))
  frames, duration = frames[order], duration[order]
  keep = frames >= 0  # -1 marks a blank
  frames = frames[keep].astype(np.int64)
  start = duration[keep, 0].astype(np.int64)
  end = duration[keep, 1].astype(np.int64)
  if np.any(end <= start):
    i = int(np.flatnonzero(end <= start)[0])
    raise ValueError(f"{path}: {pres}/frame_duration: presentation {i} ends at frame {end[i]}, "
                     f"not after its start {start[i]}")
  lo, hi = _window_frames(window, start, end, timestamps, path, n_frames)
  bad = (hi <= lo) | (lo < 0) | (hi > n_frames)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{path}: the response window of presentation {i} (frames [{lo[i]}, {hi[i]}) "
                     f"for window {window!r}) does not fit {source} with {n_frames} frames or is "
                     f"empty ({int(bad.sum())} of {bad.size} windows); choose another window=")
  window_ms = None
  if timestamps is not None and start.size:
    dt = float(np.median(np.diff(timestamps))) if timestamps.size > 1 else 0.0
    window_ms = (float(np.median(lo - start)) * dt * 1e3, float(np.median(hi - start)) * dt * 1e3)
  # Window means through a running sum: (n_cells, n_frames + 1) in float64.
  csum = np.zeros((n_cells, n_frames + 1), np.float64)
  np.cumsum(trace, axis=1, dtype=np.float64, out=csum[:, 1:])
  responses = ((csum[:, hi] - csum[:, lo]) / (hi - lo)).T.astype(np.float32)  # (p, n)
  bad = ~np.isfinite(responses)
  if bad.any():
    p, c = np.argwhere(bad)[0]
    raise ValueError(f"{path}: field {source!r}: non-finite values (NaN or inf) in the windows of "
                     f"{int(bad.any(axis=1).sum())} presentations of shape {responses.shape}, e.g. "
                     f"presentation {p}, cell {c}")
  return {"frame": frames, "responses": responses, "cell_ids": cell_ids, "area": area,
          "depth": depth, "genotype": genotype, "cre_line": cre_line(genotype),
          "session_id": session_id, "session_type": session_type,
          "template_shape": template_shape, "path": path, "response": response,
          "window_ms": window_ms}


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
                  image_shape: tuple[int, int] | None = None, fit: str = "pad") -> np.ndarray:
  """The stimulus template stack ``(n_frames, H, W)`` float32 0-255, optionally resized to
  ``image_shape`` keeping the aspect ratio (``fit``: ``pad`` with the stack's mean gray, as the
  screen around the image, or ``crop``; see ``jaxmouse.data.dataset.resize_images``)."""
  import h5py

  tpath = TEMPLATE.format(stimulus)
  with h5py.File(path, "r") as f:
    if tpath not in f:
      raise ValueError(f"{path}: missing {tpath!r} (the {stimulus} template stack)")
    data = f[tpath]
    if data.ndim != 3:
      raise ValueError(f"{path}: {tpath} has shape {data.shape}; expected (n_frames, H, W)")
    stack = data[()]  # uint8 in the real files: 118 x 918 x 1174 is 127 MB
  if image_shape is None or tuple(image_shape) == stack.shape[1:]:
    return stack.astype(np.float32)
  return resize_images(stack, image_shape, fit=fit, chunk=16)


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


def load(paths, *, stimulus: str = "natural_scenes", response: str = "auto",
         window=DEFAULT_WINDOW, events: Mapping | Sequence | None = None,
         n_test_images: int = 20, test_images: Sequence[int] | None = None,
         validation_fraction: float = 0.2, seed: int = 0,
         image_shape: tuple[int, int] | None = None, name: str | None = None) -> NeuralDataset:
  """One data set from one or several Allen NWB files (a file, a list, or a folder of .nwb).

  Args:
    stimulus: the indexed stimulus (``"natural_scenes"``); files without it (sessions A and C)
      are skipped with a warning.
    response: ``"auto"`` (L0 events when every file has an events file, else dF/F), ``"dff"``
      or ``"events"``.
    window: the response window after each onset (module docstring): ``"allen"`` (default,
      AllenSDK's ``[start, start + 2 x duration)``), ``"presentation"``, ``"A-Bms"`` or
      ``(a, b)`` imaging frames.
    events: per file, an events array or ``.npz`` path (a list aligned with the files, or a dict
      keyed by file path); default: looked up where AllenSDK keeps them.
    n_test_images / test_images: the test images (a seeded draw of ``n_test_images``, or these
      template frames).
    validation_fraction: fraction of the other images put in validation (a seeded draw).
    image_shape: resize the template to ``(h, w)`` while reading, keeping the aspect ratio
      (padded with the stack's mean gray).
  """
  files = _nwb_files(paths)
  if isinstance(events, Mapping):
    events = [events.get(str(f), events.get(f)) for f in files]
  elif events is not None and len(events) != len(files):
    raise ValueError(f"events: got {len(events)} entries for {len(files)} NWB files")
  if response not in RESPONSES:
    raise ValueError(f"response must be one of {RESPONSES}, got {response!r}")
  window = parse_window(window)
  events = [None] * len(files) if events is None else list(events)
  peeks = [_peek(f, stimulus) for f in files]
  with_stimulus = [ok for ok, _ in peeks]
  skipped = [str(f) for f, ok in zip(files, with_stimulus) if not ok]
  if skipped and not any(with_stimulus):
    raise ValueError(f"none of {[str(f) for f in files]} holds the {stimulus} stimulus (natural "
                     "scenes are in session B files)")
  if skipped:
    warnings.warn(f"skipped {len(skipped)} NWB file(s) without the {stimulus} stimulus (sessions "
                  f"A/C): {', '.join(skipped)}", UserWarning, stacklevel=2)
  events = [e for e, ok in zip(events, with_stimulus) if ok]
  sessions = [session for ok, session in peeks if ok]
  files = [f for f, ok in zip(files, with_stimulus) if ok]
  if response == "auto":
    found = [e is not None or _events_for(f, session) is not None
             for f, e, session in zip(files, events, sessions)]
    response = "events" if all(found) else "dff"
    if any(found) and not all(found):
      missing = [str(f) for f, ok in zip(files, found) if not ok]
      warnings.warn(f"L0 events found for some files only; using dF/F for all (no events file "
                    f"for {', '.join(missing)})", UserWarning, stacklevel=2)
  exps = [read_experiment(f, stimulus=stimulus, response=response, window=window, events=e)
          for f, e in zip(files, events)]
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

  # Pseudo-simultaneous trials: the k-th showing (in time) of image i in every file.
  counts = np.stack([np.bincount(e["frame"], minlength=n_frames) for e in exps])  # (files, frames)
  repeats = counts.min(axis=0)
  shown = np.flatnonzero(repeats > 0)
  if shown.size == 0:
    raise ValueError(f"no image is shown in every file of {[str(f) for f in files]}")
  trial_image = np.concatenate([np.full(repeats[i], i) for i in shown])
  trial_rep = np.concatenate([np.arange(repeats[i]) for i in shown])
  blocks = []
  for e in exps:
    order = np.argsort(e["frame"], kind="stable")  # grouped by image, in time order within
    first = np.concatenate([[0], np.cumsum(np.bincount(e["frame"], minlength=n_frames))[:-1]])
    blocks.append(e["responses"][order[first[trial_image] + trial_rep]])
  responses = np.concatenate(blocks, axis=1)

  tiers = _allen_tiers(trial_image, shown, n_test_images=n_test_images, test_images=test_images,
                       validation_fraction=validation_fraction, seed=seed)
  images = read_template(with_template[0]["path"], stimulus=stimulus, image_shape=image_shape)
  per_cell = lambda key: np.concatenate([np.full(e["cell_ids"].size, e[key]) for e in exps])
  cre = per_cell("cre_line")
  meta = {"depth": per_cell("depth").astype(np.int64), "cre_line": cre,
          "genotype": per_cell("genotype"), "cell_class": np.array([cell_class(c) for c in cre]),
          "experiment_id": per_cell("session_id")}
  ms = [e["window_ms"] for e in exps if e["window_ms"] is not None]
  test_rule = (f"{len(np.unique(trial_image[tiers == 'test']))} test images "
               + ("given" if test_images is not None else f"drawn with seed {seed}"))
  stored = with_template[0]["template_shape"][1:]
  info = {"source": "Allen Brain Observatory Visual Coding NWB 1, natural scenes",
          "image_size": f"{stored[0]}x{stored[1]}",
          "response_type": RESPONSE_TYPES[response],
          "response_window": describe_window(window),
          "split": f"by image: {test_rule}, {validation_fraction:.0%} of the others in "
                   "validation (seeded); no image in two tiers"}
  if ms:
    info["response_window_ms"] = (f"{np.median([m[0] for m in ms]):.0f}-"
                                  f"{np.median([m[1] for m in ms]):.0f}")
  if skipped:
    info["left_out"] = f"NWB files without {stimulus}: {', '.join(Path(f).name for f in skipped)}"
  try:
    return NeuralDataset(images=images, responses=responses, trial_image=trial_image, tiers=tiers,
                         unit_ids=np.concatenate([e["cell_ids"] for e in exps]),
                         areas=per_cell("area"), neuron_meta=meta, info=info,
                         name=name or ("allen_" + "_".join(f.stem for f in files[:3])
                                       + ("_etc" if len(files) > 3 else "")))
  except ValueError as e:
    raise ValueError(f"{[str(f) for f in files]}: {e}") from None


def _allen_tiers(trial_image, shown, *, n_test_images, test_images, validation_fraction, seed):
  """Tiers by image: every trial of an image in the same tier."""
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
  rest = np.setdiff1d(shown, test)
  n_val = int(round(validation_fraction * rest.size))
  validation = rng.choice(rest, size=n_val, replace=False)
  tiers = np.full(trial_image.shape, "train", "<U10")
  tiers[np.isin(trial_image, validation)] = "validation"
  tiers[np.isin(trial_image, test)] = "test"
  return tiers


def write_nwb(path: str | os.PathLike, *, dff: np.ndarray, frames: np.ndarray,
              frame_duration: np.ndarray, cell_specimen_ids: np.ndarray, template: np.ndarray | None,
              location: str, imaging_depth_um: int, genotype: str, session_id: str,
              timestamps: np.ndarray | None = None, stimulus: str = "natural_scenes",
              session_type: str = "three_session_B") -> Path:
  """Writes a minimal NWB 1 file with exactly the datasets ``read_experiment`` reads.

  Strings are stored as fixed-length bytes scalars, as in the Allen files. ``frames=None`` writes
  no presentation table for ``stimulus`` (a session A/C file for natural scenes). For tests and
  demos; real files come from the Allen Brain Observatory (AllenSDK's ``BrainObservatoryCache``).
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
    if frames is not None:
      pres = PRESENTATION.format(stimulus)
      f[f"{pres}/data"] = np.asarray(frames, np.float32)[:, None]
      f[f"{pres}/frame_duration"] = np.asarray(frame_duration, np.float64)
    if template is not None:
      f[TEMPLATE.format(stimulus)] = np.asarray(template, np.uint8)
    f[LOCATION[0]] = np.bytes_(location)
    f[DEPTH[0]] = np.bytes_(f"{int(imaging_depth_um)} microns")
    f[GENOTYPE[0]] = np.bytes_(genotype)
    f[SESSION[0]] = np.bytes_(str(session_id))
    f[SESSION_TYPE] = np.bytes_(session_type)
  return path
