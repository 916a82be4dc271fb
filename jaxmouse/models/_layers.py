"""Building blocks shared by the networks of ``jaxmouse.models``: input normalization, conv,
batch norm, pooling, layer norm, and the ``nnx`` wrapper every network module uses.

Everything is NHWC / HWIO and float32, computed as torch.nn.functional computes it (same padding,
floor in pooling, the same epsilon in the norms), so a converted torchvision state dict gives the
same numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Input normalization of each weight source; images arrive on a 0-255 scale.
NORMALIZATIONS = ("torchvision", "caffe")
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision, on [0, 1]
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)  # Keras "caffe" mode, on 0-255

Params = Mapping[str, Mapping[str, jax.Array]]


def normalize(images: jax.Array, normalization: str) -> jax.Array:
  """0-255 images ``(n, H, W)`` or ``(n, H, W, 3)`` RGB -> network input ``(n, H, W, 3)``."""
  x = jnp.asarray(images, jnp.float32)
  if x.ndim == 3:
    x = jnp.repeat(x[..., None], 3, axis=-1)  # grayscale tiled to RGB
  if normalization == "torchvision":
    return (x / 255.0 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
  if normalization == "caffe":
    return x[..., ::-1] - CAFFE_MEAN_BGR
  raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")


def check_normalization(normalization: str) -> str:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
  return normalization


def check_arch_in(arch: str, known) -> str:
  """``arch`` if it is one of ``known``, else a ValueError listing them."""
  if arch not in known:
    raise ValueError(f"unknown architecture {arch!r}; expected one of {list(known)}")
  return arch


def check_layer_names(arch: str, layers: str | Sequence[str], valid: Sequence[str]
                      ) -> tuple[str, ...]:
  """Validates layer names against ``valid`` (network order); returns them in that order without
  duplicates. A comma-separated string is split."""
  if isinstance(layers, str):
    layers = [s for s in layers.split(",") if s.strip()]
  layers = [str(s).strip() for s in layers]
  unknown = [s for s in layers if s not in valid]
  if unknown:
    raise ValueError(f"unknown layer(s) {unknown} for {arch}; valid layers: {', '.join(valid)}")
  if not layers:
    raise ValueError(f"no layers requested; valid layers for {arch}: {', '.join(valid)}")
  wanted = set(layers)
  return tuple(s for s in valid if s in wanted)


def _pairs(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def _im2col_conv(x: jax.Array, kernel: jax.Array, stride, padding) -> jax.Array:
  """A conv as one matmul over gathered taps. ``(n, h, w, c_in) x (kh, kw, c_in, c_out)``."""
  kh, kw, c_in, c_out = kernel.shape
  (sh, sw), (ph, pw) = stride, padding
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  oh = (xp.shape[1] - kh) // sh + 1
  ow = (xp.shape[2] - kw) // sw + 1
  taps = [xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(taps, axis=-1)  # (n, oh, ow, kh*kw*c_in), tap-major like HWIO
  return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(kh * kw * c_in, c_out))


def _depthwise_taps(x: jax.Array, kernel: jax.Array, stride, padding) -> jax.Array:
  """A depthwise conv ``(n, h, w, c) x (kh, kw, 1, c)`` (``c_out == c``) as a sum over taps."""
  kh, kw = kernel.shape[:2]
  (sh, sw), (ph, pw) = stride, padding
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  oh = (xp.shape[1] - kh) // sh + 1
  ow = (xp.shape[2] - kw) // sw + 1
  y = jnp.zeros((x.shape[0], max(oh, 0), max(ow, 0), x.shape[-1]), x.dtype)
  for i in range(kh):
    for j in range(kw):
      y = y + xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] * kernel[i, j, 0]
  return y


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, stride=1,
           padding=0, groups: int = 1) -> jax.Array:
  """``torch.nn.functional.conv2d`` in NHWC: ``(n, h, w, c_in) -> (n, oh, ow, c_out)``.

  kernel: ``(kh, kw, c_in // groups, c_out)``; zero padding ``padding`` on each side; floor.
  """
  stride, padding = _pairs(stride), _pairs(padding)
  kh, kw = kernel.shape[:2]
  _, h, w, _ = x.shape
  oh = (h + 2 * padding[0] - kh) // stride[0] + 1
  ow = (w + 2 * padding[1] - kw) // stride[1] + 1
  if groups == 1 and (kh, kw) == (1, 1) and padding == (0, 0):
    # A 1x1 conv is a matmul over channels, fast on every backend.
    xs = x[:, ::stride[0], ::stride[1]] if stride != (1, 1) else x
    y = jnp.einsum("nhwc,co->nhwo", xs, kernel[0, 0])  # (n,h,w,c_in)x(c_in,c_out)
  elif groups > 1 and groups == x.shape[-1] and kernel.shape[2] == 1:
    # Depthwise: a sum of kh * kw shifted, channel-scaled copies, fused by XLA; its grouped
    # convolution runs 40-170x slower on CPU (MobileNetV2's blocks).
    y = _depthwise_taps(x, kernel, stride, padding)
  elif groups == 1 and min(oh, ow) <= 2:
    # XLA:CPU's convolution runs ~100x below its normal speed on output maps this small (a
    # ResNet's layer4 at 36x64 is 2x2); the same sum as one im2col matmul is fast everywhere.
    y = _im2col_conv(x, kernel, stride, padding)
  else:
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=stride,
        padding=((padding[0], padding[0]), (padding[1], padding[1])),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  return y if bias is None else y + bias


def batch_norm(x: jax.Array, bn: Mapping[str, jax.Array], eps: float = 1e-5) -> jax.Array:
  """Inference-mode batch norm: ``(x - mean) / sqrt(var + eps) * scale + bias`` per channel."""
  a, b = bn_affine(bn, eps)
  return x * a + b


def bn_affine(bn: Mapping[str, jax.Array], eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
  """Batch norm as ``x * a + b``: ``a = scale / sqrt(var + eps)``, ``b = bias - mean * a``."""
  a = bn["scale"] * jax.lax.rsqrt(bn["var"] + eps)
  return a, bn["bias"] - bn["mean"] * a


def conv_bn(x: jax.Array, kernel: jax.Array, bn: Mapping[str, jax.Array], *, stride=1,
            padding=0, groups: int = 1, eps: float = 1e-5, fold: bool = True) -> jax.Array:
  """conv (no bias) then inference batch norm; ``fold`` scales the kernel by the norm instead
  of normalizing the conv's output (one op fewer; the same numbers to float rounding)."""
  if fold:
    a, b = bn_affine(bn, eps)
    return conv2d(x, kernel * a, b, stride=stride, padding=padding, groups=groups)
  return batch_norm(conv2d(x, kernel, stride=stride, padding=padding, groups=groups), bn, eps)


def max_pool(x: jax.Array, size: int, stride: int, padding: int = 0) -> jax.Array:
  """``torch.nn.functional.max_pool2d`` (floor mode; padding counts as -inf) in NHWC."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, stride, stride, 1), pads)


def layer_norm(x: jax.Array, p: Mapping[str, jax.Array], eps: float) -> jax.Array:
  """Layer norm over the last axis with ``scale`` and ``bias``."""
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def linear(x: jax.Array, p: Mapping[str, jax.Array]) -> jax.Array:
  """``x @ kernel + bias``; kernel ``(d_in, d_out)``."""
  return jnp.einsum("...i,io->...o", x, p["kernel"]) + p["bias"]  # (..., d_in) x (d_in, d_out)


def bn_shapes(c: int) -> dict[str, tuple[int, ...]]:
  return {"scale": (c,), "bias": (c,), "mean": (c,), "var": (c,)}


def bn_init(c: int) -> dict[str, np.ndarray]:
  """torchvision's batch-norm init: weight 1, bias 0, running mean 0, running variance 1."""
  return {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32),
          "mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32)}


class Draws:
  """Random draws for one network's init: NumPy's PCG64 seeded by a ``jax.random.key``'s data.

  A network's init is hundreds of tensors of different shapes; drawing each through
  ``jax.random`` compiles one program per shape (tens of seconds for a ResNet-50), while NumPy
  draws them at memory speed. The draw is a function of the key alone.
  """

  def __init__(self, key: jax.Array):
    data = np.asarray(jax.random.key_data(key)).ravel().tolist()
    self.rng = np.random.Generator(np.random.PCG64(data))

  def normal(self, shape, std=1.0) -> np.ndarray:
    return (self.rng.standard_normal(shape, np.float32) * np.float32(std)).astype(np.float32)

  def uniform(self, shape, bound) -> np.ndarray:
    return self.rng.uniform(-bound, bound, shape).astype(np.float32)

  def truncated_normal(self, shape, std, lo, hi) -> np.ndarray:
    """N(0, std^2) cut to [lo, hi] (absolute values, as ``nn.init.trunc_normal_``)."""
    x = self.normal(shape, std)
    bad = (x < lo) | (x > hi)
    while bad.any():  # redraw the few outside: rejection sampling
      x[bad] = self.normal(int(bad.sum()), std)
      bad = (x < lo) | (x > hi)
    return x


def kaiming_normal_fan_out(draws: Draws, shape: Sequence[int]) -> np.ndarray:
  """``nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")`` for an HWIO kernel:
  N(0, 2 / fan_out), fan_out = c_out * kh * kw (the depthwise convs' too)."""
  kh, kw, _, c_out = shape
  return draws.normal(shape, np.sqrt(2.0 / (c_out * kh * kw)))


def torch_default_uniform(draws: Draws, shape: Sequence[int], fan_in: int) -> np.ndarray:
  """PyTorch's default Conv/Linear init (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in))."""
  return draws.uniform(shape, 1.0 / np.sqrt(fan_in))


def xavier_uniform(draws: Draws, shape: Sequence[int], fan_in: int, fan_out: int) -> np.ndarray:
  return draws.uniform(shape, np.sqrt(6.0 / (fan_in + fan_out)))


def init_from_shapes(key: jax.Array, shapes: Mapping[str, Mapping[str, Sequence[int]]],
                     draw: Callable[[Draws, str, str, tuple[int, ...]], Any]) -> dict:
  """``{module: {leaf: draw(draws, module, leaf, shape)}}``, every leaf from one ``Draws(key)``
  in the order of ``shapes``."""
  draws = Draws(key)
  out: dict[str, dict[str, Any]] = {}
  for m, d in shapes.items():
    for leaf, shape in d.items():
      out.setdefault(m, {})[leaf] = np.asarray(draw(draws, m, leaf, tuple(shape)), np.float32)
  return out


def check_param_shapes(arch: str, params: Params,
                       expected: Mapping[str, Mapping[str, Sequence[int]]]) -> None:
  bad = [f"{m}/{k}: expected {tuple(s)}, got "
         f"{tuple(np.shape(params[m][k])) if m in params and k in params[m] else 'nothing'}"
         for m, d in expected.items() for k, s in d.items()
         if m not in params or k not in params[m] or tuple(np.shape(params[m][k])) != tuple(s)]
  if bad:
    raise ValueError(f"params do not fit {arch}: {'; '.join(bad[:10])}"
                     + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""))


