"""The layer-to-area hierarchy test: do areas higher in the visual hierarchy take deeper layers?

Each neuron's best layer is chosen on validation correlation (never on test FEVE); the statistic
is Spearman's rho between the area's position in a hypothesized hierarchy (``area_ranks``: the
binary V1-versus-higher split by default, or an ordinal order such as the anatomical one) and
the best layer's index in network order.

Neurons are not exchangeable in real data: area is confounded with the recording (scan,
session, animal). When the table names each neuron's recording (column ``recording``):
  - if every recording holds one area (Allen Brain Observatory experiments), the test is made
    at the level of recordings: each recording's mean best-layer index against its area's rank,
    recordings permuted and resampled;
  - otherwise area labels are permuted only within recordings (a stratified permutation), and
    the bootstrap resamples whole recordings.
Without recordings, neurons are permuted and resampled, and the result says so.

The result is an estimate with a confidence interval (``rho [low, high]``) as well as permutation
p-values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import stats

from jaxmouse.reports.tables import ReportConfig, choose_layers, choose_neuron_layers, layer_order


@dataclasses.dataclass(frozen=True)
class HierarchyTest:
  """Spearman's rho between area rank and best-layer index, with its CI and p-values."""
  readout: str
  weights_kind: str
  rho: float
  ci_low: float
  ci_high: float
  p_value: float  # one-sided permutation p, H1: higher areas take deeper layers
  p_two_sided: float
  n_neurons: int
  n_units: int  # what was permuted and resampled: neurons or recordings
  method: str
  area_ranks: dict
  best_layer_per_area: dict  # validation-chosen layer of each area
  median_layer_index_per_area: dict
  layers: tuple  # the layers this readout was fitted on, in network order
  left_out_areas: tuple  # areas without a position in area_ranks


def _rank_corr(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
  """Pearson correlation of rank vectors ``rx (..., n)`` with ``ry (n,)``."""
  rx = rx - rx.mean(axis=-1, keepdims=True)
  ry = ry - ry.mean()
  den = np.linalg.norm(rx, axis=-1) * np.linalg.norm(ry)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, rx @ ry / np.where(den > 0, den, 1.0), np.nan)


