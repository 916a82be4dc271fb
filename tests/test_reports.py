"""Reports on synthetic results tables whose answers are planted."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from jaxmouse import metrics, reports

LAYERS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1"]


def _table(rng, *, peaks, trained_gain=0.0, n=60, energy=0.2, noise=0.05, val_noise=0.02,
           recordings=None):
  """FEVE and validation-correlation curves peaking at a planted layer per area; random
  weights trail by trained_gain. ``recordings``: per area, a list of recording names the
  area's neurons are spread over."""
  rows = []
  uid = 0
  for area, peak in peaks.items():
    for j in range(n):
      uid += 1
      fev = rng.uniform(0.05, 0.9)
      rec = "" if recordings is None else recordings[area][j % len(recordings[area])]
      for kind, names in (("trained", ["vgg"]), ("random", ["random0", "random1"])):
        for w in names:
          for i, layer in enumerate(LAYERS):
            curve = 0.5 * np.exp(-0.5 * ((i - peak) / 1.0) ** 2)
            curve -= trained_gain if kind == "random" else 0.0
            rows.append(dict(weights=w, layer=layer, readout="factorized", area=area,
                             neuron=uid, feve=curve + noise * rng.standard_normal(), fev=fev,
                             val_corr=curve + val_noise * rng.standard_normal(),
                             weights_kind=kind, recording=rec))
      rows.append(dict(weights="energy", layer="gabor", readout="factorized", area=area,
                       neuron=uid, feve=energy + noise * rng.standard_normal(), fev=fev,
                       val_corr=energy + val_noise * rng.standard_normal(),
                       weights_kind="energy", recording=rec))
  return pd.DataFrame(rows)


def test_planted_hierarchy_and_trained_gain(tmp_path):
  rng = np.random.default_rng(0)
  df = _table(rng, peaks={"V1": 3, "LM": 6, "AL": 6, "RL": 5}, trained_gain=0.1)
  df.to_csv(tmp_path / "results.csv", index=False)
  cfg = reports.ReportConfig(n_boot=500, n_perm=500)
  summary = reports.write_report(tmp_path, config=cfg, area_order=["V1", "LM", "AL", "RL"])
  table = pd.read_csv(tmp_path / "report" / "area_table.csv").set_index("area")
  assert table.loc["V1", "trained_layer"] == "conv2_2"
  assert table.loc["LM", "trained_layer"] == "conv3_3"
  assert table.loc["RL", "trained_layer"] == "conv3_2"
  assert (table["random_layer"] == table["trained_layer"]).all()
  # Trained beats random by the planted 0.1, and the CI excludes 0 and holds 0.1.
  assert (table["diff_ci_low"] > 0).all()
  assert ((table["diff_ci_low"] < 0.1) & (table["diff_ci_high"] > 0.1)).all()
  assert (table["cnn_energy_ci_low"] > 0).all()
  # Neurons below the FEV threshold are left out.
  kept = df[(df["fev"] >= 0.15)].query("area == 'V1'")["neuron"].nunique()
  assert (table.loc["V1", "n_neurons"]) == kept
  test = json.loads((tmp_path / "report" / "hierarchy.json").read_text())[0]
  assert test["rho"] > 0.5 and test["p_value"] < 0.01 and test["ci_low"] > 0.3
  text = summary.read_text()
  assert "areas higher in the hierarchy take deeper layers" in text and "trained better" in text
  assert reports.SELECTION_RULE in text and "simulated" not in text
  by_layer = pd.read_csv(tmp_path / "report" / "trained_vs_random_by_layer.csv")
  assert len(by_layer) == 4 * len(LAYERS)
  np.testing.assert_allclose(by_layer["trained_minus_random"], 0.1, atol=0.03)
  for ext in ("png", "pdf"):
    assert (tmp_path / "report" / f"feve_vs_layer_factorized.{ext}").stat().st_size > 1000


