"""Tables, figures and the hierarchy test of a sweep, read from its results table; never fits.

The input is the sweep's tidy table (one row per feature space x layer x readout x neuron) with at
least the columns ``weights, layer, readout, area, neuron, feve`` and, where present, ``fev`` (the
neuron's fraction of explainable variance, used for the usual inclusion threshold) and
``weights_kind`` (``trained``, ``random`` or ``energy``). Without ``weights_kind`` the kind is read
from the name: ``random*`` is random, ``energy``/``gabor*`` the energy model, anything else trained.

The analyses follow Cadena et al. 2019:

- FEVE versus layer per area, trained and random weights, the energy model as a reference line;
- per area: the best layer, its FEVE, trained minus random FEVE at that layer with a bootstrap
  confidence interval over neurons, the energy model's FEVE and the CNN's margin over it;
- the hierarchy test: each neuron's best layer, and whether areas ordered V1 < LM/AL/RL take
  deeper layers (Spearman correlation of area rank with best-layer index, permutation p-value).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from jaxmouse._io import atomic_path

DEFAULT_AREA_RANKS = {"V1": 0, "LM": 1, "AL": 1, "RL": 1,
                      "VISp": 0, "VISl": 1, "VISal": 1, "VISrl": 1, "VISpm": 1, "VISam": 1}
REQUIRED_COLUMNS = ("weights", "layer", "readout", "area", "neuron", "feve")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportConfig:
  """How a results table is summarized.

  area_ranks: position of each area in the hypothesized hierarchy (equal ranks tie).
  fev_threshold: neurons whose fraction of explainable variance is below this are left out.
  n_boot, n_perm: bootstrap resamples and permutations; seed makes both deterministic.
  """
  area_ranks: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_AREA_RANKS))
  fev_threshold: float = 0.15
  n_boot: int = 2000
  n_perm: int = 2000
  ci: float = 0.95
  seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.fev_threshold < 1.0:
      raise ValueError(f"fev_threshold must be in [0, 1), got {self.fev_threshold}")
    if self.n_boot < 10 or self.n_perm < 10:
      raise ValueError(f"n_boot and n_perm must be >= 10, got {self.n_boot}, {self.n_perm}")
    if not 0.5 < self.ci < 1.0:
      raise ValueError(f"ci must be in (0.5, 1), got {self.ci}")


def weights_kind(name: str) -> str:
  low = str(name).lower()
  if low.startswith("random"):
    return "random"
  if low.startswith(("energy", "gabor")):
    return "energy"
  return "trained"


def read_results(path: str | Path) -> pd.DataFrame:
  """Reads ``RUN/results.csv`` (or a CSV/Parquet path) and checks its columns."""
  path = Path(path)
  if path.is_dir():
    path = path / "results.csv"
  if not path.exists():
    raise FileNotFoundError(f"no results table at {path}; run `jaxmouse sweep` first")
  df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
  return check_results(df, source=str(path))


def check_results(df: pd.DataFrame, *, source: str = "results") -> pd.DataFrame:
  missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
  if missing:
    raise ValueError(f"{source}: missing columns {missing}; has {list(df.columns)}")
  if df.empty:
    raise ValueError(f"{source}: the results table has no rows")
  df = df.copy()
  if "weights_kind" not in df.columns:
    df["weights_kind"] = df["weights"].map(weights_kind)
  df["weights"] = df["weights"].astype(str)
  df["layer"] = df["layer"].astype(str)
  df["area"] = df["area"].astype(str)
  return df


def _layer_order(df: pd.DataFrame) -> list[str]:
  """CNN layers in network order (conv1_1 < conv1_2 < pool1 < conv2_1 ...), others after."""
  def key(name):
    for prefix, sub in (("conv", 0), ("pool", 9)):
      if name.startswith(prefix):
        block, _, idx = name[len(prefix):].partition("_")
        try:
          return (0, int(block), int(idx) if idx else sub, name)
        except ValueError:
          break
    return (1, 0, 0, name)
  return sorted(df.loc[df["weights_kind"] != "energy", "layer"].unique(), key=key)


def included(df: pd.DataFrame, cfg: ReportConfig) -> pd.DataFrame:
  """Rows of neurons that pass the explainable-variance threshold."""
  if "fev" in df.columns:
    df = df[df["fev"] >= cfg.fev_threshold]
  return df[np.isfinite(df["feve"])]


def feve_by_layer(df: pd.DataFrame) -> pd.DataFrame:
  """Mean, sd, sem and count of FEVE per (readout, weights_kind, area, layer); random seeds pooled
  by first averaging each neuron over seeds."""
  cnn = df[df["weights_kind"] != "energy"]
  per_neuron = (cnn.groupby(["readout", "weights_kind", "area", "layer", "neuron"])["feve"]
                .mean().reset_index())
  out = per_neuron.groupby(["readout", "weights_kind", "area", "layer"])["feve"].agg(
      mean="mean", sd="std", count="count").reset_index()
  out["sem"] = out["sd"] / np.sqrt(out["count"])
  return out


def energy_feve(df: pd.DataFrame) -> pd.DataFrame:
  """Mean FEVE of the best energy-model feature set per (readout, area)."""
  en = df[df["weights_kind"] == "energy"]
  if en.empty:
    return pd.DataFrame(columns=["readout", "area", "energy_layer", "energy_feve"])
  means = en.groupby(["readout", "area", "layer"])["feve"].mean().reset_index()
  best = means.loc[means.groupby(["readout", "area"])["feve"].idxmax()]
  return best.rename(columns={"layer": "energy_layer", "feve": "energy_feve"})[
      ["readout", "area", "energy_layer", "energy_feve"]]


def bootstrap_mean_ci(x: np.ndarray, *, n_boot: int, ci: float, rng: np.random.Generator):
  """Percentile bootstrap CI of the mean of x (n,). Returns (mean, low, high)."""
  x = np.asarray(x, dtype=np.float64)
  if x.size == 0:
    return np.nan, np.nan, np.nan
  idx = rng.integers(0, x.size, size=(n_boot, x.size))
  boots = x[idx].mean(axis=1)
  a = (1 - ci) / 2
  return float(x.mean()), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def area_table(df: pd.DataFrame, cfg: ReportConfig) -> pd.DataFrame:
  """One row per (readout, area): best trained layer and FEVE, trained - random, energy model."""
  rng = np.random.default_rng(cfg.seed)
  by_layer = feve_by_layer(df)
  energy = energy_feve(df)
  rows = []
  for (readout, area), g in by_layer[by_layer["weights_kind"] == "trained"].groupby(
      ["readout", "area"]):
    best = g.loc[g["mean"].idxmax()]
    row = {"readout": readout, "area": area, "best_layer": best["layer"],
           "feve": best["mean"], "n_neurons": int(best["count"])}
    sel = (df["readout"] == readout) & (df["area"] == area) & (df["layer"] == best["layer"])
    trained = df[sel & (df["weights_kind"] == "trained")].groupby("neuron")["feve"].mean()
    random = df[sel & (df["weights_kind"] == "random")].groupby("neuron")["feve"].mean()
    both = trained.index.intersection(random.index)
    if len(both):
      diff = trained[both].to_numpy() - random[both].to_numpy()
      m, lo, hi = bootstrap_mean_ci(diff, n_boot=cfg.n_boot, ci=cfg.ci, rng=rng)
      rnd_best = by_layer[(by_layer["weights_kind"] == "random") & (by_layer["readout"] == readout)
                          & (by_layer["area"] == area)]
      row.update(random_best_layer=rnd_best.loc[rnd_best["mean"].idxmax(), "layer"],
                 random_feve=float(random[both].mean()),
                 trained_minus_random=m, diff_ci_low=lo, diff_ci_high=hi)
    e = energy[(energy["readout"] == readout) & (energy["area"] == area)]
    if len(e):
      en = df[(df["weights_kind"] == "energy") & (df["readout"] == readout) & (df["area"] == area)
              & (df["layer"] == e["energy_layer"].iloc[0])].groupby("neuron")["feve"].mean()
      both = trained.index.intersection(en.index)
      diff = trained[both].to_numpy() - en[both].to_numpy()
      m, lo, hi = bootstrap_mean_ci(diff, n_boot=cfg.n_boot, ci=cfg.ci, rng=rng)
      row.update(energy_feve=float(e["energy_feve"].iloc[0]), cnn_minus_energy=m,
                 cnn_energy_ci_low=lo, cnn_energy_ci_high=hi)
    rows.append(row)
  return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class HierarchyTest:
  """Spearman correlation between area rank and best-layer index over neurons."""
  readout: str
  rho: float
  p_value: float  # one-sided, H1: higher areas take deeper layers
  p_two_sided: float
  n_neurons: int
  best_layer_per_area: dict
  median_layer_index_per_area: dict
  layers: tuple  # the layers this readout was fitted on, in network order


def _spearman_perm(x: np.ndarray, y: np.ndarray, *, n_perm: int, rng: np.random.Generator):
  """Spearman rho of x, y (n,) and permutation p-values (one-sided rho > 0, two-sided)."""
  rx = stats.rankdata(x)
  ry = stats.rankdata(y)
  rx = (rx - rx.mean()) / (np.linalg.norm(rx - rx.mean()) + 1e-300)
  ry = (ry - ry.mean()) / (np.linalg.norm(ry - ry.mean()) + 1e-300)
  rho = float(rx @ ry)
  null = np.empty(n_perm)
  chunk = max(1, min(n_perm, 2_000_000 // max(len(x), 1)))
  for start in range(0, n_perm, chunk):
    m = min(chunk, n_perm - start)
    perms = rng.permuted(np.broadcast_to(rx, (m, rx.size)), axis=1)  # (m, n)
    null[start:start + m] = perms @ ry
  p_one = (1 + np.sum(null >= rho - 1e-12)) / (n_perm + 1)
  p_two = (1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (n_perm + 1)
  return rho, float(p_one), float(p_two)


def hierarchy_test(df: pd.DataFrame, cfg: ReportConfig, *, readout: str) -> HierarchyTest:
  """Best trained-weights layer per neuron, tested for an order V1 < higher areas."""
  layers = _layer_order(df)
  index = {name: i for i, name in enumerate(layers)}
  t = df[(df["weights_kind"] == "trained") & (df["readout"] == readout)]
  per = t.groupby(["area", "neuron", "layer"])["feve"].mean().reset_index()
  best = per.loc[per.groupby(["area", "neuron"])["feve"].idxmax()]
  best = best[best["area"].isin(cfg.area_ranks.keys())]
  unknown = sorted(set(t["area"]) - set(cfg.area_ranks))
  if best.empty:
    raise ValueError(f"no neurons in areas with a hierarchy rank {dict(cfg.area_ranks)}; "
                     f"areas in the table: {sorted(set(t['area']))}")
  x = best["area"].map(cfg.area_ranks).to_numpy(float)
  y = best["layer"].map(index).to_numpy(float)
  rng = np.random.default_rng(cfg.seed + 1)
  if len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
    rho, p1, p2 = 0.0, 1.0, 1.0
  else:
    rho, p1, p2 = _spearman_perm(x, y, n_perm=cfg.n_perm, rng=rng)
  means = per.groupby(["area", "layer"])["feve"].mean().reset_index()
  per_area = {a: g.loc[g["feve"].idxmax(), "layer"] for a, g in means.groupby("area")}
  median = {a: float(np.median(g["layer"].map(index))) for a, g in best.groupby("area")}
  del unknown  # areas without a rank are reported per area but left out of the test
  return HierarchyTest(readout=readout, rho=rho, p_value=p1, p_two_sided=p2,
                       n_neurons=int(len(best)), best_layer_per_area=per_area,
                       median_layer_index_per_area=median,
                       layers=tuple(l for l in layers if l in set(t["layer"])))


def plot_feve_vs_layer(df: pd.DataFrame, *, readout: str, area_order: Sequence[str] | None = None):
  """The study's figure: FEVE (mean +- sem over neurons) versus layer, one panel per area."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  layers = _layer_order(df)
  by_layer = feve_by_layer(df)
  by_layer = by_layer[by_layer["readout"] == readout]
  energy = energy_feve(df)
  energy = energy[energy["readout"] == readout]
  areas = [a for a in (area_order or []) if a in set(by_layer["area"])]
  areas += sorted(set(by_layer["area"]) - set(areas))
  fig, axes = plt.subplots(1, len(areas), figsize=(3.2 * len(areas), 3.2), sharey=True,
                           squeeze=False)
  x = np.arange(len(layers))
  for ax, area in zip(axes[0], areas):
    for kind, color in (("trained", "C0"), ("random", "C1")):
      g = by_layer[(by_layer["area"] == area) & (by_layer["weights_kind"] == kind)]
      g = g.set_index("layer").reindex(layers)
      if g["mean"].notna().any():
        ax.plot(x, g["mean"], "o-", color=color, ms=3, label=f"{kind} weights")
        ax.fill_between(x, g["mean"] - g["sem"], g["mean"] + g["sem"], color=color, alpha=0.25)
    e = energy[energy["area"] == area]
    if len(e):
      ax.axhline(e["energy_feve"].iloc[0], color="C2", ls="--", label="energy model")
    ax.set_title(f"{area} (n={int(by_layer[by_layer['area'] == area]['count'].max())})")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=7)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("FEVE (mean ± sem over neurons)")
  axes[0][0].legend(fontsize=7, loc="best")
  fig.suptitle(f"Feature space versus area, {readout} readout")
  fig.tight_layout()
  return fig


