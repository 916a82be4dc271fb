"""Natural stimuli from the photographs that install with scikit-image.

The studies show grayscale natural photographs (ImageNet) at low resolution (36x64 for the mouse
data sets of Cadena et al.). ``natural_images`` makes any number of such images from the sample
photographs of ``skimage.data`` (no download): a random crop at a random position and scale, with
the target aspect ratio, optionally mirrored, converted to gray and resized with antialiasing.
The result is a function of ``(n, shape, seed)`` only.
"""

from __future__ import annotations

import functools

import numpy as np

# Photographs among skimage's bundled samples (drawings, microscopy and binary images left out).
PHOTOGRAPHS = ("astronaut", "camera", "cat", "coffee", "coins", "rocket", "moon", "brick", "grass",
               "gravel", "hubble_deep_field", "clock", "stereo_motorcycle")


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