def _spearman_perm(x: np.ndarray, y: np.ndarray, *, n_perm: int, rng: np.random.Generator,
                   groups: np.ndarray | None = None):
  """Spearman rho of x, y (n,) and permutation p-values (one-sided rho > 0, two-sided).

  ``groups (n,)``: permute x only within each group (a stratified null).
  """
  rx = stats.rankdata(x)
  ry = stats.rankdata(y)
  rho = float(_rank_corr(rx, ry))
  null = np.empty(n_perm)
  members = ([np.arange(len(x))] if groups is None else
             [np.flatnonzero(groups == g) for g in np.unique(groups)])
  chunk = max(1, min(n_perm, 2_000_000 // max(len(x), 1)))
  for start in range(0, n_perm, chunk):
    m = min(chunk, n_perm - start)
    perms = np.broadcast_to(rx, (m, rx.size)).copy()  # (m, n)
    for idx in members:
      perms[:, idx] = rng.permuted(perms[:, idx], axis=1)
    null[start:start + m] = _rank_corr(perms, ry)
  p_one = (1 + np.sum(null >= rho - 1e-12)) / (n_perm + 1)
  p_two = (1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (n_perm + 1)
  return rho, float(p_one), float(p_two)


def _bootstrap_rho(x, y, clusters, *, n_boot: int, ci: float, rng: np.random.Generator):
  """Percentile CI of Spearman's rho, resampling clusters (``(n,)`` labels) with replacement."""
  labels, inverse = np.unique(clusters, return_inverse=True)
  members = [np.flatnonzero(inverse == i) for i in range(len(labels))]
  boots = np.empty(n_boot)
  for b in range(n_boot):
    pick = rng.integers(0, len(labels), len(labels))
    idx = np.concatenate([members[i] for i in pick])
    boots[b] = _rank_corr(stats.rankdata(x[idx]), stats.rankdata(y[idx]))
  a = (1 - ci) / 2
  if np.isnan(boots).all():
    return np.nan, np.nan
  lo, hi = np.nanquantile(boots, [a, 1 - a])
  return float(lo), float(hi)


def hierarchy_test(df: pd.DataFrame, cfg: ReportConfig, *, readout: str,
                   kind: str | None = None) -> HierarchyTest:
  """The hierarchy test of one readout on ``kind`` weights (default: trained if the table has
  them, else random). Best layers per neuron and per area are chosen on validation."""
  sub = df[df["readout"] == readout]
  kinds = set(sub["weights_kind"])
  kind = kind or ("trained" if "trained" in kinds else "random" if "random" in kinds else None)
  if kind is None or kind not in kinds:
    raise ValueError(f"readout {readout!r}: no CNN weights to test a layer hierarchy on "
                     f"(weights kinds in the table: {sorted(kinds)})")
  layers = [l for l in layer_order(df) if l in set(sub.loc[sub["weights_kind"] == kind, "layer"])]
  index = {name: i for i, name in enumerate(layers)}
  best = choose_neuron_layers(df, readout=readout, kind=kind)
  left_out = tuple(sorted(set(best["area"]) - set(cfg.area_ranks)))
  best = best[best["area"].isin(cfg.area_ranks.keys())].reset_index(drop=True)
  if best.empty:
    raise ValueError(f"no neurons in areas with a hierarchy rank {dict(cfg.area_ranks)}; "
                     f"areas in the table: {sorted(set(sub['area']))}")
  x = best["area"].map(cfg.area_ranks).to_numpy(float)
  y = best["layer"].map(index).to_numpy(float)

  recording = None
  if "recording" in sub.columns:
    rec = (sub[sub["weights_kind"] == kind].drop_duplicates(["area", "neuron"])
           .set_index(["area", "neuron"])["recording"])
    recording = rec.reindex(pd.MultiIndex.from_frame(best[["area", "neuron"]])).to_numpy()
    recording = np.where(pd.isna(recording), "", recording).astype(str)
    if (recording == "").any() or len(np.unique(recording)) < 2:
      recording = None

  rng = np.random.default_rng(cfg.seed + 1)
  if recording is None:
    method = ("neurons permuted and resampled as if exchangeable (the table names no "
              "recording per neuron)")
    tx, ty, groups, clusters = x, y, None, np.arange(len(x))
  else:
    areas_per_rec = pd.Series(best["area"].to_numpy()).groupby(recording).nunique()
    if (areas_per_rec == 1).all():
      recs, inv = np.unique(recording, return_inverse=True)
      tx = np.array([x[inv == i][0] for i in range(len(recs))])
      ty = np.array([y[inv == i].mean() for i in range(len(recs))])
      groups, clusters = None, np.arange(len(recs))
      method = (f"at the level of recordings: each of {len(recs)} recordings holds one area; "
                "its mean best-layer index is ranked against its area's rank, recordings "
                "permuted and resampled")
    else:
      tx, ty, groups, clusters = x, y, recording, recording
      method = (f"area labels permuted within each of {len(np.unique(recording))} recordings; "
                "the CI resamples whole recordings")
  n_units = len(tx)
  if len(np.unique(tx)) < 2 or len(np.unique(ty)) < 2:
    rho, p1, p2, lo, hi = (float("nan"),) * 5
  else:
    rho, p1, p2 = _spearman_perm(tx, ty, n_perm=cfg.n_perm, rng=rng, groups=groups)
    lo, hi = _bootstrap_rho(tx, ty, clusters, n_boot=cfg.n_boot, ci=cfg.ci, rng=rng)
  chosen = choose_layers(df)
  chosen = chosen[(chosen["readout"] == readout) & (chosen["weights_kind"] == kind)]
  per_area = dict(zip(chosen["area"], chosen["layer"]))
  median = {a: float(np.median(g["layer"].map(index))) for a, g in best.groupby("area")}
  return HierarchyTest(readout=readout, weights_kind=kind, rho=rho, ci_low=lo, ci_high=hi,
                       p_value=p1, p_two_sided=p2, n_neurons=int(len(best)), n_units=n_units,
                       method=method,
                       area_ranks={a: r for a, r in cfg.area_ranks.items()
                                   if a in set(best["area"])},
                       best_layer_per_area=per_area, median_layer_index_per_area=median,
                       layers=tuple(layers), left_out_areas=left_out)


def verdict(t: HierarchyTest, ci: float) -> str:
  """The test's result in words, as an estimate with its interval."""
  level = int(round(ci * 100))
  if not np.isfinite(t.rho):
    return ("not estimable: the areas with a rank, or their best layers, do not vary "
            f"({t.n_units} units)")
  est = f"rho = {t.rho:.3f} [{level}% CI {t.ci_low:.3f}, {t.ci_high:.3f}]"
  if t.ci_low > 0:
    words = "areas higher in the hierarchy take deeper layers"
  elif t.ci_high < 0:
    words = "areas higher in the hierarchy take shallower layers"
  else:
    bound = max(abs(t.ci_low), abs(t.ci_high))
    words = (f"the interval includes 0: any order of the areas along the layers is weak, "
             f"|rho| <= {bound:.2f} at this precision")
  return f"{est}; {words}"
