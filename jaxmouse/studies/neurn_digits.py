"""NeuRN and domain generalization on digits: train on one domain, test on the unseen others.

Qazi, Jalil & Iqbal (arXiv 2505.06881, 2505.06886) claim that NeuRN in front of a network raises
its accuracy on digit domains it never saw (MNIST, MNIST-M, SVHN, USPS). This experiment trains a
small CNN and a small VGG-style network in flax.nnx on one domain, with and without NeuRN in front
(nothing else differs: same init seed, same batches), and tests on every other domain; several
seeds, mean +- sd. A sweep over NeuRN's patch size k chooses its default
(``jaxmouse.models.neurn.DEFAULT_K``).

Domains: the offline default builds them from scikit-learn's handwritten digits (see
``jaxmouse.data.digits``): ``digits`` (source) and the shifted ``mnistm`` (MNIST-M recipe with
scikit-image photographs), ``inverted``, ``blurnoise``, ``clutter``. With ``--data-dir`` holding
``mnist.npz``, ``mnist_m.npz``, ``svhn.npz``, ``usps.npz`` (or prepared tfds copies of mnist /
svhn_cropped), ``--domains mnist,mnist_m,svhn,usps --source mnist`` runs the papers' setting.

Run::

  jaxmouse compare digits --config quick --out runs/neurn_digits       # < 10 min on 2 CPU cores
  jaxmouse compare digits --config full --out runs/neurn_digits_full   # every domain as source

Writes ``results.csv`` (one row per model x NeuRN k x seed x source x target), ``table.csv`` /
``table.md`` (mean +- sd over seeds), ``k_sweep.csv`` / ``k_sweep.md``, ``accuracy.png``,
``k_sweep.png`` and ``config.json``.

Choosing k: the sweep trains the small CNN with k in ``sweep_ks`` and reports the mean accuracy
over the target domains. Selecting k on the target domains is the DomainBed "oracle" protocol, so
the sweep's best number is optimistic; ``DEFAULT_K`` is then fixed in the library and the main
table uses it for every model.
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
from jaxmouse.models.neurn import DEFAULT_K, NeuRN

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
  NeuRN" arm. seeds: model-init / batch-order seeds. sweep_ks, sweep_model, sweep_seeds: the k
  sweep (trained on the first source; empty ``sweep_ks`` skips it). epochs, batch_size,
  learning_rate: Adam training. data_seed: domain rendering and split. max_train: cap on training
  images per source (None: all). data_dir: where real domains are read from.
  """

  size: int = 32
  domains: tuple[str, ...] = digits.SYNTHETIC
  sources: tuple[str, ...] = ("digits",)
  models: tuple[str, ...] = ("cnn", "vgg")
  neurn_k: int = DEFAULT_K
  seeds: tuple[int, ...] = (0, 1, 2)
  sweep_ks: tuple[int, ...] = (3, 5, 7, 9, 11)
  sweep_model: str = "cnn"
  sweep_seeds: tuple[int, ...] = (0, 1, 2)
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
    if bad := [k for k in (self.neurn_k,) + self.sweep_ks if k < 1 or k % 2 == 0]:
      raise ValueError(f"Config: NeuRN k must be odd and positive, got {bad}")
    if not self.seeds or self.epochs < 1 or self.size < 8:
      raise ValueError("Config: need >= 1 seed, >= 1 epoch and size >= 8")


CONFIGS = {
    # Fits in ~5 minutes on 2 shared CPU cores.
    "quick": Config(),
    # Every domain as the source, more epochs and seeds, a wider k sweep.
    "full": Config(sources=digits.SYNTHETIC, seeds=(0, 1, 2, 3, 4), epochs=30,
                   sweep_ks=(3, 5, 7, 9, 11, 13, 15), sweep_seeds=(0, 1, 2, 3, 4)),
    # For tests: seconds.
    "tiny": Config(size=16, models=("cnn", "vgg"), neurn_k=3, seeds=(0, 1), sweep_ks=(3, 5),
                   sweep_seeds=(0,), epochs=1, max_train=128),
}


def get_config(name: str, **overrides) -> Config:
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; available {list(CONFIGS)}")
  return dataclasses.replace(CONFIGS[name], **overrides)


# ---- the experiment ----------------------------------------------------------------------------


def run_cell(domains: dict, *, source: str, model: str, neurn_k: int | None, seed: int,
             config: Config) -> list[dict]:
  """Trains one model on ``source``; returns one row per target (and the source's test split)."""
  d = domains[source]
  x, y = d.x_train, d.y_train
  if config.max_train is not None:
    x, y = x[:config.max_train], y[:config.max_train]
  net = build_model(model, size=config.size, neurn_k=neurn_k, seed=seed)
  start = time.perf_counter()
  net, losses = train(net, x, y, epochs=config.epochs, batch_size=config.batch_size,
                      learning_rate=config.learning_rate, key=jax.random.key(seed))
  seconds = time.perf_counter() - start
  return [{"model": model, "neurn_k": 0 if neurn_k is None else neurn_k, "seed": seed,
           "source": source, "target": name, "in_domain": name == source,
           "accuracy": accuracy(net, t.x_test, t.y_test), "final_loss": float(losses[-1]),
           "train_seconds": seconds}
          for name, t in domains.items()]


def summarize(results, *, by: Sequence[str]) -> "pd.DataFrame":
  """Mean, sd (ddof=1; 0 for one seed) and count of accuracy over seeds."""
  import pandas as pd

  g = pd.DataFrame(results).groupby(list(by), sort=False)["accuracy"]
  out = g.agg(["mean", "std", "count"]).reset_index()
  out["std"] = out["std"].fillna(0.0)
  return out


