"""The mice-to-machines study: configs, NeuRN on a planted local-contrast neuron, choices made on
select images, outputs that say when the data are simulated, and a smoke run through the CLI."""

import numpy as np
import pandas as pd
import pytest

from jaxmouse import compare
from jaxmouse.cli import main
from jaxmouse.models.neurn import DEFAULT_K
from jaxmouse.studies import mice_to_machines as mm


def test_configs_validate_and_simulate_the_paper_proportions():
  for name in mm.CONFIGS:
    config = mm.get_config(name)
    sim = config.simulation()
    assert sim.areas == mm.ALLEN_AREAS
    assert [l[0] for l in sim.layers] == list(mm.PLANTED)
  full = mm.get_config("full").simulation()
  assert full.neurons_per_area == mm.PAPER_COUNTS and full.n_neurons == 1000
  assert mm.get_config("full").layers == mm.ALL_CONV
  with pytest.raises(ValueError, match="unknown layer"):
    mm.get_config("quick", layers=("conv9_9",))
  with pytest.raises(ValueError, match="neurn_k"):
    mm.get_config("quick", neurn_k=2)


def test_random_cre_lines_are_a_balanced_null_control():
  from jaxmouse.data import NeuralDataset

  n = 400
  ds = NeuralDataset(images=np.zeros((3, 4, 4)), responses=np.zeros((3, n)),
                     trial_image=np.arange(3), tiers=["train"] * 3, unit_ids=np.arange(n),
                     areas=["VISp"] * n)
  out = mm.with_random_cre_lines(ds, seed=0)
  assert set(out.neuron_meta["cre_line"]) == set(mm.CRE_LINES)
  frac = np.mean(out.neuron_meta["cell_class"] == "excitatory")
  assert 0.4 < frac < 0.6


def _contrast_neurons(seed=0, n=400, side=12, k=5):
  """Sparse bright dots on black; each neuron's drive is the local standard deviation of the k x k
  patch at its own pixel (computed with SciPy, independently of jaxmouse's NeuRN), plus noise."""
  from scipy import ndimage

  from jaxmouse.data import NeuralDataset

  rng = np.random.default_rng(seed)
  images = np.zeros((n, side, side), np.float32)
  for i in range(n):
    for _ in range(3):
      images[i, rng.integers(side), rng.integers(side)] = rng.uniform(100, 255)
  def local_std(x):
    mean = ndimage.uniform_filter(x, k, mode="reflect")
    return np.sqrt(np.maximum(ndimage.uniform_filter(x * x, k, mode="reflect") - mean ** 2, 0))
  sigma = np.stack([local_std(im.astype(np.float64)) for im in images])
  pixels = [(3, 4), (6, 6), (8, 2), (9, 9)]
  drive = np.stack([sigma[:, y, x] for y, x in pixels], 1)
  responses = drive / drive.std(0) + 0.3 * rng.normal(size=drive.shape)
  ds = NeuralDataset(images=images, responses=responses.astype(np.float32),
                     trial_image=np.arange(n), tiers=np.full(n, "train"), unit_ids=np.arange(4),
                     areas=np.array(["A"] * 4))
  return ds, [y * side + x for y, x in pixels]


def test_neurn_lowers_the_rmse_of_neurons_that_read_local_contrast():
  """The network is the identity (every pixel of its input is a unit). Raw images offer only
  pixels, whose maps cannot be a neuron's local-contrast map; NeuRN_k images offer exactly each
  neuron's drive at its own pixel, so with NeuRN the matched unit is that pixel and the RMSE
  falls. With the arms swapped, NeuRN off, or k ignored, this fails."""
  ds, planted_units = _contrast_neurons()
  base = compare.CompareConfig(layers=("pixels",), map_shape=(12, 12), unit_grid=12,
                               n_clusters=1, n_central=2)
  identity = lambda images, layers: {layers[0]: np.asarray(images)[..., None]}
  tables, _ = mm.compare_arms(ds, identity, base, neurn_k=5, log=lambda s: None)
  neurons = pd.DataFrame(tables["neurons"])
  with_neurn = neurons[neurons.neurn == "k=5"]
  assert list(with_neurn.best_unit) == planted_units
  assert with_neurn.best_rmse.max() < 0.5
  assert neurons[neurons.neurn == "none"].best_rmse.min() > 1.0
  effect = mm.neurn_effect(tables).set_index("level")
  assert (effect["change"] < -0.5).all() and set(effect.index) == {"top_down", "bottom_up"}


