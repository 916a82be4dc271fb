"""Every network jaxmouse extracts features from, behind one interface keyed by architecture.

A network is a module of ``jaxmouse.models`` with ``LAYERS[arch]`` (layer names in network
order), ``param_shapes(arch)``, a pure ``apply(params, images, *, arch, layers, normalization)``
returning ``{layer: array}`` and ``init_params(key, arch)`` (torchvision's initialization).
Code past the weights (features, sweeps, reports) asks this module for a network's layers,
shapes and forward, never for an architecture by name.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmouse.models import _layers, alexnet, mobilenet, resnet, vgg, vit

NORMALIZATIONS = _layers.NORMALIZATIONS
_MODULES: dict[str, ModuleType] = {
    **{a: vgg for a in vgg.ARCHS}, **{a: alexnet for a in alexnet.ARCHS},
    **{a: resnet for a in resnet.ARCHS}, **{a: mobilenet for a in mobilenet.ARCHS},
    **{a: vit for a in vit.ARCHS},
}
ARCHS = tuple(_MODULES)
# The module path of each network's first conv kernel (pixel-space feature detectors).
FIRST_CONV = {"vgg16": "conv1_1", "vgg19": "conv1_1", "alexnet": "features.0",
              "resnet18": "conv1", "resnet34": "conv1", "resnet50": "conv1",
              "mobilenet_v2": "features.0.0", "vit_b_16": "conv_proj"}
# How ``init_params`` draws, for the metadata of random weights.
INIT = {
    "vgg": "kaiming_normal(fan_out, relu) kernels, zero bias (torchvision's VGG init)",
    "alexnet": "uniform(+-1/sqrt(fan_in)) kernels and biases (PyTorch's default, as torchvision's "
               "AlexNet)",
    "resnet": "kaiming_normal(fan_out, relu) kernels; batch norm weight 1, bias 0, running mean 0, "
              "var 1 (torchvision's ResNet init)",
    "mobilenet": "kaiming_normal(fan_out) kernels; batch norm weight 1, bias 0, running mean 0, "
                 "var 1 (torchvision's MobileNetV2 init)",
    "vit": "torchvision's ViT init: trunc_normal patch embedding, N(0, 0.02) position embeddings, "
           "xavier_uniform attention and MLP kernels",
}


def check_arch(arch: str) -> str:
  return _layers.check_arch_in(arch, _MODULES)


def module(arch: str) -> ModuleType:
  """The ``jaxmouse.models`` module that implements ``arch``."""
  return _MODULES[check_arch(arch)]


def family(arch: str) -> str:
  return module(arch).__name__.rsplit(".", 1)[1]


def layers(arch: str) -> tuple[str, ...]:
  """Every layer name of ``arch`` in network order."""
  return module(arch).LAYERS[arch]


def check_layers(arch: str, names: str | Sequence[str]) -> tuple[str, ...]:
  """Validates layer names (a list or a comma-separated string); returns them in network order
  without duplicates. Unknown names are a ValueError listing the valid ones."""
  return module(arch).check_layers(arch, names)


def param_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
  """``{module: {leaf: shape}}`` of ``arch``'s params."""
  return module(arch).param_shapes(arch)


def n_params(arch: str) -> int:
  return sum(int(np.prod(s)) for d in param_shapes(arch).values() for s in d.values())


def apply(params: Mapping[str, Mapping[str, jax.Array]], images: jax.Array, *, arch: str,
          layers: Sequence[str], normalization: str) -> dict[str, jax.Array]:
  """``arch``'s pure forward: 0-255 images ``(n, H, W[, 3])`` -> ``{layer: array}``; only the
  layers up to the deepest requested one are computed."""
  return module(arch).apply(params, images, arch=arch, layers=layers, normalization=normalization)


def init_params(key: jax.Array, arch: str) -> dict[str, dict[str, jax.Array]]:
  """Random params drawn as torchvision initializes ``arch``."""
  return module(arch).init_params(key, arch)


def init_description(arch: str) -> str:
  return INIT[family(arch)]


def relative_depth(arch: str, layer: str) -> float:
  """The layer's position in network order scaled to [0, 1] (first layer 0, last 1)."""
  names = layers(arch)
  if layer not in names:
    check_layers(arch, [layer])
  return names.index(layer) / max(len(names) - 1, 1)


def _shapes_struct(arch: str):
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), param_shapes(arch),
                      is_leaf=lambda s: isinstance(s, tuple))


def _try_shapes(arch: str, names: tuple[str, ...], h: int, w: int):
  """``{layer: shape without n}``, or None where the images are too small for a layer."""
  try:
    out = jax.eval_shape(functools.partial(apply, arch=arch, layers=names,
                                           normalization="torchvision"),
                         _shapes_struct(arch), jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
  except (TypeError, ValueError):
    return None
  shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
  if any(min(s) < 1 for s in shapes.values()):
    return None
  return shapes


@functools.lru_cache(maxsize=256)
def output_shapes(arch: str, height: int, width: int) -> dict[str, tuple[int, ...]]:
  """``{layer: (h, w, c)}`` of every layer of ``arch`` for ``height x width`` images; a layer the
  images are too small for is left out."""
  names = layers(arch)
  every = _try_shapes(arch, names, int(height), int(width))
  if every is not None:
    return every
  out = {}
  for name in names:  # layers are nested in depth: stop at the first that does not fit
    got = _try_shapes(arch, (name,), int(height), int(width))
    if got is None:
      break
    out.update(got)
  return out


def min_size(arch: str, layer: str) -> int:
  """The smallest square image side that ``layer`` of ``arch`` has a non-empty output for."""
  lo, hi = 1, 1024
  while lo < hi:
    mid = (lo + hi) // 2
    if layer in output_shapes(arch, mid, mid):
      hi = mid
    else:
      lo = mid + 1
  return lo


def output_shape(arch: str, layer: str, height: int, width: int) -> tuple[int, ...]:
  """``(h, w, c)`` of ``layer`` for ``height x width`` images; a ValueError names the layer and
  the smallest size it needs when the images are too small for it."""
  check_layers(arch, [layer])
  shapes = output_shapes(arch, int(height), int(width))
  if layer not in shapes:
    need = min_size(arch, layer)
    raise ValueError(f"images of {height}x{width} pixels are too small for layer {layer} of "
                     f"{arch}: it needs at least {need}x{need}")
  return shapes[layer]


def check_sizes(arch: str, names: Sequence[str], height: int, width: int) -> None:
  """A ValueError naming every layer of ``names`` the images are too small for."""
  shapes = output_shapes(arch, int(height), int(width))
  small = [l for l in names if l not in shapes]
  if small:
    need = min_size(arch, small[0])
    what = f"layer {small[0]}" if len(small) == 1 else f"layers {', '.join(small)}"
    raise ValueError(f"images of {height}x{width} pixels are too small for {what} of {arch}: "
                     f"{'it' if len(small) == 1 else small[0]} needs at least {need}x{need}")


def network(arch: str, *, params=None, rngs=None, normalization: str = "torchvision"):
  """``arch`` as its ``flax.nnx`` module (random init from ``rngs`` or the given ``params``)."""
  cls = {"vgg": vgg.VGG, "alexnet": alexnet.AlexNet, "resnet": resnet.ResNet,
         "mobilenet": mobilenet.MobileNetV2, "vit": vit.ViT}[family(arch)]
  return cls(arch, normalization=normalization, rngs=rngs, params=params)