def _fmt(x, nd=3):
  return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def summary_markdown(table: pd.DataFrame, tests: Sequence[HierarchyTest], cfg: ReportConfig,
                     *, n_neurons: int, n_excluded: int, figures: Sequence[str]) -> str:
  """The three questions of the study, answered with this run's numbers."""
  ci = int(round(cfg.ci * 100))
  lines = ["# Cadena et al. 2019 analyses", "",
           f"Neurons included: {n_neurons} (explainable-variance fraction >= {cfg.fev_threshold}; "
           f"{n_excluded} excluded). Confidence intervals: {ci}% bootstrap over neurons "
           f"({cfg.n_boot} resamples).", ""]
  lines += ["## 1. Do CNN features beat the energy model?", ""]
  if "energy_feve" in table.columns:
    for _, r in table.iterrows():
      verdict = ("yes" if r["cnn_energy_ci_low"] > 0 else
                 "no, worse" if r["cnn_energy_ci_high"] < 0 else "not distinguishable")
      lines.append(f"- {r['readout']} / {r['area']}: best CNN layer {r['best_layer']} FEVE "
                   f"{_fmt(r['feve'])} vs energy model {_fmt(r['energy_feve'])}; difference "
                   f"{_fmt(r['cnn_minus_energy'])} [{_fmt(r['cnn_energy_ci_low'])}, "
                   f"{_fmt(r['cnn_energy_ci_high'])}]: {verdict}")
  else:
    lines.append("- the energy model was not part of this run")
  lines += ["", "## 2. Do the areas follow the layer hierarchy (V1 < LM, AL, RL)?", ""]
  for t in tests:
    verdict = "yes, a significant order" if t.p_value < 0.05 and t.rho > 0 else "no significant order"
    per_area = ", ".join(f"{a}: {l}" for a, l in t.best_layer_per_area.items())
    lines.append(f"- {t.readout}: Spearman rho between area rank and best layer = {t.rho:.3f}, "
                 f"one-sided permutation p = {t.p_value:.4f} (two-sided {t.p_two_sided:.4f}, "
                 f"{t.n_neurons} neurons, {cfg.n_perm} permutations): {verdict}. "
                 f"Best layer per area: {per_area}. Layers fitted: {', '.join(t.layers)}")
  lines += ["", "## 3. Are random weights about as good as trained weights?", ""]
  if "trained_minus_random" in table.columns:
    for _, r in table.iterrows():
      if not np.isfinite(r.get("trained_minus_random", np.nan)):
        continue
      verdict = ("trained better" if r["diff_ci_low"] > 0 else
                 "random better" if r["diff_ci_high"] < 0 else "not distinguishable")
      lines.append(f"- {r['readout']} / {r['area']} at {r['best_layer']}: trained "
                   f"{_fmt(r['feve'])}, random {_fmt(r['random_feve'])}; trained - random "
                   f"{_fmt(r['trained_minus_random'])} [{_fmt(r['diff_ci_low'])}, "
                   f"{_fmt(r['diff_ci_high'])}]: {verdict}")
  else:
    lines.append("- random weights were not part of this run")
  lines += ["", "## Files", ""] + [f"- `{f}`" for f in figures] + [
      "- `area_table.csv`: per readout and area, best layer, FEVE, differences and CIs",
      "- `feve_by_layer.csv`: mean/sd/sem FEVE per readout, weights kind, area and layer",
      "- `hierarchy.json`: the hierarchy test per readout", ""]
  return "\n".join(lines)


