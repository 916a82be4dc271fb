"""``jaxmouse sweep``: readouts fitted over feature spaces x readouts x areas, resumable."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  jaxmouse sweep --data mouse.npz --weights weights/hed,weights/random0 \\
      --layers conv2_2,conv3_3 --readout factorized --out runs/a
  jaxmouse sweep --data sensorium/static26872-17-20 --weights weights/hed \\
      --layers conv1_2,conv2_2,conv3_3,conv4_3 --readout factorized,ridge --energy \\
      --resize 36x64 --out runs/b
  jaxmouse sweep --data mouse.npz --energy --readout factorized,gaussian \\
      --grid factorized:l1=0,0.001,0.01 --grid smooth=0.01,0.1 --select area --out runs/c
  jaxmouse sweep --data mouse.npz --weights weights/hed,weights/resnet18,weights/resnet18_random0 \\
      --layers conv2_2,conv3_3,conv4_3,layer1,layer2,layer3 --readout ridge --out runs/zoo
  jaxmouse sweep --data mouse.npz --features my_timm_features/ --readout ridge --out runs/mine
  jaxmouse sweep ... --out runs/a --shard 3/16       # worker 3 of 16, beside the others
  jaxmouse sweep ... --out runs/a --shard auto       # the index and count of a Slurm array task
  jaxmouse sweep ... --out runs/a --distributed      # one fit over the devices of every process

--data: any data set `jaxmouse data info` reads (npz/h5, Sensorium file tree, Allen NWB, TFDS).
--weights: checkpoint folders of any network (`jaxmouse weights`: vgg16, vgg19, alexnet,
  resnet18/34/50, mobilenet_v2, vit_b_16). --layers names layers of any of them: each network
  is fitted on those it has (each name must belong to some network); `--layers all` takes every
  layer of every network.
--features: features computed by any tool, one row per image of --data in its order: a folder
  of <layer>.npy files or an .npz with one array per layer, (n, h, w, c) maps or flat (n, d)
  vectors (flat ones fit the ridge readout only). Without --layers every layer is fitted. An
  optional metadata.json in the folder (NAME.json beside an .npz) gives "layers" (network
  order), "arch" and "kind" (trained or random); without it the order is that of --layers (a
  folder) or of the .npz's arrays, and the kind is trained.
--grid [READOUT:]PENALTY=V1,V2,...  (repeatable) builds each readout's grid as the cartesian
  product of its penalties; without a READOUT prefix a penalty applies to every readout that
  has it. Penalties: factorized l1, smooth, l1_mask; full smooth, group, l1; gaussian l1;
  ridge alpha (multiples of the mean eigenvalue of the training features' covariance).
Every (feature space, readout) is fitted for all neurons and penalty configs in one jitted
program; each area's cell is checkpointed under RUN/cells/ as soon as it is done, and running
the same command again resumes (finished cells are skipped; results are the same as an
uninterrupted run). RUN/results.csv has one row per feature space x layer x readout x neuron:
  weights, layer, readout, area, neuron, config, feve, corr, corr_avg, oracle, fev, val_corr

Past one machine: --shard I/N runs worker I's share of the fits (dealt largest first to the
least loaded worker), beside the other workers in one --out folder (a shared file system); each
claims a cell before fitting it (RUN/claims/), so workers started together never fit a cell
twice. The same command without --shard then finds every cell done and writes the table.
--distributed runs one fit over the devices of several processes (jax.distributed): start the
same command in each; JAX finds Slurm, TPU pod slices and Open MPI by itself, else give
--coordinator, --num-processes and --process-id.
"""


