"""``jaxmouse report RUN``: tables, figures and the hierarchy test from a sweep's results."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  jaxmouse report runs/quick
  jaxmouse report runs/full --fev-threshold 0.15 --areas V1,LM,AL,RL --area-ranks V1=0,LM=1,AL=1,RL=1
  jaxmouse report runs/allen --areas VISp,VISl,VISrl,VISal,VISpm,VISam --area-ranks anatomical
"""


def area_ranks(text: str) -> dict[str, float]:
  """``--area-ranks``: ``binary``, ``anatomical`` or ``AREA=RANK,...`` (argparse type)."""
  from jaxmouse.reports import parse_area_ranks

  try:
    return parse_area_ranks(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def register(sub, *, name, help):
  p = sub.add_parser(name, help=help, description=(
      "Reads RUN/results.csv (written by `jaxmouse sweep` or `jaxmouse run`) and writes "
      "RUN/report/: the FEVE-versus-layer figure per readout (PNG and PDF), the per-area table "
      "(each weights kind's layer chosen on validation and its test FEVE, trained - random and "
      "CNN - energy with two-level bootstrap CIs over test images and neurons), the hierarchy "
      "test and summary.md. Never refits."), epilog=EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("run", help="sweep output folder (or a results .csv/.parquet file)")
  p.add_argument("--out", help="report folder (default RUN/report)")
  p.add_argument("--fev-threshold", type=float, default=0.15,
                 help="leave out neurons whose explainable-variance fraction is below this")
  p.add_argument("--areas", default="V1,LM,AL,RL", help="panel order of the areas")
  p.add_argument("--area-ranks", type=area_ranks, default=None,
                 help="the hypothesized hierarchy: 'binary' (default: V1/VISp below every "
                 "higher area), 'anatomical' (Harris et al. 2019 hierarchy scores: VISp < VISl "
                 "< VISrl < VISal < VISpm < VISam) or AREA=RANK items, e.g. V1=0,LM=1,AL=2,RL=2")
  p.add_argument("--n-boot", type=int, default=2000)
  p.add_argument("--n-perm", type=int, default=2000)
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(func=_run)


def _run(args):
  from jaxmouse import reports

  kwargs = dict(fev_threshold=args.fev_threshold, n_boot=args.n_boot, n_perm=args.n_perm,
                seed=args.seed)
  if args.area_ranks:
    kwargs["area_ranks"] = args.area_ranks
  summary = reports.write_report(args.run, config=reports.ReportConfig(**kwargs), out=args.out,
                                 area_order=args.areas.split(","))
  print(summary.read_text())
  print(f"report written to {summary.parent}")
