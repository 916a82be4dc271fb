"""Round trips through every writable format, the Sensorium file tree as the field writes it,
format detection, bad files named, atomic writes."""

import json
import zipfile

import numpy as np
import pytest

from jaxmouse.data import NeuralDataset, io, load, save, simulate, SimulationConfig
from jaxmouse.data import filetree, plain


@pytest.fixture(scope="module")
def sim():
  config = SimulationConfig(seed=3, image_shape=(24, 32), neurons_per_area=(6, 4, 3, 3),
                            n_images=40, n_test_images=5, n_repeats=3,
                            layers=("conv1_2", "conv2_1", "conv2_1", "conv2_2"))
  ds, _ = simulate(config)
  rng = np.random.default_rng(0)
  meta = {"depth": rng.integers(100, 400, ds.n_neurons),
          "cre_line": rng.choice(["Cux2-CreERT2", "Sst-IRES-Cre"], ds.n_neurons),
          "position": rng.normal(size=(ds.n_neurons, 3)).astype(np.float32)}
  return ds.replace(neuron_meta=meta)


@pytest.mark.parametrize("fmt, name", [("npz", "d.npz"), ("hdf5", "d.h5"), ("filetree", "tree"),
                                       ("tfds", "tfds_dir")])
def test_round_trip_is_identical(sim, tmp_path, fmt, name):
  path = save(sim, tmp_path / name, format=fmt)
  assert io.detect_format(path) == fmt
  back = load(path)
  assert back.equals(sim), (back, sim)
  assert back.trial_image.dtype == np.int64 and back.responses.dtype == np.float32
  assert back.neuron_meta["cre_line"].dtype.kind == "U"
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_tfds_data_source_streams_records(sim, tmp_path):
  from jaxmouse.data import tfds as jtfds

  path = save(sim, tmp_path / "t", format="tfds")
  src = jtfds.data_source(path, "test")
  test = np.flatnonzero(sim.tiers == "test")
  assert len(src) == test.size
  rec = src[len(src) // 2]
  i = int(rec["trial"])
  assert sim.tiers[i] == "test"
  np.testing.assert_array_equal(rec["responses"], sim.responses[i])
  np.testing.assert_array_equal(rec["image"], sim.images[sim.trial_image[i]])
  with pytest.raises(ValueError, match="no split 'final_test'"):
    jtfds.data_source(path, "final_test")


def test_save_refuses_existing_and_unknown_formats(sim, tmp_path):
  save(sim, tmp_path / "a.npz")
  with pytest.raises(FileExistsError, match="a.npz"):
    save(sim, tmp_path / "a.npz")
  save(sim, tmp_path / "a.npz", overwrite=True)
  with pytest.raises(ValueError, match="cannot write format 'allen'"):
    save(sim, tmp_path / "b", format="allen")


def write_sensorium_tree(root, *, rng, n_neurons=4, shape=(6, 10)):
  """A static tree as Sensorium ships it: images per trial, arbitrary frame ids, final_test."""
  frame_ids = np.array([7001, 7002, 7003, 7004, 9001, 9001, 9002, 9002, 9500, 9500, 9500])
  tiers = np.array(["train", "train", "validation", "train", "test", "test", "test", "test",
                    "final_test", "final_test", "final_test"])
  distinct = {i: rng.integers(0, 256, shape).astype(np.uint8) for i in np.unique(frame_ids)}
  responses = rng.gamma(2.0, 1.0, (frame_ids.size, n_neurons)).astype(np.float32)
  for sub in ("data/images", "data/responses", "data/behavior", "meta/neurons", "meta/trials"):
    (root / sub).mkdir(parents=True)
  for t, fid in enumerate(frame_ids):
    np.save(root / f"data/images/{t}.npy", distinct[fid][None])
    np.save(root / f"data/responses/{t}.npy", responses[t])
    np.save(root / f"data/behavior/{t}.npy", rng.normal(size=3))
  np.save(root / "meta/neurons/unit_ids.npy", np.arange(1, n_neurons + 1))
  np.save(root / "meta/neurons/area.npy", np.array(["V1"] * n_neurons))
  np.save(root / "meta/neurons/layer.npy", np.array(["L2/3"] * n_neurons))
  np.save(root / "meta/neurons/animal_ids.npy", np.full(n_neurons, 26872))
  np.save(root / "meta/trials/frame_image_id.npy", frame_ids)
  np.save(root / "meta/trials/tiers.npy", tiers)
  np.save(root / "meta/trials/trial_idx.npy", np.arange(frame_ids.size) * 3)
  return frame_ids, tiers, distinct, responses


def test_sensorium_tree_as_shipped(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / "static26872-17-20-GrayImageNet"
  frame_ids, tiers, distinct, responses = write_sensorium_tree(root, rng=rng)
  ds = load(root)
  assert ds.name == root.name
  assert ds.n_images == len(distinct) == 7  # one image per distinct frame_image_id
  for t in range(ds.n_trials):
    np.testing.assert_array_equal(ds.images[ds.trial_image[t]], distinct[frame_ids[t]])
  np.testing.assert_array_equal(ds.responses, responses)
  np.testing.assert_array_equal(ds.tiers, np.where(tiers == "final_test", "test", tiers))
  np.testing.assert_array_equal(ds.neuron_meta["animal_ids"], 26872)
  assert set(ds.neuron_meta) == {"layer", "animal_ids"}
  dropped = load(root, final_test="drop", check_images=True)
  assert dropped.n_trials == 8 and dropped.n_images == 6
  np.testing.assert_array_equal(dropped.responses, responses[:8])
  small = load(root, image_shape=(3, 5))
  assert small.image_shape == (3, 5)
  # The tree does not say what its responses are; data info says so, whatever their sign.
  from jaxmouse.data import summary
  assert ds.info["response_type"] == "not stated in the file tree"
  shifted = summary.checks(ds.replace(responses=ds.responses - 1.0))
  assert any("response type is not stated" in w for w in shifted)
  assert not any("stated to be" in w for w in shifted), shifted


def test_sensorium_withheld_tiers_are_left_out(tmp_path):
  rng = np.random.default_rng(5)
  root = tmp_path / "static-competition"
  frame_ids, tiers, distinct, responses = write_sensorium_tree(root, rng=rng)
  # A competition release: final_test responses withheld (zeros), test ones present.
  for t in np.flatnonzero(tiers == "final_test"):
    np.save(root / f"data/responses/{t}.npy", np.zeros(4, np.float32))
  with pytest.warns(UserWarning, match=r"tier 'final_test' has all-zero responses in its 3 "
                    r"trials \(withheld"):
    ds = load(root)
  # final_test never folds into test when withheld: test keeps only its own 4 trials.
  assert ds.n_trials == 8 and np.sum(ds.tiers == "test") == 4
  np.testing.assert_array_equal(ds.responses, responses[:8])
  assert "final_test" in ds.info["left_out"] and "withheld" in ds.info["left_out"]
  # Both withheld: the tree holds no scorable tier; both are named.
  for t in np.flatnonzero(tiers == "test"):
    np.save(root / f"data/responses/{t}.npy", np.zeros(4, np.float32))
  with pytest.warns(UserWarning) as caught:
    ds = load(root)
  named = sorted(str(w.message).split("tier ")[1].split(" ")[0] for w in caught)
  assert named == ["'final_test'", "'test'"]
  assert ds.tier_names == ("train", "validation")
  from jaxmouse.data import summary
  assert "no 'test' trials: nothing to score (withheld?)" in summary.checks(ds)
  # Present final_test responses join test, as before.
  full = tmp_path / "static-released"
  _, tiers, _, responses = write_sensorium_tree(full, rng=rng)
  assert np.sum(load(full).tiers == "test") == 7


def test_sensorium_image_identity_is_class_and_id(tmp_path):
  rng = np.random.default_rng(6)
  root = tmp_path / "tree"
  write_sensorium_tree(root, rng=rng)
  # Ids restart per class: (imagenet, 1) and (gabor, 1) are different images.
  classes = np.array(["imagenet"] * 4 + ["gabor"] * 4 + ["imagenet"] * 3)
  ids = np.array([1, 2, 3, 4, 1, 1, 2, 2, 5, 5, 5])
  np.save(root / "meta/trials/frame_image_class.npy", classes)
  np.save(root / "meta/trials/frame_image_id.npy", ids)
  pixels = {key: 20 * k for k, key in enumerate(sorted(set(zip(classes, ids))))}
  for t, key in enumerate(zip(classes, ids)):
    np.save(root / f"data/images/{t}.npy", np.full((1, 6, 10), pixels[key], np.uint8))
  ds = load(root, check_images=True)
  assert ds.n_images == 7  # (imagenet, 1..5) and (gabor, 1..2)
  key = lambda t: (classes[t], ids[t])
  for a in range(ds.n_trials):
    for b in range(ds.n_trials):
      assert (ds.trial_image[a] == ds.trial_image[b]) == (key(a) == key(b))
  assert "frame_image_class" in ds.info["split"]
  # With ids alone, (imagenet, 1) and (gabor, 1) would be one image shown in train and test.
  (root / "meta/trials/frame_image_class.npy").unlink()
  with pytest.raises(ValueError, match="show test images"):
    load(root)


def test_sensorium_config_links_rename_data_folders(tmp_path):
  rng = np.random.default_rng(7)
  root = tmp_path / "tree"
  _, _, _, responses = write_sensorium_tree(root, rng=rng)
  # neuralpredictors' FileTreeDataset.add_link("responses", "targets") keeps data/responses and
  # maps "targets" onto it; a tree may equally store data/targets and link "responses" to it.
  (root / "data/responses").rename(root / "data/targets")
  with pytest.raises(FileNotFoundError, match=r"data/responses: missing folder of responses"):
    load(root)
  (root / "config.json").write_text(json.dumps({"links": {"responses": "targets"}}))
  np.testing.assert_array_equal(load(root).responses, responses)
  (root / "config.json").write_text(json.dumps({"links": {"responses": "spikes"}}))
  with pytest.raises(FileNotFoundError, match=r"data/spikes: missing folder of responses "
                     r"\(config.json links 'responses' -> 'spikes'\)"):
    load(root)


def test_sensorium_zip_is_read_directly(tmp_path):
  rng = np.random.default_rng(8)
  name = "static26872-17-20-GrayImageNet-94c6ff995dac583098847cfecd43e7b6"
  root = tmp_path / "unpacked" / name
  frame_ids, tiers, distinct, responses = write_sensorium_tree(root, rng=rng)
  archive = tmp_path / f"{name}.zip"
  with zipfile.ZipFile(archive, "w") as z:  # as distributed: the tree's folder at the top
    for f in sorted(root.rglob("*")):
      z.write(f, f.relative_to(root.parent).as_posix())
  assert io.detect_format(archive) == "filetree"
  ds = load(archive)
  assert ds.equals(load(root)) and ds.name == name
  np.testing.assert_array_equal(ds.responses, responses)
  # A damaged member is named inside the archive.
  bad = tmp_path / "bad.zip"
  with zipfile.ZipFile(archive) as src, zipfile.ZipFile(bad, "w") as dst:
    for m in src.namelist():
      data = src.read(m)
      dst.writestr(m, data[:-6] if m.endswith("data/responses/5.npy") else data)
  with pytest.raises(ValueError, match=rf"bad.zip:{name}/data/responses/5.npy: unreadable .npy"):
    load(bad)


def test_sensorium_bad_files_are_named(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "tree"
  write_sensorium_tree(root, rng=rng)
  np.save(root / "data/responses/3.npy", np.ones(5, np.float32))
  with pytest.raises(ValueError) as e:
    load(root)
  assert "responses/3.npy" in str(e.value) and "(5,)" in str(e.value) and "4 neurons" in str(e.value)
  np.save(root / "data/responses/3.npy", np.array([1, np.nan, 2, 3], np.float32))
  with pytest.raises(ValueError, match=r"responses/3.npy: field 'responses'.*non-finite.*\(4,\)"):
    load(root)
  np.save(root / "data/responses/3.npy", np.ones(4, np.float32))
  raw = (root / "data/responses/5.npy").read_bytes()
  (root / "data/responses/5.npy").write_bytes(raw[:-6])
  with pytest.raises(ValueError, match=r"responses/5.npy: unreadable .npy"):
    load(root)
  (root / "data/responses/5.npy").unlink()
  with pytest.raises(FileNotFoundError, match=r"responses/5.npy: missing file"):
    load(root)
  (root / "data/responses/5.npy").write_bytes(raw)
  np.save(root / "meta/neurons/area.npy", np.array(["V1"] * 3))
  with pytest.raises(ValueError, match=r"area.npy: shape \(3,\) disagrees with unit_ids.npy \(4 neurons\)"):
    load(root)
  np.save(root / "meta/neurons/area.npy", np.array(["V1"] * 4))
  np.save(root / "meta/trials/tiers.npy", np.array(["train"] * 10 + ["live_test"]))
  with pytest.raises(ValueError, match=r"tiers.npy: unknown tiers \['live_test'\]"):
    load(root)
  np.save(root / "meta/trials/tiers.npy", np.array(["train"] * 4 + ["test"] * 7, dtype=object))
  with pytest.raises(ValueError, match=r"tiers.npy: holds Python objects.*allow_pickle=True"):
    load(root)
  assert load(root, allow_pickle=True).tier_names == ("train", "test")


def test_plain_files_bad_input(sim, tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    load(tmp_path / "missing.npz")
  path = save(sim, tmp_path / "d.npz")
  raw = path.read_bytes()
  (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
  with pytest.raises(ValueError, match=r"cut.npz: not a readable .npz"):
    load(tmp_path / "cut.npz")
  h5 = save(sim, tmp_path / "d.h5")
  raw = h5.read_bytes()
  (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
  with pytest.raises(ValueError, match="cut.h5"):
    load(tmp_path / "cut.h5", format="hdf5")
  arrays = plain.to_arrays(sim)
  del arrays["areas"]
  np.savez(tmp_path / "noarea.npz", **arrays)
  with pytest.raises(ValueError, match=r"noarea.npz: missing field\(s\) \['areas'\]"):
    load(tmp_path / "noarea.npz")
  arrays = plain.to_arrays(sim)
  arrays["unit_ids"] = arrays["unit_ids"][:-2]
  np.savez(tmp_path / "short.npz", **arrays)
  with pytest.raises(ValueError) as e:
    load(tmp_path / "short.npz")
  assert "short.npz" in str(e.value) and "'unit_ids'" in str(e.value)
  assert f"({sim.n_neurons - 2},)" in str(e.value)
  (tmp_path / "junk.bin").write_bytes(b"hello world")
  with pytest.raises(ValueError, match="junk.bin: unrecognised"):
    load(tmp_path / "junk.bin")


def test_user_npz_with_uint8_images_and_string_ids(tmp_path):
  rng = np.random.default_rng(0)
  ti = np.array([0, 1, 2, 2, 3, 3])
  np.savez(tmp_path / "mine.npz", images=rng.integers(0, 256, (4, 5, 7), dtype=np.uint8),
           responses=rng.random((6, 2)), trial_image=ti,
           tiers=np.array(["train", "validation", "test", "test", "test", "test"]),
           unit_ids=np.array(["cell_a", "cell_b"]), areas=np.array(["VISp", "VISl"]),
           **{"neuron_meta/depth": np.array([175, 275])})
  ds = load(tmp_path / "mine.npz")
  assert ds.name == "mine" and ds.images.dtype == np.float32
  assert ds.unit_ids.tolist() == ["cell_a", "cell_b"]
  np.testing.assert_array_equal(ds.neuron_meta["depth"], [175, 275])


def _interrupt_writes(monkeypatch, fmt):
  """Makes the writer of ``fmt`` die part way through (as a kill or Ctrl-C would)."""
  def after(real, n):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
      calls["n"] += 1
      if calls["n"] > n:
        raise KeyboardInterrupt("killed")
      return real(*args, **kwargs)
    return wrapped

  if fmt == "hdf5":
    import h5py
    real = h5py.Group.create_dataset
    monkeypatch.setattr(h5py.Group, "create_dataset",
                        lambda self, key, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed"))
                        if key == "responses" else real(self, key, *a, **k))
  elif fmt == "filetree":
    monkeypatch.setattr(np, "save", after(np.save, 3))  # after three trial files
  else:  # npz: the only write; tfds: neurons.npz comes after the ArrayRecord files
    monkeypatch.setattr(np, "savez", after(np.savez, 0))


@pytest.mark.parametrize("fmt, name", [("npz", "d.npz"), ("hdf5", "d.h5"), ("filetree", "tree"),
                                       ("tfds", "t")])
def test_interrupted_write_leaves_nothing(sim, tmp_path, monkeypatch, fmt, name):
  with monkeypatch.context() as m:
    _interrupt_writes(m, fmt)
    with pytest.raises(KeyboardInterrupt):
      save(sim, tmp_path / name, format=fmt)
  assert list(tmp_path.iterdir()) == []
  # An existing data set survives a failed overwrite unchanged.
  save(sim, tmp_path / name, format=fmt)
  with monkeypatch.context() as m:
    _interrupt_writes(m, fmt)
    with pytest.raises(KeyboardInterrupt):
      save(sim.replace(name="other"), tmp_path / name, format=fmt, overwrite=True)
  assert load(tmp_path / name).equals(sim)
  assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_filetree_statistics_as_neuralpredictors_reads_them(sim, tmp_path):
  root = save(sim, tmp_path / "tree", format="filetree")
  stats = root / "meta/statistics/responses/all"
  np.testing.assert_allclose(np.load(stats / "mean.npy"), sim.responses.mean(axis=0), rtol=1e-5)
  train = sim.responses[sim.tiers == "train"]
  np.testing.assert_allclose(np.load(root / "meta/statistics/responses/stimulus_frame/std.npy"),
                             train.std(axis=0), rtol=1e-5)
  assert np.load(root / "meta/statistics/images/all/max.npy").shape == ()
  assert json.loads((root / "config.json").read_text())["links"] == {}
  assert np.load(root / "data/images/0.npy").shape == (1, 24, 32)
  assert zipfile.is_zipfile(save(sim, tmp_path / "z.npz"))
