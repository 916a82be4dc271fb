"""NeuralDataset: validation on creation, splits, repeat statistics against loop references."""

import numpy as np
import pytest

from jaxmouse.data import NeuralDataset


def make(seed=0, n_neurons=5, n_train=12, n_val=4, n_test=3, reps=4, shape=(8, 12), **changes):
  """Images 0..n_train-1 train, then validation, then test images shown ``reps`` times."""
  rng = np.random.default_rng(seed)
  n_images = n_train + n_val + n_test
  test_images = np.arange(n_train + n_val, n_images)
  trial_image = np.concatenate([np.arange(n_train + n_val), np.repeat(test_images, reps)])
  tiers = np.array(["train"] * n_train + ["validation"] * n_val + ["test"] * (n_test * reps))
  order = rng.permutation(trial_image.size)
  fields = dict(images=rng.uniform(0, 255, (n_images, *shape)),
                responses=rng.poisson(3.0, (trial_image.size, n_neurons)).astype(np.float32),
                trial_image=trial_image[order], tiers=tiers[order],
                unit_ids=np.arange(100, 100 + n_neurons),
                areas=np.array(["V1", "LM", "V1", "AL", "LM"][:n_neurons]),
                neuron_meta={"depth": rng.integers(100, 400, n_neurons)}, name="toy")
  fields.update(changes)
  return NeuralDataset(**fields)


def test_fields_are_converted_and_sized():
  ds = make()
  assert ds.images.dtype == np.float32 and ds.responses.dtype == np.float32
  assert ds.trial_image.dtype == np.int64 and ds.tiers.dtype.kind == "U"
  assert (ds.n_images, ds.n_trials, ds.n_neurons, ds.image_shape) == (19, 28, 5, (8, 12))
  assert ds.area_names == ("V1", "LM", "AL")  # order of first appearance
  assert ds.tier_names == ("train", "validation", "test")
  assert ds.neurons_per_area() == {"V1": 2, "LM": 2, "AL": 1}
  assert "toy" in repr(ds) and "V1: 2" in repr(ds)


@pytest.mark.parametrize("changes, field, words", [
    (lambda d: {"responses": np.where(np.arange(d.n_neurons) == 2, np.nan, d.responses)},
     "responses", ["non-finite", "(28, 5)", "neuron 2"]),
    (lambda d: {"responses": np.where(np.arange(d.n_neurons) == 1, np.inf, d.responses)},
     "responses", ["non-finite", "(28, 5)"]),
    (lambda d: {"trial_image": np.where(np.arange(d.n_trials) == 3, 19, d.trial_image)},
     "trial_image", ["missing images", "image 19", "(19, 8, 12)"]),
    (lambda d: {"trial_image": np.where(np.arange(d.n_trials) == 3, -1, d.trial_image)},
     "trial_image", ["missing images"]),
    (lambda d: {"trial_image": d.trial_image[:-1]}, "trial_image", ["(28,)", "(27,)"]),
    (lambda d: {"unit_ids": d.unit_ids[:4]}, "unit_ids", ["(5,)", "(4,)", "(28, 5)"]),
    (lambda d: {"areas": np.array(["V1"] * 6)}, "areas", ["(5,)", "(6,)"]),
    (lambda d: {"neuron_meta": {"depth": np.zeros(3)}}, "neuron_meta['depth']", ["5 neurons", "(3,)"]),
    (lambda d: {"tiers": np.where(d.tiers == "validation", "final_test", d.tiers)},
     "tiers", ["unknown tiers", "final_test"]),
    (lambda d: {"images": d.images[..., 0]}, "images", ["(n_images, H, W)", "(19, 8)"]),
    (lambda d: {"responses": d.responses[:, :, None]}, "responses", ["(28, 5, 1)"]),
])
def test_bad_fields_are_named_with_shapes(changes, field, words):
  ds = make()
  with pytest.raises(ValueError) as e:
    ds.replace(**changes(ds))
  msg = str(e.value)
  assert f"field {field!r}" in msg and "toy" in msg
  for w in words:
    assert w in msg, msg


