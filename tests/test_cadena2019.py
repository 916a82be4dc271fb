"""The Cadena et al. 2019 pipeline on simulated mice whose answers are planted.

Positive and negative controls of the analyses, each able to come out either way: a planted
layer hierarchy is recovered (higher areas' planted layer, V1 shallower, rho above 0 with its CI)
and no planted hierarchy gives none; neurons planted on the "trained" network are fitted better
by it than by random weights, and neurons planted on the random control's own network are fitted
better by the random weights. Tests have no network access, so the "trained" network is a fixed
structured one (every 3x3 kernel a scaled oriented edge filter, as in trained CNNs' early
layers), distinct from torchvision's white-noise init.
"""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from jaxmouse import weights as wlib
from jaxmouse.studies import cadena2019

LAYERS = ("conv1_2", "conv2_2", "conv3_1", "conv3_3", "conv4_1")


def oriented_network(seed: int) -> wlib.Weights:
  """VGG16 whose kernels are oriented edge filters with torchvision-init amplitudes and signs."""
  w = wlib.random_init("vgg16", seed)
  rng = np.random.default_rng(seed)
  sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
  diag = np.eye(3, dtype=np.float32) * 2 - 2 / 3
  bank = np.stack([sobel, sobel.T, diag, diag[::-1]])
  bank /= np.linalg.norm(bank, axis=(1, 2), keepdims=True)  # (4, 3, 3)
  params = {}
  for name, p in w.params.items():
    k = np.asarray(p["kernel"])  # (3, 3, c_in, c_out)
    amp = np.sqrt((k**2).sum(axis=(0, 1)))  # (c_in, c_out)
    which = rng.integers(0, 4, size=amp.shape)
    sign = rng.choice([-1.0, 1.0], size=amp.shape)
    kernel = bank[which] * (amp * sign)[..., None, None]  # (c_in, c_out, 3, 3)
    params[name] = {"kernel": kernel.transpose(2, 3, 0, 1).astype(np.float32),
                    "bias": np.asarray(p["bias"])}
  return wlib.Weights(arch="vgg16", params=params, normalization="torchvision",
                      metadata={"source": "oriented test network"})


def _study(tmp_path, *, hierarchy: bool, seed: int, plant_on_trained: bool):
  """A small study run; the CNN cells are planted on the trained network, or on the random
  control's own weights (random VGG16, seed 0)."""
  trained = tmp_path / "vggA"
  if not trained.exists():
    wlib.save(oriented_network(100), trained)
  # CNN neurons only: the controls are about layers, not the energy model.
  layers = ("conv2_2", "conv4_1", "conv4_1", "conv4_1") if hierarchy else (("conv2_2", "conv4_1"),)
  sim = dict(image_shape=(32, 48), neurons_per_area=32, n_images=500, n_test_images=40,
             n_repeats=5, hierarchy=hierarchy, gabor_fraction=0.0, mean_rate=5.0, seed=seed,
             layers=layers, arch="vgg16", weights_seed=0)
  config = cadena2019.StudyConfig(
      name="test", layers=LAYERS, random_seeds=(0,), trained=str(trained), readouts=("ridge",),
      grids={"ridge": {"alpha": (0.01, 0.1, 1.0, 10.0)}}, energy=False, image_shape=(32, 48),
      simulation=sim, plant=str(trained) if plant_on_trained else None)
  out = tmp_path / "run"
  summary = cadena2019.run(config, out=out, log=lambda s: None, progress=False)
  return out, summary


