"""VGG16 and VGG19 feature stacks (no classifier) that return named layer outputs.

Two equivalent entry points share one forward:

- ``apply(params, images, *, arch, layers, normalization)``: pure function of a params pytree
  ``{"conv1_1": {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)}, ...}``; jit through it freely.
- ``VGG``: the same network as a ``flax.nnx`` module (one ``Conv3x3`` per named conv layer).

Images arrive on a 0-255 scale, ``(n, H, W)`` grayscale (tiled to 3 channels, as the studies do)
or ``(n, H, W, 3)`` RGB; the input normalization of the weight source is applied inside.
Layer names follow the papers: ``conv3_3`` is the output of the third conv of block 3 after its
ReLU, ``pool3`` the max-pool that ends block 3 (2x2, stride 2, floor like torchvision). Only the
layers up to the deepest requested one are computed.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmouse.models._layers import (  # noqa: F401 (part of this module's API)
    CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, NORMALIZATIONS, check_arch_in, normalize)

# Output channels per conv of each block.
CFG: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
ARCHS = tuple(CFG)


def _layer_names(arch: str) -> tuple[str, ...]:
  names = []
  for b, block in enumerate(CFG[arch], start=1):
    names += [f"conv{b}_{i}" for i in range(1, len(block) + 1)] + [f"pool{b}"]
  return tuple(names)


LAYERS: dict[str, tuple[str, ...]] = {arch: _layer_names(arch) for arch in CFG}
CONV_LAYERS: dict[str, tuple[str, ...]] = {
    arch: tuple(n for n in names if n.startswith("conv")) for arch, names in LAYERS.items()
}

def check_arch(arch: str) -> str:
  return check_arch_in(arch, CFG)


def param_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
  """``{layer: {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)}}`` for every conv of ``arch``."""
  shapes, c_in = {}, 3
  for b, block in enumerate(CFG[check_arch(arch)], start=1):
    for i, c_out in enumerate(block, start=1):
      shapes[f"conv{b}_{i}"] = {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)}
      c_in = c_out
  return shapes


def torchvision_indices(arch: str) -> dict[str, int]:
  """Index of each conv in torchvision's ``vgg.features`` Sequential (conv, ReLU, ..., MaxPool)."""
  idx, out = 0, {}
  for b, block in enumerate(CFG[check_arch(arch)], start=1):
    for i in range(1, len(block) + 1):
      out[f"conv{b}_{i}"] = idx
      idx += 2  # conv + ReLU
    idx += 1  # MaxPool
  return out


def check_layers(arch: str, layers: str | Iterable[str]) -> tuple[str, ...]:
  """Validates layer names; returns them in network order without duplicates."""
  if isinstance(layers, str):
    layers = [s for s in layers.split(",") if s.strip()]
  layers = [s.strip() for s in layers]
  valid = LAYERS[check_arch(arch)]
  unknown = [s for s in layers if s not in valid]
  if unknown:
    raise ValueError(f"unknown layer(s) {unknown} for {arch}; valid layers: {', '.join(valid)}")
  if not layers:
    raise ValueError(f"no layers requested; valid layers for {arch}: {', '.join(valid)}")
  return tuple(s for s in valid if s in set(layers))


def output_shape(arch: str, layer: str, height: int, width: int) -> tuple[int, int, int]:
  """``(h, w, c)`` of ``layer`` for an ``height x width`` input."""
  h, w, c = height, width, 3
  for name in LAYERS[check_arch(arch)]:
    if name.startswith("pool"):
      h, w = h // 2, w // 2
    else:
      c = param_shapes(arch)[name]["bias"][0]
    if name == layer:
      return h, w, c
  raise ValueError(f"unknown layer {layer!r} for {arch}; valid layers: {', '.join(LAYERS[arch])}")


def max_pool(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, floor for odd sizes (torchvision). ``(n, h, w, c) -> (n, h//2, w//2, c)``."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """3x3 conv, stride 1, zero padding 1, then ReLU. ``(n, h, w, c_in) -> (n, h, w, c_out)``."""
  _, h, w, c_in = x.shape
  if min(h, w) <= 2:
    # XLA:CPU's convolution runs ~100x below its normal speed on maps this small (VGG16's block 5
    # is 2x4 for the 36x64 mouse images); the same sum as one im2col matmul is fast everywhere.
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                              axis=-1)  # (n, h, w, 9 * c_in), tap-major like the HWIO kernel
    y = jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(9 * c_in, -1))  # (n,h,w,9c)x(9c,o)
  else:
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + bias)


def _forward(conv: Callable[[str, jax.Array], jax.Array], x: jax.Array, *, arch: str,
             layers: Sequence[str]) -> dict[str, jax.Array]:
  """Runs the stack up to the deepest of ``layers`` with ``conv(name, x)`` for each conv."""
  wanted = set(layers)
  out = {}
  for name in LAYERS[arch]:
    if not wanted:
      break
    x = max_pool(x) if name.startswith("pool") else conv(name, x)
    if name in wanted:
      out[name] = x
      wanted.discard(name)
  return out


