"""Mice to Machines (Qazi, Jalil & Iqbal, arXiv 2505.06886): which layers of VGG16 (or of any
network of ``jaxmouse.models.zoo``) resemble which mouse visual areas and Cre lines, with and
without NeuRN in front of the network.

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
with it). Weights: random VGG16 (seed 0) by default, or converted checkpoint folders of any
networks: the comparison across networks (``networks.csv``, ``networks.png``) gives per area and
Cre line each network's most similar layer under every measure, with its relative depth. The
simulated mouse's neurons read the first VGG16 among the weights (or the random VGG16).

Input size per network: images are resized to ``image_shape`` (36x64), and a network whose
layers need more is fed them upsampled to ``network_input[arch]``: AlexNet's pool5 needs 63x63
and ViT-B/16's 16-pixel patches give only a 2x4 token grid at 36x64, so both see 72x128; VGG,
ResNet (layer4 2x2 at 36x64) and MobileNetV2 see 36x64. Neural maps always use ``map_shape``.

Run::

  jaxmouse compare mice --config quick --out runs/mice            # simulated mouse, ~1-2 min
  jaxmouse compare --data allen_nwb/ --weights weights/vgg16 --config full --out runs/allen
  jaxmouse compare mice --weights weights/hed,weights/resnet18,weights/resnet18_random0 \\
      --out runs/networks

Writes ``rsa.csv``, ``cka.csv``, ``rmse.csv``, ``neurons.csv`` (with a ``network`` column),
``ceilings.csv``, ``networks.csv``, ``networks.png``, ``rsa.png``, ``cka.png`` (areas x layers
heatmaps, raw and as a fraction of the noise ceiling), ``rmse_layers.png`` (areas x layers),
``rmse.png`` (one set per network, ``rsa_<network>.png`` ..., when there are several),
``embedding.png`` (every neuron's representation embedded, k-means clusters, coloured by cluster,
area and Cre line), ``representations.png``, ``summary.md`` and ``config.json``.

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
from typing import Callable, Mapping, Sequence

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
# Networks whose layers need larger images than the study's 36x64 (see the module docstring).
NETWORK_INPUT = {"alexnet": (72, 128), "vit_b_16": (72, 128)}
MEASURES = ("rsa_matched", "rsa_layer", "cka_matched", "cka_layer", "rmse_bottom_up",
            "rmse_top_down")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MiceConfig:
  """One comparison run.

  name: config name. layers: VGG16 layers compared (other networks: every layer, or those named
  in ``run(..., layers=)``). network_input: images fed to these architectures are resized to
  this ``(H, W)``. neurn_k: NeuRN's k for the "with NeuRN" arm
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
  network_input: Mapping[str, tuple[int, int]] = dataclasses.field(
      default_factory=lambda: dict(NETWORK_INPUT))

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


