"""The fit engine on planted-truth problems: recovery, early stopping, one compile per grid,
selection, scores and bad input."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmouse import fit as fitlib
from jaxmouse.readouts import factorized

H, W, C, K = 8, 8, 12, 12


def planted_factorized(seed=0, *, n=900, n_test=60, repeats=4, scale=4.0, base=6.0):
  """Random features, neurons with Gaussian-blob masks x sparse feature weights, ELU+1 output and
  Poisson noise; returns features, tiers, the true masks/weights and the true test rates."""
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((n, H, W, C)).astype(np.float32)
  yy, xx = np.mgrid[:H, :W]
  cy, cx = rng.uniform(2, H - 3, K), rng.uniform(2, W - 3, K)
  masks = np.exp(-((yy - cy[:, None, None])**2 + (xx - cx[:, None, None])**2) / 2.0)
  masks /= np.linalg.norm(masks.reshape(K, -1), axis=1)[:, None, None]
  weights = rng.standard_normal((K, C)) * (rng.random((K, C)) < 0.4)
  weights[:, 0] += 1.0  # no all-zero neuron
  lin = np.einsum("nhwc,khw,kc->nk", feats, masks, weights)  # (n, k)
  weights *= scale / lin.std(axis=0)[:, None]
  lin *= scale / lin.std(axis=0)
  rate = np.asarray(fitlib.output_fn("elu")(lin + base))  # the model family being fitted
  n_train = n - n_test - 150
  tr = np.arange(n_train)
  va = np.arange(n_train, n - n_test)
  te = np.repeat(np.arange(n - n_test, n), repeats)
  draw = lambda ix: rng.poisson(rate[ix]).astype(np.float32)
  tiers = {"train": fitlib.Trials(tr, draw(tr)), "validation": fitlib.Trials(va, draw(va)),
           "test": fitlib.Trials(te, draw(te))}
  return feats, tiers, masks, weights, rate


@pytest.fixture(scope="module")
def planted():
  return planted_factorized()


CONFIG = fitlib.FitConfig(max_steps=1500, eval_every=50, batch_size=64, lr=2e-2, patience=5)


@pytest.fixture(scope="module")
def fitted(planted):
  feats, tiers, *_ = planted
  grid = {"l1": [0.0, 1e-3, 1e-1], "smooth": [1e-3, 1e-2, 1e-2]}
  return fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"],
                    readout="factorized", grid=grid, config=CONFIG)


def test_planted_factorized_readouts_are_recovered(planted, fitted):
  feats, tiers, masks, weights, rate = planted
  choice = fitlib.select_configs(fitted.val_corr)
  params = fitlib.take_configs(fitted.params, choice)
  mask = np.asarray(factorized.normalized_mask(params["spatial"])).reshape(K, -1)
  feat = np.asarray(params["features"])
  # mask x features is identified only up to a joint sign flip.
  mask_corr = [abs(np.corrcoef(mask[i], masks[i].ravel())[0, 1]) for i in range(K)]
  feat_corr = [abs(np.corrcoef(feat[i], weights[i])[0, 1]) for i in range(K)]
  assert np.min(mask_corr) > 0.9, mask_corr
  assert np.min(feat_corr) > 0.9, feat_corr

  prepared = fitlib.prepare_features(feats, train_images=tiers["train"].image)
  test = tiers["test"]
  pred = fitlib.predict(params, prepared, test.image, readout="factorized")
  got = fitlib.scores(pred, test)
  true = fitlib.scores(rate[test.image], test)
  assert np.nanmean(got["feve"]) > np.nanmean(true["feve"]) - 0.1, (got["feve"], true["feve"])
  assert np.nanmean(got["corr"]) > 0.9 * np.nanmean(true["corr"])


def test_best_parameters_are_kept_at_each_configs_best_check(fitted):
  hist = fitted.val_history  # (checks, g, k)
  assert hist.shape[1:] == fitted.val_corr.shape
  # Per config (the default), each neuron keeps its correlation at its config's best check: the
  # check of the highest mean over neurons (up to the tolerance), never the last one by default.
  means = hist.mean(axis=2)  # (checks, g)
  for i in range(hist.shape[1]):
    kept = [t for t in range(len(hist)) if np.allclose(hist[t, i], fitted.val_corr[i], atol=1e-6)]
    assert kept, i
    assert means[kept[0], i] >= means[:, i].max() - CONFIG.tolerance - 1e-6
  assert not np.allclose(fitted.val_corr, hist[-1])
  # The strongest L1 config is worse on validation than the light ones for most neurons.
  assert np.mean(fitted.val_corr[2] < fitted.val_corr[:2].max(axis=0)) > 0.5


def test_plateau_decays_the_learning_rate_then_stops(planted):
  feats, tiers, *_ = planted
  # A tolerance no correlation can beat: after the first check nothing improves, so each pair
  # decays after `patience` checks and stops after (max_decays + 1) plateaus, keeping its
  # initial parameters.
  cfg = fitlib.FitConfig(max_steps=1000, eval_every=10, batch_size=32, patience=3,
                         max_decays=2, tolerance=5.0, warm_start=False)
  res = fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"],
                   readout="factorized", grid={"l1": [0.0, 0.1]}, config=cfg)
  assert np.all(res.stop_step == cfg.eval_every * cfg.patience * (cfg.max_decays + 1))
  assert res.steps == cfg.eval_every * cfg.patience * (cfg.max_decays + 1)
  init = factorized.init(jax.random.fold_in(jax.random.key(cfg.seed), 0), n_configs=2,
                         n_neurons=K, feature_shape=(H, W, C))
  np.testing.assert_allclose(res.params["spatial"], init["spatial"], rtol=1e-6)
  np.testing.assert_allclose(res.val_corr, res.val_history[0], rtol=1e-6)


def test_one_compile_for_a_whole_grid(planted, monkeypatch):
  feats, tiers, *_ = planted
  counted = chex.assert_max_traces(fitlib._train_chunk, n=1)
  monkeypatch.setattr(fitlib, "_train_chunk", counted)
  fitlib._jitted.cache_clear()
  try:
    cfg = fitlib.FitConfig(max_steps=40, eval_every=20, batch_size=48)
    small = {t: fitlib.Trials(v.image, v.responses[:, :7]) for t, v in tiers.items()}
    for grid in ({"l1": [0.0, 0.01, 0.1], "smooth": [0.0, 1.0, 2.0]},
                 {"l1": [1.0, 2.0, 3.0], "smooth": [0.5, 0.5, 0.5], "l1_mask": [0, 0.1, 1]}):
      fitlib.fit(feats, train=small["train"], validation=small["validation"],
                 readout="factorized", grid=grid, config=cfg)
    # A different feature shape is a new program: the counter notices.
    with pytest.raises(AssertionError, match="traced > 1"):
      fitlib.fit(feats[:, :4], train=small["train"], validation=small["validation"],
                 readout="factorized", grid={"l1": [0.0, 0.01, 0.1]}, config=cfg)
  finally:
    fitlib._jitted.cache_clear()


def test_stopped_pairs_leave_the_table_without_changing_any_result(planted, monkeypatch):
  feats, tiers, *_ = planted
  calls = []
  gather = fitlib._gather_slots
  monkeypatch.setattr(fitlib, "_gather_slots", lambda *a: calls.append(a[1].shape) or gather(*a))
  grid = {"l1": [0.0, 1e-3, 1e-2, 1e-1, 0.3], "smooth": [1e-3, 1e-2, 1e-1, 1.0, 3.0]}
  cfg = fitlib.FitConfig(max_steps=600, eval_every=10, batch_size=64, lr=2e-2, patience=2,
                         max_decays=1, tolerance=1e-3, stop_on="pair")
  run = lambda compact: fitlib.fit(
      feats, train=tiers["train"], validation=tiers["validation"], readout="factorized",
      grid=grid, config=dataclasses.replace(cfg, compact=compact))
  packed, plain = run(True), run(False)
  assert len(np.unique(plain.stop_step)) > 3  # pairs stop at different times
  # The table shrank, each time by at least a quarter, onto bucketed sizes (2^j or 1.5 * 2^j).
  sizes = [25 * K] + [int(np.prod(s)) for s in calls]
  assert len(sizes) > 2 and all(4 * b <= 3 * a for a, b in zip(sizes, sizes[1:])), sizes
  assert all(n & (n - 1) == 0 or (n % 3 == 0 and (n // 3) & (n // 3 - 1) == 0)
             for n in sizes[1:]), sizes
  assert [fitlib._compact_shape(n, None)[1] for n in (1, 3, 5, 7, 9, 700)] == [1, 3, 6, 8, 12, 768]
  np.testing.assert_array_equal(packed.stop_step, plain.stop_step)
  assert packed.steps == plain.steps
  np.testing.assert_allclose(packed.val_corr, plain.val_corr, atol=1e-5)
  np.testing.assert_allclose(packed.val_history, plain.val_history, atol=1e-5)
  for a, b in zip(jax.tree.leaves(packed.params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Per pair, each pair keeps its own best check, up to the tolerance.
  best = plain.val_history.max(axis=0)
  assert np.all(plain.val_corr >= best - cfg.tolerance - 1e-6)
  assert np.all(plain.val_corr <= best + 1e-6)


@pytest.mark.parametrize("output", fitlib.RATE_OUTPUTS)
def test_log_rate_is_exact_and_its_gradient_finite_where_the_rate_underflows(output):
  z = jnp.array([-200.0, -30.0, -5.0, 0.3, 1.0, 1.5, 40.0, 500.0])
  rate = np.asarray(fitlib.output_fn(output)(z), np.float64)
  log_rate = np.asarray(fitlib.log_output_fn(output)(z))
  ok = rate > 1e-30
  np.testing.assert_allclose(log_rate[ok], np.log(rate[ok]), rtol=1e-5, atol=1e-6)
  assert np.isfinite(log_rate).all()
  y = jnp.full((8, 1), 3.0)
  grad = jax.grad(lambda v: jnp.sum(fitlib.poisson_loss(v[:, None, None], y, output=output)))(z)
  assert np.isfinite(grad).all()
  # d/dz (rate - y log rate) at z = 40 (linear regime, both outputs ~ identity): 1 - 3 / 40.
  np.testing.assert_allclose(grad[6], 1 - 3 / 40, rtol=1e-4)


def test_select_configs_per_neuron_and_per_area():
  val = np.array([[0.1, 0.5, 0.3, np.nan],
                  [0.2, 0.3, 0.9, 0.1],
                  [0.3, 0.1, 0.1, 0.0]])
  assert fitlib.select_configs(val).tolist() == [2, 0, 1, 1]
  areas = np.array(["V1", "V1", "LM", "LM"])
  # V1: means per config 0.3, 0.25, 0.2 -> 0; LM: 0.3 (nan counted as -1), 0.5, 0.05.
  assert fitlib.select_configs(val, groups=areas).tolist() == [0, 0, 1, 1]
  params = {"w": np.arange(3 * 4 * 2).reshape(3, 4, 2)}
  taken = fitlib.take_configs(params, [2, 0, 1, 1])
  np.testing.assert_array_equal(taken["w"], params["w"][[2, 0, 1, 1], np.arange(4)])


def test_scores_match_an_independent_numpy_computation():
  rng = np.random.default_rng(5)
  ids = np.repeat(np.arange(20), 5)
  signal = rng.gamma(2.0, 1.0, (20, 3))
  y = rng.poisson(signal[ids]).astype(np.float64)
  pred = signal[ids] * 0.8 + 0.2
  got = fitlib.scores(pred, fitlib.Trials(ids, y))
  for n in range(3):
    per_image = [y[ids == i, n] for i in range(20)]
    noise = np.mean([np.var(r, ddof=1) for r in per_image])
    total = np.var(y[:, n], ddof=1)
    mse = np.mean((pred[:, n] - y[:, n])**2)
    np.testing.assert_allclose(got["feve"][n], 1 - (mse - noise) / (total - noise), rtol=1e-10)
    np.testing.assert_allclose(got["fev"][n], (total - noise) / total, rtol=1e-10)
    np.testing.assert_allclose(got["corr"][n], np.corrcoef(pred[:, n], y[:, n])[0, 1], rtol=1e-10)
    avg = np.array([r.mean() for r in per_image])
    np.testing.assert_allclose(got["corr_avg"][n], np.corrcoef(signal[:, n] * 0.8, avg)[0, 1],
                               rtol=1e-10)
    loo = np.concatenate([[(r.sum() - v) / (len(r) - 1) for v in r] for r in per_image])
    trials = np.concatenate(per_image)
    np.testing.assert_allclose(got["oracle"][n], np.corrcoef(trials, loo)[0, 1], rtol=1e-10)


def test_ridge_selects_a_penalty_per_neuron_on_validation(planted):
  feats, tiers, *_ = planted
  alphas = np.array([1e-2, 1e1, 1e3, 1e5, 1e7])
  res = fitlib.fit_ridge(feats, train=tiers["train"], validation=tiers["validation"], alphas=alphas)
  assert res.val_corr.shape == (len(alphas), K)
  chosen = fitlib.select_configs(res.val_corr)
  # Neither end of the grid: almost no penalty overfits 768 features on 690 images; a huge one
  # shrinks towards X^T y.
  assert np.all((chosen > 0) & (chosen < len(alphas) - 1)), chosen
  assert np.all(res.val_corr.max(axis=0) > res.val_corr[0] + 0.1)


def test_full_and_gaussian_readouts_approach_the_planted_truth(planted):
  """Both readouts can express the planted factorized neurons (the full one exactly, the
  Gaussian one up to its single position): their validation correlation must come close to that
  of the true rates, the best any model can reach on these noisy trials."""
  feats, tiers, masks, weights, rate = planted
  val = tiers["validation"]
  ceiling = fitlib.metrics.corr(rate[val.image], val.responses)  # (k,)
  cfg = fitlib.FitConfig(max_steps=600, eval_every=50, batch_size=64, lr=2e-2)
  for readout, grid, share in (("full", {"smooth": [0.01], "group": [0.001], "l1": [0.0]}, 0.85),
                               ("gaussian", {"l1": [0.0]}, 0.7)):
    res = fitlib.fit(feats, train=tiers["train"], validation=val, readout=readout, grid=grid,
                     config=cfg)
    assert res.val_corr.shape == (1, K)
    assert np.median(res.val_corr[0] / ceiling) > share, (readout, res.val_corr, ceiling)


def _roughness(w, axes):
  """Squared Laplacian over the spatial ``axes`` relative to the squared weights, per neuron
  (leading axis), averaged: 0 for constant maps, large for checkerboards."""
  lap = np.asarray(fitlib.readouts_lib.laplacian(jnp.asarray(w), axes=axes))
  k = len(w)
  return float(np.mean((lap**2).reshape(k, -1).sum(1) / (w**2).reshape(k, -1).sum(1)))


@pytest.mark.parametrize("readout", ["factorized", "full"])
def test_a_larger_smoothness_penalty_gives_smoother_masks(planted, readout):
  feats, tiers, *_ = planted
  cfg = fitlib.FitConfig(max_steps=300, eval_every=50, batch_size=64, lr=2e-2, patience=100)
  grid = {"smooth": [0.0, 3.0]}
  if readout == "full":
    grid.update(group=[0.0, 0.0], l1=[0.0, 0.0])
    cfg = dataclasses.replace(cfg, lr=2e-3)
  res = fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"],
                   readout=readout, grid=grid, config=cfg)
  if readout == "factorized":
    maps, axes = np.asarray(factorized.normalized_mask(res.params["spatial"])), (-2, -1)
  else:  # weight (g, k, h, w, c): the Laplacian over (h, w) of every channel
    maps, axes = np.asarray(res.params["weight"]), (-3, -2)
  rough = [_roughness(maps[i], axes) for i in range(2)]
  assert rough[1] < 0.5 * rough[0], rough


def test_bad_input_is_named(planted):
  feats, tiers, *_ = planted
  train, val = tiers["train"], tiers["validation"]
  with pytest.raises(ValueError, match="disagree on the image count"):
    fitlib.fit(feats[:500], train=train, validation=val)
  nan = feats.copy()
  nan[3, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"NaN or infinite values in 1 image\(s\), first indices \[3\]"):
    fitlib.fit(nan, train=train, validation=val)
  with pytest.raises(ValueError, match="negative penalties"):
    fitlib.fit(feats, train=train, validation=val, grid={"l1": [0.1, -0.1]})
  with pytest.raises(ValueError, match="neurons"):
    fitlib.fit(feats, train=train, validation=fitlib.Trials(val.image, val.responses[:, :3]))
  with pytest.raises(ValueError, match=r"features must be \(n_images, h, w, c\)"):
    fitlib.fit(feats[..., 0], train=train, validation=val)
  with pytest.raises(ValueError, match="batch_size"):
    fitlib.FitConfig(batch_size=0)


def test_benchmark_runs_and_its_reference_computes_the_same_loss(capsys):
  import argparse

  from jaxmouse.benchmarks import fit as bench

  parser = argparse.ArgumentParser()
  bench.add_arguments(parser)
  args = parser.parse_args(["--images", "120", "--size", "5", "--channels", "6", "--neurons", "7",
                            "--configs", "3", "--steps", "2", "--batch-size", "16",
                            "--torch-configs", "0", "--ridge-images", "60",
                            "--ridge-features", "20", "--ridge-neurons", "3",
                            "--ridge-alphas", "3", "--peak-size", "256"])
  out = bench.run(args)
  printed = capsys.readouterr().out
  assert "speed-up" in printed and "scikit-learn" in printed
  assert out["ridge_err"] < 1e-3
  assert out["torch"] > 0 and out["jax"] > 0 and 0 < out["peak"]
  # The reference is the same model: its first loss equals jaxmouse's on the same batch.
  assert "same loss: rel. diff" in printed
  gap = float(printed.split("same loss: rel. diff ")[1].split()[0])
  assert gap < 1e-5


@pytest.mark.parametrize("memory_mb", [None, 0.01])
def test_the_per_step_benchmark_times_the_same_steps_on_both_sides(memory_mb):
  """`bench fit` times fit's own training program against the reference's loop: from the same
  start and batches both end at the same parameters, per config, with or without micro-batches
  (``memory_mb``); a second call goes on from the first one's end."""
  pytest.importorskip("torch")
  from jaxmouse.benchmarks import fit as bench

  feats, train, _, grid, _ = bench.problem(images=120, size=5, channels=6, neurons=7, configs=3,
                                           test_images=0)
  prepared = fitlib.prepare_features(feats, train_images=train.image)
  run = bench.jax_runner(prepared, train, grid, steps=4, batch=16, memory_mb=memory_mb)
  ours = jax.tree.map(np.asarray, run())
  train_config, _ = bench.torch_runner(prepared, train, grid, steps=4, batch=16)
  for i in range(3):
    _, ref = train_config(i)
    for name, value in ref.items():
      np.testing.assert_allclose(ours[name][i], value.detach().numpy(), rtol=1e-4, atol=1e-5)
  assert not np.allclose(ours["features"][0], ours["features"][2])  # the configs differ
  again = jax.tree.map(np.asarray, run())
  assert not np.allclose(again["features"], ours["features"])