def test_layers_are_chosen_on_validation_even_where_test_noise_favours_another():
  """Validation peaks at conv2_2; the test FEVE has a larger bump at conv3_2 (test noise alone).
  The report must choose conv2_2 and report its (lower) test FEVE; choosing on test would
  pick conv3_2 and report its inflated FEVE."""
  rng = np.random.default_rng(5)
  df = _table(rng, peaks={"V1": 3, "LM": 3}, noise=0.01, val_noise=0.01)
  bump = (df["layer"] == "conv3_2") & (df["weights_kind"] != "energy")
  df.loc[bump, "feve"] += 0.4  # above the true peak 0.5 at conv2_2
  df = reports.check_results(df)
  cfg = reports.ReportConfig(n_boot=200, n_perm=200)
  table = reports.area_table(reports.included(df, cfg), cfg).set_index("area")
  for area in ("V1", "LM"):
    assert table.loc[area, "trained_layer"] == "conv2_2"
    assert table.loc[area, "random_layer"] == "conv2_2"
    assert table.loc[area, "trained_feve"] == pytest.approx(0.5, abs=0.02)
  best = reports.choose_neuron_layers(df, readout="factorized", kind="trained")
  assert (best["layer"] == "conv2_2").mean() > 0.95
  # Each weights kind at its own validation choice: random peaks elsewhere on validation.
  shift = (df["weights_kind"] == "random")
  df.loc[shift & (df["layer"] == "conv4_1"), "val_corr"] += 1.0
  table = reports.area_table(reports.included(df, cfg), cfg).set_index("area")
  assert (table["random_layer"] == "conv4_1").all() and (table["trained_layer"] == "conv2_2").all()


def _write_cells(run, df, stats_by_cell):
  """Cells in the sweep layout: RUN/cells/<id>/{cell.json, test_images.npz}."""
  for i, ((w, layer, readout, area), st) in enumerate(stats_by_cell.items()):
    d = run / "cells" / f"c{i}"
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps(
        {"cell": {"weights": w, "layer": layer, "readout": readout, "area": area}}))
    np.savez(d / "test_images.npz", **st)
  df.to_csv(run / "results.csv", index=False)


def _shared_image_population(rng, *, k=150, m=30, repeats=4, image_sd=0.5):
  """Neurons whose prediction errors share image-level terms: some images are hard for every
  neuron. Returns a results table (one cell) and its per-image statistics."""
  signal = rng.normal(0, 1, (m, k))
  hard = rng.normal(0, image_sd, (m, 1))  # the same for every neuron
  pred = signal + hard * rng.uniform(0.5, 1.5, (1, k))
  ids = np.repeat(np.arange(m), repeats)
  resp = signal[ids] + rng.normal(0, 0.7, (m * repeats, k))
  st = metrics.image_stats(pred[ids], resp, ids)
  units = np.array([f"n{i}" for i in range(k)])
  st["unit_ids"] = units
  f = metrics.feve(pred[ids], resp, ids)
  df = pd.DataFrame({"weights": "vgg", "layer": "conv2_2", "readout": "ridge", "area": "V1",
                     "neuron": units, "feve": f, "val_corr": 0.5, "weights_kind": "trained",
                     "fev": metrics.explainable_variance_fraction(resp, ids)})
  return df, {("vgg", "conv2_2", "ridge", "V1"): st}


