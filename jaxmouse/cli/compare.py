"""``jaxmouse compare``: mouse areas and Cre lines against DNN layers; NeuRN on digit domains."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  jaxmouse compare mice --config quick --out runs/mice          # simulated mouse, random VGG16
  jaxmouse compare --data allen_nwb/ --weights weights/vgg16 --layers conv1_2,conv3_3,conv5_3 \\
      --neurn-k 3 --out runs/allen                                  # 'mice' is the default
  jaxmouse compare mice --weights weights/hed,weights/resnet18,weights/resnet18_random0 \\
      --out runs/networks                                           # networks side by side
  jaxmouse compare digits --config quick --out runs/digits      # NeuRN domain generalization
  jaxmouse compare digits --config quick --data-dir digits/ --domains mnist,mnist_m,svhn,usps \\
      --source mnist --out runs/digits_real

mice writes rsa.csv, cka.csv (each value with its image-bootstrap interval, the group's noise
ceiling and value / ceiling), rmse.csv, neurons.csv, ceilings.csv, networks.csv (per area and
Cre line each network's best layer under every measure, with its relative depth), networks.png,
rsa.png, cka.png and rmse_layers.png (areas x layers heatmaps, per network when there are
several), rmse.png, embedding.png (UMAP when umap-learn is installed, else PCA; k-means clusters,
coloured by area and Cre line), representations.png, summary.md; digits writes results.csv,
table.csv, table.md, k_sweep.csv, accuracy.png, k_sweep.png.
"""


def register(sub, *, name, help):
  p = sub.add_parser(name, help=help, description=(
      "mice (default): RMSE between normalised neural representations and DNN feature "
      "detectors (top-down, bottom-up), RSA and linear CKA of every area and Cre line against "
      "every layer, with and without NeuRN in front of the network. digits: train small CNNs "
      "on one digit domain with and without NeuRN, test on the unseen domains."),
      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("experiment", nargs="?", default="mice", choices=["mice", "digits"],
                 help="which comparison (default: mice)")
  p.add_argument("--config", default="quick", help="quick (default), full or tiny")
  p.add_argument("--out", required=True, help="output folder (refused if it exists)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
  p.add_argument("--neurn-k", type=int, help="NeuRN's k for the 'with NeuRN' arm, fixed before "
                 "any data are seen. mice: default jaxmouse.models.neurn.DEFAULT_K, 0 compares "
                 "raw images only; digits: default chooses k for each source on its validation "
                 "split, never on target or test data")
  mice = p.add_argument_group("mice")
  mice.add_argument("--data", help="a data set jaxmouse.data.load reads (e.g. a folder of Allen "
                    "NWB files); default: the simulated mouse")
  mice.add_argument("--weights", help="weights folders of any networks (jaxmouse weights ...), "
                    "comma-separated; default: random VGG16, seed 0")
  mice.add_argument("--layers", help="comma-separated layers, each network taking those it has "
                    "(default: the config's for VGG16, every layer for other networks)")
  mice.add_argument("--image-shape", help="H,W images are resized to before the network")
  digits = p.add_argument_group("digits")
  digits.add_argument("--data-dir", help="folder with mnist.npz, mnist_m.npz, svhn.npz, usps.npz "
                      "or prepared tensorflow-datasets copies")
  digits.add_argument("--domains", help="comma-separated domains (default: the config's)")
  digits.add_argument("--source", help="comma-separated source domains (default: the config's)")
  digits.add_argument("--seeds", type=int, help="number of seeds 0..n-1")
  digits.add_argument("--epochs", type=int, help="training epochs")
  p.set_defaults(func=_run)


def _run(args) -> int:
  wrong = {"mice": ("data_dir", "domains", "source", "seeds", "epochs"),
           "digits": ("data", "weights", "layers", "image_shape")}[args.experiment]
  used = [f"--{w.replace('_', '-')}" for w in wrong if getattr(args, w) is not None]
  if used:
    raise ValueError(f"{', '.join(used)} do not apply to 'jaxmouse compare {args.experiment}'")
  return _digits(args) if args.experiment == "digits" else _mice(args)


def _progress(args, desc: str | None = None):
  """A tqdm wrapper for loops (None with -q) and the logger's info for messages."""
  import logging

  from jaxmouse.cli import show_progress

  log = logging.getLogger("jaxmouse.compare").info
  if not show_progress(args):
    return None, log
  from tqdm.auto import tqdm

  if desc is None:
    return (lambda xs, desc: tqdm(xs, desc=desc)), log
  return (lambda xs: tqdm(xs, desc=desc)), log


def _mice(args) -> int:
  from pathlib import Path

  from jaxmouse import _io
  from jaxmouse.studies import mice_to_machines as study

  from jaxmouse.models import vgg

  changes, layers = {}, None
  if args.layers:
    layers = tuple(l.strip() for l in args.layers.split(",") if l.strip())
    if all(l in vgg.LAYERS["vgg16"] for l in layers):
      changes["layers"] = layers  # recorded in config.json
  if args.neurn_k is not None:
    changes["neurn_k"] = args.neurn_k or None  # 0: raw images only
  if args.image_shape:
    try:
      changes["image_shape"] = tuple(int(s) for s in args.image_shape.split(","))
    except ValueError:
      raise ValueError(f"--image-shape: expected H,W, got {args.image_shape!r}") from None
  config = study.get_config(args.config, **changes)
  _io.check_output_path(args.out, overwrite=args.overwrite)
  progress, log = _progress(args, "layers")
  result = study.run(config, data=args.data, weights=args.weights, layers=layers,
                     progress=progress, log=log)
  md = study.write_outputs(Path(args.out), config, result, overwrite=args.overwrite)
  print(md)
  print(f"wrote {args.out}/")
  return 0


def _digits(args) -> int:
  from pathlib import Path

  from jaxmouse import _io
  from jaxmouse.studies import neurn_digits as study

  changes = {}
  if args.data_dir:
    changes["data_dir"] = args.data_dir
  if args.domains:
    changes["domains"] = tuple(args.domains.split(","))
  if args.source:
    changes["sources"] = tuple(args.source.split(","))
  elif args.domains and "digits" not in changes["domains"]:
    changes["sources"] = changes["domains"][:1]
  if args.seeds:
    changes["seeds"] = tuple(range(args.seeds))
  if args.epochs:
    changes["epochs"] = args.epochs
  if args.neurn_k:
    changes["neurn_k"] = args.neurn_k
  config = study.get_config(args.config, **changes)
  _io.check_output_path(args.out, overwrite=args.overwrite)
  progress, log = _progress(args)
  result = study.run(config, progress=progress, log=log)
  written = study.write_outputs(Path(args.out), config, result, overwrite=args.overwrite)
  print(written["markdown"])
  print(f"wrote {args.out}/")
  return 0
