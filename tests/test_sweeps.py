"""Sweeps on the simulated mouse: planted layers and energy-model neurons are ranked first;
cells are checkpointed, skipped when done, and a run killed with SIGKILL resumes to the same
results."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxmouse import fit as fitlib
from jaxmouse import sweeps

FIT = fitlib.FitConfig(max_steps=300, eval_every=50, batch_size=32, lr=1e-2, patience=4)
GRIDS = {"factorized": {"l1": (1e-3,), "smooth": (1e-2,)}}


def _simulated():
  from jaxmouse.data import SimulationConfig, simulate

  # Area V1: CNN neurons planted from conv1_2 or conv4_1 of random VGG16 weights; area EN:
  # Gabor energy neurons. Low noise (mean rate 25), 80 test images x 4 repeats.
  cfg = SimulationConfig.tiny(areas=("V1", "EN"), layers=(("conv1_2", "conv4_1"), "conv1_2"),
                              gabor_fraction=(0.0, 1.0), rf_sigma=(2.0, 4.0),
                              neurons_per_area=(24, 12), n_images=500, n_test_images=80,
                              n_repeats=4, mean_rate=25.0)
  return simulate(cfg)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  from jaxmouse.weights import random_init, save

  root = tmp_path_factory.mktemp("sweep")
  ds, truth = _simulated()
  save(random_init("vgg16", 0), root / "random0")  # the weights the simulation read out
  config = sweeps.SweepConfig(weights=(str(root / "random0"),), layers=("conv1_2", "conv4_1"),
                              readouts=("factorized",), energy=True, grids=GRIDS, fit=FIT)
  table = sweeps.run_sweep(ds, config, root / "run")
  return ds, truth, config, table, root


def test_planted_layers_and_energy_neurons_are_ranked_first(planted):
  ds, truth, _, table, _ = planted
  label = np.where(truth.model == "gabor", "gabor", truth.layer)
  table = table.assign(truth=label[table["neuron"].astype(int)])
  for metric in ("corr", "feve", "val_corr"):
    means = table.pivot_table(index="truth", columns="layer", values=metric, aggfunc="mean")
    for planted_space in ("conv1_2", "conv4_1", "gabor"):
      row = means.loc[planted_space]
      assert row.idxmax() == planted_space, (metric, means)


def test_results_table_and_cell_checkpoints(planted):
  ds, _, config, table, root = planted
  assert tuple(table.columns) == sweeps.COLUMNS
  assert len(table) == 3 * ds.n_neurons  # 2 layers + energy, one readout, every neuron
  assert set(table["weights"]) == {"random0", "energy"}
  assert set(zip(table["weights"], table["layer"])) == {
      ("random0", "conv1_2"), ("random0", "conv4_1"), ("energy", "gabor")}
  on_disk = pd.read_csv(root / "run" / "results.csv", dtype={"neuron": str})
  pd.testing.assert_frame_equal(on_disk, table, check_dtype=False)
  assert table["config"].unique().tolist() == ["l1=0.001 smooth=0.01"]

  cell = sweeps.Cell("random0", "conv4_1", "factorized", "EN")
  saved = sweeps.load_cell(root / "run", cell)
  state, meta = saved["state"], saved["meta"]
  k = int((ds.areas == "EN").sum())
  assert state["params"]["spatial"].shape == (k, 3, 4)  # conv4_1 of 24x32 images
  assert state["params"]["features"].shape == (k, 512)
  assert meta["unit_ids"] == [str(u) for u in ds.unit_ids[ds.areas == "EN"]]
  rows = table[(table["layer"] == "conv4_1") & (table["area"] == "EN")]
  np.testing.assert_allclose(state["scores"]["feve"], rows["feve"], rtol=1e-6)
  np.testing.assert_allclose(state["val_corr"], rows["val_corr"], rtol=1e-6)


def test_rerun_skips_finished_cells(planted, monkeypatch):
  ds, _, config, table, root = planted

  def refit(*a, **k):
    raise AssertionError("a finished cell was fitted again")

  monkeypatch.setattr(fitlib, "fit_and_score", refit)
  again = sweeps.run_sweep(ds, config, root / "run")
  pd.testing.assert_frame_equal(again, table)


def test_bad_sweeps_are_refused_with_names(planted):
  ds, _, config, _, root = planted
  other = sweeps.SweepConfig(weights=config.weights, layers=("conv1_2",), readouts=("ridge",),
                             fit=FIT)
  with pytest.raises(FileExistsError, match="different sweep"):
    sweeps.run_sweep(ds, other, root / "run")
  # a run folder fitted per pair (the default of older versions, whose manifests lack the key)
  # is not resumed per config
  per_pair = dataclasses.replace(config, fit=dataclasses.replace(FIT, stop_on="pair"))
  assert "stop_on" not in per_pair.to_dict()["fit"]
  assert config.to_dict()["fit"]["stop_on"] == "config"
  with pytest.raises(FileExistsError, match=r"differs in \['config.fit.stop_on'\]"):
    sweeps.run_sweep(ds, per_pair, root / "run")
  bad_layer = sweeps.SweepConfig(weights=config.weights, layers=("conv9_9",), fit=FIT)
  with pytest.raises(ValueError, match="conv9_9.*conv1_1"):
    sweeps.run_sweep(ds, bad_layer, root / "other")
  with pytest.raises(ValueError, match=r"area\(s\) \['AL'\]"):
    sweeps.run_sweep(ds, sweeps.SweepConfig(energy=True, areas=("AL",)), root / "other")
  with pytest.raises(FileNotFoundError, match="not a jaxmouse weights checkpoint"):
    sweeps.run_sweep(ds, sweeps.SweepConfig(weights=(str(root),), layers=("conv1_1",)),
                     root / "other")
  with pytest.raises(ValueError, match="nothing to sweep"):
    sweeps.SweepConfig()
  with pytest.raises(ValueError, match="negative"):
    sweeps.SweepConfig(energy=True, grids={"gaussian": {"l1": (-1.0,)}})


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume_gives_the_uninterrupted_results(planted, tmp_path):
  from jaxmouse import data
  from jaxmouse.cli import main

  ds, _, config, _, root = planted
  data.save(ds, tmp_path / "mouse.npz")
  args = ["sweep", "--data", str(tmp_path / "mouse.npz"), "--weights", config.weights[0],
          "--layers", "conv1_2", "--energy", "--readout", "factorized", "--grid", "l1=0.001",
          "--grid", "smooth=0.01", "--steps", "300", "--eval-every", "50", "--batch-size", "32",
          "--lr", "0.01", "--patience", "4", "--feature-cache", str(root / "run" / "features"),
          "--no-progress"]
  killed = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m", "jaxmouse", *args, "--out", str(killed)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  cells = killed / "cells"
  while time.time() < deadline and proc.poll() is None:
    if cells.is_dir() and any((d / "cell.json").exists() for d in cells.iterdir()):
      break
    time.sleep(0.02)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  done_before = {d.name: (d / "cell.json").stat().st_mtime_ns
                 for d in cells.iterdir() if (d / "cell.json").exists()}
  assert 0 < len(done_before) < 4, done_before  # killed mid-sweep: 2 feature spaces x 2 areas

  assert main([*args, "--out", str(killed)]) == 0  # resume
  assert main([*args, "--out", str(tmp_path / "straight")]) == 0  # uninterrupted
  for name, stamp in done_before.items():  # finished cells were kept, not redone
    assert (cells / name / "cell.json").stat().st_mtime_ns == stamp
  assert not [p for p in cells.iterdir() if p.name.startswith(".tmp-")]
  a = pd.read_csv(killed / "results.csv")
  b = pd.read_csv(tmp_path / "straight" / "results.csv")
  assert len(a) == 2 * ds.n_neurons
  # On every backend the resumed table equals the uninterrupted one to float32 rounding (a GPU
  # may reduce in another order when the killed fit is run again); on CPU, byte for byte.
  pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
  import jax
  if jax.default_backend() == "cpu":
    assert (killed / "results.csv").read_bytes() == \
        (tmp_path / "straight" / "results.csv").read_bytes()
  for d in cells.iterdir():
    meta = json.loads((d / "cell.json").read_text())
    sweeps.load_cell(killed, sweeps.Cell(**meta["cell"]))  # every checkpoint restores


def test_dff_like_responses_get_a_gaussian_loss_by_default_and_poisson_is_refused(tmp_path,
                                                                                   capsys):
  from jaxmouse.cli import main
  from jaxmouse.data import SimulationConfig, save, simulate

  # Gabor energy neurons whose counts become dF/F-like: centred, scaled, with Gaussian noise.
  ds, _ = simulate(SimulationConfig.tiny(areas=("V1",), gabor_fraction=0.9, layers=("conv1_2",),
                                         mean_rate=20.0))
  rng = np.random.default_rng(0)
  r = ds.responses
  dff = (r - r.mean(axis=0)) / (r.std(axis=0) + 1e-6) * 0.2 + rng.normal(0, 0.05, r.shape)
  dff = ds.replace(responses=dff.astype(np.float32), info={"response_type": "dF/F"})
  assert (dff.responses < 0).mean() > 0.3
  path = save(dff, tmp_path / "dff.npz")
  args = ["sweep", "--data", str(path), "--energy", "--readout", "factorized", "--steps", "200",
          "--eval-every", "50", "--batch-size", "32", "--lr", "0.003", "--grid", "l1=0.001",
          "--no-progress"]
  assert main([*args, "--loss", "poisson", "--out", str(tmp_path / "p")]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Poisson loss needs non-negative responses" in err
  assert main([*args, "--out", str(tmp_path / "a")]) == 0
  assert "loss: gaussian (auto: " in capsys.readouterr().out
  manifest = json.loads((tmp_path / "a" / "sweep.json").read_text())
  assert manifest["loss"].startswith("gaussian (auto: ")
  assert manifest["config"]["fit"]["loss"] == "auto"
  table = pd.read_csv(tmp_path / "a" / "results.csv")
  # Finite scores, and the readouts predict the repeat averages (with 140 training images the
  # factorized readout's FEVE stays low: the few-images regime).
  assert np.isfinite(table["feve"]).all() and table["corr_avg"].median() > 0.3, table.describe()
  cell = sweeps.load_cell(tmp_path / "a", sweeps.Cell("energy", "gabor", "factorized", "V1"))
  bias = cell["state"]["params"]["bias"]
  assert np.isfinite(bias).all() and (bias < 0).any()  # linear output: centred responses


def test_each_cell_saves_its_learning_curves_and_the_report_draws_them(planted, tmp_path):
  from jaxmouse import reports
  from jaxmouse.reports import curves

  ds, _, _, _, _ = planted
  grids = {"factorized": {"l1": (1e-3, 1e-1), "smooth": (1e-2,)}}
  fit = fitlib.FitConfig(max_steps=200, eval_every=50, batch_size=32, lr=1e-2, patience=2)
  config = sweeps.SweepConfig(energy=True, readouts=("factorized", "ridge"), grids=grids, fit=fit)
  run = tmp_path / "run"
  table = sweeps.run_sweep(ds, config, run, progress=True)  # a bar inside the fit, too
  areas = list(ds.area_names)
  for area in areas:
    cell = sweeps.Cell("energy", "gabor", "factorized", area)
    h = np.load(sweeps.cell_dir(run, cell) / sweeps.HISTORY)
    k = int((ds.areas == area).sum())
    c = len(h["check_steps"])
    assert h["val_history"].shape == (c, 2, k) and h["stop_step"].shape == (2, k)
    # The warm start is not a check: the first is made after the first 50 steps.
    assert h["check_steps"][0] == 50 and (np.diff(h["check_steps"]) == 50).all()
    assert ((h["stop_step"] >= 50) & (h["stop_step"] <= 200)).all()
    assert list(h["configs"]) == ["l1=0.001 smooth=0.01", "l1=0.1 smooth=0.01"]
    # The curve is the validation correlation the fit chose on: each config's neurons of this
    # area keep their correlations at the check where their mean was highest (the area's
    # configs stop on its own neurons), as saved in the cell's state.
    state = sweeps.load_cell(run, cell)["state"]
    best = h["val_history"].mean(axis=2).argmax(axis=0)  # (configs,) the area's best checks
    np.testing.assert_allclose(h["val_history"][best, [0, 1]], state["val_corr_grid"],
                               atol=1e-4)
    rows = table[(table["area"] == area) & (table["readout"] == "factorized")]
    np.testing.assert_allclose(state["val_corr_grid"].max(axis=0), rows["val_corr"], atol=1e-4)
    ridge = np.load(sweeps.cell_dir(run, sweeps.Cell("energy", "gabor", "ridge", area))
                    / sweeps.HISTORY)
    assert "val_history" not in ridge and ridge["val_corr_grid"].shape[1] == k

  hist = curves.read_histories(run)
  assert list(hist) == [("energy", "gabor", "factorized")]  # ridge has no curve
  pooled = np.concatenate([np.load(sweeps.cell_dir(run, sweeps.Cell("energy", "gabor",
                                                                    "factorized", a))
                                   / sweeps.HISTORY)["val_history"] for a in areas], axis=2)
  lc = curves.learning_curves(hist)
  assert len(lc) == pooled.shape[0] * 2
  for j, config in enumerate(["l1=0.001 smooth=0.01", "l1=0.1 smooth=0.01"]):
    got = lc[lc["config"] == config].sort_values("step")["median_val_corr"].to_numpy()
    np.testing.assert_allclose(got, np.median(pooled[:, j], axis=1), rtol=1e-6)
  reports.write_report(run, config=reports.ReportConfig(fev_threshold=0.0, n_boot=50,
                                                        n_perm=50))
  assert (run / "report" / "learning_curves_factorized.png").stat().st_size > 0
  assert not (run / "report" / "learning_curves_ridge.png").exists()
  assert "learning_curves_factorized.png" in (run / "report" / "summary.md").read_text()


def test_fit_reports_progress_after_every_check(planted):
  ds, _, _, _, _ = planted
  from jaxmouse.models import gabor

  feats = gabor.features(ds.images)
  tr, va = ds.tier("train"), ds.tier("validation")
  seen = []
  res = fitlib.fit(feats, train=fitlib.Trials(*tr), validation=fitlib.Trials(*va),
                   readout="factorized", grid={"l1": [1e-3, 1e-2]},
                   config=fitlib.FitConfig(max_steps=150, eval_every=50, batch_size=32, lr=1e-2,
                                           stop_on="pair"),
                   progress=seen.append)
  assert [p.step for p in seen] == list(res.check_steps) == [50, 100, 150]
  assert all(p.pairs == 2 * ds.n_neurons and p.max_steps == 150 for p in seen)
  assert [p.active for p in seen] == sorted((p.active for p in seen), reverse=True)
  # The best so far: per pair the running maximum of the validation history, best config per
  # neuron, median over neurons.
  running = np.maximum.accumulate(res.val_history, axis=0).max(axis=1)  # (checks, k)
  np.testing.assert_allclose([p.best_val_corr for p in seen], np.median(running, axis=1),
                             atol=1e-4)