def test_two_level_bootstrap_resamples_images_and_neurons(tmp_path):
  df, st = _shared_image_population(np.random.default_rng(0))
  _write_cells(tmp_path, df, st)
  cfg = reports.ReportConfig(n_boot=1000, fev_threshold=0.0)
  images = reports.TestImages(tmp_path)
  assert not images.empty
  table = reports.read_results(tmp_path)
  boot = reports.Bootstrap(table, images, cfg)
  draws = boot.feve_draws(readout="ridge", kind="trained", area="V1", layers="conv2_2",
                          neurons=table["neuron"])
  assert draws.shape == (1000, len(table))
  two = boot.ci(table["feve"].to_numpy(), draws)
  one = boot.ci(table["feve"].to_numpy(), None)
  assert two[0] == pytest.approx(one[0])
  # Images shared by all neurons dominate the uncertainty: resampling neurons alone hides it.
  assert (two[2] - two[1]) > 3 * (one[2] - one[1])
  row = reports.area_table(table, cfg, images=images).iloc[0]
  assert "two-level bootstrap over test images and neurons" in row["ci_method"]
  width = two[2] - two[1]  # the table's own resample of neurons differs; the image draws agree
  assert row["trained_ci_high"] - row["trained_ci_low"] == pytest.approx(width, rel=0.15)
  # Coverage: over fresh image sets of the same population, the two-level interval holds the
  # population mean FEVE far more often than the neuron-only one.
  truth = np.mean([_shared_image_population(np.random.default_rng(100 + s))[0]["feve"].mean()
                   for s in range(40)])
  hits = {"two": 0, "one": 0}
  for s in range(12):
    dfs, sts = _shared_image_population(np.random.default_rng(1000 + s))
    b = reports.Bootstrap(reports.check_results(dfs), _Mem(sts), reports.ReportConfig(n_boot=300))
    d = b.feve_draws(readout="ridge", kind="trained", area="V1", layers="conv2_2",
                     neurons=dfs["neuron"])
    for name, dd in (("two", d), ("one", None)):
      _, lo, hi = b.ci(dfs["feve"].to_numpy(), dd)
      hits[name] += lo <= truth <= hi
  assert hits["two"] >= 9 and hits["one"] <= hits["two"] - 4, hits


class _Mem(reports.TestImages):
  """Test-image statistics held in memory."""

  def __init__(self, stats_by_cell):
    super().__init__(None)
    self._paths = {k: None for k in stats_by_cell}
    self._cache = dict(stats_by_cell)


def test_without_image_statistics_the_ci_says_it_resamples_neurons_only():
  df, _ = _shared_image_population(np.random.default_rng(1))
  cfg = reports.ReportConfig(n_boot=100, fev_threshold=0.0)
  row = reports.area_table(reports.check_results(df), cfg).iloc[0]
  assert "neurons only" in row["ci_method"] and "too narrow" in row["ci_method"]


def _best_layer_table(rng, areas, recordings, offsets, n_per_rec=30, shift=None):
  """Each neuron's validation curve peaks at its recording's layer (recording offset, plus an
  area shift where given)."""
  rows, uid = [], 0
  for area, recs in zip(areas, recordings):
    for rec in recs:
      for _ in range(n_per_rec):
        uid += 1
        peak = offsets[rec] + (shift or {}).get(area, 0.0) + rng.normal(0, 0.5)
        for i, layer in enumerate(LAYERS):
          v = np.exp(-0.5 * (i - peak) ** 2)
          rows.append(dict(weights="vgg", layer=layer, readout="ridge", area=area, neuron=uid,
                           feve=v, val_corr=v, weights_kind="trained", recording=rec, fev=0.5))
  return reports.check_results(pd.DataFrame(rows))


def test_hierarchy_respects_recordings_when_areas_are_confounded_with_them():
  """One area per recording, recording offsets random and unrelated to area: neuron-level
  permutations call the order significant; the recording-level test does not."""
  rng = np.random.default_rng(3)
  recs = [["s1", "s2"], ["s3", "s4"]]
  # Recording offsets scatter by about a layer; by chance LM's two are deeper on average.
  offsets = {"s1": 2.0, "s2": 3.0, "s3": 4.5, "s4": 2.5}
  df = _best_layer_table(rng, ["V1", "LM"], recs, offsets, n_per_rec=80)
  cfg = reports.ReportConfig(n_boot=300, n_perm=2000, area_ranks={"V1": 0, "LM": 1})
  t = reports.hierarchy_test(df, cfg, readout="ridge")
  assert t.n_units == 4 and "level of recordings" in t.method
  # With 4 recordings the smallest one-sided p is 1/6: the data cannot show an order.
  assert t.p_value > 0.1 and t.ci_low < 0 < t.ci_high
  naive = reports.hierarchy_test(df.drop(columns="recording"), cfg, readout="ridge")
  assert naive.n_units == df["neuron"].nunique() and "exchangeable" in naive.method
  assert naive.p_value < 0.01  # the confound, read as an order


