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
    meta/trials/frame_image_class.npy          (n_trials,) optional: the image's class; ids
                                               restart per class
    meta/trials/tiers.npy                      (n_trials,) 'train' | 'validation' | 'test' | 'final_test'
    meta/trials/trial_idx.npy                  (n_trials,)
    meta/statistics/{images,responses}/{all,stimulus_frame}/{mean,std,min,max,median}.npy

Reading follows neuralpredictors' ``FileTreeDataset``:
  - ``config.json`` "links" rename data folders: ``{"responses": "targets"}`` reads the responses
    from ``data/targets`` (``FileTreeDataset.resolve_data_path``).
  - A tree distributed as a ``.zip`` (Sensorium's releases) is read directly from the archive;
    its root is the folder inside that holds ``meta/trials/tiers.npy``.
  - An image is identified by ``frame_image_id``, or by ``(frame_image_class, frame_image_id)``
    where ``frame_image_class.npy`` exists. Images are stored per trial, so they are deduplicated
    by that identity (the first trial of each provides the image; ``check_images=True`` verifies
    that every repeat is the same).
  - Withheld responses: Sensorium's competition releases ship the ``test`` and ``final_test``
    responses as zeros. A tier whose responses are all zero is left out with a warning naming it
    (recorded in ``info["left_out"]``), never scored.
  - ``final_test`` (Sensorium's held-out repeated images), when its responses are present, joins
    ``test`` by default (``final_test="test"``), or its trials are dropped (``final_test="drop"``).
  - Other data/ folders (behavior, pupil_center) are not read.
"""

from __future__ import annotations

import io as _pyio
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from jaxmouse._io import atomic_path
from jaxmouse.data.dataset import TIERS, NeuralDataset, fitted_shape, resize_images

NEURON_KEYS = {"unit_ids": "unit_ids", "area": "areas"}  # file stem -> NeuralDataset field
_TIERS_FILE = "meta/trials/tiers.npy"


def _zip_root(path: Path) -> str | None:
  """The member prefix of the tree inside a zip archive (``""`` or ``"name/"``), else None."""
  try:
    with zipfile.ZipFile(path) as z:
      for member in z.namelist():
        if member.endswith(_TIERS_FILE) and not member.startswith("__MACOSX"):
          return member[:-len(_TIERS_FILE)]
  except (zipfile.BadZipFile, OSError):
    return None
  return None


def is_filetree(path: Path) -> bool:
  """A folder with data/ and meta/trials/, or a .zip archive holding one."""
  path = Path(path)
  if path.is_file():
    return zipfile.is_zipfile(path) and _zip_root(path) is not None
  return (path / "data").is_dir() and (path / "meta" / "trials").is_dir()


class _Tree:
  """A static tree in a folder or inside a zip archive; paths are relative to its root."""

  def __init__(self, path: Path):
    self.path = path
    self.zip = None
    if path.is_file():
      self.prefix = _zip_root(path)
      self.zip = zipfile.ZipFile(path)
      self.members = set(self.zip.namelist())

  def show(self, rel: str) -> str:
    """The path of ``rel`` as a user reads it in an error."""
    return f"{self.path}:{self.prefix}{rel}" if self.zip else str(self.path / rel)

  def is_file(self, rel: str) -> bool:
    return (self.prefix + rel) in self.members if self.zip else (self.path / rel).is_file()

  def is_dir(self, rel: str) -> bool:
    if self.zip:
      head = self.prefix + rel.rstrip("/") + "/"
      return any(m.startswith(head) for m in self.members)
    return (self.path / rel).is_dir()

  def stems(self, rel: str) -> list[str]:
    """Stems of the ``.npy`` files directly in folder ``rel``, sorted."""
    if self.zip:
      head = self.prefix + rel.rstrip("/") + "/"
      names = [m[len(head):] for m in self.members if m.startswith(head)]
      return sorted(n[:-4] for n in names if n.endswith(".npy") and "/" not in n)
    return sorted(f.stem for f in (self.path / rel).glob("*.npy"))

  def text(self, rel: str) -> str | None:
    if not self.is_file(rel):
      return None
    if self.zip:
      return self.zip.read(self.prefix + rel).decode()
    return (self.path / rel).read_text()

  def npy(self, rel: str, what: str, allow_pickle: bool = False) -> np.ndarray:
    if not self.is_file(rel):
      raise FileNotFoundError(f"{self.show(rel)}: missing file ({what})")
    try:
      if self.zip:
        return np.load(_pyio.BytesIO(self.zip.read(self.prefix + rel)), allow_pickle=allow_pickle)
      return np.load(self.path / rel, allow_pickle=allow_pickle)
    except ValueError as e:
      if "allow_pickle" in str(e):
        raise ValueError(f"{self.show(rel)}: holds Python objects ({what}); pass "
                         "allow_pickle=True if you trust the file") from None
      raise ValueError(f"{self.show(rel)}: unreadable .npy ({what}; truncated or corrupt?): "
                       f"{e}") from None
    except (EOFError, OSError, zipfile.BadZipFile) as e:
      raise ValueError(f"{self.show(rel)}: unreadable .npy ({what}; truncated or corrupt?): "
                       f"{e}") from None

  def close(self):
    if self.zip:
      self.zip.close()


def _read_config(tree: _Tree) -> dict:
  try:
    config = json.loads(tree.text("config.json") or "{}")
  except ValueError as e:
    raise ValueError(f"{tree.show('config.json')}: not valid JSON: {e}") from None
  return config if isinstance(config, dict) else {}


def _data_folder(tree: _Tree, config: dict, key: str) -> str:
  """``data/<key>``, renamed by config.json "links" as neuralpredictors resolves data paths."""
  links = config.get("links") or {}
  folder = f"data/{links.get(key, key)}"
  if not tree.is_dir(folder):
    via = f" (config.json links {key!r} -> {links[key]!r})" if key in links else ""
    raise FileNotFoundError(f"{tree.show(folder)}: missing folder of {key}{via}")
  return folder


def load(path: str | os.PathLike, *, final_test: str = "test", check_images: bool = False,
         image_shape: tuple[int, int] | None = None, name: str | None = None,
         allow_pickle: bool = False) -> NeuralDataset:
  """Reads a static file tree (a folder, or a .zip archive holding one).

  Args:
    path: the tree's root folder, or a .zip of it as Sensorium distributes them.
    final_test: ``"test"`` keeps Sensorium's ``final_test`` trials as test trials (when their
      responses are present); ``"drop"`` removes them.
    check_images: read every trial's image and verify that repeats of one image identity are
      identical (slower); by default one file per distinct image is read.
    image_shape: resize images to ``(h, w)`` while reading (e.g. 144x256 -> 36x64), keeping the
      aspect ratio (``NeuralDataset.resize``), which keeps the memory of large trees small.
    name: the data set's name; default: the one stored in config.json, else the folder name.
    allow_pickle: read meta files stored as object arrays (runs pickle: trusted files only).
  """
  root = Path(path)
  if not root.exists():
    raise FileNotFoundError(f"{root}: no such file tree (folder or .zip)")
  if not is_filetree(root):
    raise FileNotFoundError(f"{root}: not a static file tree (expected data/ and meta/trials/, "
                            "in a folder or a .zip)")
  if final_test not in ("test", "drop"):
    raise ValueError(f"final_test must be 'test' or 'drop', got {final_test!r}")
  tree = _Tree(root)
  try:
    return _load(tree, final_test=final_test, check_images=check_images, image_shape=image_shape,
                 name=name, allow_pickle=allow_pickle)
  finally:
    tree.close()


def _image_identity(tree: _Tree, meta_npy, n_trials: int) -> tuple[np.ndarray, str]:
  """Per trial an integer code of its image: ``frame_image_id``, or ``(frame_image_class,
  frame_image_id)`` where the class file exists (ids restart per class)."""
  frame_ids = meta_npy("meta/trials/frame_image_id.npy", "image id of each trial")
  if frame_ids.shape != (n_trials,):
    raise ValueError(f"{tree.show('meta/trials/frame_image_id.npy')}: shape {frame_ids.shape}; "
                     f"expected ({n_trials},) like tiers.npy")
  if not tree.is_file("meta/trials/frame_image_class.npy"):
    return np.unique(frame_ids, return_inverse=True)[1].reshape(-1), "frame_image_id"
  classes = meta_npy("meta/trials/frame_image_class.npy", "image class of each trial")
  if classes.shape != (n_trials,):
    raise ValueError(f"{tree.show('meta/trials/frame_image_class.npy')}: shape {classes.shape}; "
                     f"expected ({n_trials},) like tiers.npy")
  pairs = np.stack([np.unique(classes.astype(str), return_inverse=True)[1].reshape(-1),
                    np.unique(frame_ids, return_inverse=True)[1].reshape(-1)], axis=1)
  codes = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)
  return codes, "(frame_image_class, frame_image_id)"


def _load(tree: _Tree, *, final_test, check_images, image_shape, name, allow_pickle):
  meta_npy = lambda rel, what: tree.npy(rel, what, allow_pickle)
  tiers = meta_npy(_TIERS_FILE, "trial tiers").astype(str)
  n_trials = tiers.shape[0]
  if tiers.ndim != 1:
    raise ValueError(f"{tree.show(_TIERS_FILE)}: shape {tiers.shape}; expected (n_trials,)")
  image_code, identity = _image_identity(tree, meta_npy, n_trials)
  allowed = set(TIERS) | {"final_test"}
  unknown = sorted(set(np.unique(tiers).tolist()) - allowed)
  if unknown:
    raise ValueError(f"{tree.show(_TIERS_FILE)}: unknown tiers {unknown}; expected "
                     f"{sorted(allowed)}")
  keep = np.ones(n_trials, bool) if final_test == "test" else tiers != "final_test"
  config = _read_config(tree)
  images_dir = _data_folder(tree, config, "images")
  responses_dir = _data_folder(tree, config, "responses")

  neurons = "meta/neurons"
  unit_ids = meta_npy(f"{neurons}/unit_ids.npy", "neuron ids")
  areas = meta_npy(f"{neurons}/area.npy", "neuron areas")
  n_neurons = unit_ids.shape[0]
  meta = {}
  for stem in tree.stems(neurons):
    if stem not in NEURON_KEYS:
      value = meta_npy(f"{neurons}/{stem}.npy", "per-neuron field")
      meta[stem] = value.astype(str) if value.dtype.kind == "O" else value
  for key, value in [("area", areas), *meta.items()]:
    if value.shape[:1] != (n_neurons,):
      raise ValueError(f"{tree.show(f'{neurons}/{key}.npy')}: shape {value.shape} disagrees with "
                       f"unit_ids.npy ({n_neurons} neurons)")

  index = np.flatnonzero(keep)
  responses = np.empty((index.size, n_neurons), np.float32)
  for row, i in enumerate(index):
    rel = f"{responses_dir}/{i}.npy"
    r = tree.npy(rel, f"responses of trial {i}")
    if r.shape != (n_neurons,):
      raise ValueError(f"{tree.show(rel)}: responses of shape {r.shape}, but "
                       f"meta/neurons/unit_ids.npy has {n_neurons} neurons; expected "
                       f"({n_neurons},)")
    if not np.all(np.isfinite(r)):
      raise ValueError(f"{tree.show(rel)}: field 'responses': {int(np.sum(~np.isfinite(r)))} "
                       f"non-finite values (NaN or inf) in shape {r.shape}")
    responses[row] = r

  # Withheld tiers (all responses zero) are left out, never scored.
  left_out = []
  rows = np.ones(index.size, bool)
  for tier in sorted(set(tiers[index].tolist())):
    in_tier = tiers[index] == tier
    if not responses[in_tier].any():
      rows &= ~in_tier
      left_out.append(f"tier {tier!r}: {int(in_tier.sum())} trials whose responses are all 0 "
                      "(withheld)")
      warnings.warn(f"{tree.show(responses_dir)}: tier {tier!r} has all-zero responses in its "
                    f"{int(in_tier.sum())} trials (withheld, as in Sensorium competition "
                    "releases); left out", UserWarning, stacklevel=3)
  index, responses = index[rows], responses[rows]
  if index.size == 0:
    raise ValueError(f"{tree.show(responses_dir)}: every tier's responses are all zero; nothing "
                     "to fit or score")
  tiers = np.where(tiers == "final_test", "test", tiers)

  codes, first, trial_image = np.unique(image_code[index], return_index=True, return_inverse=True)
  images = _read_images(tree, images_dir, index[first], image_shape)
  if check_images:
    for row, i in enumerate(index):
      img = _read_image(tree, images_dir, i)
      if image_shape is None and not np.array_equal(img, images[trial_image[row]]):
        raise ValueError(f"{tree.show(f'{images_dir}/{i}.npy')}: trial {i} shows the image "
                         f"{identity} of another trial, but its pixels differ")

  jm = config.get("jaxmouse", {}) if isinstance(config.get("jaxmouse"), dict) else {}
  if isinstance(jm.get("info"), dict):  # written by jaxmouse: the data set's own facts
    info = dict(jm["info"])
  else:
    first = _read_image(tree, images_dir, int(index[0]))
    info = {"source": "Sensorium / neuralpredictors static file tree",
            "image_size": f"{first.shape[0]}x{first.shape[1]}",
            "response_type": "not stated in the file tree",
            "split": f"as stored in meta/trials/tiers.npy (images identified by {identity})"}
  if left_out:
    info["left_out"] = "; ".join(left_out)
  default_name = tree.path.name
  if tree.zip and default_name.endswith(".zip"):
    default_name = default_name[:-4]
  try:
    return NeuralDataset(images=images, responses=responses, trial_image=trial_image.reshape(-1),
                         tiers=tiers[index], unit_ids=unit_ids, areas=areas, neuron_meta=meta,
                         name=name or jm.get("name") or default_name, info=info)
  except ValueError as e:
    raise ValueError(f"{tree.path}: {e}") from None


def _read_image(tree: _Tree, folder: str, i: int) -> np.ndarray:
  rel = f"{folder}/{i}.npy"
  img = tree.npy(rel, f"image of trial {i}")
  if img.ndim == 3 and img.shape[0] == 1:
    img = img[0]
  if img.ndim != 2:
    raise ValueError(f"{tree.show(rel)}: image of shape {img.shape}; expected (1, H, W) or (H, W)")
  return img


def _read_images(tree: _Tree, folder: str, trials: np.ndarray, image_shape) -> np.ndarray:
  first = _read_image(tree, folder, int(trials[0]))
  shape = tuple(image_shape) if image_shape is not None else first.shape
  fill = None
  if shape != first.shape and fitted_shape(first.shape, shape) != shape:
    # Padding fills with the mean gray of all images: one pass more, only when aspects differ.
    fill = np.mean([np.mean(_read_image(tree, folder, int(i)), dtype=np.float64) for i in trials])
  images = np.empty((trials.size, *shape), np.float32)
  chunk, start = [], 0
  for j, i in enumerate(trials):
    img = first if j == 0 else _read_image(tree, folder, int(i))
    if img.shape != first.shape:
      raise ValueError(f"{tree.show(f'{folder}/{i}.npy')}: image of shape {img.shape}, but trial "
                       f"{trials[0]} has {first.shape}")
    chunk.append(img)
    if len(chunk) == 256 or j == trials.size - 1:
      block = np.stack(chunk).astype(np.float32)
      if block.shape[1:] != shape:
        block = resize_images(block, shape, fill=fill)
      images[start:start + len(chunk)] = block
      start += len(chunk)
      chunk = []
  return images


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

  ``trial_image`` becomes ``frame_image_id``; tiers are written as they are (no ``final_test``);
  the name and ``info`` go to config.json under "jaxmouse".
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
