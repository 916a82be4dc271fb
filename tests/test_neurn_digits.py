"""The NeuRN digits experiment: models, training loop, the choice of k, tables, NeuRN's known
effect on contrast inversion, and the CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from jaxmouse.cli import main
from jaxmouse.models.neurn import neurn
from jaxmouse.studies import neurn_digits as nd


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


def _rows(spec):
  """Result rows from (k, target, split, seed, accuracy) tuples; source "a"."""
  return [{"model": "cnn", "neurn_k": k, "seed": s, "source": "a", "target": t, "split": split,
           "in_domain": t == "a", "accuracy": acc} for k, t, split, s, acc in spec]


def test_tables_aggregate_over_seeds_on_test_splits_only():
  rows = _rows([(0, "a", "test", 0, 0.9), (0, "a", "test", 1, 0.8), (0, "b", "test", 0, 0.2),
                (0, "b", "test", 1, 0.4), (3, "a", "test", 0, 0.7), (3, "a", "test", 1, 0.7),
                (3, "b", "test", 0, 0.5), (3, "b", "test", 1, 0.6),
                (0, "a", "validation", 0, 0.0), (3, "a", "validation", 0, 0.0)])
  table = nd.accuracy_table(rows)
  assert list(table.neurn) == ["none", "k=3"]
  assert table.loc[0, "b"] == f"30.0 ± {100 * np.std([0.2, 0.4], ddof=1):.1f}"
  assert table.loc[0, "a"] == f"85.0 ± {100 * np.std([0.9, 0.8], ddof=1):.1f}"  # no validation
  sweep = nd.k_sweep_table(rows)
  row = sweep[sweep.neurn_k == 3].iloc[0]
  assert row.mean_over_targets == pytest.approx(0.55) and row.validation == pytest.approx(0.0)


def test_k_is_chosen_on_source_validation_whatever_the_targets_say():
  # Validation favours k=3; every target (and the in-domain test split) favours k=7.
  spec = []
  for s in (0, 1, 2):
    spec += [(3, "a", "validation", s, 0.90 + 0.01 * s), (7, "a", "validation", s, 0.85),
             (5, "a", "validation", s, 0.88), (0, "a", "validation", s, 0.99)]
    for t in ("a", "b", "c"):
      spec += [(3, t, "test", s, 0.2), (5, t, "test", s, 0.4), (7, t, "test", s, 0.9)]
  k, table = nd.choose_k(_rows(spec), source="a")
  assert k == 3  # the no-NeuRN rows (0.99) are not candidates
  assert list(table.neurn_k) == [3, 5, 7]
  assert table.loc[0, "mean"] == pytest.approx(0.91)
  # Ties go to the smaller k, so the rule is a function of the validation numbers alone.
  tie = _rows([(5, "a", "validation", 0, 0.8), (3, "a", "validation", 0, 0.8)])
  assert nd.choose_k(tie, source="a")[0] == 3
  with pytest.raises(ValueError, match="no validation rows"):
    nd.choose_k(_rows(spec), source="b")
  # The comparison rule scores each target at the k that is best on the other targets.
  best = {"b": 3, "c": 7, "d": 7}
  loo_spec = [(k, t, "test", s, 0.99 if k == best[t] else 0.2)
              for t in best for k in (3, 7) for s in (0, 1)]
  loo = nd.leave_one_target_out(_rows(loo_spec))
  assert dict(zip(loo.target, loo.k)) == {"b": 7, "c": 3, "d": 3}
  assert loo.set_index("target").loc["b", "mean"] == pytest.approx(0.2)


def test_neurn_makes_a_cnn_invariant_to_contrast_inversion():
  """NeuRN maps b + (i - b) * digit to the local contrast of the digit, whatever the sign of
  i - b: with NeuRN a CNN trained on white-on-black digits scores the same on dark-on-bright ones;
  without it, it is near or below chance there."""
  config = nd.get_config("tiny", domains=("digits", "inverted"), models=("cnn",), seeds=(0,),
                         sweep_ks=(3, 5), sweep_seeds=(0,), epochs=3, max_train=None)
  result = nd.run(config, log=lambda s: None)
  df = pd.DataFrame(result["results"])
  k = result["chosen_k"]["digits"]
  assert k == nd.choose_k(result["sweep"], source="digits")[0]
  assert set(df.neurn_k) == {0, k} and set(df.split) == {"test", "validation"}
  acc = df[df.split == "test"].set_index(["neurn_k", "target"]).accuracy
  assert acc[0, "digits"] > 0.6 and acc[k, "digits"] > 0.6  # chance is 0.1
  assert acc[k, "inverted"] == pytest.approx(acc[k, "digits"], abs=0.01)
  assert acc[0, "inverted"] < 0.25 and acc[0, "digits"] - acc[0, "inverted"] > 0.4


def test_configs_differ_and_validate():
  quick, full, tiny = (nd.get_config(n) for n in ("quick", "full", "tiny"))
  for c in (quick, full, tiny):
    assert c.neurn_k is None and c.sweep_ks and set(c.sources) <= set(c.domains)
  assert full.sources == nd.digits.SYNTHETIC and full.epochs > quick.epochs > tiny.epochs
  assert len(full.sweep_ks) > len(quick.sweep_ks) and tiny.size < quick.size
  with pytest.raises(ValueError, match="sources"):
    nd.get_config("quick", sources=("svhn",))
  with pytest.raises(ValueError, match="odd"):
    nd.get_config("quick", neurn_k=4)
  with pytest.raises(ValueError, match="sweep_ks"):
    nd.get_config("quick", sweep_ks=())
  assert nd.get_config("quick", sweep_ks=(), neurn_k=5).neurn_k == 5
  with pytest.raises(ValueError, match="validation_fraction"):
    nd.get_config("quick", validation_fraction=0.0)


def test_validation_split_is_part_of_the_source_train_split_and_disjoint():
  d = nd.digits.make_domains(size=16, domains=("digits", "inverted"))["digits"]
  config = nd.get_config("tiny")
  fit, val = nd.source_split(d, config)
  assert np.intersect1d(fit, val).size == 0 and fit.size + val.size == d.y_train.size
  assert val.size == pytest.approx(config.validation_fraction * d.y_train.size, abs=10)


def test_cli_runs_digits(tmp_path, capsys):
  out = tmp_path / "run"
  code = main(["compare", "digits", "--config", "tiny", "--domains", "digits,inverted",
               "--seeds", "1", "--epochs", "1", "--out", str(out)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "| model | source | neurn | digits | inverted |" in printed
  assert "chosen for each source on its validation split" in printed
  for f in ("results.csv", "table.csv", "table.md", "accuracy.png", "k_sweep.csv", "k_sweep.md",
            "k_sweep.png", "config.json"):
    assert (out / f).stat().st_size > 0, f
  sweep = pd.read_csv(out / "k_sweep.csv")
  assert sweep.chosen.sum() == 1
  best_on_validation = sweep.loc[sweep.validation.idxmax(), "neurn_k"]
  assert sweep.loc[sweep.chosen, "neurn_k"].item() == best_on_validation
  fixed = tmp_path / "fixed"
  assert main(["compare", "digits", "--config", "tiny", "--domains", "digits,inverted",
               "--seeds", "1", "--epochs", "1", "--neurn-k", "7", "--out", str(fixed)]) == 0
  printed = capsys.readouterr().out
  assert "| k=7 |" in printed and "fixed in the config before any data were seen" in printed
  assert main(["compare", "digits", "--config", "tiny", "--data", "x", "--out", str(out)]) == 1