def test_hierarchy_permutes_within_recordings_that_span_areas():
  rng = np.random.default_rng(4)
  recs = [["a", "b", "c"], ["a", "b", "c"]]
  offsets = {"a": 1.0, "b": 2.5, "c": 4.0}
  # LM neurons peak one layer deeper than V1 neurons of the same recording.
  df = _best_layer_table(rng, ["V1", "LM"], recs, offsets, shift={"LM": 1.0})
  cfg = reports.ReportConfig(n_boot=300, n_perm=1000, area_ranks={"V1": 0, "LM": 1})
  t = reports.hierarchy_test(df, cfg, readout="ridge")
  assert "within each of 3 recordings" in t.method
  assert t.rho > 0 and t.p_value < 0.01 and t.ci_low > 0


def test_ordinal_area_ranks_and_the_anatomical_hierarchy():
  ranks = reports.parse_area_ranks("anatomical")
  order = sorted(["VISam", "VISp", "VISal", "VISl", "VISpm", "VISrl"], key=ranks.get)
  assert order == ["VISp", "VISl", "VISrl", "VISal", "VISpm", "VISam"]
  assert ranks["V1"] == ranks["VISp"] and ranks["AL"] == ranks["VISal"]
  assert reports.parse_area_ranks("V1=0, LM=1,AL=2") == {"V1": 0.0, "LM": 1.0, "AL": 2.0}
  with pytest.raises(ValueError, match="AREA=RANK"):
    reports.parse_area_ranks("V1:0")
  rng = np.random.default_rng(6)
  df = reports.check_results(_table(rng, peaks={"V1": 1, "LM": 3, "RL": 5, "AL": 7}, n=30))
  cfg = reports.ReportConfig(n_boot=200, n_perm=500, area_ranks=ranks)
  t = reports.hierarchy_test(df, cfg, readout="factorized")
  assert t.rho > 0.9 and t.ci_low > 0.8 and t.area_ranks == {a: ranks[a] for a in
                                                            ("V1", "LM", "RL", "AL")}


def test_no_hierarchy_no_gain():
  rng = np.random.default_rng(1)
  df = reports.check_results(_table(rng, peaks={"V1": 4, "LM": 4, "AL": 4, "RL": 4},
                                   val_noise=0.15))
  cfg = reports.ReportConfig(n_boot=500, n_perm=1000, seed=3)
  df = reports.included(df, cfg)
  test = reports.hierarchy_test(df, cfg, readout="factorized")
  assert test.p_value > 0.05 and test.ci_low < 0 < test.ci_high
  assert "the interval includes 0" in reports.verdict(test, cfg.ci)
  table = reports.area_table(df, cfg)
  # No planted gain: the CI of trained - random holds 0 in (nearly) every area.
  holds = (table["diff_ci_low"] <= 0) & (table["diff_ci_high"] >= 0)
  assert holds.sum() >= 3


def _exact_p(x, y, groups=None):
  """One-sided p of Spearman's rho by enumerating every (within-group) permutation of x."""
  rx, ry = stats.rankdata(x), stats.rankdata(y)
  rho = np.corrcoef(rx, ry)[0, 1]
  groups = np.zeros(len(x), int) if groups is None else np.asarray(groups)
  members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
  null = []
  for perm in itertools.product(*[itertools.permutations(m) for m in members]):
    p = rx.copy()
    for m, pm in zip(members, perm):
      p[m] = rx[list(pm)]
    null.append(np.corrcoef(p, ry)[0, 1])
  null = np.array(null)
  return rho, np.mean(null >= rho - 1e-12)


