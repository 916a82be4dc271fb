"""Run folders: one sweep per folder at a time, a second command never harms the first, only a
dead process's temporaries are cleaned, a finished run re-runs in a read-only folder, arguments
are checked before anything is written, and what cannot fit in memory is refused up front."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxmouse import _io, sweeps
from jaxmouse.cli import main
from jaxmouse.data import NeuralDataset

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
CONFIG = sweeps.SweepConfig(energy=True, readouts=("ridge",), grids={"ridge": {"alpha": (1.0,)}})


def tiny_dataset(seed: int = 0) -> NeuralDataset:
  """60 images of 24x32: 40 train, 10 validation, 10 test x 3 repeats; 8 neurons in V1 and LM."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (60, 24, 32)).astype(np.float32)
  trial_image = np.concatenate([np.arange(50), np.repeat(np.arange(50, 60), 3)])
  tiers = np.array(["train"] * 40 + ["validation"] * 10 + ["test"] * 30)
  drive = images.reshape(60, -1)[:, :8] / 50.0  # (60, 8): each neuron follows one pixel
  responses = rng.poisson(drive[trial_image] + 1.0).astype(np.float32)
  return NeuralDataset(images=images, responses=responses, trial_image=trial_image, tiers=tiers,
                       unit_ids=np.arange(8), areas=np.array(["V1"] * 4 + ["LM"] * 4), name="tiny")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  from jaxmouse import data

  return data.save(tiny_dataset(), tmp_path_factory.mktemp("data") / "tiny.npz")


def _sweep_args(data_file, out, *extra):
  return ["sweep", "--data", str(data_file), "--energy", "--readout", "ridge", "--grid",
          "alpha=1", "--no-progress", "--out", str(out), *extra]


def _child(code: str) -> subprocess.Popen:
  """A python child that runs ``code`` (with ``folder``, ``_io`` imported), prints "ready", then
  waits for its stdin to close."""
  script = "import sys\nfrom pathlib import Path\nfrom jaxmouse import _io\n" + code + \
           "\nprint('ready', flush=True)\nsys.stdin.read()\n"
  proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=ENV)
  assert proc.stdout.readline().strip() == "ready"
  return proc


def _kill(proc: subprocess.Popen) -> None:
  proc.send_signal(signal.SIGKILL)
  _end(proc)


def _end(proc: subprocess.Popen) -> None:
  """Closes the child's stdin (it exits normally, if alive) and reaps it: its pid is gone."""
  proc.stdin.close()
  proc.wait()
  proc.stdout.close()


# ---- the lock ---------------------------------------------------------------------------------

def test_live_lock_is_refused_naming_folder_and_holder(tmp_path, data_file, capsys):
  run = tmp_path / "run"
  run.mkdir()
  holder = _child(f"import atexit\natexit.register(_io.FolderLock({str(run)!r}).acquire().release)")
  try:
    with pytest.raises(_io.FolderLocked) as e:
      _io.FolderLock(run).acquire()
    assert str(run) in str(e.value) and f"pid {holder.pid} on " in str(e.value)
    assert main(_sweep_args(data_file, run)) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is in use by another jaxmouse run" in err, err
    assert sorted(p.name for p in run.iterdir()) == [_io.LOCK_NAME]  # nothing else written
  finally:
    _end(holder)
  assert not (run / _io.LOCK_NAME).exists()  # released and removed at exit
  with _io.FolderLock(run) as lock:
    assert lock.held


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  _kill(_child(f"lock = _io.FolderLock({str(run)!r}).acquire()"))
  left = json.loads((run / _io.LOCK_NAME).read_text())
  with _io.FolderLock(run):
    now = json.loads((run / _io.LOCK_NAME).read_text())
    assert now["pid"] == os.getpid() != left["pid"]


def test_lock_file_naming_a_live_process_of_this_host_is_refused(tmp_path):
  """Also where the file system's kernel locks do nothing: the recorded holder is alive."""
  run = tmp_path / "run"
  run.mkdir()
  other = _child("")
  try:
    (run / _io.LOCK_NAME).write_text(json.dumps({
        "host": __import__("socket").gethostname(), "pid": other.pid,
        "start": _io._process_start(other.pid), "command": "jaxmouse sweep ..."}))
    with pytest.raises(_io.FolderLocked, match=rf"pid {other.pid} .*delete .*{_io.LOCK_NAME}"):
      _io.FolderLock(run).acquire()
  finally:
    _end(other)
  with _io.FolderLock(run):  # that process is gone now
    pass


