"""Digit domains: the source, the shifted domains' recipes, splits, and real-domain loading."""

import numpy as np
import pytest

from jaxmouse.data import digits


@pytest.fixture(scope="module")
def gray():
  images, labels = digits.sklearn_digits(size=20)
  return images, labels


def test_sklearn_digits_are_centred_white_on_black(gray):
  images, labels = gray
  assert images.shape == (1797, 20, 20) and images.dtype == np.float32
  assert labels.shape == (1797,) and set(np.unique(labels)) == set(range(10))
  assert images.min() >= 0 and images.max() <= 1
  inner = int(round(20 * 0.75))
  top = (20 - inner) // 2
  border = np.ones((20, 20), bool)
  border[top:top + inner, top:top + inner] = False
  assert images[:, border].max() == 0  # the digit sits in the centred box only
  assert images.mean() < 0.35  # mostly background


def test_stratified_split_is_disjoint_and_balanced(gray):
  _, labels = gray
  train, test = digits.stratified_split(labels, test_fraction=0.4, seed=0)
  assert np.intersect1d(train, test).size == 0 and train.size + test.size == labels.size
  for c in range(10):
    frac = np.mean(labels[test] == c) / np.mean(labels == c)
    assert frac == pytest.approx(1.0, abs=0.05)
  np.testing.assert_array_equal(test, digits.stratified_split(labels, test_fraction=0.4, seed=0)[1])
  with pytest.raises(ValueError, match="test_fraction"):
    digits.stratified_split(labels, test_fraction=1.0, seed=0)


def test_mnist_m_is_the_absolute_difference_with_a_photo_patch(gray):
  images = gray[0][:5]
  photo = np.zeros((30, 40, 3), np.float32)
  photo[..., 0], photo[..., 1], photo[..., 2] = 0.2, 0.9, 0.5
  out = digits.mnist_m(images, np.random.default_rng(0), photos=[photo])
  np.testing.assert_allclose(out, np.abs(photo[:20, :20][None] - images[..., None]), atol=1e-6)
  bank = digits.photo_bank()
  assert len(bank) >= 10 and all(p.ndim == 3 and p.shape[-1] == 3 for p in bank)
  assert all(0 <= p.min() and p.max() <= 1 for p in bank)


def test_shifted_domains_change_style_not_shape(gray):
  from jaxmouse.models.neurn import neurn

  images = gray[0][:16]
  rng = np.random.default_rng(0)
  inv = digits.inverted(images, rng)
  assert inv.shape == (16, 20, 20, 3)
  assert np.all(inv[:, 0, 0] > 0.55)  # bright background: contrast inverted
  # The inversion is an affine change per channel, which NeuRN removes exactly.
  np.testing.assert_allclose(np.asarray(neurn(inv)), np.asarray(neurn(digits._rgb(images))),
                             atol=1e-4)
  blurred = digits.blur_noise(images, np.random.default_rng(1), noise=0.0)
  assert blurred.shape == (16, 20, 20, 3)
  grad = lambda x: np.abs(np.diff(x, axis=1)).mean()
  assert grad(blurred[..., 0]) < grad(images)
  noisy = digits.blur_noise(images, np.random.default_rng(1))
  assert 0 <= noisy.min() and noisy.max() <= 1 and np.abs(noisy - blurred).mean() > 0.05
  clut = digits.clutter(images, np.random.default_rng(2))
  assert np.all(clut[..., 0] >= images - 1e-7)  # the digit is drawn on top
  assert (clut[..., 0] > images + 0.1).mean() > 0.05  # and fragments fill the background


def test_make_domains_is_deterministic_and_independent_of_the_others():
  a = digits.make_domains(size=16, seed=3, domains=("digits", "clutter", "blurnoise"))
  b = digits.make_domains(size=16, seed=3, domains=("blurnoise",))
  np.testing.assert_array_equal(a["blurnoise"].x_test, b["blurnoise"].x_test)
  c = digits.make_domains(size=16, seed=4, domains=("blurnoise",))
  assert not np.array_equal(a["blurnoise"].x_test, c["blurnoise"].x_test)
  d = a["digits"]
  assert d.x_train.shape[1:] == (16, 16, 3) and d.size == 16
  assert d.x_train.shape[0] + d.x_test.shape[0] == 1797
  np.testing.assert_array_equal(a["clutter"].y_test, d.y_test)  # same digits in every domain
  with pytest.raises(ValueError, match="unknown domains"):
    digits.make_domains(domains=("mnist2",))


def test_real_domains_load_from_npz(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "usps.npz", x_train=rng.integers(0, 256, (7, 16, 16), dtype=np.uint8),
           y_train=np.arange(7), x_test=rng.integers(0, 256, (5, 16, 16, 1), dtype=np.uint8),
           y_test=np.arange(5))
  dom = digits.load_external("usps", data_dir=tmp_path, size=32)
  assert dom.x_train.shape == (7, 32, 32, 3) and dom.x_test.shape == (5, 32, 32, 3)
  assert 0 <= dom.x_train.min() and dom.x_train.max() <= 1
  np.testing.assert_allclose(dom.x_train[..., 0], dom.x_train[..., 2])  # gray tiled to RGB
  np.testing.assert_array_equal(dom.y_test, np.arange(5))
  both = digits.make_domains(size=32, domains=("digits", "usps"), data_dir=tmp_path)
  assert set(both) == {"digits", "usps"}
  np.savez(tmp_path / "mnist_m.npz", x_train=np.zeros((2, 8, 8, 3)), y_train=np.zeros(2))
  with pytest.raises(ValueError, match="missing arrays"):
    digits.load_external("mnist_m", data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="usps.npz"):
    digits.load_external("usps", data_dir=tmp_path / "nowhere")
  with pytest.raises(ValueError, match="data directory"):
    digits.load_external("svhn", data_dir=None)


def test_tfds_records_are_converted(monkeypatch, tmp_path):
  import tensorflow_datasets as tfds

  calls = []

  def fake_source(name, *, split, data_dir, download):
    calls.append((name, split, download))
    n = 4 if split == "train" else 3
    return [{"image": np.full((32, 32, 3), 10 * i, np.uint8), "label": i} for i in range(n)]

  monkeypatch.setattr(tfds, "data_source", fake_source)
  dom = digits.load_external("svhn", data_dir=tmp_path, size=32)
  assert calls == [("svhn_cropped", "train", False), ("svhn_cropped", "test", False)]
  assert dom.x_train.shape == (4, 32, 32, 3) and dom.x_test.shape == (3, 32, 32, 3)
  np.testing.assert_allclose(dom.x_train[3], 30 / 255, atol=1e-6)

  def missing(*a, **k):
    raise KeyError("not prepared")

  monkeypatch.setattr(tfds, "data_source", missing)
  with pytest.raises(FileNotFoundError, match="no download"):
    digits.load_external("mnist", data_dir=tmp_path)
