"""Mice to Machines (Qazi, Jalil & Iqbal, arXiv 2505.06886): which VGG16 layers resemble which
mouse visual areas and Cre lines, with and without NeuRN in front of the network.

For every area and Cre line (and excitatory / inhibitory class) against every layer:
RMSE between normalised neural representations (response-weighted stimulus averages) and DNN
feature detectors (first-layer kernels; each layer's unit representations), top-down (k-means
central representations) and bottom-up (every neuron's best-matching unit); RSA and linear CKA,
against the whole layer and against each neuron's matched units (``jaxmouse.compare``). Each is
run twice: raw images into the network, and ``255 * NeuRN_k(image)``.

What is chosen on which data: the images are split once (``jaxmouse.compare.split_images``).
The select images choose each neuron's best-matching and matched units, each group's central
representations and each group's most similar layer (``best_layers``, ``neurn_effect``); the
evaluate images only score. NeuRN's k is not chosen on these data at all: it is the config's
(default ``jaxmouse.models.neurn.DEFAULT_K``, chosen on the digits study's source validation
split), and both arms are scored, each at its own layer chosen on the select images.

Data: the simulated mouse by default (the six Allen areas with the paper's proportions of
neurons, one planted VGG16 layer per area, Cre lines drawn at random as a null control: the
simulation gives them no different tuning; every output says the data are simulated and what
was planted), or any data set ``jaxmouse.data.load`` reads, e.g. a
folder of Allen Brain Observatory NWB files (natural scenes; ``cre_line`` and ``cell_class`` come
with it). Weights: random VGG16 (seed 0) by default, or a converted checkpoint folder.

Run::

  jaxmouse compare mice --config quick --out runs/mice            # simulated mouse, ~1-2 min
  jaxmouse compare --data allen_nwb/ --weights weights/vgg16 --config full --out runs/allen

Writes ``rsa.csv``, ``cka.csv``, ``rmse.csv``, ``neurons.csv``, ``ceilings.csv``, ``rsa.png``,
``cka.png`` (areas x layers heatmaps, raw and as a fraction of the noise ceiling),
``rmse_layers.png`` (areas x layers), ``rmse.png``, ``embedding.png`` (every neuron's
representation embedded, k-means clusters, coloured by cluster, area and Cre line),
``representations.png``, ``summary.md`` and ``config.json``.

Ceilings and uncertainty: every RSA / CKA value comes with its group's noise ceiling (split halves
of each image's repeats, Spearman-Brown corrected), the value as a fraction of it, and 95%
intervals from resampling the evaluate images (``jaxmouse.reliability``); like the values, they
are computed on the evaluate images. The simulated mouse shows most images repeatedly (as the
Allen natural scenes are, 50 times each), so that the ceilings rest on nearly every evaluate
image.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxmouse import compare
from jaxmouse.models.neurn import DEFAULT_K

ALLEN_AREAS = ("VISp", "VISl", "VISal", "VISrl", "VISpm", "VISam")
# Neurons per area in the paper's figure (1,000 neurons), in ALLEN_AREAS order.
PAPER_COUNTS = (393, 256, 60, 91, 176, 24)
# A planted hierarchy for the simulated mouse: one VGG16 layer per area, in ALLEN_AREAS order.
PLANTED = ("conv2_2", "conv3_1", "conv3_3", "conv4_1", "conv4_3", "conv5_1")
CRE_LINES = {"Cux2-CreERT2": "excitatory", "Rorb-IRES2-Cre": "excitatory",
             "Sst-IRES-Cre": "inhibitory", "Vip-IRES-Cre": "inhibitory"}
ALL_CONV = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
            "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MiceConfig:
  """One comparison run.

  name: config name. layers: VGG16 layers compared. neurn_k: NeuRN's k for the "with NeuRN" arm
  (None: raw images only). image_shape: images are resized to this before the network (and
  neural representations use ``map_shape``). neuron_scale: the simulated mouse has
  ``round(scale * PAPER_COUNTS)`` neurons per area. n_images, n_test_images, n_repeats: the
  simulated image set (``n_test_images`` of them shown ``n_repeats`` times, the others once).
  sim_n_features, sim_rf_sigma: planted readouts (see ``jaxmouse.data.SimulationConfig``).
  weights_seed: random VGG16 when no weights are given. n_clusters, n_central: k-means per
  group. ceiling_splits, n_boot: split halves for the RSA / CKA noise ceilings and image
  resamples for their intervals (``jaxmouse.compare.CompareConfig``). seed: simulation, image
  split, clustering, resamples.
  """

  name: str
  layers: tuple[str, ...]
  neurn_k: int | None = DEFAULT_K
  image_shape: tuple[int, int] = (36, 64)
  map_shape: tuple[int, int] = (18, 32)
  neuron_scale: float = 0.25
  n_images: int = 400
  n_test_images: int = 40
  n_repeats: int = 5
  sim_n_features: int = 8
  sim_rf_sigma: float | None = None
  weights_seed: int = 0
  n_clusters: int = 4
  n_central: int = 3
  ceiling_splits: int = 5
  n_boot: int = 1000
  seed: int = 0

  def __post_init__(self):
    from jaxmouse.models import vgg

    object.__setattr__(self, "layers", vgg.check_layers("vgg16", self.layers))
    object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
    object.__setattr__(self, "map_shape", tuple(int(s) for s in self.map_shape))
    if self.neurn_k is not None and (self.neurn_k < 1 or self.neurn_k % 2 == 0):
      raise ValueError(f"MiceConfig.neurn_k must be odd and positive or None, got {self.neurn_k}")
    if self.neuron_scale <= 0:
      raise ValueError(f"MiceConfig.neuron_scale must be > 0, got {self.neuron_scale}")

  def simulation(self):
    """The simulated mouse's ``SimulationConfig``."""
    from jaxmouse.data import SimulationConfig

    counts = tuple(max(3, int(round(self.neuron_scale * c))) for c in PAPER_COUNTS)
    extra = {} if self.sim_rf_sigma is None else {"rf_sigma": self.sim_rf_sigma}
    return SimulationConfig(areas=ALLEN_AREAS, neurons_per_area=counts,
                            image_shape=self.image_shape, n_images=self.n_images,
                            n_test_images=self.n_test_images, n_repeats=self.n_repeats,
                            layers=PLANTED, n_features=self.sim_n_features, seed=self.seed,
                            weights_seed=self.weights_seed, name=f"simulated-{self.name}", **extra)