@pytest.mark.parametrize("groups", [None, [0, 0, 0, 0, 1, 1, 1, 1]])
def test_permutation_p_matches_exact_enumeration(groups):
  rng = np.random.default_rng(2)
  x = np.array([0, 1, 0, 1, 0, 1, 1, 0], float)
  y = x * 0.8 + rng.standard_normal(8)
  rho_exact, p_exact = _exact_p(x, y, groups)
  n_perm = 40000
  rho, p1, _ = reports._spearman_perm(x, y, n_perm=n_perm, rng=rng,
                                      groups=None if groups is None else np.array(groups))
  assert rho == pytest.approx(rho_exact, abs=1e-12)
  assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
  se = np.sqrt(p_exact * (1 - p_exact) / n_perm)
  assert 0.005 < p_exact < 0.95  # not at an extreme, where any estimate looks right
  assert abs(p1 - p_exact) < 4 * se + 1.0 / n_perm, (p1, p_exact, se)


def test_runs_without_trained_weights_are_reported(tmp_path):
  rng = np.random.default_rng(7)
  full = _table(rng, peaks={"V1": 2, "LM": 5}, n=30)
  for kinds in (("random", "energy"), ("energy",), ("trained",)):
    run = tmp_path / "_".join(kinds)
    run.mkdir()
    full[full["weights_kind"].isin(kinds)].to_csv(run / "results.csv", index=False)
    text = reports.write_report(run, config=reports.ReportConfig(n_boot=50, n_perm=50)).read_text()
    table = pd.read_csv(run / "report" / "area_table.csv")
    for kind in kinds:
      assert f"{kind}_layer" in table.columns
    if "random" in kinds:
      assert "random CNN at" in text and "(random weights)" in text
    if kinds == ("energy",):
      assert "no CNN weights in this run" in text
    assert "trained and random weights were not both part of this run" in text


def test_bad_tables(tmp_path):
  with pytest.raises(FileNotFoundError, match="results.csv"):
    reports.read_results(tmp_path)
  pd.DataFrame({"weights": ["a"], "layer": ["conv1_1"]}).to_csv(tmp_path / "results.csv")
  with pytest.raises(ValueError, match=r"missing columns \['readout', 'area', 'neuron', 'feve', "
                                       r"'val_corr'\]"):
    reports.read_results(tmp_path)
  with pytest.raises(ValueError, match="area_ranks"):
    reports.ReportConfig(area_ranks={"V1": float("nan")})


def test_cli_report(tmp_path, capsys):
  from jaxmouse.cli import main

  _table(np.random.default_rng(4), peaks={"V1": 2, "LM": 5}).to_csv(tmp_path / "results.csv")
  assert main(["report", str(tmp_path), "--n-boot", "50", "--n-perm", "50",
               "--area-ranks", "V1=0,LM=1"]) == 0
  assert "report written to" in capsys.readouterr().out
  assert main(["report", str(tmp_path), "--n-boot", "50", "--n-perm", "50",
               "--area-ranks", "anatomical"]) == 0
  assert "V1 -0.357, LM -0.093" in capsys.readouterr().out
  with pytest.raises(SystemExit):  # argparse refuses it with a usage line
    main(["report", str(tmp_path), "--area-ranks", "V1"])
  assert "AREA=RANK" in capsys.readouterr().err
  assert main(["report", str(tmp_path / "missing")]) == 1
  assert "no results table" in capsys.readouterr().err


R18 = ["conv1", "maxpool", "layer1.0", "layer1.1", "layer1", "layer2.0", "layer2.1", "layer2",
       "layer3.0", "layer3.1", "layer3", "layer4.0", "layer4.1", "layer4"]


