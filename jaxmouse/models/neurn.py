"""NeuRN (Neural Response Normalization): a parameter-free local-contrast layer for the input.

Qazi, Jalil & Iqbal (arXiv 2505.06881, 2505.06886) normalise an image, before any network sees
it, the way they read responses of mouse visual cortex: per channel, the standard deviation of
every k x k patch (stride 1, centred on each pixel), divided by the maximum of that map:

    mu    = mean(patch)
    sigma = sqrt(mean((patch - mu)^2))        (population std, ddof=0)
    out   = sigma / max(max_{pixels} sigma, eps)

A flat region maps to 0 and a filled stroke becomes a pair of contours, so what survives a change
of colour, brightness, contrast polarity or texture of a digit domain is its shape.

Choices the papers leave open, fixed here:

- Borders: the patch around a pixel near the border is completed by mirroring the image about its
  edge, repeating the edge pixel (``mode="reflect"``, scipy.ndimage's name; ``jnp.pad``'s
  ``"symmetric"``). Zero padding would draw a frame of false contrast around every image, and that
  frame would often hold the map's maximum. ``"nearest"``, ``"mirror"`` and ``"constant"`` (zeros)
  are available with scipy.ndimage's meanings.
- k must be odd, so that the patch is centred. ``DEFAULT_K = 9`` is the k that the digits study
  (``jaxmouse compare digits --config quick``) chooses on validation data of its source domain:
  the small CNN trained on 32x32 scikit-learn digits (digit ~24 px tall) with each k, scored on a
  held-out 20% of the source's training images, mean over 3 seeds (%): k=3 94.3 +- 2.3,
  5 95.4 +- 2.6, 7 95.7 +- 2.5, 9 96.6 +- 1.2, 11 94.6 +- 4.0. No target-domain or test image
  entered the choice. The optimum is broad (5-9 lie within one seed sd), and on the unseen
  domains small k keeps thin contours and wins on MNIST-M while large k averages out pixel noise
  and wins on blur+noise; the choice is scale dependent (k ~ 0.3 x the image side here), so
  other image sizes should choose their own k on their own validation data.
- Flat images: the maximum is guarded by ``eps``, so a constant image maps to zeros, not NaN.
- Gradients: sigma uses a square root that is cut to 0 where the variance is 0, so gradients stay
  finite on flat regions (the square root's derivative is infinite there).
- Numerics: the variance is computed in two passes (patch mean first, then the mean squared
  deviation over the k^2 shifted copies), which stays accurate in float32 where the one-pass
  E[x^2] - E[x]^2 loses all digits on bright flat regions.

The output lies in [0, 1]. Networks that expect 0-255 inputs (VGG16 in ``jaxmouse.features``) get
``255 * neurn(x)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_K = 9
DEFAULT_EPS = 1e-6

# scipy.ndimage mode name -> jnp.pad mode name (both libraries use the same words differently).
_PAD_MODES = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge",
              "constant": "constant"}


def _check(x: jax.Array, k: int, mode: str) -> None:
  if not isinstance(k, int) or k < 1 or k % 2 == 0:
    raise ValueError(f"NeuRN: k must be a positive odd integer (a centred patch), got {k!r}")
  if mode not in _PAD_MODES:
    raise ValueError(f"NeuRN: mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
  if x.ndim < 3:
    raise ValueError(f"NeuRN: expected images (..., H, W, C) channel-last, got shape {x.shape}")


def local_std(x: jax.Array, *, k: int = DEFAULT_K, mode: str = "reflect") -> jax.Array:
  """Std of the k x k patch centred on every pixel, per channel.

  Args:
    x: (..., H, W, C) images, channel-last (add a trailing axis to grayscale ``(n, H, W)``).
    k: odd patch size.
    mode: border completion, scipy.ndimage naming (see the module docstring).

  Returns:
    (..., H, W, C) float array, the population std (ddof=0) of each patch.
  """
  _check(x, k, mode)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  h, w = x.shape[-3], x.shape[-2]
  r = k // 2
  pad = [(0, 0)] * (x.ndim - 3) + [(r, r), (r, r), (0, 0)]
  xp = jnp.pad(x, pad, mode=_PAD_MODES[mode])
  shifts = [xp[..., dy:dy + h, dx:dx + w, :] for dy in range(k) for dx in range(k)]
  mu = sum(shifts) / (k * k)
  var = sum((s - mu) ** 2 for s in shifts) / (k * k)
  positive = var > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def neurn(x: jax.Array, *, k: int = DEFAULT_K, eps: float = DEFAULT_EPS,
          mode: str = "reflect") -> jax.Array:
  """NeuRN: local std map per channel, divided by its maximum per image and channel.

  Args:
    x: (..., H, W, C) images, channel-last, any scale (the output does not depend on it).
    k: odd patch size.
    eps: lower bound on the maximum, so flat images map to zeros.
    mode: border completion, scipy.ndimage naming.

  Returns:
    (..., H, W, C) in [0, 1]; each image's channel has maximum 1 unless it is flat.
  """
  sigma = local_std(x, k=k, mode=mode)
  peak = jnp.max(sigma, axis=(-3, -2), keepdims=True)  # (..., 1, 1, C)
  return sigma / jnp.maximum(peak, eps)


class NeuRN(nnx.Module):
  """NeuRN as a layer to put in front of any model, e.g. ``nnx.Sequential(NeuRN(3), net)``.

  It holds no parameters: ``k``, ``eps``, ``mode`` and ``scale`` are static. Call on
  ``(..., H, W, C)`` channel-last images; returns the same shape, in ``[0, scale]``.
  """

  def __init__(self, k: int = DEFAULT_K, *, eps: float = DEFAULT_EPS, mode: str = "reflect",
               scale: float = 1.0):
    _check(jnp.zeros((1, 1, 1)), k, mode)
    if not eps > 0:
      raise ValueError(f"NeuRN: eps must be > 0, got {eps!r}")
    self.k = k
    self.eps = eps
    self.mode = mode
    self.scale = scale

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.scale * neurn(x, k=self.k, eps=self.eps, mode=self.mode)