def test_fit_and_score_ridge_keeps_per_neuron_weights_that_reproduce_its_scores(planted):
  feats, tiers, *_ = planted
  res = fitlib.fit_and_score(feats, train=tiers["train"], validation=tiers["validation"],
                             test=tiers["test"], readout="ridge",
                             grid={"alpha": [1e-3, 1e-1, 1e1]})
  assert res.params["coef"].shape == (K, H, W, C) and res.params["intercept"].shape == (K,)
  assert res.configs == ["alpha=0.001", "alpha=0.1", "alpha=10"]
  np.testing.assert_array_equal(res.choice, np.argmax(res.val_corr_grid, axis=0))
  prepared = fitlib.prepare_features(feats, train_images=tiers["train"].image)
  test = tiers["test"]
  pred = (np.einsum("thwc,khwc->tk", prepared[test.image], res.params["coef"])
          + res.params["intercept"])
  again = fitlib.scores(pred, test)
  for m in ("feve", "corr", "corr_avg"):
    np.testing.assert_allclose(again[m], res.scores[m], rtol=1e-3, atol=1e-4)
  assert np.all(res.scores["corr"] > 0.3)  # ridge on 768 features, 690 images: works, worse


def _memory_for(microbatch, *, n_pairs, feature_shape=(H, W, C)):
  """A ``memory_mb`` for which ``_microbatch`` picks exactly ``microbatch`` trials (a divisor)."""
  h, w, c = feature_shape
  per_image = 4.0 * n_pairs * min(h * w, c) + 4.0 * h * w * c
  return (microbatch + 0.5) * per_image / 2**20