def _zoo_table(rng, n=40):
  """A VGG16 ("imagenet_random_crop": trained, despite its name), a ResNet-18 ("r18", trained)
  and two random ResNet-18 seeds. Validation peaks at the planted layer; a test-only bump sits
  elsewhere. Returns the table and feature_spaces.json's content."""
  vgg_layers = ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]
  spaces = {
      "imagenet_random_crop": {"arch": "vgg16", "kind": "trained",
                               "layers": ["conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2",
                                          "pool2", "conv3_1", "conv3_2", "conv3_3", "pool3",
                                          "conv4_1", "conv4_2", "conv4_3", "pool4", "conv5_1",
                                          "conv5_2", "conv5_3", "pool5"]},
      "r18": {"arch": "resnet18", "kind": "trained", "layers": R18},
      "seed0": {"arch": "resnet18", "kind": "random", "layers": R18, "seed": 0},
      "seed1": {"arch": "resnet18", "kind": "random", "layers": R18, "seed": 1},
  }
  fitted = {"imagenet_random_crop": (vgg_layers, "conv3_3", 0.5),
            "r18": (["layer1.0", "layer1", "layer2", "layer3.1", "layer3", "layer4"], "layer2",
                    0.4),
            "seed0": (["layer1.0", "layer1", "layer2", "layer3.1", "layer3", "layer4"], "layer1",
                      0.3),
            "seed1": (["layer1.0", "layer1", "layer2", "layer3.1", "layer3", "layer4"], "layer1",
                      0.3)}
  rows = []
  for area in ("V1", "LM"):
    for j in range(n):
      uid = f"{area}{j}"
      for w, (layers, peak, top) in fitted.items():
        for i, layer in enumerate(layers):
          val = top * np.exp(-0.5 * (i - layers.index(peak)) ** 2)
          test = val + (0.4 if i == len(layers) - 1 else 0.0)  # test noise alone favours the last
          rows.append(dict(weights=w, layer=layer, readout="ridge", area=area, neuron=uid,
                           feve=test + 0.02 * rng.standard_normal(), fev=0.5,
                           val_corr=val + 0.01 * rng.standard_normal(),
                           weights_kind="trained" if w != "seed1" else "random"))
  return pd.DataFrame(rows), spaces


def test_report_over_many_networks(tmp_path):
  df, spaces = _zoo_table(np.random.default_rng(11))
  df.to_csv(tmp_path / "results.csv", index=False)
  (tmp_path / "feature_spaces.json").write_text(json.dumps(spaces))
  cfg = reports.ReportConfig(n_boot=100, n_perm=100)
  text = reports.write_report(tmp_path, config=cfg, area_order=["V1", "LM"]).read_text()
  net = pd.read_csv(tmp_path / "report" / "network_table.csv")
  got = {(r.area, r.network): (r.layer, r.weights_kind) for r in net.itertuples()}
  # Kinds from the metadata, not from folder names; random seeds pooled into one network.
  assert got[("V1", "imagenet_random_crop")] == ("conv3_3", "trained")
  assert got[("V1", "r18")] == ("layer2", "trained")
  assert got[("LM", "resnet18 random")] == ("layer1", "random")
  assert set(net["network"]) == {"imagenet_random_crop", "r18", "resnet18 random"}
  # Chosen on validation: the test-only bump at each network's last layer is never picked; the
  # reported FEVE is the chosen layer's.
  row = net[(net.area == "V1") & (net.network == "r18")].iloc[0]
  assert row["feve"] == pytest.approx(0.4, abs=0.02)
  assert row["depth"] == pytest.approx(R18.index("layer2") / (len(R18) - 1))
  assert "r18 (resnet18) layer2 (depth 0.54)" in text
  # Layers in each network's own order (alphabetically, layer1 would precede layer1.0).
  by = pd.read_csv(tmp_path / "report" / "feve_by_network.csv")
  r18 = by[(by.network == "r18") & (by.area == "V1")]
  assert list(r18["layer"]) == ["layer1.0", "layer1", "layer2", "layer3.1", "layer3", "layer4"]
  assert r18["depth"].is_monotonic_increasing and r18["depth"].iloc[-1] == 1.0
  # One curve per network in every panel: trained solid, random dashed.
  fig = reports.plot_feve_vs_layer(reports.attach_networks(reports.check_results(df), spaces),
                                   readout="ridge", area_order=["V1", "LM"])
  for ax in fig.axes:
    curves = {l.get_label(): l.get_linestyle() for l in ax.get_lines()
              if not l.get_label().startswith("_")}
    assert curves == {"imagenet_random_crop (vgg16)": "-", "r18 (resnet18)": "-",
                      "resnet18 random": "--"}, curves
    xs = np.concatenate([l.get_xdata() for l in ax.get_lines()])
    assert xs.min() >= 0 and xs.max() == 1.0
  assert (tmp_path / "report" / "feve_vs_layer_ridge.png").stat().st_size > 1000


