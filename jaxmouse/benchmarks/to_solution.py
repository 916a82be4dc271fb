"""``jaxmouse bench fit --to-solution``: time until a whole grid has converged, both ways.

Both sides train every config of the grid on the planted problem of ``jaxmouse bench fit`` under
the same stopping rule: a validation check every ``eval_every`` steps, ``patience`` checks
without improvement divide the learning rate by ``lr_decay`` and restore the best parameters,
``max_decays`` such plateaus end training, and the best parameters are kept.

- jaxmouse: ``fit.fit`` with every (config, neuron) pair in one program, each config stopped on
  its neurons' mean, the reference's rule (``--stop-on pair``: each pair on its own); stopped
  pairs leave the table (``FitConfig.compact``) unless ``--no-compact``; from the ridge warm
  start unless ``--no-warm-start``; ``--lr`` sets its learning rate (default 5e-3), ``--warmup``
  its warm-up steps (``FitConfig.warmup``).
- reference: the neuralpredictors / Cadena et al. loop: one all-neuron model per config (the same
  factorized readout, loss, penalties, Adam and batches, in PyTorch; the random start and the
  5e-3 learning rate of Cadena et al., which jaxmouse takes with ``--no-warm-start``), configs
  in turn, each stopped on the mean validation correlation over its neurons.

Reported per side: wall time (jaxmouse cold, i.e. with compilation, and warm), steps, and two
qualities, medians over neurons: the validation correlation of each neuron's best config (the
data both sides also stop on) and, for that same config, the correlation of the prediction
with the planted rate on held-out images that neither side saw (``problem``'s test set).
``--scaling``: jaxmouse alone, time to solution against neurons (500 -> 8,000, 16 configs) and
configs (1 -> 64, 500 neurons) on a smaller layer (``--scaling-size`` x same, 32 channels; at most
1,000 steps unless ``--max-steps``; other rows with ``--scaling-rows``), with the time per
(config, neuron) pair relative to the first row (flat or falling: linear or better).

A config-step is one step of all neurons of one config: the reference runs the sum of its
configs' steps; jaxmouse's pairs run the same total as (sum of the pairs' steps) / neurons.
"""

from __future__ import annotations

import time

import numpy as np

DEFAULTS = dict(images=1000, size=8, channels=128, neurons=100, configs=16)
RULE = dict(eval_every=25, patience=4, lr_decay=3.0, max_decays=2, max_steps=5000)


def fit_config(args):
  from jaxmouse import fit as fitlib

  return fitlib.FitConfig(
      max_steps=args.max_steps or RULE["max_steps"], eval_every=args.eval_every or
      RULE["eval_every"], patience=args.patience or RULE["patience"], lr_decay=RULE["lr_decay"],
      max_decays=RULE["max_decays"] if args.max_decays is None else args.max_decays,
      batch_size=args.batch_size, seed=args.seed, compact=not args.no_compact,
      warm_start=False if args.no_warm_start else None, dtype=args.dtype,
      memory_mb=args.memory_mb, stop_on=args.stop_on, lr=args.lr, warmup=args.warmup)


