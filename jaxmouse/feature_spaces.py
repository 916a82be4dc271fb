"""Feature spaces: anything that gives named layers of features for a data set's images.

A sweep, a study and a comparison see a feature space only through this interface: a ``label``
(the ``weights`` column of the results), a ``kind`` (``trained``, ``random`` or ``energy``), an
``arch``, its ``layers`` in network order and, per layer, the features of the images. Three kinds
of source:

- ``NetworkSpace``: a weights checkpoint folder of any network of ``jaxmouse.models.zoo``
  (``jaxmouse weights convert|random|fetch``); features are extracted once and cached on disk
  (``FeatureCache``). Layer order, kind and normalization come from the checkpoint.
- ``EnergySpace``: the Gabor energy model (one layer, ``gabor``), computed from the images.
- ``PrecomputedSpace``: features written by any tool: a folder of ``<layer>.npy`` files or one
  ``.npz`` with an array per layer, ``(n_images, h, w, c)`` maps or flat ``(n_images, d)``
  vectors (pooled layers, class tokens). An optional ``metadata.json`` beside them (in the
  folder, or ``NAME.json`` next to an ``.npz``) gives ``layers`` (network order), ``arch``,
  ``kind`` (``trained`` or ``random``) and ``normalization``. Without it the layer order is that
  of the ``.npz``'s members, or of the sweep's ``--layers`` for a folder; the kind is
  ``trained``.

Flat features reach the readouts as ``(n, 1, 1, d)``: the ridge readout fits them as they are;
the spatial readouts (factorized, full, gaussian) refuse them (``check_readout``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxmouse import _io
from jaxmouse.models import zoo

KINDS = ("trained", "random", "energy")
SPATIAL_READOUTS = ("factorized", "full", "gaussian")
ENERGY_LABEL, ENERGY_LAYER = "energy", "gabor"


class FeatureSpace:
  """The interface: ``label``, ``kind``, ``arch``, ``layers`` (network order), ``source``,
  ``normalization`` and the methods below."""

  label: str
  kind: str
  arch: str
  layers: tuple[str, ...]
  source: str = ""
  normalization: str | None = None

  def check_layers(self, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` this space has, in network order; a ValueError lists the valid ones."""
    unknown = [n for n in names if n not in self.layers]
    if unknown:
      raise ValueError(f"unknown layer(s) {unknown} for {self.label} ({self.arch}); valid layers: "
                       f"{', '.join(self.layers)}")
    return tuple(l for l in self.layers if l in set(names))

  def feature_shape(self, layer: str, image_shape: Sequence[int]) -> tuple[int, ...]:
    """``(h, w, c)`` of ``layer`` for images ``(n, H, W[, 3])`` (flat layers: ``(1, 1, d)``)."""
    raise NotImplementedError

  def check_data(self, names: Sequence[str], image_shape: Sequence[int]) -> None:
    """A ValueError when images ``(n, H, W[, 3])`` cannot give ``names`` (too small for a
    network's layer; a precomputed layer with another number of rows)."""

  def is_flat(self, layer: str) -> bool:
    """True for ``(n, d)`` features (pooled vectors), which only the ridge readout fits."""
    return False

  def features(self, images, layer: str, *, layers: Sequence[str] = ()) -> np.ndarray:
    """``(n, h, w, c)`` float32 features of ``layer`` for ``images`` (flat ones as ``(n, 1, 1,
    d)``); ``layers``: the others to compute in the same pass on a miss."""
    raise NotImplementedError

  @property
  def network_layers(self) -> tuple[str, ...]:
    """Every layer of the network in order (``layers`` may be a subset of it)."""
    return self.layers

  def depth(self, layer: str) -> float:
    """The layer's position in network order scaled to [0, 1]."""
    order = self.network_layers
    return order.index(layer) / max(len(order) - 1, 1)

  def describe(self) -> dict[str, Any]:
    """What a report needs to know: ``arch``, ``kind``, ``layers`` (the network's, in order),
    ``normalization``, ``source``."""
    return {"arch": self.arch, "kind": self.kind, "layers": list(self.network_layers),
            "normalization": self.normalization, "source": self.source}

  def check_readout(self, layer: str, readout: str) -> None:
    """A ValueError when ``readout`` cannot fit ``layer`` (a spatial readout on flat features)."""
    if readout in SPATIAL_READOUTS and self.is_flat(layer):
      raise ValueError(f"{self.source or self.label}: layer {layer!r} is flat, "
                       f"{self.flat_shape(layer)}; the {readout} readout needs spatial features "
                       "(n, h, w, c). Fit flat features with the ridge readout (--readout ridge)")

  def flat_shape(self, layer: str) -> str:
    return "(n, d)"