CONFIGS = {
    # Simulated mouse, 250 neurons in six areas, 400 images at 36x64 (360 of them shown 5 times,
    # for the noise ceilings), 7 layers: ~2 min on 2 cores.
    "quick": MiceConfig(name="quick", layers=("conv1_2", "conv2_2", "conv3_1", "conv3_3",
                                              "conv4_1", "conv4_3", "conv5_1"),
                        n_test_images=360),
    # The paper's 1,000 neurons, 1,000 images (900 shown 10 times), all 13 conv layers.
    "full": MiceConfig(name="full", layers=ALL_CONV, neuron_scale=1.0, n_images=1000,
                       n_test_images=900, n_repeats=10),
    # For tests: seconds.
    "tiny": MiceConfig(name="tiny", layers=("conv1_2", "conv2_2"), image_shape=(24, 32),
                       map_shape=(12, 16), neuron_scale=0.05, n_images=80, n_test_images=64,
                       n_repeats=3, n_boot=200),
}


def get_config(name: str, **changes) -> MiceConfig:
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; available {list(CONFIGS)}")
  return dataclasses.replace(CONFIGS[name], **changes)


def with_random_cre_lines(ds, *, seed: int):
  """The data set with ``cre_line`` and ``cell_class`` drawn at random (half excitatory)."""
  rng = np.random.default_rng([seed, 0xC2E])
  lines = np.array(list(CRE_LINES))
  cre = lines[rng.integers(len(lines), size=ds.n_neurons)]
  cls = np.array([CRE_LINES[c] for c in cre])
  return ds.replace(neuron_meta={**ds.neuron_meta, "cre_line": cre, "cell_class": cls})