def test_the_study_questions_pair_the_trained_network_with_random_weights_of_its_architecture():
  """Two random networks: the one of the trained network's architecture trails it by 0.1, the
  other (another architecture) is far better. Trained - random must use the former, not a pool."""
  rng = np.random.default_rng(8)
  df = _table(rng, peaks={"V1": 3, "LM": 5}, trained_gain=0.1, n=40)
  other = df[df["weights"] == "random0"].copy()
  other["weights"], other["feve"], other["val_corr"] = "alexnet_rand", other["feve"] + 0.5, \
      other["val_corr"] + 0.5
  df = reports.check_results(pd.concat([df[df["weights"] != "random1"], other]))
  spaces = {"vgg": {"arch": "vgg16", "kind": "trained", "layers": LAYERS},
            "random0": {"arch": "vgg16", "kind": "random", "seed": 0, "layers": LAYERS},
            "alexnet_rand": {"arch": "alexnet", "kind": "random", "layers": LAYERS}}
  df = reports.attach_networks(reports.included(df, reports.ReportConfig()), spaces)
  study, used = reports.study_networks(df)
  assert used == {"trained": "vgg", "random": "vgg16 random", "energy": "energy"}
  table = reports.area_table(study, reports.ReportConfig(n_boot=100)).set_index("area")
  np.testing.assert_allclose(table["trained_minus_random"], 0.1, atol=0.03)


def test_planted_depth_with_one_chosen_layer_says_so_without_a_warning():
  """Where every CNN cell's best layer on validation is the same, the rank correlation of
  planted and recovered depth is undefined: the summary says why instead of printing nan (and
  SciPy's constant-input warning)."""
  import types
  import warnings

  from jaxmouse.reports import planted_vs_recovered

  units = [f"u{i}" for i in range(6)]
  planted = ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "conv3_1", "conv3_1"]
  truth = types.SimpleNamespace(unit_ids=units, model=["cnn"] * 6, layer=planted,
                                areas=["V1"] * 6, weights={"arch": "vgg16", "source": "hed"},
                                config={})
  rows = []
  for chosen in (False, True):
    for i, u in enumerate(units):
      for layer in ("conv1_1", "conv2_1", "conv3_1"):
        # same=True: conv2_1 best for every cell; else each cell's planted layer is best
        best = "conv2_1" if chosen else planted[i]
        rows.append(dict(readout="ridge" if chosen else "factorized", weights_kind="trained",
                         area="V1", layer=layer, neuron=u, feve=0.5,
                         val_corr=0.6 if layer == best else 0.2))
  df = pd.DataFrame(rows)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lines = planted_vs_recovered(df, truth, readouts=["factorized", "ridge"])
  fact = next(l for l in lines if "| factorized |" in l)
  ridge = next(l for l in lines if "| ridge |" in l)
  assert fact.rstrip().endswith("| 1.00 (trained, 6 cells) |")
  assert "n/a (every cell chose conv2_1; trained, 6 cells)" in ridge