class NetworkSpace(FeatureSpace):
  """A weights checkpoint folder of any ``zoo`` network, extracted through a ``FeatureCache``."""

  def __init__(self, path: str | os.PathLike, *, label: str | None = None, cache=None):
    from jaxmouse.weights import read_metadata

    self.path = Path(path)
    meta = read_metadata(self.path)  # FileNotFoundError names a folder that is no checkpoint
    try:
      self.arch = zoo.check_arch(meta["arch"])
    except ValueError as e:
      raise ValueError(f"{self.path / 'metadata.json'}: {e}") from None
    self.label = label or self.path.resolve().name
    kind = meta.get("kind") or ("random" if meta.get("source") == "random" else "trained")
    self.kind = str(kind)
    self.layers = zoo.layers(self.arch)
    self.normalization = meta.get("normalization")
    self.source = str(self.path)
    # Drawn by `jaxmouse weights random`: seeds of one architecture are replicates of one network.
    self.seed = meta.get("seed") if meta.get("source") == "random" else None
    self.cache = cache  # a FeatureCache, set before features() is called
    self._weights = None

  def describe(self):
    d = super().describe()
    if self.seed is not None:
      d["seed"] = self.seed
    return d

  def check_layers(self, names):
    return zoo.check_layers(self.arch, names)

  def feature_shape(self, layer, image_shape):
    return zoo.output_shape(self.arch, layer, int(image_shape[1]), int(image_shape[2]))

  def check_data(self, names, image_shape):
    zoo.check_sizes(self.arch, names, int(image_shape[1]), int(image_shape[2]))

  def features(self, images, layer, *, layers=()):
    if self.cache is None:
      raise ValueError(f"{self.label}: no feature cache to extract into (set .cache)")
    wanted = tuple(dict.fromkeys((layer, *layers)))
    path = self.cache.ensure(self.path, images, self.check_layers(wanted))[layer]
    return np.load(path, mmap_mode="r")

  def weights(self):
    """The checkpoint's ``Weights`` (loaded once)."""
    from jaxmouse.weights import load

    if self._weights is None:
      self._weights = load(self.path)
    return self._weights

  def extract(self, images, layers: Sequence[str], *, batch_size: int = 32) -> dict:
    """``{layer: (n, h, w, c)}`` in memory, not cached (e.g. for NeuRN-transformed images)."""
    from jaxmouse.features import extract

    return extract(self.weights(), images, layers=layers, batch_size=batch_size)

  def depth(self, layer):
    return zoo.relative_depth(self.arch, layer)


class EnergySpace(FeatureSpace):
  """The Gabor energy model: one layer, ``gabor``, of ``(n, h, w, 320)`` rectified units."""

  label, kind, arch, layers, source = ENERGY_LABEL, "energy", "energy", (ENERGY_LAYER,), "energy"

  def feature_shape(self, layer, image_shape):
    from jaxmouse.models import gabor
    return tuple(gabor.feature_shape(tuple(int(s) for s in image_shape[1:3])))

  def features(self, images, layer, *, layers=()):
    from jaxmouse.models import gabor
    self.check_layers([layer])
    return gabor.features(images)

  def depth(self, layer):
    return 0.0


@dataclasses.dataclass
class _Member:
  shape: tuple[int, ...]
  dtype: np.dtype