def test_second_command_in_a_running_folder_never_harms_the_first(tmp_path, data_file):
  """A live run's cell being written (a temporary) survives another command started in the
  folder, whether that command is the same sweep or a different one."""
  run = tmp_path / "run"
  assert main(_sweep_args(data_file, run)) == 0
  cell = next((run / "cells").iterdir())
  shutil.rmtree(cell)  # unfinished again
  writer = _child(textwrap.dedent(f"""
      lock = _io.FolderLock({str(run)!r}).acquire()
      ctx = _io.atomic_path(Path({str(cell)!r}), is_dir=True)
      tmp = ctx.__enter__()
      (tmp / "rows.csv").write_text("half")
      """))
  try:
    live = [p for p in (run / "cells").iterdir() if p.name.startswith(".tmp-")]
    assert len(live) == 1
    for args in (_sweep_args(data_file, run), _sweep_args(data_file, run, "--readout", "ridge",
                                                             "--areas", "V1")):
      assert main(args) == 1
      assert live[0].is_dir() and (live[0] / cell.name / "rows.csv").read_text() == "half"
  finally:
    _kill(writer)
  assert main(_sweep_args(data_file, run)) == 0  # the dead writer's temporary is cleaned
  assert not [p for p in (run / "cells").iterdir() if p.name.startswith(".tmp-")]
  assert (cell / "cell.json").is_file()


def test_cadena2019_locks_its_run_folder(tmp_path):
  from jaxmouse.studies import cadena2019

  out = tmp_path / "study"
  out.mkdir()
  holder = _child(f"lock = _io.FolderLock({str(out)!r}).acquire()")
  try:
    with pytest.raises(_io.FolderLocked, match=str(out)):
      cadena2019.run(cadena2019.QUICK, out=out, log=lambda s: None, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [_io.LOCK_NAME]
  finally:
    _end(holder)


# ---- temporaries ------------------------------------------------------------------------------

def test_only_stale_temporaries_are_cleaned(tmp_path):
  folder = tmp_path / "f"
  folder.mkdir()
  _kill(_child(textwrap.dedent(f"""
      ctx = _io.atomic_path(Path({str(folder / 'dead.npy')!r}))
      ctx.__enter__().write_bytes(b"half")
      """)))
  (folder / "done").mkdir()
  (folder / ".old-done-abc12345@999999999.1.00000000").mkdir()  # another host: kept
  (folder / ".tmp-untagged-abc12345").mkdir()  # an older jaxmouse's: removed
  old = folder / f".old-lost-abc12345@{_dead_pid()}.1.{_io._host_id()}"
  old.mkdir()  # a folder replaced by a killed process, before the new one was in place
  (old / "x").write_text("saved")
  with _io.atomic_path(folder / "live.npy") as live:
    live.write_bytes(b"in progress")
    dead = [p for p in folder.iterdir() if p.name.startswith(".tmp-dead.npy-")]
    assert len(dead) == 1
    _io.clean_stale_temporaries(folder)
    assert live.read_bytes() == b"in progress"
  names = sorted(p.name for p in folder.iterdir())
  assert names == [".old-done-abc12345@999999999.1.00000000", "done", "live.npy", "lost"]
  assert (folder / "lost" / "x").read_text() == "saved"


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_killed_extraction_leaves_nothing_after_the_next_start(tmp_path):
  from jaxmouse.features import FeatureCache
  from jaxmouse.weights import random_init, save

  save(random_init("vgg16", 0), tmp_path / "w")
  images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32)).astype(np.float32)
  cache = FeatureCache(tmp_path / "features")
  folder = cache.folder(tmp_path / "w", images)
  folder.mkdir(parents=True)
  _kill(_child(textwrap.dedent(f"""
      import numpy as np
      ctx = _io.atomic_path(Path({str(folder / 'conv1_1.npy')!r}))
      np.lib.format.open_memmap(ctx.__enter__(), mode="w+", dtype=np.float32, shape=(4, 8))
      """)))
  assert [p.name.startswith(".tmp-conv1_1.npy-") for p in folder.iterdir()] == [True]
  cache.ensure(tmp_path / "w", images, ["conv1_1"])
  assert sorted(p.name for p in folder.iterdir()) == ["conv1_1.npy", "info.json"]