def test_best_layer_and_neurn_effect_follow_the_select_images():
  """Select images favour conv1 and evaluate images conv2: the reports follow select and quote
  the evaluate value at the chosen layer."""
  rows = lambda measure: [
      {"neurn": arm, "kind": "area", "group": "V1", "layer": layer, "method": method,
       **({"value": ev, "value_select": sel} if measure != "rmse" else {})}
      for arm in ("none", "k=3") for method in ("matched", "layer")
      for layer, sel, ev in (("conv1", 0.6, 0.2), ("conv2", 0.3, 0.9))]
  rmse = [{"neurn": arm, "kind": "area", "group": "V1", "layer": layer, "level": level,
           "rmse": ev, "rmse_select": sel, "n_neurons": 5}
          for arm, shift in (("none", 0.0), ("k=3", 0.1)) for level in ("top_down", "bottom_up")
          for layer, sel, ev in (("conv1", 0.8, 1.3), ("conv2", 1.1, 0.7 + shift),
                                 ("kernels", 0.1, 0.1))]
  tables = {"rsa": rows("rsa"), "cka": rows("cka"), "rmse": rmse, "neurons": []}
  best = mm.best_layers(tables, {"V1": "conv1"})
  assert (best.rsa_matched == "conv1 (0.20)").all() and (best.cka_layer == "conv1 (0.20)").all()
  assert (best.rmse_bottom_up == "conv1 (1.300)").all()  # kernels are not a layer
  effect = mm.neurn_effect(tables)
  assert list(effect["layer_none"]) == ["conv1", "conv1"]
  np.testing.assert_allclose(effect["change"], 0.0)  # both arms at conv1, both 1.3


