"""The classical subunit energy model as a feature space: a fixed bank of Gabor quadrature pairs.

The bank follows the companion code of Cadena et al. 2019 in its filters (kernel sizes 6, 11 and
21 pixels; 1, 2 and 3 cycles per kernel size, wavelength = size / cycles, leaving out the one
wavelength of 2 px, at the Nyquist limit; 8 orientations; quadrature pairs, phases 0 and pi/2:
64 pairs) and the classical energy model in how they are used:

- positions are dense (stride 2 by default, so that neighbouring filters of every size overlap
  and a receptive field anywhere is covered; the companion code's stride 6 left the small
  filters barely overlapping on 36x64 images);
- "simple" subunits are half-wave rectified filters of both polarities, ReLU(+-even) and
  ReLU(+-odd) (phases 0, pi/2, pi and 3 pi/2), so ON and OFF subunits are both present;
- "energy" (complex) units are sqrt(even^2 + odd^2) of each pair;
- every kernel is zero mean by subtracting its Gaussian-weighted mean (the carrier minus its
  mean under the envelope, times the envelope), so it has no response to uniform light and no
  DC pedestal over the kernel square; unit L2 norm. The envelope has sigma = size / 4 and is
  drawn out to +-3 sigma (the nominal size spans +-2 sigma, where a cut envelope is still at 13%
  of its peak), centred on a pixel; smaller kernels are zero-padded to the largest so that the
  whole bank is one strided convolution with "SAME" padding.

``features(images)`` returns ``(n, ceil(H / stride), ceil(W / stride), c)`` float32 maps, used by
the fit engine like any CNN layer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmouse.data.stimuli import check_images

KINDS = ("simple", "energy", "both")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaborBank:
  """Parameters of the fixed bank (defaults: the studies' filters, 64 quadrature pairs, at dense
  positions)."""
  sizes: tuple[int, ...] = (6, 11, 21)
  cycles: tuple[float, ...] = (1.0, 2.0, 3.0)
  orientations: int = 8
  stride: int = 2
  envelope: float = 0.25  # sigma of the Gaussian envelope as a fraction of the kernel size
  # Filters whose wavelength (size / cycles) is below this are left out: at 2 px (size 6, 3
  # cycles) a sampled carrier is at the Nyquist limit, and the even member of a pair can vanish.
  min_wavelength: float = 3.0

  def __post_init__(self):
    if not self.sizes or any(int(s) < 2 for s in self.sizes):
      raise ValueError(f"GaborBank.sizes must be integers >= 2, got {self.sizes}")
    if not self.cycles or any(not c > 0 for c in self.cycles):
      raise ValueError(f"GaborBank.cycles must be positive, got {self.cycles}")
    if self.orientations < 1 or self.stride < 1 or not self.envelope > 0:
      raise ValueError(f"GaborBank needs orientations >= 1, stride >= 1 and envelope > 0, got "
                       f"{self.orientations}, {self.stride}, {self.envelope}")
    if not self.scales:
      raise ValueError(f"GaborBank: no (size, cycles) with a wavelength >= {self.min_wavelength} "
                       f"px among sizes {self.sizes} and cycles {self.cycles}")

  @property
  def scales(self) -> tuple[tuple[int, float], ...]:
    """The ``(size, cycles)`` combinations in the bank (wavelength >= ``min_wavelength``)."""
    return tuple((int(s), float(c)) for s in self.sizes for c in self.cycles
                 if s / c >= self.min_wavelength)

  @property
  def n_pairs(self) -> int:
    return len(self.scales) * self.orientations


def support(size: int, envelope: float = 0.25) -> int:
  """Width of the array a Gabor of nominal ``size`` is drawn on: +-3 sigma around a centre pixel
  (the nominal square, +-2 sigma, would cut the envelope at 13% of its peak)."""
  return 2 * math.ceil(3 * envelope * size) + 1


def gabor(size: int, cycles: float, theta: float, phase: float, *, envelope: float = 0.25
          ) -> np.ndarray:
  """One Gabor kernel of nominal ``size`` (sigma = ``envelope * size``, wavelength
  ``size / cycles``), drawn on ``support(size)`` pixels, zero mean, unit L2 norm.

  The mean is removed under the envelope: ``env * (carrier - c)`` with ``c`` the
  envelope-weighted mean of the carrier, which sums to zero and vanishes where the envelope does
  (subtracting the mean over the square would leave a constant pedestal out to its corners).
  """
  n = support(size, envelope)
  r = np.arange(n) - (n - 1) / 2
  y, x = np.meshgrid(r, r, indexing="ij")
  along = x * np.cos(theta) + y * np.sin(theta)
  sigma = envelope * size
  env = np.exp(-(x**2 + y**2) / (2 * sigma**2))
  carrier = np.cos(2 * np.pi * cycles / size * along + phase)
  g = env * (carrier - np.sum(env * carrier) / np.sum(env))
  return g / np.linalg.norm(g)


@functools.cache
def kernels(bank: GaborBank = GaborBank()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The bank as one HWIO kernel ``(S, S, 1, 2 * n_pairs)`` and a description of each filter.

  Filters come in pairs: channel ``2i`` is the even (phase 0) and ``2i + 1`` the odd (phase
  pi/2) member of pair ``i``. ``info`` holds per-pair ``size``, ``cycles``, ``orientation``.
  """
  big = max(support(s, bank.envelope) for s in bank.sizes)
  out, info = [], {"size": [], "cycles": [], "orientation": []}
  for size, cyc in bank.scales:
    for o in range(bank.orientations):
      theta = np.pi * o / bank.orientations
      for phase in (0.0, np.pi / 2):
        k = np.zeros((big, big))
        n = support(size, bank.envelope)
        lo = (big - n) // 2
        k[lo:lo + n, lo:lo + n] = gabor(size, cyc, theta, phase, envelope=bank.envelope)
        out.append(k)
      info["size"].append(size)
      info["cycles"].append(cyc)
      info["orientation"].append(theta)
  hwio = np.stack(out, axis=-1)[:, :, None, :].astype(np.float32)
  return hwio, {k: np.asarray(v) for k, v in info.items()}


