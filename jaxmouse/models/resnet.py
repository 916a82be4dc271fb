"""ResNet-18, ResNet-34 and ResNet-50 feature stacks (torchvision's layout, no classifier) that
return named layer outputs.

- ``apply(params, images, *, arch, layers, normalization, fold_batch_norm)``: a pure function of
  a params pytree keyed by torchvision's module names: ``{"conv1": {"kernel": (7, 7, 3, 64)},
  "bn1": {"scale", "bias", "mean", "var"}, "layer1.0.conv1": ..., "layer2.0.downsample.0": ...}``.
- ``ResNet``: the same network as a ``flax.nnx`` module.

Layer names are torchvision's module names: ``conv1`` is the output of conv1 -> bn1 -> relu,
``maxpool`` that of the 3x3 max-pool, ``layer{i}.{j}`` the output of block j of stage i (after
its residual sum and ReLU) and ``layer{i}`` that of the whole stage (the same tensor as its last
block). Batch norm is in inference mode (running statistics), folded into the preceding conv by
default. Images arrive on a 0-255 scale, ``(n, H, W)`` grayscale (tiled to RGB) or
``(n, H, W, 3)``; only the layers up to the deepest requested one are computed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmouse.models import _layers as L

# (block type, blocks per stage); planes 64, 128, 256, 512; stride 1 in stage 1, else 2.
CFG: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
ARCHS = tuple(CFG)
PLANES = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}


def _layer_names(arch: str) -> tuple[str, ...]:
  names = ["conv1", "maxpool"]
  for i, n in enumerate(CFG[arch][1], start=1):
    names += [f"layer{i}.{j}" for j in range(n)] + [f"layer{i}"]
  return tuple(names)


LAYERS: dict[str, tuple[str, ...]] = {arch: _layer_names(arch) for arch in CFG}


def check_arch(arch: str) -> str:
  return L.check_arch_in(arch, CFG)


def check_layers(arch: str, layers) -> tuple[str, ...]:
  return L.check_layer_names(arch, layers, LAYERS[check_arch(arch)])


def _blocks(arch: str):
  """``(name, c_in, planes, stride, has_downsample)`` for every block, in order."""
  kind, counts = CFG[check_arch(arch)]
  exp = EXPANSION[kind]
  c_in, out = 64, []
  for i, (n, planes) in enumerate(zip(counts, PLANES), start=1):
    for j in range(n):
      stride = 2 if (i > 1 and j == 0) else 1
      out.append((f"layer{i}.{j}", c_in, planes, stride, stride != 1 or c_in != planes * exp))
      c_in = planes * exp
  return kind, out


def param_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
  """``{module: {leaf: shape}}`` in torchvision's module names (HWIO kernels, no conv bias)."""
  kind, blocks = _blocks(arch)
  shapes = {"conv1": {"kernel": (7, 7, 3, 64)}, "bn1": L.bn_shapes(64)}
  for name, c_in, planes, _, down in blocks:
    if kind == "basic":
      convs = [(3, c_in, planes), (3, planes, planes)]
    else:
      convs = [(1, c_in, planes), (3, planes, planes), (1, planes, planes * 4)]
    for k, (size, ci, co) in enumerate(convs, start=1):
      shapes[f"{name}.conv{k}"] = {"kernel": (size, size, ci, co)}
      shapes[f"{name}.bn{k}"] = L.bn_shapes(co)
    if down:
      co = planes * EXPANSION[kind]
      shapes[f"{name}.downsample.0"] = {"kernel": (1, 1, c_in, co)}
      shapes[f"{name}.downsample.1"] = L.bn_shapes(co)
  return shapes


def _block(p: Mapping, name: str, x: jax.Array, *, kind: str, stride: int, down: bool,
           fold: bool) -> jax.Array:
  cb = lambda x, k, **kw: L.conv_bn(x, p[f"{name}.conv{k}"]["kernel"], p[f"{name}.bn{k}"],
                                    fold=fold, **kw)
  if kind == "basic":
    y = jax.nn.relu(cb(x, 1, stride=stride, padding=1))
    y = cb(y, 2, padding=1)
  else:  # torchvision's Bottleneck (v1.5): the stride sits on the 3x3 conv
    y = jax.nn.relu(cb(x, 1))
    y = jax.nn.relu(cb(y, 2, stride=stride, padding=1))
    y = cb(y, 3)
  identity = x
  if down:
    identity = L.conv_bn(x, p[f"{name}.downsample.0"]["kernel"], p[f"{name}.downsample.1"],
                         stride=stride, fold=fold)
  return jax.nn.relu(y + identity)


def apply(params: Mapping[str, Mapping[str, jax.Array]], images: jax.Array, *, arch: str,
          layers: Sequence[str], normalization: str = "torchvision",
          fold_batch_norm: bool = True) -> dict[str, jax.Array]:
  """Pure ResNet forward.

  Args:
    params: ``param_shapes(arch)``-shaped pytree; only modules up to the deepest requested layer
      are read.
    images: ``(n, H, W)`` grayscale or ``(n, H, W, 3)`` RGB on a 0-255 scale.
    arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
    layers: names from ``LAYERS[arch]``.
    normalization: the weight source's input convention (``"torchvision"``).
    fold_batch_norm: fold each batch norm into its conv (True) or apply it after the conv.

  Returns:
    ``{layer: (n, h, w, c) float32}`` for the requested layers only.
  """
  layers = check_layers(arch, layers)
  wanted, out = set(layers), {}
  x = L.normalize(images, normalization)

  def keep(name, x):
    if name in wanted:
      out[name] = x
      wanted.discard(name)
    return not wanted

  x = jax.nn.relu(L.conv_bn(x, params["conv1"]["kernel"], params["bn1"], stride=2, padding=3,
                            fold=fold_batch_norm))
  if keep("conv1", x):
    return out
  x = L.max_pool(x, 3, 2, 1)
  if keep("maxpool", x):
    return out
  kind, blocks = _blocks(arch)
  for name, _, _, stride, down in blocks:
    x = _block(params, name, x, kind=kind, stride=stride, down=down, fold=fold_batch_norm)
    if keep(name, x):
      return out
    stage, j = name.split(".")
    if int(j) == CFG[arch][1][int(stage[len("layer"):]) - 1] - 1 and keep(stage, x):
      return out
  return out


def init_params(key: jax.Array, arch: str) -> dict[str, dict[str, np.ndarray]]:
  """torchvision's ResNet init: Kaiming normal (fan_out, ReLU) kernels; batch norm weight 1,
  bias 0, running mean 0, running variance 1."""
  shapes = param_shapes(arch)

  def draw(rand, module, leaf, shape):
    if leaf == "kernel":
      return L.kaiming_normal_fan_out(rand, shape)
    return L.bn_init(shape[0])[leaf]

  return L.init_from_shapes(key, shapes, draw)


class ResNet(L.Network):
  """ResNet-18/34/50 as an ``nnx.Module``; see ``jaxmouse.models._layers.Network``."""

  ARCHS = ARCHS
  _apply = staticmethod(apply)
  _init_params = staticmethod(init_params)
  _param_shapes = staticmethod(param_shapes)