class Network(nnx.Module):
  """A network of ``jaxmouse.models`` as an ``nnx.Module``: its params as ``nnx.Param`` leaves in
  ``self.weights`` (``{module: {leaf: Param}}``, torchvision's module names), its forward the
  module's pure ``apply``.

  ``Net(arch, rngs=nnx.Rngs(0))`` draws torchvision's init; ``Net.from_params(params, arch=...)``
  wraps converted weights; ``model(images, layers=(...))`` returns ``{layer: array}``.
  """

  ARCHS: tuple[str, ...] = ()

  def __init__(self, arch: str, *, normalization: str = "torchvision",
               rngs: nnx.Rngs | None = None, params: Params | None = None):
    if arch not in self.ARCHS:
      raise ValueError(f"unknown architecture {arch!r}; expected one of {list(self.ARCHS)}")
    check_normalization(normalization)
    if (rngs is None) == (params is None):
      raise ValueError("pass exactly one of rngs (random init) or params (given weights)")
    self.arch = arch
    self.normalization = normalization
    if params is None:
      params = self._init_params(rngs.params(), arch)
    check_param_shapes(arch, params, self._param_shapes(arch))
    self.weights = nnx.Dict({m: nnx.Dict({k: nnx.Param(jnp.asarray(v, jnp.float32))
                                          for k, v in d.items()})
                             for m, d in params.items() if m in self._param_shapes(arch)})

  # Set by each network's module.
  _apply: Callable = staticmethod(lambda *a, **k: None)
  _init_params: Callable = staticmethod(lambda key, arch: None)
  _param_shapes: Callable = staticmethod(lambda arch: {})

  def params(self) -> dict[str, dict[str, jax.Array]]:
    """The plain pytree ``apply`` takes."""
    return {m: {k: v[...] for k, v in d.items()} for m, d in self.weights.items()}

  def __call__(self, images: jax.Array, *, layers: Sequence[str]) -> dict[str, jax.Array]:
    """images: ``(n, H, W)`` or ``(n, H, W, 3)`` on 0-255 -> ``{layer: array}``."""
    return self._apply(self.params(), images, arch=self.arch, layers=layers,
                       normalization=self.normalization)

  @classmethod
  def from_params(cls, params: Params, *, arch: str, normalization: str = "torchvision"):
    return cls(arch, normalization=normalization, params=params)