@pytest.mark.slow
def test_planted_hierarchy_recovered_and_the_planting_network_wins(tmp_path):
  out, summary = _study(tmp_path, hierarchy=True, seed=0, plant_on_trained=True)
  table = pd.read_csv(out / "report" / "area_table.csv").set_index("area")
  for area in ("LM", "AL", "RL"):
    assert table.loc[area, "trained_layer"] == "conv4_1"
  # V1 (planted conv2_2) peaks shallower than every higher area, within one layer of conv2_2:
  # ridge on a few hundred images leans one layer deep (conv3_1 is conv2_2 pooled and mixed).
  assert table.loc["V1", "trained_layer"] in ("conv2_2", "conv3_1")
  test = json.loads((out / "report" / "hierarchy.json").read_text())[0]
  assert test["rho"] > 0.15 and test["p_value"] < 0.01 and test["ci_low"] > 0
  text = summary.read_text()
  assert "areas higher in the hierarchy take deeper layers" in text
  assert "(simulated data)" in text and "## Planted versus recovered" in text
  info = json.loads((out / "data.json").read_text())
  assert info["simulated"] is True and "oriented test network" in info["planted"]
  # Cells planted on the trained network: it beats the random weights (each at its own
  # validation-chosen layer) in every area, with a CI excluding 0 in at least three of four.
  assert (table["trained_minus_random"] > 0).all()
  assert (table["diff_ci_low"] > 0).sum() >= 3
  # Re-running resumes: no cell is refitted and the table is the same.
  cells = sorted((out / "sweeps").rglob("cell.json"))
  stamps = [c.stat().st_mtime_ns for c in cells]
  before = pd.read_csv(out / "results.csv")
  _study(tmp_path, hierarchy=True, seed=0, plant_on_trained=True)
  assert [c.stat().st_mtime_ns for c in cells] == stamps
  pd.testing.assert_frame_equal(before, pd.read_csv(out / "results.csv"))


@pytest.mark.slow
def test_no_planted_hierarchy_no_order_and_the_random_network_wins_its_own_cells(tmp_path):
  out, summary = _study(tmp_path, hierarchy=False, seed=1, plant_on_trained=False)
  test = json.loads((out / "report" / "hierarchy.json").read_text())[0]
  assert test["p_value"] > 0.05 and test["ci_low"] < 0 < test["ci_high"]
  assert "the interval includes 0" in summary.read_text()
  # Planted on the random control's own weights: now random beats trained. The comparison is
  # not built into the pipeline; it follows the planted truth.
  table = pd.read_csv(out / "report" / "area_table.csv")
  assert (table["trained_minus_random"] < 0).all()
  assert (table["diff_ci_high"] < 0).sum() >= 3
  assert "random better" in summary.read_text()


def test_run_folder_refuses_another_config(tmp_path):
  config = dataclasses.replace(cadena2019.QUICK, random_seeds=(5,))
  cadena2019._check_run_folder(tmp_path, config, None)
  with pytest.raises(ValueError, match="another config"):
    cadena2019._check_run_folder(tmp_path, cadena2019.QUICK, None)


def test_a_run_folder_of_the_per_pair_default_resumes_per_pair_only(tmp_path):
  """A folder recorded before stop_on existed (no such key: per pair) takes
  ``--set fit.stop_on=pair`` and refuses the per-config default."""
  from jaxmouse import fit as fitlib
  from jaxmouse import sweeps

  old = cadena2019.resolve_config("quick").to_dict()  # as a run records it
  assert "stop_on" not in old["fit"]
  (tmp_path / "study.json").write_text(json.dumps({"config": old, "data": None}))
  per_pair = cadena2019.resolve_config("quick", sets=["fit.stop_on=pair"])
  cadena2019._check_run_folder(tmp_path, per_pair, None)  # the same record
  assert per_pair.fit["stop_on"] == "pair"
  sweep = sweeps.SweepConfig(energy=True, fit=fitlib.FitConfig(**per_pair.fit))
  assert "stop_on" not in sweep.to_dict()["fit"]  # nor in its sweeps' manifests
  per_config = cadena2019.resolve_config("quick", sets=["fit.stop_on=config"])
  with pytest.raises(ValueError, match="another config"):
    cadena2019._check_run_folder(tmp_path, per_config, None)