class PrecomputedSpace(FeatureSpace):
  """Features written by any tool: ``DIR/<layer>.npy`` files or one ``FILE.npz``.

  ``layer_order``: the order to take when no metadata gives one (a folder's files have none);
  the sweep passes its ``--layers``.
  """

  def __init__(self, path: str | os.PathLike, *, label: str | None = None,
               layer_order: Sequence[str] = ()):
    self.path = Path(path)
    if not self.path.exists():
      raise FileNotFoundError(f"features {self.path} do not exist (expected a folder of "
                              "<layer>.npy files or an .npz with one array per layer)")
    self.source = str(self.path)
    self.label = label or (self.path.stem if self.path.is_file() else self.path.resolve().name)
    self._members = self._scan()
    meta = self._metadata()
    self.arch = str(meta.get("arch", "precomputed"))
    self.kind = str(meta.get("kind", "trained"))
    if self.kind not in ("trained", "random"):
      raise ValueError(f"{self._meta_path}: 'kind' must be 'trained' or 'random', got "
                       f"{self.kind!r}")
    self.normalization = meta.get("normalization")
    self._order: tuple[str, ...] | None = None
    if "layers" in meta:  # the network's layers in order; the files may hold some of them
      order = meta["layers"]
      if not isinstance(order, list) or not all(isinstance(l, str) for l in order):
        raise ValueError(f"{self._meta_path}: 'layers' must be a list of layer names in network "
                         f"order, got {order!r:.80}")
      extra = [l for l in self._members if l not in order]
      if extra:
        raise ValueError(f"{self._meta_path}: its 'layers' (the network order) lack {extra}, "
                         f"which {self.path} holds")
      self._order = tuple(order)
      self.layers = tuple(l for l in order if l in self._members)
    elif self.path.is_file():  # an .npz keeps the order its arrays were written in
      self.layers = tuple(self._members)
    else:  # a folder's files have no order: the sweep's --layers give it, the rest follow
      given = [l for l in layer_order if l in self._members]
      self.layers = tuple(given) + tuple(sorted(l for l in self._members if l not in given))
    for layer, m in self._members.items():
      if len(m.shape) not in (2, 4):
        raise ValueError(f"{self._where(layer)}: features must be (n_images, d) or (n_images, h, "
                         f"w, c), got shape {m.shape}")
      if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)):
        raise ValueError(f"{self._where(layer)}: features must be numbers, got dtype {m.dtype}")

  @property
  def _meta_path(self) -> Path:
    return (self.path / "metadata.json" if self.path.is_dir()
            else self.path.with_suffix(".json"))

  def _metadata(self) -> dict:
    p = self._meta_path
    if not p.is_file():
      return {}
    return _io.read_json(p, what="a description of precomputed features (layers, arch, kind)")

  def _where(self, layer: str) -> str:
    return str(self.path / f"{layer}.npy") if self.path.is_dir() else f"{self.path}[{layer}]"

  def _scan(self) -> dict[str, _Member]:
    """Shapes and dtypes of every layer, read from the headers only."""
    out = {}
    if self.path.is_dir():
      for f in sorted(self.path.glob("*.npy")):
        out[f.stem] = _npy_header(f, str(f))
      if not out:
        raise ValueError(f"{self.path} holds no <layer>.npy files")
      return out
    if self.path.suffix != ".npz":
      raise ValueError(f"features {self.path}: expected a folder of <layer>.npy files or an .npz")
    try:
      with zipfile.ZipFile(self.path) as zf:
        for name in zf.namelist():
          if not name.endswith(".npy"):
            continue
          with zf.open(name) as f:
            out[name[:-len(".npy")]] = _npy_header(f, f"{self.path}[{name}]")
    except zipfile.BadZipFile:
      raise ValueError(f"features {self.path} is not an .npz (zip) file") from None
    if not out:
      raise ValueError(f"features {self.path} holds no arrays")
    return out

  @property
  def network_layers(self):
    return self._order or self.layers

  def n_images(self, layer: str) -> int:
    return self._members[layer].shape[0]

  def is_flat(self, layer):
    return len(self._members[layer].shape) == 2

  def flat_shape(self, layer):
    return str(self._members[layer].shape)

  def feature_shape(self, layer, image_shape):
    self.check_layers([layer])
    s = self._members[layer].shape
    return (1, 1, s[1]) if len(s) == 2 else tuple(s[1:])

  def check_data(self, names, image_shape):
    self.check_images(int(image_shape[0]), names)

  def check_images(self, n_images: int, names: Sequence[str]) -> None:
    """A ValueError for every layer whose row count is not the data set's image count."""
    bad = [f"{self._where(l)} has {self._members[l].shape[0]} rows"
           for l in names if self._members[l].shape[0] != n_images]
    if bad:
      raise ValueError(f"features must have one row per image of the data set ({n_images} "
                       f"images, in its order): {'; '.join(bad)}")

  def features(self, images, layer, *, layers=()):
    self.check_layers([layer])
    n = len(images)
    self.check_images(n, [layer])
    if self.path.is_dir():
      x = np.load(self.path / f"{layer}.npy", mmap_mode="r", allow_pickle=False)
    else:
      with np.load(self.path, allow_pickle=False) as z:
        x = z[layer]
    if x.ndim == 2:
      x = x.reshape(x.shape[0], 1, 1, x.shape[1])
    if x.dtype != np.float32:
      x = np.asarray(x, np.float32)
    return x


