"""Digit domains for domain generalization: train on one, test on the unseen others.

Offline default (everything installs with the package dependencies, nothing is downloaded):

- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (UCI optdigits, 0-16 ink), upsampled to
  a ``digit_fraction`` of the canvas (bilinear), centred, white on black, tiled to RGB. The source.
- ``mnistm``: the MNIST-M recipe of Ganin & Lempitsky (2015): a random patch of a natural colour
  photograph, ``out = |patch - digit|`` per channel. Their photographs (BSDS500) are replaced by
  the photographs bundled with scikit-image (astronaut, chelsea, coffee, rocket, hubble, ...),
  downscaled by 2 so a 32x32 patch holds texture rather than a smooth gradient.
- ``inverted``: contrast and colour inversion: a dark random-colour digit on a bright random-colour
  background.
- ``blurnoise``: Gaussian blur (sigma 1-2 px at 32 px) and Gaussian pixel noise (sd 0.15), at a
  reduced random contrast.
- ``clutter``: cluttered background: 4-6 random fragments of other digits at random places and
  intensities, the digit drawn on top.

Every domain is built from the same digits with the same train/test split (``test_fraction`` of
each class held out), so a model trained on ``digits`` meets, in every target's test split, both a
new style and digit instances it never saw.

Real domains: ``mnist``, ``mnist_m``, ``svhn``, ``usps`` load from a data directory, never from the
network: a local ``<data_dir>/<name>.npz`` with ``x_train, y_train, x_test, y_test`` (images
``(n, H, W)`` or ``(n, H, W, C)``, uint8 0-255 or float 0-1) wins; otherwise ``mnist`` and
``svhn`` (tfds ``svhn_cropped``) are read with ``tfds.data_source`` from an already prepared
tensorflow-datasets directory (ArrayRecord files, ``download=False``). tfds has no MNIST-M or USPS,
so those need the .npz.

All images returned are ``(n, size, size, 3)`` float32 in [0, 1]; labels ``(n,)`` int32.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SYNTHETIC = ("digits", "mnistm", "inverted", "blurnoise", "clutter")
EXTERNAL = ("mnist", "mnist_m", "svhn", "usps")
_TFDS_NAMES = {"mnist": "mnist", "svhn": "svhn_cropped"}
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
           "retina", "brick", "grass", "gravel", "camera", "coins", "moon")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class DigitDomain:
  """One domain's train and test split.

  x_train: (n_train, size, size, 3) float32 in [0, 1]; y_train: (n_train,) int32 in 0..9;
  x_test, y_test likewise.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  def __post_init__(self):
    for split in ("train", "test"):
      x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
      if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"DigitDomain {self.name!r}: x_{split} must be (n, size, size, 3), got "
                         f"{x.shape}")
      if y.shape != x.shape[:1]:
        raise ValueError(f"DigitDomain {self.name!r}: y_{split} {y.shape} does not match "
                         f"x_{split} {x.shape}")

  @property
  def size(self) -> int:
    return int(self.x_train.shape[1])


# ---- the source: scikit-learn digits -------------------------------------------------------------