def test_config_errors():
  with pytest.raises(ValueError, match="unknown layer"):
    cadena2019.StudyConfig(name="x", layers=("conv9_9",))
  with pytest.raises(ValueError, match="too small"):
    cadena2019.StudyConfig(name="x", layers=("conv5_3",), image_shape=(12, 16))
  with pytest.raises(ValueError, match="not in layers"):
    cadena2019.StudyConfig(name="x", layers=("conv1_1",), readouts=("ridge",),
                           readout_layers={"ridge": ("conv2_2",)})
  with pytest.raises(ValueError, match="unknown cadena2019 config"):
    cadena2019.get_config("huge")
  with pytest.raises(ValueError, match=r"per_format\['allen'\] names unknown fields \['readout'\]"):
    cadena2019.StudyConfig(name="x", layers=("conv1_1",),
                           per_format={"allen": {"readout": "ridge"}})
  with pytest.raises(ValueError, match="image_fit"):
    cadena2019.StudyConfig(name="x", layers=("conv1_1",), image_fit="stretch")


def test_allen_data_get_ridge_at_their_aspect_ratio():
  for config in (cadena2019.QUICK, cadena2019.FULL):
    allen = config.for_format("allen")
    assert allen.readouts == ("ridge",) and allen.image_shape == (36, 46)
    assert allen.per_format == {} and allen.for_format("allen") is allen
    for fmt in ("filetree", None):
      other = config.for_format(fmt)
      assert other == dataclasses.replace(config, per_format={}), fmt


def _small_full(trained, *, image_shape):
  """The full config (areas from the data, factorized readout, energy model) at test size."""
  return dataclasses.replace(
      cadena2019.FULL, layers=("conv1_2", "conv2_2", "conv3_3"), random_seeds=(0,),
      trained=str(trained), readouts=("ridge", "factorized"), image_shape=image_shape,
      grids={"ridge": {"alpha": (0.1, 1.0, 10.0)}, "factorized": {"l1": (1e-2,), "smooth": (1e-2,)}},
      fit={"max_steps": 40, "eval_every": 20, "patience": 2})


def _check_report(out, areas):
  table = pd.read_csv(out / "report" / "area_table.csv")
  assert set(table["area"]) == set(areas)
  assert set(table["readout"]) == {"ridge", "factorized"}
  results = pd.read_csv(out / "results.csv")
  assert {"vggA", "random0", "energy"} <= set(results["weights"])
  assert np.isfinite(results["feve"]).mean() > 0.9
  for readout in ("ridge", "factorized"):
    assert (out / "report" / f"feve_vs_layer_{readout}.png").exists()


@pytest.mark.slow
def test_full_path_on_a_sensorium_file_tree(tmp_path):
  from jaxmouse import data as dlib

  ds, _ = dlib.simulate(dlib.SimulationConfig.tiny(neurons_per_area=6), progress=False)
  dlib.save(ds, tmp_path / "tree", format="filetree")
  trained = tmp_path / "vggA"
  wlib.save(oriented_network(100), trained)
  out = tmp_path / "run"
  cadena2019.run(_small_full(trained, image_shape=(24, 32)), out=out, data=tmp_path / "tree",
                 log=lambda s: None, progress=False)
  _check_report(out, ds.area_names)
  assert json.loads((out / "data.json").read_text())["simulated"] is False
  text = (out / "report" / "summary.md").read_text()
  assert "(simulated data)" not in text and "- simulated: no" in text


