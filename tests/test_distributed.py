"""One sweep over two JAX processes (jax.distributed over the loopback address, CPU collectives,
two forced host devices each, so the neuron axis spans both processes) gives the single-process
table; only the lead process writes; a failure of the lead stops both, within a bound."""

import json
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jaxmouse import _io, sweeps
from jaxmouse.cli import main
from test_sweeps_folders import ENV, _child, _end, tiny_dataset

ARGS = ["--energy", "--readout", "ridge,factorized", "--grid", "ridge:alpha=1", "--grid",
        "l1=0.01", "--steps", "60", "--eval-every", "20", "--batch-size", "16", "--no-progress"]
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  from jaxmouse import data

  return data.save(tiny_dataset(), tmp_path_factory.mktemp("data") / "tiny.npz")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(argv):
  """Runs ``jaxmouse argv`` as processes 0 and 1 of one jax.distributed job; returns
  ``[(returncode, stdout, stderr, pid)]``, both killed after TIMEOUT_S."""
  port = _free_port()
  env = {**ENV, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxmouse", *argv, "--distributed", "--coordinator",
       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  out = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=TIMEOUT_S)
      out.append((p.returncode, stdout, stderr, p.pid))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return out


@pytest.mark.slow
def test_two_processes_give_the_single_process_table(tmp_path, data_file):
  argv = ["sweep", "--data", str(data_file), *ARGS]
  (rc0, out0, err0, pid0), (rc1, out1, err1, _) = _two_processes(
      [*argv, "--out", str(tmp_path / "two")])
  assert rc0 == 0 and rc1 == 0, (err0[-3000:], err1[-3000:])
  assert "16 rows in" in out0 and "rows in" not in out1  # the lead reports for both
  assert main([*argv, "--out", str(tmp_path / "one")]) == 0  # this process: one (or its) device
  two = pd.read_csv(tmp_path / "two" / "results.csv")
  one = pd.read_csv(tmp_path / "one" / "results.csv")
  assert len(two) == 16 and (two["readout"] == "factorized").sum() == 8
  cols = ["weights", "layer", "readout", "area", "neuron", "config"]
  pd.testing.assert_frame_equal(two[cols], one[cols])
  for c in ("feve", "corr", "corr_avg", "oracle", "fev", "val_corr"):
    np.testing.assert_allclose(two[c], one[c], rtol=1e-5, atol=1e-5, err_msg=c)
  # The factorized readout moved away from its start, or agreeing would prove little.
  fitted = sweeps.load_cell(tmp_path / "two", sweeps.Cell("energy", "gabor", "factorized", "V1"))
  assert fitted["meta"]["steps"] == 60
  # Only the lead process claimed and wrote.
  events = [json.loads(line) for line in
            (tmp_path / "two" / sweeps.CLAIMS / sweeps.JOURNAL).read_text().splitlines()]
  assert {e["pid"] for e in events} == {pid0} and len(events) == 8


@pytest.mark.slow
def test_a_failing_lead_stops_every_process(tmp_path, data_file):
  run = tmp_path / "run"
  run.mkdir()
  holder = _child(f"lock = _io.FolderLock({str(run)!r}).acquire()")
  try:
    (rc0, _, err0, _), (rc1, _, err1, _) = _two_processes(
        ["sweep", "--data", str(data_file), *ARGS, "--out", str(run)])
    assert sorted(p.name for p in run.iterdir()) == [_io.LOCK_NAME]  # nothing written
  finally:
    _end(holder)
  assert rc0 == 1 and "in use by another jaxmouse run" in err0, err0
  assert rc1 == 1, err1
  assert "jaxmouse sweep: error: the lead process (0) stopped with an error" in err1, err1
