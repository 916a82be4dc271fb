"""The Sensorium / neuralpredictors "static" file tree, read and written.

Layout (one ``.npy`` per trial, trials numbered 0..n_trials-1)::

  ROOT/
    config.json                                {"links": {}} as neuralpredictors writes it
    data/images/<i>.npy                        (1, H, W) the image shown in trial i
    data/responses/<i>.npy                     (n_neurons,) the responses of trial i
    meta/neurons/unit_ids.npy                  (n_neurons,)
    meta/neurons/area.npy                      (n_neurons,) str
    meta/neurons/<key>.npy                     other per-neuron fields (layer, animal_ids, ...)
    meta/trials/frame_image_id.npy             (n_trials,) id of the image shown in each trial
    meta/trials/tiers.npy                      (n_trials,) 'train' | 'validation' | 'test' | 'final_test'
    meta/trials/trial_idx.npy                  (n_trials,)
    meta/statistics/{images,responses}/{all,stimulus_frame}/{mean,std,min,max,median}.npy

Reading: images are stored per trial, so they are deduplicated by ``frame_image_id`` (the first
trial of each id provides the image; ``check_images=True`` verifies that every repeat is the same).
The tier ``final_test`` (Sensorium's held-out repeated images) becomes ``test`` by default
(``final_test="test"``), or its trials are dropped (``final_test="drop"``). Other data/ folders
(behavior, pupil_center) are not read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxmouse._io import atomic_path
from jaxmouse.data.dataset import TIERS, NeuralDataset

NEURON_KEYS = {"unit_ids": "unit_ids", "area": "areas"}  # file stem -> NeuralDataset field


def is_filetree(path: Path) -> bool:
  path = Path(path)
  return (path / "data").is_dir() and (path / "meta" / "trials").is_dir()


def _load_npy(path: Path, what: str, allow_pickle: bool = False) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing file ({what})")
  try:
    return np.load(path, allow_pickle=allow_pickle)
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise ValueError(f"{path}: holds Python objects ({what}); pass allow_pickle=True if you "
                       f"trust the file") from None
    raise ValueError(f"{path}: unreadable .npy ({what}; truncated or corrupt?): {e}") from None
  except (EOFError, OSError) as e:
    raise ValueError(f"{path}: unreadable .npy ({what}; truncated or corrupt?): {e}") from None


def load(path: str | os.PathLike, *, final_test: str = "test", check_images: bool = False,
         image_shape: tuple[int, int] | None = None, name: str | None = None,
         allow_pickle: bool = False) -> NeuralDataset:
  """Reads a static file tree.

  Args:
    path: the tree's root folder.
    final_test: ``"test"`` keeps Sensorium's ``final_test`` trials as test trials; ``"drop"``
      removes them.
    check_images: read every trial's image and verify that repeats of one ``frame_image_id`` are
      identical (slower); by default one file per distinct image is read.
    image_shape: resize images to ``(h, w)`` while reading (e.g. 144x256 -> 36x64), which keeps
      the memory of large trees small.
    name: the data set's name; default: the one stored in config.json, else the folder name.
    allow_pickle: read meta files stored as object arrays (runs pickle: trusted files only).
  """
  root = Path(path)
  if not is_filetree(root):
    raise FileNotFoundError(f"{root}: not a static file tree (expected data/ and meta/trials/)")
  if final_test not in ("test", "drop"):
    raise ValueError(f"final_test must be 'test' or 'drop', got {final_test!r}")
  trials = root / "meta" / "trials"
  meta_npy = lambda f, what: _load_npy(f, what, allow_pickle)
  tiers = meta_npy(trials / "tiers.npy", "trial tiers").astype(str)
  frame_ids = meta_npy(trials / "frame_image_id.npy", "image id of each trial")
  n_trials = tiers.shape[0]
  if tiers.ndim != 1 or frame_ids.shape != (n_trials,):
    raise ValueError(f"{trials}: tiers.npy has shape {tiers.shape} and frame_image_id.npy "
                     f"{frame_ids.shape}; expected two (n_trials,) arrays")
  allowed = set(TIERS) | {"final_test"}
  unknown = sorted(set(np.unique(tiers).tolist()) - allowed)
  if unknown:
    raise ValueError(f"{trials / 'tiers.npy'}: unknown tiers {unknown}; expected {sorted(allowed)}")
  keep = np.ones(n_trials, bool) if final_test == "test" else tiers != "final_test"
  tiers = np.where(tiers == "final_test", "test", tiers)

  neurons = root / "meta" / "neurons"
  unit_ids = meta_npy(neurons / "unit_ids.npy", "neuron ids")
  areas = meta_npy(neurons / "area.npy", "neuron areas")
  n_neurons = unit_ids.shape[0]
  meta = {}
  for f in sorted(neurons.glob("*.npy")):
    if f.stem not in NEURON_KEYS:
      value = meta_npy(f, "per-neuron field")
      meta[f.stem] = value.astype(str) if value.dtype.kind == "O" else value
  for key, value in [("area", areas), *meta.items()]:
    if value.shape[:1] != (n_neurons,):
      raise ValueError(f"{neurons / (key + '.npy')}: shape {value.shape} disagrees with "
                       f"unit_ids.npy ({n_neurons} neurons)")

  index = np.flatnonzero(keep)
  responses = np.empty((index.size, n_neurons), np.float32)
  resp_dir = root / "data" / "responses"
  for row, i in enumerate(index):
    f = resp_dir / f"{i}.npy"
    r = _load_npy(f, f"responses of trial {i}")
    if r.shape != (n_neurons,):
      raise ValueError(f"{f}: responses of shape {r.shape}, but meta/neurons/unit_ids.npy has "
                       f"{n_neurons} neurons; expected ({n_neurons},)")
    if not np.all(np.isfinite(r)):
      raise ValueError(f"{f}: field 'responses': {int(np.sum(~np.isfinite(r)))} non-finite values "
                       f"(NaN or inf) in shape {r.shape}")
    responses[row] = r

  ids, first, trial_image = np.unique(frame_ids[index], return_index=True, return_inverse=True)
  images = _read_images(root / "data" / "images", index[first], image_shape)
  if check_images:
    for row, i in enumerate(index):
      img = _read_image(root / "data" / "images", i)
      if image_shape is None and not np.array_equal(img, images[trial_image[row]]):
        raise ValueError(f"{root / 'data/images' / f'{i}.npy'}: trial {i} shows frame_image_id "
                         f"{frame_ids[i]} but its image differs from another trial of that id")

  config = _read_config(root)
  try:
    return NeuralDataset(images=images, responses=responses, trial_image=trial_image.reshape(-1),
                         tiers=tiers[index], unit_ids=unit_ids, areas=areas, neuron_meta=meta,
                         name=name or config.get("jaxmouse", {}).get("name") or root.name,
                         info=config.get("jaxmouse", {}).get("info", {}))
  except ValueError as e:
    raise ValueError(f"{root}: {e}") from None


def _read_image(folder: Path, i: int) -> np.ndarray:
  f = folder / f"{i}.npy"
  img = _load_npy(f, f"image of trial {i}")
  if img.ndim == 3 and img.shape[0] == 1:
    img = img[0]
  if img.ndim != 2:
    raise ValueError(f"{f}: image of shape {img.shape}; expected (1, H, W) or (H, W)")
  return img


def _read_images(folder: Path, trials: np.ndarray, image_shape) -> np.ndarray:
  first = _read_image(folder, int(trials[0]))
  shape = tuple(image_shape) if image_shape is not None else first.shape
  images = np.empty((trials.size, *shape), np.float32)
  chunk, start = [], 0
  for j, i in enumerate(trials):
    img = first if j == 0 else _read_image(folder, int(i))
    if img.shape != first.shape:
      raise ValueError(f"{folder / f'{i}.npy'}: image of shape {img.shape}, but trial "
                       f"{trials[0]} has {first.shape}")
    chunk.append(img)
    if len(chunk) == 256 or j == trials.size - 1:
      block = np.stack(chunk).astype(np.float32)
      if image_shape is not None and block.shape[1:] != shape:
        import jax
        block = np.asarray(jax.image.resize(block, (block.shape[0], *shape), "linear"))
      images[start:start + len(chunk)] = block
      start += len(chunk)
      chunk = []
  return images


def _read_config(root: Path) -> dict:
  try:
    return json.loads((root / "config.json").read_text())
  except (OSError, ValueError):
    return {}


def _write_statistics(folder: Path, ds: NeuralDataset) -> None:
  """neuralpredictors' summary statistics: over all trials and over training trials.

  Images get scalars (over all pixels of the trials' images), responses one value per neuron.
  """
  train = ds.tiers == "train"
  for which, rows in (("all", np.ones(ds.n_trials, bool)), ("stimulus_frame", train)):
    rows = rows if rows.any() else np.ones(ds.n_trials, bool)
    pixels = ds.images[ds.trial_image[rows]].astype(np.float64).ravel()
    responses = ds.responses[rows].astype(np.float64)
    for key, data, axis in (("images", pixels, None), ("responses", responses, 0)):
      out = folder / key / which
      out.mkdir(parents=True)
      stats = {"mean": data.mean(axis), "std": data.std(axis), "min": data.min(axis),
               "max": data.max(axis), "median": np.median(data, axis)}
      for stat, value in stats.items():
        np.save(out / f"{stat}.npy", np.asarray(value, np.float32))


def save(ds: NeuralDataset, path: str | os.PathLike, *, progress: bool = False) -> Path:
  """Writes ``ds`` as a static file tree (atomically: the folder appears complete or not at all).

  ``trial_image`` becomes ``frame_image_id``; tiers are written as they are (no ``final_test``).
  """
  root = Path(path)
  with atomic_path(root, is_dir=True) as tmp:
    for sub in ("data/images", "data/responses", "meta/neurons", "meta/trials"):
      (tmp / sub).mkdir(parents=True)
    trials = range(ds.n_trials)
    if progress:
      from tqdm import tqdm
      trials = tqdm(trials, desc=f"writing {root.name}", unit="trial")
    for i in trials:
      np.save(tmp / "data" / "images" / f"{i}.npy", ds.images[ds.trial_image[i]][None])
      np.save(tmp / "data" / "responses" / f"{i}.npy", ds.responses[i])
    np.save(tmp / "meta/neurons/unit_ids.npy", ds.unit_ids)
    np.save(tmp / "meta/neurons/area.npy", ds.areas)
    for key, value in ds.neuron_meta.items():
      if key in NEURON_KEYS:
        raise ValueError(f"neuron_meta key {key!r} clashes with meta/neurons/{key}.npy")
      np.save(tmp / "meta/neurons" / f"{key}.npy", value)
    np.save(tmp / "meta/trials/frame_image_id.npy", ds.trial_image)
    np.save(tmp / "meta/trials/tiers.npy", ds.tiers)
    np.save(tmp / "meta/trials/trial_idx.npy", np.arange(ds.n_trials))
    _write_statistics(tmp / "meta/statistics", ds)
    (tmp / "config.json").write_text(json.dumps(
        {"links": {}, "jaxmouse": {"name": ds.name, "info": dict(ds.info)}}))
  return root
