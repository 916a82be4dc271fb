"""The results table, choices made on validation scores, and FEVE with two-level bootstrap CIs.

The input is a sweep's tidy table (one row per feature space x layer x readout x neuron) with at
least ``weights, layer, readout, area, neuron, feve, val_corr`` and, where present, ``fev`` (the
neuron's fraction of explainable variance, for the inclusion threshold), ``weights_kind``
(``trained``, ``random`` or ``energy``, from the checkpoint's metadata) and ``recording``.

Networks: ``RUN/feature_spaces.json`` (written by the sweep) gives each feature space's
architecture, kind and layers in network order; ``attach_networks`` adds to the table the
``network`` of each row (a checkpoint is its own network, except that the seeds of
``jaxmouse weights random`` of one architecture are one network, ``<arch> random``, their
neurons averaged), its ``arch`` and each layer's ``depth``, its position in the network's order
scaled to [0, 1]. Layers are ordered by the networks' own order, never alphabetically.

The rule every function here follows: a choice (the best layer of an area, of a neuron, of a
weights kind or network, of the energy model's feature sets) is made on validation correlations
(``val_corr``); the FEVE reported for it is measured on the test images, which took no part in
the choice.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from jaxmouse import metrics

REQUIRED_COLUMNS = ("weights", "layer", "readout", "area", "neuron", "feve", "val_corr")
KINDS = ("trained", "random", "energy")
FEATURE_SPACES = "feature_spaces.json"

# Hierarchies of mouse visual areas, as area -> position (equal positions tie; only the order
# matters to the rank correlation). "binary": V1 below every higher area (the default).
# "anatomical": the hierarchy scores from cortico-cortical and thalamo-cortical connectivity of
# Harris et al. 2019 (Nature 575:195-202), as tabulated by Siegle et al. 2021 (Nature 592:86-92):
# VISp -0.357 < VISl -0.093 < VISrl -0.059 < VISal 0.152 < VISpm 0.327 < VISam 0.441.
_ALIASES = {"VISp": "V1", "VISl": "LM", "VISrl": "RL", "VISal": "AL", "VISpm": "PM", "VISam": "AM"}
_ANATOMICAL = {"VISp": -0.357, "VISl": -0.093, "VISrl": -0.059, "VISal": 0.152, "VISpm": 0.327,
               "VISam": 0.441}
AREA_HIERARCHIES = {
    "binary": {**{a: 0.0 for a in ("V1", "VISp")},
               **{a: 1.0 for a in ("LM", "AL", "RL", "PM", "AM", "VISl", "VISal", "VISrl",
                                   "VISpm", "VISam")}},
    "anatomical": {**_ANATOMICAL, **{_ALIASES[a]: v for a, v in _ANATOMICAL.items()}},
}
DEFAULT_AREA_RANKS = AREA_HIERARCHIES["binary"]


def parse_area_ranks(text: str) -> dict[str, float]:
  """``"binary"``, ``"anatomical"`` or ``"V1=0,LM=1,AL=2"`` -> ``{area: position}``."""
  text = str(text).strip()
  if text in AREA_HIERARCHIES:
    return dict(AREA_HIERARCHIES[text])
  ranks = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    area, sep, rank = item.partition("=")
    try:
      if not sep or not area.strip():
        raise ValueError
      ranks[area.strip()] = float(rank)
    except ValueError:
      raise ValueError(f"area ranks: expected {' or '.join(AREA_HIERARCHIES)} or AREA=RANK items "
                       f"such as V1=0,LM=1,AL=2; got {item!r}") from None
  if not ranks:
    raise ValueError(f"area ranks: empty; expected {' or '.join(AREA_HIERARCHIES)} or "
                     "AREA=RANK items")
  return ranks


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportConfig:
  """How a results table is summarized.

  area_ranks: position of each area in the hypothesized hierarchy (equal positions tie), e.g.
    ``AREA_HIERARCHIES["anatomical"]``; areas without a position are left out of the test.
  fev_threshold: neurons whose fraction of explainable variance is below this are left out.
  n_boot, n_perm: bootstrap resamples and permutations; seed makes both deterministic.
  ci: the confidence level of every interval.
  """
  area_ranks: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: dict(DEFAULT_AREA_RANKS))
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
    ranks = dict(self.area_ranks)
    bad = {a: r for a, r in ranks.items() if not np.isfinite(float(r))}
    if not ranks or bad:
      raise ValueError(f"area_ranks must map areas to finite positions, got {ranks}")
    object.__setattr__(self, "area_ranks", {str(a): float(r) for a, r in ranks.items()})


# ---- the results table -------------------------------------------------------------------------

def weights_kind_from_name(name: str) -> str:
  """The kind of a feature space for tables without a ``weights_kind`` column (by convention:
  ``random*`` random, ``energy``/``gabor*`` the energy model, anything else trained)."""
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
  df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(
      path, dtype={"neuron": str, "weights": str, "layer": str, "area": str, "recording": str,
                   "weights_kind": str})
  return check_results(df, source=str(path))


def check_results(df: pd.DataFrame, *, source: str = "results") -> pd.DataFrame:
  missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
  if missing:
    hint = (" (val_corr, the validation score every choice of the report is made on)"
            if "val_corr" in missing else "")
    raise ValueError(f"{source}: missing columns {missing}{hint}; has {list(df.columns)}")
  if df.empty:
    raise ValueError(f"{source}: the results table has no rows")
  df = df.copy()
  for c in ("weights", "layer", "area", "neuron", "readout"):
    df[c] = df[c].astype(str)
  by_name = df["weights"].map(weights_kind_from_name)
  if "weights_kind" in df.columns:
    kind = df["weights_kind"].astype(object)
    df["weights_kind"] = kind.where(kind.isin(KINDS), by_name)
  else:
    df["weights_kind"] = by_name
  if "recording" in df.columns:
    df["recording"] = df["recording"].fillna("").astype(str)
  return df


def layer_sort_key(name: str):
  """Network order of VGG-style layer names (conv1_1 < conv1_2 < pool1 < conv2_1 ...); other
  names after them, alphabetically."""
  for prefix, sub in (("conv", 0), ("pool", 9)):
    if name.startswith(prefix):
      block, _, idx = name[len(prefix):].partition("_")
      try:
        return (0, int(block), int(idx) if idx else sub, name)
      except ValueError:
        break
  return (1, 0, 0, name)


def _table_order(layers) -> list[str]:
  """Layers of one feature space without recorded metadata: VGG-style names in network order,
  others in the order the table lists them (a sweep writes them in network order)."""
  first = {l: i for i, l in reversed(list(enumerate(layers)))}
  key = lambda l: (layer_sort_key(l) if layer_sort_key(l)[0] == 0 else (1, first[l], 0, l))
  return sorted(first, key=key)


def read_feature_spaces(run: str | Path | None) -> dict[str, dict]:
  """``{label: {"arch", "kind", "layers", ...}}`` from every ``feature_spaces.json`` of a run
  folder (a study's sweeps each write one); ``{}`` when there is none."""
  if run is None:
    return {}
  root = Path(run)
  root = root if root.is_dir() else root.parent
  out: dict[str, dict] = {}
  for path in sorted(glob.glob(str(root / "**" / FEATURE_SPACES), recursive=True)):
    try:
      doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: expected the JSON a sweep writes ({e})") from None
    if not isinstance(doc, dict):
      raise ValueError(f"{path}: expected a JSON object of feature spaces, got "
                       f"{type(doc).__name__}")
    for label, d in doc.items():
      if isinstance(d, dict) and isinstance(d.get("layers"), list):
        out.setdefault(str(label), d)
  return out


def attach_networks(df: pd.DataFrame, spaces: Mapping[str, Mapping] | None = None
                    ) -> pd.DataFrame:
  """The table with ``network``, ``arch`` and ``depth`` columns (see the module docstring).

  ``spaces``: ``read_feature_spaces(run)``; a label it describes takes its kind, architecture
  and layer order from there. Other labels keep the table's ``weights_kind``; their layer order
  is the table's (VGG-style names sorted by block), and their architecture is unknown.
  """
  spaces = dict(spaces or {})
  df = df.reset_index(drop=True)  # rows are addressed by position below
  network, arch, depth = (pd.Series("", index=df.index, dtype=object),
                          pd.Series("", index=df.index, dtype=object),
                          pd.Series(np.nan, index=df.index))
  for label, g in df.groupby("weights", sort=False):
    meta = spaces.get(label)
    kind = str(meta.get("kind") or g["weights_kind"].iloc[0]) if meta else g["weights_kind"].iloc[0]
    if meta and kind in KINDS:
      df.loc[g.index, "weights_kind"] = kind
    a = str(meta.get("arch", "")) if meta else ""
    if kind == "energy":
      name = "energy"
    elif kind == "random" and (not meta or "seed" in meta):
      name = f"{a} random" if a else "random"  # seeds of one init: one network
    else:
      name = label
    network[g.index] = name
    arch[g.index] = a
    if kind != "energy":
      order = [str(l) for l in meta["layers"]] if meta else _table_order(g["layer"].tolist())
      pos = {l: i / max(len(order) - 1, 1) for i, l in enumerate(order)}
      depth[g.index] = g["layer"].map(pos).astype(float)
  df["network"], df["arch"], df["depth"] = network, arch, depth
  return df


def network_label(network: str, arch: str, kind: str) -> str:
  """A network's name in legends: ``hed (vgg16)``, ``resnet18 random``, ``energy model``."""
  if kind == "energy":
    return "energy model"
  if kind == "random":
    if network == f"{arch} random" or network == "random":  # seeds of jaxmouse's init
      return network if arch else "random weights"
    return f"{network} ({arch}, random)" if arch else f"{network} (random)"
  return f"{network} ({arch})" if arch and arch != network else f"{network} (trained)"


def study_networks(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
  """The rows the study's per-kind questions read: one trained network (the first in the
  table), one random network (of the trained network's architecture when there is one, so that
  trained and random differ only in their weights; else the first) and the energy model.
  Returns ``(rows, {kind: network})``; other networks appear only in the per-network tables.
  """
  df = _with_networks(df)
  chosen: dict[str, str] = {}
  trained = list(dict.fromkeys(df.loc[df["weights_kind"] == "trained", "network"]))
  if trained:
    chosen["trained"] = trained[0]
  rnd = df[df["weights_kind"] == "random"]
  if len(rnd):
    arch = df.loc[df["network"] == chosen.get("trained"), "arch"]
    same = rnd[rnd["arch"] == arch.iloc[0]] if len(arch) and arch.iloc[0] else rnd.iloc[:0]
    chosen["random"] = str((same if len(same) else rnd)["network"].iloc[0])
  keep = df["network"].isin(chosen.values()) | (df["weights_kind"] == "energy")
  if (df["weights_kind"] == "energy").any():
    chosen["energy"] = "energy"
  return df[keep], chosen


def _with_networks(df: pd.DataFrame) -> pd.DataFrame:
  return df if "network" in df.columns else attach_networks(df)


def layer_order(df: pd.DataFrame) -> list[str]:
  """The CNN layers of a table in network order: by relative depth (``attach_networks``), the
  order within each network as it defines it; never alphabetical."""
  df = _with_networks(df)
  cnn = df[df["weights_kind"] != "energy"]
  first = {l: i for i, l in reversed(list(enumerate(cnn["layer"])))}
  depth = cnn.groupby("layer")["depth"].mean()
  return sorted(first, key=lambda l: (depth.get(l, np.inf), first[l]))


def included(df: pd.DataFrame, cfg: ReportConfig) -> pd.DataFrame:
  """Rows of neurons that pass the explainable-variance threshold (a property of the test
  responses alone, not of any model) and have a finite FEVE."""
  if "fev" in df.columns:
    df = df[df["fev"] >= cfg.fev_threshold]
  return df[np.isfinite(df["feve"])]


def per_neuron(df: pd.DataFrame) -> pd.DataFrame:
  """FEVE and validation correlation per (readout, kind, area, layer, neuron), random seeds (or
  several checkpoints of one kind) pooled by averaging each neuron over them."""
  return (df.groupby(["readout", "weights_kind", "area", "layer", "neuron"])[["feve", "val_corr"]]
          .mean().reset_index())


def feve_by_layer(df: pd.DataFrame) -> pd.DataFrame:
  """Mean, sd, sem and count of test FEVE and the mean validation correlation per (readout,
  weights_kind, area, layer); the energy model's feature sets are layers of kind ``energy``."""
  out = per_neuron(df).groupby(["readout", "weights_kind", "area", "layer"]).agg(
      mean=("feve", "mean"), sd=("feve", "std"), count=("feve", "count"),
      val_corr=("val_corr", "mean")).reset_index()
  out["sem"] = out["sd"] / np.sqrt(out["count"])
  return out


def choose_layers(df: pd.DataFrame) -> pd.DataFrame:
  """The layer of each (readout, weights_kind, area) with the highest mean validation
  correlation over the area's neurons: columns ``readout, weights_kind, area, layer, val_corr``.
  Test FEVE plays no part."""
  by = feve_by_layer(df)
  best = by.loc[by.groupby(["readout", "weights_kind", "area"])["val_corr"].idxmax()]
  return best[["readout", "weights_kind", "area", "layer", "val_corr"]].reset_index(drop=True)


def choose_neuron_layers(df: pd.DataFrame, *, readout: str, kind: str) -> pd.DataFrame:
  """Each neuron's layer with the highest validation correlation: ``area, neuron, layer``."""
  pn = per_neuron(df[(df["readout"] == readout) & (df["weights_kind"] == kind)])
  best = pn.loc[pn.groupby(["area", "neuron"])["val_corr"].idxmax()]
  return best[["area", "neuron", "layer", "val_corr", "feve"]].reset_index(drop=True)


# ---- test-image statistics and the two-level bootstrap ------------------------------------------

class TestImages:
  """Per-test-image statistics saved with every cell (``test_images.npz``), keyed by
  ``(weights, layer, readout, area)``; read lazily. ``empty`` when a table came without them."""

  def __init__(self, run: str | Path | None):
    self._paths: dict[tuple[str, str, str, str], Path] = {}
    self._cache: dict[tuple[str, str, str, str], dict] = {}
    if run is None:
      return
    root = Path(run)
    root = root if root.is_dir() else root.parent
    for meta in sorted(glob.glob(str(root / "**" / "cells" / "*" / "cell.json"), recursive=True)):
      stats = Path(meta).with_name("test_images.npz")
      if not stats.is_file():
        continue
      try:
        c = json.loads(Path(meta).read_text())["cell"]
        key = (str(c["weights"]), str(c["layer"]), str(c["readout"]), str(c["area"]))
      except (OSError, ValueError, KeyError, TypeError):
        continue  # not a cell of this run's format: its rows are scored without resampling
      self._paths[key] = stats

  @property
  def empty(self) -> bool:
    return not self._paths

  def get(self, weights: str, layer: str, readout: str, area: str) -> dict | None:
    key = (weights, layer, readout, area)
    if key not in self._paths:
      return None
    if key not in self._cache:
      from jaxmouse.data.plain import read_npz

      a = read_npz(self._paths[key], what="test-image statistics")
      self._cache[key] = {k: np.asarray(v) for k, v in a.items()}
    return self._cache[key]


class Bootstrap:
  """Two-level bootstrap: every resample draws test images (with replacement) and neurons.

  Neurons of an area are scored on the same test images, so their FEVEs are not independent: a
  CI that resamples only neurons is too narrow. Each resample ``b`` reweights the images by
  multiplicities ``W[b]`` (the same draw for every quantity of a report, so differences are
  paired) and recomputes each neuron's FEVE from its per-image statistics
  (``metrics.feve_from_stats``), then averages over a resample of the neurons. As in the
  analysis itself, a neuron counts in a resample only if its explainable-variance fraction
  there reaches the inclusion threshold: FEVE is a ratio whose denominator, the explainable
  variance, can nearly vanish in a resample, and such draws would otherwise dominate the mean. Without those
  statistics (a table from elsewhere) only neurons are resampled, and ``method`` says so.
  """

  def __init__(self, df: pd.DataFrame, images: TestImages, cfg: ReportConfig):
    self.df = df
    self.images = images
    self.cfg = cfg
    self._weights: dict[tuple, np.ndarray] = {}
    self.two_level = not images.empty

  @property
  def method(self) -> str:
    if self.two_level:
      return (f"{int(round(self.cfg.ci * 100))}% two-level bootstrap over test images and "
              f"neurons ({self.cfg.n_boot} resamples)")
    return (f"{int(round(self.cfg.ci * 100))}% bootstrap over neurons only ({self.cfg.n_boot} "
            "resamples; the table came without per-image test statistics, so these intervals "
            "ignore that neurons share test images and are too narrow)")

  def _image_weights(self, image_ids: np.ndarray) -> np.ndarray:
    key = tuple(np.asarray(image_ids).tolist())
    if key not in self._weights:
      rng = np.random.default_rng([self.cfg.seed, len(self._weights), 0x1A6E])
      m = len(image_ids)
      draws = rng.integers(0, m, size=(self.cfg.n_boot, m))
      self._weights[key] = np.stack([np.bincount(d, minlength=m) for d in draws]).astype(float)
    return self._weights[key]

  def feve_draws(self, *, readout: str, kind: str | None = None, area: str, layers, neurons,
                 network: str | None = None) -> np.ndarray | None:
    """FEVE of each neuron under each image resample, ``(B, k)``, at ``layers`` (one layer for
    all, or one per neuron), averaged over the checkpoints of ``kind`` (or of ``network``);
    None if unavailable."""
    if not self.two_level:
      return None
    neurons = np.asarray(neurons).astype(str)
    layers = np.broadcast_to(np.asarray(layers, dtype=object), neurons.shape)
    which = (self.df["network"] == network) if network is not None else (
        self.df["weights_kind"] == kind)
    rows = self.df[(self.df["readout"] == readout) & which & (self.df["area"] == area)]
    out = np.zeros((self.cfg.n_boot, len(neurons)))
    seen = np.zeros(len(neurons))
    for (weights, layer), g in rows.groupby(["weights", "layer"]):
      want = np.flatnonzero(layers == layer)
      if not want.size:
        continue
      stats = self.images.get(weights, layer, readout, area)
      if stats is None:
        return None
      ids = stats["unit_ids"].astype(str)
      pos = {u: i for i, u in enumerate(ids)}
      have = np.array([n in pos for n in neurons[want]])
      if not have.all():
        return None
      cols = np.array([pos[n] for n in neurons[want]])
      sub = {k: (stats[k][:, cols] if stats[k].ndim == 2 else stats[k])
             for k in ("count", "pred", "sum", "sum_sq")}
      w = self._image_weights(stats["image"])
      with np.errstate(invalid="ignore"):
        out[:, want] += metrics.feve_from_stats(sub, w, min_fev=self.cfg.fev_threshold)
      seen[want] += 1
    if (seen == 0).any():
      return None
    return out / seen

  def ci(self, point: np.ndarray, draws: np.ndarray | None, *, salt: int = 0):
    """Mean of ``point (k,)`` over neurons and its CI; ``draws (B, k)`` adds image resampling."""
    point = np.asarray(point, np.float64)
    k = point.size
    if k == 0:
      return np.nan, np.nan, np.nan
    rng = np.random.default_rng([self.cfg.seed, salt, 0xB007])
    idx = rng.integers(0, k, size=(self.cfg.n_boot, k))
    with warnings.catch_warnings():  # a resample of a few neurons may leave none included
      warnings.simplefilter("ignore", RuntimeWarning)
      if draws is None:
        boots = np.nanmean(point[idx], axis=1)
      else:
        boots = np.nanmean(np.take_along_axis(draws, idx, axis=1), axis=1)
      a = (1 - self.cfg.ci) / 2
      lo, hi = np.nanquantile(boots, [a, 1 - a])
      return float(np.nanmean(point)), float(lo), float(hi)


def _salt(*parts) -> int:
  """A stable seed component per quantity, so that each CI is reproducible on its own."""
  return int(hashlib.sha256(" ".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _neuron_feve(pn: pd.DataFrame, *, readout, kind, area, layer) -> pd.Series:
  g = pn[(pn["readout"] == readout) & (pn["weights_kind"] == kind) & (pn["area"] == area)
         & (pn["layer"] == layer)]
  return g.set_index("neuron")["feve"]


def _compare(boot: Bootstrap, pn, *, readout, area, a: tuple[str, str], b: tuple[str, str]):
  """Mean test FEVE of ``a = (kind, layer)`` minus ``b`` over the neurons both have, with CI."""
  fa = _neuron_feve(pn, readout=readout, kind=a[0], area=area, layer=a[1])
  fb = _neuron_feve(pn, readout=readout, kind=b[0], area=area, layer=b[1])
  both = fa.index.intersection(fb.index)
  if not len(both):
    return None
  da = boot.feve_draws(readout=readout, kind=a[0], area=area, layers=a[1], neurons=both)
  db = boot.feve_draws(readout=readout, kind=b[0], area=area, layers=b[1], neurons=both)
  draws = None if da is None or db is None else da - db
  diff = fa[both].to_numpy() - fb[both].to_numpy()
  return boot.ci(diff, draws, salt=_salt(readout, area, *a, *b))


def area_table(df: pd.DataFrame, cfg: ReportConfig, *, images: TestImages | None = None
               ) -> pd.DataFrame:
  """One row per (readout, area): for each weights kind present, its validation-chosen layer
  and the test FEVE there (with CI); trained - random, each at its own chosen layer; CNN -
  energy model (the trained network when present, else random), each at its chosen layer.

  Columns: ``readout, area, n_neurons``; ``{kind}_layer, {kind}_val_corr, {kind}_feve,
  {kind}_ci_low, {kind}_ci_high`` for kind in trained/random/energy; ``trained_minus_random``,
  ``diff_ci_low``, ``diff_ci_high``; ``cnn_kind``, ``cnn_minus_energy``,
  ``cnn_energy_ci_low``, ``cnn_energy_ci_high``; ``ci_method``.
  """
  boot = Bootstrap(df, images or TestImages(None), cfg)
  pn = per_neuron(df)
  chosen = choose_layers(df)
  rows = []
  for (readout, area), g in chosen.groupby(["readout", "area"], sort=False):
    layer = dict(zip(g["weights_kind"], g["layer"]))
    row = {"readout": readout, "area": area,
           "n_neurons": int(pn[(pn["readout"] == readout) & (pn["area"] == area)]["neuron"]
                            .nunique())}
    for kind in KINDS:
      if kind not in layer:
        continue
      f = _neuron_feve(pn, readout=readout, kind=kind, area=area, layer=layer[kind])
      draws = boot.feve_draws(readout=readout, kind=kind, area=area, layers=layer[kind],
                              neurons=f.index)
      m, lo, hi = boot.ci(f.to_numpy(), draws, salt=_salt(readout, area, kind))
      row.update({f"{kind}_layer": layer[kind],
                  f"{kind}_val_corr": float(g.loc[g["weights_kind"] == kind, "val_corr"].iloc[0]),
                  f"{kind}_feve": m, f"{kind}_ci_low": lo, f"{kind}_ci_high": hi})
    if "trained" in layer and "random" in layer:
      res = _compare(boot, pn, readout=readout, area=area, a=("trained", layer["trained"]),
                     b=("random", layer["random"]))
      if res:
        row.update(trained_minus_random=res[0], diff_ci_low=res[1], diff_ci_high=res[2])
    cnn = "trained" if "trained" in layer else "random" if "random" in layer else None
    if cnn and "energy" in layer:
      res = _compare(boot, pn, readout=readout, area=area, a=(cnn, layer[cnn]),
                     b=("energy", layer["energy"]))
      if res:
        row.update(cnn_kind=cnn, cnn_minus_energy=res[0], cnn_energy_ci_low=res[1],
                   cnn_energy_ci_high=res[2])
    row["ci_method"] = boot.method
    rows.append(row)
  return pd.DataFrame(rows)


def layer_table(df: pd.DataFrame, cfg: ReportConfig, *, images: TestImages | None = None
                ) -> pd.DataFrame:
  """Trained versus random layer by layer (no choice involved): per (readout, area, layer) the
  mean test FEVE of each and the difference with its CI."""
  boot = Bootstrap(df, images or TestImages(None), cfg)
  pn = per_neuron(df)
  rows = []
  kinds = set(pn["weights_kind"])
  if not {"trained", "random"} <= kinds:
    return pd.DataFrame(columns=["readout", "area", "layer", "trained_feve", "random_feve",
                                 "trained_minus_random", "diff_ci_low", "diff_ci_high"])
  order = layer_order(df)
  for (readout, area), g in pn[pn["weights_kind"] != "energy"].groupby(["readout", "area"]):
    for layer in [l for l in order if l in set(g["layer"])]:
      res = _compare(boot, pn, readout=readout, area=area, a=("trained", layer),
                     b=("random", layer))
      if not res:
        continue
      t = _neuron_feve(pn, readout=readout, kind="trained", area=area, layer=layer)
      r = _neuron_feve(pn, readout=readout, kind="random", area=area, layer=layer)
      rows.append({"readout": readout, "area": area, "layer": layer,
                   "trained_feve": float(t.mean()), "random_feve": float(r.mean()),
                   "trained_minus_random": res[0], "diff_ci_low": res[1],
                   "diff_ci_high": res[2]})
  return pd.DataFrame(rows)


# ---- networks ------------------------------------------------------------------------------------

def feve_by_network(df: pd.DataFrame) -> pd.DataFrame:
  """Per (readout, network, area, layer): ``arch``, ``weights_kind``, ``depth``, the mean, sd,
  sem and count of test FEVE and the mean validation correlation (a random network's seeds
  averaged per neuron first). The energy model is the network ``energy``."""
  df = _with_networks(df)
  keys = ["readout", "network", "arch", "weights_kind", "area", "layer"]
  pn = df.groupby(keys + ["neuron"], dropna=False)[["feve", "val_corr", "depth"]].mean()
  out = pn.reset_index().groupby(keys, dropna=False, sort=False).agg(
      depth=("depth", "mean"), mean=("feve", "mean"), sd=("feve", "std"),
      count=("feve", "count"), val_corr=("val_corr", "mean")).reset_index()
  out["sem"] = out["sd"] / np.sqrt(out["count"])
  return out.sort_values(["readout", "network", "area", "depth"], kind="stable",
                         na_position="first").reset_index(drop=True)


def choose_network_layers(df: pd.DataFrame) -> pd.DataFrame:
  """The layer of each (readout, network, area) with the highest mean validation correlation
  over the area's neurons (test FEVE plays no part): columns ``readout, network, arch,
  weights_kind, area, layer, depth, val_corr``."""
  by = feve_by_network(df)
  best = by.loc[by.groupby(["readout", "network", "area"], sort=False)["val_corr"].idxmax()]
  return best[["readout", "network", "arch", "weights_kind", "area", "layer", "depth",
               "val_corr"]].reset_index(drop=True)


def network_table(df: pd.DataFrame, cfg: ReportConfig, *, images: TestImages | None = None
                  ) -> pd.DataFrame:
  """One row per (readout, area, network): the network's architecture and kind, its layer
  chosen on validation, that layer's relative depth in the network, and its test FEVE with a CI.

  Columns: ``readout, area, network, arch, weights_kind, layer, depth, val_corr, feve, ci_low,
  ci_high, n_neurons, ci_method``.
  """
  df = _with_networks(df)
  boot = Bootstrap(df, images or TestImages(None), cfg)
  rows = []
  for _, c in choose_network_layers(df).iterrows():
    g = df[(df["readout"] == c["readout"]) & (df["network"] == c["network"])
           & (df["area"] == c["area"]) & (df["layer"] == c["layer"])]
    f = g.groupby("neuron")["feve"].mean()
    draws = boot.feve_draws(readout=c["readout"], network=c["network"], area=c["area"],
                            layers=c["layer"], neurons=f.index)
    m, lo, hi = boot.ci(f.to_numpy(), draws, salt=_salt(c["readout"], c["area"], c["network"]))
    rows.append({**c.to_dict(), "feve": m, "ci_low": lo, "ci_high": hi, "n_neurons": len(f),
                 "ci_method": boot.method})
  cols = ["readout", "area", "network", "arch", "weights_kind", "layer", "depth", "val_corr",
          "feve", "ci_low", "ci_high", "n_neurons", "ci_method"]
  return pd.DataFrame(rows, columns=cols)
