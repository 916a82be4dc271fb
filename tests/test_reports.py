"""Reports on synthetic results tables whose answers are planted."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxmouse import reports

LAYERS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1"]


def _table(rng, *, peaks, trained_gain=0.0, n=60, energy=0.2, noise=0.05):
  """FEVE curves peaking at a planted layer per area; random weights trail by trained_gain."""
  rows = []
  uid = 0
  for area, peak in peaks.items():
    for _ in range(n):
      uid += 1
      fev = rng.uniform(0.05, 0.9)
      for kind, names in (("trained", ["vgg"]), ("random", ["random0", "random1"])):
        for w in names:
          for i, layer in enumerate(LAYERS):
            f = 0.5 * np.exp(-0.5 * ((i - peak) / 1.0) ** 2) + noise * rng.standard_normal()
            f -= trained_gain if kind == "random" else 0.0
            rows.append(dict(weights=w, layer=layer, readout="factorized", area=area,
                             neuron=uid, feve=f, fev=fev))
      rows.append(dict(weights="energy", layer="energy", readout="factorized", area=area,
                       neuron=uid, feve=energy + noise * rng.standard_normal(), fev=fev))
  return pd.DataFrame(rows)


def test_planted_hierarchy_and_trained_gain(tmp_path):
  rng = np.random.default_rng(0)
  df = _table(rng, peaks={"V1": 3, "LM": 6, "AL": 6, "RL": 5}, trained_gain=0.1)
  df.to_csv(tmp_path / "results.csv", index=False)
  cfg = reports.ReportConfig(n_boot=500, n_perm=500)
  summary = reports.write_report(tmp_path, config=cfg, area_order=["V1", "LM", "AL", "RL"])
  table = pd.read_csv(tmp_path / "report" / "area_table.csv").set_index("area")
  assert table.loc["V1", "best_layer"] == "conv2_2"
  assert table.loc["LM", "best_layer"] == "conv3_3"
  assert table.loc["RL", "best_layer"] == "conv3_2"
  # Trained beats random by the planted 0.1, and the CI excludes 0 and holds 0.1.
  assert (table["diff_ci_low"] > 0).all()
  assert ((table["diff_ci_low"] < 0.1) & (table["diff_ci_high"] > 0.1)).all()
  assert (table["cnn_energy_ci_low"] > 0).all()
  # Neurons below the FEV threshold are left out.
  kept = df[(df["fev"] >= 0.15)].query("area == 'V1'")["neuron"].nunique()
  assert (table.loc["V1", "n_neurons"]) == kept
  test = json.loads((tmp_path / "report" / "hierarchy.json").read_text())[0]
  assert test["rho"] > 0.5 and test["p_value"] < 0.01
  text = summary.read_text()
  assert "yes, a significant order" in text and "trained better" in text
  for ext in ("png", "pdf"):
    assert (tmp_path / "report" / f"feve_vs_layer_factorized.{ext}").stat().st_size > 1000


def test_no_hierarchy_no_gain():
  rng = np.random.default_rng(1)
  df = reports.check_results(_table(rng, peaks={"V1": 4, "LM": 4, "AL": 4, "RL": 4}))
  cfg = reports.ReportConfig(n_boot=500, n_perm=1000, seed=3)
  df = reports.included(df, cfg)
  test = reports.hierarchy_test(df, cfg, readout="factorized")
  assert test.p_value > 0.05
  table = reports.area_table(df, cfg)
  # No planted gain: the CI of trained - random holds 0 in (nearly) every area.
  holds = (table["diff_ci_low"] <= 0) & (table["diff_ci_high"] >= 0)
  assert holds.sum() >= 3


def test_permutation_p_matches_scipy():
  """The permutation Spearman test agrees with scipy's asymptotic p on a clear effect size."""
  rng = np.random.default_rng(2)
  x = rng.integers(0, 2, 300).astype(float)
  y = x * 0.3 + rng.standard_normal(300)
  rho, p1, _ = reports._spearman_perm(x, y, n_perm=4000, rng=rng)
  ref = __import__("scipy.stats", fromlist=["spearmanr"]).spearmanr(x, y)
  assert rho == pytest.approx(ref.statistic, abs=1e-10)
  assert p1 == pytest.approx(ref.pvalue / 2, abs=0.01)


def test_bad_tables(tmp_path):
  with pytest.raises(FileNotFoundError, match="results.csv"):
    reports.read_results(tmp_path)
  pd.DataFrame({"weights": ["a"], "layer": ["conv1_1"]}).to_csv(tmp_path / "results.csv")
  with pytest.raises(ValueError, match=r"missing columns \['readout', 'area', 'neuron', 'feve'\]"):
    reports.read_results(tmp_path)


def test_cli_report(tmp_path, capsys):
  from jaxmouse.cli import main

  _table(np.random.default_rng(4), peaks={"V1": 2, "LM": 5}).to_csv(tmp_path / "results.csv")
  assert main(["report", str(tmp_path), "--n-boot", "50", "--n-perm", "50",
               "--area-ranks", "V1=0,LM=1"]) == 0
  assert "report written to" in capsys.readouterr().out
  assert main(["report", str(tmp_path / "missing")]) == 1
  assert "no results table" in capsys.readouterr().err
