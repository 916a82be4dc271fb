"""``jaxmouse bench fit``: the readout engine against the way PyTorch users fit a grid.

Problem: random non-negative features ``(n, s, s, c)``, ``k`` neurons drawn from a planted
factorized readout with Poisson noise, a grid of ``g`` penalty settings (L1 on the feature
weights x Laplacian smoothness of the mask), ``steps`` Adam steps of batch ``b``.

- jaxmouse: the training program of ``fit.fit`` (its jitted chunk of steps, with the micro-batches
  and gradient blocks ``fit`` chooses for the table) trains all ``g x k`` (config, neuron) pairs
  at once (timed warm, i.e. after a first call compiled it; the compile time is printed
  separately). Only the steps are timed, on both sides: the warm start, the validation checks
  and placing the data, which ``fit`` adds, are in ``--to-solution``'s times.
- reference: the same factorized readout written as neuralpredictors' ``FullFactorized2d``
  (normalized mask, ``einsum("ncwh,owh->nco")`` then ``einsum("nco,oc->no")``), the same loss,
  penalties, Adam and batches, trained one config after another as a grid search does there.
  Both sides start from the same parameters and take the same batches, so they end at the same
  parameters (``test_fit.py`` checks it).
  Timed runs alternate (a jaxmouse fit of the grid, one reference config, ...) so both sides see
  the same load; ``--torch-configs M`` configs are timed and their median scaled by g.
- FLOP/s: the step's matmul FLOPs (forward ``2 b h w c g k``, mask gradient the same again)
  per second of jaxmouse time, against the peak of a large ``jnp.dot`` measured in the same run
  (before and after; the higher one).

Defaults are the issue's layer (16x16x256) and grid (16 configs) with fewer images, neurons
and steps, so that the whole benchmark runs in about two minutes on two CPU cores; ``--full``
runs the issue's size.
- ridge: ``readouts.ridge`` (one eigendecomposition, every penalty and neuron) against
  scikit-learn ``Ridge`` fitted once per penalty, predicting held-out images for every penalty.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

FULL = dict(images=5000, size=16, channels=256, neurons=2000, configs=16)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--images", type=int, help="images (training + validation); default 1000")
  parser.add_argument("--size", type=int,
                      help="feature map height = width; default 16 (--to-solution: 8)")
  parser.add_argument("--channels", type=int, help="default 256 (--to-solution: 128)")
  parser.add_argument("--neurons", type=int, help="default 200 (--to-solution: 100)")
  parser.add_argument("--configs", type=int, help="penalty settings in the grid; default 16")
  parser.add_argument("--steps", type=int, default=20, help="Adam steps (both sides)")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--full", action="store_true",
                      help="the issue's size: 5000 images, 16x16x256, 2000 neurons, 16 configs "
                      "(needs tens of GB and, on a CPU, hours)")
  parser.add_argument("--torch-configs", type=int, default=4,
                      help="time this many configs of the reference (each alternating with a "
                      "jaxmouse fit of the whole grid) and scale the median up (0: all)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed jaxmouse fits when the reference is skipped")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where the reference runs (auto: cuda where jax runs on a GPU)")
  parser.add_argument("--ridge-images", type=int, default=2000)
  parser.add_argument("--ridge-features", type=int, default=4096, help="h*w*c of the ridge layer")
  parser.add_argument("--ridge-neurons", type=int, default=500)
  parser.add_argument("--ridge-alphas", type=int, default=8)
  parser.add_argument("--no-ridge", action="store_true")
  parser.add_argument("--memory-mb", type=float, default=fitlib_default_memory(),
                      help="bound on the step's largest intermediate (smaller: micro-batches)")
  parser.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 peak matmul")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--device-memory", action="store_true",
                      help="compile (not run) one chunk of training steps over a mesh of all "
                      "devices and print each device's memory with the features replicated "
                      "and split over images; XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                      "gives a CPU 8 devices")
  solution = parser.add_argument_group(
      "time to solution", "--to-solution trains every config to the stopping rule on both sides")
  solution.add_argument("--to-solution", action="store_true",
                        help="time until every (config, neuron) has converged, against the "
                        "neuralpredictors-style loop (one all-neuron model per config, in turn)")
  solution.add_argument("--eval-every", type=int, help="steps between validation checks (25)")
  solution.add_argument("--patience", type=int, help="checks without improvement (4)")
  solution.add_argument("--max-decays", type=int, help="learning-rate decays before stopping (2)")
  solution.add_argument("--max-steps", type=int, help="upper bound on steps (5000)")
  solution.add_argument("--no-compact", action="store_true",
                        help="keep stopped pairs on the table (FitConfig.compact=False)")
  solution.add_argument("--scaling", action="store_true",
                        help="with --to-solution: jaxmouse's time to solution against neurons "
                        "(500 -> 8000) and configs (1 -> 64), no reference")
  solution.add_argument("--scaling-rows", default="500x16,1000x16,2000x16,4000x16,8000x16,"
                        "500x1,500x4,500x64",
                        help="the --scaling rows, NEURONSxCONFIGS separated by commas; times per "
                        "pair are relative to the first")
  solution.add_argument("--scaling-size", type=int, default=4,
                        help="feature map height = width of the --scaling problem (32 channels)")
  solution.add_argument("--no-warm-start", action="store_true",
                        help="start from small random weights (FitConfig.warm_start=False)")
  solution.add_argument("--stop-on", choices=("pair", "config"), default="config",
                        help="jaxmouse's stopping rule: per config on the mean over its neurons, "
                        "the reference's rule (default), or per (config, neuron) pair "
                        "(FitConfig.stop_on)")
  solution.add_argument("--lr", type=float,
                        help="jaxmouse's initial learning rate (FitConfig.lr; default the "
                        "factorized readout's 5e-3); the reference keeps 5e-3, the rate of "
                        "Cadena et al. from its random start")
  solution.add_argument("--warmup", type=int,
                        help="jaxmouse's warm-up steps (FitConfig.warmup; default 100 from the "
                        "warm start per config, else 0); the reference has none")
  solution.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="how jaxmouse holds and multiplies the features (FitConfig.dtype)")


def fitlib_default_memory() -> float:
  from jaxmouse.fit import FitConfig

  return FitConfig().memory_mb


def optional_torch():
  """The torch module, or None (with a line saying how to install it) where it is missing."""
  try:
    import torch
  except ImportError:
    print("torch is not installed: no reference column (pip install torch)")
    return None
  return torch


def torch_device(torch, choice: str = "auto"):
  """The reference's torch device: ``cuda`` where jax runs on a GPU and torch sees one (for
  ``auto``), else the CPU. On a GPU, TF32 matrix products and convolutions are allowed, as
  jax's default precision allows them there, so both sides multiply at the same precision."""
  import jax

  if choice == "auto":
    choice = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  if choice == "cuda":
    if not torch.cuda.is_available():
      raise SystemExit("bench: --torch-device cuda, but torch sees no GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  return torch.device(choice)


def torch_sync(torch, device) -> None:
  """Waits for the device's queued work, so that a wall-clock time covers it."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the best of ``repeats`` ``(n, n) x (n, n)`` float32 ``jnp.dot`` calls."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n))
  b = jax.random.normal(jax.random.key(1), (n, n))
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def problem(*, images, size, channels, neurons, configs, seed=0, test_images=None):
  """Features, train/validation trials, the penalty grid and a held-out test set.

  ``images`` are split 90/10 into training and validation trials (Poisson responses of the
  planted readout). ``test_images`` (default ``images // 5``) more images follow them in the
  features; ``test`` holds their indices and the planted (noise-free) rates, so that a fit's
  prediction on images it never saw can be scored against the truth. They are drawn after
  everything else, so the training and validation data do not depend on how many there are.
  """
  from jaxmouse import fit as fitlib
  from jaxmouse import readouts

  rng = np.random.default_rng(seed)
  feats = np.maximum(rng.standard_normal((images, size, size, channels), np.float32), 0)
  mask = rng.random((neurons, size, size)).astype(np.float32) ** 4
  weights = (rng.standard_normal((neurons, channels)) * (rng.random((neurons, channels)) < 0.2))
  import jax
  import jax.numpy as jnp

  readout = jax.jit(lambda x, m, wt: jnp.einsum("nhwc,khw,kc->nk", x, m, wt))  # (chunk, k)
  weights = weights.astype(np.float32)
  chunk = max(1, min(images, int(2**26 // max(neurons * channels, 1))))  # bounded intermediates
  drives = lambda x: np.concatenate([np.asarray(readout(x[s:s + chunk], mask, weights))
                                     for s in range(0, len(x), chunk)])  # (n, k)
  drive = drives(feats)
  mean, std = drive.mean(0), drive.std(0) + 1e-6
  rate_of = lambda d: np.asarray(fitlib.output_fn("elu")((d - mean) / std + 2.0))
  rate = rate_of(drive)
  resp = rng.poisson(rate).astype(np.float32)
  n_train = int(0.9 * images)
  train = fitlib.Trials(np.arange(n_train), resp[:n_train])
  val = fitlib.Trials(np.arange(n_train, images), resp[n_train:])
  side = int(np.ceil(np.sqrt(configs)))
  grid = readouts.make_grid(l1=np.logspace(-4, -1, side), smooth=np.logspace(-3, 0, side))
  grid = {k: v[:configs] for k, v in grid.items()}
  n_test = images // 5 if test_images is None else test_images
  extra = np.maximum(rng.standard_normal((n_test, size, size, channels), np.float32), 0)
  test = fitlib.Trials(np.arange(images, images + n_test),
                       rate_of(drives(extra)).astype(np.float32) if n_test else
                       np.zeros((0, neurons), np.float32))
  return np.concatenate([feats, extra]), train, val, grid, test


def step_flops(*, batch, size, channels, neurons, configs) -> float:
  """Matmul FLOPs of one step: the forward contraction and the mask gradient."""
  return 2 * 2.0 * batch * size * size * channels * neurons * configs


def jax_runner(prepared, train, grid, *, steps, batch, seed=0, memory_mb=None):
  """``run()``: ``steps`` steps of ``fit``'s training program on every (config, neuron) of the
  grid, from the reference's start (``torch_runner``); returns the parameters ``(g, k, ...)``,
  valid until the next call (which donates them). Each call goes on from where the last one
  ended (the time of a step does not depend on it)."""
  import jax
  import jax.numpy as jnp

  from jaxmouse import fit as fitlib
  from jaxmouse.readouts import factorized

  h, w, c = prepared.shape[1:]
  k = train.responses.shape[1]
  reg = fitlib.readouts_lib.check_grid(grid, factorized.PENALTIES, readout="factorized")
  g = fitlib.readouts_lib.grid_size(reg)
  extra = {} if memory_mb is None else {"memory_mb": memory_mb}
  config = fitlib.FitConfig(batch_size=batch, seed=seed, warm_start=False, loss="poisson",
                            output="elu", **extra)
  spec = fitlib._step_spec("factorized", config, (g, k), (h, w, c), batch=batch, eval_batch=batch)
  params = factorized.init(jax.random.fold_in(jax.random.key(seed), 0), n_configs=g,
                           n_neurons=k, feature_shape=(h, w, c),
                           bias=fitlib.initial_bias(train.responses.mean(0), "elu"))
  state = fitlib._start_state(jax.device_put(params), np.ones((g, k), bool),
                              lr=fitlib.DEFAULT_LR["factorized"], max_steps=steps, seed=seed)
  order = jnp.asarray(fitlib.batch_order(len(train.image), batch, steps, seed=seed))
  data = (jnp.asarray(prepared), jnp.asarray(train.image, jnp.int32),
          jnp.asarray(train.responses, jnp.float32),
          {name: jnp.broadcast_to(jnp.asarray(v, jnp.float32)[:, None], (g, k))
           for name, v in reg.items()},
          jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (g, k)))
  train_fn, _ = fitlib._jitted()

  def run():
    nonlocal state
    state, _ = train_fn(state, order, *data, spec=spec)
    return jax.block_until_ready(state.params)

  return run


def torch_runner(prepared, train, grid, *, steps, batch, seed=0, device="cpu"):
  """neuralpredictors-style training of the same readout for one config at a time.

  Returns ``(train_config, first_loss)``: ``train_config(i)`` runs ``steps`` Adam steps of
  config ``i`` from the jaxmouse initial parameters and returns ``(first, params)``: the first
  batch's loss and data, and the trained ``{"spatial", "features", "bias"}`` (torch tensors);
  ``first_loss()`` compares the reference's loss on the first batch with jaxmouse's (relative
  difference).
  """
  import jax
  import jax.numpy as jnp
  import torch

  from jaxmouse import fit as fitlib
  from jaxmouse.readouts import factorized

  torch.manual_seed(seed)
  device = torch.device(device)
  on = lambda a: torch.from_numpy(np.array(a)).to(device)  # a writable copy
  n, h, w, c = prepared.shape
  k = train.responses.shape[1]
  x_all = on(prepared.transpose(0, 3, 1, 2))  # NCHW
  y_all = on(np.asarray(train.responses))
  image = on(np.asarray(train.image))
  bias0 = fitlib.initial_bias(train.responses.mean(0), "elu")
  init = factorized.init(jax.random.fold_in(jax.random.key(seed), 0), n_configs=1, n_neurons=k,
                         feature_shape=(h, w, c), bias=bias0)
  lap = on(np.array([[0., -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32).reshape(1, 1, 3, 3))
  order = on(fitlib.batch_order(len(train.image), batch, steps, seed=seed))

  def train_config(i, n_steps=steps):
    spatial = torch.nn.Parameter(on(np.asarray(init["spatial"][0])))  # (k, h, w)
    feats = torch.nn.Parameter(on(np.asarray(init["features"][0])))  # (k, c)
    bias = torch.nn.Parameter(on(np.asarray(init["bias"][0])))
    opt = torch.optim.Adam([spatial, feats, bias], lr=fitlib.DEFAULT_LR["factorized"])
    l1, smooth = float(grid["l1"][i]), float(grid["smooth"][i])
    first = None
    for s in range(n_steps):
      idx = order[s]
      x, y = x_all[image[idx]], y_all[idx]
      norm = spatial.pow(2).sum(dim=(1, 2), keepdim=True).sqrt() + 1e-6
      m = spatial / norm
      z = torch.einsum("ncwh,owh->nco", x, m)
      z = torch.einsum("nco,oc->no", z, feats) + bias
      rate = torch.nn.functional.elu(z - 1) + 1
      poisson = (rate - y * torch.log(rate + 1e-9)).mean(0).sum()
      pen = l1 * feats.abs().sum() + smooth * torch.nn.functional.conv2d(
          m[:, None], lap, padding=1).pow(2).sum()
      loss = poisson + pen
      if first is None:
        first = (float(loss.detach()), x.cpu().numpy(), y.cpu().numpy())
      opt.zero_grad()
      loss.backward()
      opt.step()
    torch_sync(torch, device)
    return first, {"spatial": spatial, "features": feats, "bias": bias}

  def first_loss():
    (ref, x, y), _ = train_config(0, 1)
    reg = {name: jnp.asarray(v[:1]) for name, v in fitlib.readouts_lib.check_grid(
        grid, factorized.PENALTIES, readout="factorized").items()}
    ours = float(jnp.sum(fitlib.loss_per_pair(init, jnp.asarray(x.transpose(0, 2, 3, 1)),
                                              jnp.asarray(y), reg, readout="factorized",
                                              output="elu")))
    return abs(ours - ref) / abs(ref)

  return train_config, first_loss


def bench_ridge(*, images, features, neurons, alphas, seed=0) -> dict:
  from sklearn.linear_model import Ridge

  from jaxmouse.readouts import ridge

  rng = np.random.default_rng(seed)
  x = rng.standard_normal((images, features)).astype(np.float32)
  y = (x @ (rng.standard_normal((features, neurons)).astype(np.float32) / np.sqrt(features))
       + rng.standard_normal((images, neurons)).astype(np.float32))
  n_train = int(0.8 * images)
  grid = np.logspace(-1, 5, alphas) * images
  ours = np.inf
  for _ in range(2):  # the first call compiles
    t = time.perf_counter()
    pred = ridge.predict(ridge.solve(x[:n_train], y[:n_train]), x[n_train:], grid)
    ours = min(ours, time.perf_counter() - t)
  t = time.perf_counter()
  ref = np.stack([Ridge(alpha=a).fit(x[:n_train], y[:n_train]).predict(x[n_train:])
                  for a in grid])
  theirs = time.perf_counter() - t
  err = float(np.max(np.abs(pred - ref)) / np.max(np.abs(ref)))
  return {"seconds": ours, "sklearn": theirs, "max_rel_err": err}


PER_STEP = dict(images=1000, size=16, channels=256, neurons=200, configs=16)


def device_memory(*, images, size, channels, neurons, configs, batch, memory_mb,
                  eval_every: int = 25) -> list[tuple[str, int, int]]:
  """Per-device bytes (arguments, temporaries) of one compiled chunk of ``eval_every``
  factorized training steps over a mesh of all devices, with the features replicated and split
  over images (what ``fit.fit`` does). Only shapes are used: nothing is allocated or run."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from jaxmouse import fit as fitlib
  from jaxmouse import readouts

  mesh = fitlib.make_mesh()
  r = readouts.get("factorized")
  g = fitlib._pad_to(configs, mesh.shape["config"])
  k = fitlib._pad_to(neurons, mesh.shape["neuron"])
  shape = (size, size, channels)
  pair, whole = NamedSharding(mesh, P("config", "neuron")), NamedSharding(mesh, P())
  spec_of = lambda a: pair if a.ndim >= 2 else whole
  one = r.init(jax.random.key(0), n_configs=1, n_neurons=1, feature_shape=shape)
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct((g, k) + a.shape[2:], a.dtype), one)
  opt = jax.eval_shape(fitlib._ADAM.init, params)
  abstract = lambda tree: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=spec_of(a)), tree)
  table = lambda dtype: jax.ShapeDtypeStruct((g, k), dtype, sharding=pair)
  key = jax.eval_shape(lambda: jax.random.key(1))
  state = fitlib.FitState(
      params=abstract(params), opt_state=abstract(opt), best_params=abstract(params),
      best_corr=table(jnp.float32), best_score=table(jnp.float32), wait=table(jnp.int32),
      lr=table(jnp.float32),
      n_decays=table(jnp.int32), active=table(jnp.bool_), stop_step=table(jnp.int32),
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=whole),
      key=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=whole))
  n_train = images * 4 // 5
  config = fitlib.FitConfig(batch_size=batch, memory_mb=memory_mb, loss="poisson", output="elu")
  spec = fitlib._step_spec("factorized", config, (g, k), shape, batch=batch, eval_batch=batch,
                           mesh=mesh)
  train, _ = fitlib._jitted()
  rows = []
  for name, split in (("features replicated", whole), ("features split over images",
                                                       fitlib._image_spec(mesh))):
    n = fitlib._pad_to(images, mesh.size) if split is not whole else images
    args = (state, jax.ShapeDtypeStruct((eval_every, batch), jnp.int32, sharding=whole),
            jax.ShapeDtypeStruct((n,) + shape, jnp.float32, sharding=split),
            jax.ShapeDtypeStruct((n_train,), jnp.int32, sharding=whole),
            jax.ShapeDtypeStruct((n_train, k), jnp.float32, sharding=whole),
            {p: table(jnp.float32) for p in r.penalties},
            jax.ShapeDtypeStruct((g, k), jnp.int32, sharding=pair))
    stats = train.lower(*args, spec=spec).compile().memory_analysis()
    rows.append((name, int(stats.argument_size_in_bytes), int(stats.temp_size_in_bytes)))
  return rows


