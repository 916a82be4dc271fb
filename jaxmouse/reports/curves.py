"""Learning curves of a sweep's readouts, read from the cells' ``history.npz``; never fits.

Every cell of a readout trained by gradient descent saves the validation correlation of each
(config, neuron) pair at every check and the step at which each pair stopped. The areas of one
feature space were fitted together (same checks), so their neurons are pooled: the curve of a
config is the median over neurons of its validation correlation at each check, and its stopping
step the median over neurons. Ridge is solved in closed form and has no curve.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd

from jaxmouse.reports.tables import layer_sort_key

HISTORY = "history.npz"


def read_histories(run: str | Path) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
  """``{(weights, layer, readout): {"check_steps": (c,), "val_history": (c, g, k), "stop_step":
  (g, k), "configs": (g,)}}`` with the neurons of every area's cell side by side (axis k), for
  the cells that have learning curves."""
  root = Path(run)
  root = root if root.is_dir() else root.parent
  parts: dict[tuple[str, str, str], list[dict]] = {}
  for meta in sorted(glob.glob(str(root / "**" / "cells" / "*" / "cell.json"), recursive=True)):
    path = Path(meta).with_name(HISTORY)
    if not path.is_file():
      continue
    try:
      c = json.loads(Path(meta).read_text())["cell"]
      key = (str(c["weights"]), str(c["layer"]), str(c["readout"]))
    except (OSError, ValueError, KeyError, TypeError):
      continue  # not a cell of this run's format
    from jaxmouse.data.plain import read_npz

    h = {k: np.asarray(v) for k, v in read_npz(path, what="learning curves").items()}
    if "val_history" in h:
      parts.setdefault(key, []).append(h)
  out = {}
  for key, hs in parts.items():
    steps = hs[0]["check_steps"]
    same = [h for h in hs if np.array_equal(h["check_steps"], steps)]
    out[key] = {"check_steps": steps, "configs": hs[0]["configs"].astype(str),
                "val_history": np.concatenate([h["val_history"] for h in same], axis=2),
                "stop_step": np.concatenate([h["stop_step"] for h in same], axis=1)}
  return out


def learning_curves(histories) -> pd.DataFrame:
  """Long table: ``readout, weights, layer, config, step, median_val_corr, n_neurons,
  median_stop_step`` (medians over neurons; one row per check)."""
  rows = []
  for (weights, layer, readout), h in histories.items():
    med = np.median(h["val_history"], axis=2)  # (c, g)
    stop = np.median(h["stop_step"], axis=1)  # (g,)
    k = h["val_history"].shape[2]
    for j, config in enumerate(h["configs"]):
      for i, step in enumerate(h["check_steps"]):
        rows.append({"readout": readout, "weights": weights, "layer": layer, "config": config,
                     "step": int(step), "median_val_corr": float(med[i, j]), "n_neurons": k,
                     "median_stop_step": float(stop[j])})
  cols = ["readout", "weights", "layer", "config", "step", "median_val_corr", "n_neurons",
          "median_stop_step"]
  return pd.DataFrame(rows, columns=cols)


def plot_learning_curves(curves: pd.DataFrame, *, readout: str, note: str = ""):
  """One panel per feature space (weights x layer): the median validation correlation over
  neurons versus step, one line per penalty config, a tick at each config's median stopping
  step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  df = curves[curves["readout"] == readout]
  spaces = sorted(set(zip(df["weights"], df["layer"])),
                  key=lambda s: (s[0], layer_sort_key(s[1])))
  n = len(spaces)
  cols = min(n, 4)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), sharey=True,
                           squeeze=False)
  configs = list(dict.fromkeys(df["config"]))
  colors = {c: f"C{i % 10}" for i, c in enumerate(configs)}
  for ax, (weights, layer) in zip(axes.flat, spaces):
    sel = df[(df["weights"] == weights) & (df["layer"] == layer)]
    for config, g in sel.groupby("config", sort=False):
      ax.plot(g["step"], g["median_val_corr"], "-", color=colors[config], lw=1.2, label=config)
      stop = g["median_stop_step"].iloc[0]
      at = np.interp(stop, g["step"], g["median_val_corr"])
      ax.plot([stop], [at], "|", color=colors[config], ms=10, mew=1.5)
    ax.set_title(f"{weights} {layer} (n={int(sel['n_neurons'].max())})", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_xlabel("step", fontsize=8)
  for ax in axes.flat[n:]:
    ax.axis("off")
  for ax in axes[:, 0]:
    ax.set_ylabel("validation r (median)", fontsize=8)
  axes.flat[0].legend(fontsize=6, loc="lower right")
  title = (f"Learning curves, {readout} readout: validation correlation per config, median "
           "over neurons (|: median stopping step)")
  fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
  fig.tight_layout()
  return fig
