"""AlexNet feature stack (torchvision's layout, no classifier) that returns named layer outputs.

- ``apply(params, images, *, arch, layers, normalization)``: a pure function of a params pytree
  keyed by torchvision's module names (``{"features.0": {"kernel": (11, 11, 3, 64), "bias":
  (64,)}, "features.3": ..., ...}``).
- ``AlexNet``: the same network as a ``flax.nnx`` module.

Layers: ``conv1`` ... ``conv5`` (each after its ReLU) and ``pool1``, ``pool2``, ``pool5`` (the
3x3, stride-2 max-pools, floor). torchvision's ``features`` Sequential holds them at indices 0/1
(conv1 + ReLU), 2 (pool1), 3/4, 5, 6/7, 8/9, 10/11, 12. Images arrive on a 0-255 scale;
only the layers up to the deepest requested one are computed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from jaxmouse.models import _layers as L

ARCHS = ("alexnet",)
# (layer, torchvision index, kernel, stride, padding, c_in, c_out); pools have no channels.
_CONVS = (("conv1", 0, 11, 4, 2, 3, 64), ("conv2", 3, 5, 1, 2, 64, 192),
          ("conv3", 6, 3, 1, 1, 192, 384), ("conv4", 8, 3, 1, 1, 384, 256),
          ("conv5", 10, 3, 1, 1, 256, 256))
LAYERS = {"alexnet": ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")}
_CONV = {c[0]: c for c in _CONVS}


def check_arch(arch: str) -> str:
  return L.check_arch_in(arch, ARCHS)


def check_layers(arch: str, layers) -> tuple[str, ...]:
  return L.check_layer_names(arch, layers, LAYERS[check_arch(arch)])


def param_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
  check_arch(arch)
  return {f"features.{i}": {"kernel": (k, k, ci, co), "bias": (co,)}
          for _, i, k, _, _, ci, co in _CONVS}


def apply(params: Mapping[str, Mapping[str, jax.Array]], images: jax.Array, *, arch: str,
          layers: Sequence[str], normalization: str = "torchvision") -> dict[str, jax.Array]:
  """Pure AlexNet forward: images ``(n, H, W)`` or ``(n, H, W, 3)`` on 0-255 ->
  ``{layer: (n, h, w, c) float32}`` for the requested ``layers`` only."""
  layers = check_layers(arch, layers)
  wanted, out = set(layers), {}
  x = L.normalize(images, normalization)
  for name in LAYERS[arch]:
    if not wanted:
      break
    if name.startswith("pool"):
      x = L.max_pool(x, 3, 2)
    else:
      _, i, _, stride, pad, _, _ = _CONV[name]
      p = params[f"features.{i}"]
      x = jax.nn.relu(L.conv2d(x, p["kernel"], p["bias"], stride=stride, padding=pad))
    if name in wanted:
      out[name] = x
      wanted.discard(name)
  return out


def init_params(key: jax.Array, arch: str) -> dict[str, dict[str, np.ndarray]]:
  """torchvision's AlexNet init (PyTorch's default for Conv2d): kernels and biases uniform in
  +-1/sqrt(fan_in), fan_in = c_in * kh * kw."""
  def draw(rand, module, leaf, shape):
    fan_in = int(np.prod(param_shapes(arch)[module]["kernel"][:3]))
    return L.torch_default_uniform(rand, shape, fan_in)

  return L.init_from_shapes(key, param_shapes(arch), draw)


class AlexNet(L.Network):
  """AlexNet as an ``nnx.Module``; see ``jaxmouse.models._layers.Network``."""

  ARCHS = ARCHS
  _apply = staticmethod(apply)
  _init_params = staticmethod(init_params)
  _param_shapes = staticmethod(param_shapes)
