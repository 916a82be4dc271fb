"""Allen Brain Observatory NWB 1 files, written in the layout AllenSDK's BrainObservatoryCache
keeps them (ophys_experiment_data/<id>.nwb with the paths BrainObservatoryNwbDataSet reads,
ophys_experiment_events/<id>_events.npz): window means against a loop reference, blanks,
presentation order, several experiments combined, events, sessions without natural scenes, tiers
by image, bad files named."""

import h5py
import jax
import numpy as np
import pytest

from jaxmouse.data import allen, io, load

N_IMAGES, REPEATS, FRAME_STEP, WINDOW = 7, 5, 9, 7  # WINDOW: frames of one presentation


def write_experiment(path, *, rng, n_cells, area, cre, depth, session, template, reps=None,
                     blanks=6, transpose=False, window=2 * WINDOW):
  """An experiment with ``reps[i]`` presentations of image i (random order) and some blanks.

  The presentation table is written in shuffled row order (the loader must sort it by start).
  The reference holds, per image, the means over ``[start, start + window)`` of its
  presentations in time order (default: AllenSDK's [start, start + 2 x duration))."""
  reps = np.full(N_IMAGES, REPEATS) if reps is None else np.asarray(reps)
  seq = rng.permutation(np.concatenate([np.repeat(np.arange(N_IMAGES), reps),
                                        np.full(blanks, -1)]))
  starts = 30 + np.arange(seq.size) * FRAME_STEP + rng.integers(0, 2, seq.size)
  n_frames = starts[-1] + 40
  dff = rng.normal(0.1, 1.0, (n_cells, n_frames)).astype(np.float32)
  rows = rng.permutation(seq.size)
  allen.write_nwb(path, dff=dff, frames=seq[rows],
                  frame_duration=np.stack([starts, starts + WINDOW], 1)[rows],
                  cell_specimen_ids=session * 1000 + np.arange(n_cells), template=template,
                  location=area, imaging_depth_um=depth, genotype=cre, session_id=session)
  if transpose:  # some exports store (frames, cells); the loader accepts both
    with h5py.File(path, "r+") as f:
      data = f[allen.DFF][()]
      del f[allen.DFF]
      f[allen.DFF] = data.T
  # Loop reference: per image, the window means of its presentations in time order.
  ref = {i: [dff[:, s:s + window].mean(axis=1) for s, fr in zip(starts, seq) if fr == i]
         for i in range(N_IMAGES)}
  return ref, dff, seq, starts


@pytest.fixture
def experiments(tmp_path):
  rng = np.random.default_rng(0)
  template = rng.integers(0, 256, (N_IMAGES, 24, 30), dtype=np.uint8)
  specs = [("VISp", "Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt", 175, 4, None),
           ("VISal", "Sst-IRES-Cre/wt;Ai148(TIT2L-GC6f-ICL-tTA2)/wt", 275, 3, [5, 5, 4, 5, 5, 6, 5]),
           ("VISpm", "Vip-IRES-Cre/wt;Ai148(TIT2L-GC6f-ICL-tTA2)/wt", 375, 2, None)]
  refs, paths = [], []
  for k, (area, cre, depth, n, reps) in enumerate(specs):
    path = tmp_path / "ophys_experiment_data" / f"{500 + k}.nwb"
    ref, *_ = write_experiment(path, rng=rng, n_cells=n, area=area, cre=cre, depth=depth,
                               session=500 + k, template=template if k != 1 else None, reps=reps,
                               transpose=(k == 2))
    refs.append(ref)
    paths.append(path)
  return paths, refs, template


def test_one_experiment_matches_the_loop(experiments):
  paths, refs, template = experiments
  ds = load(paths[0], n_test_images=2)
  assert io.detect_format(paths[0]) == "allen"
  assert ds.n_trials == N_IMAGES * REPEATS  # blanks excluded
  assert ds.area_names == ("VISp",) and ds.n_neurons == 4
  np.testing.assert_array_equal(ds.images, template.astype(np.float32))
  seen = {}
  for t in range(ds.n_trials):
    i = int(ds.trial_image[t])
    k = seen.get(i, 0)
    seen[i] = k + 1
    np.testing.assert_allclose(ds.responses[t], refs[0][i][k], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ds.unit_ids, 500000 + np.arange(4))
  assert ds.neuron_meta["cre_line"][0] == "Cux2-CreERT2"
  assert ds.neuron_meta["genotype"][0] == "Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt"
  assert ds.neuron_meta["cell_class"][0] == "excitatory"
  # No events files next to these: dF/F over AllenSDK's window, and the data set says so.
  assert ds.info["response_type"] == "dF/F"
  assert ds.info["response_window"].startswith("[start, start + 2 x duration)")
  assert ds.info["response_window_ms"] == "0-467"  # 14 frames at 30 Hz
  assert ds.neuron_meta["depth"][0] == 175 and ds.neuron_meta["experiment_id"][0] == "500"