@pytest.mark.parametrize("readout,grid", [
    ("factorized", {"l1": [0.0, 0.05], "smooth": [0.5, 0.05], "l1_mask": [0.01, 0.0]}),
    ("full", {"smooth": [0.5, 0.05], "group": [0.05, 0.01], "l1": [0.01, 0.0]}),
    ("gaussian", {"l1": [0.0, 0.1]}),
])
def test_a_fit_does_not_depend_on_how_a_batch_is_split(planted, readout, grid):
  feats, tiers, *_ = planted
  batch, k = 64, 6
  small = {t: fitlib.Trials(v.image, v.responses[:, :k]) for t, v in tiers.items()}
  prepared = fitlib.prepare_features(feats, train_images=small["train"].image)
  g = len(next(iter(grid.values())))
  reg = fitlib.readouts_lib.check_grid(grid, fitlib.readouts_lib.get(readout).penalties,
                                       readout=readout)
  params = fitlib.readouts_lib.get(readout).init(
      jax.random.key(3), n_configs=g, n_neurons=k, feature_shape=(H, W, C),
      bias=np.full(k, 2.0, np.float32), init_scale=0.3)
  idx = jnp.arange(batch, dtype=jnp.int32) * 3
  values, grads, fits = [], [], []
  for n_micro in (1, 4, 32):
    mb = batch // n_micro
    memory_mb = _memory_for(mb, n_pairs=g * k)
    assert fitlib._microbatch(batch, g * k, (H, W, C), memory_mb) == mb
    spec = fitlib._Spec(readout=readout, output="elu", microbatch=mb, patience=1, lr_decay=3.0,
                        max_decays=1, tolerance=0.0, eval_batch=1, mesh=None)
    key = jax.random.key(7) if readout == "gaussian" else None
    v, gr = fitlib.step_value_and_grad(params, idx, jnp.asarray(prepared),
                                       jnp.asarray(small["train"].image, jnp.int32),
                                       jnp.asarray(small["train"].responses), reg, spec=spec,
                                       key=key)
    values.append(float(v))
    grads.append(jax.tree.map(np.asarray, gr))
    cfg = fitlib.FitConfig(max_steps=100, eval_every=25, batch_size=batch, lr=1e-2,
                           memory_mb=memory_mb)
    fits.append(fitlib.fit(prepared, train=small["train"], validation=small["validation"],
                           readout=readout, grid=grid, config=cfg, prepared=True))
  # The penalties matter here: with them counted once per micro-batch the values would differ
  # by (n_micro - 1) x penalty.
  penalty = float(jnp.sum(fitlib.readouts_lib.get(readout).penalty(params, reg)))
  assert penalty > 0.01 * abs(values[0])
  for v, gr, res in zip(values[1:], grads[1:], fits[1:]):
    np.testing.assert_allclose(v, values[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 gr, grads[0])
    # (A strong l1_mask on the unit-norm mask makes 100 Adam steps chaotic at float precision,
    # so the grid keeps it light; value and gradient above are exact for any strength.)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 res.params, fits[0].params)
    np.testing.assert_allclose(res.val_corr, fits[0].val_corr, atol=1e-5)


def planted_dff(seed=0, *, n=500, n_test=40, repeats=4, k=6):
  """dF/F-like responses: a linear factorized drive plus Gaussian noise around means of either
  sign, so that a sizeable share of responses (and some neurons' means) are negative."""
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((n, H, W, C)).astype(np.float32)
  masks = rng.standard_normal((k, H, W)) * (rng.random((k, H, W)) < 0.2)
  weights = rng.standard_normal((k, C))
  lin = np.einsum("nhwc,khw,kc->nk", feats, masks, weights)  # (n, k)
  lin /= lin.std(axis=0)
  mean = np.linspace(-0.3, 0.2, k)
  signal = (0.2 * lin + mean).astype(np.float32)  # (n, k) noise-free dF/F
  n_train = n - n_test - 100
  tr, va = np.arange(n_train), np.arange(n_train, n - n_test)
  te = np.repeat(np.arange(n - n_test, n), repeats)
  draw = lambda ix: (signal[ix] + rng.normal(0, 0.1, (ix.size, k))).astype(np.float32)
  tiers = {"train": fitlib.Trials(tr, draw(tr)), "validation": fitlib.Trials(va, draw(va)),
           "test": fitlib.Trials(te, draw(te))}
  return feats, tiers, signal, mean


def test_dff_with_negative_values_fits_under_the_default_loss():
  feats, tiers, signal, mean = planted_dff()
  assert (tiers["train"].responses < 0).mean() > 0.3
  cfg = fitlib.FitConfig(max_steps=300, eval_every=50, batch_size=64, lr=2e-2)
  resolved, why = fitlib.resolve_loss(cfg, tiers["train"].responses)
  assert (resolved.loss, resolved.output) == ("gaussian", "linear")
  assert why.startswith("auto: ") and "% of training responses are negative" in why
  # The bias starts at each neuron's mean response, negative ones included.
  bias0 = fitlib.initial_bias(tiers["train"].responses.mean(axis=0), "linear")
  np.testing.assert_allclose(bias0, tiers["train"].responses.mean(axis=0), rtol=1e-6)
  res = fitlib.fit_and_score(feats, readout="factorized", grid={"l1": [0.0, 1e-3]}, config=cfg,
                             **tiers)
  for leaf in jax.tree.leaves(res.params):
    assert np.isfinite(leaf).all()
  bias = res.params["bias"]
  assert np.isfinite(bias).all() and (bias[mean < -0.1] < 0).all(), bias
  # A linear output predicts negative responses; the fit explains most of the planted signal.
  assert np.isfinite(res.scores["feve"]).all()
  assert np.median(res.scores["feve"]) > 0.5, res.scores["feve"]
  prepared = fitlib.prepare_features(feats, train_images=tiers["train"].image)
  pred = fitlib.predict(res.params, prepared, tiers["test"].image, readout="factorized",
                        output="linear")
  assert (pred < 0).mean() > 0.2


def test_an_explicit_poisson_loss_on_negative_responses_is_refused():
  feats, tiers, *_ = planted_dff(n=200, n_test=20)
  with pytest.raises(ValueError) as e:
    fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"],
               config=fitlib.FitConfig(loss="poisson", max_steps=10))
  msg = str(e.value)
  assert "\n" not in msg and "Poisson loss needs non-negative responses" in msg
  assert "training responses" in msg and "gaussian" in msg
  with pytest.raises(ValueError, match="positive rate"):
    fitlib.FitConfig(loss="poisson", output="linear")
  with pytest.raises(ValueError, match="FitConfig.loss"):
    fitlib.FitConfig(loss="mse")
  counts = fitlib.Trials(tiers["train"].image, np.abs(tiers["train"].responses))
  resolved, why = fitlib.resolve_loss(fitlib.FitConfig(), counts.responses)
  assert (resolved.loss, resolved.output, why) == ("poisson", "elu",
                                                   "auto: no training response is negative")
  # An explicit output is kept (a shifted positive output under a Gaussian loss).
  resolved, _ = fitlib.resolve_loss(fitlib.FitConfig(loss="gaussian", output="softplus"),
                                    counts.responses)
  assert (resolved.loss, resolved.output) == ("gaussian", "softplus")


