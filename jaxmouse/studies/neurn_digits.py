"""NeuRN and domain generalization on digits: train on one domain, test on the unseen others.

Qazi, Jalil & Iqbal (arXiv 2505.06881, 2505.06886) claim that NeuRN in front of a network raises
its accuracy on digit domains it never saw (MNIST, MNIST-M, SVHN, USPS). This experiment trains a
small CNN and a small VGG-style network in flax.nnx on one domain, with and without NeuRN in front
(nothing else differs: same init seed, same batches), and tests on every other domain; several
seeds, mean +- sd.

Domains: the offline default builds them from scikit-learn's handwritten digits (see
``jaxmouse.data.digits``): ``digits`` (source) and the shifted ``mnistm`` (MNIST-M recipe with
scikit-image photographs), ``inverted``, ``blurnoise``, ``clutter``. With ``--data-dir`` holding
``mnist.npz``, ``mnist_m.npz``, ``svhn.npz``, ``usps.npz`` (or prepared tfds copies of mnist /
svhn_cropped), ``--domains mnist,mnist_m,svhn,usps --source mnist`` runs the papers' setting.

Run::

  jaxmouse compare digits --config quick --out runs/neurn_digits       # < 10 min on 2 CPU cores
  jaxmouse compare digits --config full --out runs/neurn_digits_full   # every domain as source

Writes ``results.csv`` (one row per model x NeuRN k x seed x source x split), ``table.csv`` /
``table.md`` (mean +- sd over seeds), ``k_sweep.csv`` / ``k_sweep.md``,
``k_leave_one_target_out.csv``, ``accuracy.png``, ``k_sweep.png`` and ``config.json``.

What is chosen on which data. The claim is about domains a model never saw, so nothing is chosen
on them: a k chosen on the target domains (DomainBed's "oracle" selection) would make the
with-NeuRN numbers optimistic by construction. Each source's train split is divided into a fit
part and a validation split (``validation_fraction`` of every class); every model trains on the
fit part only. NeuRN's k is chosen per source on that validation split (DomainBed's
"training-domain validation"): the small CNN is trained with every k in ``sweep_ks`` and the k
with the highest mean validation accuracy over seeds is used for every model trained on that
source. Epochs, learning rate and batch size are fixed in the config; there is no early stopping,
so no split decides when training ends. Test splits and target domains only score the final
models. The sweep's target accuracies are reported as k's effect, never used to choose; a second
rule, leave-one-target-out (each target scored at the k that is best on the other targets), is
reported next to it for comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmouse.data import digits
from jaxmouse.models.neurn import NeuRN

# ---- models ------------------------------------------------------------------------------------


class SmallCNN(nnx.Module):
  """conv(w)-relu-pool, conv(2w)-relu-pool, dense(128)-relu, dense(10). Input (b, s, s, 3)."""

  def __init__(self, *, size: int, width: int = 16, n_classes: int = 10, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, width, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), rngs=rngs)
    self.fc1 = nnx.Linear(2 * width * (size // 4) ** 2, 128, rngs=rngs)
    self.fc2 = nnx.Linear(128, n_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.fc2(x)


class SmallVGG(nnx.Module):
  """Three VGG blocks (two 3x3 convs + max-pool; w, 2w, 4w channels), global mean, dense(10)."""

  def __init__(self, *, size: int, width: int = 8, n_classes: int = 10, rngs: nnx.Rngs):
    del size  # global pooling makes the head independent of the input size
    chans = [3, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    self.convs = nnx.List([nnx.Conv(chans[i], chans[i + 1], (3, 3), rngs=rngs) for i in range(6)])
    self.head = nnx.Linear(4 * width, n_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, conv in enumerate(self.convs):
      x = nnx.relu(conv(x))
      if i % 2 == 1:
        x = nnx.max_pool(x, (2, 2), (2, 2))
    return self.head(x.mean(axis=(1, 2)))


class WithNeuRN(nnx.Module):
  """``net(NeuRN_k(x))``: NeuRN in front of any model."""

  def __init__(self, net: nnx.Module, k: int):
    self.neurn = NeuRN(k)
    self.net = net

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.net(self.neurn(x))


MODELS = {"cnn": SmallCNN, "vgg": SmallVGG}


def build_model(name: str, *, size: int, neurn_k: int | None, seed: int) -> nnx.Module:
  """A fresh model; the same seed gives the same network weights with or without NeuRN."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; available {list(MODELS)}")
  net = MODELS[name](size=size, rngs=nnx.Rngs(seed))
  return net if neurn_k is None else WithNeuRN(net, neurn_k)


