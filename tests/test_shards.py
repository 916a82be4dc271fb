"""Sweeps split over workers: shards from a scheduler's environment, whole fits dealt
round-robin, workers started together on one folder fitting every cell exactly once (counted from
the claims' journal), stale claims taken over and live ones left alone, shared and exclusive
folder locks excluding each other, and results.csv grown by appending yet byte for byte the
uninterrupted run's."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from jaxmouse import _io, sweeps
from jaxmouse.cli import main
from jaxmouse.cluster import Shard
from test_sweeps_folders import ENV, _child, _end, _kill, tiny_dataset

# Three fits (one feature space, three readouts) x two areas: six cells.
ARGS = ["--energy", "--readout", "ridge,factorized,gaussian", "--grid", "ridge:alpha=1",
        "--grid", "l1=0.01", "--steps", "60", "--eval-every", "20", "--batch-size", "16",
        "--no-progress"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  from jaxmouse import data

  return data.save(tiny_dataset(), tmp_path_factory.mktemp("data") / "tiny.npz")


def _sweep(data_file, out, *extra):
  return ["sweep", "--data", str(data_file), *ARGS, "--out", str(out), *extra]


def _journal(run):
  path = run / sweeps.CLAIMS / sweeps.JOURNAL
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(data_file, tmp_path_factory):
  """The uninterrupted, unsharded run's folder."""
  out = tmp_path_factory.mktemp("straight") / "run"
  assert main(_sweep(data_file, out)) == 0
  return out


# ---- which cells a worker runs ------------------------------------------------------------------

