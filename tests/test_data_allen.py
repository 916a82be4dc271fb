"""Allen Brain Observatory NWB 1 files (written here in the real layout): window means against a
loop reference, blanks, several experiments combined, events, tiers, bad files named."""

import h5py
import numpy as np
import pytest

from jaxmouse.data import allen, io, load

N_IMAGES, REPEATS, FRAME_STEP, WINDOW = 7, 5, 9, 7


def write_experiment(path, *, rng, n_cells, area, cre, depth, session, template, reps=None,
                     blanks=6, transpose=False):
  """An experiment with ``reps[i]`` presentations of image i (random order) and some blanks."""
  reps = np.full(N_IMAGES, REPEATS) if reps is None else np.asarray(reps)
  seq = rng.permutation(np.concatenate([np.repeat(np.arange(N_IMAGES), reps),
                                        np.full(blanks, -1)]))
  starts = 30 + np.arange(seq.size) * FRAME_STEP + rng.integers(0, 2, seq.size)
  n_frames = starts[-1] + 40
  dff = rng.normal(0.1, 1.0, (n_cells, n_frames)).astype(np.float32)
  allen.write_nwb(path, dff=dff, frames=seq, frame_duration=np.stack([starts, starts + WINDOW], 1),
                  cell_specimen_ids=session * 1000 + np.arange(n_cells), template=template,
                  location=area, imaging_depth_um=depth, genotype=cre, session_id=session)
  if transpose:  # some exports store (frames, cells); the loader accepts both
    with h5py.File(path, "r+") as f:
      data = f[allen.DFF][()]
      del f[allen.DFF]
      f[allen.DFF] = data.T
  # Loop reference: per image, the window means of its presentations in time order.
  ref = {i: [dff[:, s:s + WINDOW].mean(axis=1) for s, fr in zip(starts, seq) if fr == i]
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
  assert ds.neuron_meta["cell_class"][0] == "excitatory"
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
  ds = load(paths[0], n_test_images=3, validation_fraction=0.25, seed=4)
  test = ds.tier_images("test")
  assert test.size == 3
  np.testing.assert_array_equal(ds.repeats("test"), REPEATS)  # all repeats of a test image
  n_rest = (N_IMAGES - 3) * REPEATS
  assert np.sum(ds.tiers == "validation") == round(0.25 * n_rest)
  assert ds.equals(load(paths[0], n_test_images=3, validation_fraction=0.25, seed=4))
  other = load(paths[0], n_test_images=3, validation_fraction=0.25, seed=5)
  assert not np.array_equal(other.tiers, ds.tiers)
  fixed = load(paths[0], test_images=[0, 6])
  np.testing.assert_array_equal(fixed.tier_images("test"), [0, 6])
  with pytest.raises(ValueError, match="n_test_images"):
    load(paths[0], n_test_images=N_IMAGES)


def test_window_and_events(experiments, tmp_path):
  paths, _, _ = experiments
  rng = np.random.default_rng(3)
  path = tmp_path / "solo" / "900.nwb"
  _, dff, seq, starts = write_experiment(path, rng=rng, n_cells=2, area="VISl", cre="Rbp4-Cre",
                                         depth=375, session=900, template=np.zeros((N_IMAGES, 4, 4)))
  ds = load(path, window=(2, 5), test_images=[1])
  first = int(np.flatnonzero(seq == 0)[0])
  t = int(np.flatnonzero(ds.trial_image == 0)[0])
  np.testing.assert_allclose(ds.responses[t], dff[:, starts[first] + 2:starts[first] + 5].mean(1),
                             rtol=1e-5)
  with pytest.raises(FileNotFoundError, match="no L0 events file"):
    load(path, response="events", test_images=[1])
  events = np.abs(rng.normal(size=dff.shape)).astype(np.float32) * (rng.random(dff.shape) < 0.1)
  folder = tmp_path / "ophys_experiment_events"
  folder.mkdir()
  np.savez(folder / "900_events.npz", ev=events)
  ev = load(path, response="events", test_images=[1])
  np.testing.assert_allclose(ev.responses[t], events[:, starts[first]:starts[first] + WINDOW].mean(1),
                             rtol=1e-5)


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
  with pytest.raises(ValueError, match="late.nwb: presentation windows"):
    load(late)
  with pytest.raises(ValueError, match="holds the natural_scenes template"):
    load([paths[1]])  # the VISal file has no template stack


def test_helpers():
  assert allen.cre_line("Slc17a7-IRES2-Cre/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt") == "Slc17a7-IRES2-Cre"
  assert allen.cell_class("Pvalb-IRES-Cre") == "inhibitory"
  assert allen.cell_class("Emx1-IRES-Cre") == "excitatory"