# ---- read-only folders and other OS errors ----------------------------------------------------

def _read_only(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
  """Runs ``python -m jaxmouse argv`` with ``folder`` read-only: by permissions for a normal
  user, by a read-only bind mount in a user namespace for root."""
  cmd = [sys.executable, "-m", "jaxmouse", *argv]
  if os.geteuid() != 0:
    for p in [folder, *folder.rglob("*")]:
      p.chmod(p.stat().st_mode & ~0o222)
    try:
      return subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    finally:
      for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
  if shutil.which("unshare") is None or subprocess.run(
      ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
    pytest.skip("running as root without user namespaces: no way to make a folder read-only")
  quoted = " ".join(f"'{a}'" for a in cmd)
  script = (f"mount --bind '{folder}' '{folder}' && mount -o remount,ro,bind '{folder}' && "
            f"exec {quoted}")
  return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                        env=ENV)


def test_finished_sweep_reruns_in_a_read_only_folder(tmp_path, data_file):
  run = tmp_path / "run"
  assert main(_sweep_args(data_file, run)) == 0
  before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
  proc = _read_only(run, _sweep_args(data_file, run))
  assert proc.returncode == 0, proc.stderr
  assert "8 rows in" in proc.stdout
  assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
  # An unfinished sweep there is one line naming the path and the cause.
  shutil.rmtree(next((run / "cells").iterdir()))
  proc = _read_only(run, _sweep_args(data_file, run))
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxmouse sweep: error: " + str(run)), lines
  assert lines[0].endswith(("Read-only file system", "Permission denied")), lines


def test_results_are_written_only_when_they_change(tmp_path):
  table = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
  sweeps.write_results(tmp_path, table)
  stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
  os.utime(tmp_path / "results.csv", ns=(1, 1))
  sweeps.write_results(tmp_path, table)
  assert (tmp_path / "results.csv").stat().st_mtime_ns == 1  # not rewritten
  sweeps.write_results(tmp_path, table.assign(a=[1.0, 3.0]))
  assert pd.read_csv(tmp_path / "results.csv")["a"].tolist() == [1.0, 3.0]
  assert set(stamps) <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize("error,expected", [
    (OSError(28, "No space left on device", "/runs/a/cells/x/rows.csv"),
     "jaxmouse sweep: error: /runs/a/cells/x/rows.csv: No space left on device (the disk is full)"),
    (PermissionError(13, "Permission denied", "/runs/a/sweep.json"),
     "jaxmouse sweep: error: /runs/a/sweep.json: Permission denied"),
    (OSError(30, "Read-only file system", "/runs/a/.jaxmouse.lock"),
     "jaxmouse sweep: error: /runs/a/.jaxmouse.lock: Read-only file system"),
    (MemoryError("Unable to allocate 80.0 GiB for an array"),
     "jaxmouse sweep: error: out of memory: Unable to allocate 80.0 GiB for an array"),
])
def test_os_errors_are_one_line_with_path_and_cause(tmp_path, data_file, monkeypatch, capsys,
                                                    error, expected):
  def fail(*a, **k):
    raise error
  monkeypatch.setattr(sweeps, "run_sweep", fail)
  assert main(_sweep_args(data_file, tmp_path / "run")) == 1
  assert capsys.readouterr().err.splitlines() == [expected]


def test_full_disk_is_refused_before_orbax_writes(tmp_path, monkeypatch, capsys):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(_io.shutil, "disk_usage", lambda p: usage._replace(free=3 * 2**20))
  assert main(["weights", "random", "--seed", "0", "--out", str(tmp_path / "w")]) == 1
  assert capsys.readouterr().err.splitlines() == [
      f"jaxmouse weights: error: {tmp_path / 'w'}: No space left on device: writing it needs "
      "about 56 MiB, 3 MiB is free"]
  assert list(tmp_path.iterdir()) == []


def test_full_disk_during_extraction_is_one_line(tmp_path, monkeypatch, capsys):
  from jaxmouse.weights import random_init, save

  save(random_init("vgg16", 0), tmp_path / "w")
  np.save(tmp_path / "images.npy", np.full((4, 32, 32), 100.0, np.float32))

  def full(fd, offset, length):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "posix_fallocate", full)
  assert main(["extract", "--weights", str(tmp_path / "w"), "--images", str(tmp_path / "images.npy"),
               "--layers", "conv1_1", "--out", str(tmp_path / "feats"), "--no-progress"]) == 1
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].endswith("conv1_1.npy: No space left on device (the disk is "
                                           "full)"), err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy", "w"]


