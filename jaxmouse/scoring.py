"""``jaxmouse.score``: one call from a feature space and a data set to the results table.

``score`` fits a readout of every neuron on every layer, over a penalty grid, chooses a config per
neuron (or per area) on validation and scores it on the repeated test images, exactly as
``jaxmouse sweep`` does, and returns the rows of ``RUN/results.csv`` (``sweeps.COLUMNS``).

The feature space can be given four ways; the adapter below turns each into what the sweep
fits:

- a weights checkpoint folder (``jaxmouse weights ...``): the sweep itself,
  ``sweeps.run_sweep``, in a temporary run folder (or ``out``, kept and resumable);
- a ``jaxmouse.weights.Weights`` (a converted network), a callable ``images -> {layer: array}``,
  a dict ``{layer: array}``, or a folder of ``<layer>.npy`` / an ``.npz`` of such arrays: layers
  held in memory (``as_layers``), fitted by ``_fit_layers`` with the sweep's own step for a
  feature space (``sweeps.fit_readout``: prepared features, the same grid, selection and scores)
  and the sweep's rows (``sweeps.cell_rows``). Arrays are ``(n_images, h, w, c)`` maps or flat
  ``(n_images, d)`` vectors, fitted as ``(n, 1, 1, d)``, which only the ridge readout takes.

Like the sweep, the CNN-like features get batch norm + ReLU when ``fit_config.batch_norm`` is set,
else one global scale; every choice is made on validation data.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

SPATIAL_READOUTS = ("factorized", "full", "gaussian")


def score(features, data, *, readout: str = "ridge", layers: Sequence[str] | None = None,
          grid: Mapping[str, Sequence[float]] | None = None, select: str = "neuron",
          areas: Sequence[str] | None = None, fit_config=None, name: str = "features",
          kind: str = "trained", out: str | os.PathLike | None = None,
          progress: bool = False) -> "pandas.DataFrame":
  """How well each layer of a feature space predicts each neuron: the sweep's results table.

  Args:
    features: a weights checkpoint folder; a ``jaxmouse.weights.Weights``; a callable
      ``images (n, H, W) float32 0-255 -> {layer: (n, h, w, c) or (n, d)}``; a dict
      ``{layer: array}`` with one row per image of ``data``; or a folder of ``<layer>.npy`` / an
      ``.npz`` of such arrays.
    data: a ``jaxmouse.data.NeuralDataset`` or any path ``jaxmouse.data.load`` reads.
    readout: ``ridge`` (closed form, any features), ``factorized``, ``full`` or ``gaussian``
      (trained by gradient descent, spatial ``(n, h, w, c)`` features).
    layers: the layers to fit (default: every layer the features give; for a network, its
      conv layers that the images are large enough for).
    grid: ``{penalty: values}`` of the readout (default ``jaxmouse.fit.default_grid``).
    select: ``"neuron"`` (a config per neuron) or ``"area"`` (one per area), on validation.
    areas: the areas to fit (default: all).
    fit_config: a ``jaxmouse.fit.FitConfig`` for trained readouts (default: its defaults).
    name, kind: the ``weights`` and ``weights_kind`` columns of features that are not a
      checkpoint (a checkpoint's are its folder name and its metadata's kind).
    out: a run folder that keeps (and resumes) the sweep of a checkpoint; without it a
      temporary one is used.
    progress: progress bars.

  Returns:
    A ``pandas.DataFrame`` with the columns of ``results.csv`` (``jaxmouse.sweeps.COLUMNS``),
    one row per layer x neuron; ``attrs["data"]`` holds the data set's name and ``info`` (a
    simulated mouse says so there).

  Example (a feature space of raw pixels on a small simulated mouse):

  >>> import jaxmouse
  >>> from jaxmouse.data import SimulationConfig, simulate
  >>> ds, truth = simulate(SimulationConfig.tiny(seed=1))
  >>> pixels = {"pixels": ds.images[..., None]}            # (n, H, W, 1)
  >>> table = jaxmouse.score(pixels, ds, readout="ridge")
  >>> list(table.columns) == list(jaxmouse.sweeps.COLUMNS)
  True
  >>> len(table) == ds.n_neurons and bool(table["feve"].le(1).all())
  True
  >>> table.attrs["data"]["info"]["response_type"]
  'spike counts (simulated)'
  """
  import pandas as pd

  from jaxmouse import fit as fitlib
  from jaxmouse import sweeps

  ds = _dataset(data)
  # The sweep's config checks the readout, grid, selection and areas. The feature space is set
  # by the adapter (energy=True only passes its "something to sweep" check: no energy model is
  # fitted here).
  config = sweeps.SweepConfig(energy=True, readouts=(readout,), areas=areas,
                              grids={} if grid is None else {readout: dict(grid)},
                              fit=fit_config or fitlib.FitConfig(), select=select)
  checkpoint = _checkpoint(features)
  if checkpoint is not None:
    table = _sweep_checkpoint(ds, checkpoint, config, layers=layers, out=out, progress=progress)
  else:
    table = _fit_layers(ds, as_layers(features, ds.images, layers=layers), config, name=name,
                        kind=kind, progress=progress)
  table = pd.DataFrame(table, columns=list(sweeps.COLUMNS)).reset_index(drop=True)
  # The same types whichever way the rows came (a sweep's are read back from its CSV files).
  for c in ("weights", "layer", "readout", "area", "neuron", "config", "weights_kind"):
    table[c] = table[c].astype(str)
  rec = table["recording"].astype(object)
  table["recording"] = rec.where(rec.notna(), "").astype(str)
  table.attrs["data"] = {"name": ds.name, "info": dict(ds.info)}
  return table


def _dataset(data):
  from jaxmouse.data import NeuralDataset, load

  if isinstance(data, NeuralDataset):
    return data
  if isinstance(data, (str, os.PathLike)):
    return load(data)
  raise ValueError(f"score: data must be a NeuralDataset or a path jaxmouse.data.load reads, got "
                   f"{type(data).__name__}")


# ---- the feature-space adapter ------------------------------------------------------------------
#
# A checkpoint folder goes to the sweep as it is; everything else becomes {layer: array} here and
# is fitted by _fit_layers. A sweep that takes precomputed features itself would replace
# _fit_layers (the arrays written as a folder of <layer>.npy and given to the sweep), and
# as_layers would stay.

def _checkpoint(features) -> Path | None:
  """The folder when ``features`` is a weights checkpoint (it has a ``metadata.json``)."""
  if isinstance(features, (str, os.PathLike)):
    path = Path(features)
    if (path / "metadata.json").is_file():
      return path
    if not path.exists():
      raise FileNotFoundError(f"score: features {path} not found (expected a weights checkpoint "
                              "folder, a folder of <layer>.npy files or an .npz)")
  return None


def network_layers(arch: str, image_shape: Sequence[int]) -> tuple[str, ...]:
  """The conv layers of ``arch`` whose maps are at least 1x1 for images of ``(H, W)``."""
  from jaxmouse.models import vgg

  h, w = (int(s) for s in image_shape[:2])
  return tuple(l for l in vgg.LAYERS[arch] if l.startswith("conv")
               and min(vgg.output_shape(arch, l, h, w)[:2]) >= 1)


def as_layers(features, images: np.ndarray, *,
              layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """``{layer: (n_images, h, w, c) float32}`` from any feature input but a checkpoint folder.

  ``images (n, H, W)`` are the data set's (0-255); a ``Weights`` or a callable is run on them.
  Flat ``(n, d)`` arrays become ``(n, 1, 1, d)``. Raises ValueError naming the layer and the
  shapes for a wrong number of rows or dimensions, and for unknown ``layers``.
  """
  from jaxmouse.weights import Weights

  n = images.shape[0]
  if isinstance(features, Weights):
    from jaxmouse.features import extract

    names = tuple(layers) if layers else network_layers(features.arch, images.shape[1:3])
    arrays, where = extract(features, images, layers=list(names)), f"{features.arch} network"
  elif isinstance(features, Mapping):
    arrays, where = dict(features), "features dict"
  elif isinstance(features, (str, os.PathLike)):
    arrays, where = _read_arrays(Path(features)), str(features)
  elif callable(features):
    arrays = features(np.asarray(images, np.float32))
    where = f"features callable {getattr(features, '__name__', type(features).__name__)}"
    if not isinstance(arrays, Mapping):
      raise ValueError(f"score: the {where} must return {{layer: array}}, got "
                       f"{type(arrays).__name__}")
  else:
    raise ValueError("score: features must be a weights checkpoint folder, a Weights, a "
                     "callable images -> {layer: array}, a dict of arrays, or a folder/.npz of "
                     f"them; got {type(features).__name__}")
  if not arrays:
    raise ValueError(f"score: the {where} has no layers")
  if layers is not None:
    unknown = [l for l in layers if l not in arrays]
    if unknown:
      raise ValueError(f"score: layers {unknown} are not in the {where}; it has "
                       f"{list(arrays)}")
    arrays = {l: arrays[l] for l in layers}
  out = {}
  for layer, a in arrays.items():
    shape = tuple(np.shape(a))
    if len(shape) not in (2, 4) or shape[0] != n:
      raise ValueError(f"score: layer {layer!r} of the {where} has shape {shape}; expected "
                       f"({n}, h, w, c) or ({n}, d), one row per image of the data set")
    a = np.asarray(a, np.float32)
    out[str(layer)] = a.reshape(n, 1, 1, -1) if a.ndim == 2 else a
  return out


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
  """A folder of ``<layer>.npy`` (memory-mapped) or an ``.npz`` of arrays."""
  if path.is_dir():
    files = sorted(path.glob("*.npy"))
    if not files:
      raise ValueError(f"score: {path} is neither a weights checkpoint (no metadata.json) nor a "
                       "folder of <layer>.npy files")
    return {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in files}
  from jaxmouse.data.plain import read_npz

  return read_npz(path, what="features (.npz of arrays, one per layer)")


def _sweep_checkpoint(ds, checkpoint: Path, config, *, layers, out, progress):
  import dataclasses

  from jaxmouse import sweeps
  from jaxmouse.weights import read_metadata

  names = tuple(layers) if layers else network_layers(read_metadata(checkpoint)["arch"],
                                                      ds.images.shape[1:3])
  config = dataclasses.replace(config, weights=(str(checkpoint),), layers=names, energy=False)
  if out is not None:
    return sweeps.run_sweep(ds, config, out, progress=progress)
  with tempfile.TemporaryDirectory(prefix="jaxmouse-score-") as tmp:
    return sweeps.run_sweep(ds, config, Path(tmp) / "run", progress=progress)


def _fit_layers(ds, layers: Mapping[str, np.ndarray], config, *, name: str, kind: str,
                progress: bool):
  """The sweep of in-memory layers: per layer the sweep's step for a feature space
  (``sweeps.fit_readout``) and its rows per area (``sweeps.cell_rows``)."""
  import pandas as pd

  from jaxmouse import _io
  from jaxmouse import fit as fitlib
  from jaxmouse import sweeps

  (readout,) = config.readouts
  areas = list(config.areas) if config.areas is not None else list(ds.area_names)
  missing = [a for a in areas if a not in ds.area_names]
  if missing:
    raise ValueError(f"data set {ds.name!r} has no neurons in area(s) {missing}; available: "
                     f"{list(ds.area_names)}")
  if readout in SPATIAL_READOUTS:
    flat = [f"{l} {a.shape}" for l, a in layers.items() if a.shape[1:3] == (1, 1)]
    if flat:
      raise ValueError(f"score: the {readout} readout needs spatial features (n, h, w, c); "
                       f"layers {flat} are flat. Fit flat features with readout='ridge'")
  for t in ("train", "validation", "test"):
    ds.tier(t)  # a missing tier is an error before any work
  neurons = np.concatenate([np.flatnonzero(ds.areas == a) for a in areas])
  tiers = sweeps._tiers(ds, neurons)
  n_train = len(np.unique(tiers["train"].image))
  g = 1 if readout == "ridge" else len(next(iter(config.grid(readout).values())))
  for layer, a in layers.items():
    _io.check_memory(fitlib.memory_bytes(readout=readout, feature_shape=a.shape[1:],
                                         n_images=len(a), n_train_images=n_train,
                                         n_neurons=len(neurons), n_configs=g,
                                         state_mb=config.fit.state_mb, select=config.select,
                                         stop_on=config.fit.stop_on),
                     what=f"fitting the {readout} readout on {layer} {a.shape}",
                     hint="fewer layers or areas at a time")
  neuron_area = ds.areas[neurons]
  recording = sweeps.recordings(ds)
  fit_config = config.fit
  if readout != "ridge":
    fit_config, _ = fitlib.resolve_loss(config.fit, tiers["train"].responses)
  rows = []
  for layer, raw in layers.items():
    try:
      feats = fitlib.prepare_features(raw, train_images=tiers["train"].image,
                                      batch_norm=config.fit.batch_norm)
    except ValueError as e:
      raise ValueError(f"score: layer {layer!r}: {e}") from None
    result = sweeps.fit_readout(feats, tiers, readout=readout, config=config,
                                fit_config=fit_config, groups=neuron_area, progress=progress,
                                desc=f"{name} {layer} {readout}")
    for area in areas:
      idx = np.flatnonzero(neuron_area == area)
      rows.append(sweeps.cell_rows(
          sweeps.Cell(name, layer, readout, area), sweeps.subset(result, idx),
          ds.unit_ids[neurons[idx]], kind=kind,
          recording=None if recording is None else recording[neurons[idx]]))
  return pd.concat(rows, ignore_index=True)
