"""``jaxmouse extract``: named layer features of an image stack, streamed to disk."""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

EXAMPLES = """examples:
  jaxmouse extract --weights weights/hed --images images.npy --layers conv2_2,conv3_3 --out feats.npz
  jaxmouse extract --weights weights/random0 --images stimuli.npz --images-key images \\
      --layers conv1_1,conv3_1,conv5_3 --batch-size 64 --out feats/      # a folder of <layer>.npy

images: (n, H, W) grayscale or (n, H, W, 3) RGB on a 0-255 scale (.npy is memory-mapped).
--out FILE.npz holds one (n, h, w, c) float32 array per layer; any other --out is a folder with
one <layer>.npy per layer. Features are written batch by batch, so n is bounded by disk only.
"""


def register(sub, *, name: str, help: str) -> None:
  p = sub.add_parser(name, help=help, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Run images through a weights checkpoint (any network of "
                     "`jaxmouse weights`) and save named layers.")
  p.add_argument("--weights", required=True, type=Path, help="checkpoint folder (jaxmouse weights)")
  p.add_argument("--images", required=True, type=Path, help=".npy or .npz image stack on 0-255")
  p.add_argument("--images-key", default=None,
                 help="array name inside an .npz (default: 'images', or its only array)")
  p.add_argument("--layers", required=True, help="comma-separated, e.g. conv2_2,conv3_3")
  p.add_argument("--out", required=True, type=Path, help="FILE.npz, or a folder of <layer>.npy")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=run)


def load_images(path: Path, key: str | None = None):
  """An image stack from .npy (memory-mapped) or .npz (``key``, ``images`` or the only array)."""
  import numpy as np
  if not path.is_file():
    raise FileNotFoundError(f"images file {path} does not exist")
  if path.suffix == ".npy":
    return np.load(path, mmap_mode="r")
  if path.suffix == ".npz":
    with np.load(path) as z:
      names = list(z.keys())
      if key is None:
        key = "images" if "images" in names else (names[0] if len(names) == 1 else None)
      if key is None or key not in names:
        raise ValueError(f"{path} holds arrays {names}; choose one with --images-key")
      return z[key]
  raise ValueError(f"images file {path} must be .npy or .npz")


def run(args) -> None:
  from jaxmouse import _io, features
  from jaxmouse.models import zoo
  from jaxmouse.weights import load

  out = _io.check_output_path(args.out, overwrite=args.overwrite)
  weights = load(args.weights)
  layers = zoo.check_layers(weights.arch, args.layers)
  images = features.check_images(load_images(args.images, args.images_key),
                                 name=str(args.images))
  need = features.extraction_bytes(weights.arch, images.shape, layers, batch_size=args.batch_size)
  _io.check_memory(need, what=f"extracting {','.join(layers)} of {len(images)} images of "
                   f"{images.shape[1]}x{images.shape[2]} in batches of {args.batch_size}",
                   hint="use a smaller --batch-size")
  t0 = time.perf_counter()
  if out.suffix == ".npz":
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-extract-", suffix=_io.owner_tag(),
                                     dir=out.parent) as tmp:
      paths = features.extract_to_dir(weights, images, tmp, layers=layers,
                                      batch_size=args.batch_size, progress=not args.no_progress)
      # Stored (uncompressed) members stream from the per-layer files; np.load reads them back.
      with _io.atomic_path(out) as dst, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED,
                                                        allowZip64=True) as zf:
        for layer, path in paths.items():
          zf.write(path, arcname=f"{layer}.npy")
  else:
    with _io.atomic_path(out, is_dir=True) as tmp:
      features.extract_to_dir(weights, images, tmp, layers=layers, batch_size=args.batch_size,
                              progress=not args.no_progress)
  seconds = time.perf_counter() - t0
  shapes = features.feature_shapes(weights, images.shape, layers)
  print(f"wrote {out}: {len(images)} images in {seconds:.1f} s "
        f"({len(images) / seconds:.1f} images/s), weights {args.weights} "
        f"({weights.arch}, {weights.normalization})")
  for layer, shape in shapes.items():
    print(f"  {layer}: {shape} float32")