def simulation_note(config: MiceConfig, weights=None) -> str:
  """What the simulated mouse is and what was planted in it, in one paragraph."""
  sim = config.simulation()
  net = (f"VGG16 weights {weights}" if weights is not None
         else f"random VGG16 (seed {config.weights_seed})")
  readout = ("a factorized linear readout" if sim.subunits == 1
             else f"a nonlinear model of {sim.subunits} subunits")
  layers = ", ".join(f"{a} {l[0]}" for a, l in zip(sim.areas, sim.layers))
  gabor = ", ".join(f"{a} {g:.0%}" for a, g in zip(sim.areas, sim.gabor_fraction))
  return (f"A simulated mouse, not a recording: {sim.n_neurons} neurons in {len(sim.areas)} "
          f"areas, {sim.n_images} images of {sim.image_shape[0]}x{sim.image_shape[1]} "
          f"({sim.n_test_images} repeated {sim.n_repeats} times), {sim.noise} noise. Each CNN "
          f"neuron is {readout} ({sim.n_features} channels) of one planted layer of the same "
          f"network that is compared here ({net}): {layers}; the other neurons are Gabor energy "
          f"cells ({gabor}). Cre lines and cell classes are random labels (a null control: no "
          f"difference is planted). The planted neurons read features of raw images, so the "
          f"raw-image arm is favoured by construction: the NeuRN comparison on these data does not "
          f"test the paper's claim.")


def prepare(config: MiceConfig, *, data=None, weights=None, log: Callable = print):
  """``(dataset, weights, planted)``: loaded or simulated data resized to ``image_shape``, weights
  loaded or drawn, and ``{area: planted layer}`` for the simulated mouse (else ``{}``)."""
  from jaxmouse import weights as wlib

  w = wlib.load(weights) if weights is not None else wlib.random_init("vgg16", config.weights_seed)
  if w.arch != "vgg16":
    raise ValueError(f"mice_to_machines compares VGG16 layers; weights {weights} are {w.arch}")
  if data is None:
    from jaxmouse.data import simulate

    sim = config.simulation()
    log(f"simulating {sim.n_neurons} neurons in {len(sim.areas)} areas, {sim.n_images} images "
        f"{sim.image_shape[0]}x{sim.image_shape[1]}")
    ds, _ = simulate(sim, weights=w)
    ds = with_random_cre_lines(ds, seed=config.seed)
    planted = {a: l[0] for a, l in zip(sim.areas, sim.layers)}
    log(f"SIMULATED data: {simulation_note(config, weights)}")
  else:
    from jaxmouse.data import load

    ds = load(data)
    log(f"loaded {ds!r}")
    planted = {}
  return ds.resize(config.image_shape), w, planted


def compare_arms(ds, features_fn: Callable, base: compare.CompareConfig, *,
                 neurn_k: int | None, kernel=None, progress: Callable | None = None,
                 log: Callable = print) -> tuple[dict, dict]:
  """``compare.compare_dataset`` with raw images and, if ``neurn_k``, with ``NeuRN_k`` images.

  Both arms share the image split, the groups and the central representations (none of them
  depends on the network). Returns ``(tables, first)``: ``tables`` maps ``rsa``, ``cka``,
  ``rmse``, ``neurons`` to rows with an added ``neurn`` column (``none`` or ``k=<k>``); ``first``
  is the raw arm's full output (maps, groups, central members, image sets).
  """
  arms = [None] + ([neurn_k] if neurn_k is not None else [])
  tables = {"rsa": [], "cka": [], "rmse": [], "neurons": []}
  first = None
  for k in arms:
    label = "none" if k is None else f"k={k}"
    log(f"comparing {len(base.layers)} layers, NeuRN {label}")
    out = compare.compare_dataset(ds, features_fn, dataclasses.replace(base, neurn_k=k),
                                  kernel=kernel, progress=progress,
                                  central=first["central"] if first else None)
    for key in tables:
      tables[key].extend({"neurn": label, **row} for row in out[key])
    first = first or out
  return tables, first


