"""MobileNetV2 feature stack (torchvision's layout, width 1.0, no classifier) that returns named
layer outputs.

- ``apply(params, images, *, arch, layers, normalization, fold_batch_norm)``: a pure function of
  a params pytree keyed by torchvision's module names (``"features.0.0"`` conv, ``"features.0.1"``
  batch norm, ``"features.2.conv.1.0"`` the depthwise conv of block 2, ...).
- ``MobileNetV2``: the same network as a ``flax.nnx`` module.

Layers are ``features.{i}``, the output of each of torchvision's 19 ``features`` modules: the
stem (``features.0``: 3x3 stride-2 conv, batch norm, ReLU6), the 17 inverted-residual blocks
(``features.1`` ... ``features.17``, with the residual sum where stride is 1 and the channels
are kept) and the final 1x1 conv to 1,280 channels (``features.18``). Batch norm is in inference
mode, folded into the preceding conv by default. Images arrive on a 0-255 scale.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmouse.models import _layers as L

ARCHS = ("mobilenet_v2",)
# torchvision's inverted-residual settings: expansion t, channels c, repeats n, first stride s.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))
STEM, LAST = 32, 1280


def _blocks():
  """``(index, c_in, hidden, c_out, stride, expand)`` for features.1 ... features.17."""
  out, c_in, i = [], STEM, 1
  for t, c, n, s in SETTINGS:
    for j in range(n):
      out.append((i, c_in, int(round(c_in * t)), c, s if j == 0 else 1, t != 1))
      c_in, i = c, i + 1
  return tuple(out)


BLOCKS = _blocks()
LAYERS = {"mobilenet_v2": tuple(f"features.{i}" for i in range(len(BLOCKS) + 2))}


def check_arch(arch: str) -> str:
  return L.check_arch_in(arch, ARCHS)


def check_layers(arch: str, layers) -> tuple[str, ...]:
  return L.check_layer_names(arch, layers, LAYERS[check_arch(arch)])


def _block_modules(i, c_in, hidden, c_out, expand):
  """``[(conv module, bn module, kernel shape, groups, relu6)]`` of block ``i`` in order."""
  p = f"features.{i}.conv"
  mods = []
  k = 0
  if expand:
    mods.append((f"{p}.0.0", f"{p}.0.1", (1, 1, c_in, hidden), 1, True))
    k = 1
  mods.append((f"{p}.{k}.0", f"{p}.{k}.1", (3, 3, 1, hidden), hidden, True))
  mods.append((f"{p}.{k + 1}", f"{p}.{k + 2}", (1, 1, hidden, c_out), 1, False))
  return mods


def param_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
  check_arch(arch)
  shapes = {"features.0.0": {"kernel": (3, 3, 3, STEM)}, "features.0.1": L.bn_shapes(STEM)}
  for i, c_in, hidden, c_out, _, expand in BLOCKS:
    for conv, bn, kshape, _, _ in _block_modules(i, c_in, hidden, c_out, expand):
      shapes[conv] = {"kernel": kshape}
      shapes[bn] = L.bn_shapes(kshape[-1])
  last = len(BLOCKS) + 1
  shapes[f"features.{last}.0"] = {"kernel": (1, 1, BLOCKS[-1][3], LAST)}
  shapes[f"features.{last}.1"] = L.bn_shapes(LAST)
  return shapes


def _relu6(x):
  return jnp.clip(x, 0.0, 6.0)


def apply(params: Mapping[str, Mapping[str, jax.Array]], images: jax.Array, *, arch: str,
          layers: Sequence[str], normalization: str = "torchvision",
          fold_batch_norm: bool = True) -> dict[str, jax.Array]:
  """Pure MobileNetV2 forward: images ``(n, H, W)`` or ``(n, H, W, 3)`` on 0-255 ->
  ``{layer: (n, h, w, c) float32}`` for the requested ``layers`` only."""
  layers = check_layers(arch, layers)
  wanted, out = set(layers), {}
  p, fold = params, fold_batch_norm
  x = L.normalize(images, normalization)

  def keep(name, x):
    if name in wanted:
      out[name] = x
      wanted.discard(name)
    return not wanted

  x = _relu6(L.conv_bn(x, p["features.0.0"]["kernel"], p["features.0.1"], stride=2, padding=1,
                       fold=fold))
  if keep("features.0", x):
    return out
  for i, c_in, hidden, c_out, stride, expand in BLOCKS:
    y = x
    for conv, bn, kshape, groups, relu in _block_modules(i, c_in, hidden, c_out, expand):
      depthwise = groups > 1
      y = L.conv_bn(y, p[conv]["kernel"], p[bn], stride=stride if depthwise else 1,
                    padding=1 if depthwise else 0, groups=groups, fold=fold)
      y = _relu6(y) if relu else y
    x = x + y if (stride == 1 and c_in == c_out) else y
    if keep(f"features.{i}", x):
      return out
  last = len(BLOCKS) + 1
  x = _relu6(L.conv_bn(x, p[f"features.{last}.0"]["kernel"], p[f"features.{last}.1"],
                       fold=fold))
  keep(f"features.{last}", x)
  return out


def init_params(key: jax.Array, arch: str) -> dict[str, dict[str, np.ndarray]]:
  """torchvision's MobileNetV2 init: Kaiming normal (fan_out) kernels (fan_out = c_out * kh * kw
  for the depthwise convs too); batch norm weight 1, bias 0, running mean 0, variance 1."""
  def draw(rand, module, leaf, shape):
    if leaf == "kernel":
      return L.kaiming_normal_fan_out(rand, shape)
    return L.bn_init(shape[0])[leaf]

  return L.init_from_shapes(key, param_shapes(arch), draw)


class MobileNetV2(L.Network):
  """MobileNetV2 as an ``nnx.Module``; see ``jaxmouse.models._layers.Network``."""

  ARCHS = ARCHS
  _apply = staticmethod(apply)
  _init_params = staticmethod(init_params)
  _param_shapes = staticmethod(param_shapes)