def sklearn_digits(*, size: int = 32,
                   digit_fraction: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's handwritten digits, upsampled and centred on a black canvas.

  Returns:
    ``(images (1797, size, size) float32 in [0, 1], labels (1797,) int32)``.
  """
  from skimage.transform import resize
  from sklearn.datasets import load_digits

  if size < 8 or not 0 < digit_fraction <= 1:
    raise ValueError(f"sklearn_digits: need size >= 8 and 0 < digit_fraction <= 1, got "
                     f"size={size}, digit_fraction={digit_fraction}")
  bunch = load_digits()
  small = bunch.images.astype(np.float32) / 16.0  # (n, 8, 8)
  inner = max(8, int(round(size * digit_fraction)))
  big = resize(small, (small.shape[0], inner, inner), order=1, anti_aliasing=False,
               preserve_range=True).astype(np.float32)
  out = np.zeros((small.shape[0], size, size), np.float32)
  top = (size - inner) // 2
  out[:, top:top + inner, top:top + inner] = np.clip(big, 0, 1)
  return out, bunch.target.astype(np.int32)


def stratified_split(labels: np.ndarray, *, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Train and test indices with ``test_fraction`` of every class in test (sorted index arrays)."""
  if not 0 < test_fraction < 1:
    raise ValueError(f"stratified_split: test_fraction must be in (0, 1), got {test_fraction}")
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    test.append(idx[:max(1, int(round(test_fraction * idx.size)))])
  test = np.sort(np.concatenate(test))
  train = np.setdiff1d(np.arange(labels.size), test)
  return train, test


# ---- shifted domains (pure functions of grayscale digits (n, H, W) in [0, 1] and an rng) --------


def photo_bank(*, downscale: int = 2) -> list[np.ndarray]:
  """Natural photographs bundled with scikit-image, RGB float32 [0, 1], downscaled."""
  import skimage.data
  from skimage.transform import rescale

  photos = []
  for name in _PHOTOS:
    img = np.asarray(getattr(skimage.data, name)(), np.float32) / 255.0
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    if downscale > 1:
      img = rescale(img, 1 / downscale, channel_axis=-1, anti_aliasing=True).astype(np.float32)
    photos.append(img)
  return photos


def _rgb(gray: np.ndarray) -> np.ndarray:
  return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


def mnist_m(gray: np.ndarray, rng: np.random.Generator, *,
            photos: Sequence[np.ndarray]) -> np.ndarray:
  """MNIST-M: ``|photo patch - digit|`` per channel. gray (n, H, W) -> (n, H, W, 3)."""
  n, h, w = gray.shape
  out = np.empty((n, h, w, 3), np.float32)
  which = rng.integers(len(photos), size=n)
  for i in range(n):
    p = photos[which[i]]
    y = rng.integers(p.shape[0] - h + 1)
    x = rng.integers(p.shape[1] - w + 1)
    out[i] = np.abs(p[y:y + h, x:x + w] - gray[i, ..., None])
  return out


def inverted(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Dark random-colour digit on a bright random-colour background. (n, H, W) -> (n, H, W, 3)."""
  n = gray.shape[0]
  background = rng.uniform(0.6, 1.0, size=(n, 1, 1, 3)).astype(np.float32)
  ink = rng.uniform(0.0, 0.4, size=(n, 1, 1, 3)).astype(np.float32)
  return background + (ink - background) * gray[..., None]


def blur_noise(gray: np.ndarray, rng: np.random.Generator, *, noise: float = 0.15) -> np.ndarray:
  """Blurred, lower-contrast, noisy digits. (n, H, W) -> (n, H, W, 3)."""
  from scipy.ndimage import gaussian_filter

  n = gray.shape[0]
  sigma = rng.uniform(1.0, 2.0, size=n)
  blurred = np.stack([gaussian_filter(g, s, mode="constant") for g, s in zip(gray, sigma)])
  peak = np.maximum(blurred.max(axis=(1, 2), keepdims=True), 1e-6)
  contrast = rng.uniform(0.4, 0.8, size=(n, 1, 1))
  base = rng.uniform(0.1, 0.2, size=(n, 1, 1))
  x = base + contrast * blurred / peak + rng.normal(0.0, noise, size=blurred.shape)
  return _rgb(np.clip(x, 0.0, 1.0))


def clutter(gray: np.ndarray, rng: np.random.Generator, *, pool: np.ndarray | None = None,
            n_fragments: tuple[int, int] = (4, 7), fragment: float = 0.35) -> np.ndarray:
  """Digits over fragments of other digits. (n, H, W) -> (n, H, W, 3).

  pool: (m, H, W) digits to cut fragments from (default: ``gray`` itself).
  """
  pool = gray if pool is None else pool
  n, h, w = gray.shape
  f = max(2, int(round(fragment * h)))
  out = np.zeros((n, h, w), np.float32)
  for i in range(n):
    for _ in range(rng.integers(*n_fragments)):
      src = pool[rng.integers(pool.shape[0])]
      sy, sx = rng.integers(h - f + 1), rng.integers(w - f + 1)
      dy, dx = rng.integers(h - f + 1), rng.integers(w - f + 1)
      patch = rng.uniform(0.3, 0.8) * src[sy:sy + f, sx:sx + f]
      out[i, dy:dy + f, dx:dx + f] = np.maximum(out[i, dy:dy + f, dx:dx + f], patch)
    out[i] = np.maximum(out[i], gray[i])
  return _rgb(out)


def make_domains(*, size: int = 32, seed: int = 0, test_fraction: float = 0.4,
                 domains: Sequence[str] = SYNTHETIC, data_dir: str | Path | None = None,
                 progress: Callable | None = None) -> dict[str, DigitDomain]:
  """Builds the requested domains: synthetic ones from scikit-learn digits, real ones from data_dir.

  Args:
    size: images are (size, size, 3).
    seed: split and rendering seed (a domain's rendering depends only on seed and its name).
    test_fraction: fraction of every class held out for testing (synthetic domains).
    domains: names from ``SYNTHETIC`` and ``EXTERNAL``.
    data_dir: where ``EXTERNAL`` domains are read from.
    progress: optional wrapper for the loop over domains (e.g. ``tqdm``).

  Returns:
    ``{name: DigitDomain}`` in the order of ``domains``.
  """
  unknown = [d for d in domains if d not in SYNTHETIC + EXTERNAL]
  if unknown:
    raise ValueError(f"make_domains: unknown domains {unknown}; available "
                     f"{list(SYNTHETIC + EXTERNAL)}")
  gray, labels = sklearn_digits(size=size)
  train, test = stratified_split(labels, test_fraction=test_fraction, seed=seed)
  photos = photo_bank() if "mnistm" in domains else None
  out = {}
  for name in (progress(domains) if progress else domains):
    if name in EXTERNAL:
      out[name] = load_external(name, data_dir=data_dir, size=size)
      continue
    # A fixed, name-dependent stream: a domain looks the same whichever others are built with it.
    rng = np.random.default_rng([seed, SYNTHETIC.index(name)])
    if name == "digits":
      x = _rgb(gray)
    elif name == "mnistm":
      x = mnist_m(gray, rng, photos=photos)
    elif name == "inverted":
      x = inverted(gray, rng)
    elif name == "blurnoise":
      x = blur_noise(gray, rng)
    else:
      x = clutter(gray, rng)
    out[name] = DigitDomain(name=name, x_train=x[train], y_train=labels[train],
                            x_test=x[test], y_test=labels[test])
  return out


# ---- real domains from a data directory --------------------------------------------------------


def _standardize(x: np.ndarray, size: int) -> np.ndarray:
  """(n, H, W[, C]) uint8 or float -> (n, size, size, 3) float32 in [0, 1]."""
  import jax

  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"digit images must be (n, H, W), (n, H, W, 1) or (n, H, W, 3), got {x.shape}")
  x = x.astype(np.float32)
  if x.size and x.max() > 1.0 + 1e-6:
    x = x / 255.0
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (size, size):
    out = np.empty((x.shape[0], size, size, 3), np.float32)
    for s in range(0, x.shape[0], 4096):
      chunk = x[s:s + 4096]
      out[s:s + 4096] = np.asarray(jax.image.resize(chunk, (chunk.shape[0], size, size, 3),
                                                    method="linear", antialias=True))
    x = out
  return np.clip(x, 0.0, 1.0)


def load_external(name: str, *, data_dir: str | Path | None, size: int = 32) -> DigitDomain:
  """A real digit domain from ``data_dir`` (``<name>.npz`` or a prepared tfds directory)."""
  if name not in EXTERNAL:
    raise ValueError(f"load_external: unknown domain {name!r}; available {list(EXTERNAL)}")
  if data_dir is None:
    raise ValueError(f"domain {name!r} needs a data directory holding {name}.npz or a prepared "
                     f"tensorflow-datasets copy; pass data_dir (--data-dir)")
  data_dir = Path(data_dir)
  npz = data_dir / f"{name}.npz"
  if npz.exists():
    with np.load(npz) as f:
      missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
      if missing:
        raise ValueError(f"{npz}: missing arrays {missing}; expected x_train, y_train, x_test, "
                         f"y_test")
      arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  elif name in _TFDS_NAMES:
    arrays = _load_tfds(_TFDS_NAMES[name], data_dir)
  else:
    raise FileNotFoundError(f"domain {name!r}: {npz} not found (tensorflow-datasets has no "
                            f"{name!r}; save it as an .npz with x_train, y_train, x_test, y_test)")
  return DigitDomain(name=name, x_train=_standardize(arrays["x_train"], size),
                     y_train=np.asarray(arrays["y_train"]).astype(np.int32).reshape(-1) % 10,
                     x_test=_standardize(arrays["x_test"], size),
                     y_test=np.asarray(arrays["y_test"]).astype(np.int32).reshape(-1) % 10)


def _load_tfds(tfds_name: str, data_dir: Path) -> dict[str, np.ndarray]:
  """Reads a prepared tfds data set (ArrayRecord) with ``tfds.data_source``; never downloads."""
  import tensorflow_datasets as tfds

  arrays = {}
  for split in ("train", "test"):
    try:
      source = tfds.data_source(tfds_name, split=split, data_dir=str(data_dir), download=False)
    except Exception as e:  # tfds raises several types for "not prepared here"
      raise FileNotFoundError(f"tensorflow-datasets {tfds_name!r} split {split!r} is not prepared "
                              f"under {data_dir} (no download is attempted): {e}") from e
    records = [source[i] for i in range(len(source))]
    arrays[f"x_{split}"] = np.stack([np.asarray(r["image"]) for r in records])
    arrays[f"y_{split}"] = np.asarray([int(r["label"]) for r in records])
  return arrays