def torch_to_solution(prepared, train, val, grid, cfg, device="cpu", progress=False,
                      test_images=None):
  """The reference: one all-neuron model per config, configs in turn, each early-stopped on the
  mean validation correlation (a line per config with ``progress``). Returns ``(steps per
  config (g,), val_corr (g, k), test predictions (g, t, k) of each config's kept parameters
  on ``test_images (t,)``, or None)``."""
  import jax
  import torch

  from jaxmouse import fit as fitlib
  from jaxmouse.readouts import factorized

  torch.manual_seed(cfg.seed)
  device = torch.device(device)
  on = lambda a: torch.from_numpy(np.array(a)).to(device)  # a writable copy
  n, h, w, c = prepared.shape
  k = train.responses.shape[1]
  x_all = on(prepared.transpose(0, 3, 1, 2))  # NCHW
  y_all = on(np.asarray(train.responses, np.float32))
  image = on(np.asarray(train.image))
  x_val = x_all[on(np.asarray(val.image))]
  y_val = on(np.asarray(val.responses, np.float32))
  bias0 = fitlib.initial_bias(train.responses.mean(0), "elu")
  init = factorized.init(jax.random.fold_in(jax.random.key(cfg.seed), 0), n_configs=1,
                         n_neurons=k, feature_shape=(h, w, c), bias=bias0)
  lap = on(np.array([[0., -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32).reshape(1, 1, 3, 3))
  batch = min(cfg.batch_size, len(train.image))
  order = on(fitlib.batch_order(len(train.image), batch, cfg.max_steps, seed=cfg.seed))

  def forward(x, spatial, feats, bias):
    m = spatial / (spatial.pow(2).sum(dim=(1, 2), keepdim=True).sqrt() + 1e-6)
    z = torch.einsum("ncwh,owh->nco", x, m)
    return torch.einsum("nco,oc->no", z, feats) + bias, m

  def corr(pred, y):
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    den = (pc.pow(2).sum(0) * yc.pow(2).sum(0)).sqrt()
    return torch.where(den > 1e-12, (pc * yc).sum(0) / den.clamp_min(1e-12), 0.0)

  def one_config(i):
    spatial = torch.nn.Parameter(on(np.asarray(init["spatial"][0])))  # (k, h, w)
    feats = torch.nn.Parameter(on(np.asarray(init["features"][0])))  # (k, c)
    bias = torch.nn.Parameter(on(np.asarray(init["bias"][0])))
    params = [spatial, feats, bias]
    lr = fitlib.DEFAULT_LR["factorized"] if cfg.lr is None else cfg.lr
    opt = torch.optim.Adam(params, lr=lr)
    l1, smooth = float(grid["l1"][i]), float(grid["smooth"][i])

    def validate():
      with torch.no_grad():
        z, _ = forward(x_val, spatial, feats, bias)
        return corr(torch.nn.functional.elu(z - 1) + 1, y_val)

    best_corr = validate()
    best, best_state, wait, decays, step = float(best_corr.mean()), \
        [p.detach().clone() for p in params], 0, 0, 0
    while step < cfg.max_steps:
      for _ in range(min(cfg.eval_every, cfg.max_steps - step)):
        idx = order[step]
        z, m = forward(x_all[image[idx]], spatial, feats, bias)
        rate = torch.nn.functional.elu(z - 1) + 1
        loss = (rate - y_all[idx] * torch.log(rate + 1e-9)).mean(0).sum()
        loss = loss + l1 * feats.abs().sum() + smooth * torch.nn.functional.conv2d(
            m[:, None], lap, padding=1).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
      now = validate()
      if float(now.mean()) > best + cfg.tolerance:
        best, best_corr, wait = float(now.mean()), now, 0
        best_state = [p.detach().clone() for p in params]
        continue
      wait += 1
      if wait >= cfg.patience:  # plateau: restore the best, decay the rate, or stop
        decays, wait = decays + 1, 0
        with torch.no_grad():
          for p, b in zip(params, best_state):
            p.copy_(b)
        if decays > cfg.max_decays:
          break
        lr /= cfg.lr_decay
        for group in opt.param_groups:
          group["lr"] = lr
    test = None
    if test_images is not None:
      with torch.no_grad():
        for p, b in zip(params, best_state):
          p.copy_(b)
        z, _ = forward(x_all[on(np.asarray(test_images))], spatial, feats, bias)
        test = (torch.nn.functional.elu(z - 1) + 1).cpu().numpy()
    return step, best_corr.cpu().numpy(), test

  out, start = [], time.perf_counter()
  for i in range(len(grid["l1"])):
    out.append(one_config(i))
    if progress:
      print(f"  reference config {i + 1}/{len(grid['l1'])}: {out[-1][0]} steps, "
            f"{time.perf_counter() - start:.1f} s so far", flush=True)
  tests = None if test_images is None else np.stack([t for _, _, t in out])
  return np.array([s for s, _, _ in out]), np.stack([v for _, v, _ in out]), tests


def scaling_rows(text: str) -> list[tuple[int, int]]:
  """``"500x16,1000x16"`` -> ``[(500, 16), (1000, 16)]`` (neurons, configs)."""
  try:
    rows = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
  except ValueError:
    rows = []
  if not rows or any(len(r) != 2 or min(r) < 1 for r in rows):
    raise SystemExit(f"bench fit: --scaling-rows must be NEURONSxCONFIGS[,...] with positive "
                     f"counts, got {text!r}")
  return rows


def scaling(args) -> dict:
  """Time to solution against neurons and configs (jaxmouse only, warm: each size compiled by
  a first fit, then timed); each row is printed when measured."""
  import dataclasses

  from jaxmouse import fit as fitlib
  from jaxmouse.benchmarks.fit import problem

  cfg = fit_config(args)
  cfg = dataclasses.replace(cfg, max_steps=args.max_steps or 1000)
  size, images = args.scaling_size, args.images or 500
  rows = scaling_rows(args.scaling_rows)
  print(f"scaling: {images} images, features {size}x{size}x32, the stopping rule above with at "
        f"most {cfg.max_steps} steps; time per pair relative to {rows[0][0]} neurons x {rows[0][1]} configs")
  print(f"{'neurons':>8} {'configs':>8} {'pairs':>8} {'wall':>9} {'steps':>6} "
        f"{'us/pair':>9} {'relative':>9}", flush=True)
  out, base = {}, None
  for neurons, configs in rows:
    feats, train, val, grid, _ = problem(images=images, size=size, channels=32,
                                         neurons=neurons, configs=configs, seed=args.seed,
                                         test_images=0)
    prepared = fitlib.prepare_features(feats, train_images=train.image)
    fit = lambda: fitlib.fit(prepared, train=train, validation=val, readout="factorized",
                             grid=grid, config=cfg, prepared=True)
    fit()
    t = time.perf_counter()
    res = fit()
    wall = time.perf_counter() - t
    per_pair = wall / (neurons * configs)
    base = base or per_pair
    out[(neurons, configs)] = (wall, res.steps, per_pair)
    print(f"{neurons:>8} {configs:>8} {neurons * configs:>8} {wall:>8.2f}s {res.steps:>6} "
          f"{per_pair * 1e6:>9.1f} {per_pair / base:>9.2f}", flush=True)
  return out


def run(args) -> dict:
  import dataclasses

  import jax

  if args.scaling:
    return scaling(args)

  from jaxmouse import fit as fitlib
  from jaxmouse import metrics
  from jaxmouse.benchmarks.fit import optional_torch, problem, torch_device

  sizes = {name: getattr(args, name) or DEFAULTS[name] for name in DEFAULTS}
  cfg = fit_config(args)
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{len(jax.devices())}; "
        f"jax {jax.__version__}")
  print(f"problem: {sizes['images']} images, features {sizes['size']}x{sizes['size']}x"
        f"{sizes['channels']}, {sizes['neurons']} neurons, {sizes['configs']} penalty configs; "
        f"batch {cfg.batch_size}; stopping rule: check every {cfg.eval_every} steps, patience "
        f"{cfg.patience}, lr / {cfg.lr_decay:g} on a plateau, stop after {cfg.max_decays + 1} "
        f"plateaus, at most {cfg.max_steps} steps")
  ref_cfg = dataclasses.replace(cfg, lr=None)  # the reference's own rate
  lr = fitlib.DEFAULT_LR["factorized"]
  warmup = fitlib.resolve_warmup(cfg, cfg.warm_start is not False)
  print(f"jaxmouse levers: compaction {'on' if cfg.compact else 'off'}, warm start "
        f"{'off' if cfg.warm_start is False else 'on'}, learning rate {cfg.lr or lr:g}"
        f"{f' after {warmup} warm-up steps' if warmup else ''}, features "
        f"in {cfg.dtype}, stopping per {cfg.stop_on} (the reference: random start, learning rate "
        f"{lr:g}, per config)")
  feats, train, val, grid, test = problem(seed=args.seed, **sizes)
  prepared = fitlib.prepare_features(feats, train_images=train.image)
  fit = lambda: fitlib.fit(prepared, train=train, validation=val, readout="factorized",
                           grid=grid, config=cfg, prepared=True)
  t = time.perf_counter()
  ours = fit()
  cold = time.perf_counter() - t
  print(f"jaxmouse cold (with compilation): {cold:.2f} s, {ours.steps} steps", flush=True)
  reference = None if args.no_torch else optional_torch()
  where = None if reference is None else torch_device(reference, args.torch_device)
  warm, ref_times = [], []
  for r in range(max(args.repeats, 1)):
    t = time.perf_counter()
    ours = fit()
    warm.append(time.perf_counter() - t)
    print(f"jaxmouse warm run {r + 1}: {warm[-1]:.2f} s", flush=True)
    if reference is not None:
      t = time.perf_counter()
      ref_steps, ref_corr, ref_test = torch_to_solution(prepared, train, val, grid, ref_cfg, where,
                                                        progress=r == 0,
                                                        test_images=test.image)
      ref_times.append(time.perf_counter() - t)
      print(f"reference run {r + 1}: {ref_times[-1]:.2f} s", flush=True)
  ours_t = float(np.median(warm))
  quality = lambda corr: float(np.median(np.max(corr, axis=0)))
  choice = fitlib.select_configs(ours.val_corr)  # each neuron's config, on validation
  ours_pred = fitlib.predict(fitlib.take_configs(ours.params, choice), prepared, test.image,
                             readout="factorized", output="elu")
  held = lambda pred: float(np.median(metrics.corr(pred, test.responses)))
  g, k = ours.val_corr.shape
  rows = [("jaxmouse, all pairs in one program, warm (median of %d)" % len(warm),
           f"{ours_t:.2f} s", f"{ours.steps} steps; {ours.stop_step.sum() / k:.0f} config-steps",
           f"{quality(ours.val_corr):.4f}", f"{held(ours_pred):.4f}"),
          ("  cold (with compilation)", f"{cold:.2f} s", "", "", "")]
  result = {"jax": ours_t, "jax_cold": cold, "jax_steps": ours.steps,
            "jax_pair_steps": int(ours.stop_step.sum()), "jax_quality": quality(ours.val_corr),
            "jax_held_out": held(ours_pred)}
  if ref_times:
    ref_t = float(np.median(ref_times))
    ref_choice = fitlib.select_configs(ref_corr)
    ref_pred = ref_test[ref_choice, :, np.arange(k)].T  # (t, k)
    rows.append((f"PyTorch {reference.__version__} reference on {where.type}, config after config",
                 f"{ref_t:.2f} s", f"{ref_steps.sum()} config-steps",
                 f"{quality(ref_corr):.4f}", f"{held(ref_pred):.4f}"))
    rows.append(("time to solution: reference / jaxmouse", f"{ref_t / ours_t:.1f}x",
                 f"cold {ref_t / cold:.1f}x",
                 f"{quality(ours.val_corr) - quality(ref_corr):+.4f}",
                 f"{held(ours_pred) - held(ref_pred):+.4f}"))
    result.update(torch=ref_t, torch_steps=int(ref_steps.sum()), torch_quality=quality(ref_corr),
                  torch_held_out=held(ref_pred), ratio=ref_t / ours_t)
  print(f"quality: each neuron's config chosen on validation (both sides); its best validation "
        f"correlation, and its correlation with the planted rate on {len(test.image)} held-out "
        f"images; medians over neurons")
  print(f"{'':<58}  {'wall':>9}  {'steps':<32}  {'validation':>10}  {'held out':>9}")
  for name, t, steps, q, h in rows:
    print(f"{name:<58}  {t:>9}  {steps:<32}  {q:>10}  {h:>9}")
  return result