def accuracy_table(results) -> "pd.DataFrame":
  """Rows model x source x NeuRN (none / k), one column per target: ``mean +- sd``."""
  s = summarize(results, by=["model", "source", "neurn_k", "target"])
  s["cell"] = [f"{100 * m:.1f} ± {100 * sd:.1f}" for m, sd in zip(s["mean"], s["std"])]
  s["neurn"] = ["none" if k == 0 else f"k={k}" for k in s["neurn_k"]]
  wide = s.pivot_table(index=["model", "source", "neurn"], columns="target", values="cell",
                       aggfunc="first", sort=False)
  return wide.reset_index()


def run(config: Config, *, progress: Callable | None = None, log: Callable = print) -> dict:
  """Runs every cell; returns ``{"results": rows, "sweep": rows, "seconds": float}``."""
  t0 = time.perf_counter()
  domains = digits.make_domains(size=config.size, seed=config.data_seed,
                                test_fraction=config.test_fraction, domains=config.domains,
                                data_dir=config.data_dir)
  cells = [(src, m, k, s) for src in config.sources for m in config.models
           for k in (None, config.neurn_k) for s in config.seeds]
  sweep_cells = [(config.sources[0], config.sweep_model, k, s) for k in config.sweep_ks
                 for s in config.sweep_seeds]
  done: dict[tuple, list[dict]] = {}
  todo = cells + [c for c in sweep_cells if c not in cells]
  for cell in (progress(todo, desc="train") if progress else todo):
    src, m, k, s = cell
    done[cell] = run_cell(domains, source=src, model=m, neurn_k=k, seed=s, config=config)
    mean_target = np.mean([r["accuracy"] for r in done[cell] if not r["in_domain"]])
    log(f"{m:4s} {src:>9s} neurn={k or '-'} seed={s}: mean target accuracy {mean_target:.3f}")
  results = [r for c in cells for r in done[c]]
  sweep = [r for c in sweep_cells for r in done[c]]
  return {"results": results, "sweep": sweep, "seconds": time.perf_counter() - t0}


def k_sweep_table(sweep) -> "pd.DataFrame":
  """Per k: mean +- sd over seeds of the mean accuracy over targets, and per target."""
  import pandas as pd

  df = pd.DataFrame(sweep)
  df = df[~df["in_domain"]]
  per_seed = df.groupby(["neurn_k", "seed"])["accuracy"].mean().reset_index()
  overall = per_seed.groupby("neurn_k")["accuracy"].agg(["mean", "std"]).fillna(0.0)
  per_target = df.groupby(["neurn_k", "target"])["accuracy"].mean().unstack("target")
  table = per_target.join(overall.rename(columns={"mean": "mean_over_targets",
                                                  "std": "sd_over_seeds"}))
  return table.reset_index()


def write_outputs(out: Path, config: Config, result: dict, *, overwrite: bool = False) -> dict:
  """Writes tables, figures and the config into ``out`` (one atomic folder)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import pandas as pd

  from jaxmouse import _io

  _io.check_output_path(out, overwrite=overwrite)
  table = accuracy_table(result["results"])
  with _io.atomic_path(out, is_dir=True) as tmp:
    pd.DataFrame(result["results"]).to_csv(tmp / "results.csv", index=False)
    table.to_csv(tmp / "table.csv", index=False)
    md = ["# NeuRN on digit domains: test accuracy (%), mean ± sd over seeds", "",
          f"Trained on the source's train split, tested on each domain's test split; seeds "
          f"{list(config.seeds)}; {config.epochs} epochs; {config.size}x{config.size} inputs; "
          f"NeuRN k={config.neurn_k}. The source's own column is in-domain accuracy.", "",
          _markdown(table)]
    sweep_md = ""
    if result["sweep"]:
      sweep = k_sweep_table(result["sweep"])
      sweep.to_csv(tmp / "k_sweep.csv", index=False)
      sweep_md = _markdown(sweep.assign(**{c: (100 * sweep[c]).round(1) for c in sweep.columns
                                           if c != "neurn_k"}))
      md += ["", f"## NeuRN k sweep ({config.sweep_model}, source {config.sources[0]}, seeds "
             f"{list(config.sweep_seeds)}): target accuracy (%)", "", sweep_md]
      _plot_sweep(plt, sweep, tmp / "k_sweep.png")
    md += ["", f"Total time: {result['seconds']:.0f} s."]
    (tmp / "table.md").write_text("\n".join(md) + "\n")
    if sweep_md:
      (tmp / "k_sweep.md").write_text(sweep_md + "\n")
    _plot_accuracy(plt, result["results"], tmp / "accuracy.png")
    (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
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
  fig, ax = plt.subplots(figsize=(4.5, 3.4))
  targets = [c for c in sweep.columns if c not in ("neurn_k", "mean_over_targets", "sd_over_seeds")]
  for t in targets:
    ax.plot(sweep["neurn_k"], 100 * sweep[t], marker="o", lw=1, label=t)
  ax.errorbar(sweep["neurn_k"], 100 * sweep["mean_over_targets"], yerr=100 * sweep["sd_over_seeds"],
              color="k", lw=2, marker="s", capsize=3, label="mean over targets")
  ax.set_xlabel("NeuRN k")
  ax.set_ylabel("target accuracy (%)")
  ax.set_xticks(sweep["neurn_k"])
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