@pytest.mark.slow
def test_full_path_on_allen_nwb_files(tmp_path):
  from jaxmouse.data import allen

  rng = np.random.default_rng(0)
  n_images, repeats, step, window = 40, 6, 8, 6
  template = rng.integers(0, 256, (n_images, 24, 32), dtype=np.uint8)
  for k, area in enumerate(("VISp", "VISl")):
    seq = rng.permutation(np.concatenate([np.repeat(np.arange(n_images), repeats),
                                          np.full(10, -1)]))
    starts = 20 + np.arange(seq.size) * step
    drive = rng.gamma(2.0, 1.0, (8, n_images))  # (cells, images): a stimulus-driven response
    dff = rng.normal(0.0, 0.5, (8, starts[-1] + 30)).astype(np.float32)
    for s, frame in zip(starts, seq):
      if frame >= 0:
        dff[:, s:s + window] += drive[:, frame, None]
    allen.write_nwb(tmp_path / "nwb" / f"{700 + k}.nwb", dff=dff, frames=seq,
                    frame_duration=np.stack([starts, starts + window], 1),
                    cell_specimen_ids=(700 + k) * 1000 + np.arange(8), template=template,
                    location=area, imaging_depth_um=175, genotype="Cux2-CreERT2/wt",
                    session_id=700 + k)
  trained = tmp_path / "vggA"
  wlib.save(oriented_network(100), trained)
  out = tmp_path / "run"
  # The factorized readout on Allen files too (the study's default there is ridge only).
  config = dataclasses.replace(_small_full(trained, image_shape=(24, 32)), per_format={})
  cadena2019.run(config, out=out, data=tmp_path / "nwb", log=lambda s: None, progress=False)
  _check_report(out, ("VISp", "VISl"))
  hierarchy = json.loads((out / "report" / "hierarchy.json").read_text())
  assert {h["readout"] for h in hierarchy} == {"ridge", "factorized"}