def test_experiments_combine_as_pseudo_trials(experiments):
  paths, refs, _ = experiments
  ds = load(paths[0].parent, n_test_images=3, seed=1)  # the folder: every .nwb in it
  assert ds.area_names == ("VISp", "VISal", "VISpm") and ds.n_neurons == 9
  # Image 2 has 4 repeats in the VISal file, so it keeps 4; the others keep 5.
  np.testing.assert_array_equal(np.bincount(ds.trial_image), [5, 5, 4, 5, 5, 5, 5])
  seen = {}
  for t in range(ds.n_trials):
    i = int(ds.trial_image[t])
    k = seen.get(i, 0)
    seen[i] = k + 1
    expected = np.concatenate([refs[0][i][k], refs[1][i][k], refs[2][i][k]])
    np.testing.assert_allclose(ds.responses[t], expected, rtol=1e-5, atol=1e-6)
  classes = dict(zip(ds.areas, ds.neuron_meta["cell_class"]))
  assert classes == {"VISp": "excitatory", "VISal": "inhibitory", "VISpm": "inhibitory"}
  np.testing.assert_array_equal(ds.neuron_meta["depth"], [175] * 4 + [275] * 3 + [375] * 2)


def test_tiers_are_a_seeded_image_split(experiments):
  paths, _, _ = experiments
  ds = load(paths[0], n_test_images=3, validation_fraction=0.5, seed=4)
  test = ds.tier_images("test")
  assert test.size == 3
  np.testing.assert_array_equal(ds.repeats("test"), REPEATS)  # all repeats of a test image
  # By image: half of the 4 other images in validation, with all their repeats; no image is in
  # two tiers.
  assert ds.tier_images("validation").size == 2 and ds.tier_images("train").size == 2
  np.testing.assert_array_equal(ds.repeats("validation"), REPEATS)
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not np.intersect1d(ds.tier_images(a), ds.tier_images(b)).size, (a, b)
  assert ds.info["split"].startswith("by image: 3 test images drawn with seed 4")
  assert ds.equals(load(paths[0], n_test_images=3, validation_fraction=0.5, seed=4))
  other = load(paths[0], n_test_images=3, validation_fraction=0.5, seed=5)
  assert not np.array_equal(other.tiers, ds.tiers)
  fixed = load(paths[0], test_images=[0, 6])
  np.testing.assert_array_equal(fixed.tier_images("test"), [0, 6])
  with pytest.raises(ValueError, match="n_test_images"):
    load(paths[0], n_test_images=N_IMAGES)


def test_windows(experiments, tmp_path):
  rng = np.random.default_rng(3)
  path = tmp_path / "solo" / "900.nwb"
  _, dff, seq, starts = write_experiment(path, rng=rng, n_cells=2, area="VISl", cre="Rbp4-Cre",
                                         depth=375, session=900, template=np.zeros((N_IMAGES, 4, 4)))
  first = int(np.flatnonzero(seq == 0)[0])  # the first showing of image 0 in time
  s = starts[first]
  windows = {(2, 5): (s + 2, s + 5), "2:5": (s + 2, s + 5), "presentation": (s, s + WINDOW),
             "allen": (s, s + 2 * WINDOW), None: (s, s + 2 * WINDOW),
             # timestamps are frame / 30 s: 100-300 ms holds the frames at 100, 133, ..., 267 ms
             "100-300ms": (s + 3, s + 9)}
  for window, (a, b) in windows.items():
    ds = load(path, window=window, test_images=[1])
    t = int(np.flatnonzero(ds.trial_image == 0)[0])
    np.testing.assert_allclose(ds.responses[t], dff[:, a:b].mean(1), rtol=1e-5, err_msg=window)
  assert load(path, window="100-300ms", test_images=[1]).info["response_window"] == \
      "100-300 ms after onset"
  with pytest.raises(ValueError, match="window must be"):
    load(path, window="late")
  with pytest.raises(ValueError, match=r"900.nwb: the response window of presentation 0 .* does "
                     r"not fit"):
    load(path, window=(0, 500))