def _shape(text: str) -> tuple[int, int]:
  try:
    h, w = (int(s) for s in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected HxW such as 36x64, got {text!r}") from None
  return h, w


def _list(text: str) -> tuple[str, ...]:
  return tuple(s.strip() for s in text.split(",") if s.strip())


def parse_grids(items, readouts) -> dict[str, dict[str, tuple[float, ...]]]:
  """``["factorized:l1=0,0.1", "smooth=1"]`` -> ``{"factorized": {"l1": (0, .1), "smooth": (1,)}}``."""
  from jaxmouse import readouts as readouts_lib

  penalties = {r: (("alpha",) if r == "ridge" else readouts_lib.get(r).penalties) for r in readouts}
  grids: dict[str, dict[str, tuple[float, ...]]] = {}
  for item in items or ():
    head, sep, values = item.partition("=")
    if not sep:
      raise ValueError(f"--grid expects [READOUT:]PENALTY=V1,V2,..., got {item!r}")
    readout, _, name = head.rpartition(":")
    try:
      vals = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError:
      raise ValueError(f"--grid {item!r}: values must be numbers") from None
    if not vals:
      raise ValueError(f"--grid {item!r} has no values")
    targets = [readout] if readout else [r for r in readouts if name in penalties[r]]
    if readout and readout not in penalties:
      raise ValueError(f"--grid {item!r} names readout {readout!r}, which is not swept "
                       f"(--readout {','.join(readouts)})")
    if not targets or name not in penalties[targets[0]]:
      known = {r: list(p) for r, p in penalties.items()}
      raise ValueError(f"--grid {item!r}: no swept readout has a penalty {name!r}; known: {known}")
    for r in targets:
      grids.setdefault(r, {})[name] = vals
  return grids


def register(sub, *, name: str, help: str) -> None:
  p = sub.add_parser(name, help=help, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Fit readouts of every neuron on frozen feature spaces (CNN layers "
                     "of weights checkpoints, the Gabor energy model) for a grid of penalties; "
                     "select per neuron on validation; score on the repeated test images.")
  p.add_argument("--data", required=True, help="data set path (any format jaxmouse reads)")
  p.add_argument("--weights", type=_list, default=(), help="checkpoint folders, comma-separated")
  p.add_argument("--layers", type=_list, default=(),
                 help="layer names, e.g. conv2_2,conv3_3,layer2 (each network takes those it "
                 "has), or 'all'")
  p.add_argument("--features", type=_list, default=(),
                 help="precomputed features: folders of <layer>.npy or .npz files, comma-separated")
  p.add_argument("--readout", type=_list, default=("factorized",),
                 help="factorized, full, gaussian and/or ridge (comma-separated)")
  p.add_argument("--energy", action="store_true", help="add the Gabor energy-model feature space")
  p.add_argument("--areas", type=_list, default=None, help="areas to fit (default: all)")
  p.add_argument("--out", required=True, help="run folder (resumed if it holds the same sweep)")
  p.add_argument("--grid", action="append", metavar="[READOUT:]PENALTY=V1,V2",
                 help="penalty values (repeatable); default: a small grid per readout")
  p.add_argument("--select", choices=("neuron", "area"), default="neuron",
                 help="choose the config per neuron or one per area (on validation)")
  p.add_argument("--resize", type=_shape, default=None, metavar="HxW",
                 help="resize the images first, e.g. 36x64, keeping their aspect ratio (padded "
                 "with the images' mean gray)")
  p.add_argument("--steps", type=int, default=5000, help="maximum steps per fit")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--lr", type=float, default=None,
                 help="Adam learning rate (default per readout: factorized/gaussian 5e-3, full 1e-4)")
  p.add_argument("--eval-every", type=int, default=100, help="steps between validation checks")
  p.add_argument("--patience", type=int, default=10, help="checks without improvement per decay")
  p.add_argument("--warmup", type=int, default=None,
                 help="steps over which the learning rate rises to its value (default: 100 from "
                 "the warm start when stopping per config, else 0)")
  p.add_argument("--stop-on", choices=("config", "pair"), default="config",
                 help="apply the stopping rule to each config's neurons of an area on their mean "
                 "(default, as the studies stop one all-neuron model) or to each (config, "
                 "neuron) pair on its own (the default of run folders made before 'config')")
  p.add_argument("--loss", choices=("auto", "poisson", "gaussian"), default="auto",
                 help="poisson for non-negative responses (spike counts, events), gaussian (MSE) "
                 "for responses that can be negative (dF/F); auto (default) picks gaussian when "
                 "any training response is negative")
  p.add_argument("--output", choices=("elu", "softplus", "linear"), default=None,
                 help="output nonlinearity (default: elu for poisson, linear for gaussian)")
  p.add_argument("--batch-norm", action="store_true",
                 help="standardize channels and apply ReLU before the readout")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--feature-cache", default=None, help="feature cache folder (default RUN/features)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars (as -q, but "
                 "keeping the messages)")
  add_cluster_arguments(p)
  p.set_defaults(func=run)


def add_cluster_arguments(p) -> None:
  """``--shard`` and ``--distributed`` (with its explicit address flags)."""
  g = p.add_argument_group("past one machine")
  g.add_argument("--shard", default=None, metavar="I/N",
                 help="run only shard I of N (from 0) of the cells, beside the other shards in "
                 "the same --out folder; 'auto' (or auto/N) reads I and N from a Slurm array task "
                 "or a Kubernetes indexed job (JOB_COMPLETION_INDEX, with auto/N)")
  g.add_argument("--distributed", action="store_true",
                 help="fit over the devices of several processes (jax.distributed); run the same "
                 "command in every process; Slurm, TPU pod slices and Open MPI are detected")
  g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                 help="with --distributed: the address of process 0")
  g.add_argument("--num-processes", type=int, default=None, help="with --distributed")
  g.add_argument("--process-id", type=int, default=None, help="with --distributed")


