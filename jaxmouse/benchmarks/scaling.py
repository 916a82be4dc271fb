"""Past one process: cells per hour of a fixed sweep with 1 and 2 shard workers, and the time of
one large fit in 1 and 2 JAX processes, all on this machine.

    jaxmouse bench scaling                      # ~15 minutes on 2 busy CPU cores
    jaxmouse bench scaling --arms 1x1,2x1,4x1 --repeats 5 --neurons 1024

An arm ``NxC`` is N workers (or processes), each pinned to its own C CPU cores
(``sched_setaffinity``); ``1x1`` against ``2x1`` is what a second core (a second node, a second
GPU) adds, and ``1x2`` is one worker whose XLA threads use both cores.

The sweep: a synthetic data set (4 areas, 300 images of 24x32) with random VGG16 weights at
conv1_2 and conv2_2 plus the energy model, ridge and factorized readouts: 6 fits x 4 areas = 24
cells. Features are extracted once into a shared cache first, so the figures are of fitting.
Each arm starts its workers as ``jaxmouse sweep --shard I/N`` processes into a fresh folder and
times them from start to the last exit (process start-up and compilation included: a worker is a
process); the tables of all arms are checked to be the same bytes.

The fit: a factorized readout on ``--images`` images of 16x16x64 features for ``--neurons``
neurons x ``--configs`` penalty configs, ``--steps`` steps without early stopping, timed warm
(after one run that compiles); N processes of one device each are joined by ``jax.distributed``
over the loopback address, the neuron axis split between them. Medians over ``--repeats``, with
the range: the machine may be shared with other jobs. The CPU seconds of all workers (or
processes) tell the work done apart from the waiting: on a busy machine they are the steadier
figure, and their ratio between arms bounds what free cores (another node) would give.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--arms", default="1x1,2x1,1x2",
                      help="NxC: N workers (processes), each on C cores of its own")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs per arm (median)")
  parser.add_argument("--images", type=int, default=2000, help="images of the large fit")
  parser.add_argument("--neurons", type=int, default=256, help="neurons of the large fit")
  parser.add_argument("--configs", type=int, default=8, help="penalty configs of the large fit")
  parser.add_argument("--steps", type=int, default=40, help="steps of the large fit")
  parser.add_argument("--no-sweep", action="store_true", help="only the fit")
  parser.add_argument("--no-fit", action="store_true", help="only the sweep")
  parser.add_argument("--scratch", default=None, help="folder for runs (default: a temporary one)")


def _arms(text: str) -> list[tuple[int, int]]:
  try:
    arms = [tuple(int(x) for x in a.lower().split("x")) for a in text.split(",") if a.strip()]
  except ValueError:
    arms = []
  if not arms or any(len(a) != 2 or min(a) < 1 for a in arms):
    raise ValueError(f"--arms expects NxC items such as 1x1,2x1,1x2, got {text!r}")
  return arms


def _pinned(i: int, cores: int, argv: list[str]) -> list[str]:
  """``argv`` (a Python command line) run as process ``i`` of an arm, pinned to ``cores`` cores
  of its own: a small Python that pins itself, then becomes the command (no fork of this
  multithreaded process)."""
  n = os.cpu_count() or 1
  mine = sorted({(i * cores + j) % n for j in range(cores)})
  pin = (f"import os, sys; hasattr(os, 'sched_setaffinity') and os.sched_setaffinity(0, {mine}); "
         "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
  return [sys.executable, "-c", pin, *argv[1:]]


def _env(**extra) -> dict:
  root = str(Path(__file__).resolve().parents[2])
  path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
  return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu", **extra}


def _spread(xs) -> str:
  return f"{statistics.median(xs):.1f} s ({min(xs):.1f}-{max(xs):.1f})"


# ---- the sweep ----------------------------------------------------------------------------------

def sweep_dataset(seed: int = 0):
  """4 areas x 12 neurons, 300 images of 24x32: 220 train, 40 validation, 40 test x 4 repeats."""
  from jaxmouse.data import NeuralDataset

  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (300, 24, 32)).astype(np.float32)
  trial_image = np.concatenate([np.arange(260), np.repeat(np.arange(260, 300), 4)])
  tiers = np.array(["train"] * 220 + ["validation"] * 40 + ["test"] * 160)
  drive = images.reshape(300, -1)[:, ::16][:, :48] / 60.0
  responses = rng.poisson(drive[trial_image] + 1.0).astype(np.float32)
  return NeuralDataset(images=images, responses=responses, trial_image=trial_image, tiers=tiers,
                       unit_ids=np.arange(48), areas=np.repeat(["V1", "LM", "AL", "RL"], 12),
                       name="scaling")


def _children_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _sweep_arm(scratch: Path, argv: list[str], workers: int, cores: int,
               k: int) -> tuple[float, float, bytes]:
  """(wall seconds, CPU seconds of all workers, results.csv) of one run of an arm."""
  out = scratch / f"sweep-{workers}x{cores}-{k}"
  cmds = [[sys.executable, "-m", "jaxmouse", *argv, "--out", str(out)]
          + (["--shard", f"{i}/{workers}"] if workers > 1 else []) for i in range(workers)]
  start, cpu = time.perf_counter(), _children_cpu()
  procs = [subprocess.Popen(_pinned(i, cores, c), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i, c in enumerate(cmds)]
  errors = [p.communicate()[1] for p in procs]
  took, cpu = time.perf_counter() - start, _children_cpu() - cpu
  for p, err in zip(procs, errors):
    if p.returncode:
      raise RuntimeError(f"a sweep worker failed: {err[-2000:]}")
  return took, cpu, (out / "results.csv").read_bytes()


def bench_sweep(args, scratch: Path) -> None:
  from jaxmouse import data, sweeps
  from jaxmouse.features import FeatureCache
  from jaxmouse.weights import random_init, save

  ds = sweep_dataset()
  data.save(ds, scratch / "data.npz")
  save(random_init("vgg16", 0), scratch / "random0")
  layers = ("conv1_2", "conv2_2")
  FeatureCache(scratch / "features").ensure(scratch / "random0", ds.images, layers)
  argv = ["sweep", "--data", str(scratch / "data.npz"), "--weights", str(scratch / "random0"),
          "--layers", ",".join(layers), "--energy", "--readout", "ridge,factorized",
          "--grid", "factorized:l1=0.001,0.01", "--grid", "smooth=0.01", "--steps", "100",
          "--eval-every", "50", "--batch-size", "64", "--feature-cache",
          str(scratch / "features"), "--no-progress"]
  config = sweeps.SweepConfig(weights=(str(scratch / "random0"),), layers=layers, energy=True,
                              readouts=("ridge", "factorized"))
  n_cells = len(sweeps.plan(config, ["V1", "LM", "AL", "RL"]))
  print(f"sweep: {n_cells} cells ({len(sweeps.fits(sweeps.plan(config, ['V1'])))} fits x 4 "
        f"areas); {args.repeats} runs per arm, arms interleaved")
  times: dict[tuple[int, int], list[float]] = {a: [] for a in _arms(args.arms)}
  cpus: dict[tuple[int, int], list[float]] = {a: [] for a in times}
  tables: dict[int, set[bytes]] = {}
  for k in range(args.repeats):
    for workers, cores in times:
      took, cpu, table = _sweep_arm(scratch, argv, workers, cores, k)
      times[workers, cores].append(took)
      cpus[workers, cores].append(cpu)
      tables.setdefault(cores, set()).add(table)
  print(f"{'workers x cores':>16}  {'wall time: median (min-max)':>30}  {'cells/hour':>10}  "
        f"{'speed-up':>8}  {'CPU s (all workers)':>19}")
  base = statistics.median(next(iter(times.values())))
  for (workers, cores), ts in times.items():
    m = statistics.median(ts)
    print(f"{f'{workers} x {cores}':>16}  {_spread(ts):>30}  {n_cells / m * 3600:>10.0f}  "
          f"{base / m:>8.2f}  {statistics.median(cpus[workers, cores]):>19.1f}")
  same = all(len(t) == 1 for t in tables.values())
  print(f"the same results.csv bytes in every run with the same cores per worker: "
        f"{'yes' if same else 'NO'}")


# ---- one large fit ------------------------------------------------------------------------------

def fit_problem(*, images: int, neurons: int, configs: int, seed: int = 0):
  """Features ``(images, 16, 16, 64)`` and Poisson responses of planted factorized neurons."""
  from jaxmouse import fit as fitlib

  rng = np.random.default_rng(seed)
  feats = np.maximum(rng.standard_normal((images, 16, 16, 64)), 0).astype(np.float32)
  mask = rng.standard_normal((16 * 16, neurons)) * (rng.random((16 * 16, neurons)) < 0.05)
  w = rng.standard_normal((64, neurons)) / 8
  drive = np.einsum("nsc,sk,ck->nk", feats.reshape(images, 256, 64), mask, w)  # (n, k)
  rate = np.asarray(fitlib.output_fn("elu")(drive + 1.0))
  n_train = int(images * 0.8)
  train = fitlib.Trials(np.arange(n_train), rng.poisson(rate[:n_train]).astype(np.float32))
  val = fitlib.Trials(np.arange(n_train, images), rng.poisson(rate[n_train:]).astype(np.float32))
  grid = {"l1": list(np.geomspace(1e-4, 1e-1, configs)), "smooth": [1e-2] * configs}
  return feats, train, val, grid


def _fit_worker(argv: list[str]) -> None:
  """One process of the fit arm: ``PROCESSES PROCESS_ID PORT IMAGES NEURONS CONFIGS STEPS
  REPEATS``; the lead prints one JSON line of timings."""
  processes, pid, port, images, neurons, configs, steps, repeats = (int(a) for a in argv)
  from jaxmouse import cluster

  if processes > 1:
    cluster.initialize(coordinator=f"127.0.0.1:{port}", num_processes=processes, process_id=pid)
  import jax

  from jaxmouse import fit as fitlib

  feats, train, val, grid = fit_problem(images=images, neurons=neurons, configs=configs)
  config = fitlib.FitConfig(max_steps=steps, eval_every=max(steps // 4, 1), batch_size=128,
                            patience=10**6, lr=1e-2)
  mesh = fitlib.make_mesh() if jax.device_count() > 1 else None
  times, cpus = [], []
  for _ in range(repeats + 1):
    start, cpu = time.perf_counter(), time.process_time()
    fitlib.fit(feats, train=train, validation=val, readout="factorized", grid=grid, config=config,
               mesh=mesh)
    times.append(time.perf_counter() - start)
    cpus.append(time.process_time() - cpu)
  print(json.dumps({"first": times[0], "warm": times[1:], "cpu": cpus[1:],
                    "devices": jax.device_count()}))


def _fit_arm(args, processes: int, cores: int) -> dict:
  port = 0
  if processes > 1:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
  argv = [processes, 0, port, args.images, args.neurons, args.configs, args.steps, args.repeats]
  procs = []
  for i in range(processes):
    argv[1] = i
    cmd = [sys.executable, "-m", "jaxmouse.benchmarks.scaling", *map(str, argv)]
    procs.append(subprocess.Popen(_pinned(i, cores, cmd), env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate() for p in procs]
  for p, (_, err) in zip(procs, outs):
    if p.returncode:
      raise RuntimeError(f"a fit process failed: {err[-2000:]}")
  reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  # CPU seconds of a warm run, summed over the processes.
  return {**reports[0], "cpu": [sum(r["cpu"][i] for r in reports)
                                for i in range(len(reports[0]["cpu"]))]}


def bench_fit(args) -> None:
  pairs = args.neurons * args.configs
  print(f"\nfit: factorized readout, {args.images} images x 16x16x64 features, {args.neurons} "
        f"neurons x {args.configs} configs = {pairs} pairs, {args.steps} steps; "
        f"{args.repeats} warm runs after one that compiles")
  print(f"{'processes x cores':>18}  {'devices':>7}  {'first run':>9}  "
        f"{'warm: median (min-max)':>26}  {'speed-up':>8}  {'CPU s (all processes)':>21}")
  base = None
  for processes, cores in _arms(args.arms):
    r = _fit_arm(args, processes, cores)
    m = statistics.median(r["warm"])
    base = base or m
    print(f"{f'{processes} x {cores}':>18}  {r['devices']:>7}  {r['first']:>8.1f}s  "
          f"{_spread(r['warm']):>26}  {base / m:>8.2f}  {statistics.median(r['cpu']):>21.1f}")


def run(args) -> None:
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; "
        f"load average {os.getloadavg()[0]:.1f} at the start (a shared machine makes times noisy)")
  _arms(args.arms)  # a bad --arms is an error before anything runs
  with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
    if not args.no_sweep:
      bench_sweep(args, Path(scratch))
    if not args.no_fit:
      bench_fit(args)


if __name__ == "__main__":
  _fit_worker(sys.argv[1:])
