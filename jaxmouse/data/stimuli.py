"""Natural stimuli from the photographs that install with scikit-image, and the one check every
feature space (CNN or energy model) applies to the images it is given.

The studies show grayscale natural photographs (ImageNet) at low resolution (36x64 for the mouse
data sets of Cadena et al.). ``natural_images`` makes any number of such images from the sample
photographs of ``skimage.data`` (no download): a random crop at a random position and scale, with
the target aspect ratio, optionally mirrored, converted to gray and resized with antialiasing.
The result is a function of ``(n, shape, seed)`` only.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from jaxmouse import JaxmouseWarning

# Images may overshoot 0-255 a little after interpolation; beyond this margin the scale is wrong.
IMAGE_RANGE = (-25.5, 280.5)
_CHECK_CHUNK = 1024

# Photographs among skimage's bundled samples (drawings, microscopy and binary images left out).
PHOTOGRAPHS = ("astronaut", "camera", "cat", "coffee", "coins", "rocket", "moon", "brick", "grass",
               "gravel", "hubble_deep_field", "clock", "stereo_motorcycle")


def check_images(images, *, name: str = "images"):
  """Validates images ``(n, H, W)`` or ``(n, H, W, 3)`` on a 0-255 scale; returns them unchanged.

  Refuses other shapes, non-real dtypes, NaN or inf, and values far outside 0-255 (ValueError
  naming ``name``, the shape or the range); warns when no value exceeds 1, the sign of images
  on a 0-1 scale, which every feature space here would see as nearly black. Reads
  memory-mapped arrays in chunks, so a large file is never loaded whole.
  """
  if not hasattr(images, "shape") or not hasattr(images, "dtype"):
    images = np.asarray(images)
  shape = tuple(images.shape)
  if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] == 3)):
    raise ValueError(f"{name} must be (n, H, W) grayscale or (n, H, W, 3) RGB on a 0-255 scale, "
                     f"got shape {shape}")
  if shape[0] == 0:
    raise ValueError(f"{name} is empty: shape {shape}")
  if not (np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_) or \
      np.issubdtype(images.dtype, np.complexfloating):
    raise ValueError(f"{name} must be real numbers, got dtype {images.dtype}")
  lo, hi = np.inf, -np.inf
  for start in range(0, shape[0], _CHECK_CHUNK):
    chunk = np.asarray(images[start:start + _CHECK_CHUNK], np.float32)
    if not np.isfinite(chunk).all():
      bad = start + np.flatnonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1))
      raise ValueError(f"{name} {shape} contains NaN or inf in {len(bad)} image(s), first indices "
                       f"{bad[:10].tolist()}")
    lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
  if lo < IMAGE_RANGE[0] or hi > IMAGE_RANGE[1]:
    raise ValueError(f"{name} {shape} values span [{lo:g}, {hi:g}], far outside the expected "
                     "0-255 scale")
  if hi <= 1.0:
    # One text per array (no name), so that the checks of one array along a pipeline warn once.
    warnings.warn(f"images {shape} span [{lo:g}, {hi:g}]: jaxmouse expects images on a 0-255 "
                  "scale (multiply 0-1 images by 255)", JaxmouseWarning)
  return images


@functools.lru_cache(maxsize=None)
def photograph(name: str) -> np.ndarray:
  """One sample photograph as gray float32 ``(H, W)`` on a 0-255 scale."""
  import skimage.data
  from skimage.color import rgb2gray

  if name not in PHOTOGRAPHS:
    raise ValueError(f"unknown photograph {name!r}; choose from {PHOTOGRAPHS}")
  img = getattr(skimage.data, name)()
  img = img[0] if isinstance(img, tuple) else img  # stereo pairs: the left view
  img = np.asarray(img)
  if img.ndim == 3:
    img = rgb2gray(img[..., :3]) * 255.0  # rgb2gray returns 0-1
  out = img.astype(np.float32)
  out.setflags(write=False)
  return out


@functools.lru_cache(maxsize=64)
def _shrunk(name: str, max_height: int) -> np.ndarray:
  """The photograph shrunk (never enlarged) so its height is at most ``max_height``."""
  from skimage.transform import resize

  img = photograph(name)
  if img.shape[0] <= max_height:
    return img
  scale = max_height / img.shape[0]
  shape = (max_height, max(1, round(img.shape[1] * scale)))
  return resize(img, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)


def natural_images(n: int, shape: tuple[int, int], *, seed: int = 0, min_scale: float = 0.3,
                   photographs: tuple[str, ...] = PHOTOGRAPHS, mirror: bool = True) -> np.ndarray:
  """``n`` gray natural images ``(n, h, w)`` float32 on a 0-255 scale.

  Each image is a crop of a photograph chosen at random; the crop has the aspect ratio ``h:w``,
  a height between ``min_scale`` and 1 of the largest such crop, a uniformly random position, and
  is mirrored left-right with probability 1/2 when ``mirror``.
  """
  h, w = (int(s) for s in shape)
  if n < 1 or h < 1 or w < 1:
    raise ValueError(f"natural_images needs n >= 1 and a positive shape, got n={n}, shape={shape}")
  if not 0 < min_scale <= 1:
    raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
  from skimage.transform import resize

  # Crops are cut from copies shrunk to 4x the target, so resizing each crop is cheap.
  sources = [_shrunk(p, 4 * h) for p in photographs]
  out = np.empty((n, h, w), np.float32)
  for i in range(n):
    # One stream per image: image i is the same whatever n is.
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x57141, i]))
    which, scale, flip = rng.integers(len(sources)), rng.uniform(min_scale, 1.0), rng.random() < 0.5
    pos = rng.uniform(size=2)
    src = sources[which]
    full_h = min(src.shape[0], src.shape[1] * h / w)  # the largest crop of aspect h:w
    ch = max(h // 2, int(round(full_h * scale))) if full_h >= h // 2 else int(full_h)
    cw = min(src.shape[1], max(1, int(round(ch * w / h))))
    ch = min(ch, src.shape[0])
    top = int(pos[0] * (src.shape[0] - ch))
    left = int(pos[1] * (src.shape[1] - cw))
    crop = src[top:top + ch, left:left + cw]
    if mirror and flip:
      crop = crop[:, ::-1]
    out[i] = resize(crop, (h, w), anti_aliasing=(ch > h), preserve_range=True)
  return np.clip(out, 0.0, 255.0)