def start_cluster(args):
  """Checks ``--shard`` and starts ``jax.distributed`` if asked (before any JAX computation);
  returns the Shard or None."""
  from jaxmouse import cluster

  shard = None if args.shard is None else cluster.Shard.parse(args.shard)
  explicit = (args.coordinator, args.num_processes, args.process_id)
  if not args.distributed and any(v is not None for v in explicit):
    raise ValueError("--coordinator, --num-processes and --process-id go with --distributed")
  if args.distributed:
    cluster.initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                       process_id=args.process_id)
  return shard


def config_from_args(args):
  from jaxmouse import fit as fitlib
  from jaxmouse import sweeps

  fit = fitlib.FitConfig(loss=args.loss, output=args.output, lr=args.lr,
                         batch_size=args.batch_size, max_steps=args.steps,
                         eval_every=args.eval_every, patience=args.patience,
                         batch_norm=args.batch_norm, stop_on=args.stop_on, warmup=args.warmup,
                         seed=args.seed)
  return sweeps.SweepConfig(weights=args.weights, layers=args.layers, readouts=args.readout,
                            features=args.features,
                            energy=args.energy, areas=args.areas,
                            grids=parse_grids(args.grid, args.readout), fit=fit,
                            select=args.select, image_shape=args.resize)


def run(args) -> None:
  import json
  import time
  from pathlib import Path

  import pandas as pd

  from jaxmouse import cluster, data, sweeps

  from jaxmouse.cli import show_progress

  shard = start_cluster(args)
  config = config_from_args(args)
  ds = data.load(args.data)
  t0 = time.perf_counter()
  table = sweeps.run_sweep(ds, config, args.out, feature_cache=args.feature_cache,
                           progress=not args.no_progress and show_progress(args), shard=shard)
  if not cluster.is_lead():  # the lead process reports for all
    return
  summary = (table.groupby(["weights", "layer", "readout", "area"], sort=False)
             [["feve", "corr", "corr_avg", "oracle"]].mean())
  summary.insert(0, "neurons", table.groupby(["weights", "layer", "readout", "area"],
                                             sort=False).size())
  if len(table):
    with pd.option_context("display.width", 120, "display.max_rows", 200,
                           "display.float_format", "{:.3f}".format):
      print(summary)
  loss = json.loads((Path(args.out) / "sweep.json").read_text())["loss"]
  cells = sweeps.plan(config, config.areas or ds.area_names)
  done = sum(sweeps.is_done(args.out, c) for c in cells)
  took = f"{time.perf_counter() - t0:.1f} s"
  if shard is not None and done < len(cells):
    print(f"shard {shard} done ({took}): {done} of {len(cells)} cells of the sweep are finished; "
          "results.csv is written by the worker that finds them all done, or by the same "
          "command without --shard")
    return
  print(f"{len(table)} rows in {args.out}/results.csv ({took}); loss: {loss}")
