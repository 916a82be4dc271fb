"""Independent references for AlexNet, ResNet-18/34/50, MobileNetV2 and ViT-B/16, written in
torch.nn.functional from torchvision's model definitions (torchvision itself is not imported),
over state dicts with torchvision's keys.

``state_dict(arch, seed)`` draws random weights in torchvision's layout, heads included (fc,
classifier, heads, the encoder's final norm, ``num_batches_tracked``), with batch-norm running
statistics and affine parameters far from their init (mean != 0, var != 1, weight != 1, bias
!= 0), so a converter that drops, transposes or mixes up a norm's tensors shows.
``forward(arch, state, images)`` (jaxmouse/benchmarks/torch_models.py) returns every named
layer as NHWC numpy arrays, for 0-255 images (n, H, W) (tiled to RGB) or (n, H, W, 3).
"""

from __future__ import annotations

import numpy as np
import torch

# The forwards are plain torch.nn.functional, written from torchvision's definitions, and shared
# with `jaxmouse bench features`; they import nothing from jaxmouse.
from jaxmouse.benchmarks.torch_models import MOBILENET_V2, RESNETS, forward  # noqa: F401


# ---- state dicts in torchvision's layout ---------------------------------------------------------

class _Draw:
  def __init__(self, seed):
    self.g = torch.Generator().manual_seed(seed)
    self.sd = {}

  def conv(self, name, c_out, c_in, k, bias=False):
    fan_out = c_out * k * k
    std = (2 / fan_out) ** .5
    self.sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=self.g) * std
    if bias:
      self.sd[f"{name}.bias"] = torch.rand(c_out, generator=self.g) * 0.2 - 0.1

  def bn(self, name, c):
    g = self.g
    self.sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
    self.sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
    self.sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.2
    self.sd[f"{name}.running_var"] = torch.rand(c, generator=g) * 1.5 + 0.5
    self.sd[f"{name}.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)

  def linear(self, name, d_out, d_in, scale=None):
    s = scale if scale is not None else d_in ** -0.5
    self.sd[f"{name}.weight"] = torch.randn(d_out, d_in, generator=self.g) * s
    self.sd[f"{name}.bias"] = torch.randn(d_out, generator=self.g) * 0.02

  def ln(self, name, d):
    self.sd[f"{name}.weight"] = torch.rand(d, generator=self.g) + 0.5
    self.sd[f"{name}.bias"] = torch.randn(d, generator=self.g) * 0.1


def state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
  d = _Draw(seed)
  if arch == "alexnet":
    for i, (co, ci, k) in zip((0, 3, 6, 8, 10), ((64, 3, 11), (192, 64, 5), (384, 192, 3),
                                                 (256, 384, 3), (256, 256, 3))):
      d.conv(f"features.{i}", co, ci, k, bias=True)
    d.linear("classifier.1", 64, 9216)  # a shortened head: heads are skipped anyway
    d.linear("classifier.6", 10, 64)
  elif arch in RESNETS:
    kind, counts = RESNETS[arch]
    exp = 1 if kind == "basic" else 4
    d.conv("conv1", 64, 3, 7)
    d.bn("bn1", 64)
    c_in = 64
    for i, (n, planes) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
      for j in range(n):
        stride = 2 if i > 1 and j == 0 else 1
        p = f"layer{i}.{j}"
        if kind == "basic":
          d.conv(f"{p}.conv1", planes, c_in, 3)
          d.bn(f"{p}.bn1", planes)
          d.conv(f"{p}.conv2", planes, planes, 3)
          d.bn(f"{p}.bn2", planes)
        else:
          d.conv(f"{p}.conv1", planes, c_in, 1)
          d.bn(f"{p}.bn1", planes)
          d.conv(f"{p}.conv2", planes, planes, 3)
          d.bn(f"{p}.bn2", planes)
          d.conv(f"{p}.conv3", planes * 4, planes, 1)
          d.bn(f"{p}.bn3", planes * 4)
        if stride != 1 or c_in != planes * exp:
          d.conv(f"{p}.downsample.0", planes * exp, c_in, 1)
          d.bn(f"{p}.downsample.1", planes * exp)
        c_in = planes * exp
    d.linear("fc", 10, 512 * exp)
  elif arch == "mobilenet_v2":
    d.conv("features.0.0", 32, 3, 3)
    d.bn("features.0.1", 32)
    c_in, idx = 32, 1
    for t, c, n, s in MOBILENET_V2:
      for _ in range(n):
        hidden = int(round(c_in * t))
        p = f"features.{idx}.conv"
        k = 0
        if t != 1:
          d.conv(f"{p}.0.0", hidden, c_in, 1)
          d.bn(f"{p}.0.1", hidden)
          k = 1
        # depthwise: weight (hidden, 1, 3, 3)
        d.sd[f"{p}.{k}.0.weight"] = torch.randn(hidden, 1, 3, 3, generator=d.g) * (2 / 9) ** .5
        d.bn(f"{p}.{k}.1", hidden)
        d.conv(f"{p}.{k + 1}", c, hidden, 1)
        d.bn(f"{p}.{k + 2}", c)
        c_in, idx = c, idx + 1
    d.conv(f"features.{idx}.0", 1280, c_in, 1)
    d.bn(f"features.{idx}.1", 1280)
    d.linear("classifier.1", 10, 1280)
  elif arch == "vit_b_16":
    dim = 768
    d.conv("conv_proj", dim, 3, 16, bias=True)
    d.sd["conv_proj.weight"] *= 0.5
    d.sd["class_token"] = torch.randn(1, 1, dim, generator=d.g) * 0.5
    d.sd["encoder.pos_embedding"] = torch.randn(1, 197, dim, generator=d.g) * 0.5
    for i in range(12):
      p = f"encoder.layers.encoder_layer_{i}"
      d.ln(f"{p}.ln_1", dim)
      d.sd[f"{p}.self_attention.in_proj_weight"] = (torch.randn(3 * dim, dim, generator=d.g)
                                                    * dim ** -.5)
      d.sd[f"{p}.self_attention.in_proj_bias"] = torch.randn(3 * dim, generator=d.g) * 0.02
      d.linear(f"{p}.self_attention.out_proj", dim, dim)
      d.ln(f"{p}.ln_2", dim)
      d.linear(f"{p}.mlp.0", 3072, dim)
      d.linear(f"{p}.mlp.3", dim, 3072)
    d.ln("encoder.ln", dim)
    d.linear("heads.head", 10, dim)
  else:
    raise ValueError(arch)
  return d.sd


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def max_rel_err(got: dict, ref: dict) -> tuple[float, str]:
  errs = {k: rel_err(got[k], ref[k]) for k in ref}
  worst = max(errs, key=errs.get)
  return errs[worst], worst

