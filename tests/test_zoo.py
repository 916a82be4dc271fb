"""AlexNet, ResNet-18/34/50, MobileNetV2 and ViT-B/16 in Flax against independent
torch.nn.functional forwards of the same weights (tests/torch_zoo.py), converted from files in
torchvision's layout, with batch-norm statistics far from their init, at image sizes that are
not multiples of 32."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jaxmouse.features import extract
from jaxmouse.models import zoo
from jaxmouse.models import resnet as resnet_lib
from jaxmouse.weights import convert, load, random_init, save
from torch_zoo import forward, rel_err, state_dict

TOL = 1e-4


def _write(tmp_path, sd, fmt, name):
  if fmt == "safetensors":
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
  else:
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=(fmt == "pth"))
  return path


def _images(h, w, seed=0, n=2, gray=False):
  shape = (n, h, w) if gray else (n, h, w, 3)
  return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


CASES = [
    pytest.param("alexnet", "pth", (70, 83), id="alexnet-pth"),
    pytest.param("alexnet", "safetensors", (67, 99), id="alexnet-safetensors"),
    pytest.param("resnet18", "pth", (45, 53), id="resnet18-pth"),
    pytest.param("resnet18", "safetensors", (37, 70), id="resnet18-safetensors"),
    pytest.param("resnet34", "pth-legacy", (45, 53), id="resnet34-pth-legacy",
                 marks=pytest.mark.slow),
    pytest.param("resnet50", "safetensors", (45, 53), id="resnet50-safetensors",
                 marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", "pth", (45, 53), id="mobilenet_v2-pth"),
    pytest.param("mobilenet_v2", "safetensors", (50, 75), id="mobilenet_v2-safetensors"),
    pytest.param("vit_b_16", "safetensors", (40, 56), id="vit_b_16-safetensors",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,fmt,size", CASES)
def test_every_layer_matches_torch(tmp_path, arch, fmt, size):
  sd = state_dict(arch, seed=1)
  path = _write(tmp_path, sd, fmt, arch)
  weights = convert(path, arch=arch)
  assert weights.metadata["kind"] == "trained" and weights.normalization == "torchvision"
  # Heads and counters are skipped and listed, never silently dropped.
  skipped = set(weights.metadata["skipped"])
  assert skipped and all(k not in skipped for k in ("conv1.weight", "features.0.weight"))
  x = _images(*size)
  ref = forward(arch, sd, x)
  got = extract(weights, x, layers=zoo.layers(arch))
  assert list(got) == list(zoo.layers(arch)) and set(ref) == set(got)
  errs = {}
  for name in zoo.layers(arch):
    assert got[name].shape == ref[name].shape, (name, got[name].shape, ref[name].shape)
    errs[name] = rel_err(got[name], ref[name])
  worst = max(errs, key=errs.get)
  assert errs[worst] < TOL, (worst, errs[worst])
  # The deepest layer carries signal, or the comparison above would prove little.
  last = zoo.layers(arch)[-1]
  assert np.std(ref[last]) > 1e-3


def test_resnet_batch_norm_folded_or_not_and_grayscale(tmp_path):
  sd = state_dict("resnet18", seed=2)
  weights = convert(_write(tmp_path, sd, "pth", "r18"), arch="resnet18")
  gray = _images(41, 59, seed=3, gray=True)
  ref = forward("resnet18", sd, gray)
  for fold in (True, False):
    got = jax.jit(lambda p, x: resnet_lib.apply(p, x, arch="resnet18", layers=zoo.layers(
        "resnet18"), fold_batch_norm=fold))(weights.params, gray)
    for name in ref:
      assert rel_err(got[name], ref[name]) < TOL, (fold, name)
  # The running statistics matter: the same weights with init statistics differ.
  flat = dict(sd)
  for k in flat:
    if k.endswith("running_var"):
      flat[k] = torch.ones_like(flat[k])
  other = forward("resnet18", flat, gray)
  assert rel_err(other["layer2"], ref["layer2"]) > 0.05


@pytest.mark.slow
def test_vit_at_its_native_size_and_a_non_square_grid(tmp_path):
  sd = state_dict("vit_b_16", seed=4)
  weights = convert(_write(tmp_path, sd, "pth", "vit"), arch="vit_b_16")
  for size in ((224, 224), (35, 130)):  # 14x14 (no interpolation); 2x8 (interpolated, cut)
    x = _images(*size, seed=5, n=1)
    ref = forward("vit_b_16", sd, x)
    got = extract(weights, x, layers=["block1", "block6", "block12"])
    for name in got:
      assert got[name].shape == ref[name].shape
      assert rel_err(got[name], ref[name]) < TOL, (size, name)


def test_bicubic_position_embeddings_match_torch_interpolate():
  from jaxmouse.models import vit
  g = torch.Generator().manual_seed(0)
  pos = torch.randn(1, 197, 8, generator=g)
  for h, w in ((3, 5), (14, 14), (20, 9), (1, 2)):
    grid = pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)
    ref = ref.permute(0, 2, 3, 1).reshape(1, h * w, 8).numpy()
    got = np.asarray(vit.position_embeddings(pos.numpy(), h, w))
    np.testing.assert_allclose(got[:, 1:], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:, 0], pos[:, 0].numpy())


@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "mobilenet_v2"])
def test_nnx_module_matches_apply(arch):
  model = zoo.network(arch, rngs=nnx.Rngs(0))
  params = model.params()
  x = _images(64, 80, seed=6)
  names = zoo.layers(arch)[-3:]
  a = nnx.jit(lambda m, x: m(x, layers=names))(model, x)
  b = jax.jit(lambda p, x: zoo.apply(p, x, arch=arch, layers=names,
                                     normalization="torchvision"))(params, x)
  assert set(a) == set(names)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
  again = zoo.network(arch, params=params)
  leaf = next(iter(params))
  np.testing.assert_array_equal(again.params()[leaf]["kernel"], params[leaf]["kernel"])


def test_layer_names_and_shapes():
  assert zoo.layers("resnet18")[:5] == ("conv1", "maxpool", "layer1.0", "layer1.1", "layer1")
  assert zoo.layers("resnet50")[-4:] == ("layer4.0", "layer4.1", "layer4.2", "layer4")
  assert len(zoo.layers("resnet34")) == 2 + 16 + 4
  assert zoo.layers("alexnet") == ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5",
                                   "pool5")
  assert zoo.layers("mobilenet_v2")[0] == "features.0" and len(zoo.layers("mobilenet_v2")) == 19
  assert zoo.layers("vit_b_16")[-1] == "block12"
  # A ResNet's layer4 is 2x2 at the studies' 36x64.
  assert zoo.output_shape("resnet18", "layer4", 36, 64) == (2, 2, 512)
  assert zoo.output_shape("resnet50", "layer3", 36, 64) == (3, 4, 1024)
  assert zoo.output_shape("vit_b_16", "block3", 36, 64) == (2, 4, 768)
  assert zoo.output_shape("mobilenet_v2", "features.18", 45, 53) == (2, 2, 1280)
  assert zoo.relative_depth("resnet18", "conv1") == 0.0
  assert zoo.relative_depth("resnet18", "layer4") == 1.0
  with pytest.raises(ValueError, match=r"36x64 pixels are too small for layer pool5 of alexnet: "
                                       r"it needs at least 63x63"):
    zoo.output_shape("alexnet", "pool5", 36, 64)
  with pytest.raises(ValueError, match=r"unknown layer\(s\) \['layer5'\] for resnet18; valid "
                                       r"layers: conv1, maxpool, layer1.0"):
    zoo.check_layers("resnet18", "layer1,layer5")
  with pytest.raises(ValueError, match="unknown architecture 'resnet101'.*vit_b_16"):
    zoo.check_arch("resnet101")


def test_only_requested_layers_are_computed():
  # Params past the stem are absent: the forward must not read them.
  full = random_init("resnet18", 0).params
  params = {k: full[k] for k in ("conv1", "bn1")}
  out = resnet_lib.apply(params, _images(32, 32), arch="resnet18", layers=["maxpool"])
  assert list(out) == ["maxpool"] and out["maxpool"].shape == (2, 8, 8, 64)


@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "resnet50", "mobilenet_v2",
                                  pytest.param("vit_b_16", marks=pytest.mark.slow)])
def test_random_init_is_torchvisions(arch, tmp_path):
  w = random_init(arch, 7)
  p = w.params
  assert w.kind == "random" and w.metadata["seed"] == 7
  if arch.startswith("resnet"):
    k = p["layer3.0.conv2"]["kernel"]  # (3, 3, 256, 256): fan_out 2304
    assert abs(k.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.02
    np.testing.assert_array_equal(p["layer3.0.bn2"]["scale"], 1)
    np.testing.assert_array_equal(p["layer3.0.bn2"]["var"], 1)
    np.testing.assert_array_equal(p["layer3.0.bn2"]["mean"], 0)
  elif arch == "alexnet":
    k = p["features.3"]["kernel"]  # fan_in 64 * 25
    bound = 1 / np.sqrt(64 * 25)
    assert k.max() <= bound and k.min() >= -bound and abs(k.std() / (bound / np.sqrt(3)) - 1) < .02
  elif arch == "mobilenet_v2":
    k = p["features.5.conv.1.0"]["kernel"]  # depthwise (3, 3, 1, 192): fan_out 192 * 9
    assert k.shape == (3, 3, 1, 192) and abs(k.std() / np.sqrt(2 / (192 * 9)) - 1) < 0.05
  else:
    assert abs(p["encoder"]["pos_embedding"].std() / 0.02 - 1) < 0.02
    np.testing.assert_array_equal(p["class_token"]["value"], 0)
    k = p["encoder.layers.encoder_layer_3.mlp.0"]["kernel"]
    bound = np.sqrt(6 / (768 + 3072))
    assert k.max() <= bound and abs(k.std() / (bound / np.sqrt(3)) - 1) < 0.02
  # Different seeds differ; the same seed gives the same draw.
  leaf = zoo.FIRST_CONV[arch]
  key = "kernel"
  assert not np.array_equal(random_init(arch, 8).params[leaf][key], p[leaf][key])
  np.testing.assert_array_equal(random_init(arch, 7).params[leaf][key], p[leaf][key])
  if arch in ("resnet18", "vit_b_16"):
    save(w, tmp_path / "w")
    meta = json.loads((tmp_path / "w" / "metadata.json").read_text())
    assert meta["kind"] == "random" and meta["layers"] == list(zoo.layers(arch))
    back = load(tmp_path / "w")
    assert back.kind == "random" and back.fingerprint == w.fingerprint


def test_converter_names_what_does_not_fit(tmp_path):
  sd = state_dict("resnet18", seed=0)
  # Another network's file.
  path = _write(tmp_path, sd, "pth", "r18")
  with pytest.raises(ValueError, match=r"r18.pth does not hold resnet34 weights in "
                                       r"torchvision's layout: missing \d+: layer1.2.conv1.weight"):
    convert(path, arch="resnet34")
  # A misshaped tensor, an unknown one, an integer one and a NaN.
  bad = dict(sd)
  bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
  bad["layer9.weight"] = torch.zeros(3)
  with pytest.raises(ValueError, match=r"wrong shape 1: layer1.0.conv1.weight: expected "
                                       r"\(64, 64, 3, 3\), got \(64, 64, 1, 1\) \| tensors that "
                                       r"fit no resnet18 module 1: layer9.weight \(3,\)"):
    convert(_write(tmp_path, bad, "safetensors", "bad"), arch="resnet18")
  bad = dict(sd)
  bad["bn1.running_mean"] = torch.zeros(64, dtype=torch.int64)
  bad["layer2.0.bn1.weight"] = torch.full((128,), float("nan"))
  with pytest.raises(ValueError, match=r"bn1/mean \(bn1.running_mean\) int64.*layer2.0.bn1/scale "
                                       r"\(layer2.0.bn1.weight\)"):
    convert(_write(tmp_path, bad, "pth", "bad2"), arch="resnet18")
  # A Keras file is VGG only.
  h5 = tmp_path / "w.h5"
  h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
  with pytest.raises(ValueError, match="Keras files are read for VGG only, not resnet18"):
    convert(h5, arch="resnet18")


def test_cli_weights_for_every_network(tmp_path, capsys):
  from jaxmouse.cli import main
  from jaxmouse.cli.weights import ARCHS
  assert ARCHS == zoo.ARCHS  # the parser's list, kept free of jax imports
  out = tmp_path / "r18"
  assert main(["weights", "random", "--arch", "resnet18", "--seed", "3", "--out", str(out)]) == 0
  assert "resnet18 (random)" in capsys.readouterr().out
  assert load(out).fingerprint == random_init("resnet18", 3).fingerprint
  sd = state_dict("alexnet", seed=0)
  src = _write(tmp_path, sd, "safetensors", "alex")
  assert main(["weights", "convert", str(src), "--arch", "alexnet", "--kind", "random",
               "--out", str(tmp_path / "alex")]) == 0
  meta = json.loads((tmp_path / "alex" / "metadata.json").read_text())
  assert meta["kind"] == "random" and meta["arch"] == "alexnet"
  assert meta["layers"][:3] == ["conv1", "pool1", "conv2"] and "classifier.1.weight" in meta[
      "skipped"]
  assert main(["weights", "fetch", "torchvision", "--arch", "alexnet", "--file", str(src),
               "--out", str(tmp_path / "alex_tv")]) == 0
  assert load(tmp_path / "alex_tv").fingerprint == load(tmp_path / "alex").fingerprint
  assert main(["weights", "random", "--arch", "resnet101", "--seed", "0", "--out",
               str(tmp_path / "x")]) == 1
  assert "unknown architecture 'resnet101'" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_study_configs_choose_layers_and_input_size_per_network(tmp_path):
  from jaxmouse.studies import cadena2019
  quick = cadena2019.get_config("quick")
  assert quick.arch == "vgg16" and quick.image_shape == (36, 64)
  for arch in ("alexnet", "resnet18", "resnet50", "mobilenet_v2", "vit_b_16"):
    cfg = quick.for_arch(arch)
    # Twice the study's size: every chosen layer has at least a 2x4 map there.
    assert cfg.arch == arch and cfg.image_shape == (72, 128) and cfg.trained is None
    assert set(cfg.layers) <= set(zoo.layers(arch))
    for layer in cfg.layers:
      h, w = zoo.output_shape(arch, layer, *cfg.image_shape)[:2]
      assert h >= 2 and w >= 4, (arch, layer, h, w)
    assert set(cfg.layers_of("factorized")) <= set(cfg.layers) and cfg.layers_of("factorized")
  assert quick.for_arch("resnet18").layers[-1] == "layer4"
  assert "arch" not in quick.to_dict()
  assert quick.for_arch("resnet18").to_dict()["arch"] == "resnet18"
  full = cadena2019.get_config("full").for_arch("resnet34")
  assert full.layers == ("conv1",) + tuple(l for l in zoo.layers("resnet34") if "." in l)
  with pytest.raises(ValueError, match="trained='hed' is a VGG16, but arch is 'resnet18'"):
    import dataclasses
    dataclasses.replace(quick, arch="resnet18", layers=("layer1",))
  # A trained checkpoint of another network than the config's is refused by name.
  save(random_init("resnet18", 0), tmp_path / "r18")
  import dataclasses
  cfg = dataclasses.replace(quick, trained=str(tmp_path / "r18"))
  with pytest.raises(ValueError, match=r"r18 are resnet18, but the study config reads vgg16 "
                                       r"layers"):
    cadena2019.prepare_weights(cfg, tmp_path / "run", log=lambda s: None)
  folders = cadena2019.prepare_weights(quick.for_arch("resnet18"), tmp_path / "run2",
                                       log=lambda s: None)
  assert list(folders) == ["resnet18_random0"]
  assert load(folders["resnet18_random0"]).arch == "resnet18"


@pytest.mark.parametrize("h,w,k,stride,pad,groups", [
    (9, 11, 3, 1, 1, 1), (9, 11, 3, 2, 1, 1),    # XLA's convolution
    (3, 4, 3, 2, 1, 1), (2, 2, 3, 1, 1, 1),      # outputs of at most 2 rows: im2col
    (9, 11, 1, 1, 0, 1), (9, 11, 1, 2, 0, 1),    # 1x1: a matmul (strided: sliced first)
    (9, 11, 3, 1, 1, 6), (9, 11, 3, 2, 1, 6), (2, 3, 3, 2, 1, 6),  # depthwise: a sum of taps
    (10, 12, 7, 2, 3, 1), (21, 19, 11, 4, 2, 1)])
def test_conv2d_paths_match_torch(h, w, k, stride, pad, groups):
  from jaxmouse.models import _layers
  rng = np.random.default_rng(h * w + k)
  x = rng.standard_normal((2, 6, h, w)).astype(np.float32)
  c_out = 6 if groups > 1 else 5
  weight = rng.standard_normal((c_out, 6 // groups, k, k)).astype(np.float32)
  bias = rng.standard_normal(c_out).astype(np.float32)
  ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight),
                                   torch.from_numpy(bias), stride=stride, padding=pad,
                                   groups=groups).numpy().transpose(0, 2, 3, 1)
  got = _layers.conv2d(x.transpose(0, 2, 3, 1), weight.transpose(2, 3, 1, 0), bias,
                       stride=stride, padding=pad, groups=groups)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
