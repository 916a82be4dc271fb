"""A data set as tensorflow-datasets ArrayRecord files, read back without TensorFlow.

``save`` runs a tfds ``GeneratorBasedBuilder`` that writes one record per trial into one split per
tier (``train``, ``validation``, ``test``); ``data_source`` opens a split through
``tfds.data_source`` for random access from disk (each record: ``image (H, W)`` float32,
``responses (n_neurons,)`` float32, ``image_index`` and ``trial`` int64), so large data sets
stream with a grain/PyTorch-style sampler; ``load`` turns the whole folder back into a
``NeuralDataset``. Layout::

  ROOT/neural_dataset/1.0.0/
    dataset_info.json, features.json, metadata.json   (tfds; metadata: the name and info)
    neural_dataset-<tier>.array_record-00000-of-0000N
    neurons.npz                                        unit_ids, areas, neuron_meta/<key>

tfds shuffles records within a split; ``trial`` restores the original trial order and
``image_index`` the image table. Images no trial shows are not stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from jaxmouse._io import atomic_path, read_json
from jaxmouse.data.dataset import TIERS, NeuralDataset

BUILDER_NAME = "neural_dataset"
VERSION = "1.0.0"
NEURONS_FILE = "neurons.npz"


def _builder_class(ds: NeuralDataset):
  import tensorflow_datasets as tfds

  h, w = ds.image_shape
  n = ds.n_neurons

  with tfds.core.registered.skip_registration():  # shapes differ per data set: never register

    class NeuralDatasetBuilder(tfds.core.GeneratorBasedBuilder):
      """One record per trial; one split per tier."""

      name = BUILDER_NAME
      VERSION = tfds.core.Version(VERSION)

      def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"jaxmouse NeuralDataset {ds.name!r}: one record per trial.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(h, w), dtype=np.float32),
                "responses": tfds.features.Tensor(shape=(n,), dtype=np.float32),
                "image_index": np.int64,
                "trial": np.int64,
            }),
            metadata=tfds.core.MetadataDict(name=ds.name, info=dict(ds.info), n_neurons=n,
                                            image_shape=[h, w], n_images=ds.n_images),
        )

      def _split_generators(self, dl_manager):
        return {t: self._generate_examples(t) for t in ds.tier_names}

      def _generate_examples(self, tier):
        for i in np.flatnonzero(ds.tiers == tier):
          yield int(i), {"image": ds.images[ds.trial_image[i]], "responses": ds.responses[i],
                         "image_index": int(ds.trial_image[i]), "trial": int(i)}

  return NeuralDatasetBuilder


@contextlib.contextmanager
def _quiet(progress: bool):
  import tensorflow_datasets as tfds
  from absl import logging as absl_logging

  level = absl_logging.get_verbosity()
  if not progress:
    tfds.disable_progress_bar()
    absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    if progress:
      yield
    else:
      with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
  finally:
    if not progress:
      tfds.enable_progress_bar()
      absl_logging.set_verbosity(level)


def save(ds: NeuralDataset, path: str | os.PathLike, *, progress: bool = False) -> Path:
  """Writes ``ds`` as a tfds ArrayRecord folder (atomically)."""
  import tensorflow_datasets as tfds

  root = Path(path)
  with atomic_path(root, is_dir=True) as tmp, _quiet(progress):
    builder = _builder_class(ds)(data_dir=str(tmp), file_format="array_record")
    builder.download_and_prepare(
        download_dir=str(tmp / "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    shutil.rmtree(tmp / "downloads", ignore_errors=True)
    neurons = {"unit_ids": ds.unit_ids, "areas": ds.areas}
    neurons.update({f"neuron_meta/{k}": v for k, v in ds.neuron_meta.items()})
    with open(Path(builder.data_dir) / NEURONS_FILE, "wb") as f:
      np.savez(f, **{k: np.asarray(v).astype(str) if np.asarray(v).dtype.kind in "OS" else v
                     for k, v in neurons.items()})
  return root


def version_dir(path: str | os.PathLike) -> Path:
  """The folder holding ``dataset_info.json`` (``path`` itself, or ``path/<name>/<version>``)."""
  path = Path(path)
  if (path / "dataset_info.json").is_file():
    return path
  found = sorted(path.glob("*/*/dataset_info.json"))
  if not found:
    raise FileNotFoundError(f"{path}: no TFDS data set (no dataset_info.json in it or in "
                            f"{path}/<name>/<version>/)")
  if len(found) > 1:
    raise ValueError(f"{path}: several TFDS data sets {[str(f.parent) for f in found]}; pass one")
  return found[0].parent


def is_tfds(path: str | os.PathLike) -> bool:
  try:
    version_dir(path)
    return True
  except (FileNotFoundError, ValueError):
    return False


def data_source(path: str | os.PathLike, split: str):
  """Random-access reader of one tier: ``source[i]`` is a dict of numpy arrays (see module doc).

  Opened with ``tfds.data_source`` from the files alone; TensorFlow is not needed.
  """
  import tensorflow_datasets as tfds

  vdir = version_dir(path)
  splits = _splits(vdir)
  if split not in splits:
    raise ValueError(f"{vdir}: no split {split!r}; splits: {splits}")
  return tfds.data_source(vdir.parent.name, data_dir=str(vdir.parent.parent), split=split,
                          builder_kwargs={"version": vdir.name})


def _splits(vdir: Path) -> list[str]:
  try:
    info = json.loads((vdir / "dataset_info.json").read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{vdir / 'dataset_info.json'}: unreadable ({e})") from None
  return [s["name"] for s in info.get("splits", [])]


def load(path: str | os.PathLike, *, batch_size: int = 256) -> NeuralDataset:
  """Reads every split of a tfds folder back into a ``NeuralDataset``."""
  vdir = version_dir(path)
  neurons_file = vdir / NEURONS_FILE
  try:
    with np.load(neurons_file, allow_pickle=False) as z:
      neurons = {k: z[k] for k in z.files}
  except FileNotFoundError:
    raise FileNotFoundError(f"{neurons_file}: missing (per-neuron ids and areas)") from None
  except Exception as e:  # a truncated zip raises several types
    raise ValueError(f"{neurons_file}: unreadable (truncated or corrupt?): {e}") from None
  for key in ("unit_ids", "areas"):
    if key not in neurons:
      raise ValueError(f"{neurons_file}: missing field {key!r} (found {sorted(neurons)})")

  images, responses, image_index, trial, tiers = {}, [], [], [], []
  for tier in _splits(vdir):
    if tier not in TIERS:
      raise ValueError(f"{vdir}: split {tier!r} is not a tier {list(TIERS)}")
    try:
      source = data_source(vdir, tier)
      for start in range(0, len(source), batch_size):
        records = source.__getitems__(list(range(start, min(start + batch_size, len(source)))))
        for r in records:
          responses.append(r["responses"])
          image_index.append(int(r["image_index"]))
          trial.append(int(r["trial"]))
          tiers.append(tier)
          images.setdefault(int(r["image_index"]), r["image"])
    except (ValueError, FileNotFoundError):
      raise
    except Exception as e:  # array_record / protobuf errors on truncated files
      raise ValueError(f"{vdir}: split {tier!r} unreadable (truncated or corrupt?): {e}") from None

  if not responses:
    raise ValueError(f"{vdir}: no trials in any split")
  order = np.argsort(np.asarray(trial), kind="stable")
  responses = np.stack(responses)[order]
  ids = np.array(sorted(images))
  trial_image = np.searchsorted(ids, np.asarray(image_index)[order])
  meta_info = (read_json(vdir / "metadata.json", what="the data set's name and description")
               if (vdir / "metadata.json").is_file() else {})
  n = responses.shape[1]
  if neurons["unit_ids"].shape != (n,):
    raise ValueError(f"{neurons_file}: unit_ids has shape {neurons['unit_ids'].shape} but the "
                     f"records hold responses of {n} neurons")
  try:
    return NeuralDataset(
        images=np.stack([images[i] for i in ids]), responses=responses, trial_image=trial_image,
        tiers=np.asarray(tiers)[order], unit_ids=neurons["unit_ids"], areas=neurons["areas"],
        neuron_meta={k.split("/", 1)[1]: v for k, v in neurons.items() if k.startswith("neuron_meta/")},
        name=meta_info.get("name", vdir.parent.parent.name), info=meta_info.get("info", {}))
  except ValueError as e:
    raise ValueError(f"{vdir}: {e}") from None
