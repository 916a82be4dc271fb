"""Batched, jitted extraction of named CNN layers, and a disk cache of one layer per file.

``extract`` returns features in memory. ``extract_to_dir`` streams them batch by batch into one
memory-mapped ``.npy`` per layer, so ``n`` is bounded by disk, not memory. ``FeatureCache`` keeps
such files keyed by the weights' and the images' hashes: a sweep over 13 layers computes all
missing layers in one pass over the images and then reads one layer at a time, memory-mapped.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmouse import _io
from jaxmouse.data.stimuli import IMAGE_RANGE, check_images  # noqa: F401 (part of this API)
from jaxmouse.models import zoo
from jaxmouse.weights import Weights, load as load_weights

_CHECK_CHUNK = 1024

def _check_sizes(arch: str, layers: Sequence[str], shape: tuple[int, ...]) -> None:
  zoo.check_sizes(arch, layers, shape[1], shape[2])


@functools.lru_cache(maxsize=None)
def compiled_forward(arch: str, layers: tuple[str, ...], normalization: str):
  """``jit(apply)`` for one (arch, layers, normalization); jax caches one compile per shape."""
  return jax.jit(functools.partial(zoo.apply, arch=arch, layers=layers,
                                   normalization=normalization))


@functools.lru_cache(maxsize=2)
def _device_params(weights: Weights):
  # Weights hash by identity (eq=False), so repeated extracts reuse the transferred params.
  return jax.device_put(weights.params)


def iter_features(weights: Weights, images, *, layers: Sequence[str], batch_size: int = 32,
                  progress: bool = False) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Yields ``(start, {layer: (b, h, w, c) float32})`` for consecutive batches of ``images``.

  Every batch has the same shape (the last is zero-padded, then cut), so the forward compiles
  once per image shape. The next batch is dispatched before the current one is copied to host.
  """
  layers = zoo.check_layers(weights.arch, layers)
  images = check_images(images)
  _check_sizes(weights.arch, layers, tuple(images.shape))
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = images.shape[0]
  b = min(batch_size, n)
  forward = compiled_forward(weights.arch, layers, weights.normalization)
  params = _device_params(weights)

  def dispatch(start):
    x = np.asarray(images[start:start + b], np.float32)
    if len(x) < b:
      x = np.concatenate([x, np.zeros((b - len(x),) + x.shape[1:], np.float32)])
    return start, forward(params, x)

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=n, unit="img", desc=f"{weights.arch} {','.join(layers)}")
  try:
    pending = dispatch(0)
    for nxt in range(b, n + b, b):
      start, out = pending
      pending = dispatch(nxt) if nxt < n else None
      m = min(b, n - start)
      yield start, {k: np.asarray(v)[:m] for k, v in out.items()}
      if bar is not None:
        bar.update(m)
  finally:
    if bar is not None:
      bar.close()


def feature_shapes(weights: Weights, image_shape: Sequence[int], layers: Sequence[str]
                   ) -> dict[str, tuple[int, ...]]:
  """``{layer: (n, h, w, c)}`` for images of ``image_shape`` ``(n, H, W[, 3])``."""
  n, h, w = image_shape[:3]
  return {l: (n,) + zoo.output_shape(weights.arch, l, h, w)
          for l in zoo.check_layers(weights.arch, layers)}


def extraction_bytes(arch: str, image_shape: Sequence[int], layers: Sequence[str], *,
                     batch_size: int, in_memory: bool = False) -> int:
  """A lower bound on the memory (bytes) that extracting ``layers`` of ``image_shape`` needs.

  Counts the parameters on host and device, and for two batches in flight the input, the largest
  activation up to the deepest layer (as a layer's input and output) and the kept outputs;
  ``in_memory`` (``extract``) adds every image's outputs. Streaming to disk (``extract_to_dir``,
  ``FeatureCache``) keeps only the batches.
  """
  layers = zoo.check_layers(arch, layers)
  n, h, w = (int(s) for s in image_shape[:3])
  b = max(1, min(int(batch_size), n))
  params = zoo.n_params(arch)
  names = zoo.layers(arch)
  deepest = max(names.index(l) for l in layers)
  shapes = zoo.output_shapes(arch, h, w)
  sizes = {l: math.prod(shapes[l]) for l in names[:deepest + 1] if l in shapes}
  kept = sum(sizes[l] for l in layers)
  per_batch = b * (h * w * 3 + 2 * max(sizes.values()) + kept)
  return 4 * (2 * params + 2 * per_batch + (n * kept if in_memory else 0))


