"""``summary.md`` and the whole report of a run: the study's questions answered with the run's
numbers, what the data are (and, for a simulated mouse, what was planted and what was found)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from jaxmouse._io import atomic_path
from jaxmouse.reports.hierarchy import HierarchyTest, hierarchy_test, verdict
from jaxmouse.reports.tables import (ReportConfig, TestImages, area_table, attach_networks,
                                     study_networks,
                                     choose_neuron_layers, feve_by_layer, feve_by_network,
                                     included, layer_sort_key, layer_table, network_label,
                                     network_table, per_neuron, read_feature_spaces,
                                     read_results)

DATA_FILE = "data.json"
SELECTION_RULE = (
    "Every choice is made on validation data and every reported FEVE is measured on the test "
    "images, which took no part in any choice: the penalty config of each readout (per neuron, "
    "or per area), the best layer of each area and of each weights kind (highest mean "
    "validation correlation over the area's neurons), each neuron's best layer in the hierarchy "
    "test, and the energy model's feature set. Trained and random weights are compared each at "
    "its own validation-chosen layer, and separately layer by layer "
    "(`trained_vs_random_by_layer.csv`). Neurons are included by their explainable-variance "
    "fraction on the test repeats, a property of the data alone.")


def _fmt(x, nd=3):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return "n/a"
  return "n/a" if not np.isfinite(x) else f"{x:.{nd}f}"


def _has(row, key) -> bool:
  v = row.get(key, np.nan)
  try:
    return bool(np.isfinite(float(v)))
  except (TypeError, ValueError):
    return False


def _ci_verdict(low, high, *, above: str, below: str) -> str:
  return above if low > 0 else below if high < 0 else "not distinguishable"


def read_data_info(run: str | Path) -> dict:
  """``RUN/data.json`` (what the data are, written by a study run), or ``{}``."""
  path = Path(run)
  path = (path if path.is_dir() else path.parent) / DATA_FILE
  if not path.is_file():
    return {}
  try:
    info = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: expected a JSON object describing the data ({e})") from None
  if not isinstance(info, dict):
    raise ValueError(f"{path}: expected a JSON object describing the data, got "
                     f"{type(info).__name__}")
  return info


def is_simulated(info: Mapping) -> bool:
  v = info.get("simulated", False)
  return bool(v) and str(v).strip().lower() not in ("no", "false", "0")


def _show(v) -> str:
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, (list, tuple)):
    return ", ".join(map(str, v))
  if isinstance(v, dict):
    return "; ".join(f"{k}: {_show(x)}" for k, x in v.items())
  return str(v)


# ---- planted versus recovered -------------------------------------------------------------------

def planted_vs_recovered(df: pd.DataFrame, truth, *, readouts: Sequence[str]) -> list[str]:
  """Markdown lines comparing what a simulation planted with what the analysis recovered.

  Per area: the planted mix (Gabor energy cells, CNN cells and their layers); per readout, the
  layer each weights kind chose on validation; the share of Gabor-planted neurons whose best
  feature space on validation is the energy model, and of CNN-planted ones whose best is a CNN
  layer; and the rank correlation between planted and recovered layer depth over CNN cells.
  """
  from scipy import stats

  ids = np.asarray(truth.unit_ids).astype(str)
  model = dict(zip(ids, np.asarray(truth.model).astype(str)))
  layer = dict(zip(ids, np.asarray(truth.layer).astype(str)))
  arch = truth.weights.get("arch", "?") if isinstance(truth.weights, dict) else "?"
  source = truth.weights.get("source", "") if isinstance(truth.weights, dict) else ""
  seed = truth.weights.get("seed", "") if isinstance(truth.weights, dict) else ""
  subunits = int((truth.config or {}).get("subunits", 1))
  net = f"{arch} ({source}{f' seed {seed}' if seed != '' else ''})"
  family = (f"a nonlinear subunit model ({subunits} rectified-squared factorized subunits of "
            "one layer)" if subunits > 1 else "a factorized linear readout of one layer")
  lines = [f"CNN cells were planted on {net} through {family}, then ELU(x - 1) + 1 and trial "
           "noise; Gabor cells are quadrature-pair energy units.", ""]
  lines.append("| area | planted | readout | chosen on validation | Gabor cells best on energy "
               "model | CNN cells best on a CNN layer | planted vs recovered depth (Spearman) |")
  lines.append("|---|---|---|---|---|---|---|")
  pn = per_neuron(df)
  for area in sorted(set(df["area"])):
    members = [u for u in ids[np.asarray(truth.areas).astype(str) == area]]
    if not members:
      continue
    kinds = pd.Series([model[u] for u in members]).value_counts()
    cnn_layers = pd.Series([layer[u] for u in members if model[u] == "cnn"]).value_counts()
    planted = ", ".join([f"{int(kinds.get('gabor', 0))} Gabor"]
                        + [f"{n} {l}" for l, n in sorted(cnn_layers.items(),
                                                          key=lambda t: layer_sort_key(t[0]))])
    for readout in readouts:
      sub = pn[(pn["readout"] == readout) & (pn["area"] == area)]
      if sub.empty:
        continue
      best = sub.loc[sub.groupby("neuron")["val_corr"].idxmax()].set_index("neuron")
      gab = [u for u in best.index if model.get(u) == "gabor"]
      cnn = [u for u in best.index if model.get(u) == "cnn"]
      has_energy = (sub["weights_kind"] == "energy").any()
      share = lambda us, kind: (f"{np.mean([best.loc[u, 'weights_kind'] == kind for u in us]):.0%}"
                                f" of {len(us)}" if us and has_energy else
                                "n/a (no energy model)" if us else "n/a")
      cnn_share = (f"{np.mean([best.loc[u, 'weights_kind'] != 'energy' for u in cnn]):.0%} of "
                   f"{len(cnn)}" if cnn and has_energy else
                   "n/a (no energy model)" if cnn else "n/a")
      chosen = []
      depth = "n/a"
      for kind in ("trained", "random"):
        ks = sub[sub["weights_kind"] == kind]
        if ks.empty:
          continue
        means = ks.groupby("layer")["val_corr"].mean()
        chosen.append(f"{kind} {means.idxmax()}")
        if kind == ("trained" if "trained" in set(sub["weights_kind"]) else "random"):
          nb = choose_neuron_layers(df[df["area"] == area], readout=readout, kind=kind)
          nb = nb[nb["neuron"].isin(cnn)]
          if len(nb) > 2 and len(set(layer[u] for u in nb["neuron"])) > 1:
            px = [layer_sort_key(layer[u]) for u in nb["neuron"]]
            py = [layer_sort_key(l) for l in nb["layer"]]
            if len(set(py)) < 2:  # no rank correlation with a constant
              depth = f"n/a (every cell chose {nb['layer'].iloc[0]}; {kind}, {len(nb)} cells)"
            else:
              r = stats.spearmanr(_order(px), _order(py)).statistic
              depth = f"{r:.2f} ({kind}, {len(nb)} cells)"
      lines.append(f"| {area} | {planted} | {readout} | {', '.join(chosen) or 'n/a'} | "
                   f"{share(gab, 'energy')} | {cnn_share} | {depth} |")
  return lines


def _order(keys) -> np.ndarray:
  """Dense ranks of sortable keys (layer_sort_key tuples)."""
  uniq = sorted(set(keys))
  pos = {k: i for i, k in enumerate(uniq)}
  return np.array([pos[k] for k in keys], float)


# ---- summary.md ----------------------------------------------------------------------------------

def summary_markdown(table: pd.DataFrame, tests: Sequence[HierarchyTest], cfg: ReportConfig, *,
                     n_neurons: int, n_excluded: int, figures: Sequence[str], ci_method: str,
                     data_info: Mapping | None = None, planted: Sequence[str] = (),
                     networks: pd.DataFrame | None = None,
                     study_networks: Mapping[str, str] | None = None) -> str:
  """The three questions of the study, answered with this run's numbers. ``study_networks``
  (``{kind: network}``) names the networks the questions read when the run has more."""
  info = dict(data_info or {})
  simulated = is_simulated(info)
  title = "# Cadena et al. 2019 analyses" + (" (simulated data)" if simulated else "")
  lines = [title, ""]
  if simulated:
    lines += ["**These data are simulated.** Every number below describes a simulated mouse "
              "whose true models are known (see *Planted versus recovered*), not a recording.", ""]
  if info:
    lines += ["## Data", ""] + [f"- {k}: {_show(v)}" for k, v in info.items() if k != "truth"]
    lines.append("")
  lines += ["## How choices were made", "", SELECTION_RULE, "",
            f"Neurons included: {n_neurons} (explainable-variance fraction >= {cfg.fev_threshold};"
            f" {n_excluded} excluded). Intervals: {ci_method}.", ""]
  if study_networks:
    named = ", ".join(f"{k}: {n}" for k, n in study_networks.items())
    lines += [f"Questions 1-3 compare these networks ({named}); the others are in *Networks*.",
              ""]

  lines += ["## 1. Do CNN features beat the energy model?", ""]
  rows = [r for _, r in table.iterrows() if _has(r, "cnn_minus_energy")]
  if not rows:
    lines.append("- the energy model (or a CNN) was not part of this run")
  for r in rows:
    kind = r["cnn_kind"]
    v = _ci_verdict(r["cnn_energy_ci_low"], r["cnn_energy_ci_high"], above="yes",
                    below="no, worse")
    lines.append(f"- {r['readout']} / {r['area']}: {kind} CNN at {r[f'{kind}_layer']} (chosen on "
                 f"validation) FEVE {_fmt(r[f'{kind}_feve'])} vs energy model "
                 f"{_fmt(r['energy_feve'])}; difference {_fmt(r['cnn_minus_energy'])} "
                 f"[{_fmt(r['cnn_energy_ci_low'])}, {_fmt(r['cnn_energy_ci_high'])}]: {v}")

  ranks = ", ".join(f"{a} {v:g}" for a, v in (tests[0].area_ranks.items() if tests else []))
  lines += ["", f"## 2. Do the areas follow the layer hierarchy ({ranks or 'no ranks'})?", ""]
  if not tests:
    lines.append("- no CNN weights in this run: no layer hierarchy to test")
  for t in tests:
    per_area = ", ".join(f"{a}: {l}" for a, l in t.best_layer_per_area.items())
    left = (f" Areas without a rank, left out: {', '.join(t.left_out_areas)}."
            if t.left_out_areas else "")
    lines.append(f"- {t.readout} ({t.weights_kind} weights): {verdict(t, cfg.ci)}. One-sided "
                 f"permutation p = {_fmt(t.p_value, 4)} (two-sided {_fmt(t.p_two_sided, 4)}; "
                 f"{t.n_neurons} neurons; {t.method}; {cfg.n_perm} permutations). Layer chosen "
                 f"on validation per area: {per_area}. Layers fitted: {', '.join(t.layers)}."
                 f"{left}")

  lines += ["", "## 3. Are random weights about as good as trained weights?", ""]
  rows = [r for _, r in table.iterrows() if _has(r, "trained_minus_random")]
  if not rows:
    lines.append("- trained and random weights were not both part of this run")
  for r in rows:
    v = _ci_verdict(r["diff_ci_low"], r["diff_ci_high"], above="trained better",
                    below="random better")
    lines.append(f"- {r['readout']} / {r['area']}: trained {_fmt(r['trained_feve'])} at "
                 f"{r['trained_layer']}, random {_fmt(r['random_feve'])} at {r['random_layer']} "
                 f"(each at its own validation-chosen layer); trained - random "
                 f"{_fmt(r['trained_minus_random'])} [{_fmt(r['diff_ci_low'])}, "
                 f"{_fmt(r['diff_ci_high'])}]: {v}")
  if networks is not None and len(networks):
    lines += ["", "## Networks", "",
              "Each network at its own layer chosen on validation (depth: the layer's position in "
              "its network, first 0, last 1); test FEVE with CI. Random networks average their "
              "seeds.", ""]
    for (readout, area), g in networks.groupby(["readout", "area"], sort=False):
      g = g.sort_values("feve", ascending=False)
      parts = [(network_label(r["network"], r["arch"], r["weights_kind"])
                + (f" {r['layer']} (depth {_fmt(r['depth'], 2)})"
                   if r["weights_kind"] != "energy" else "")
                + f": {_fmt(r['feve'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
               for _, r in g.iterrows()]
      lines.append(f"- {readout} / {area}: " + "; ".join(parts))
  if planted:
    lines += ["", "## Planted versus recovered", ""] + list(planted)
  lines += ["", "## Files", ""] + [f"- `{f}`" for f in figures] + [
      "- `area_table.csv`: per readout and area, each weights kind's validation-chosen layer, its "
      "test FEVE with CI, trained - random and CNN - energy with CIs",
      "- `trained_vs_random_by_layer.csv`: trained - random layer by layer, with CIs",
      "- `feve_by_layer.csv`: mean/sd/sem test FEVE and mean validation correlation per readout, "
      "weights kind, area and layer",
      "- `hierarchy.json`: the hierarchy test per readout",
      "- `network_table.csv`: per readout, area and network, its validation-chosen layer, the "
      "layer's relative depth, and its test FEVE with CI",
      "- `feve_by_network.csv`: mean/sd/sem test FEVE and mean validation correlation per "
      "readout, network, area and layer, with each layer's relative depth", ""]
  return "\n".join(lines)


def _write_learning_curves(run: Path, out: Path, *, note: str) -> list[str]:
  """``learning_curves.csv`` and ``learning_curves_<readout>.png`` from the cells' histories
  (readouts trained by gradient descent); the files written."""
  import matplotlib.pyplot as plt

  from jaxmouse.reports.curves import learning_curves, plot_learning_curves, read_histories

  curves = learning_curves(read_histories(run))
  if curves.empty:
    return []
  with atomic_path(out / "learning_curves.csv") as tmp:
    curves.to_csv(tmp, index=False)
  written = ["learning_curves.csv"]
  for readout in sorted(curves["readout"].unique()):
    fig = plot_learning_curves(curves, readout=readout, note=note)
    name = f"learning_curves_{readout}.png"
    with atomic_path(out / name) as tmp:
      fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    written.append(name)
  return written


def write_report(run: str | Path, *, config: ReportConfig | None = None,
                 out: str | Path | None = None, area_order: Sequence[str] | None = None) -> Path:
  """Reads RUN/results.csv (and RUN/data.json, the cells' test-image statistics, their learning
  curves and a truth file when present) and writes RUN/report/{summary.md, *.csv, *.png, *.pdf}
  (also ``jaxmouse.report``).

  Returns the path of summary.md. Every file is written atomically; nothing is refitted.

  Example: two layers of a random VGG16 scored on a small simulated mouse, the run folder kept,
  then reported:

  >>> import os, tempfile, jaxmouse
  >>> from jaxmouse import weights
  >>> from jaxmouse.data import SimulationConfig, simulate
  >>> tmp = tempfile.TemporaryDirectory()
  >>> ds, _ = simulate(SimulationConfig.tiny(seed=1))
  >>> net = weights.save(weights.random_init("vgg16", 0), os.path.join(tmp.name, "random0"))
  >>> run = os.path.join(tmp.name, "run")
  >>> table = jaxmouse.score(net, ds, layers=["conv1_2", "conv2_2"], out=run)
  >>> summary = jaxmouse.report(run, config=jaxmouse.reports.ReportConfig(n_boot=200, n_perm=200))
  >>> sorted(p.name for p in summary.parent.glob("*.csv"))
  ['area_table.csv', 'feve_by_layer.csv', 'feve_by_network.csv', ..., 'trained_vs_random_by_layer.csv']
  >>> tmp.cleanup()
  """
  import matplotlib.pyplot as plt

  from jaxmouse.reports.figures import plot_feve_vs_layer

  cfg = config or ReportConfig()
  run = Path(run)
  raw = read_results(run)
  df = included(raw, cfg)
  if df.empty:
    raise ValueError(f"{run}: no neuron passes the explainable-variance threshold "
                     f"{cfg.fev_threshold} (or every FEVE is NaN)")
  # Kinds, architectures and layer order from the sweep's record of its feature spaces.
  df = attach_networks(df, read_feature_spaces(run))
  info = read_data_info(run)
  images = TestImages(run)
  out = Path(out) if out else (run if run.is_dir() else run.parent) / "report"
  out.mkdir(parents=True, exist_ok=True)
  # The study's questions compare one trained network with random weights of its architecture
  # (and the energy model); every network is in the per-network tables.
  study, used = study_networks(df)
  table = area_table(study, cfg, images=images)
  order = {a: i for i, a in enumerate(area_order or [])}
  table = table.sort_values(["readout", "area"], key=lambda c: c.map(order).fillna(len(order))
                            if c.name == "area" else c, kind="stable").reset_index(drop=True)
  readouts = sorted(df["readout"].unique())
  tests = [hierarchy_test(study, cfg, readout=r) for r in readouts
           if set(study.loc[study["readout"] == r, "weights_kind"]) & {"trained", "random"}]
  note = "simulated data" if is_simulated(info) else ""
  figures = []
  for readout in readouts:
    fig = plot_feve_vs_layer(df, readout=readout, area_order=area_order, note=note)
    for ext in ("png", "pdf"):
      name = f"feve_vs_layer_{readout}.{ext}"
      with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=150, format=ext)
      figures.append(name)
    plt.close(fig)
  with atomic_path(out / "area_table.csv") as tmp:
    table.to_csv(tmp, index=False)
  with atomic_path(out / "trained_vs_random_by_layer.csv") as tmp:
    layer_table(study, cfg, images=images).to_csv(tmp, index=False)
  with atomic_path(out / "feve_by_layer.csv") as tmp:
    feve_by_layer(df).to_csv(tmp, index=False)
  networks = network_table(df, cfg, images=images)
  order = {a: i for i, a in enumerate(area_order or [])}
  networks = networks.sort_values(["readout", "area"], key=lambda c: c.map(order).fillna(
      len(order)) if c.name == "area" else c, kind="stable").reset_index(drop=True)
  with atomic_path(out / "network_table.csv") as tmp:
    networks.to_csv(tmp, index=False)
  with atomic_path(out / "feve_by_network.csv") as tmp:
    feve_by_network(df).to_csv(tmp, index=False)
  with atomic_path(out / "hierarchy.json") as tmp:
    tmp.write_text(json.dumps([dataclasses.asdict(t) for t in tests], indent=2))
  figures += _write_learning_curves(run, out, note=note)
  planted = []
  if info.get("truth"):
    from jaxmouse.data.simulation import load_truth

    base = run if run.is_dir() else run.parent
    planted = planted_vs_recovered(study, load_truth(base / info["truth"]), readouts=readouts)
  n_all = raw["neuron"].nunique()
  n_in = df["neuron"].nunique()
  ci_method = table["ci_method"].iloc[0] if "ci_method" in table and len(table) else ""
  text = summary_markdown(table, tests, cfg, n_neurons=n_in, n_excluded=n_all - n_in,
                          figures=figures, ci_method=ci_method, data_info=info, planted=planted,
                          networks=networks,
                          study_networks=used if df["network"].nunique() > len(used) else None)
  with atomic_path(out / "summary.md") as tmp:
    tmp.write_text(text)
  return out / "summary.md"