@pytest.mark.parametrize("readout", ["factorized", "full"])
def test_gaussian_batched_loss_matches_the_per_neuron_reference(readout):
  rng = np.random.default_rng(4)
  g, k, b = 2, 3, 10
  x = jnp.asarray(rng.standard_normal((b, 4, 5, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(-0.2, 1.0, (b, k)), jnp.float32)
  r = fitlib.readouts_lib.get(readout)
  params = r.init(jax.random.key(0), n_configs=g, n_neurons=k, feature_shape=(4, 5, 3),
                  bias=np.full(k, -0.1, np.float32), init_scale=0.3)
  reg = fitlib.readouts_lib.check_grid({r.penalties[0]: [0.0, 0.1]}, r.penalties, readout=readout)

  def ref_total(p):
    one = lambda pp, yy, rr: fitlib.reference_loss_one(pp, x, yy, rr, readout=readout,
                                                       output="linear", loss="gaussian")
    return jnp.sum(jax.vmap(jax.vmap(one, in_axes=(0, 1, None)), in_axes=(0, None, 0))(p, y, reg))

  def fast_total(p):
    return jnp.sum(fitlib.loss_per_pair(p, x, y, reg, readout=readout, output="linear",
                                        loss="gaussian"))

  v_ref, g_ref = jax.value_and_grad(ref_total)(params)
  v_fast, g_fast = jax.value_and_grad(fast_total)(params)
  np.testing.assert_allclose(v_fast, v_ref, rtol=1e-5)
  for a, c in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
  # An independent check of the data term: numpy's mean squared error of the linear prediction.
  z = np.asarray(r.predict(params, x))  # (b, g, k)
  mse = ((z - np.asarray(y)[:, None, :]) ** 2).mean(axis=0)
  np.testing.assert_allclose(fitlib.data_loss(params, x, y, readout=readout, output="linear",
                                              loss="gaussian"), mse, rtol=1e-5)


def test_a_warm_start_begins_near_the_answer_and_ends_no_worse(planted):
  feats, tiers, _, _, rate = planted
  grid = {"l1": [0.0, 1e-3], "smooth": [1e-3, 1e-2]}
  cfg = fitlib.FitConfig(max_steps=1500, eval_every=25, batch_size=64, patience=4, max_decays=2)
  run = lambda warm: fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"],
                                readout="factorized", grid=grid,
                                config=dataclasses.replace(cfg, warm_start=warm))
  cold, warm = run(False), run(True)
  va = tiers["validation"]
  truth = np.array([np.corrcoef(rate[va.image, i], va.responses[:, i])[0, 1] for i in range(K)])
  # The ridge start is most of the way there after the first check; a random start is not.
  assert warm.check_steps[0] == cold.check_steps[1] == 25  # the start itself is never a best
  assert np.median(warm.val_history[0].max(axis=0)) > 0.8 * np.median(truth)
  assert np.median(cold.val_history[1].max(axis=0)) < 0.5 * np.median(truth)
  assert np.median(warm.val_corr.max(axis=0)) >= np.median(cold.val_corr.max(axis=0)) - 0.01
  with pytest.raises(ValueError, match="closed-form start"):
    fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"], readout="gaussian",
               config=dataclasses.replace(cfg, warm_start=True))