def run(config: MiceConfig, *, data=None, weights=None, progress: Callable | None = None,
        log: Callable = print) -> dict:
  """Both arms (raw, NeuRN) of the comparison; returns tables (lists of rows) and arrays."""
  from jaxmouse.features import extract

  t0 = time.perf_counter()
  ds, w, planted = prepare(config, data=data, weights=weights, log=log)
  base = compare.CompareConfig(layers=config.layers, map_shape=config.map_shape,
                               n_clusters=config.n_clusters, n_central=config.n_central,
                               ceiling_splits=config.ceiling_splits, n_boot=config.n_boot,
                               seed=config.seed)
  tables, first = compare_arms(ds, lambda im, ls: extract(w, im, layers=ls, batch_size=64), base,
                               neurn_k=config.neurn_k, kernel=w.params["conv1_1"]["kernel"],
                               progress=progress, log=log)
  return {"tables": tables, "maps": first["maps"], "maps_select": first["maps_select"],
          "groups": first["groups"], "central": first["central"], "planted": planted,
          "simulated": simulation_note(config, weights) if data is None else None,
          "images": {k: v.size for k, v in first["images"].items()}, "dataset": repr(ds),
          "n_neurons": ds.n_neurons, "seconds": time.perf_counter() - t0}


# ---- outputs -----------------------------------------------------------------------------------


def _markdown(df, floatfmt: str = "{:.3f}") -> str:
  cols = [str(c) for c in df.columns]
  fmt = lambda v: floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)
  rows = [" | ".join(cols), " | ".join("---" for _ in cols)]
  rows += [" | ".join(fmt(v) for v in r) for r in df.itertuples(index=False)]
  return "\n".join(f"| {r} |" for r in rows)


def _chosen(rows, criterion: str, *, lowest: bool):
  """The row whose ``criterion`` (select images) is best; its reported value is on evaluate."""
  return rows.loc[rows[criterion].idxmin() if lowest else rows[criterion].idxmax()]


def best_layers(tables: dict, planted: dict) -> "pd.DataFrame":
  """Per arm x kind x group, the most similar layer under each RSA/CKA form and RMSE level.

  The layer is chosen on the select images (``value_select`` / ``rmse_select``); the value in
  brackets is measured on the evaluate images at that layer.
  """
  import pandas as pd

  rows = []
  rmse = pd.DataFrame(tables["rmse"])
  rmse = rmse[rmse.layer != "kernels"]
  sims = {m: pd.DataFrame(tables[m]) for m in ("rsa", "cka")}
  for (arm, kind, group), _ in rmse.groupby(["neurn", "kind", "group"], sort=False):
    row = {"neurn": arm, "kind": kind, "group": group}
    if planted:
      row["planted"] = planted.get(group, "") if kind == "area" else ""
    for measure, df in sims.items():
      for method in ("matched", "layer"):
        sel = df[(df.neurn == arm) & (df.kind == kind) & (df.group == group)
                 & (df.method == method)]
        top = _chosen(sel, "value_select", lowest=False)
        frac = (f"; {top.normalized:.2f} of ceiling"
                if np.isfinite(top.get("normalized", np.nan)) else "")
        row[f"{measure}_{method}"] = f"{top.layer} ({top.value:.2f}{frac})"
    for level in ("bottom_up", "top_down"):
      sel = rmse[(rmse.neurn == arm) & (rmse.kind == kind) & (rmse.group == group)
                 & (rmse.level == level)]
      top = _chosen(sel, "rmse_select", lowest=True)
      row[f"rmse_{level}"] = f"{top.layer} ({top.rmse:.3f})"
    rows.append(row)
  return pd.DataFrame(rows)


CEILING_COLUMNS = ("value", "ci_low", "ci_high", "ceiling", "normalized", "normalized_ci_low",
                   "normalized_ci_high", "ceiling_images")


