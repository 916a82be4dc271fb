"""An independent VGG reference in plain torch.nn (no torchvision), laid out as torchvision's.

``TorchVGG(arch).features`` is the same Sequential torchvision builds (conv, ReLU, ..., MaxPool),
so its ``state_dict()`` has torchvision's ``features.<i>.weight|bias`` names.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TorchVGG(nn.Module):

  def __init__(self, arch: str = "vgg16"):
    super().__init__()
    mods, c_in, self.names = [], 3, []
    block, i = 1, 1
    for v in CFG[arch]:
      if v == "M":
        mods.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.names.append(f"pool{block}")
        block, i = block + 1, 1
      else:
        mods += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
        self.names += [None, f"conv{block}_{i}"]
        c_in, i = v, i + 1
    self.features = nn.Sequential(*mods)

  def randomize(self, seed: int) -> "TorchVGG":
    """Kaiming-normal kernels and non-zero biases, so a bias or transpose mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
      for m in self.features:
        if isinstance(m, nn.Conv2d):
          fan_out = m.out_channels * 9
          m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
          m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return self

  @torch.no_grad()
  def layers(self, images: np.ndarray, normalization: str = "torchvision") -> dict[str, np.ndarray]:
    """0-255 images (n, H, W) or (n, H, W, 3) -> {layer: (n, h, w, c)} NHWC, like jaxmouse."""
    x = torch.from_numpy(np.asarray(images, np.float32))
    if x.ndim == 3:
      x = x[..., None].repeat(1, 1, 1, 3)
    x = x.permute(0, 3, 1, 2)
    if normalization == "torchvision":
      x = (x / 255.0 - MEAN) / STD
    else:  # caffe: BGR minus means
      x = x.flip(1) - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    out = {}
    for m, name in zip(self.features, self.names):
      x = m(x)
      if name is not None:
        out[name] = x.permute(0, 2, 3, 1).numpy().copy()
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))