def test_warm_up_scales_the_learning_rate_of_the_first_steps(planted):
  """Step s (from 0) of a warm-up of w steps takes (s + 1) / w of the learning rate: one step of
  a 4-step warm-up at 1e-2 is one step at 2.5e-3, and not one at 1e-2."""
  feats, tiers = planted[:2]
  run = lambda **kw: fitlib.fit(
      feats, train=tiers["train"], validation=tiers["validation"], readout="factorized",
      grid={"l1": [0.0, 1e-2]}, config=fitlib.FitConfig(max_steps=1, eval_every=1,
                                                         batch_size=64, **kw))
  warmed, slow, plain = run(lr=1e-2, warmup=4), run(lr=2.5e-3, warmup=0), run(lr=1e-2, warmup=0)
  start = fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"],
                     readout="factorized", grid={"l1": [0.0, 1e-2]},
                     config=fitlib.FitConfig(max_steps=1, eval_every=1, lr=1e-30))  # no move
  for a, b, c, s in zip(*(jax.tree.leaves(r.params) for r in (warmed, slow, plain, start))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a - s, (c - s) / 4, rtol=1e-3, atol=1e-7)
  # defaults: from the ridge start per config only
  assert fitlib.resolve_warmup(fitlib.FitConfig(), True) == fitlib.WARM_START_WARMUP == 100
  assert fitlib.resolve_warmup(fitlib.FitConfig(), False) == 0
  assert fitlib.resolve_warmup(fitlib.FitConfig(stop_on="pair"), True) == 0
  assert fitlib.resolve_warmup(fitlib.FitConfig(warmup=7, stop_on="pair"), False) == 7
  for bad in (-1, 2.5):
    with pytest.raises(ValueError, match="FitConfig.warmup must be an integer >= 0"):
      fitlib.FitConfig(warmup=bad)