def apply(params: Mapping[str, Mapping[str, jax.Array]], images: jax.Array, *, arch: str,
          layers: Sequence[str], normalization: str) -> dict[str, jax.Array]:
  """Pure VGG forward.

  Args:
    params: ``{layer: {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)}}``; only the convs up to
      the deepest requested layer are read.
    images: ``(n, H, W)`` grayscale or ``(n, H, W, 3)`` RGB on a 0-255 scale.
    arch: ``"vgg16"`` or ``"vgg19"``.
    layers: names from ``LAYERS[arch]``.
    normalization: ``"torchvision"`` or ``"caffe"`` (the weight source's input convention).

  Returns:
    ``{layer: (n, h, w, c) float32}`` for the requested layers only.
  """
  layers = check_layers(arch, layers)
  x = normalize(images, normalization)
  conv = lambda name, x: conv3x3(x, params[name]["kernel"], params[name]["bias"])
  return _forward(conv, x, arch=arch, layers=layers)


def kaiming_normal_fan_out(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """torchvision's VGG conv init: N(0, 2 / fan_out), fan_out = c_out * kh * kw. shape: HWIO."""
  kh, kw, _, c_out = shape
  std = np.sqrt(2.0 / (c_out * kh * kw))
  return std * jax.random.normal(key, shape, dtype)


def init_params(key: jax.Array, arch: str) -> dict[str, dict[str, jax.Array]]:
  """Random params drawn as torchvision initializes VGG (Kaiming normal, fan_out, ReLU; zero bias).

  One normal draw of all kernels at once (one compile), then cut and scaled per layer.
  """
  shapes = param_shapes(arch)
  sizes = [int(np.prod(s["kernel"])) for s in shapes.values()]
  z = jax.random.normal(key, (sum(sizes),), jnp.float32)
  params, start = {}, 0
  for size, (name, s) in zip(sizes, shapes.items()):
    kh, kw, _, c_out = s["kernel"]
    std = np.float32(np.sqrt(2.0 / (c_out * kh * kw)))
    params[name] = {"kernel": std * z[start:start + size].reshape(s["kernel"]),
                    "bias": jnp.zeros(s["bias"], jnp.float32)}
    start += size
  return params


_init_params_jit = jax.jit(init_params, static_argnums=1)


class Conv3x3(nnx.Module):
  """A 3x3 conv (padding 1) + ReLU holding HWIO ``kernel`` and ``bias`` as ``nnx.Param``."""

  def __init__(self, kernel: jax.Array, bias: jax.Array):
    self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
    self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(n, h, w, c_in) -> (n, h, w, c_out)``."""
    return conv3x3(x, self.kernel[...], self.bias[...])


class VGG(nnx.Module):
  """VGG16/VGG19 feature stack as an ``nnx.Module``: one ``Conv3x3`` attribute per conv layer.

  ``VGG("vgg16", rngs=nnx.Rngs(0))`` draws torchvision's init; ``VGG.from_params(params, ...)``
  wraps converted weights. ``model(images, layers=("conv3_3",))`` returns
  ``{"conv3_3": (n, h, w, 256)}`` for 0-255 images.
  """

  def __init__(self, arch: str = "vgg16", *, normalization: str = "torchvision",
               rngs: nnx.Rngs | None = None,
               params: Mapping[str, Mapping[str, jax.Array]] | None = None):
    check_arch(arch)
    if normalization not in NORMALIZATIONS:
      raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    if (rngs is None) == (params is None):
      raise ValueError("pass exactly one of rngs (random init) or params (given weights)")
    self.arch = arch
    self.normalization = normalization
    if params is None:
      params = _init_params_jit(rngs.params(), arch)  # one compiled draw for all layers
    for name, s in param_shapes(arch).items():
      kernel, bias = params[name]["kernel"], params[name]["bias"]
      if tuple(np.shape(kernel)) != s["kernel"] or tuple(np.shape(bias)) != s["bias"]:
        raise ValueError(f"{name}: expected kernel {s['kernel']} and bias {s['bias']}, got "
                         f"{tuple(np.shape(kernel))} and {tuple(np.shape(bias))}")
      setattr(self, name, Conv3x3(kernel, bias))

  def __call__(self, images: jax.Array, *, layers: Sequence[str]) -> dict[str, jax.Array]:
    """images: ``(n, H, W)`` or ``(n, H, W, 3)`` on 0-255 -> ``{layer: (n, h, w, c)}``."""
    layers = check_layers(self.arch, layers)
    x = normalize(images, self.normalization)
    return _forward(lambda name, x: getattr(self, name)(x), x, arch=self.arch, layers=layers)

  def params(self) -> dict[str, dict[str, jax.Array]]:
    """The plain pytree ``apply`` takes."""
    return {name: {"kernel": getattr(self, name).kernel[...], "bias": getattr(self, name).bias[...]}
            for name in param_shapes(self.arch)}

  @classmethod
  def from_params(cls, params: Mapping[str, Mapping[str, jax.Array]], *, arch: str,
                  normalization: str) -> "VGG":
    """A module holding ``params`` (shapes as ``param_shapes(arch)``)."""
    return cls(arch, normalization=normalization, params=params)