def n_channels(kind: str = "both", bank: GaborBank = GaborBank()) -> int:
  return {"simple": 4 * bank.n_pairs, "energy": bank.n_pairs, "both": 5 * bank.n_pairs}[kind]


@functools.partial(jax.jit, static_argnames=("stride", "kind"))
def _apply(images, kernel, *, stride: int, kind: str):
  x = (images[..., None] - 127.5) / 127.5  # (b, H, W, 1), 0-255 -> [-1, 1]
  resp = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))  # (b, h, w, 2p)
  even, odd = resp[..., 0::2], resp[..., 1::2]
  # Per pair: ReLU(+even), ReLU(+odd), ReLU(-even), ReLU(-odd) (ON and OFF subunits).
  b, h, w, _ = resp.shape
  simple = jax.nn.relu(jnp.stack([even, odd, -even, -odd], axis=-1)).reshape(b, h, w, -1)
  energy = jnp.sqrt(even**2 + odd**2)
  return {"simple": simple, "energy": energy,
          "both": jnp.concatenate([simple, energy], axis=-1)}[kind]


def features(images, *, kind: str = "both", bank: GaborBank = GaborBank(), batch_size: int = 256
             ) -> np.ndarray:
  """Energy-model features of grayscale images.

  Args:
    images: ``(n, H, W)`` on a 0-255 scale.
    kind: ``simple`` (ReLU of both phases and both polarities, ``4p`` channels: per pair
      ``+even, +odd, -even, -odd``), ``energy`` (``p`` channels) or ``both`` (simple then
      energy, ``5p`` channels); ``p = bank.n_pairs`` (64 by default).
    bank: the GaborBank.
    batch_size: images per jitted call.

  Returns:
    ``(n, ceil(H / stride), ceil(W / stride), c)`` float32.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  shape = tuple(getattr(images, "shape", np.shape(images)))
  if len(shape) != 3:
    raise ValueError(f"energy-model images must be grayscale (n, H, W), got shape {shape}")
  n, H, W = shape
  check_images(images, name="energy-model images")  # the same checks as the CNN path
  kernel = jnp.asarray(kernels(bank)[0])
  b = min(batch_size, n)
  out = np.empty((n, math.ceil(H / bank.stride), math.ceil(W / bank.stride),
                  n_channels(kind, bank)), np.float32)
  for s in range(0, n, b):
    x = np.asarray(images[s:s + b], np.float32)
    m = len(x)
    if m < b:  # one compiled shape
      x = np.concatenate([x, np.zeros((b - m, H, W), np.float32)])
    out[s:s + m] = np.asarray(_apply(x, kernel, stride=bank.stride, kind=kind))[:m]
  return out


def channel_names(kind: str = "both", bank: GaborBank = GaborBank()) -> list[str]:
  """Human-readable names of the channels of ``features(..., kind)``."""
  _, info = kernels(bank)
  pairs = [f"s{s}_c{c:g}_o{np.degrees(o):.1f}" for s, c, o in
           zip(info["size"], info["cycles"], info["orientation"])]
  simple = [f"simple_{p}_{ph}" for p in pairs for ph in ("even", "odd", "-even", "-odd")]
  energy = [f"energy_{p}" for p in pairs]
  return {"simple": simple, "energy": energy, "both": simple + energy}[kind]


def feature_shape(image_shape: Sequence[int], *, kind: str = "both",
                  bank: GaborBank = GaborBank()) -> tuple[int, int, int]:
  """``(h, w, c)`` of the features of ``(H, W)`` images."""
  H, W = image_shape[-2:]
  return (math.ceil(H / bank.stride), math.ceil(W / bank.stride), n_channels(kind, bank))