def test_events_are_preferred_where_allensdk_keeps_them(experiments, tmp_path):
  paths, _, _ = experiments
  with pytest.raises(FileNotFoundError, match="no L0 events file"):
    load(paths[0], response="events", test_images=[1])
  rng = np.random.default_rng(4)
  folder = paths[0].parent.parent / "ophys_experiment_events"
  folder.mkdir()
  events = {}
  for p in paths:
    n_cells = allen.read_experiment(p)["cell_ids"].size
    with h5py.File(p, "r") as f:
      n_frames = f[allen.DFF].shape[1] if p != paths[2] else f[allen.DFF].shape[0]
    ev = np.abs(rng.normal(size=(n_cells, n_frames))) * (rng.random((n_cells, n_frames)) < 0.1)
    events[p] = ev.astype(np.float32)
  # Events for two of three files: dF/F for all, with a warning naming the third.
  for p in paths[:2]:
    np.savez(folder / f"{p.stem}_events.npz", ev=events[p])
  with pytest.warns(UserWarning, match=r"L0 events found for some files only.*502.nwb"):
    ds = load(paths[0].parent, n_test_images=2)
  assert ds.info["response_type"] == "dF/F"
  np.savez(folder / f"{paths[2].stem}_events.npz", ev=events[paths[2]])
  ds = load(paths[0].parent, n_test_images=2)
  assert ds.info["response_type"] == "L0 events" and (ds.responses >= 0).all()
  dff = load(paths[0].parent, n_test_images=2, response="dff")
  assert dff.info["response_type"] == "dF/F" and (dff.responses < 0).any()
  # The events file is cells x frames ('ev'); its window means follow the same table.
  exp = allen.read_experiment(paths[0], response="events")
  with h5py.File(paths[0], "r") as f:
    pres = "stimulus/presentation/natural_scenes_stimulus"
    frames = f[f"{pres}/data"][()].reshape(-1)
    fd = f[f"{pres}/frame_duration"][()].astype(int)
  order = np.argsort(fd[:, 0])
  frames, fd = frames[order], fd[order]
  keep = frames >= 0
  ref = np.stack([events[paths[0]][:, a:a + 2 * (b - a)].mean(1) for a, b in fd[keep]])
  np.testing.assert_allclose(exp["responses"], ref, rtol=1e-5)
  bad = folder / f"{paths[0].stem}_events.npz"
  np.savez(bad, events=events[paths[0]])
  with pytest.raises(ValueError, match=r"500_events.npz: no array 'ev'"):
    load(paths[0], response="events")


def test_files_without_natural_scenes_are_skipped(experiments):
  paths, refs, _ = experiments
  rng = np.random.default_rng(9)
  folder = paths[0].parent
  for k, session_type in ((0, "three_session_A"), (1, "three_session_C2")):
    allen.write_nwb(folder / f"{600 + k}.nwb", dff=rng.normal(size=(3, 200)), frames=None,
                    frame_duration=None, cell_specimen_ids=np.arange(3), template=None,
                    location="VISp", imaging_depth_um=175, genotype="Cux2-CreERT2/wt",
                    session_id=600 + k, session_type=session_type)
  with pytest.warns(UserWarning, match=r"skipped 2 NWB file\(s\) without the natural_scenes "
                    r"stimulus.*600.nwb.*601.nwb"):
    ds = load(folder, n_test_images=3, seed=1)
  assert ds.n_neurons == 9 and "600.nwb" in ds.info["left_out"]
  with pytest.raises(ValueError, match="session type three_session_A"):
    allen.read_experiment(folder / "600.nwb")
  with pytest.raises(ValueError, match="none of .* holds the natural_scenes stimulus"):
    load([folder / "600.nwb", folder / "601.nwb"])
  # A glob pattern, as the command line passes it, reads the same files.
  with pytest.warns(UserWarning, match="skipped 2"):
    assert load(str(folder / "*.nwb"), n_test_images=3, seed=1).equals(ds)
  with pytest.raises(FileNotFoundError, match=r"nothing-\*.nwb: no file matches"):
    load(str(folder / "nothing-*.nwb"))


def test_template_resized_keeping_its_aspect_ratio(experiments):
  paths, _, template = experiments  # 24 x 30
  ds = load(paths[0], n_test_images=2, image_shape=(12, 20))
  assert ds.image_shape == (12, 20)
  # Scaled by 1/2 to 12 x 15 and centred; the margins are the stack's mean gray.
  np.testing.assert_allclose(ds.images[:, :, :2], template.mean(), rtol=1e-5)
  np.testing.assert_allclose(ds.images[:, :, -3:], template.mean(), rtol=1e-5)
  inner = jax.image.resize(template.astype(np.float32), (N_IMAGES, 12, 15), "linear",
                           antialias=True)
  np.testing.assert_allclose(ds.images[:, :, 2:17], inner, rtol=1e-4, atol=1e-3)


