"""VGG in Flax against an independent plain-torch.nn forward of the same weights."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jaxmouse.features import extract
from jaxmouse.models import vgg
from jaxmouse.weights import convert
from torch_vgg import TorchVGG, rel_err

TOL = 1e-4


@pytest.fixture(scope="module")
def torch_vgg16():
  torch.manual_seed(0)
  return TorchVGG("vgg16").randomize(seed=1)


@pytest.fixture(scope="module")
def odd_images():
  rng = np.random.default_rng(0)
  return rng.uniform(0, 255, (2, 37, 45, 3)).astype(np.float32)


def test_layer_names_in_order():
  assert vgg.LAYERS["vgg16"][:3] == ("conv1_1", "conv1_2", "pool1")
  assert vgg.LAYERS["vgg16"][-3:] == ("conv5_2", "conv5_3", "pool5")
  assert len(vgg.CONV_LAYERS["vgg16"]) == 13 and len(vgg.CONV_LAYERS["vgg19"]) == 16
  assert list(vgg.torchvision_indices("vgg16").values())[:5] == [0, 2, 5, 7, 10]
  assert vgg.torchvision_indices("vgg16")["conv5_3"] == 28
  assert vgg.torchvision_indices("vgg19")["conv5_4"] == 34


@pytest.mark.parametrize("fmt", ["pth", "pth-legacy", "safetensors"])
def test_conversion_matches_torch_on_every_layer(tmp_path, torch_vgg16, odd_images, fmt):
  state = torch_vgg16.state_dict()
  path = tmp_path / ("vgg16.safetensors" if fmt == "safetensors" else "vgg16.pth")
  if fmt == "safetensors":
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
  else:
    torch.save(state, path, _use_new_zipfile_serialization=(fmt == "pth"))
  weights = convert(path, arch="vgg16")
  assert weights.normalization == "torchvision"
  assert weights.metadata["source_sha256"] and weights.metadata["source_name"] == path.name

  ref = torch_vgg16.layers(odd_images)
  got = extract(weights, odd_images, layers=vgg.LAYERS["vgg16"])
  assert set(got) == set(ref) == set(vgg.LAYERS["vgg16"])
  for name in vgg.LAYERS["vgg16"]:
    assert got[name].shape == ref[name].shape, name
    assert got[name].dtype == np.float32
    assert rel_err(got[name], ref[name]) < TOL, (name, rel_err(got[name], ref[name]))
  # The deepest layers must carry signal, or the comparison above would prove little.
  assert np.abs(ref["conv5_3"]).max() > 1e-3


def test_grayscale_is_tiled_and_matches_torch(tmp_path, torch_vgg16):
  path = tmp_path / "vgg16.pth"
  torch.save(torch_vgg16.state_dict(), path)
  weights = convert(path)
  gray = np.random.default_rng(1).uniform(0, 255, (3, 33, 35)).astype(np.float32)
  ref = torch_vgg16.layers(gray)
  got = extract(weights, gray, layers=["conv1_1", "conv3_2", "conv5_3"], batch_size=2)
  for name in got:
    assert rel_err(got[name], ref[name]) < TOL, name
  rgb = extract(weights, np.repeat(gray[..., None], 3, -1), layers=["conv3_2"])
  np.testing.assert_array_equal(rgb["conv3_2"], got["conv3_2"])


def test_caffe_normalization_matches_bgr_minus_means(torch_vgg16):
  params = _params_from_torch(torch_vgg16)
  x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  got = vgg.apply(params, x, arch="vgg16", layers=["conv2_1"], normalization="caffe")
  ref = torch_vgg16.layers(x, normalization="caffe")
  assert rel_err(got["conv2_1"], ref["conv2_1"]) < TOL
  # ...and differs from the torchvision convention, so the flag is not ignored.
  other = vgg.apply(params, x, arch="vgg16", layers=["conv2_1"], normalization="torchvision")
  assert rel_err(other["conv2_1"], ref["conv2_1"]) > 0.1


def test_vgg19_safetensors_matches_torch(tmp_path):
  model = TorchVGG("vgg19").randomize(seed=3)
  path = tmp_path / "vgg19.safetensors"
  save_file(dict(model.state_dict()), str(path))
  weights = convert(path, arch="vgg19")
  x = np.random.default_rng(3).uniform(0, 255, (1, 32, 34, 3)).astype(np.float32)
  ref = model.layers(x)
  got = extract(weights, x, layers=vgg.CONV_LAYERS["vgg19"])
  for name in vgg.CONV_LAYERS["vgg19"]:
    assert rel_err(got[name], ref[name]) < TOL, name


def test_nnx_module_matches_apply(torch_vgg16):
  params = _params_from_torch(torch_vgg16)
  model = vgg.VGG.from_params(params, arch="vgg16", normalization="torchvision")
  x = np.random.default_rng(4).uniform(0, 255, (2, 32, 32)).astype(np.float32)
  a = nnx.jit(lambda m, x: m(x, layers=["conv4_1", "pool2"]))(model, x)
  b = jax.jit(lambda p, x: vgg.apply(p, x, arch="vgg16", layers=["conv4_1", "pool2"],
                                     normalization="torchvision"))(params, x)
  assert set(a) == {"conv4_1", "pool2"}
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
  back = model.params()
  np.testing.assert_array_equal(back["conv3_1"]["kernel"], params["conv3_1"]["kernel"])


def test_nnx_module_random_init_is_torchvision_scale():
  model = vgg.VGG("vgg16", rngs=nnx.Rngs(0))
  k = np.asarray(model.conv4_2.kernel[...])
  assert k.shape == (3, 3, 512, 512)
  assert abs(k.std() / np.sqrt(2 / (512 * 9)) - 1) < 0.01
  assert np.all(np.asarray(model.conv4_2.bias[...]) == 0)
  out = nnx.jit(lambda m, x: m(x, layers=["pool5"]))(model, np.zeros((1, 32, 32)))
  assert out["pool5"].shape == (1, 1, 1, 512)


def test_only_requested_layers_are_computed():
  # Params of later layers are absent: the forward must not read them.
  params = {"conv1_1": {"kernel": np.ones((3, 3, 3, 64), np.float32) * 0.01,
                        "bias": np.zeros(64, np.float32)}}
  out = vgg.apply(params, np.full((1, 8, 8), 128.0), arch="vgg16", layers=["conv1_1"],
                  normalization="caffe")
  assert list(out) == ["conv1_1"] and out["conv1_1"].shape == (1, 8, 8, 64)


def test_apply_jits_and_pools_with_floor():
  params = vgg.init_params(jax.random.key(0), "vgg16")
  f = jax.jit(lambda p, x: vgg.apply(p, x, arch="vgg16", layers=["pool1", "pool3"],
                                     normalization="torchvision"))
  out = f(params, np.zeros((1, 37, 45, 3), np.float32))
  assert out["pool1"].shape == (1, 18, 22, 64) and out["pool3"].shape == (1, 4, 5, 256)
  assert vgg.output_shape("vgg16", "pool3", 37, 45) == (4, 5, 256)


def test_unknown_layer_lists_valid_ones():
  with pytest.raises(ValueError, match=r"conv6_1.*valid layers: conv1_1, conv1_2, pool1"):
    vgg.check_layers("vgg16", ["conv2_2", "conv6_1"])
  with pytest.raises(ValueError, match="unknown architecture"):
    vgg.check_layers("vgg11", ["conv1_1"])


def _params_from_torch(model: TorchVGG) -> dict:
  params = {}
  for m, name in zip(model.features, model.names[1:] + [None]):
    if isinstance(m, torch.nn.Conv2d):
      params[name] = {"kernel": m.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
                      "bias": m.bias.detach().numpy().copy()}
  return params


@pytest.mark.parametrize("h,w", [(1, 5), (2, 4), (2, 2), (3, 3), (5, 7)])
def test_conv3x3_small_maps_against_scipy(h, w):
  # Maps of at most 2 pixels take the im2col path; larger ones XLA's convolution.
  import scipy.signal
  rng = np.random.default_rng(h * 10 + w)
  x = rng.standard_normal((2, h, w, 6))
  k = rng.standard_normal((3, 3, 6, 4))
  b = rng.standard_normal(4)
  ref = np.zeros((2, h, w, 4))
  for n in range(2):
    for o in range(4):
      ref[n, :, :, o] = sum(scipy.signal.correlate2d(x[n, :, :, c], k[:, :, c, o], mode="same")
                            for c in range(6)) + b[o]
  got = vgg.conv3x3(x.astype(np.float32), k.astype(np.float32), b.astype(np.float32))
  np.testing.assert_allclose(got, np.maximum(ref, 0), rtol=1e-4, atol=1e-4)