# ---- training and evaluation (pure functions of arrays and a key) ------------------------------


@functools.lru_cache(maxsize=None)
def _compiled(graphdef, learning_rate: float):
  """Jitted train step and predict for one model structure (compiled once, reused over seeds)."""
  tx = optax.adam(learning_rate)

  def loss_fn(p, xb, yb):
    logits = nnx.merge(graphdef, p)(xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  # One jitted step in a Python loop: XLA:CPU runs convolutions inside lax.scan ~10x slower.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, s, xb, yb):  # xb: (b, s, s, 3), yb: (b,)
    loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  @jax.jit
  def predict(p, xb):  # (b, s, s, 3) -> (b,)
    return jnp.argmax(nnx.merge(graphdef, p)(xb), -1)

  return tx, step, predict


def train(model: nnx.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
          learning_rate: float, key: jax.Array) -> tuple[nnx.Module, np.ndarray]:
  """Adam on softmax cross-entropy; returns the trained model and the mean loss per epoch.

  x: (n, s, s, 3) float32 in [0, 1]; y: (n,) int labels. Batches are drawn without replacement
  from ``key``; the last incomplete batch of an epoch is dropped so the step compiles once.
  """
  graphdef, params = nnx.split(model)
  tx, step, _ = _compiled(graphdef, float(learning_rate))
  opt_state = tx.init(params)
  n = x.shape[0]
  b = min(batch_size, n)
  steps = n // b
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  losses = []
  for key_e in jax.random.split(key, epochs):
    order = np.asarray(jax.random.permutation(key_e, n))
    epoch_loss = []
    for i in range(steps):
      idx = order[i * b:(i + 1) * b]
      params, opt_state, loss = step(params, opt_state, xj[idx], yj[idx])
      epoch_loss.append(loss)
    losses.append(float(jnp.mean(jnp.stack(epoch_loss))))
  return nnx.merge(graphdef, params), np.asarray(losses)


def accuracy(model: nnx.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
  """Fraction of correct argmax predictions; x (n, s, s, 3), y (n,).

  Batches are zero-padded to ``batch_size`` so prediction compiles once per model.
  """
  graphdef, params = nnx.split(model)
  predict = _compiled(graphdef, 0.0)[2]
  correct = 0
  for s in range(0, x.shape[0], batch_size):
    xb = x[s:s + batch_size]
    m = xb.shape[0]
    if m < batch_size:
      xb = np.concatenate([xb, np.zeros((batch_size - m,) + xb.shape[1:], xb.dtype)])
    correct += int((np.asarray(predict(params, jnp.asarray(xb)))[:m] == y[s:s + m]).sum())
  return correct / x.shape[0]


# ---- configs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run of the experiment.

  size: image side (pixels). domains: domains built (``jaxmouse.data.digits``). sources: domains
  trained on (each tested on every other). models: names in ``MODELS``. neurn_k: k of the "with
  NeuRN" arm when it is fixed before any data are seen; None (default) chooses it for each source
  on that source's validation split (``choose_k``). seeds: model-init / batch-order seeds.
  sweep_ks, sweep_model, sweep_seeds: the candidate ks and the model and seeds that choose among
  them; their target accuracies are reported as k's effect, never used to choose (empty
  ``sweep_ks`` skips the sweep and needs a fixed ``neurn_k``). validation_fraction: fraction of
  every class of a source's train split held out as its validation split, which no model trains
  on. epochs, batch_size, learning_rate: Adam training, fixed in the config (no early stopping).
  data_seed: domain rendering and splits. max_train: cap on training images per source (None:
  all). data_dir: where real domains are read from.
  """

  size: int = 32
  domains: tuple[str, ...] = digits.SYNTHETIC
  sources: tuple[str, ...] = ("digits",)
  models: tuple[str, ...] = ("cnn", "vgg")
  neurn_k: int | None = None
  seeds: tuple[int, ...] = (0, 1, 2)
  sweep_ks: tuple[int, ...] = (3, 5, 7, 9, 11)
  sweep_model: str = "cnn"
  sweep_seeds: tuple[int, ...] = (0, 1, 2)
  validation_fraction: float = 0.2
  epochs: int = 10
  batch_size: int = 64
  learning_rate: float = 3e-3
  test_fraction: float = 0.4
  data_seed: int = 0
  max_train: int | None = None
  data_dir: str | None = None

  def __post_init__(self):
    for f in ("domains", "sources", "models", "seeds", "sweep_ks", "sweep_seeds"):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    if missing := [s for s in self.sources if s not in self.domains]:
      raise ValueError(f"Config: sources {missing} are not among domains {list(self.domains)}")
    if len(self.domains) < 2:
      raise ValueError(f"Config: need a source and at least one target domain, got {self.domains}")
    if bad := [m for m in self.models + (self.sweep_model,) if m not in MODELS]:
      raise ValueError(f"Config: unknown models {bad}; available {list(MODELS)}")
    ks = self.sweep_ks + (() if self.neurn_k is None else (self.neurn_k,))
    if bad := [k for k in ks if not isinstance(k, int) or k < 1 or k % 2 == 0]:
      raise ValueError(f"Config: NeuRN k must be odd and positive, got {bad}")
    if self.neurn_k is None and not (self.sweep_ks and self.sweep_seeds):
      raise ValueError("Config: neurn_k=None chooses k on validation among sweep_ks with "
                       f"sweep_seeds, got sweep_ks={self.sweep_ks}, sweep_seeds={self.sweep_seeds}")
    if not 0 < self.validation_fraction < 1:
      raise ValueError(f"Config: validation_fraction must be in (0, 1), got "
                       f"{self.validation_fraction}")
    if not self.seeds or self.epochs < 1 or self.size < 8:
      raise ValueError("Config: need >= 1 seed, >= 1 epoch and size >= 8")


CONFIGS = {
    # About 10 minutes on 2 shared CPU cores.
    "quick": Config(),
    # Every domain as the source (each chooses its own k), more epochs and seeds, a wider k sweep.
    "full": Config(sources=digits.SYNTHETIC, seeds=(0, 1, 2, 3, 4), epochs=30,
                   sweep_ks=(3, 5, 7, 9, 11, 13, 15), sweep_seeds=(0, 1, 2, 3, 4)),
    # For tests: seconds.
    "tiny": Config(size=16, models=("cnn", "vgg"), seeds=(0, 1), sweep_ks=(3, 5),
                   sweep_seeds=(0,), epochs=1, max_train=128),
}


def get_config(name: str, **overrides) -> Config:
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; available {list(CONFIGS)}")
  return dataclasses.replace(CONFIGS[name], **overrides)


# ---- the experiment ----------------------------------------------------------------------------


def source_split(domain: digits.DigitDomain, config: Config) -> tuple[np.ndarray, np.ndarray]:
  """Indices into ``domain.x_train``: (fit, validation), ``validation_fraction`` of every class in
  validation. Models train on ``fit``; ``validation`` only chooses NeuRN's k."""
  return digits.stratified_split(domain.y_train, test_fraction=config.validation_fraction,
                                 seed=config.data_seed)


def run_cell(domains: dict, *, source: str, model: str, neurn_k: int | None, seed: int,
             config: Config) -> list[dict]:
  """Trains one model on the fit part of ``source``'s train split.

  Returns one row per domain's test split (``split="test"``; the source's own is in-domain) and
  one for the source's validation split (``split="validation"``).
  """
  d = domains[source]
  fit, validation = source_split(d, config)
  x, y = d.x_train[fit], d.y_train[fit]
  if config.max_train is not None:
    x, y = x[:config.max_train], y[:config.max_train]
  net = build_model(model, size=config.size, neurn_k=neurn_k, seed=seed)
  start = time.perf_counter()
  net, losses = train(net, x, y, epochs=config.epochs, batch_size=config.batch_size,
                      learning_rate=config.learning_rate, key=jax.random.key(seed))
  seconds = time.perf_counter() - start
  common = {"model": model, "neurn_k": 0 if neurn_k is None else neurn_k, "seed": seed,
            "source": source, "final_loss": float(losses[-1]), "train_seconds": seconds}
  rows = [{**common, "target": source, "split": "validation", "in_domain": True,
           "accuracy": accuracy(net, d.x_train[validation], d.y_train[validation])}]
  rows += [{**common, "target": name, "split": "test", "in_domain": name == source,
            "accuracy": accuracy(net, t.x_test, t.y_test)} for name, t in domains.items()]
  return rows


def _frame(rows, split: str | None = None) -> "pd.DataFrame":
  import pandas as pd

  df = pd.DataFrame(rows)
  if "split" not in df:
    df["split"] = "test"
  return df if split is None else df[df["split"] == split]


def choose_k(sweep, *, source: str) -> tuple[int, "pd.DataFrame"]:
  """NeuRN's k for models trained on ``source``, chosen on that source's validation split.

  The k with the highest validation accuracy (mean over the sweep's seeds; ties go to the
  smaller k). Target domains and test splits take no part: the accuracies they report are
  measured on data the choice never saw.

  Args:
    sweep: rows of ``run_cell`` for the sweep model with NeuRN at each candidate k.

  Returns:
    ``(k, table)``, table: one row per candidate k with ``mean``, ``std`` and ``count`` of the
    validation accuracy over seeds.
  """
  df = _frame(sweep, "validation")
  df = df[(df["source"] == source) & (df["neurn_k"] > 0)]
  if df.empty:
    raise ValueError(f"choose_k: no validation rows with NeuRN for source {source!r}")
  table = df.groupby("neurn_k")["accuracy"].agg(["mean", "std", "count"]).sort_index()
  table["std"] = table["std"].fillna(0.0)
  return int(table["mean"].idxmax()), table.reset_index()


def run(config: Config, *, progress: Callable | None = None, log: Callable = print) -> dict:
  """The k sweep (which chooses k per source on validation), then every model with and without
  NeuRN at the chosen k. Returns ``{"results": rows, "sweep": rows, "chosen_k": {source: k},
  "k_rule": str, "seconds": float}``."""
  t0 = time.perf_counter()
  domains = digits.make_domains(size=config.size, seed=config.data_seed,
                                test_fraction=config.test_fraction, domains=config.domains,
                                data_dir=config.data_dir)
  done: dict[tuple, list[dict]] = {}

  def train_all(cells, desc):
    todo = [c for c in dict.fromkeys(cells) if c not in done]
    for cell in (progress(todo, desc=desc) if progress else todo):
      src, m, k, s = cell
      done[cell] = run_cell(domains, source=src, model=m, neurn_k=k, seed=s, config=config)
      val = [r["accuracy"] for r in done[cell] if r["split"] == "validation"][0]
      log(f"{m:4s} {src:>9s} neurn={k or '-'} seed={s}: validation accuracy {val:.3f}")

  sweep_cells = [(src, config.sweep_model, k, s) for src in config.sources
                 for k in config.sweep_ks for s in config.sweep_seeds]
  train_all(sweep_cells, "k sweep")
  sweep = [r for c in sweep_cells for r in done[c]]
  if config.neurn_k is None:
    chosen = {src: choose_k(sweep, source=src)[0] for src in config.sources}
    rule = (f"chosen for each source on its validation split ({config.validation_fraction:.0%} "
            f"of every class of its train split, never trained on): the k in "
            f"{list(config.sweep_ks)} with the highest mean validation accuracy of the "
            f"{config.sweep_model} over seeds {list(config.sweep_seeds)}")
  else:
    chosen = {src: config.neurn_k for src in config.sources}
    rule = "fixed in the config before any data were seen"
  for src, k in chosen.items():
    log(f"NeuRN k for source {src}: {k}")
  cells = [(src, m, k, s) for src in config.sources for m in config.models
           for k in (None, chosen[src]) for s in config.seeds]
  train_all(cells, "train")
  results = [r for c in cells for r in done[c]]
  return {"results": results, "sweep": sweep, "chosen_k": chosen, "k_rule": rule,
          "seconds": time.perf_counter() - t0}


def summarize(results, *, by: Sequence[str], split: str = "test") -> "pd.DataFrame":
  """Mean, sd (ddof=1; 0 for one seed) and count of accuracy over seeds, on one split."""
  g = _frame(results, split).groupby(list(by), sort=False)["accuracy"]
  out = g.agg(["mean", "std", "count"]).reset_index()
  out["std"] = out["std"].fillna(0.0)
  return out


def accuracy_table(results) -> "pd.DataFrame":
  """Rows model x source x NeuRN (none / k), one column per target's test split: ``mean +- sd``."""
  s = summarize(results, by=["model", "source", "neurn_k", "target"])
  s["cell"] = [f"{100 * m:.1f} ± {100 * sd:.1f}" for m, sd in zip(s["mean"], s["std"])]
  s["neurn"] = ["none" if k == 0 else f"k={k}" for k in s["neurn_k"]]
  wide = s.pivot_table(index=["model", "source", "neurn"], columns="target", values="cell",
                       aggfunc="first", sort=False)
  return wide.reset_index()


def k_sweep_table(sweep) -> "pd.DataFrame":
  """Per source and k: source validation accuracy (mean, sd over seeds; what chooses k), test
  accuracy on each target (mean over seeds), and the mean over targets (mean, sd over seeds)."""
  df = _frame(sweep)
  val = (df[df["split"] == "validation"].groupby(["source", "neurn_k"])["accuracy"]
         .agg(["mean", "std"]).fillna(0.0)
         .rename(columns={"mean": "validation", "std": "validation_sd"}))
  test = df[(df["split"] == "test") & ~df["in_domain"].astype(bool)]
  per_seed = test.groupby(["source", "neurn_k", "seed"])["accuracy"].mean().reset_index()
  overall = (per_seed.groupby(["source", "neurn_k"])["accuracy"].agg(["mean", "std"]).fillna(0.0)
             .rename(columns={"mean": "mean_over_targets", "std": "sd_over_seeds"}))
  per_target = test.groupby(["source", "neurn_k", "target"], sort=False)["accuracy"].mean()
  per_target = per_target.unstack("target")
  return val.join(per_target).join(overall).reset_index()


def leave_one_target_out(sweep) -> "pd.DataFrame":
  """A second rule, for comparison: each target scored at the k that is best on the *other*
  targets (mean test accuracy over seeds), so no domain is scored at a k chosen on itself.

  Returns one row per source x target: ``k`` and the target's accuracy there (``mean``, ``std``
  over seeds). Empty when a source has fewer than two targets.
  """
  import pandas as pd

  df = _frame(sweep, "test")
  df = df[~df["in_domain"].astype(bool)]
  rows = []
  for src, d in df.groupby("source", sort=False):
    targets = list(dict.fromkeys(d["target"]))
    if len(targets) < 2:
      continue
    for t in targets:
      others = d[d["target"] != t].groupby(["neurn_k", "seed"])["accuracy"].mean()
      k = int(others.groupby("neurn_k").mean().idxmax())
      acc = d[(d["target"] == t) & (d["neurn_k"] == k)]["accuracy"]
      rows.append({"source": src, "target": t, "k": k, "mean": acc.mean(),
                   "std": acc.std() if len(acc) > 1 else 0.0})
  return pd.DataFrame(rows, columns=["source", "target", "k", "mean", "std"])


SELECTION_NOTE = (
    "Every choice is made without target-domain or test data: models train on the source's "
    "train split less a held-out validation split, for the config's fixed epochs (no early "
    "stopping; learning rate, batch size and epochs are fixed in the config); NeuRN's k is {rule}. "
    "Target domains and test splits only score the final models.")


def write_outputs(out: Path, config: Config, result: dict, *, overwrite: bool = False) -> dict:
  """Writes tables, figures and the config into ``out`` (one atomic folder)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import pandas as pd

  from jaxmouse import _io

  _io.check_output_path(out, overwrite=overwrite)
  table = accuracy_table(result["results"])
  chosen = result["chosen_k"]
  with _io.atomic_path(out, is_dir=True) as tmp:
    pd.DataFrame(result["results"]).to_csv(tmp / "results.csv", index=False)
    table.to_csv(tmp / "table.csv", index=False)
    md = ["# NeuRN on digit domains: test accuracy (%), mean ± sd over seeds", "",
          f"Trained on the source's train split less its validation split, tested on each "
          f"domain's test split; seeds {list(config.seeds)}; {config.epochs} epochs; "
          f"{config.size}x{config.size} inputs. The source's own column is in-domain accuracy.",
          "", SELECTION_NOTE.format(rule=result["k_rule"]), "",
          "NeuRN k per source: " + ", ".join(f"{s} → k={k}" for s, k in chosen.items()) + ".",
          "", _markdown(table)]
    sweep_md = ""
    if result["sweep"]:
      sweep = k_sweep_table(result["sweep"])
      sweep["chosen"] = [chosen.get(s) == k for s, k in zip(sweep["source"], sweep["neurn_k"])]
      sweep.to_csv(tmp / "k_sweep.csv", index=False)
      pct = [c for c in sweep.columns if c not in ("source", "neurn_k", "chosen")]
      sweep_md = "\n".join([
          f"NeuRN k sweep ({config.sweep_model}, seeds {list(config.sweep_seeds)}), accuracy "
          f"(%). `validation`: the source's validation split, which chooses k (`chosen`). The "
          f"target columns and their mean are test accuracies, reported to show k's effect and "
          f"never used to choose it.", "",
          _markdown(sweep.assign(**{c: (100 * sweep[c]).round(1) for c in pct}))])
      loo = leave_one_target_out(result["sweep"])
      if len(loo):
        loo.to_csv(tmp / "k_leave_one_target_out.csv", index=False)
        cell = [f"k={k}: {100 * m:.1f} ± {100 * sd:.1f}"
                for k, m, sd in zip(loo["k"], loo["mean"], loo["std"])]
        sweep_md += "\n\n" + "\n".join([
            f"A second rule, for comparison ({config.sweep_model} only): each target scored at "
            f"the k that is best on the other targets' test splits, so no domain is scored at a "
            f"k chosen on itself (test accuracy %, mean ± sd over seeds).", "",
            _markdown(loo[["source", "target"]].assign(accuracy=cell))])
      md += ["", "## NeuRN k", "", sweep_md]
      _plot_sweep(plt, sweep, tmp / "k_sweep.png")
    md += ["", f"Total time: {result['seconds']:.0f} s."]
    (tmp / "table.md").write_text("\n".join(md) + "\n")
    if sweep_md:
      (tmp / "k_sweep.md").write_text(sweep_md + "\n")
    _plot_accuracy(plt, result["results"], tmp / "accuracy.png")
    (tmp / "config.json").write_text(json.dumps(
        {**dataclasses.asdict(config), "chosen_k": chosen, "k_rule": result["k_rule"]},
        indent=2) + "\n")
  return {"table": table, "markdown": "\n".join(md)}


def _markdown(df) -> str:
  cols = [str(c) for c in df.columns]
  rows = [" | ".join(cols), " | ".join("---" for _ in cols)]
  rows += [" | ".join(str(v) for v in r) for r in df.itertuples(index=False)]
  return "\n".join(f"| {r} |" for r in rows)


def _plot_accuracy(plt, results, path: Path) -> None:
  s = summarize(results, by=["model", "source", "neurn_k", "target"])
  s = s[s["source"] == s["source"].iloc[0]]
  models = list(dict.fromkeys(s["model"]))
  targets = list(dict.fromkeys(s["target"]))
  fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.6), squeeze=False)
  for ax, m in zip(axes[0], models):
    sm = s[s["model"] == m]
    ks = sorted(set(sm["neurn_k"]))
    width = 0.8 / len(ks)
    for j, k in enumerate(ks):
      sk = sm[sm["neurn_k"] == k].set_index("target").reindex(targets)
      ax.bar(np.arange(len(targets)) + (j - (len(ks) - 1) / 2) * width, 100 * sk["mean"], width,
             yerr=100 * sk["std"], capsize=2, label="no NeuRN" if k == 0 else f"NeuRN k={k}")
    ax.set_xticks(np.arange(len(targets)), targets, rotation=30)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{m}, trained on {s['source'].iloc[0]}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_sweep(plt, sweep, path: Path) -> None:
  """One panel per source: validation accuracy (chooses k), each target and their mean (test)."""
  sources = list(dict.fromkeys(sweep["source"]))
  fixed = ("source", "neurn_k", "validation", "validation_sd", "mean_over_targets",
           "sd_over_seeds", "chosen")
  fig, axes = plt.subplots(1, len(sources), figsize=(4.8 * len(sources), 3.6), squeeze=False)
  for ax, src in zip(axes[0], sources):
    s = sweep[sweep["source"] == src]
    for t in [c for c in s.columns if c not in fixed and s[c].notna().any()]:
      ax.plot(s["neurn_k"], 100 * s[t], marker="o", lw=1, alpha=0.7, label=f"{t} (test)")
    ax.errorbar(s["neurn_k"], 100 * s["mean_over_targets"], yerr=100 * s["sd_over_seeds"],
                color="k", lw=2, marker="s", capsize=3, label="mean over targets (test)")
    ax.errorbar(s["neurn_k"], 100 * s["validation"], yerr=100 * s["validation_sd"], color="C3",
                ls="--", lw=2, marker="D", capsize=3, label=f"{src} validation (chooses k)")
    for k in s.loc[s["chosen"].astype(bool), "neurn_k"]:
      ax.axvline(k, color="C3", lw=1, ls=":")
    ax.set_xlabel("NeuRN k")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"trained on {src}", fontsize=9)
    ax.set_xticks(s["neurn_k"])
    ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