def ceiling_table(tables: dict) -> "pd.DataFrame":
  """Per measure (RSA, CKA), form, arm, kind and group, at the layer chosen on the select
  images: the value on the evaluate images with its image-bootstrap interval, the group's noise
  ceiling, and the value as a fraction of the ceiling with its interval (``ceiling_images``:
  evaluate images with two or more trials). Empty when the rows carry no ceilings."""
  import pandas as pd

  rows = []
  for measure in ("rsa", "cka"):
    df = pd.DataFrame(tables[measure])
    if "ceiling" not in df:
      return pd.DataFrame()
    for (method, arm, kind, group), sel in df.groupby(["method", "neurn", "kind", "group"],
                                                      sort=False):
      top = _chosen(sel, "value_select", lowest=False)
      rows.append({"measure": measure, "method": method, "neurn": arm, "kind": kind,
                   "group": group, "layer": top.layer,
                   **{c: top[c] for c in CEILING_COLUMNS}})
  return pd.DataFrame(rows)


def neurn_effect(tables: dict) -> "pd.DataFrame":
  """Per kind x group x level: RMSE without and with NeuRN, each arm at its own layer chosen on
  the select images (columns ``layer_<arm>``), RMSE on the evaluate images, and the change."""
  import pandas as pd

  rmse = pd.DataFrame(tables["rmse"])
  rmse = rmse[rmse.layer != "kernels"]
  keys = ["kind", "group", "level"]
  at = rmse.loc[rmse.groupby(keys + ["neurn"], sort=False)["rmse_select"].idxmin()]
  arms = list(dict.fromkeys(at.neurn))
  wide = at.pivot(index=keys, columns="neurn", values="rmse")[arms]
  layers = at.pivot(index=keys, columns="neurn", values="layer")[arms]
  out = wide.join(layers.add_prefix("layer_"))
  order = rmse[keys].drop_duplicates().set_index(keys).index
  out = out.reindex(order)
  if len(arms) > 1 and "none" in arms:
    out["change"] = out[[a for a in arms if a != "none"][0]] - out["none"]
  return out.reset_index()


SELECTION_NOTE = (
    "How every choice is made: the images are split once into select ({select}) and evaluate "
    "({evaluate}) sets. The select images choose each neuron's best-matching unit (RMSE) and "
    "matched unit (RSA/CKA), each group's k-means central representations, and each group's "
    "most similar layer (for unit-level measures, a unit chosen on one half of the select images "
    "and scored on the other, so wider layers gain nothing from more candidates). Every value "
    "reported is measured on the evaluate images, which choose nothing. NeuRN's k ({k}) is not "
    "chosen on these data; each arm is scored at its own layer chosen on the select images.")


