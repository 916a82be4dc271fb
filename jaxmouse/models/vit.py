"""ViT-B/16 encoder (torchvision's layout, no classification head) that returns each encoder
block's tokens as a spatial grid.

- ``apply(params, images, *, arch, layers, normalization)``: a pure function of a params pytree
  keyed by torchvision's names: ``conv_proj`` (the 16x16 stride-16 patch embedding),
  ``class_token``, ``encoder`` (``pos_embedding``) and ``encoder.layers.encoder_layer_{i}.ln_1``,
  ``.self_attention`` (``in_kernel``, ``in_bias``), ``.self_attention.out_proj``, ``.ln_2``,
  ``.mlp.0``, ``.mlp.3``.
- ``ViT``: the same network as a ``flax.nnx`` module.

Layers are ``block1`` ... ``block12``, the outputs of ``encoder_layer_0`` ... ``encoder_layer_11``,
each returned as a token grid ``(n, h, w, 768)`` with ``h = H // 16`` and ``w = W // 16``: the class
token (which takes part in every block's attention) is dropped from the output. Images of any
size at least 16x16 are accepted: pixels past the last whole patch are ignored (the floor of the
stride-16 conv), and the 14x14 grid of position embeddings is resized to ``h x w`` by bicubic
interpolation with aligned corners, as torchvision's ``interpolate_embeddings`` does for square
grids (the class token's embedding is kept as is). Images arrive on a 0-255 scale.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmouse.models import _layers as L

ARCHS = ("vit_b_16",)
PATCH, DIM, DEPTH, HEADS, MLP = 16, 768, 12, 12, 3072
GRID = 14  # the position embeddings' grid (224 / 16)
LN_EPS = 1e-6
LAYERS = {"vit_b_16": tuple(f"block{i}" for i in range(1, DEPTH + 1))}


def check_arch(arch: str) -> str:
  return L.check_arch_in(arch, ARCHS)


def check_layers(arch: str, layers) -> tuple[str, ...]:
  return L.check_layer_names(arch, layers, LAYERS[check_arch(arch)])


def _enc(i: int) -> str:
  return f"encoder.layers.encoder_layer_{i}"


def param_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
  check_arch(arch)
  shapes = {"conv_proj": {"kernel": (PATCH, PATCH, 3, DIM), "bias": (DIM,)},
            "class_token": {"value": (1, 1, DIM)},
            "encoder": {"pos_embedding": (1, GRID * GRID + 1, DIM)}}
  for i in range(DEPTH):
    e = _enc(i)
    shapes[f"{e}.ln_1"] = {"scale": (DIM,), "bias": (DIM,)}
    shapes[f"{e}.self_attention"] = {"in_kernel": (DIM, 3 * DIM), "in_bias": (3 * DIM,)}
    shapes[f"{e}.self_attention.out_proj"] = {"kernel": (DIM, DIM), "bias": (DIM,)}
    shapes[f"{e}.ln_2"] = {"scale": (DIM,), "bias": (DIM,)}
    shapes[f"{e}.mlp.0"] = {"kernel": (DIM, MLP), "bias": (MLP,)}
    shapes[f"{e}.mlp.3"] = {"kernel": (MLP, DIM), "bias": (DIM,)}
  return shapes


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution kernel with PyTorch's a = -0.75, at distances ``t >= 0``."""
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``(n_out, n_in)`` weights of 1-D bicubic interpolation with aligned corners (PyTorch's
  ``interpolate(mode="bicubic", align_corners=True)``: borders replicated)."""
  m = np.zeros((n_out, n_in), np.float64)
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  for o in range(n_out):
    x = o * scale
    f = int(np.floor(x))
    t = x - f
    for k in range(-1, 3):
      m[o, min(max(f + k, 0), n_in - 1)] += _cubic(np.array(t - k))
  return m.astype(np.float32)


def position_embeddings(pos: jax.Array, h: int, w: int) -> jax.Array:
  """``(1, 1 + GRID**2, d)`` -> ``(1, 1 + h * w, d)``: the class token's row kept, the grid's
  rows resized to ``h x w`` (bicubic, aligned corners; unchanged when ``h = w = GRID``)."""
  if (h, w) == (GRID, GRID):
    return pos
  grid = pos[0, 1:].reshape(GRID, GRID, -1)
  mh, mw = jnp.asarray(bicubic_matrix(GRID, h)), jnp.asarray(bicubic_matrix(GRID, w))
  grid = jnp.einsum("ai,bj,ijd->abd", mh, mw, grid,  # (h,G)x(w,G)x(G,G,d) -> (h,w,d)
                    precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([pos[:, :1], grid.reshape(1, h * w, -1)], axis=1)


def _attention(p: Mapping, x: jax.Array) -> jax.Array:
  """torch's ``nn.MultiheadAttention(batch_first=True)`` self-attention, no mask, no dropout."""
  n, t, d = x.shape
  qkv = jnp.einsum("ntd,de->nte", x, p["in_kernel"]) + p["in_bias"]  # (n,t,d)x(d,3d)
  q, k, v = (a.reshape(n, t, HEADS, d // HEADS) for a in jnp.split(qkv, 3, axis=-1))
  logits = jnp.einsum("nqhc,nkhc->nhqk", q, k) / np.sqrt(d // HEADS)  # (n,h,t,t)
  weights = jax.nn.softmax(logits, axis=-1)
  y = jnp.einsum("nhqk,nkhc->nqhc", weights, v).reshape(n, t, d)
  return y


def apply(params: Mapping[str, Mapping[str, jax.Array]], images: jax.Array, *, arch: str,
          layers: Sequence[str], normalization: str = "torchvision") -> dict[str, jax.Array]:
  """Pure ViT-B/16 forward.

  Args:
    params: ``param_shapes(arch)``-shaped pytree (blocks past the deepest requested are not read).
    images: ``(n, H, W)`` grayscale or ``(n, H, W, 3)`` RGB on a 0-255 scale, H and W >= 16.
    layers: names from ``LAYERS[arch]`` (``block1`` ... ``block12``).

  Returns:
    ``{layer: (n, H // 16, W // 16, 768) float32}`` token grids, class token dropped.
  """
  layers = check_layers(arch, layers)
  wanted, out = set(layers), {}
  x = L.normalize(images, normalization)
  x = L.conv2d(x, params["conv_proj"]["kernel"], params["conv_proj"]["bias"], stride=PATCH)
  n, h, w, d = x.shape
  cls = jnp.broadcast_to(params["class_token"]["value"], (n, 1, d))
  x = jnp.concatenate([cls, x.reshape(n, h * w, d)], axis=1)
  x = x + position_embeddings(params["encoder"]["pos_embedding"], h, w)
  for i in range(DEPTH):
    name = f"block{i + 1}"
    if not wanted:
      break
    e = _enc(i)
    y = L.layer_norm(x, params[f"{e}.ln_1"], LN_EPS)
    x = x + L.linear(_attention(params[f"{e}.self_attention"], y),
                     params[f"{e}.self_attention.out_proj"])
    y = L.layer_norm(x, params[f"{e}.ln_2"], LN_EPS)
    y = jax.nn.gelu(L.linear(y, params[f"{e}.mlp.0"]), approximate=False)
    x = x + L.linear(y, params[f"{e}.mlp.3"])
    if name in wanted:
      out[name] = x[:, 1:].reshape(n, h, w, d)
      wanted.discard(name)
  return out


def init_params(key: jax.Array, arch: str) -> dict[str, dict[str, np.ndarray]]:
  """torchvision's ViT init: patch embedding truncated normal (std sqrt(1 / fan_in), cut at
  +-2) and zero bias; class token 0; position embeddings N(0, 0.02^2); attention input
  projection Xavier uniform with zero bias, output projection PyTorch's default uniform with
  zero bias; MLP Xavier uniform with N(0, 1e-6^2) biases; layer norms 1 and 0."""
  fan_in = 3 * PATCH * PATCH

  def draw(rand, module, leaf, shape):
    if module == "conv_proj":
      std = np.sqrt(1.0 / fan_in)
      if leaf == "bias":
        return np.zeros(shape, np.float32)
      return rand.truncated_normal(shape, std, -2.0, 2.0)
    if module == "class_token":
      return np.zeros(shape, np.float32)
    if module == "encoder":
      return rand.normal(shape, 0.02)
    if module.endswith((".ln_1", ".ln_2")):
      return np.ones(shape, np.float32) if leaf == "scale" else np.zeros(shape, np.float32)
    if module.endswith(".self_attention"):
      if leaf == "in_bias":
        return np.zeros(shape, np.float32)
      return L.xavier_uniform(rand, shape, DIM, 3 * DIM)
    if module.endswith(".out_proj"):
      return (L.torch_default_uniform(rand, shape, DIM) if leaf == "kernel"
              else np.zeros(shape, np.float32))
    # mlp.0 / mlp.3
    if leaf == "kernel":
      return L.xavier_uniform(rand, shape, shape[0], shape[1])
    return rand.normal(shape, 1e-6)

  return L.init_from_shapes(key, param_shapes(arch), draw)


class ViT(L.Network):
  """ViT-B/16 as an ``nnx.Module``; see ``jaxmouse.models._layers.Network``."""

  ARCHS = ARCHS
  _apply = staticmethod(apply)
  _init_params = staticmethod(init_params)
  _param_shapes = staticmethod(param_shapes)
