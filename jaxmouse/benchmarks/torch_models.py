"""Plain-PyTorch forwards of AlexNet, ResNet-18/34/50, MobileNetV2 and ViT-B/16 in
torch.nn.functional, from torchvision's model definitions (torchvision itself is not imported),
over state dicts with torchvision's keys: the reference of the exactness tests and of
``jaxmouse bench features``. PyTorch is a test and benchmark dependency only; the library never
imports this module.

``forward(arch, state_dict, images)`` returns every named layer as NHWC numpy arrays, for 0-255
images (n, H, W) (tiled to RGB) or (n, H, W, 3).
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


def _input(images, device) -> torch.Tensor:
  x = torch.from_numpy(np.asarray(images, np.float32)).to(device)
  if x.ndim == 3:
    x = x[..., None].repeat(1, 1, 1, 3)
  return (x.permute(0, 3, 1, 2) / 255.0 - MEAN.to(device)) / STD.to(device)


def _nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).cpu().numpy().copy()


def _bn(sd, name, x):
  return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                      sd[f"{name}.weight"], sd[f"{name}.bias"], training=False, eps=1e-5)


class _Done(Exception):
  pass


@torch.no_grad()
def forward(arch: str, sd: dict[str, torch.Tensor], images, layers=None, *,
            to_numpy: bool = True) -> dict:
  """Every named layer (or those of ``layers``, stopping after the deepest) of ``arch`` with
  the weights ``sd`` (torchvision's keys) for 0-255 images; NHWC numpy arrays, or NCHW (ViT:
  (n, h, w, d)) tensors with ``to_numpy=False``. Runs on the device of ``sd``'s tensors."""
  x = _input(images, next(iter(sd.values())).device)
  out = {}
  wanted = None if layers is None else set(layers)

  def put(name, value, channels_last=False):
    if wanted is None or name in wanted:
      if to_numpy:
        value = value.cpu().numpy().copy() if channels_last else _nhwc(value)
      out[name] = value
      if wanted is not None:
        wanted.discard(name)
        if not wanted:
          raise _Done

  try:
    _forward(arch, sd, x, put)
  except _Done:
    pass
  return out


def _forward(arch, sd, x, put):
  if arch == "alexnet":
    spec = [("conv1", 0, 4, 2), ("pool1",), ("conv2", 3, 1, 2), ("pool2",), ("conv3", 6, 1, 1),
            ("conv4", 8, 1, 1), ("conv5", 10, 1, 1), ("pool5",)]
    for s in spec:
      if len(s) == 1:
        x = F.max_pool2d(x, 3, 2)
      else:
        x = F.relu(F.conv2d(x, sd[f"features.{s[1]}.weight"], sd[f"features.{s[1]}.bias"],
                            stride=s[2], padding=s[3]))
      put(s[0], x)
  elif arch in RESNETS:
    kind, counts = RESNETS[arch]
    x = F.relu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)))
    put("conv1", x)
    x = F.max_pool2d(x, 3, 2, 1)
    put("maxpool", x)
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
        put(p, x)
      put(f"layer{i}", x)
  elif arch == "mobilenet_v2":
    x = F.relu6(_bn(sd, "features.0.1", F.conv2d(x, sd["features.0.0.weight"], stride=2,
                                                  padding=1)))
    put("features.0", x)
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
        put(f"features.{idx}", x)
        c_in, idx = c, idx + 1
    x = F.relu6(_bn(sd, f"features.{idx}.1", F.conv2d(x, sd[f"features.{idx}.0.weight"])))
    put(f"features.{idx}", x)
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
      grid = x[:, 1:].reshape(n, h, w, d)
      put(f"block{i + 1}", grid, channels_last=True)
  else:
    raise ValueError(arch)


