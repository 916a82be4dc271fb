"""Feature extraction: batching, one compile per shape, input checks, the per-layer disk cache."""

import numpy as np
import pytest

from jaxmouse import features
from jaxmouse.features import FeatureCache, extract, extract_to_dir
from jaxmouse.models import vgg
from jaxmouse.weights import random_init, save


@pytest.fixture(scope="module")
def weights():
  return random_init("vgg16", seed=0)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(0, 255, (5, 32, 36)).astype(np.float32)


def test_batches_agree_with_one_call(weights, images):
  layers = ["conv2_2", "conv4_1"]
  whole = vgg.apply(weights.params, images, arch="vgg16", layers=layers,
                    normalization="torchvision")
  got = extract(weights, images, layers=layers, batch_size=2)  # 2 + 2 + 1 (zero-padded)
  assert set(got) == set(layers)
  for l in layers:
    assert got[l].shape == (5,) + vgg.output_shape("vgg16", l, 32, 36) and got[l].dtype == np.float32
    np.testing.assert_allclose(got[l], np.asarray(whole[l]), rtol=1e-5, atol=1e-6)


def test_one_compile_per_shape(weights, images):
  layers = ("conv1_2", "pool2")
  forward = features.compiled_forward("vgg16", layers, "torchvision")
  before = forward._cache_size()
  extract(weights, images, layers=list(layers), batch_size=2)
  extract(weights, images[:3] + 1.0, layers=list(layers), batch_size=2)
  assert forward._cache_size() - before == 1  # the short last batch is padded, not recompiled
  extract(weights, images[:, :20, :20], layers=list(layers), batch_size=2)
  assert forward._cache_size() - before == 2


def test_integer_images_and_memmap(tmp_path, weights, images):
  u8 = np.round(images).astype(np.uint8)
  np.save(tmp_path / "x.npy", u8)
  mm = np.load(tmp_path / "x.npy", mmap_mode="r")
  a = extract(weights, mm, layers=["conv1_1"])["conv1_1"]
  b = extract(weights, u8.astype(np.float32), layers=["conv1_1"])["conv1_1"]
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 32)), r"must be \(n, H, W\).*got shape \(4, 32\)"),
    (np.zeros((2, 32, 32, 4)), r"got shape \(2, 32, 32, 4\)"),
    (np.zeros((0, 32, 32)), "empty"),
    (np.where(np.arange(3)[:, None, None] == 1, np.nan, np.zeros((3, 32, 32))),
     r"NaN or inf in 1 image\(s\), first indices \[1\]"),
    (np.full((2, 32, 32), 1000.0), r"span \[1000, 1000\], far outside"),
    (np.full((2, 32, 32), -128.0), "far outside the expected 0-255"),
])
def test_bad_images(weights, bad, match):
  with pytest.raises(ValueError, match=match):
    extract(weights, bad, layers=["conv1_1"])


def test_too_small_and_unknown_layer(weights):
  with pytest.raises(ValueError, match=r"16x16 pixels are too small for layer pool5.*32x32"):
    extract(weights, np.zeros((1, 16, 16)), layers=["pool5"])
  with pytest.raises(ValueError, match=r"unknown layer\(s\) \['fc7'\].*valid layers: conv1_1"):
    extract(weights, np.zeros((1, 32, 32)), layers=["conv1_1", "fc7"])


def test_extract_to_dir_streams_and_leaves_nothing_on_failure(tmp_path, weights, images,
                                                               monkeypatch):
  paths = extract_to_dir(weights, images, tmp_path / "f", layers=["conv3_1", "pool1"],
                         batch_size=2)
  ref = extract(weights, images, layers=["conv3_1", "pool1"])
  for l, p in paths.items():
    np.testing.assert_array_equal(np.load(p, mmap_mode="r"), ref[l])

  real = features.iter_features

  def dies(*a, **kw):
    for i, item in enumerate(real(*a, **kw)):
      if i == 1:
        raise RuntimeError("killed")
      yield item
  monkeypatch.setattr(features, "iter_features", dies)
  with pytest.raises(RuntimeError):
    extract_to_dir(weights, images, tmp_path / "g", layers=["conv1_1", "conv2_1"], batch_size=2)
  assert list((tmp_path / "g").iterdir()) == []  # no partial .npy, no temporaries


def test_cache_one_pass_then_memmapped_reads(tmp_path, weights, images, monkeypatch):
  calls = []
  real = features.extract_to_dir
  monkeypatch.setattr(features, "extract_to_dir",
                      lambda w, x, d, *, layers, **kw: calls.append(tuple(layers)) or
                      real(w, x, d, layers=layers, **kw))
  cache = FeatureCache(tmp_path / "cache", batch_size=2)
  paths = cache.ensure(weights, images, ["conv3_3", "conv1_1", "pool2"])
  assert calls == [("conv1_1", "pool2", "conv3_3")]  # all missing layers in one pass
  assert set(paths) == {"conv1_1", "pool2", "conv3_3"}
  a = cache.layer(weights, images, "pool2")
  assert isinstance(a, np.memmap) and not a.flags.writeable
  np.testing.assert_array_equal(a, extract(weights, images, layers=["pool2"])["pool2"])
  assert len(calls) == 1  # a hit computes nothing
  cache.ensure(weights, images, ["conv1_1", "conv5_1"])
  assert calls[-1] == ("conv5_1",)


def test_cache_keys_weights_and_images(tmp_path, weights, images):
  cache = FeatureCache(tmp_path / "cache")
  a = cache.layer(weights, images, "conv1_1")
  b = cache.layer(weights, images[:, :, ::-1].copy(), "conv1_1")  # other images
  other = random_init("vgg16", seed=1)
  c = cache.layer(other, images, "conv1_1")  # other weights
  assert len({cache.folder(weights, images), cache.folder(other, images),
              cache.folder(weights, images[:, :, ::-1].copy())}) == 3
  assert not np.array_equal(a, b) and not np.array_equal(a, c)
  # A checkpoint folder is the same key as the Weights it holds.
  save(weights, tmp_path / "w")
  assert cache.folder(tmp_path / "w", images) == cache.folder(weights, images)
  np.testing.assert_array_equal(cache.layer(tmp_path / "w", images, "conv1_1"), a)