def _npy_header(f, where: str) -> _Member:
  """The shape and dtype of an ``.npy`` file or zip member without reading its data."""
  opened = None
  try:
    if isinstance(f, (str, os.PathLike)):
      f = opened = open(f, "rb")
    version = np.lib.format.read_magic(f)
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, _, dtype = reader(f)
  except (ValueError, OSError) as e:
    raise ValueError(f"{where} is not a readable .npy array: {e}") from None
  finally:
    if opened is not None:
      opened.close()
  if dtype.hasobject:
    raise ValueError(f"{where} holds Python objects; features must be numbers")
  return _Member(tuple(int(s) for s in shape), dtype)


def is_weights_checkpoint(path: str | os.PathLike) -> bool:
  p = Path(path)
  return (p / "metadata.json").is_file() and (p / "params").is_dir()


def labels(paths: Sequence[str], *, taken: Sequence[str] = (ENERGY_LABEL,)) -> dict[str, str]:
  """``{label: path}``: each path's folder (or ``.npz`` stem) name, made unique with a suffix."""
  out: dict[str, str] = {}
  for p in paths:
    q = Path(p)
    base = (q.stem if q.suffix == ".npz" else q.resolve().name) or "features"
    label, i = base, 2
    while label in out or label in taken:
      label, i = f"{base}-{i}", i + 1
    out[label] = str(p)
  return out


def open_spaces(*, weights: Sequence[str] = (), features: Sequence[str] = (),
                energy: bool = False, cache=None, layer_order: Sequence[str] = ()
                ) -> dict[str, FeatureSpace]:
  """``{label: FeatureSpace}`` for weights checkpoints, precomputed features and the energy
  model, in that order; labels are folder names made unique."""
  spaces: dict[str, FeatureSpace] = {}
  named = labels(list(weights) + list(features))
  for (label, path), is_weights in zip(named.items(), [True] * len(weights) + [False] * len(
      features)):
    if is_weights:
      spaces[label] = NetworkSpace(path, label=label, cache=cache)
    else:
      spaces[label] = PrecomputedSpace(path, label=label, layer_order=layer_order)
  if energy:
    spaces[ENERGY_LABEL] = EnergySpace()
  return spaces


def resolve_layers(spaces: Mapping[str, FeatureSpace], names: Sequence[str]
                   ) -> dict[str, tuple[str, ...]]:
  """The layers each space is fitted on: ``names`` that the space has (each name must belong to
  some space, and each space must get at least one), ``("all",)`` for every layer, or every
  layer of a precomputed space when ``names`` is empty. The energy model has its one layer."""
  names = tuple(names)
  out: dict[str, tuple[str, ...]] = {}
  nets = {l: s for l, s in spaces.items() if not isinstance(s, EnergySpace)}
  if names and names != ("all",):
    known = set().union(*(s.layers for s in nets.values())) if nets else set()
    unknown = [n for n in names if n not in known]
    if unknown:
      valid = "; ".join(f"{l} ({s.arch}): {', '.join(s.layers)}" for l, s in nets.items())
      raise ValueError(f"unknown layer(s) {unknown}: no feature space has them. Valid layers: "
                       f"{valid}")
  for label, s in spaces.items():
    if isinstance(s, EnergySpace):
      out[label] = s.layers
    elif names == ("all",) or (not names and isinstance(s, PrecomputedSpace)):
      out[label] = s.layers
    elif not names:
      raise ValueError(f"no layers given for {label} ({s.arch}); pass --layers (e.g. "
                       f"{','.join(s.layers[:2])}) or --layers all")
    else:
      mine = s.check_layers([n for n in names if n in s.layers]) if any(
          n in s.layers for n in names) else ()
      if not mine:
        raise ValueError(f"{label} ({s.arch}) has none of the layers {list(names)}; its layers: "
                         f"{', '.join(s.layers)}")
      out[label] = mine
  return out
