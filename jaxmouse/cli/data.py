"""``jaxmouse data``: inspect, convert or simulate neural data sets."""

from __future__ import annotations

import argparse
import time

EXAMPLES = """examples:
  jaxmouse data info runs/sim.npz
  jaxmouse data info path/to/static26872-17-20-GrayImageNet-94c6ff995dac583098847cfecd43e7b6
  jaxmouse data info allen_nwb/ --test-images 20
  jaxmouse data info 'allen/ophys_experiment_data/*.nwb' --response dff --window 0-500ms
  jaxmouse data info static26872-17-20-GrayImageNet-94c6ff995dac583098847cfecd43e7b6.zip
  jaxmouse data simulate --out runs/sim.npz --format npz --neurons 100 --n-images 1000
  jaxmouse data simulate --out runs/sim_tree --format filetree --areas VISp,VISl,VISal,VISrl,VISpm,VISam
  jaxmouse data simulate --out runs/flat.npz --no-hierarchy --noise gamma_poisson --noise-level 0.3
  jaxmouse data convert allen_nwb/ --out runs/allen.npz --image-shape 36x46
"""


def _shape(text: str) -> tuple[int, int]:
  try:
    h, w = (int(x) for x in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected HxW such as 36x64, got {text!r}") from None
  return h, w


def _csv(text: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in text.split(",") if x.strip())


def _numbers(kind):
  def parse(text: str):
    items = _csv(text)
    try:
      values = tuple(kind(x) for x in items)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return values[0] if len(values) == 1 else values
  return parse


def _layers(text: str):
  """``conv3_3`` | ``conv2_2+conv3_3`` (one mix for all) | ``conv2_2,conv3_3+conv4_1,...`` (per area)."""
  return tuple(tuple(p.split("+")) for p in _csv(text))


def _load_options(p):
  g = p.add_argument_group("loading options (format-specific)")
  g.add_argument("--format", dest="in_format", default=None,
                 help="input format (default: detected): npz, hdf5, filetree, allen, tfds")
  g.add_argument("--image-shape", type=_shape, default=None,
                 help="filetree/allen: resize images to HxW while reading, keeping the aspect "
                 "ratio (padded with the images' mean gray)")
  g.add_argument("--final-test", choices=("test", "drop"), default="test",
                 help="filetree: keep Sensorium's final_test trials as test (when their "
                 "responses are not withheld), or drop them")
  g.add_argument("--response", choices=("auto", "dff", "events"), default="auto",
                 help="allen: L0 events when every file has an events file (auto, default), "
                 "dF/F traces, or L0 events")
  g.add_argument("--window", default="allen",
                 help="allen: response window after onset: allen ([start, start + 2 x "
                 "duration), AllenSDK's convention; default), presentation ([start, end)), "
                 "A-Bms (e.g. 0-500ms), or a:b imaging frames")
  g.add_argument("--test-images", type=int, default=20,
                 help="allen: number of images held out as the repeated test tier")
  g.add_argument("--validation-fraction", type=float, default=0.2,
                 help="allen: fraction of the other images held out for validation")
  g.add_argument("--split-seed", type=int, default=0, help="allen: seed of the tier split")


def _load(args):
  from jaxmouse.data import io

  fmt = args.in_format or io.detect_format(args.path)
  options = {}
  if fmt == "filetree":
    options = {"final_test": args.final_test, "image_shape": args.image_shape}
  elif fmt == "allen":
    options = {"response": args.response, "window": args.window,
               "n_test_images": args.test_images, "validation_fraction": args.validation_fraction,
               "seed": args.split_seed, "image_shape": args.image_shape}
  ds = io.load(args.path, format=fmt, **options)
  if args.image_shape is not None and ds.image_shape != tuple(args.image_shape):
    ds = ds.resize(args.image_shape)
  return ds, fmt


def register(sub, *, name, help):
  p = sub.add_parser(name, help=help, description=(
      "Neural data sets: `info` summarizes any supported format (plain npz/HDF5, Sensorium "
      "static file tree, Allen Brain Observatory NWB, TFDS ArrayRecord); `convert` rewrites one "
      "in another format; `simulate` draws a mouse with planted Gabor-energy and VGG-readout "
      "neurons and saves its ground truth next to it."), epilog=EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

  info = dsub.add_parser("info", help="print what a data set holds", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  info.add_argument("path", help="data set file or folder")
  info.add_argument("--tier", default="test", help="tier for the explainable variance")
  info.add_argument("--threshold", type=float, default=0.15,
                    help="count neurons whose explainable-variance fraction reaches this")
  _load_options(info)
  info.set_defaults(func=_info)

  conv = dsub.add_parser("convert", help="rewrite a data set in another format", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  conv.add_argument("path", help="input data set")
  conv.add_argument("--out", required=True, help="output path")
  conv.add_argument("--to", default=None, choices=("npz", "hdf5", "filetree", "tfds"),
                    help="output format (default: from the suffix; no suffix = filetree)")
  conv.add_argument("--overwrite", action="store_true")
  _load_options(conv)
  conv.set_defaults(func=_convert)

  sim = dsub.add_parser("simulate", help="draw a simulated mouse with known truth", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  sim.add_argument("--out", required=True, help="output path (file for npz/hdf5, folder otherwise)")
  sim.add_argument("--format", default=None, choices=("npz", "hdf5", "filetree", "tfds"),
                   help="output format (default: from the suffix; no suffix = filetree)")
  sim.add_argument("--overwrite", action="store_true")
  sim.add_argument("--seed", type=int, default=0)
  sim.add_argument("--name", default="simulated")
  sim.add_argument("--areas", type=_csv, default=("V1", "LM", "AL", "RL"),
                   help="comma-separated area names (e.g. VISp,VISl,VISal,VISrl,VISpm,VISam)")
  sim.add_argument("--neurons", type=_numbers(int), default=50,
                   help="neurons per area: one number, or one per area (100,50,50,50)")
  sim.add_argument("--image-shape", type=_shape, default=(36, 64), help="HxW (default 36x64)")
  sim.add_argument("--n-images", type=int, default=1000, help="distinct images, test included")
  sim.add_argument("--n-test-images", type=int, default=100)
  sim.add_argument("--n-repeats", type=int, default=10, help="repeats per test image")
  sim.add_argument("--validation-fraction", type=float, default=0.2)
  sim.add_argument("--no-hierarchy", action="store_true",
                   help="the same model mix, layers and RF sizes in every area")
  sim.add_argument("--layers", type=_layers, default=None,
                   help="CNN layers: conv3_3 | conv2_2+conv3_3 (one mix) | per area: "
                        "conv2_2,conv3_3+conv4_1,conv3_3,conv4_1")
  sim.add_argument("--gabor-fraction", type=_numbers(float), default=None,
                   help="fraction of Gabor energy neurons: one value or one per area")
  sim.add_argument("--rf-sigma", type=_numbers(float), default=None,
                   help="receptive field size (px): one value or one per area")
  sim.add_argument("--n-features", type=int, default=8,
                   help="non-zero feature weights per neuron (per subunit)")
  sim.add_argument("--subunits", type=int, default=1,
                   help="1: CNN neurons are factorized linear readouts of a layer; s > 1: a "
                        "nonlinear subunit model, sum of s rectified-squared readouts")
  sim.add_argument("--arch", default=None, choices=("vgg16", "vgg19"),
                   help="network the CNN neurons read (default: that of --weights, else vgg16)")
  sim.add_argument("--mean-rate", type=float, default=2.0)
  sim.add_argument("--drive-gain", type=float, default=1.0)
  sim.add_argument("--noise", choices=("poisson", "gamma_poisson"), default="poisson")
  sim.add_argument("--noise-level", type=float, default=0.0,
                   help="gamma-Poisson overdispersion k (variance = rate + k rate^2)")
  sim.add_argument("--weights", default=None,
                   help="weights checkpoint folder (jaxmouse weights ...); default random "
                        "weights of --arch")
  sim.add_argument("--weights-seed", type=int, default=0, help="seed of the default random weights")
  sim.add_argument("--batch-size", type=int, default=128, help="images per CNN call")
  sim.add_argument("--quiet", action="store_true", help="no progress bars")
  sim.set_defaults(func=_simulate)


def _info(args):
  from pathlib import Path

  from jaxmouse.data import summary
  from jaxmouse.data.simulation import load_truth, truth_path

  ds, fmt = _load(args)
  truth = None
  tp = truth_path(args.path)
  if Path(tp).is_file():
    truth = load_truth(tp)
    if truth.n_neurons != ds.n_neurons:
      truth = None
  print(summary.describe(ds, source=f"{fmt}: {args.path}", tier=args.tier,
                         threshold=args.threshold, truth=truth, loss=_loss_statement(ds)))


def _loss_statement(ds) -> str | None:
  """What ``--loss auto`` fits to this data set's training responses."""
  if "train" not in ds.tier_names:
    return None
  from jaxmouse import fit

  config, why = fit.resolve_loss(fit.FitConfig(), ds.tier("train")[1])
  text = f"{config.loss} with a {config.output} output ({why}; --loss auto)"
  if ds.info.get("response_type") == "dF/F":
    text += ("; the studies' Poisson loss fits L0 events (AllenSDK's "
             "ophys_experiment_events/<id>_events.npz)")
  return text


def _convert(args):
  from jaxmouse.data import io

  t0 = time.perf_counter()
  ds, fmt = _load(args)
  t1 = time.perf_counter()
  out = io.save(ds, args.out, format=args.to, overwrite=args.overwrite)
  t2 = time.perf_counter()
  print(f"{args.path} ({fmt}) -> {out} ({args.to or io.format_from_suffix(args.out)}): {ds!r}")
  print(f"read {t1 - t0:.1f} s, wrote {t2 - t1:.1f} s")


def _arch_of(weights_dir) -> str:
  from jaxmouse.weights import read_metadata

  return str(read_metadata(weights_dir)["arch"])


def _simulate(args):
  from pathlib import Path

  from jaxmouse._io import check_output_path
  from jaxmouse.data import io, simulation, summary

  fmt = args.format or io.format_from_suffix(args.out)
  out = check_output_path(args.out, overwrite=args.overwrite)
  config = simulation.SimulationConfig(
      seed=args.seed, areas=args.areas, neurons_per_area=args.neurons,
      image_shape=args.image_shape, n_images=args.n_images, n_test_images=args.n_test_images,
      n_repeats=args.n_repeats, validation_fraction=args.validation_fraction,
      hierarchy=not args.no_hierarchy, layers=args.layers, gabor_fraction=args.gabor_fraction,
      rf_sigma=args.rf_sigma, n_features=args.n_features, mean_rate=args.mean_rate,
      drive_gain=args.drive_gain, noise=args.noise, noise_level=args.noise_level,
      weights_seed=args.weights_seed, name=args.name, subunits=args.subunits,
      arch=args.arch or (_arch_of(args.weights) if args.weights else "vgg16"))
  weights = None
  if args.weights:
    from jaxmouse.weights import load as load_weights
    weights = load_weights(args.weights)
  t0 = time.perf_counter()
  ds, truth = simulation.simulate(config, weights=weights, batch_size=args.batch_size,
                                  progress=not args.quiet)
  t1 = time.perf_counter()
  options = {"progress": not args.quiet} if fmt in ("filetree", "tfds") else {}
  io.save(ds, out, format=fmt, overwrite=args.overwrite, **options)
  tpath = simulation.save_truth(truth, simulation.truth_path(out))
  t2 = time.perf_counter()
  source = (f"random {config.arch.upper()} (seed {args.weights_seed})" if weights is None
            else args.weights)
  print(summary.describe(ds, source=f"{fmt}: {out}", truth=truth))
  print(f"\nweights: {source}")
  print(f"simulated in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s -> {out} (+ truth {tpath})")