def extract(weights: Weights, images, *, layers: Sequence[str], batch_size: int = 32,
            progress: bool = False) -> dict[str, np.ndarray]:
  """Features of ``images`` at the named layers, in memory.

  Args:
    weights: a ``Weights`` (``jaxmouse.weights.load``, ``random_init``, ...).
    images: ``(n, H, W)`` or ``(n, H, W, 3)`` on a 0-255 scale (any real dtype; memmaps welcome).
    layers: names from ``jaxmouse.models.zoo.layers(arch)`` (or a comma-separated string).
    batch_size: images per jitted call.
    progress: show a tqdm bar.

  Returns:
    ``{layer: (n, h, w, c) float32}``.
  """
  if not isinstance(weights, Weights):
    raise ValueError(f"weights must be a jaxmouse.weights.Weights, got {type(weights).__name__}; "
                     "load a checkpoint folder with jaxmouse.weights.load(dir)")
  layers = zoo.check_layers(weights.arch, layers)
  images = check_images(images)
  _check_sizes(weights.arch, layers, tuple(images.shape))
  out = {l: np.empty(s, np.float32) for l, s in feature_shapes(weights, images.shape, layers).items()}
  for start, feats in iter_features(weights, images, layers=layers, batch_size=batch_size,
                                    progress=progress):
    for l, f in feats.items():
      out[l][start:start + len(f)] = f
  return out


def extract_to_dir(weights: Weights, images, out_dir: str | os.PathLike, *,
                   layers: Sequence[str], batch_size: int = 32, progress: bool = False
                   ) -> dict[str, Path]:
  """Streams the features into ``out_dir/<layer>.npy`` (one pass, bounded memory).

  Each file is written to a temporary memmap and renamed into place only when complete; layers
  already present in ``out_dir`` are overwritten. Returns ``{layer: path}``.
  """
  layers = zoo.check_layers(weights.arch, layers)
  images = check_images(images)
  _check_sizes(weights.arch, layers, tuple(images.shape))
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  _io.clean_stale_temporaries(out_dir)  # layers of a killed extraction
  shapes = feature_shapes(weights, images.shape, layers)
  with contextlib.ExitStack() as stack:
    tmp = {l: stack.enter_context(_io.atomic_path(out_dir / f"{l}.npy")) for l in layers}
    maps = {l: _open_memmap(tmp[l], shapes[l]) for l in layers}
    for start, feats in iter_features(weights, images, layers=layers, batch_size=batch_size,
                                      progress=progress):
      for l, f in feats.items():
        maps[l][start:start + len(f)] = f
    for m in maps.values():
      m.flush()
    del maps
  return {l: out_dir / f"{l}.npy" for l in layers}


def _open_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
  """A new float32 ``.npy`` memmap whose blocks are reserved on disk first: a full disk is an
  OSError (ENOSPC) here, not a crash (SIGBUS) when a page of a sparse file is written later."""
  m = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
  if hasattr(os, "posix_fallocate"):
    with open(path, "r+b") as f:
      try:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
      except OSError as e:
        if e.errno == errno.ENOSPC:
          raise OSError(e.errno, e.strerror, str(path)) from None
        # file systems without fallocate: write as before
  return m


def images_fingerprint(images) -> str:
  """sha256 of the images' shape and float32 values (chunked; memmaps are not loaded whole)."""
  images = np.asarray(images) if not hasattr(images, "shape") else images
  h = hashlib.sha256(f"{tuple(images.shape)}".encode())
  for start in range(0, images.shape[0], _CHECK_CHUNK):
    h.update(np.ascontiguousarray(images[start:start + _CHECK_CHUNK], np.float32).tobytes())
  return h.hexdigest()