def write_report(run: str | Path, *, config: ReportConfig | None = None,
                 out: str | Path | None = None, area_order: Sequence[str] | None = None) -> Path:
  """Reads RUN/results.csv and writes RUN/report/{summary.md, *.csv, *.png, *.pdf}.

  Returns the path of summary.md. Every file is written atomically.
  """
  cfg = config or ReportConfig()
  run = Path(run)
  raw = read_results(run)
  df = included(raw, cfg)
  if df.empty:
    raise ValueError(f"{run}: no neuron passes the explainable-variance threshold "
                     f"{cfg.fev_threshold} (or every FEVE is NaN)")
  out = Path(out) if out else (run if run.is_dir() else run.parent) / "report"
  out.mkdir(parents=True, exist_ok=True)
  table = area_table(df, cfg)
  order = {a: i for i, a in enumerate(area_order or [])}
  table = table.sort_values(["readout", "area"], key=lambda c: c.map(order).fillna(len(order))
                            if c.name == "area" else c, kind="stable").reset_index(drop=True)
  tests = [hierarchy_test(df, cfg, readout=r) for r in sorted(df["readout"].unique())]
  figures = []
  for readout in sorted(df["readout"].unique()):
    fig = plot_feve_vs_layer(df, readout=readout, area_order=area_order)
    for ext in ("png", "pdf"):
      name = f"feve_vs_layer_{readout}.{ext}"
      with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=150, format=ext)
      figures.append(name)
    import matplotlib.pyplot as plt

    plt.close(fig)
  with atomic_path(out / "area_table.csv") as tmp:
    table.to_csv(tmp, index=False)
  with atomic_path(out / "feve_by_layer.csv") as tmp:
    feve_by_layer(df).to_csv(tmp, index=False)
  with atomic_path(out / "hierarchy.json") as tmp:
    tmp.write_text(json.dumps([dataclasses.asdict(t) for t in tests], indent=2))
  n_all = raw["neuron"].nunique()
  n_in = df["neuron"].nunique()
  text = summary_markdown(table, tests, cfg, n_neurons=n_in, n_excluded=n_all - n_in,
                          figures=figures)
  with atomic_path(out / "summary.md") as tmp:
    tmp.write_text(text)
  return out / "summary.md"