def simulation_note(config: MiceConfig, planted_on: str | None = None) -> str:
  """What the simulated mouse is and what was planted in it, in one paragraph; ``planted_on``
  names the VGG16 checkpoint its cells read (None: the random VGG16 of ``weights_seed``)."""
  sim = config.simulation()
  net = (f"VGG16 weights {planted_on}" if planted_on is not None
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


def open_networks(config: MiceConfig, weights=None) -> dict:
  """``{label: Weights}``: the checkpoint folders ``weights`` (a path, a comma-separated string
  or a sequence; labelled by folder name), or a random VGG16 (``weights_seed``) when None."""
  from jaxmouse import weights as wlib
  from jaxmouse.feature_spaces import labels

  if weights is None:
    return {f"vgg16_random{config.weights_seed}": wlib.random_init("vgg16", config.weights_seed)}
  paths = [w for w in (weights.split(",") if isinstance(weights, str) else weights) if str(w)]
  if not paths:
    raise ValueError("no weights given; pass checkpoint folders (jaxmouse weights ...)")
  return {label: wlib.load(path) for label, path in labels([str(p) for p in paths]).items()}


def network_layers(config: MiceConfig, networks: Mapping, layers: Sequence[str] | None = None
                   ) -> dict[str, tuple[str, ...]]:
  """The layers compared per network: the names of ``layers`` each has (each name must belong
  to some network, each network must get one); without ``layers``, a VGG16's are
  ``config.layers`` and any other network's are all its layers that its input size reaches."""
  from jaxmouse.models import zoo

  out = {}
  if layers:
    known = set().union(*(zoo.layers(w.arch) for w in networks.values()))
    unknown = [l for l in layers if l not in known]
    if unknown:
      valid = "; ".join(f"{n} ({w.arch}): {', '.join(zoo.layers(w.arch))}"
                        for n, w in networks.items())
      raise ValueError(f"unknown layer(s) {unknown}: no network has them. Valid layers: {valid}")
  for name, w in networks.items():
    if layers:
      mine = tuple(l for l in zoo.layers(w.arch) if l in set(layers))
      if not mine:
        raise ValueError(f"{name} ({w.arch}) has none of the layers {list(layers)}; its layers: "
                         f"{', '.join(zoo.layers(w.arch))}")
    elif w.arch == "vgg16":
      mine = config.layers
    else:
      h, w_ = input_shape(config, w.arch)
      mine = tuple(l for l in zoo.layers(w.arch) if l in zoo.output_shapes(w.arch, h, w_))
    h, w_ = input_shape(config, w.arch)
    zoo.check_sizes(w.arch, mine, h, w_)
    out[name] = mine
  return out


def input_shape(config: MiceConfig, arch: str) -> tuple[int, int]:
  """The ``(H, W)`` images are fed to ``arch`` at."""
  return tuple(config.network_input.get(arch, config.image_shape))


def prepare(config: MiceConfig, *, data=None, weights=None, planted_label: str | None = None,
            log: Callable = print):
  """``(dataset, weights, planted)``: loaded or simulated data resized to ``image_shape``, weights
  loaded or drawn, and ``{area: planted layer}`` for the simulated mouse (else ``{}``).

  ``weights``: a ``Weights`` (or checkpoint folder) the simulated neurons read; a random VGG16
  (``weights_seed``) when None."""
  from jaxmouse import weights as wlib

  if weights is None:
    w = wlib.random_init("vgg16", config.weights_seed)
  else:
    w = weights if isinstance(weights, wlib.Weights) else wlib.load(weights)
  if data is None and w.arch != "vgg16":
    raise ValueError(f"the simulated mouse is planted on VGG16 layers; weights {weights} are "
                     f"{w.arch}")
  if data is None:
    from jaxmouse.data import simulate

    sim = config.simulation()
    log(f"simulating {sim.n_neurons} neurons in {len(sim.areas)} areas, {sim.n_images} images "
        f"{sim.image_shape[0]}x{sim.image_shape[1]}")
    ds, _ = simulate(sim, weights=w)
    ds = with_random_cre_lines(ds, seed=config.seed)
    planted = {a: l[0] for a, l in zip(sim.areas, sim.layers)}
    log(f"SIMULATED data: {simulation_note(config, planted_label)}")
  else:
    from jaxmouse.data import load

    ds = load(data)
    log(f"loaded {ds!r}")
    planted = {}
  return ds.resize(config.image_shape), w, planted


def compare_arms(ds, features_fn: Callable, base: compare.CompareConfig, *,
                 neurn_k: int | None, kernel=None, progress: Callable | None = None,
                 log: Callable = print, central=None) -> tuple[dict, dict]:
  """``compare.compare_dataset`` with raw images and, if ``neurn_k``, with ``NeuRN_k`` images.

  Both arms share the image split, the groups and the central representations (none of them
  depends on the network). Returns ``(tables, first)``: ``tables`` maps ``rsa``, ``cka``,
  ``rmse``, ``neurons`` to rows with an added ``neurn`` column (``none`` or ``k=<k>``); ``first``
  is the raw arm's full output (maps, groups, central members, image sets). ``central``: the
  central members of an earlier network's comparison, reused (they depend on the data only).
  """
  arms = [None] + ([neurn_k] if neurn_k is not None else [])
  tables = {"rsa": [], "cka": [], "rmse": [], "neurons": []}
  first = None
  for k in arms:
    label = "none" if k is None else f"k={k}"
    log(f"comparing {len(base.layers)} layers, NeuRN {label}")
    out = compare.compare_dataset(ds, features_fn, dataclasses.replace(base, neurn_k=k),
                                  kernel=kernel, progress=progress,
                                  central=first["central"] if first else central)
    for key in tables:
      tables[key].extend({"neurn": label, **row} for row in out[key])
    first = first or out
  return tables, first


def run(config: MiceConfig, *, data=None, weights=None, layers: Sequence[str] | None = None,
        progress: Callable | None = None, log: Callable = print) -> dict:
  """Both arms (raw, NeuRN) of the comparison for every network; returns tables (lists of rows,
  each with its ``network``) and arrays.

  weights: None (a random VGG16), a checkpoint folder, or several (a sequence or a
  comma-separated string). layers: the layers compared, each network taking those it has
  (default: see ``network_layers``).
  """
  from jaxmouse.features import extract
  from jaxmouse.models import zoo

  t0 = time.perf_counter()
  networks = open_networks(config, weights)
  per_network = network_layers(config, networks, layers)
  # The simulated mouse reads the first VGG16 compared, or the random VGG16.
  planted_label = (None if weights is None else
                   next((n for n, w in networks.items() if w.arch == "vgg16"), None))
  planted_on = networks[planted_label] if planted_label else None
  ds, _, planted = prepare(config, data=data, weights=planted_on, planted_label=planted_label,
                           log=log)
  tables = {"rsa": [], "cka": [], "rmse": [], "neurons": []}
  depths = {}
  last = None
  for name, w in networks.items():
    shape = input_shape(config, w.arch)
    depths[name] = {l: zoo.relative_depth(w.arch, l) for l in per_network[name]}

    def features(images, names, w=w, shape=shape):
      if images.shape[1:3] != shape:
        images = compare.resize_images(images, shape)
      return extract(w, images, layers=names, batch_size=64)

    kernel = w.params[zoo.FIRST_CONV[w.arch]]["kernel"]
    base = compare.CompareConfig(layers=per_network[name], map_shape=config.map_shape,
                                 n_clusters=config.n_clusters, n_central=config.n_central,
                                 ceiling_splits=config.ceiling_splits, n_boot=config.n_boot,
                                 seed=config.seed)
    prefix = f"{name} ({w.arch}, input {shape[0]}x{shape[1]}): "
    mine, out = compare_arms(ds, features, base, neurn_k=config.neurn_k, kernel=kernel,
                             progress=progress, log=lambda s, p=prefix: log(p + s),
                             central=last["central"] if last else None)
    for key in tables:
      tables[key].extend({"network": name, **row} for row in mine[key])
    last = last or out  # neural maps, groups and clusters depend on neither arm nor network
  return {"tables": tables, "maps": last["maps"], "maps_select": last["maps_select"],
          "groups": last["groups"], "central": last["central"], "planted": planted,
          "simulated": simulation_note(config, planted_label) if data is None else None,
          "images": {k: v.size for k, v in last["images"].items()}, "dataset": repr(ds),
          "n_neurons": ds.n_neurons, "seconds": time.perf_counter() - t0,
          "networks": {n: {"arch": w.arch, "kind": w.kind, "layers": list(per_network[n]),
                           "input": list(input_shape(config, w.arch))}
                       for n, w in networks.items()},
          "depths": depths}


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


def network_comparison(tables: dict, depths: Mapping[str, Mapping[str, float]] | None = None
                       ) -> "pd.DataFrame":
  """Per arm x kind x group x network and measure (``MEASURES``): the network's most similar
  layer (highest RSA / CKA, lowest RMSE; first-layer kernels are not a layer) chosen on the
  select images, its value on the evaluate images and its relative depth in the network (0
  first layer, 1 last).

  Columns: ``neurn, kind, group, network, measure, layer, value, depth``.
  """
  import pandas as pd

  depths = depths or {}
  rows = []
  sims = {m: pd.DataFrame(tables[m]) for m in ("rsa", "cka")}
  rmse = pd.DataFrame(tables["rmse"])
  rmse = rmse[rmse.layer != "kernels"]
  if "network" not in rmse:
    for t in (rmse, *sims.values()):
      t["network"] = ""
  for (arm, kind, group, net), g in rmse.groupby(["neurn", "kind", "group", "network"],
                                                  sort=False):
    picks = []
    for measure, df in sims.items():
      for method in ("matched", "layer"):
        sel = df[(df.neurn == arm) & (df.kind == kind) & (df.group == group)
                 & (df.network == net) & (df.method == method)]
        top = _chosen(sel, "value_select", lowest=False)
        picks.append((f"{measure}_{method}", top.layer, float(top.value),
                      float(top.get("normalized", np.nan))))
    for level in ("bottom_up", "top_down"):
      sel = g[g.level == level]
      top = _chosen(sel, "rmse_select", lowest=True)
      picks.append((f"rmse_{level}", top.layer, float(top.rmse), np.nan))
    for measure, layer, value, of_ceiling in picks:
      rows.append({"neurn": arm, "kind": kind, "group": group, "network": net,
                   "measure": measure, "layer": layer, "value": value,
                   "of_ceiling": of_ceiling, "depth": depths.get(net, {}).get(layer, np.nan)})
  return pd.DataFrame(rows, columns=["neurn", "kind", "group", "network", "measure", "layer",
                                     "value", "of_ceiling", "depth"])


def best_layers(tables: dict, planted: dict) -> "pd.DataFrame":
  """Per arm x kind x group (x network): the most similar layer under each RSA/CKA form, the
  lowest-RMSE layer."""
  import pandas as pd

  comp = network_comparison(tables)
  several = comp["network"].nunique() > 1
  rows = []
  for (arm, kind, group, net), g in comp.groupby(["neurn", "kind", "group", "network"],
                                                 sort=False):
    row = {"neurn": arm, "kind": kind, "group": group, **({"network": net} if several else {})}
    if planted:
      row["planted"] = planted.get(group, "") if kind == "area" else ""
    for r in g.itertuples():
      fmt = ".3f" if r.measure.startswith("rmse") else ".2f"
      frac = f"; {r.of_ceiling:.2f} of ceiling" if np.isfinite(r.of_ceiling) else ""
      row[r.measure] = f"{r.layer} ({r.value:{fmt}}{frac})"
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
    if "network" not in df:
      df["network"] = ""
    for (net, method, arm, kind, group), sel in df.groupby(
        ["network", "method", "neurn", "kind", "group"], sort=False):
      top = _chosen(sel, "value_select", lowest=False)
      rows.append({"network": net, "measure": measure, "method": method, "neurn": arm,
                   "kind": kind, "group": group, "layer": top.layer,
                   **{c: top[c] for c in CEILING_COLUMNS}})
  return pd.DataFrame(rows)


def neurn_effect(tables: dict) -> "pd.DataFrame":
  """Per kind x group x level: RMSE without and with NeuRN, each arm at its own layer chosen on
  the select images (columns ``layer_<arm>``), RMSE on the evaluate images, and the change."""
  import pandas as pd

  rmse = pd.DataFrame(tables["rmse"])
  rmse = rmse[rmse.layer != "kernels"]
  keys = (["network"] if "network" in rmse and rmse["network"].nunique() > 1 else []) + [
      "kind", "group", "level"]
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
  comparison = network_comparison(tables, result.get("depths"))
  ceilings = ceiling_table(tables)
  tag = "SIMULATED mouse: " if result.get("simulated") else ""
  with _io.atomic_path(out, is_dir=True) as tmp:
    for key, rows in tables.items():
      pd.DataFrame(rows).to_csv(tmp / f"{key}.csv", index=False)
    if len(ceilings):
      ceilings.to_csv(tmp / "ceilings.csv", index=False)
    comparison.to_csv(tmp / "networks.csv", index=False)
    _plot_networks(plt, comparison, tmp / "networks.png", tag=tag)
    nets = list(dict.fromkeys(pd.DataFrame(tables["rmse"]).get("network", pd.Series([""]))))
    for net in nets:
      suffix = f"_{net}" if len(nets) > 1 else ""
      pick = lambda rows: (pd.DataFrame(rows)[pd.DataFrame(rows)["network"] == net]
                           if len(nets) > 1 else pd.DataFrame(rows))
      label = tag + (f"{net}: " if suffix else "")
      for measure in ("rsa", "cka"):
        _plot_similarity(plt, pick(tables[measure]), measure, tmp / f"{measure}{suffix}.png",
                         tag=label)
      _plot_rmse(plt, pick(tables["rmse"]), tmp / f"rmse{suffix}.png", tag=label)
      _plot_rmse_layers(plt, pick(tables["rmse"]), tmp / f"rmse_layers{suffix}.png", tag=label)
    _plot_embedding(plt, result, tmp / "embedding.png", seed=config.seed,
                    n_clusters=config.n_clusters, tag=tag)
    _plot_representations(plt, result, tmp / "representations.png", seed=config.seed,
                          n_clusters=config.n_clusters, tag=tag)
    md = summary_markdown(config, result, best, effect, comparison, ceilings)
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


def summary_markdown(config: MiceConfig, result: dict, best, effect, comparison=None,
                     ceilings=None) -> str:
  simulated = result.get("simulated")
  title = f"# Mice to machines: {config.name}" + (" (SIMULATED data)" if simulated else "")
  k = "none" if config.neurn_k is None else f"k={config.neurn_k}"
  networks = result.get("networks") or {"": {"layers": list(config.layers)}}
  lines = [title, ""]
  if simulated:
    lines += [f"**Simulated data.** {simulated} Column `planted`: each area's planted layer.", ""]
  lines += [f"Data: {result['dataset']}", ""]
  for net, info in networks.items():
    head = (f"{net} ({info['arch']}, {info['kind']}, input {info['input'][0]}x{info['input'][1]}) "
            "layers" if net else "Layers")
    lines.append(f"{head}: {', '.join(info['layers'])}")
  lines += ["", f"NeuRN arm: {k}; time {result['seconds']:.0f} s.", "",
            SELECTION_NOTE.format(k=k, **{s: f"{n} images" for s, n in
                                         result["images"].items()}), ""]
  lines += ["## Most similar layer per group (chosen on select images; value on evaluate images)",
            "", "`rsa_matched` / `cka_matched`: the group against its matched single units; "
            "`rsa_layer` / `cka_layer`: against the whole layer; `rmse_*`: the layer with the "
            "lowest RMSE between normalised representations.", "",
            _markdown(best), "",
            "## NeuRN and RMSE (each arm at its layer chosen on select images; RMSE on evaluate "
            "images; negative change = NeuRN lowers the RMSE)", "",
            _markdown(effect), ""]
  if comparison is not None and comparison["network"].nunique() > 1:
    lines += ["## Networks compared (raw images)", "",
              "Per area and Cre line, each network's most similar layer under each measure "
              "(chosen on select images, value on evaluate images), with its relative depth in "
              "the network (0 first layer, 1 last); `networks.csv` has every arm and group, "
              "`networks.png` the heatmaps.", "",
              _markdown(_network_summary(comparison)), ""]
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
    cols = (["network"] if show["network"].nunique() > 1 else []) + ["measure", "method", "neurn",
                                                                       "group", "layer"]
    table = show[cols].copy()
    table["value [CI]"] = [fmt(*r) for r in show[["value", "ci_low", "ci_high"]].to_numpy()]
    table["ceiling"] = show["ceiling"].to_numpy()
    table["of ceiling [CI]"] = [fmt(*r) for r in show[["normalized", "normalized_ci_low",
                                                       "normalized_ci_high"]].to_numpy()]
    lines += [_markdown(table, floatfmt="{:.2f}"), "",
              "Cre lines and cell classes: `ceilings.csv`.", ""]
  return "\n".join(lines)


def _network_summary(comparison) -> "pd.DataFrame":
  """Areas and Cre lines x measures, each cell "network: layer (value, depth d)" per network."""
  import pandas as pd

  raw = comparison[(comparison.neurn == "none") & comparison.kind.isin(["area", "cre_line"])]
  rows = []
  for (kind, group, net), g in raw.groupby(["kind", "group", "network"], sort=False):
    row = {"kind": kind, "group": group, "network": net}
    for r in g.itertuples():
      fmt = ".3f" if r.measure.startswith("rmse") else ".2f"
      row[r.measure] = f"{r.layer} ({r.value:{fmt}}, d {r.depth:.2f})"
    rows.append(row)
  return pd.DataFrame(rows)


def _plot_networks(plt, comparison, path: Path, *, tag: str = "") -> None:
  """Heatmaps, areas (top) and Cre lines (bottom) x networks, one column per measure: each
  network's value (evaluate images) at its layer chosen on the select images, annotated with the
  layer and its relative depth."""
  raw = comparison[comparison.neurn == "none"]
  kinds = [k for k in ("area", "cre_line") if k in set(raw.kind)]
  nets = list(dict.fromkeys(raw.network))
  fig, axes = plt.subplots(len(kinds), len(MEASURES), squeeze=False,
                           figsize=(len(MEASURES) * (1.8 + 0.95 * len(nets)),
                                    1.2 + 3.2 * len(kinds)))
  for i, kind in enumerate(kinds):
    for j, measure in enumerate(MEASURES):
      ax = axes[i, j]
      sel = raw[(raw.kind == kind) & (raw.measure == measure)]
      groups = list(dict.fromkeys(sel.group))
      val = sel.pivot(index="group", columns="network", values="value").loc[groups, nets]
      layer = sel.pivot(index="group", columns="network", values="layer").loc[groups, nets]
      depth = sel.pivot(index="group", columns="network", values="depth").loc[groups, nets]
      cmap = "viridis_r" if measure.startswith("rmse") else "viridis"
      im = ax.imshow(val.values.astype(float), aspect="auto", cmap=cmap)
      for (a, b), v in np.ndenumerate(val.values):
        d = depth.values[a, b]
        ax.text(b, a, f"{layer.values[a, b]}\n{v:.2f}" + (f" d{d:.2f}" if np.isfinite(d) else ""),
                ha="center", va="center", fontsize=5, color="w")
      ax.set_xticks(range(len(nets)), nets, rotation=45, ha="right", fontsize=6)
      ax.set_yticks(range(len(groups)), groups, fontsize=6)
      ax.set_title(f"{measure} ({kind})", fontsize=7)
      fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(f"{tag}layer per network chosen on select images (value on evaluate images, "
               "relative depth d), raw images", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