def test_test_images_need_two_repeats():
  with pytest.raises(ValueError, match=r"fewer than 2 times.*repeated"):
    make(reps=1)
  ds = make()
  # One test image shown in a training trial as well: leakage is refused.
  t = int(np.flatnonzero(ds.tiers == "train")[0])
  test_img = int(ds.trial_image[ds.tiers == "test"][0])
  with pytest.raises(ValueError, match="train/validation trials show test images"):
    ds.replace(trial_image=np.where(np.arange(ds.n_trials) == t, test_img, ds.trial_image))


def test_tier_and_repeat_average_match_loops():
  ds = make(seed=1)
  ti, r = ds.tier("test")
  mask = ds.tiers == "test"
  np.testing.assert_array_equal(ti, ds.trial_image[mask])
  np.testing.assert_array_equal(r, ds.responses[mask])
  index, means = ds.repeat_average("test")
  for j, i in enumerate(index):
    expected = ds.responses[mask & (ds.trial_image == i)].mean(axis=0)
    np.testing.assert_allclose(means[j], expected, rtol=1e-6)
  np.testing.assert_array_equal(ds.repeats("test"), [4, 4, 4])
  np.testing.assert_array_equal(ds.tier_images("validation"), np.arange(12, 16))
  with pytest.raises(ValueError, match="unknown tier"):
    ds.tier("final_test")
  with pytest.raises(ValueError, match="no 'validation' trials"):
    make(n_val=0).tier("validation")


def test_noise_variance_and_ev_against_loop():
  ds = make(seed=2, reps=6)
  ti, r = ds.tier("test")
  r = r.astype(np.float64)
  per_image = [r[ti == i].var(axis=0, ddof=1) for i in np.unique(ti)]
  noise = np.mean(per_image, axis=0)
  np.testing.assert_allclose(ds.noise_variance("test"), noise, rtol=1e-10)
  total = r.var(axis=0, ddof=1)
  np.testing.assert_allclose(ds.explainable_variance_fraction(), (total - noise) / total, rtol=1e-10)


def test_select_areas_and_neurons():
  ds = make()
  v1 = ds.select_areas("V1")
  assert v1.area_names == ("V1",) and v1.n_neurons == 2
  np.testing.assert_array_equal(v1.unit_ids, [100, 102])
  np.testing.assert_array_equal(v1.responses, ds.responses[:, [0, 2]])
  np.testing.assert_array_equal(v1.neuron_meta["depth"], ds.neuron_meta["depth"][[0, 2]])
  both = ds.select_areas(["AL", "LM"])
  assert set(both.area_names) == {"LM", "AL"} and both.n_neurons == 3
  with pytest.raises(ValueError) as e:
    ds.select_areas(["V1", "RL"])
  assert "['RL']" in str(e.value) and "['V1', 'LM', 'AL']" in str(e.value)


def test_select_trials_drops_unused_images():
  ds = make()
  sub = ds.select_trials(ds.tiers == "test")
  assert sub.n_images == 3 and sub.tier_names == ("test",)
  np.testing.assert_array_equal(sub.images[sub.trial_image], ds.images[ds.trial_image[ds.tiers == "test"]])


def test_resize_and_crop():
  ds = make(shape=(16, 24))
  flat = ds.replace(images=np.full_like(ds.images, 77.0)).resize((4, 6))
  assert flat.image_shape == (4, 6)
  np.testing.assert_allclose(flat.images, 77.0, rtol=1e-5)
  # A linear ramp along x stays the ramp sampled at the output pixel centres (away from the
  # borders, where the antialiasing kernel is cut).
  ramp = np.broadcast_to(np.arange(24, dtype=np.float32) * 10, (ds.n_images, 16, 24))
  small = ds.replace(images=ramp).resize((8, 12))
  np.testing.assert_allclose(small.images[0, 3, 1:-1], (np.arange(12) * 20 + 5)[1:-1], atol=1e-3)
  crop = ds.crop(top=2, left=3, height=10, width=12)
  np.testing.assert_array_equal(crop.images, ds.images[:, 2:12, 3:15])
  np.testing.assert_array_equal(ds.center_crop((8, 8)).images, ds.images[:, 4:12, 8:16])
  with pytest.raises(ValueError, match="does not fit"):
    ds.crop(top=10, left=0, height=10, width=4)


