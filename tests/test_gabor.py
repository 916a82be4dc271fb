"""The energy-model feature space: the bank's kernels, the strided convolution against SciPy,
quadrature-pair phase invariance and orientation tuning."""

import numpy as np
import pytest
import scipy.signal

from jaxmouse.models import gabor


def test_bank_has_the_studies_layout_and_quadrature_pairs():
  bank = gabor.GaborBank()
  kernel, info = gabor.kernels(bank)
  assert kernel.shape == (21, 21, 1, 2 * 72)
  assert bank.n_pairs == 3 * 3 * 8
  assert sorted(set(info["size"].tolist())) == [6, 11, 21]
  flat = kernel[:, :, 0, :].reshape(-1, kernel.shape[-1])
  np.testing.assert_allclose(flat.sum(axis=0), 0.0, atol=1e-5)  # zero mean
  np.testing.assert_allclose(np.linalg.norm(flat, axis=0), 1.0, rtol=1e-5)
  # Even and odd members of a pair are (nearly) orthogonal: a quadrature pair.
  dots = np.abs((flat[:, 0::2] * flat[:, 1::2]).sum(axis=0))
  assert dots.max() < 0.15, dots.max()


def test_features_match_a_scipy_strided_correlation():
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (3, 25, 31)).astype(np.float32)
  feats = gabor.features(images, kind="both")
  assert feats.shape == (3, 5, 6, 216) == (3,) + gabor.feature_shape((25, 31))
  kernel, _ = gabor.kernels(gabor.GaborBank())
  x = (images - 127.5) / 127.5
  S, stride = kernel.shape[0], 6
  for ch in (0, 1, 77, 143):
    for i in range(3):
      # "SAME" with stride s: output ceil(n / s), total padding max((out - 1) s + S - n, 0),
      # the smaller half before.
      def pads(n):
        out = -(-n // stride)
        total = max((out - 1) * stride + S - n, 0)
        return total // 2, total - total // 2
      (t, b), (l, r) = pads(25), pads(31)
      padded = np.pad(x[i], ((t, b), (l, r)))
      full = scipy.signal.correlate2d(padded, kernel[:, :, 0, ch], mode="valid")
      ref = np.maximum(full[::stride, ::stride], 0)
      np.testing.assert_allclose(feats[i, :, :, ch], ref, rtol=1e-4, atol=1e-4)
  # Energy channels are the norm of their pair's simple (pre-ReLU) responses.
  simple = gabor.features(images, kind="simple")
  energy = gabor.features(images, kind="energy")
  np.testing.assert_allclose(feats[..., :144], simple, rtol=1e-6)
  np.testing.assert_allclose(feats[..., 144:], energy, rtol=1e-6)
  assert np.all(energy + 1e-5 >= np.maximum(simple[..., 0::2], simple[..., 1::2]))


def _grating(theta, phase, *, size=42, wavelength=11 / 2):
  r = np.arange(size) - (size - 1) / 2
  y, x = np.meshgrid(r, r, indexing="ij")
  along = x * np.cos(theta) + y * np.sin(theta)
  return 127.5 + 100 * np.cos(2 * np.pi * along / wavelength + phase)


def test_energy_is_phase_invariant_and_orientation_tuned():
  bank = gabor.GaborBank()
  _, info = gabor.kernels(bank)
  theta = np.pi * 3 / 8
  phases = np.linspace(0, 2 * np.pi, 8, endpoint=False)
  images = np.stack([_grating(theta, p) for p in phases]).astype(np.float32)
  energy = gabor.features(images, kind="energy")[:, 3, 3]  # centre unit, (phases, pairs)
  simple = gabor.features(images, kind="simple")[:, 3, 3]
  pair = np.flatnonzero((info["size"] == 11) & (info["cycles"] == 2)
                        & np.isclose(info["orientation"], theta))[0]
  e = energy[:, pair]
  s = simple[:, 2 * pair]
  assert e.std() / e.mean() < 0.1  # complex cell: the same response at every phase
  assert s.std() / s.mean() > 0.5  # simple cell: strongly phase dependent
  same_scale = (info["size"] == 11) & (info["cycles"] == 2)
  tuning = energy[:, same_scale].mean(axis=0)
  assert np.isclose(info["orientation"][same_scale][np.argmax(tuning)], theta)


def test_bad_images_are_rejected():
  with pytest.raises(ValueError, match="grayscale"):
    gabor.features(np.zeros((2, 10, 10, 3)))
  bad = np.zeros((2, 12, 12), np.float32)
  bad[1, 3, 3] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    gabor.features(bad)
  with pytest.raises(ValueError, match="kind"):
    gabor.features(np.zeros((2, 12, 12)), kind="complex")
  with pytest.raises(ValueError, match="sizes"):
    gabor.GaborBank(sizes=(1,))


@pytest.mark.parametrize("value", [1e6, np.inf, -300.0])
def test_energy_model_applies_the_cnn_paths_image_check(value):
  from jaxmouse.data.stimuli import check_images

  images = np.full((3, 12, 12), 100.0, np.float32)
  images[1, 2, 2] = value
  with pytest.raises(ValueError) as cnn:
    check_images(images, name="energy-model images")
  with pytest.raises(ValueError) as energy:
    gabor.features(images)
  assert str(energy.value) == str(cnn.value)
  assert "energy-model images (3, 12, 12)" in str(energy.value)


def test_images_on_a_0_1_scale_get_a_warning():
  from jaxmouse import JaxmouseWarning

  with pytest.warns(JaxmouseWarning, match=r"span \[0.5, 0.5\]: jaxmouse expects images on a 0-255"):
    gabor.features(np.full((2, 12, 12), 0.5))