class FeatureCache:
  """Layer features on disk: ``root/<weights hash>-<images hash>/<layer>.npy``, memory-mapped.

  ``cache.layer(weights, images, "conv3_1")`` returns an ``(n, h, w, c)`` float32 memmap; a miss
  computes it. ``cache.ensure(weights, images, layers)`` computes all missing ``layers`` in one
  streaming pass over the images, so a sweep calls it once and then reads layer by layer.
  ``weights`` is a ``Weights`` or a checkpoint folder. Processes sharing a cache (shards of a
  sweep) extract a missing layer once: they take turns on a lock file in its folder, and a
  layer file, once there, is never replaced.
  """

  def __init__(self, root: str | os.PathLike, *, batch_size: int = 32, progress: bool = False):
    self.root = Path(root)
    self.batch_size = batch_size
    self.progress = progress
    self._images_keys: dict[int, tuple[object, str]] = {}

  def _weights(self, weights) -> Weights:
    if isinstance(weights, Weights):
      return weights
    if isinstance(weights, (str, os.PathLike)):
      meta = Path(weights) / "metadata.json"
      stamp = meta.stat().st_mtime_ns if meta.exists() else None
      return _load_cached(str(Path(weights).resolve()), stamp)
    raise ValueError(f"weights must be a Weights or a checkpoint folder, got {type(weights).__name__}")

  def _images_key(self, images) -> str:
    # Hashing n images costs a pass over them; remember the key for the same array object.
    hit = self._images_keys.get(id(images))
    if hit is not None and hit[0] is images:
      return hit[1]
    key = images_fingerprint(images)
    self._images_keys[id(images)] = (images, key)
    return key

  def folder(self, weights, images) -> Path:
    """The folder holding this (weights, images) pair's layers."""
    w = self._weights(weights)
    return self.root / f"{w.arch}-{w.fingerprint[:16]}-{self._images_key(images)[:16]}"

  def ensure(self, weights, images, layers: Sequence[str]) -> dict[str, Path]:
    """Computes and stores every missing layer of ``layers`` in one pass; returns their paths."""
    w = self._weights(weights)
    layers = zoo.check_layers(w.arch, layers)
    images = check_images(images)
    folder = self.folder(w, images)
    missing = lambda: [l for l in layers if not (folder / f"{l}.npy").is_file()]
    if missing():
      folder.mkdir(parents=True, exist_ok=True)
      # Processes that need the same layers (the shards of a sweep) take turns: the first
      # extracts them, the next finds them there, and no layer is replaced while one reads it.
      with _io.taking_turns(folder / ".extracting.lock"):
        _io.clean_stale_temporaries(folder)
        if missing():
          extract_to_dir(w, images, folder, layers=missing(), batch_size=self.batch_size,
                         progress=self.progress)
        info = folder / "info.json"
        if not info.exists():
          with _io.atomic_path(info) as tmp:
            Path(tmp).write_text(json.dumps({
                "arch": w.arch, "normalization": w.normalization, "weights_sha256": w.fingerprint,
                "weights_metadata": w.metadata, "images_shape": list(images.shape),
                "images_sha256": self._images_key(images)}, indent=2) + "\n")
    return {l: folder / f"{l}.npy" for l in layers}

  def clean(self) -> None:
    """Removes temporaries that killed extractions left in any folder of the cache."""
    if self.root.is_dir():
      for folder in self.root.iterdir():
        if folder.is_dir():
          _io.clean_stale_temporaries(folder)

  def layer(self, weights, images, layer: str) -> np.ndarray:
    """``(n, h, w, c)`` float32 features of one layer, memory-mapped read-only."""
    path = self.ensure(weights, images, [layer])[layer]
    return np.load(path, mmap_mode="r")


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, stamp) -> Weights:
  del stamp  # part of the cache key: a rewritten checkpoint is loaded again
  return load_weights(path)