# ---- arguments first ----------------------------------------------------------------------------

def test_duplicate_areas_are_fitted_once(tmp_path, data_file):
  assert main(_sweep_args(data_file, tmp_path / "run", "--areas", "V1,V1,LM,V1")) == 0
  table = pd.read_csv(tmp_path / "run" / "results.csv")
  assert len(table) == 8 and table["neuron"].is_unique
  assert table["area"].drop_duplicates().tolist() == ["V1", "LM"]
  assert sweeps.SweepConfig(energy=True, areas=("LM", "V1", "LM")).areas == ("LM", "V1")


@pytest.mark.parametrize("extra,match", [
    (["--areas", ","], "areas is empty"),
    (["--areas", "V1,AL"], r"no neurons in area\(s\) \['AL'\]"),
    (["--weights", "nothing/here", "--layers", "conv1_1"], "does not exist"),
])
def test_bad_arguments_write_nothing(tmp_path, data_file, capsys, extra, match):
  assert main(_sweep_args(data_file, tmp_path / "run", *extra)) == 1
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and __import__("re").search(match, err), err
  assert not (tmp_path / "run").exists()
  assert main(_sweep_args(data_file, tmp_path / "run")) == 0  # a corrected command is not blocked


def test_images_too_small_for_a_layer_write_nothing(tmp_path, data_file, capsys):
  from jaxmouse.weights import random_init, save

  save(random_init("vgg16", 0), tmp_path / "w")
  assert main(_sweep_args(data_file, tmp_path / "run", "--weights", str(tmp_path / "w"),
                          "--layers", "conv1_1,pool5")) == 1
  err = capsys.readouterr().err
  assert "24x32 pixels are too small for layer pool5 of vgg16: it needs at least 32x32" in err, err
  assert not (tmp_path / "run").exists()


def test_cadena2019_areas(tmp_path):
  from jaxmouse.studies import cadena2019

  config = cadena2019.StudyConfig(name="x", areas=("V1", "V1", "LM"))
  assert config.areas == ("V1", "LM")
  with pytest.raises(ValueError, match="StudyConfig.areas is empty"):
    cadena2019.StudyConfig(name="x", areas=())
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    cadena2019.run(cadena2019.QUICK, out=tmp_path / "study", data=tmp_path / "missing.npz")
  assert not (tmp_path / "study").exists()


# ---- memory ------------------------------------------------------------------------------------

