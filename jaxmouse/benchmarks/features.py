"""Images per second of feature extraction, jaxmouse against a PyTorch forward, for any network.

Both sides run the same weights on the same grayscale 0-255 images up to the deepest layer
(VGG16: ``conv5_3``; other networks: their last layer), input normalization and tiling to 3
channels included on both sides, float32, on this machine's CPU (or jax's default device). The
PyTorch side is a plain torch.nn VGG or the torch.nn.functional forwards of
``jaxmouse.benchmarks.torch_models`` (batch norm in eval mode, as torchvision runs it). Timed
calls alternate between the two, so both see the same machine load; the table prints medians
and the ratio of images/s, jaxmouse over torch. PyTorch is a test-only dependency; without it
only the jaxmouse column is printed.

    jaxmouse bench features                      # VGG16, 64x64 and 128x128, batch 16
    jaxmouse bench features --arch resnet50 --sizes 36x64,128x128,224x224
    python experiments/bench_features.py --sizes 36x64,64x64,128x128 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--sizes", default="64x64,128x128",
                      help="comma-separated HxW image sizes (default: 64x64,128x128)")
  parser.add_argument("--batch-size", type=int, default=16, help="images per forward call")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per size (median)")
  parser.add_argument("--arch", default="vgg16",
                      help="network for random weights: vgg16, vgg19, alexnet, resnet18, "
                      "resnet34, resnet50, mobilenet_v2, vit_b_16 (default vgg16)")
  parser.add_argument("--layer", default=None,
                      help="deepest layer computed (default: conv5_3 for VGG, else the last)")
  parser.add_argument("--weights", default=None,
                      help="checkpoint folder (default: random weights of --arch, seed 0)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
  parser.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where the PyTorch side runs (auto: cuda where jax runs on a GPU)")


def _sizes(text: str) -> list[tuple[int, int]]:
  out = []
  for s in text.split(","):
    try:
      h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
      raise ValueError(f"--sizes: expected HxW like 64x64, got {s!r}") from None
    out.append((h, w))
  return out


def _median_seconds(fns: dict, repeats: int) -> dict[str, float]:
  """Median wall time of each callable; calls alternate so both sides see the same machine load."""
  for fn in fns.values():
    fn()  # warm-up: compile (jax) / allocator and thread pool (torch)
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  return {k: float(np.median(v)) for k, v in times.items()}


def torch_forward(weights, layer: str, device="cpu"):
  """A PyTorch forward of ``weights`` up to ``layer`` on ``device``: images -> the layer (NCHW;
  ViT (n, h, w, d)). VGG is a plain torch.nn Sequential, other networks
  ``torch_models.forward``."""
  import torch
  from torch import nn

  from jaxmouse.models import vgg
  if weights.arch not in vgg.ARCHS:
    from jaxmouse.benchmarks.torch_models import forward as torch_net
    from jaxmouse.weights.torchvision import state_dict_from_params

    sd = {k: torch.from_numpy(v).to(device) for k, v in
          state_dict_from_params(weights.params, arch=weights.arch).items()}

    @torch.inference_mode()
    def forward_net(images: np.ndarray):
      return torch_net(weights.arch, sd, images, [layer], to_numpy=False)[layer]
    return forward_net
  mods = []
  for name in vgg.LAYERS[weights.arch]:
    if name.startswith("pool"):
      mods.append(nn.MaxPool2d(2, 2))
    else:
      p = weights.params[name]
      conv = nn.Conv2d(p["kernel"].shape[2], p["kernel"].shape[3], 3, padding=1)
      with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.array(p["kernel"].transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))
      mods += [conv, nn.ReLU(inplace=True)]
    if name == layer:
      break
  net = nn.Sequential(*mods).eval().to(device)
  if weights.normalization == "torchvision":
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    scale = 1 / (torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
  else:  # caffe; grayscale input, so BGR order does not matter
    mean = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    scale = torch.ones(1, 3, 1, 1)
  mean, scale = mean.to(device), scale.to(device)

  @torch.inference_mode()
  def forward(images: np.ndarray):
    x = torch.from_numpy(images).to(device)[:, None].expand(-1, 3, -1, -1)  # (n, 3, H, W)
    return net((x - mean) * scale)
  return forward


def run(args) -> list[dict]:
  import jax

  from jaxmouse.features import compiled_forward
  from jaxmouse.models import vgg, zoo
  from jaxmouse.weights import load, random_init

  weights = load(args.weights) if args.weights else random_init(args.arch, 0)
  layer = args.layer or ("conv5_3" if weights.arch in vgg.ARCHS else zoo.layers(weights.arch)[-1])
  layers = zoo.check_layers(weights.arch, [layer])
  forward = compiled_forward(weights.arch, layers, weights.normalization)
  params = jax.device_put(weights.params)
  torch_ok = not args.no_torch
  if torch_ok:
    try:
      import torch

      from jaxmouse.benchmarks.fit import torch_device
      where = torch_device(torch, args.torch_device)
    except ImportError:
      torch_ok = False
  rows = []
  for h, w in _sizes(args.sizes):
    images = np.random.default_rng(0).uniform(0, 255, (args.batch_size, h, w)).astype(np.float32)
    out = {}

    def run_jax():
      out["jax"] = np.asarray(jax.block_until_ready(forward(params, images))[layers[0]])
    fns = {"jax": run_jax}
    if torch_ok:
      tf = torch_forward(weights, layers[0], where)

      def run_torch():
        y = tf(images)
        out["torch"] = (y if weights.arch == "vit_b_16" else y.permute(0, 2, 3, 1)).cpu().numpy()
      fns["torch"] = run_torch
    t = _median_seconds(fns, args.repeats)
    row = {"size": f"{h}x{w}", "jax_img_s": args.batch_size / t["jax"]}
    if torch_ok:
      ref = out["torch"]
      row.update(torch_img_s=args.batch_size / t["torch"], ratio=t["torch"] / t["jax"],
                 rel_diff=float(np.linalg.norm(out["jax"] - ref) / max(np.linalg.norm(ref), 1e-30)))
    rows.append(row)

  dev = jax.devices()[0]
  print(f"{weights.arch} features up to {layers[0]} ({weights.metadata.get('source', '?')} "
        f"weights), float32, batch {args.batch_size}, median of {args.repeats} timed calls")
  threads = (f", torch {torch.__version__} on {where.type}" + (
      f" with {torch.get_num_threads()} threads" if where.type == "cpu" else ", TF32 allowed")
      if torch_ok else "")
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} on "
        f"{dev.platform} ({dev.device_kind}){threads}")
  head = f"{'size':>9} {'jaxmouse img/s':>15}"
  if torch_ok:
    head += f" {'torch img/s':>12} {'jaxmouse/torch':>15} {'rel. diff':>10}"
  print(head)
  for r in rows:
    line = f"{r['size']:>9} {r['jax_img_s']:>15.1f}"
    if torch_ok:
      line += f" {r['torch_img_s']:>12.1f} {r['ratio']:>14.2f}x {r['rel_diff']:>10.1e}"
    print(line)
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  run(parser.parse_args(argv))
