"""The study's figure: test FEVE versus layer per area, with the validation-chosen layers marked."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from jaxmouse.reports.tables import choose_layers, feve_by_layer, layer_order

_COLORS = {"trained": "C0", "random": "C1", "energy": "C2"}


def plot_feve_vs_layer(df: pd.DataFrame, *, readout: str, area_order: Sequence[str] | None = None,
                       note: str = ""):
  """FEVE (mean +- sem over neurons) versus layer, one panel per area; trained and random
  curves, the energy model (its validation-chosen feature set) as a dashed line; an open circle
  marks each curve's layer chosen on validation. ``note`` is appended to the title (e.g.
  "simulated data")."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  layers = layer_order(df)
  by_layer = feve_by_layer(df)
  by_layer = by_layer[by_layer["readout"] == readout]
  chosen = choose_layers(df)
  chosen = chosen[chosen["readout"] == readout]
  areas = [a for a in (area_order or []) if a in set(by_layer["area"])]
  areas += sorted(set(by_layer["area"]) - set(areas))
  fig, axes = plt.subplots(1, len(areas), figsize=(3.2 * len(areas), 3.4), sharey=True,
                           squeeze=False)
  x = np.arange(len(layers))
  for ax, area in zip(axes[0], areas):
    for kind in ("trained", "random"):
      g = by_layer[(by_layer["area"] == area) & (by_layer["weights_kind"] == kind)]
      g = g.set_index("layer").reindex(layers)
      if g["mean"].notna().any():
        c = _COLORS[kind]
        ax.plot(x, g["mean"], "o-", color=c, ms=3, label=f"{kind} weights")
        ax.fill_between(x, g["mean"] - g["sem"], g["mean"] + g["sem"], color=c, alpha=0.25)
        pick = chosen[(chosen["area"] == area) & (chosen["weights_kind"] == kind)]
        if len(pick) and pick["layer"].iloc[0] in layers:
          i = layers.index(pick["layer"].iloc[0])
          ax.plot([x[i]], [g["mean"].iloc[i]], "o", ms=9, mfc="none", mec=c, mew=1.5)
    e = by_layer[(by_layer["area"] == area) & (by_layer["weights_kind"] == "energy")]
    pick = chosen[(chosen["area"] == area) & (chosen["weights_kind"] == "energy")]
    if len(pick):
      val = e.loc[e["layer"] == pick["layer"].iloc[0], "mean"].iloc[0]
      ax.axhline(val, color=_COLORS["energy"], ls="--", label="energy model")
    ax.set_title(f"{area} (n={int(by_layer[by_layer['area'] == area]['count'].max())})")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=7)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test FEVE (mean ± sem over neurons)")
  axes[0][0].legend(fontsize=7, loc="best")
  title = f"Feature space versus area, {readout} readout (circles: layer chosen on validation)"
  fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
  fig.tight_layout()
  return fig