def test_resize_keeps_the_aspect_ratio():
  # A 20x40 image, dark left half, bright right half, into a square 10x10.
  img = np.zeros((20, 40), np.float32)
  img[:, 20:] = 255.0
  ds = make(shape=(20, 40)).replace(images=np.broadcast_to(img, (19, 20, 40)))
  pad = ds.resize((10, 10))  # the default: the whole image, scaled by 1/4 to 5x10, centred
  assert pad.image_shape == (10, 10)
  np.testing.assert_allclose(pad.images[:, :2], 127.5)  # margins: the images' mean gray
  np.testing.assert_allclose(pad.images[:, 7:], 127.5)
  np.testing.assert_allclose(pad.images[0, 2:7, :4], 0.0, atol=1e-3)
  np.testing.assert_allclose(pad.images[0, 2:7, 6:], 255.0, atol=1e-3)
  crop = ds.resize((10, 10), fit="crop")  # the central 20x20 window, scaled by 1/2
  np.testing.assert_allclose(crop.images[0, :, :4], 0.0, atol=1e-3)
  np.testing.assert_allclose(crop.images[0, :, 6:], 255.0, atol=1e-3)
  stretch = ds.resize((10, 10), fit="stretch")
  np.testing.assert_allclose(stretch.images[0, :, :4], 0.0, atol=1e-3)
  np.testing.assert_allclose(stretch.images[0, :, 6:], 255.0, atol=1e-3)
  assert not np.allclose(stretch.images, pad.images)
  # The target's own aspect ratio: all three agree (Sensorium's 144x256 -> 36x64).
  same = [ds.resize((5, 10), fit=f).images for f in ("pad", "crop", "stretch")]
  np.testing.assert_allclose(same[0], same[1], atol=1e-4)
  np.testing.assert_allclose(same[0], same[2], atol=1e-4)
  # Allen's 918x1174 templates into 36x64 and 36x46 (their own aspect ratio).
  from jaxmouse.data.dataset import fitted_shape
  assert fitted_shape((918, 1174), (36, 64)) == (36, 46)
  assert fitted_shape((918, 1174), (36, 46)) == (36, 46)
  assert fitted_shape((918, 1174), (36, 64), "crop") == (50, 64)
  with pytest.raises(ValueError, match="resize fit must be one of"):
    ds.resize((10, 10), fit="squash")


def test_info_is_validated_and_kept():
  ds = make(info={"response_type": np.bytes_(b"dF/F"), "response_window": "0-500 ms"})
  assert ds.info == {"response_type": "dF/F", "response_window": "0-500 ms"}
  assert ds.select_areas("V1").info == ds.info and ds.resize((4, 6)).info == ds.info
  assert not ds.equals(ds.replace(info={}))
  with pytest.raises(ValueError, match=r"field \"info\['response_type'\]\".*one string"):
    make(info={"response_type": np.array(["a", "b"])})


def test_normalize_responses_divides_by_train_std():
  ds = make(seed=3)
  norm = ds.normalize_responses()
  _, train = norm.tier("train")
  np.testing.assert_allclose(train.std(axis=0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(norm.responses * norm.neuron_meta["response_std"], ds.responses,
                             rtol=1e-5)
  assert (norm.responses >= 0).all()


def test_equals():
  ds = make()
  assert ds.equals(make())
  assert not ds.equals(make(seed=5))
  assert not ds.equals(ds.replace(name="other"))
  assert not ds.equals(ds.replace(neuron_meta={}))
