"""The NeuRN digits experiment: models, training loop, tables, and one smoke run per config."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from jaxmouse.cli import main
from jaxmouse.models.neurn import neurn
from jaxmouse.studies import neurn_digits as nd

SMOKE = dict(size=16, domains=("digits", "inverted", "clutter"), sources=("digits",),
             models=("cnn",), neurn_k=3, seeds=(0,), sweep_ks=(3,), sweep_seeds=(0,), epochs=1,
             max_train=64)


def test_models_with_and_without_neurn_share_weights_and_differ_by_neurn():
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  def forward(model, a):
    graphdef, params = nnx.split(model)
    return jax.jit(lambda p, b: nnx.merge(graphdef, p)(b))(params, a)

  for name in nd.MODELS:
    plain = nd.build_model(name, size=16, neurn_k=None, seed=3)
    front = nd.build_model(name, size=16, neurn_k=5, seed=3)
    got = np.asarray(forward(front, x))
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, np.asarray(forward(plain, neurn(x, k=5))), atol=1e-5)
  with pytest.raises(ValueError, match="unknown model"):
    nd.build_model("resnet", size=16, neurn_k=None, seed=0)


def test_training_learns_a_planted_rule_and_accuracy_counts():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, size=256).astype(np.int32)
  x = rng.uniform(0, 0.2, size=(256, 16, 16, 3)).astype(np.float32)
  x[y == 1, 4:12, 4:12, :] += 0.7  # class 1: a bright square
  model = nd.build_model("cnn", size=16, neurn_k=None, seed=0)
  before = nd.accuracy(model, x, y, batch_size=100)
  model, losses = nd.train(model, x, y, epochs=4, batch_size=32, learning_rate=3e-3,
                           key=jax.random.key(0))
  assert losses.shape == (4,) and losses[-1] < 0.5 * losses[0]
  acc = nd.accuracy(model, x, y, batch_size=100)  # 256 = 2 full batches + a padded one
  pred = np.asarray(jnp.argmax(model(jnp.asarray(x)), -1))
  assert acc == pytest.approx(np.mean(pred == y)) and acc > 0.95 > before


def test_tables_aggregate_over_seeds():
  rows = [{"model": "cnn", "neurn_k": k, "seed": s, "source": "a", "target": t,
           "in_domain": t == "a", "accuracy": acc}
          for k, t, s, acc in [(0, "a", 0, 0.9), (0, "a", 1, 0.8), (0, "b", 0, 0.2),
                               (0, "b", 1, 0.4), (3, "a", 0, 0.7), (3, "a", 1, 0.7),
                               (3, "b", 0, 0.5), (3, "b", 1, 0.6)]]
  table = nd.accuracy_table(rows)
  assert list(table.neurn) == ["none", "k=3"]
  assert table.loc[0, "b"] == f"30.0 ± {100 * np.std([0.2, 0.4], ddof=1):.1f}"
  sweep = nd.k_sweep_table(rows)
  assert sweep.loc[sweep.neurn_k == 3, "mean_over_targets"].item() == pytest.approx(0.55)


@pytest.mark.parametrize("name", sorted(nd.CONFIGS))
def test_each_config_runs_on_tiny_sizes(name, tmp_path):
  config = nd.get_config(name, **SMOKE)
  assert config.neurn_k % 2 == 1
  result = nd.run(config, log=lambda s: None)
  df = pd.DataFrame(result["results"])
  assert len(df) == 2 * 3  # (no NeuRN, NeuRN) x 3 test domains
  assert set(df.neurn_k) == {0, config.neurn_k} and df.accuracy.between(0, 1).all()
  nd.write_outputs(tmp_path / "out", config, result)
  for f in ("results.csv", "table.csv", "table.md", "accuracy.png", "k_sweep.csv", "k_sweep.png",
            "config.json"):
    assert (tmp_path / "out" / f).stat().st_size > 0
  with pytest.raises(FileExistsError):
    nd.write_outputs(tmp_path / "out", config, result)


def test_config_validates():
  with pytest.raises(ValueError, match="sources"):
    nd.get_config("quick", sources=("svhn",))
  with pytest.raises(ValueError, match="odd"):
    nd.get_config("quick", neurn_k=4)
  assert nd.get_config("full").sources == nd.digits.SYNTHETIC


def test_cli_runs_digits(tmp_path, capsys):
  out = tmp_path / "run"
  code = main(["compare", "digits", "--config", "tiny", "--domains", "digits,inverted",
               "--seeds", "1", "--epochs", "1", "--neurn-k", "5", "--out", str(out)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "| model | source | neurn | digits | inverted |" in printed and "| k=5 |" in printed
  assert (out / "table.md").exists()
  assert main(["compare", "digits", "--config", "tiny", "--data", "x", "--out", str(out)]) == 1
