"""The neuron and config axes sharded over 4 (forced host) devices give the 1-device results."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
  import json
  import jax
  import numpy as np
  from jaxmouse import fit as fitlib

  assert len(jax.devices()) == 4, jax.devices()
  rng = np.random.default_rng(0)
  n, k = 302, 10  # 10 neurons padded to 12 on the 4-way neuron axis, 302 images to 304
  feats = rng.standard_normal((n, 6, 6, 8)).astype(np.float32)
  w = rng.standard_normal((6 * 6 * 8, k)) / 20
  rate = np.asarray(fitlib.output_fn("elu")(feats.reshape(n, -1) @ w + 2.0))
  tr, va = np.arange(240), np.arange(240, n)
  train = fitlib.Trials(tr, rng.poisson(rate[tr]).astype(np.float32))
  val = fitlib.Trials(va, rng.poisson(rate[va]).astype(np.float32))
  cfg = fitlib.FitConfig(max_steps=60, eval_every=20, batch_size=40, patience=1, max_decays=1,
                         stop_on="pair")
  out = {}
  per_config = fitlib.FitConfig(max_steps=60, eval_every=20, batch_size=40, patience=1,
                                max_decays=1, stop_on="config", warmup=0)
  for name, readout, grid, cfg in (
      ("factorized", "factorized", {"l1": [0.0, 0.01, 0.1], "smooth": [0.1, 0.0, 0.01]}, cfg),
      ("factorized per config", "factorized", {"l1": [0.0, 0.01, 0.1]}, per_config),
      ("gaussian", "gaussian", {"l1": [0.0, 0.01, 0.1]}, cfg)):
    ref = fitlib.fit(feats, train=train, validation=val, readout=readout, grid=grid, config=cfg)
    for shards in (1, 2):
      mesh = fitlib.make_mesh(config_shards=shards)
      got = fitlib.fit(feats, train=train, validation=val, readout=readout, grid=grid,
                       config=cfg, mesh=mesh)
      err = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)))
      out[f"{name}/{shards}"] = {
          "params": err,
          "val_corr": float(np.max(np.abs(got.val_corr - ref.val_corr))),
          "stop_step_equal": bool(np.array_equal(got.stop_step, ref.stop_step)),
          "moved": float(np.max(np.abs(ref.val_history[-1] - ref.val_history[0]))),
      }
  print(json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_fit_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, r in out.items():
    assert r["moved"] > 0.05, (name, r)  # the fit did something
    assert r["params"] < 1e-5, (name, r)
    assert r["val_corr"] < 1e-5, (name, r)
    assert r["stop_step_equal"], (name, r)


NO_GATHER = textwrap.dedent("""
  import json
  import re
  import jax
  import numpy as np
  from jaxmouse import fit as fitlib

  rng = np.random.default_rng(0)
  feats = rng.standard_normal((60, 6, 6, 8)).astype(np.float32)
  y = rng.poisson(2.0, (60, 8)).astype(np.float32)
  train, val = fitlib.Trials(np.arange(48), y[:48]), fitlib.Trials(np.arange(48, 60), y[48:])
  compiled, held = {}, {}
  jitted = fitlib._jitted

  def spy():  # the compiled text of the fit's own train and eval steps
    train_fn, eval_fn = jitted()
    def wrap(f, name):
      def run(*a, spec):
        compiled[name] = f.lower(*a, spec=spec).compile().as_text()
        feats = a[2] if name == "train" else a[1]
        held[name] = sorted({s.data.shape for s in feats.addressable_shards})
        return f(*a, spec=spec)
      return run
    return wrap(train_fn, "train"), wrap(eval_fn, "eval")

  fitlib._jitted = spy
  out = {}
  for readout, stop_on in (("factorized", "pair"), ("full", "pair"), ("gaussian", "pair"),
                           ("factorized", "config")):
    fitlib.fit(feats, train=train, validation=val, readout=readout, grid={"l1": [0.0, 0.1]},
               config=fitlib.FitConfig(max_steps=2, eval_every=2, batch_size=16,
                                       stop_on=stop_on),
               mesh=fitlib.make_mesh())
    out[readout + " " + stop_on] = {name: {
        "moved": [op for op in ("all-gather", "all-to-all", "collective-permute")
                  if op + "(" in text],
        "gathered": sorted(set(re.findall(r"= \\w+\\[([\\d,]*)\\]\\S* all-gather\\(", text))),
        "summed": sorted(set(re.findall(r"= f32\\[([\\d,]*)\\]\\S* all-reduce\\(", text))),
        "held": held[name]} for name, text in compiled.items()}
  print(json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_steps_move_no_parameters_between_devices():
  """Each device computes its own (config, neuron) pairs and holds a quarter of the features'
  images: no parameter, prediction or gradient is gathered or summed; only a batch of features
  (16 training or 12 validation images of 6x6x8), scalars and, to stop a config on the mean
  over its neurons, each pair's validation correlation cross between devices, so a fit too
  large for one device can be split."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", NO_GATHER], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for readout, steps in out.items():
    for name, seen in steps.items():
      if readout == "factorized config" and name == "eval":
        # a config's mean over its neurons: the (configs, neurons) table of correlations, one
        # number per pair, is gathered, and nothing else
        assert seen["moved"] == ["all-gather"] and seen["gathered"] == ["2,8"], seen
      else:
        assert seen["moved"] == [], (readout, name, seen)
      assert seen["held"] == [[15, 6, 6, 8]], (readout, name, seen)  # 60 images over 4 devices
      batch = "16,6,6,8" if name == "train" else "12,6,6,8"
      assert set(seen["summed"]) <= {"", batch}, (readout, name, seen)
      assert batch in seen["summed"], (readout, name, seen)


MEMORY = textwrap.dedent("""
  import json
  from jaxmouse.benchmarks import fit as bench
  rows = bench.device_memory(images=302, size=6, channels=8, neurons=10, configs=3, batch=16,
                             memory_mb=64.0)
  print(json.dumps(rows))
""")


@pytest.mark.slow
def test_each_device_holds_its_share_of_the_features():
  """`bench fit --device-memory`: over 4 devices, splitting the images leaves each device a
  quarter of the features (302 images padded to 304, 76 per device) and nothing else changes."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", MEMORY], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (_, whole, temp_whole), (_, split, temp_split) = json.loads(proc.stdout.strip().splitlines()[-1])
  image = 6 * 6 * 8 * 4  # bytes of one image's features
  assert whole - split == 302 * image - 76 * image, (whole, split)
  assert temp_split <= temp_whole + 16 * image, (temp_whole, temp_split)