def run(args) -> dict:
  import jax

  from jaxmouse import fit as fitlib

  if args.full:
    for name, value in FULL.items():
      setattr(args, name, value)
  if args.to_solution:
    from jaxmouse.benchmarks import to_solution

    return to_solution.run(args)
  sizes = {name: getattr(args, name) or value for name, value in PER_STEP.items()}
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{len(jax.devices())}; "
        f"jax {jax.__version__}")
  if args.device_memory:
    print(f"memory per device of 25 steps, compiled for a mesh of {len(jax.devices())} "
          f"devices: {sizes['images']} images, features {sizes['size']}x{sizes['size']}x"
          f"{sizes['channels']}, {sizes['neurons']} neurons x {sizes['configs']} configs, "
          f"batch {args.batch_size}")
    rows = device_memory(batch=args.batch_size, memory_mb=args.memory_mb, **sizes)
    for name, arguments, temporaries in rows:
      print(f"  {name:<28} arguments {arguments / 2**30:8.3f} GiB  "
            f"temporaries {temporaries / 2**30:8.3f} GiB")
    return {name: {"arguments": a, "temporaries": t} for name, a, t in rows}
  print(f"problem: {sizes['images']} images, features {sizes['size']}x{sizes['size']}x"
        f"{sizes['channels']}, {sizes['neurons']} neurons, {sizes['configs']} penalty configs, "
        f"{args.steps} steps of batch {args.batch_size}")
  peak = matmul_peak(args.peak_size)
  feats, train, _, grid, _ = problem(seed=args.seed, **sizes, test_images=0)
  flops = step_flops(batch=args.batch_size, size=sizes["size"], channels=sizes["channels"],
                     neurons=sizes["neurons"], configs=sizes["configs"]) * args.steps
  prepared = fitlib.prepare_features(feats, train_images=train.image)
  del feats
  run_jax = jax_runner(prepared, train, grid, steps=args.steps, batch=args.batch_size,
                       seed=args.seed, memory_mb=args.memory_mb)
  t = time.perf_counter()
  run_jax()
  first = time.perf_counter() - t
  train_config = None
  torch = None if args.no_torch else optional_torch()
  if torch is not None:
    train_config, first_loss = torch_runner(prepared, train, grid, steps=args.steps,
                                            batch=args.batch_size, seed=args.seed,
                                            device=torch_device(torch, args.torch_device))
    loss_gap = first_loss()  # also warms torch up
  # Timed runs alternate between the two sides so that both see the same machine load:
  # jaxmouse fits the whole grid, the reference trains one config; medians are reported and
  # the reference's per-config time is multiplied by the grid size.
  n_configs = sizes["configs"]
  rounds = min(args.torch_configs or n_configs, n_configs) if train_config else args.repeats
  jax_times, torch_times = [], []
  for r in range(rounds):
    t = time.perf_counter()
    run_jax()
    jax_times.append(time.perf_counter() - t)
    if train_config:
      t = time.perf_counter()
      train_config(r)
      torch_times.append(time.perf_counter() - t)
  ours = float(np.median(jax_times))
  # The peak is the best of a measurement before and one after, so that a busy machine makes
  # the fraction smaller, never larger.
  peak = max(peak, matmul_peak(args.peak_size))
  rows = [(f"matmul peak ({args.peak_size}^3 jnp.dot, best of 10)", "", f"{peak / 1e9:.1f} GFLOP/s",
           "")]
  rows.append((f"jaxmouse fit, all configs in one program (median of {len(jax_times)})",
               f"{ours:.2f} s", f"{flops / ours / 1e9:.1f} GFLOP/s", f"{flops / ours / peak:.0%} of peak"))
  rows.append(("  (first call: compile)", f"{max(first - ours, 0.0):.2f} s", "", ""))
  result = {"peak": peak, "jax": ours, "compile": max(first - ours, 0.0),
            "flops_fraction": flops / ours / peak}
  if train_config:
    ref = float(np.median(torch_times)) * n_configs
    note = f"median of {len(torch_times)} configs x {n_configs}"
    where = torch_device(torch, args.torch_device)
    rows.append((f"PyTorch {torch.__version__} reference on {where.type}, config after config "
                 f"({note})",
                 f"{ref:.2f} s", f"{flops / ref / 1e9:.1f} GFLOP/s", ""))
    rows.append(("speed-up (reference / jaxmouse)", f"{ref / ours:.1f}x", "",
                 f"same loss: rel. diff {loss_gap:.1e}"))
    result.update(torch=ref, ratio=ref / ours)
  if not args.no_ridge:
    r = bench_ridge(images=args.ridge_images, features=args.ridge_features,
                    neurons=args.ridge_neurons, alphas=args.ridge_alphas, seed=args.seed)
    label = (f"ridge {args.ridge_images} images x {args.ridge_features} features x "
             f"{args.ridge_neurons} neurons, {args.ridge_alphas} penalties")
    rows.append((label + ": jaxmouse", f"{r['seconds']:.2f} s", "", ""))
    rows.append(("  scikit-learn Ridge, one fit per penalty", f"{r['sklearn']:.2f} s",
                 f"{r['sklearn'] / r['seconds']:.1f}x slower", f"max rel. diff {r['max_rel_err']:.1e}"))
    result.update(ridge=r["seconds"], sklearn=r["sklearn"], ridge_err=r["max_rel_err"])
  width = max(len(r[0]) for r in rows)
  for name, t, rate, note in rows:
    print(f"{name:<{width}}  {t:>9}  {rate:>16}  {note}")
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_arguments(parser)
  run(parser.parse_args(argv))


if __name__ == "__main__":
  main()