def test_shard_from_text_and_scheduler_environment():
  assert Shard.parse("1/4", {}) == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
  for bad, match in [("4/4", "0..N-1"), ("1", "no count"), ("a/b", "expects I/N"),
                     ("0/0", "N >= 1"), ("auto", "no scheduler index")]:
    with pytest.raises(ValueError, match=match):
      Shard.parse(bad, {})
  # A Slurm array numbered from its first task id (--array=4-7), or with a step (--array=0-9:3).
  slurm = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "4"}
  assert Shard.parse("auto", slurm) == Shard(2, 4)
  assert Shard.parse("auto/4", slurm) == Shard(2, 4)
  with pytest.raises(ValueError, match="has 4 tasks"):
    Shard.parse("auto/5", slurm)
  stepped = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4",
             "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "3"}
  assert Shard.parse("auto", stepped) == Shard(2, 4)
  listed = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}
  with pytest.raises(ValueError, match="--array=0-2"):  # --array=1,3,8: not evenly spaced
    Shard.parse("auto", listed)
  # A Kubernetes indexed job publishes the index, not the count.
  assert Shard.parse("auto/8", {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 8)
  with pytest.raises(ValueError, match="auto/N"):
    Shard.parse("auto", {"JOB_COMPLETION_INDEX": "3"})
  with pytest.raises(ValueError, match="0..N-1"):
    Shard.parse("auto/2", {"JOB_COMPLETION_INDEX": "3"})


def test_shards_deal_whole_fits_of_every_readout():
  config = sweeps.SweepConfig(weights=("a", "b"), layers=("conv1_2", "conv2_2", "conv3_3"),
                              energy=True, readouts=("ridge", "factorized"))
  # Two stand-in checkpoint names: the layers are given, so no checkpoint is opened.
  layers = {"a": config.layers, "b": config.layers, "energy": ("gabor",)}
  cells = sweeps.plan(config, ["V1", "LM", "AL"], layers=layers)
  fits = sweeps.fits(cells)
  assert len(fits) == 14 and {len(f) for f in fits} == {3}
  for n in (1, 2, 3, 4, 5):
    parts = [sweeps.shard_cells(cells, (i, n)) for i in range(n)]
    assert sorted(c.id for p in parts for c in p) == sorted(c.id for c in cells)  # a partition
    for part in parts:
      assert part == [c for c in cells if c in set(part)]  # in plan order
      assert all(set(f) <= set(part) or not set(f) & set(part) for f in fits)  # whole fits
    # Every worker gets its share of each readout: a worker of 2 does not get only ridge.
    for readout in config.readouts:
      counts = [sum(c.readout == readout for c in p) // 3 for p in parts]
      assert max(counts) - min(counts) <= 1, (n, readout, counts)
  assert sweeps.shard_cells(cells, None) == cells
  assert sweeps.shard_cells(cells, (0, 2)) == sweeps.shard_cells(cells, "0/2")
  # With costs, the largest fits go first, each to the least loaded worker: one fit that costs
  # as much as the other 13 together has a worker to itself.
  big = fits[3]
  cost = lambda f: 13.0 if f == big else 1.0
  parts = [sweeps.shard_cells(cells, (i, 2), cost=cost) for i in range(2)]
  assert parts[0] == big and len(parts[1]) == 13 * 3
  size = lambda f: 2.0 if f[0].readout == "ridge" else 7.0
  parts = [sweeps.shard_cells(cells, (i, 3), cost=size) for i in range(3)]
  loads = [sum(size(f) for f in fits if set(f) <= set(p)) for p in parts]
  assert max(loads) - min(loads) <= 7, loads  # no worker more than one fit ahead


# ---- workers together ---------------------------------------------------------------------------

@pytest.mark.slow
def test_workers_started_together_fit_every_cell_exactly_once(tmp_path, data_file, straight):
  """Shards 0/2 and 1/2 with a worker for the whole sweep (0/1), as a scheduler that restarts a
  task still running would: every cell is wanted by two workers at once."""
  run = tmp_path / "run"
  procs = [subprocess.Popen([sys.executable, "-m", "jaxmouse", *_sweep(data_file, run, "--shard",
                                                                       shard)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for shard in ("0/2", "1/2", "0/1")]
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  events = _journal(run)
  cells = [c.id for c in sweeps.plan(sweeps.SweepConfig(energy=True, readouts=(
      "ridge", "factorized", "gaussian")), ["V1", "LM"])]
  finished = Counter(e["cell"] for e in events if e["event"] == "finish")
  claimed = Counter(e["cell"] for e in events if e["event"] in ("claim", "takeover"))
  assert finished == Counter(cells) and claimed == Counter(cells), events
  assert not [e for e in events if e["event"] in ("release", "takeover")]
  writers = {e["cell"]: e["pid"] for e in events if e["event"] == "finish"}
  assert set(writers.values()) <= {p.pid for p in procs}
  # Whoever finished last wrote the table, the uninterrupted run's bytes; the lock and every
  # claim are gone.
  assert (run / "results.csv").read_bytes() == (straight / "results.csv").read_bytes()
  assert sorted(p.name for p in (run / sweeps.CLAIMS).iterdir()) == [sweeps.JOURNAL]
  assert not (run / _io.LOCK_NAME).exists()
  # The same command without --shard finds every cell done and only collects the table.
  stamp = (run / "results.csv").stat().st_mtime_ns
  assert main(_sweep(data_file, run)) == 0
  assert (run / "results.csv").stat().st_mtime_ns == stamp
  assert len(_journal(run)) == len(events)


def test_shared_and_exclusive_locks_exclude_each_other(tmp_path, data_file, capsys):
  run = tmp_path / "run"
  run.mkdir()
  # Two shard workers hold the lock together; a plain run is refused, naming one of them.
  worker = _child(f"lock = _io.FolderLock({str(run)!r}, shared=True).acquire()")
  try:
    with _io.FolderLock(run, shared=True) as lock:
      assert lock.held
      assert main(_sweep(data_file, run)) == 1
      err = capsys.readouterr().err
      assert len(err.splitlines()) == 1 and "in use by another jaxmouse run (a sharded sweep: " \
          in err and "--shard workers only" in err, err
      assert sorted(p.name for p in run.iterdir()) == [_io.LOCK_NAME]
    assert (run / _io.LOCK_NAME).exists()  # the other worker still holds it
  finally:
    _end(worker)
  with _io.FolderLock(run, shared=True):
    pass
  assert not (run / _io.LOCK_NAME).exists()  # the last worker out removes it
  # A plain run holds it alone: a shard worker is refused.
  holder = _child(f"lock = _io.FolderLock({str(run)!r}).acquire()")
  try:
    assert main(_sweep(data_file, run, "--shard", "0/2")) == 1
    err = capsys.readouterr().err
    assert f"in use by another jaxmouse run (pid {holder.pid} on " in err, err
  finally:
    _end(holder)


# ---- claims -------------------------------------------------------------------------------------

def _claim_path(run, cell_id):
  return run / sweeps.CLAIMS / f"{cell_id}.claim"


@pytest.mark.slow
def test_stale_claim_of_a_killed_worker_is_taken_over_and_a_live_one_is_left(tmp_path, data_file,
                                                                             straight, capsys):
  run = tmp_path / "run"
  stale, live = "energy__gabor__ridge__V1", "energy__gabor__gaussian__LM"
  dead = _child(f"c = _io.Claim({str(_claim_path(run, stale))!r})\nassert c.acquire()")
  dead_pid = dead.pid
  _kill(dead)
  holder = _child(f"c = _io.Claim({str(_claim_path(run, live))!r})\nassert c.acquire()")
  try:
    assert main(_sweep(data_file, run)) == 0
    err = capsys.readouterr().err  # the CLI's warning, one line on stderr
    assert "1 of 6 cells were left to other live processes" in err, err
    events = _journal(run)
    taken = [e for e in events if e["event"] == "takeover"]
    assert [(e["cell"], e["previous"]["pid"]) for e in taken] == [(stale, dead_pid)]
    assert sweeps.is_done(run, sweeps.Cell("energy", "gabor", "ridge", "V1"))
    gaussian = sweeps.Cell("energy", "gabor", "gaussian", "LM")
    assert not sweeps.is_done(run, gaussian) and _claim_path(run, live).exists()
    assert live not in {e["cell"] for e in events}
  finally:
    _end(holder)  # exits without releasing: its claim is left, stale
  assert main(_sweep(data_file, run)) == 0
  assert [e["cell"] for e in _journal(run) if e["event"] == "takeover"] == [stale, live]
  assert (run / "results.csv").read_bytes() == (straight / "results.csv").read_bytes()
  assert sorted(p.name for p in (run / sweeps.CLAIMS).iterdir()) == [sweeps.JOURNAL]


def test_claims_of_other_hosts_are_taken_over_only_when_no_longer_refreshed(tmp_path):
  path = tmp_path / "x.claim"
  record = {"host": "node7", "host_id": "0123abcd", "pid": 4242, "start": 1, "since": "then"}
  path.write_text(json.dumps(record) + "\n")
  claim = _io.Claim(path, timeout=60)
  assert not claim.acquire()  # written just now: its holder may be alive on node7
  old = time.time() - 61
  os.utime(path, (old, old))
  assert claim.acquire() and claim.previous == record
  mine = json.loads(path.read_text())
  assert mine["pid"] == os.getpid() and mine["host_id"] == _io._host_id()
  claim.refresh()
  assert time.time() - path.stat().st_mtime < 5
  other = _io.Claim(path, timeout=60)
  assert not other.acquire()  # ours, and we live
  claim.release()
  assert not path.exists()
  assert other.acquire() and other.previous is None  # a fresh claim, O_EXCL
  other.release()


def test_claim_is_won_by_one_of_many(tmp_path):
  """Processes racing for one claim (new or stale): exactly one gets it."""
  path = tmp_path / "c.claim"
  code = textwrap.dedent(f"""
      import sys, time
      from jaxmouse import _io
      t = float(sys.argv[1])
      while time.time() < t:
        pass
      c = _io.Claim({str(path)!r})
      print(int(c.acquire()), flush=True)
      sys.stdin.read()
      """)
  for rounds in range(2):  # first a fresh claim; then the winner is killed and its claim stale
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", code, start], env=ENV, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(4)]
    got = [int(p.stdout.readline()) for p in procs]
    assert sum(got) == 1, got
    for p, g in zip(procs, got):
      (_kill if g else _end)(p)


# ---- results.csv --------------------------------------------------------------------------------

@pytest.mark.slow
def test_results_are_appended_and_end_in_plan_order(tmp_path, data_file, straight, monkeypatch):
  reads, collected = Counter(), []
  rows_lines, collect = sweeps._rows_lines, sweeps.collect
  monkeypatch.setattr(sweeps, "_rows_lines",
                      lambda run, cell: reads.update([cell.id]) or rows_lines(run, cell))
  monkeypatch.setattr(sweeps, "collect", lambda *a: collected.append(1) or collect(*a))
  run = tmp_path / "run"
  # Out of plan order: the last fit first (another run's work), then the rest.
  last = sweeps.plan(sweeps.SweepConfig(energy=True, readouts=("ridge", "factorized",
                                                               "gaussian")), ["V1", "LM"])[-2:]
  for cell in last:
    shutil.copytree(sweeps.cell_dir(straight, cell), sweeps.cell_dir(run, cell))
  assert main(_sweep(data_file, run)) == 0
  assert (run / "results.csv").read_bytes() == (straight / "results.csv").read_bytes()
  # Read: the 4 finished cells once the first fit was written (to start the file), the 2 of
  # the second fit to append them, and all 6 once to put the file in plan order; the table was
  # collected once (never after each fit).
  assert len(collected) == 1
  assert sum(reads.values()) == 4 + 2 + 6, reads


# ---- a study ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sharded_study_writes_its_report_once_every_cell_is_done(tmp_path):
  from jaxmouse import weights as wlib
  from jaxmouse.studies import cadena2019

  wlib.save(wlib.random_init("vgg16", 5), tmp_path / "trained")
  sim = dict(image_shape=(32, 48), neurons_per_area=6, n_images=160, n_test_images=20,
             n_repeats=3, gabor_fraction=0.0, layers=("conv1_2",), arch="vgg16", weights_seed=0)
  config = cadena2019.StudyConfig(
      name="shards", layers=("conv1_2", "conv2_2"), random_seeds=(0,),
      trained=str(tmp_path / "trained"), readouts=("ridge",),
      grids={"ridge": {"alpha": (0.1, 1.0)}}, energy=True, image_shape=(32, 48), simulation=sim)
  out, logs = tmp_path / "run", []
  run = lambda shard: cadena2019.run(config, out=out, log=logs.append, progress=False,
                                     shard=shard)
  assert run("0/2") is None  # the other shard's cells are not done: no report yet
  assert not (out / "report").exists() and not (out / "results.csv").exists()
  assert "shard 0/2 done" in logs[-1]
  cells = sorted((out / "sweeps").rglob("cell.json"))
  assert 0 < len(cells) < 4 * 5  # (2 networks x 2 layers + energy) x 4 areas
  simulated = (out / "data" / "simulated.npz").stat().st_mtime_ns
  summary = run("1/2")  # finds every cell done: the report
  assert summary.is_file() and (out / "results.csv").is_file()
  assert len(sorted((out / "sweeps").rglob("cell.json"))) == 20
  assert (out / "data" / "simulated.npz").stat().st_mtime_ns == simulated  # prepared once
  stamps = {p: p.stat().st_mtime_ns for p in (out / "sweeps").rglob("cell.json")}
  results = (out / "results.csv").read_bytes()
  assert run(None) == summary  # the plain command refits nothing and writes the same table
  assert {p: p.stat().st_mtime_ns for p in (out / "sweeps").rglob("cell.json")} == stamps
  assert (out / "results.csv").read_bytes() == results
  assert not list(out.glob(".*.lock"))