def write_allen_dff_experiments(folder, *, rng, n_images=60, repeats=5, shape=(72, 96)):
  """Allen-layout files where AllenSDK's cache keeps them (ophys_experiment_data/<id>.nwb): two
  session B experiments whose dF/F (negative values included) follows the luminance of the left
  or right half of the images with a calcium lag, and one session A file without natural
  scenes."""
  from jaxmouse.data import allen

  # Images: a gray level per half, plus texture.
  levels = rng.uniform(40, 215, (n_images, 1, 2)).repeat(shape[1] // 2, axis=2)
  template = np.clip(levels + rng.normal(0, 25, (n_images, *shape)), 0, 255).astype(np.uint8)
  data = folder / "ophys_experiment_data"
  step, duration = 8, 7  # back-to-back presentations, as in the Brain Observatory
  for k, area in enumerate(("VISp", "VISl")):
    seq = rng.permutation(np.concatenate([np.repeat(np.arange(n_images), repeats),
                                          np.full(10, -1)]))
    starts = 30 + np.arange(seq.size) * step
    n_cells = 6
    # Each cell reads the mean luminance of one half of the image.
    half = rng.integers(0, 2, n_cells)
    lum = np.stack([template[:, :, h * shape[1] // 2:(h + 1) * shape[1] // 2].mean(axis=(1, 2))
                    for h in half])
    drive = (lum - lum.mean(axis=1, keepdims=True)) / lum.std(axis=1, keepdims=True)  # (c, i)
    dff = rng.normal(0.0, 0.3, (n_cells, starts[-1] + 40)).astype(np.float32)
    for s, frame in zip(starts, seq):
      if frame >= 0:
        dff[:, s + 2:s + 12] += 0.4 * drive[:, frame, None]  # lagged calcium transient
    allen.write_nwb(data / f"{700 + k}.nwb", dff=dff, frames=seq,
                    frame_duration=np.stack([starts, starts + duration], 1),
                    cell_specimen_ids=(700 + k) * 1000 + np.arange(n_cells), template=template,
                    location=area, imaging_depth_um=175,
                    genotype="Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt",
                    session_id=700 + k)
  allen.write_nwb(data / "710.nwb", dff=rng.normal(size=(3, 300)), frames=None,
                  frame_duration=None, cell_specimen_ids=np.arange(3), template=None,
                  location="VISp", imaging_depth_um=175, genotype="Cux2-CreERT2/wt",
                  session_id=710, session_type="three_session_A")
  return data


def test_full_config_on_allen_dff_files(tmp_path, monkeypatch, capsys):
  from jaxmouse import data as dlib
  from jaxmouse.cli import main

  data = write_allen_dff_experiments(tmp_path, rng=np.random.default_rng(0))
  trained = tmp_path / "vggA"
  wlib.save(oriented_network(100), trained)
  # The full config through the same code path, on two layers and one random seed.
  small = dataclasses.replace(cadena2019.FULL, layers=("conv1_2", "conv2_2"), random_seeds=(0,))
  monkeypatch.setitem(cadena2019.CONFIGS, "full", small)
  out = tmp_path / "run"
  pattern = str(data / "*.nwb")
  assert main(["run", "cadena2019", "--config", "full", "--data", pattern, "--trained",
               str(trained), "--out", str(out)]) == 0
  err = capsys.readouterr().err
  assert "warning: skipped 1 NWB file(s) without the natural_scenes stimulus" in err
  assert "710.nwb" in err

  results = pd.read_csv(out / "results.csv")
  assert set(results["readout"]) == {"ridge"}  # Allen's few images: ridge per neuron
  assert {"vggA", "random0", "energy"} <= set(results["weights"])
  assert np.isfinite(results["feve"]).all()
  assert results.loc[results["weights"] == "vggA", "feve"].median() > 0.2
  # No image in two tiers, in the data set the run read.
  ds = dlib.load(pattern, image_shape=(36, 46))
  tiers = {t: set(ds.tier_images(t).tolist()) for t in ds.tier_names}
  assert set(tiers) == {"train", "validation", "test"}
  assert not (tiers["train"] & tiers["validation"] or tiers["train"] & tiers["test"]
              or tiers["validation"] & tiers["test"])
  record = json.loads((out / "data.json").read_text())
  assert record["response_type"] == "dF/F"
  assert record["response_window"].startswith("[start, start + 2 x duration) after onset")
  assert record["loss"].startswith("gaussian: least squares of the ridge readouts (auto: ")
  assert record["split"] == (f"by image: {len(tiers['train'])} train / "
                             f"{len(tiers['validation'])} validation / {len(tiers['test'])} test "
                             "images, no image in two tiers")
  assert record["input_size"] == ("36x46 (72x96 images scaled to 34x46, keeping the aspect "
                                  "ratio, and padded with the mean gray)")
  assert "few for readouts trained by gradient descent" in record["images"]
  assert record["simulated"] is False
  assert all(isinstance(v, str) for k, v in record.items() if k != "simulated")
  study = json.loads((out / "study.json").read_text())
  assert study["config"]["readouts"] == ["ridge"] and study["config"]["image_shape"] == [36, 46]
  # RUN/run.json: the resolved config, the data set's fingerprint, versions and devices.
  import jax

  from jaxmouse import sweeps

  run = json.loads((out / "run.json").read_text())
  assert run["status"] == "finished" and run["config"] == study["config"]
  assert run["config_source"] == "full" and run["set"] == []
  assert run["data"]["fingerprint"] == sweeps.data_fingerprint(ds)
  assert run["data"]["simulated"] is False
  assert run["versions"]["jax"] == jax.__version__ and run["versions"]["flax"]
  assert run["versions"]["jaxmouse"]
  assert [d["id"] for d in run["devices"]] == [d.id for d in jax.devices()]


def test_a_poisson_loss_on_dff_is_refused_before_the_run_folder_is_claimed(tmp_path, capsys):
  from jaxmouse import data as dlib
  from jaxmouse.cli import main

  ds, _ = dlib.simulate(dlib.SimulationConfig.tiny(neurons_per_area=3, layers=("conv1_2",)),
                        progress=False)
  dff = ds.replace(responses=ds.responses - ds.responses.mean(axis=0),
                   info={"response_type": "dF/F"})
  path = dlib.save(dff, tmp_path / "dff.npz")
  out = tmp_path / "run"
  assert main(["run", "cadena2019", "--config", "full", "--data", str(path), "--loss", "poisson",
               "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Poisson loss needs non-negative responses" in err
  assert not out.exists()