@pytest.mark.slow
def test_cli_smoke_run_writes_tables_figures_and_a_summary_that_says_simulated(tmp_path, capsys):
  out = tmp_path / "mice"
  assert main(["compare", "mice", "--config", "tiny", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "Most similar layer per group" in printed and "planted" in printed
  for f in ("rsa.csv", "cka.csv", "rmse.csv", "neurons.csv", "rsa.png", "cka.png", "rmse.png",
            "representations.png", "summary.md", "config.json"):
    assert (out / f).stat().st_size > 0, f
  summary = (out / "summary.md").read_text()
  assert summary.startswith("# Mice to machines: tiny (SIMULATED data)")
  assert "not a recording" in summary and "VISp conv2_2" in summary
  assert "select" in summary and "evaluate" in summary
  cka = pd.read_csv(out / "cka.csv")
  assert set(cka.neurn) == {"none", f"k={DEFAULT_K}"} and set(cka.method) == {"layer", "matched"}
  assert set(cka.kind) == {"area", "cre_line", "cell_class"}
  assert set(cka[cka.kind == "area"].group) == set(mm.ALLEN_AREAS)
  assert cka.value.between(-1e-6, 1 + 1e-6).all() and "value_select" in cka
  assert main(["compare", "mice", "--config", "tiny", "--out", str(out)]) == 1  # exists
  assert main(["compare", "--config", "tiny", "--domains", "a", "--out", str(out)]) == 1


def test_figure_titles_say_when_the_data_are_simulated(tmp_path, monkeypatch):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  titles = []
  monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: titles.append(
      fig.get_suptitle()))
  tables = {"rmse": [{"neurn": a, "kind": "area", "group": g, "layer": l, "level": v,
                      "rmse": 1.0, "rmse_select": 1.0, "n_neurons": 3}
                     for a in ("none", "k=3") for g in ("A", "B") for l in ("c1", "c2")
                     for v in ("top_down", "bottom_up")]}
  sims = [{"neurn": a, "kind": "area", "group": g, "layer": l, "method": m, "value": 0.5,
           "value_select": 0.5} for a in ("none", "k=3") for g in ("A", "B")
          for l in ("c1", "c2") for m in ("matched", "layer")]
  for tag in ("SIMULATED mouse: ", ""):
    mm._plot_rmse(plt, pd.DataFrame(tables["rmse"]), tmp_path / "r.png", tag=tag)
    mm._plot_similarity(plt, pd.DataFrame(sims), "rsa", tmp_path / "s.png", tag=tag)
  assert all(t.startswith("SIMULATED") for t in titles[:2])
  assert not any("SIMULATED" in t for t in titles[2:])


def test_allen_nwb_folder_groups_by_area_cre_line_and_class(tmp_path):
  from jaxmouse.data import allen

  rng = np.random.default_rng(0)
  n_images, reps, step, window = 30, 3, 9, 7
  template = rng.integers(0, 256, (n_images, 30, 40), dtype=np.uint8)
  folder = tmp_path / "allen"
  for k, (area, cre, n) in enumerate([("VISp", "Cux2-CreERT2/wt;Ai93/wt", 6),
                                      ("VISal", "Sst-IRES-Cre/wt;Ai148/wt", 5)]):
    seq = rng.permutation(np.repeat(np.arange(n_images), reps))
    starts = 30 + np.arange(seq.size) * step
    dff = rng.normal(0.1, 1.0, (n, starts[-1] + 40)).astype(np.float32)
    allen.write_nwb(folder / f"{500 + k}.nwb", dff=dff, frames=seq,
                    frame_duration=np.stack([starts, starts + window], 1),
                    cell_specimen_ids=1000 * k + np.arange(n), template=template, location=area,
                    imaging_depth_um=175, genotype=cre, session_id=str(500 + k))
  config = mm.get_config("tiny", neurn_k=None, n_clusters=2)
  result = mm.run(config, data=str(folder), log=lambda s: None)
  assert result["planted"] == {} and result["n_neurons"] == 11 and result["simulated"] is None
  cka = pd.DataFrame(result["tables"]["cka"])
  assert set(zip(cka.kind, cka.group)) >= {
      ("area", "VISp"), ("area", "VISal"), ("cre_line", "Cux2-CreERT2"),
      ("cre_line", "Sst-IRES-Cre"), ("cell_class", "excitatory"), ("cell_class", "inhibitory")}
  assert set(cka.neurn) == {"none"} and np.isfinite(cka.value).all()


@pytest.mark.slow
def test_compare_across_networks(tmp_path, capsys):
  """`compare mice --weights A,B`: each network on its own layers and input size; per area and
  Cre line its best layer under every measure, with the layer's relative depth."""
  from jaxmouse.models import zoo
  from jaxmouse.weights import random_init, save

  save(random_init("vgg16", 0), tmp_path / "vgg")
  save(random_init("resnet18", 0), tmp_path / "r18")
  out = tmp_path / "nets"
  weights = f"{tmp_path / 'vgg'},{tmp_path / 'r18'}"
  assert main(["compare", "mice", "--config", "tiny", "--neurn-k", "0", "--weights", weights,
               "--layers", "conv1_2,conv2_2,layer1,layer3", "--out", str(out)]) == 0
  assert "Networks compared" in capsys.readouterr().out
  nets = pd.read_csv(out / "networks.csv")
  assert set(nets.network) == {"vgg", "r18"} and set(nets.measure) == set(mm.MEASURES)
  assert set(nets[nets.network == "vgg"].layer) <= {"conv1_2", "conv2_2"}
  assert set(nets[nets.network == "r18"].layer) <= {"layer1", "layer3"}
  for r in nets.itertuples():
    arch = "vgg16" if r.network == "vgg" else "resnet18"
    assert r.depth == pytest.approx(zoo.relative_depth(arch, r.layer))
  assert set(nets[nets.kind == "area"].group) == set(mm.ALLEN_AREAS)
  assert "cre_line" in set(nets.kind)
  rsa = pd.read_csv(out / "rsa.csv")
  assert set(rsa.network) == {"vgg", "r18"}
  for f in ("networks.png", "rsa_vgg.png", "rsa_r18.png", "rmse_r18.png", "summary.md"):
    assert (out / f).stat().st_size > 0, f
  # A layer no network has is refused before any work, naming every network's layers.
  assert main(["compare", "mice", "--config", "tiny", "--weights", weights, "--layers",
               "layer9", "--out", str(tmp_path / "bad")]) == 1
  err = capsys.readouterr().err
  assert "unknown layer(s) ['layer9']: no network has them. Valid layers: vgg (vgg16)" in err
  assert not (tmp_path / "bad").exists()
  # Input size per network: AlexNet's pool5 needs more than the study's 36x64.
  assert mm.input_shape(mm.get_config("quick"), "alexnet") == (72, 128)
  assert mm.input_shape(mm.get_config("quick"), "resnet18") == (36, 64)