def test_bfloat16_features_change_no_neurons_feve_by_more_than_half_a_percent(planted):
  feats, tiers, *_ = planted
  grid = {"l1": [0.0, 1e-3], "smooth": [1e-3, 1e-2]}
  # The same schedule on both sides (no early stopping): a stopping decision that flips on a
  # 1e-5 change of validation correlation would measure the stopping rule, not the arithmetic.
  cfg = fitlib.FitConfig(max_steps=600, eval_every=50, batch_size=64, patience=10**6)
  feve = {dtype: fitlib.fit_and_score(feats, **tiers, readout="factorized", grid=grid,
                                      config=dataclasses.replace(cfg, dtype=dtype)).scores["feve"]
          for dtype in fitlib.DTYPES}
  assert np.median(feve["float32"]) > 0.9
  np.testing.assert_allclose(feve["bfloat16"], feve["float32"], atol=0.005)
  with pytest.raises(ValueError, match="dtype"):
    fitlib.FitConfig(dtype="float16")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_prepared_features_are_the_same_in_any_chunking_and_from_a_memmap(tmp_path, batch_norm):
  rng = np.random.default_rng(5)
  x = (rng.standard_normal((37, 3, 4, 5)) * 2.0 + 50.0).astype(np.float32)  # a large mean
  train = rng.choice(37, 20, replace=False)
  ref = x[np.unique(train)].astype(np.float64)
  if batch_norm:
    mean, std = ref.mean(axis=(0, 1, 2)), ref.std(axis=(0, 1, 2))
    want = np.maximum((x - mean) / std, 0.0)
  else:
    want = x / ref.std()
  np.save(tmp_path / "f.npy", x)
  mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
  for features, chunk_mb in ((x, 256.0), (mapped, 1e-4), (mapped, 2e-3)):
    got = fitlib.prepare_features(features, train_images=train, batch_norm=batch_norm,
                                  chunk_mb=chunk_mb)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  half = fitlib.prepare_features(mapped, train_images=train, batch_norm=batch_norm,
                                 dtype=jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(half.astype(np.float32), want, rtol=1e-2, atol=1e-2)
  x[7, 1, 2, 3] = np.nan
  with pytest.raises(ValueError, match=r"NaN or infinite values in 1 image\(s\), first indices \[7\]"):
    fitlib.prepare_features(x, train_images=train, chunk_mb=1e-4)


@pytest.mark.parametrize("readout, warm", [("factorized", False), ("factorized", True),
                                           ("full", False)])
def test_blocks_of_neurons_bound_the_state_and_change_no_result(planted, readout, warm):
  feats, tiers, *_ = planted
  grid = {"l1": [0.0, 1e-2]}
  cfg = fitlib.FitConfig(max_steps=150, eval_every=25, batch_size=64, patience=2, max_decays=1,
                         warm_start=warm)
  r = fitlib.readouts_lib.get(readout)
  per_neuron_mb = 16 * 2 * fitlib._pair_size(r, (H, W, C)) / 2**20
  run = lambda state_mb, keep="all": fitlib.fit(
      feats, train=tiers["train"], validation=tiers["validation"], readout=readout, grid=grid,
      config=dataclasses.replace(cfg, state_mb=state_mb), keep=keep)
  whole, blocks = run(1e3), run(5 * per_neuron_mb)  # 12 neurons: blocks of 5, 5 and 2
  # Keeping each block's chosen configs only is the same selection as after the whole fit.
  best = run(5 * per_neuron_mb, keep="best")
  assert blocks.choice is None
  np.testing.assert_array_equal(best.choice, fitlib.select_configs(blocks.val_corr))
  np.testing.assert_array_equal(best.val_corr, blocks.val_corr)
  for a, b in zip(jax.tree.leaves(best.params),
                  jax.tree.leaves(fitlib.take_configs(blocks.params, best.choice))):
    assert a.shape == b.shape and a.shape[0] == 12
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(blocks.stop_step, whole.stop_step)
  np.testing.assert_allclose(blocks.val_corr, whole.val_corr, atol=1e-5)
  np.testing.assert_allclose(blocks.val_history, whole.val_history, atol=1e-5)
  for a, b in zip(jax.tree.leaves(blocks.params), jax.tree.leaves(whole.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_to_solution_reference_trains_the_same_model_as_jaxmouse():
  pytest.importorskip("torch")
  from jaxmouse.benchmarks import fit as bench
  from jaxmouse.benchmarks import to_solution

  # Two configs with a light L1 (a strong one makes Adam chaotic at float precision).
  feats, train, val, grid, _ = bench.problem(images=300, size=5, channels=6, neurons=7,
                                             configs=2)
  prepared = fitlib.prepare_features(feats, train_images=train.image)
  # One check after 150 steps, no plateau, random start on both sides: the same training.
  cfg = fitlib.FitConfig(max_steps=150, eval_every=150, patience=100, batch_size=32, lr=2e-2,
                         warm_start=False)
  held_out = val.image[:20]  # any images: the reference predicts them with its kept parameters
  steps, ref, ref_test = to_solution.torch_to_solution(prepared, train, val, grid, cfg,
                                                       test_images=held_out)
  ours = fitlib.fit(prepared, train=train, validation=val, readout="factorized", grid=grid,
                    config=cfg, prepared=True)
  assert (steps == 150).all() and ours.steps == 150
  # The reference keeps, per config, the check with the better mean: the start or step 150.
  # Either way its correlations are jaxmouse's at that check, neuron for neuron.
  first, last = ours.val_history[0], ours.val_history[-1]
  at_last = [np.allclose(ref[i], last[i], atol=2e-3) for i in range(len(ref))]
  assert all(a or np.allclose(ref[i], first[i], atol=1e-5) for i, a in enumerate(at_last))
  assert sum(at_last) >= 1 and np.abs(last - first).max() > 0.1
  # Where it kept step 150, its held-out predictions are jaxmouse's best parameters' (of pairs
  # whose best is that check).
  assert ref_test.shape == (2, 20, 7)
  for i in np.flatnonzero(at_last):
    pred = fitlib.predict(jax.tree.map(lambda a: a[i], ours.params), prepared, held_out,
                          readout="factorized", output="elu")
    best_last = np.isclose(ours.val_corr[i], last[i], atol=1e-6)
    np.testing.assert_allclose(ref_test[i][:, best_last], pred[:, best_last], rtol=2e-2,
                               atol=2e-2)


def test_stopping_per_config_is_the_references_rule_check_for_check():
  """``stop_on="config"``: from the same start and batches, every config stops at the step the
  neuralpredictors-style reference stops it (plateaus, decays and all), and keeps the same
  check, neuron for neuron; per pair, the same grid stops otherwise."""
  pytest.importorskip("torch")
  from jaxmouse.benchmarks import fit as bench
  from jaxmouse.benchmarks import to_solution

  feats, train, val, grid, _ = bench.problem(images=300, size=5, channels=6, neurons=7,
                                             configs=3, test_images=0)
  grid = {"l1": np.array([1e-4, 1e-3, 1e-4]), "smooth": np.array([1e-3, 1e-2, 1e-1])}
  prepared = fitlib.prepare_features(feats, train_images=train.image)
  cfg = fitlib.FitConfig(max_steps=1500, eval_every=25, patience=2, max_decays=1, batch_size=32,
                         lr=2e-2, warm_start=False, stop_on="config")
  steps, ref, _ = to_solution.torch_to_solution(prepared, train, val, grid, cfg)
  ours = fitlib.fit(prepared, train=train, validation=val, readout="factorized", grid=grid,
                    config=cfg, prepared=True)
  assert (steps < 1500).all() and len(set(steps)) > 1, steps  # stopped by the rule, not the cap
  for i in range(3):  # a config's neurons stop together, where the reference stops the config
    assert set(ours.stop_step[i]) == {steps[i]}, (i, ours.stop_step[i], steps)
  np.testing.assert_allclose(ours.val_corr, ref, atol=2e-3)
  per_pair = fitlib.fit(prepared, train=train, validation=val, readout="factorized", grid=grid,
                        config=dataclasses.replace(cfg, stop_on="pair"), prepared=True)
  assert any(len(set(per_pair.stop_step[i])) > 1 for i in range(3)), per_pair.stop_step


@pytest.mark.parametrize("warm", [False, True])
def test_stopping_per_config_in_blocks_of_configs_changes_no_result(planted, warm):
  """Where a grid's state is over ``state_mb`` but one config's neurons fit, the blocks are of
  whole configs: the same stops, checks and parameters as one fit of the grid."""
  feats, tiers, *_ = planted
  grid = {"l1": [0.0, 1e-3, 1e-2], "smooth": [1e-3, 1e-2, 1e-1]}
  cfg = fitlib.FitConfig(max_steps=400, eval_every=25, batch_size=64, patience=2, max_decays=1,
                         lr=2e-2, warm_start=warm, stop_on="config")
  r = fitlib.readouts_lib.get("factorized")
  per_config_mb = 16 * K * fitlib._pair_size(r, (H, W, C)) / 2**20
  run = lambda state_mb, keep="all": fitlib.fit(
      feats, train=tiers["train"], validation=tiers["validation"], readout="factorized",
      grid=grid, config=dataclasses.replace(cfg, state_mb=state_mb), keep=keep)
  whole, blocks = run(1e3), run(2.5 * per_config_mb)  # 3 configs: blocks of 2 and 1
  assert fitlib._neuron_block(r, 3, K, (H, W, C), 2.5 * per_config_mb) < K
  assert (whole.stop_step < 400).all()  # the rule stopped every config
  np.testing.assert_array_equal(blocks.stop_step, whole.stop_step)
  np.testing.assert_allclose(blocks.val_corr, whole.val_corr, atol=1e-5)
  np.testing.assert_allclose(blocks.val_history, whole.val_history, atol=1e-5)
  for a, b in zip(jax.tree.leaves(blocks.params), jax.tree.leaves(whole.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  best = run(1.2 * per_config_mb, keep="best")  # blocks of one config
  np.testing.assert_array_equal(best.choice, fitlib.select_configs(blocks.val_corr))
  for a, b in zip(jax.tree.leaves(best.params),
                  jax.tree.leaves(fitlib.take_configs(blocks.params, best.choice))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_stopping_per_config_and_area_equals_fitting_each_area_alone(planted):
  """``stop_groups``: a config's neurons of each area stop on their own mean, so one fit of two
  areas gives each area what a fit of that area alone gives; pooled, the areas' stops differ."""
  feats, tiers, *_ = planted
  area = np.where(np.arange(K) % 3 == 0, "AL", "V1")
  # AL's neurons answer with half their planted signal: their curves peak at other checks
  rng = np.random.default_rng(1)
  noisy = {t: fitlib.Trials(tr.image, np.where(area == "AL", rng.permutation(tr.responses),
                                               tr.responses).astype(np.float32))
           for t, tr in tiers.items()}
  noisy = {t: fitlib.Trials(tr.image, (tr.responses + noisy[t].responses) / 2)
           for t, tr in tiers.items()}
  grid = {"l1": [0.0, 1e-2]}
  cfg = fitlib.FitConfig(max_steps=600, eval_every=25, batch_size=64, patience=2, max_decays=1,
                         stop_on="config")  # each neuron's ridge start is its own
  run = lambda idx, **kw: fitlib.fit(
      feats, train=fitlib.Trials(noisy["train"].image, noisy["train"].responses[:, idx]),
      validation=fitlib.Trials(noisy["validation"].image, noisy["validation"].responses[:, idx]),
      readout="factorized", grid=grid, config=cfg, **kw)
  together = run(np.arange(K), stop_groups=area)
  pooled = run(np.arange(K))
  alone_stops = []
  for name in ("AL", "V1"):
    idx = np.flatnonzero(area == name)
    alone = run(idx)
    np.testing.assert_array_equal(together.stop_step[:, idx], alone.stop_step)
    np.testing.assert_allclose(together.val_corr[:, idx], alone.val_corr, atol=1e-5)
    alone_stops.append(alone.stop_step[:, 0])
  assert not np.array_equal(alone_stops[0], alone_stops[1]), alone_stops
  assert (pooled.stop_step == pooled.stop_step[:, :1]).all()  # one stop per config, pooled
  with pytest.raises(ValueError, match=r"stop_groups must be one label per neuron, shape \(12,\)"):
    run(np.arange(K), stop_groups=area[:5])


def test_stopping_per_config_beyond_the_state_bound_stops_each_block_on_its_mean(
    planted, caplog, monkeypatch):
  """Where not even one config's neurons fit in ``state_mb``, each config is fitted alone in
  blocks of neurons and stops on each block's mean, which a warning says."""
  feats, tiers = planted[:2]
  r = fitlib.readouts_lib.get("factorized")
  pair_mb = 16 * fitlib._pair_size(r, (H, W, C)) / 2**20
  cfg = fitlib.FitConfig(max_steps=300, eval_every=25, patience=2, max_decays=1, batch_size=64,
                         lr=2e-2, warm_start=False, stop_on="config", state_mb=5.5 * pair_mb)
  grid = {"l1": [0.0, 0.1]}
  with caplog.at_level("WARNING", logger="jaxmouse.fit"):
    res = fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"],
                     readout="factorized", grid=grid, config=cfg)
  assert caplog.text.count("fitted in blocks of 5 neurons") == 1, caplog.text
  for i, l1 in enumerate(grid["l1"]):
    for s in (slice(0, 5), slice(5, 10), slice(10, 12)):  # blocks of 5, 5 and 2 neurons
      part = lambda t: fitlib.Trials(t.image, t.responses[:, s])
      alone = fitlib.fit(feats, train=part(tiers["train"]), validation=part(tiers["validation"]),
                         readout="factorized", grid={"l1": [l1]}, first_neuron=s.start,
                         config=dataclasses.replace(cfg, state_mb=1e3))
      np.testing.assert_array_equal(res.stop_step[i, s], alone.stop_step[0])
      np.testing.assert_allclose(res.val_corr[i, s], alone.val_corr[0], atol=1e-5)
  # From the warm start, each block's start weights are made once for all its configs.
  made = []
  weights = fitlib._RidgeStart.weights
  monkeypatch.setattr(fitlib._RidgeStart, "weights",
                      lambda self, neurons: made.append(neurons) or weights(self, neurons))
  fitlib.fit(feats, train=tiers["train"], validation=tiers["validation"], readout="factorized",
             grid=grid, config=dataclasses.replace(cfg, warm_start=None, max_steps=50))
  assert made == [slice(0, 5), slice(5, 10), slice(10, 12)], made
  with pytest.raises(ValueError, match="stop_on must be one of"):
    fitlib.FitConfig(stop_on="neuron")


def test_the_benchmarks_held_out_images_are_the_planted_truth_and_change_nothing_else():
  from jaxmouse import metrics
  from jaxmouse.benchmarks import fit as bench

  shape = dict(images=600, size=3, channels=16, neurons=6, configs=4)
  a = bench.problem(**shape, test_images=0)
  feats, train, val, _, test = bench.problem(**shape, test_images=100)
  np.testing.assert_array_equal(a[0], feats[:600])  # the first 600 images are unchanged
  for ta, tb in ((a[1], train), (a[2], val)):
    np.testing.assert_array_equal(ta.image, tb.image)
    np.testing.assert_array_equal(ta.responses, tb.responses)
  assert feats.shape[0] == 700 and list(test.image) == list(range(600, 700))
  assert test.responses.shape == (100, 6) and (test.responses > 0).all()  # ELU(x - 1) + 1 rates
  # The held-out rates come from the model that drew the training responses: a linear fit to
  # those noisy responses predicts them well, and predicts another neuron's rates worse.
  x = feats.reshape(len(feats), -1)
  xt = x[train.image] - x[train.image].mean(0)
  coef = np.linalg.solve(xt.T @ xt + 10.0 * np.eye(x.shape[1]),
                         xt.T @ (train.responses - train.responses.mean(0)))
  pred = x[test.image] @ coef
  own = metrics.corr(pred, test.responses)
  other = metrics.corr(pred, np.roll(test.responses, 1, axis=1))
  assert np.median(own) > 0.6 and np.median(own) > np.median(other) + 0.3, (own, other)
  np.testing.assert_allclose(metrics.corr(test.responses, test.responses), 1.0,
                             atol=1e-6)


def test_prediction_in_blocks_of_neurons_equals_a_numpy_reference():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((10, 3, 4, 5)).astype(np.float32)
  params = {"weight": rng.standard_normal((7, 3, 4, 5)).astype(np.float32),
            "bias": rng.standard_normal(7).astype(np.float32)}
  want = x.reshape(10, -1) @ params["weight"].reshape(7, -1).T + params["bias"]  # (10, 7)
  per_neuron_mb = (3 * 4 * 5 + 1) * 4 / 2**20
  for block_mb in (256.0, 2 * per_neuron_mb, per_neuron_mb / 2):  # one block; 2 neurons; 1
    got = fitlib.predict(params, x, readout="full", output="linear", block_mb=block_mb,
                         batch_size=4)
    assert got.shape == (10, 7)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_step_taken_in_blocks_of_neurons_gives_the_whole_tables_value_and_gradient(planted):
  """``_Spec.pair_chunk``: the factorized readout's gradient taken one block of neurons at a
  time (so that its temporaries stay in cache) is the gradient of the whole table, and a fit
  with blocks ends where one without them does."""
  feats, tiers, *_ = planted
  k, batch = 12, 32
  small = {t: fitlib.Trials(v.image, v.responses[:, :k]) for t, v in tiers.items()}
  prepared = fitlib.prepare_features(feats, train_images=small["train"].image)
  grid = {"l1": [1e-3, 1e-2], "smooth": [0.1, 0.1]}
  reg = fitlib.readouts_lib.check_grid(grid, fitlib.readouts_lib.get("factorized").penalties,
                                       readout="factorized")
  params = fitlib.readouts_lib.get("factorized").init(
      jax.random.key(3), n_configs=2, n_neurons=k, feature_shape=(H, W, C),
      bias=np.full(k, 2.0, np.float32), init_scale=0.3)
  neuron = jnp.asarray(np.tile(np.arange(k, dtype=np.int32), (2, 1)))
  slot_reg = {n: jnp.broadcast_to(jnp.asarray(v)[:, None], (2, k)) for n, v in reg.items()}
  idx = jnp.arange(batch, dtype=jnp.int32) * 3
  out = []
  for chunk in (0, 3, 4):
    spec = fitlib._Spec(readout="factorized", output="elu", microbatch=batch, patience=1,
                        lr_decay=3.0, max_decays=1, tolerance=0.0, eval_batch=1, mesh=None,
                        pair_chunk=chunk)
    out.append(fitlib.step_value_and_grad(
        params, idx, jnp.asarray(prepared), jnp.asarray(small["train"].image, jnp.int32),
        jnp.asarray(small["train"].responses), slot_reg, spec=spec, neuron=neuron))
  for v, gr in out[1:]:
    np.testing.assert_allclose(float(v), float(out[0][0]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 gr, out[0][1])
  # The block is a divisor of the table's neurons near _CHUNK_BYTES; none for other readouts,
  # on a mesh, or where the table needs fewer than 4 blocks.
  per = 4 * 16 * (64 * 16 + 16 + 32)
  want = fitlib._CHUNK_BYTES // per
  assert fitlib._pair_chunk("factorized", 16, 2000, 64, (4, 4, 32), None) == max(
      d for d in range(1, want + 1) if 2000 % d == 0)
  assert fitlib._pair_chunk("factorized", 16, 4 * want - 1, 64, (4, 4, 32), None) == 0
  assert fitlib._pair_chunk("full", 16, 2000, 64, (4, 4, 32), None) == 0
  assert fitlib._pair_chunk("factorized", 16, 2003, 64, (4, 4, 32), None) == 0  # prime
  # Where the micro-batch's features are large, a block holds twice their bytes: at 16x16x256
  # and batch 64, 32 MiB in blocks of 1.08 MB a neuron: 31 -> 25 neurons (8 MiB alone: 5).
  big = 4 * 16 * (64 * 256 + 256 + 256)
  assert fitlib._CHUNK_FEATURE_READS * 4 * 64 * 16 * 16 * 256 // big == 31
  assert fitlib._pair_chunk("factorized", 16, 200, 64, (16, 16, 256), None) == 25
  assert fitlib._pair_chunk("factorized", 16, 2000, 32, (16, 16, 256), None) == 25
  # A whole fit with blocks (a small _CHUNK_BYTES) ends with the same table.
  cfg = fitlib.FitConfig(max_steps=60, eval_every=20, batch_size=batch, lr=1e-2)
  fit = lambda: fitlib.fit(prepared, train=small["train"], validation=small["validation"],
                           readout="factorized", grid=grid, config=cfg, prepared=True)
  whole = fit()
  saved = fitlib._CHUNK_BYTES, fitlib._CHUNK_FEATURE_READS
  try:
    fitlib._CHUNK_BYTES = 4 * 2 * (batch * min(H * W, C) + H * W + C) * 3  # 3 neurons a block
    fitlib._CHUNK_FEATURE_READS = 0
    assert fitlib._pair_chunk("factorized", 2, k, batch, (H, W, C), None) == 3
    blocked = fit()
  finally:
    fitlib._CHUNK_BYTES, fitlib._CHUNK_FEATURE_READS = saved
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               blocked.params, whole.params)
  np.testing.assert_allclose(blocked.val_corr, whole.val_corr, atol=1e-5)
