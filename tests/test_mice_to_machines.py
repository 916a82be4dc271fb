"""The mice-to-machines study: configs, outputs, and a smoke run through the CLI."""

import numpy as np
import pandas as pd
import pytest

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


@pytest.mark.slow
def test_cli_smoke_run_writes_tables_figures_and_summary(tmp_path, capsys):
  out = tmp_path / "mice"
  assert main(["compare", "mice", "--config", "tiny", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "Most similar layer per group" in printed and "planted" in printed
  for f in ("rsa.csv", "cka.csv", "rmse.csv", "neurons.csv", "rsa.png", "cka.png", "rmse.png",
            "representations.png", "summary.md", "config.json"):
    assert (out / f).stat().st_size > 0, f
  cka = pd.read_csv(out / "cka.csv")
  assert set(cka.neurn) == {"none", f"k={DEFAULT_K}"} and set(cka.method) == {"layer", "matched"}
  assert set(cka.kind) == {"area", "cre_line", "cell_class"}
  assert set(cka[cka.kind == "area"].group) == set(mm.ALLEN_AREAS)
  assert cka.value.between(-1e-6, 1 + 1e-6).all()
  rmse = pd.read_csv(out / "rmse.csv")
  kernels = rmse[rmse.layer == "kernels"].pivot_table(index=["kind", "group", "level"],
                                                      columns="neurn", values="rmse")
  # First-layer kernels do not see the input, so NeuRN cannot change their RMSE.
  np.testing.assert_allclose(kernels["none"], kernels[f"k={DEFAULT_K}"])
  assert main(["compare", "mice", "--config", "tiny", "--out", str(out)]) == 1  # exists
  assert main(["compare", "--config", "tiny", "--domains", "a", "--out", str(out)]) == 1


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
  assert result["planted"] == {} and result["n_neurons"] == 11
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