def test_memory_estimates_count_the_largest_arrays():
  from jaxmouse import fit as fitlib
  from jaxmouse.features import extraction_bytes

  d = 9 * 16 * 64
  feats = 4 * 100 * d
  # factorized: spatial (h*w) + features (c) + bias per pair, four copies (params, best, 2 Adam),
  # one chosen config per neuron in the result, and the warm start's (k, d) linear weights
  pair = 9 * 16 + 64 + 1
  assert fitlib.memory_bytes(readout="factorized", feature_shape=(9, 16, 64), n_images=100,
                             n_train_images=80, n_neurons=10, n_configs=3) == \
      feats + 16 * 3 * 10 * pair + 4 * 10 * pair + 4 * 10 * d
  # a config per area is chosen once every neuron is fitted: the result holds the whole grid
  assert fitlib.memory_bytes(readout="factorized", feature_shape=(9, 16, 64), n_images=100,
                             n_train_images=80, n_neurons=10, n_configs=3, select="area") == \
      feats + 16 * 3 * 10 * pair + 4 * 3 * 10 * pair + 4 * 10 * d
  assert fitlib.memory_bytes(readout="full", feature_shape=(9, 16, 64), n_images=100,
                             n_train_images=80, n_neurons=10, n_configs=3) == \
      feats + 16 * 3 * 10 * (d + 1) + 4 * 10 * (d + 1) + 4 * 10 * d
  # Blocks bound the pairs' state and the start: a population of any size needs at most
  # state_mb for its state, and one block's start weights (its result grows with it). Per pair,
  # blocks of neurons of every config; per config, where one config's neurons are over state_mb,
  # blocks of neurons of one config; where they fit, blocks of whole configs from one start.
  full = lambda **kw: fitlib.memory_bytes(readout="full", feature_shape=(9, 16, 64),
                                          n_images=100, n_train_images=80, n_configs=3, **kw)
  block = 64 * 2**20 // (16 * 3 * (d + 1))
  assert full(n_neurons=10**6, state_mb=64, stop_on="pair") == \
      feats + 64 * 2**20 + 4 * 10**6 * (d + 1) + 4 * block * d
  block = 64 * 2**20 // (16 * (d + 1))
  assert full(n_neurons=10**6, state_mb=64, stop_on="config") == \
      feats + 64 * 2**20 + 4 * 10**6 * (d + 1) + 4 * block * d
  assert full(n_neurons=400, state_mb=64, stop_on="config") == \
      feats + 64 * 2**20 + 4 * 400 * (d + 1) + 4 * 400 * d
  assert fitlib.memory_bytes(readout="ridge", feature_shape=(9, 16, 64), n_images=100,
                             n_train_images=80, n_neurons=10, n_configs=3) == \
      feats + 3 * 4 * 80 * 9 * 16 * 64 + 4 * 10 * 9 * 16 * 64
  # conv1_1 of 8 images of 32x32, batches of 4: params, input, conv1_1 as input/output, output.
  from jaxmouse.models import vgg
  params = sum(np.prod(s) for d in vgg.param_shapes("vgg16").values() for s in d.values())
  batch = 4 * (32 * 32 * 3 + 2 * 32 * 32 * 64 + 32 * 32 * 64)
  assert extraction_bytes("vgg16", (8, 32, 32), ["conv1_1"], batch_size=4) == \
      4 * (2 * params + 2 * batch)
  assert extraction_bytes("vgg16", (8, 32, 32), ["conv1_1"], batch_size=4, in_memory=True) == \
      4 * (2 * params + 2 * batch + 8 * 32 * 32 * 64)


def test_sweep_that_cannot_fit_is_refused_with_the_estimate(tmp_path, data_file, monkeypatch,
                                                            capsys):
  monkeypatch.setattr(_io, "available_memory", lambda: 1000)
  assert main(_sweep_args(data_file, tmp_path / "run")) == 1
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1, err
  assert "fitting the ridge readout on energy gabor (60 images x 12x16x320 features" in err, err
  assert "but only 1000 MiB" not in err and "only 0 MiB is available" in err, err
  assert "JAXMOUSE_MEMORY_CHECK=0" in err
  assert not (tmp_path / "run").exists()
  monkeypatch.setenv("JAXMOUSE_MEMORY_CHECK", "0")
  assert main(_sweep_args(data_file, tmp_path / "run")) == 0


def test_extraction_that_cannot_fit_is_refused(tmp_path, monkeypatch, capsys):
  from jaxmouse.weights import random_init, save

  save(random_init("vgg16", 0), tmp_path / "w")
  np.save(tmp_path / "images.npy", np.full((4, 32, 32), 100.0, np.float32))
  monkeypatch.setattr(_io, "available_memory", lambda: 50 * 2**20)
  assert main(["extract", "--weights", str(tmp_path / "w"), "--images", str(tmp_path / "images.npy"),
               "--layers", "conv1_1", "--out", str(tmp_path / "f.npz"), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "extracting conv1_1" in err and "50 MiB" in err, err
  assert not (tmp_path / "f.npz").exists()


def test_the_sweep_command_stops_per_config_unless_told_per_pair_and_sets_the_warm_up():
  from jaxmouse.cli import build_parser
  from jaxmouse.cli.sweep import config_from_args

  base = ["sweep", "--data", "x.npz", "--energy", "--out", "r"]
  parse = lambda *extra: config_from_args(build_parser().parse_args(base + list(extra)))
  assert parse().fit.stop_on == "config" and parse().fit.warmup is None
  assert parse("--stop-on", "pair").fit.stop_on == "pair"
  assert parse("--warmup", "0").fit.warmup == 0
  with pytest.raises(SystemExit):
    build_parser().parse_args(base + ["--stop-on", "neuron"])
