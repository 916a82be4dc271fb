"""The scripts in examples/ run as a user would run them and write what they say."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from jaxmouse import sweeps

ROOT = Path(__file__).resolve().parents[1]


def test_score_a_network_example(tmp_path):
  out = tmp_path / "example"
  proc = subprocess.run([sys.executable, str(ROOT / "examples" / "score_a_network.py"), "--out",
                         str(out)], capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "simulated data" in proc.stdout
  table = pd.read_csv(out / "scores.csv")
  assert list(table.columns) == list(sweeps.COLUMNS)
  assert set(table["weights"]) == {"random_vgg16", "pixels"}
  assert len(table) == 7 * 80 and np.isfinite(table["feve"]).all()
  # The network's layers predict the simulated neurons better than raw pixels do.
  by_space = table.groupby("weights")["feve"].mean()
  assert by_space["random_vgg16"] > by_space["pixels"]
  assert (out / "feve_by_layer.png").stat().st_size > 10_000
