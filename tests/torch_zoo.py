"""Independent references for AlexNet, ResNet-18/34/50, MobileNetV2 and ViT-B/16, written in
torch.nn.functional from torchvision's model definitions (torchvision itself is not imported),
over state dicts with torchvision's keys.

``state_dict(arch, seed)`` draws random weights in torchvision's layout, heads included (fc,
classifier, heads, the encoder's final norm, ``num_batches_tracked``), with batch-norm running
statistics and affine parameters far from their init (mean != 0, var != 1, weight != 1, bias
!= 0), so a converter that drops, transposes or mixes up a norm's tensors shows.
``forward(arch, state, images)`` returns every named layer as NHWC numpy arrays, for 0-255 images
(n, H, W) (tiled to RGB) or (n, H, W, 3).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
           "resnet50": ("bottleneck", [3, 4, 6, 3])}
MOBILENET_V2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                [6, 160, 3, 2], [6, 320, 1, 1]]


# ---- state dicts in torchvision's layout ---------------------------------------------------------

class _Draw:
  def __init__(self, seed):
    self.g = torch.Generator().manual_seed(seed)
    self.sd = {}

  def conv(self, name, c_out, c_in, k, bias=False):
    fan_out = c_out * k * k
    self.sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=self.g) * (2 / fan_out) ** .5
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
      d.sd[f"{p}.self_attention.in_proj_weight"] = torch.randn(3 * dim, dim, generator=d.g) * dim ** -.5
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


# ---- forwards ----------------------------------------------------------------------------------

def _input(images) -> torch.Tensor:
  x = torch.from_numpy(np.asarray(images, np.float32))
  if x.ndim == 3:
    x = x[..., None].repeat(1, 1, 1, 3)
  return (x.permute(0, 3, 1, 2) / 255.0 - MEAN) / STD


def _nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).numpy().copy()


def _bn(sd, name, x):
  return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                      sd[f"{name}.weight"], sd[f"{name}.bias"], training=False, eps=1e-5)


@torch.no_grad()
def forward(arch: str, sd: dict[str, torch.Tensor], images) -> dict[str, np.ndarray]:
  x = _input(images)
  out = {}
  if arch == "alexnet":
    spec = [("conv1", 0, 4, 2), ("pool1",), ("conv2", 3, 1, 2), ("pool2",), ("conv3", 6, 1, 1),
            ("conv4", 8, 1, 1), ("conv5", 10, 1, 1), ("pool5",)]
    for s in spec:
      if len(s) == 1:
        x = F.max_pool2d(x, 3, 2)
      else:
        x = F.relu(F.conv2d(x, sd[f"features.{s[1]}.weight"], sd[f"features.{s[1]}.bias"],
                            stride=s[2], padding=s[3]))
      out[s[0]] = _nhwc(x)
  elif arch in RESNETS:
    kind, counts = RESNETS[arch]
    x = F.relu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)))
    out["conv1"] = _nhwc(x)
    x = F.max_pool2d(x, 3, 2, 1)
    out["maxpool"] = _nhwc(x)
    for i, n in enumerate(counts, start=1):
      for j in range(n):
        p = f"layer{i}.{j}"
        stride = 2 if i > 1 and j == 0 else 1
        if kind == "basic":
          y = F.relu(_bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride,
                                                   padding=1)))
          y = _bn(sd, f"{p}.bn2", F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1))
        else:
          y = F.relu(_bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
          y = F.relu(_bn(sd, f"{p}.bn2", F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride,
                                                   padding=1)))
          y = _bn(sd, f"{p}.bn3", F.conv2d(y, sd[f"{p}.conv3.weight"]))
        idn = x
        if f"{p}.downsample.0.weight" in sd:
          idn = _bn(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"],
                                                      stride=stride))
        x = F.relu(y + idn)
        out[p] = _nhwc(x)
      out[f"layer{i}"] = _nhwc(x)
  elif arch == "mobilenet_v2":
    x = F.relu6(_bn(sd, "features.0.1", F.conv2d(x, sd["features.0.0.weight"], stride=2,
                                                  padding=1)))
    out["features.0"] = _nhwc(x)
    c_in, idx = 32, 1
    for t, c, n, s in MOBILENET_V2:
      for r in range(n):
        stride = s if r == 0 else 1
        hidden = int(round(c_in * t))
        p = f"features.{idx}.conv"
        y, k = x, 0
        if t != 1:
          y = F.relu6(_bn(sd, f"{p}.0.1", F.conv2d(y, sd[f"{p}.0.0.weight"])))
          k = 1
        y = F.relu6(_bn(sd, f"{p}.{k}.1", F.conv2d(y, sd[f"{p}.{k}.0.weight"], stride=stride,
                                                    padding=1, groups=hidden)))
        y = _bn(sd, f"{p}.{k + 2}", F.conv2d(y, sd[f"{p}.{k + 1}.weight"]))
        x = x + y if stride == 1 and c_in == c else y
        out[f"features.{idx}"] = _nhwc(x)
        c_in, idx = c, idx + 1
    x = F.relu6(_bn(sd, f"features.{idx}.1", F.conv2d(x, sd[f"features.{idx}.0.weight"])))
    out[f"features.{idx}"] = _nhwc(x)
  elif arch == "vit_b_16":
    x = F.conv2d(x, sd["conv_proj.weight"], sd["conv_proj.bias"], stride=16)
    n, d, h, w = x.shape
    x = x.reshape(n, d, h * w).permute(0, 2, 1)
    x = torch.cat([sd["class_token"].expand(n, -1, -1), x], dim=1)
    pos = sd["encoder.pos_embedding"]
    if (h, w) != (14, 14):  # torchvision's interpolate_embeddings, for any h x w grid
      grid = pos[:, 1:].reshape(1, 14, 14, d).permute(0, 3, 1, 2)
      grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)
      pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, d)], dim=1)
    x = x + pos
    heads = 12
    for i in range(12):
      p = f"encoder.layers.encoder_layer_{i}"
      y = F.layer_norm(x, (d,), sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"], eps=1e-6)
      y, _ = F.multi_head_attention_forward(
          y.transpose(0, 1), y.transpose(0, 1), y.transpose(0, 1), d, heads,
          sd[f"{p}.self_attention.in_proj_weight"], sd[f"{p}.self_attention.in_proj_bias"],
          None, None, False, 0.0, sd[f"{p}.self_attention.out_proj.weight"],
          sd[f"{p}.self_attention.out_proj.bias"], training=False, need_weights=False)
      x = x + y.transpose(0, 1)
      y = F.layer_norm(x, (d,), sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"], eps=1e-6)
      y = F.linear(F.gelu(F.linear(y, sd[f"{p}.mlp.0.weight"], sd[f"{p}.mlp.0.bias"])),
                   sd[f"{p}.mlp.3.weight"], sd[f"{p}.mlp.3.bias"])
      x = x + y
      out[f"block{i + 1}"] = x[:, 1:].reshape(n, h, w, d).numpy().copy()
  else:
    raise ValueError(arch)
  return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def max_rel_err(got: dict, ref: dict) -> tuple[float, str]:
  errs = {k: rel_err(got[k], ref[k]) for k in ref}
  worst = max(errs, key=errs.get)
  return errs[worst], worst