def write_outputs(out: Path, config: MiceConfig, result: dict, *, overwrite: bool = False) -> str:
  """Tables (CSV), figures (PNG), summary.md and config.json in one atomic folder."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import pandas as pd

  from jaxmouse import _io

  _io.check_output_path(out, overwrite=overwrite)
  tables = result["tables"]
  best = best_layers(tables, result["planted"])
  effect = neurn_effect(tables)
  ceilings = ceiling_table(tables)
  tag = "SIMULATED mouse: " if result.get("simulated") else ""
  with _io.atomic_path(out, is_dir=True) as tmp:
    for key, rows in tables.items():
      pd.DataFrame(rows).to_csv(tmp / f"{key}.csv", index=False)
    if len(ceilings):
      ceilings.to_csv(tmp / "ceilings.csv", index=False)
    for measure in ("rsa", "cka"):
      _plot_similarity(plt, pd.DataFrame(tables[measure]), measure, tmp / f"{measure}.png",
                       tag=tag)
    _plot_rmse(plt, pd.DataFrame(tables["rmse"]), tmp / "rmse.png", tag=tag)
    _plot_rmse_layers(plt, pd.DataFrame(tables["rmse"]), tmp / "rmse_layers.png", tag=tag)
    _plot_embedding(plt, result, tmp / "embedding.png", seed=config.seed,
                    n_clusters=config.n_clusters, tag=tag)
    _plot_representations(plt, result, tmp / "representations.png", seed=config.seed,
                          n_clusters=config.n_clusters, tag=tag)
    md = summary_markdown(config, result, best, effect, ceilings)
    (tmp / "summary.md").write_text(md)
    (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
  return md


CEILING_NOTE = (
    "Ceilings and intervals: each group's noise ceiling is the RSA (CKA) between the "
    "representations of two random halves of each image's trials, averaged over {splits} "
    "splits and Spearman-Brown corrected (the agreement expected with an independent "
    "replicate of the data); `of ceiling` = value / ceiling. Intervals: {ci:.0%} percentile "
    "intervals over {n_boot} resamples of the evaluate images (the ceiling recomputed in each "
    "for the fraction). All on the evaluate images. A model equal to the noise-free neural "
    "representation is expected near sqrt(ceiling) for RSA, so fractions above 1 mean noisy "
    "data, not a model better than the data; CKA of noisy data is biased upward and its "
    "ceiling is optimistic at low reliability.")


def summary_markdown(config: MiceConfig, result: dict, best, effect, ceilings=None) -> str:
  simulated = result.get("simulated")
  title = f"# Mice to machines: {config.name}" + (" (SIMULATED data)" if simulated else "")
  k = "none" if config.neurn_k is None else f"k={config.neurn_k}"
  lines = [title, ""]
  if simulated:
    lines += [f"**Simulated data.** {simulated} Column `planted`: each area's planted layer.", ""]
  lines += [f"Data: {result['dataset']}", "",
            f"Layers: {', '.join(config.layers)}; NeuRN arm: {k}; time {result['seconds']:.0f} s.",
            "", SELECTION_NOTE.format(k=k, **{s: f"{n} images" for s, n in
                                             result["images"].items()}), ""]
  lines += ["## Most similar layer per group (chosen on select images; value on evaluate images)",
            "", "`rsa_matched` / `cka_matched`: the group against its matched single units; "
            "`rsa_layer` / `cka_layer`: against the whole layer; `rmse_*`: the layer with the "
            "lowest RMSE between normalised representations.", "",
            _markdown(best), "",
            "## NeuRN and RMSE (each arm at its layer chosen on select images; RMSE on evaluate "
            "images; negative change = NeuRN lowers the RMSE)", "",
            _markdown(effect), ""]
  eff = effect[effect.kind == "area"] if "change" in effect else None
  if eff is not None and len(eff):
    lowered = int((eff["change"] < 0).sum())
    lines += [f"NeuRN lowers the RMSE in {lowered} of {len(eff)} area x level cells.", ""]
  if ceilings is not None and len(ceilings):
    lines += ["## RSA and CKA against their noise ceilings (each group at its layer chosen on "
              "select images; evaluate images)", "",
              CEILING_NOTE.format(splits=config.ceiling_splits, ci=0.95, n_boot=config.n_boot),
              ""]
    n_eval = result["images"].get("evaluate")
    few = ceilings[ceilings["ceiling_images"] < (n_eval or 0)]
    if len(few):
      lines += [f"The ceilings rest on the {int(few['ceiling_images'].min())} evaluate images "
                f"shown at least twice (of {n_eval}); the values use all {n_eval}.", ""]
    fmt = lambda v, lo, hi: f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
    show = ceilings[ceilings["kind"] == "area"].copy()
    table = show[["measure", "method", "neurn", "group", "layer"]].copy()
    table["value [CI]"] = [fmt(*r) for r in show[["value", "ci_low", "ci_high"]].to_numpy()]
    table["ceiling"] = show["ceiling"].to_numpy()
    table["of ceiling [CI]"] = [fmt(*r) for r in show[["normalized", "normalized_ci_low",
                                                       "normalized_ci_high"]].to_numpy()]
    lines += [_markdown(table, floatfmt="{:.2f}"), "",
              "Cre lines and cell classes: `ceilings.csv`.", ""]
  return "\n".join(lines)


def _plot_similarity(plt, df, measure: str, path: Path, *, tag: str = "") -> None:
  """Areas x layers heatmaps per form and arm: the value, and (when the rows carry ceilings)
  the value as a fraction of the area's noise ceiling."""
  df = df[df.kind == "area"]
  arms = list(dict.fromkeys(df.neurn))
  values = ["value"] + (["normalized"] if "normalized" in df else [])
  panels = [(m, v) for v in values for m in ("matched", "layer")]
  fig, axes = plt.subplots(len(panels), len(arms), figsize=(4.2 * len(arms), 2.8 * len(panels)),
                           squeeze=False)
  for i, (method, value) in enumerate(panels):
    for j, arm in enumerate(arms):
      sel = df[(df.neurn == arm) & (df.method == method)]
      rows, cols = list(dict.fromkeys(sel.group)), list(dict.fromkeys(sel.layer))
      table = sel.pivot(index="group", columns="layer", values=value).loc[rows, cols]
      choice = sel.pivot(index="group", columns="layer", values="value_select").loc[rows, cols]
      ax = axes[i, j]
      im = ax.imshow(table.values.astype(float), aspect="auto", cmap="viridis")
      ax.set_xticks(range(table.shape[1]), table.columns, rotation=60, fontsize=7)
      ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
      ax.plot(choice.values.argmax(1), range(table.shape[0]), "w*", ms=7)
      what = "" if value == "value" else " / ceiling"
      ax.set_title(f"{measure.upper()}{what} {method}, NeuRN {arm}", fontsize=9)
      fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(f"{tag}{measure.upper()} on evaluate images (areas x layers); * = layer chosen on "
               "select images", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_rmse(plt, df, path: Path, *, tag: str = "") -> None:
  kinds = list(dict.fromkeys(df.kind))
  df = df[df.layer != "kernels"]
  fig, axes = plt.subplots(2, len(kinds), figsize=(4.5 * len(kinds), 6.4), squeeze=False)
  for j, kind in enumerate(kinds):
    for i, level in enumerate(("top_down", "bottom_up")):
      ax = axes[i, j]
      sel = df[(df.kind == kind) & (df.level == level)]
      at = sel.loc[sel.groupby(["group", "neurn"], sort=False)["rmse_select"].idxmin()]
      low = at.pivot(index="group", columns="neurn", values="rmse")
      low = low.loc[list(dict.fromkeys(at.group)), list(dict.fromkeys(at.neurn))]
      arms = list(low.columns)
      width = 0.8 / len(arms)
      for a, arm in enumerate(arms):
        ax.bar(np.arange(len(low)) + (a - (len(arms) - 1) / 2) * width, low[arm], width,
               label=f"NeuRN {arm}")
      ax.set_xticks(range(len(low)), low.index, rotation=30, fontsize=8)
      lo = float(np.nanmin(low.values))
      ax.set_ylim(max(0.0, lo - 0.1), float(np.nanmax(low.values)) + 0.05)
      ax.set_title(f"{level} ({kind})", fontsize=9)
      ax.legend(fontsize=7)
  fig.suptitle(f"{tag}RMSE on evaluate images, at the layer chosen on select images", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_rmse_layers(plt, df, path: Path, *, tag: str = "") -> None:
  """Areas x layers heatmaps of the RMSE (evaluate images) per level and arm; * marks the layer
  chosen on the select images (lowest ``rmse_select``)."""
  df = df[(df.kind == "area") & (df.layer != "kernels")]
  arms = list(dict.fromkeys(df.neurn))
  levels = ("top_down", "bottom_up")
  fig, axes = plt.subplots(len(levels), len(arms), figsize=(4.2 * len(arms), 5.6), squeeze=False)
  for i, level in enumerate(levels):
    for j, arm in enumerate(arms):
      sel = df[(df.neurn == arm) & (df.level == level)]
      rows, cols = list(dict.fromkeys(sel.group)), list(dict.fromkeys(sel.layer))
      table = sel.pivot(index="group", columns="layer", values="rmse").loc[rows, cols]
      choice = sel.pivot(index="group", columns="layer", values="rmse_select").loc[rows, cols]
      ax = axes[i, j]
      im = ax.imshow(table.values.astype(float), aspect="auto", cmap="viridis_r")
      ax.set_xticks(range(table.shape[1]), table.columns, rotation=60, fontsize=7)
      ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
      ax.plot(np.nanargmin(choice.values.astype(float), 1), range(table.shape[0]), "w*", ms=7)
      ax.set_title(f"RMSE {level}, NeuRN {arm}", fontsize=9)
      fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(f"{tag}RMSE on evaluate images (areas x layers; lower = more similar); * = layer "
               "chosen on select images", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_embedding(plt, result: dict, path: Path, *, seed: int, n_clusters: int,
                    tag: str = "") -> None:
  """Every neuron's representation (select images) embedded together (UMAP when installed,
  else PCA) and clustered by k-means, coloured by cluster, by area and by Cre line (or cell
  class), as the study shows them."""
  maps, groups = result["maps_select"], result["groups"]
  emb, method = compare.embed(maps, seed=seed)
  clusters = compare.cluster(emb, n_clusters=n_clusters, seed=seed)
  colourings = [("k-means cluster", {f"cluster {c}": np.flatnonzero(clusters.labels == c)
                                     for c in np.unique(clusters.labels)})]
  colourings += [(kind.replace("_", " "), groups[kind]) for kind in ("area", "cre_line",
                                                                     "cell_class")
                 if kind in groups]
  fig, axes = plt.subplots(1, len(colourings), figsize=(4.0 * len(colourings), 3.8),
                           squeeze=False)
  for ax, (title, members) in zip(axes[0], colourings):
    for i, (name, idx) in enumerate(members.items()):
      ax.scatter(emb[idx, 0], emb[idx, 1], s=7, color=f"C{i % 10}", label=f"{name} ({idx.size})")
    ax.scatter(clusters.centers[:, 0], clusters.centers[:, 1], marker="x", color="k", s=30)
    ax.set_title(f"by {title}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=1.5, loc="best")
  fig.suptitle(f"{tag}{maps.shape[0]} neural representations (select images), {method.upper()} "
               f"embedding, k-means with {n_clusters} clusters (x: centroids)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_representations(plt, result: dict, path: Path, *, seed: int, n_clusters: int,
                          tag: str = "") -> None:
  """Per area: neurons embedded (UMAP or PCA) coloured by k-means cluster; central maps below.

  The select images' maps, from which the clusters and central members were chosen.
  """
  maps, groups = result["maps_select"], result["groups"]["area"]
  central = result["central"]["area"]
  areas = list(groups)
  n_show = max(len(central[a]) for a in areas) if areas else 1
  n_show = min(n_show, 6)
  fig, axes = plt.subplots(1 + n_show, len(areas), figsize=(2.6 * len(areas), 2.2 * (1 + n_show)),
                           squeeze=False)
  for j, area in enumerate(areas):
    idx = groups[area]
    ax = axes[0, j]
    if idx.size > 2:
      emb, method = compare.embed(maps[idx], seed=seed)
      labels = compare.cluster(emb, n_clusters=n_clusters, seed=seed).labels
      ax.scatter(emb[:, 0], emb[:, 1], c=labels, s=8, cmap="tab10")
      pos = np.searchsorted(idx, central[area])
      ax.scatter(emb[pos, 0], emb[pos, 1], facecolors="none", edgecolors="k", s=30)
      ax.set_title(f"{area} ({idx.size}, {method})", fontsize=8)
    else:
      ax.set_title(f"{area} ({idx.size})", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    for i in range(n_show):
      ax = axes[1 + i, j]
      ax.axis("off")
      if i < len(central[area]):
        m = maps[central[area][i]]
        v = np.abs(m).max() or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
  fig.suptitle(f"{tag}neural representations (select images): embedding + k-means (top), "
               f"central members (below)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
