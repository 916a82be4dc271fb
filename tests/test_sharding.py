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
  n, k = 300, 10  # 10 neurons: padded to 12 on the 4-way neuron axis
  feats = rng.standard_normal((n, 6, 6, 8)).astype(np.float32)
  w = rng.standard_normal((6 * 6 * 8, k)) / 20
  rate = np.asarray(fitlib.output_fn("elu")(feats.reshape(n, -1) @ w + 2.0))
  tr, va = np.arange(240), np.arange(240, n)
  train = fitlib.Trials(tr, rng.poisson(rate[tr]).astype(np.float32))
  val = fitlib.Trials(va, rng.poisson(rate[va]).astype(np.float32))
  cfg = fitlib.FitConfig(max_steps=60, eval_every=20, batch_size=40, patience=1, max_decays=1)
  out = {}
  for readout, grid in (("factorized", {"l1": [0.0, 0.01, 0.1], "smooth": [0.1, 0.0, 0.01]}),
                        ("gaussian", {"l1": [0.0, 0.01, 0.1]})):
    ref = fitlib.fit(feats, train=train, validation=val, readout=readout, grid=grid, config=cfg)
    for shards in (1, 2):
      mesh = fitlib.make_mesh(config_shards=shards)
      got = fitlib.fit(feats, train=train, validation=val, readout=readout, grid=grid,
                       config=cfg, mesh=mesh)
      err = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)))
      out[f"{readout}/{shards}"] = {
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
  import jax
  import numpy as np
  from jaxmouse import fit as fitlib

  rng = np.random.default_rng(0)
  feats = rng.standard_normal((60, 6, 6, 8)).astype(np.float32)
  y = rng.poisson(2.0, (60, 8)).astype(np.float32)
  train, val = fitlib.Trials(np.arange(48), y[:48]), fitlib.Trials(np.arange(48, 60), y[48:])
  compiled = {}
  jitted = fitlib._jitted

  def spy():  # the compiled text of the fit's own train and eval steps
    train_fn, eval_fn = jitted()
    def wrap(f, name):
      def run(*a, spec):
        compiled[name] = f.lower(*a, spec=spec).compile().as_text()
        return f(*a, spec=spec)
      return run
    return wrap(train_fn, "train"), wrap(eval_fn, "eval")

  fitlib._jitted = spy
  out = {}
  for readout in ("factorized", "full", "gaussian"):
    fitlib.fit(feats, train=train, validation=val, readout=readout, grid={"l1": [0.0, 0.1]},
               config=fitlib.FitConfig(max_steps=2, eval_every=2, batch_size=16),
               mesh=fitlib.make_mesh())
    out[readout] = {name: [op for op in ("all-gather", "all-to-all", "collective-permute")
                           if op + "(" in text] for name, text in compiled.items()}
  print(json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_steps_move_no_parameters_between_devices():
  """Each device computes its own (config, neuron) pairs: no parameter, prediction or gradient
  is gathered (only the scalar loss is summed), so a fit too large for one device can be split."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", NO_GATHER], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out == {r: {"train": [], "eval": []} for r in ("factorized", "full", "gaussian")}, out