def test_bad_files_are_named(experiments, tmp_path):
  paths, _, _ = experiments
  raw = paths[0].read_bytes()
  cut = tmp_path / "cut.nwb"
  cut.write_bytes(raw[: len(raw) // 3])
  with pytest.raises(ValueError, match="cut.nwb"):
    load(cut)
  with pytest.raises(FileNotFoundError, match="nope.nwb"):
    allen.read_experiment(tmp_path / "nope.nwb")
  broken = tmp_path / "broken.nwb"
  broken.write_bytes(raw)
  with h5py.File(broken, "r+") as f:
    del f[allen.CELL_IDS]
    f[allen.CELL_IDS] = np.arange(9)
  with pytest.raises(ValueError, match=r"broken.nwb: .*DfOverF.*shape \(4, \d+\).*lists 9 cells"):
    load(broken)
  with h5py.File(broken, "r+") as f:
    del f[allen.CELL_IDS]
    f[allen.CELL_IDS] = np.arange(4)
    d = f[allen.DFF][()]
    d[1, 40:60] = np.nan
    del f[allen.DFF]
    f[allen.DFF] = d
  with pytest.raises(ValueError, match=r"broken.nwb: field .*DfOverF.*non-finite"):
    load(broken)
  with h5py.File(broken, "r+") as f:
    del f["stimulus/presentation/natural_scenes_stimulus/frame_duration"]
  with pytest.raises(ValueError, match="broken.nwb: missing 'stimulus/presentation/natural_scenes_"):
    load(broken)
  late = tmp_path / "late.nwb"
  late.write_bytes(raw)
  with h5py.File(late, "r+") as f:
    fd = f["stimulus/presentation/natural_scenes_stimulus/frame_duration"]
    fd[-1] = [10**6, 10**6 + 7]
  with pytest.raises(ValueError, match=r"late.nwb: the response window of presentation \d+ "
                     r"\(frames \[1000000, 1000014\) for window 'allen'\) does not fit"):
    load(late)
  with pytest.raises(ValueError, match="holds the natural_scenes template"):
    load([paths[1]])  # the VISal file has no template stack


def test_helpers():
  assert allen.cre_line("Slc17a7-IRES2-Cre/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt") == "Slc17a7-IRES2-Cre"
  assert allen.cell_class("Pvalb-IRES-Cre") == "inhibitory"
  assert allen.cell_class("Emx1-IRES-Cre") == "excitatory"


def test_data_info_states_responses_and_flags_choices(experiments, capsys):
  from jaxmouse.cli import main
  from jaxmouse.data import summary

  paths, _, _ = experiments
  folder = paths[0].parent
  allen.write_nwb(folder / "601.nwb", dff=np.zeros((2, 50)), frames=None, frame_duration=None,
                  cell_specimen_ids=np.arange(2), template=None, location="VISp",
                  imaging_depth_um=175, genotype="Cux2-CreERT2/wt", session_id=601,
                  session_type="three_session_A")
  assert main(["data", "info", str(folder), "--test-images", "2"]) == 0
  out, err = capsys.readouterr()
  assert err.strip().startswith("jaxmouse data: warning: skipped 1 NWB file(s)")
  assert "601.nwb" in err
  assert len(err.strip().splitlines()) == 1
  assert "responses  dF/F;" in out and "% negative" in out
  assert "window   [start, start + 2 x duration) after onset" in out and "(0-467 ms)" in out
  assert "loss     gaussian with a linear output (auto: " in out
  assert "split    by image: 2 test images drawn with seed 0" in out
  rows = {l.split()[0]: l.split() for l in out.splitlines() if l.split()}
  for area, n in (("VISp", "4"), ("VISal", "3"), ("VISpm", "2")):
    assert rows[area][1] == n and rows[area][3].endswith("%")  # neurons, ..., negative share
  assert "warning: 4 training images are few for CNN readouts" in out
  assert "warning: left out while reading: NWB files without natural_scenes: 601.nwb" in out
  # A presentation-only window is flagged as too short for calcium; so are shared images.
  ds = load(paths[0], n_test_images=2, window="presentation")
  assert ds.info["response_window_ms"] == "0-233"
  assert any("ends 233 ms after onset" in w for w in summary.checks(ds))
  shared = ds.replace(tiers=np.where(ds.tiers == "validation", "train", ds.tiers))
  first = np.flatnonzero(shared.tiers == "train")[:2]
  shared = shared.replace(tiers=np.where(np.isin(np.arange(ds.n_trials), first), "validation",
                                         shared.tiers))
  warnings_ = summary.checks(shared)
  assert any("in both the train and validation tiers" in w for w in warnings_), warnings_
  assert "images in both train and validation" in summary.split_statement(shared)
  assert summary.split_statement(ds) == ("by image: 4 train / 1 validation / 2 test images, no "
                                         "image in two tiers")
