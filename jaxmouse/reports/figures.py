"""The study's figure: test FEVE versus layer depth per area, one curve per network, the
validation-chosen layer of each marked."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from jaxmouse.reports.tables import (_with_networks, choose_network_layers, feve_by_network,
                                     network_label)

_ENERGY_COLOR = "C2"


def plot_feve_vs_layer(df: pd.DataFrame, *, readout: str, area_order: Sequence[str] | None = None,
                       note: str = ""):
  """FEVE (mean +- sem over neurons) versus layer depth, one panel per area and one curve per
  network: trained weights solid, random weights dashed (a random network's seeds averaged),
  one color per architecture; the x axis is each layer's position in its own network scaled
  to [0, 1], so networks of different depth share it (with a single architecture its layer
  names label the ticks). The energy model (its validation-chosen feature set) is a dotted
  line; an open circle marks each curve's layer chosen on validation. ``note`` is appended to
  the title (e.g. "simulated data")."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  df = _with_networks(df)
  by = feve_by_network(df)
  by = by[by["readout"] == readout]
  chosen = choose_network_layers(df)
  chosen = chosen[chosen["readout"] == readout]
  areas = [a for a in (area_order or []) if a in set(by["area"])]
  areas += sorted(set(by["area"]) - set(areas))
  cnn = by[by["weights_kind"] != "energy"]
  networks = list(dict.fromkeys(zip(cnn["network"], cnn["arch"], cnn["weights_kind"])))
  # Trained first, then random, each in the order the table lists them.
  networks.sort(key=lambda t: t[2] != "trained")
  # One color per architecture for its first trained and first random network (a pair reads
  # as solid vs dashed); any further network of the same architecture and kind its own color.
  palette = iter([f"C{i}" for i in (0, 1, 3, 4, 5, 6, 7, 8, 9)] * 4)  # C2: the energy model
  first, taken, color = {}, set(), {}
  for net, arch, kind in networks:
    key = arch or net
    if key in first and (key, kind) not in taken:
      color[net] = first[key]
    else:
      color[net] = next(palette)
      first.setdefault(key, color[net])
    taken.add((key, kind))
  fig, axes = plt.subplots(1, len(areas), figsize=(3.4 * len(areas), 3.6), sharey=True,
                           squeeze=False)
  for ax, area in zip(axes[0], areas):
    for net, arch, kind in networks:
      g = cnn[(cnn["area"] == area) & (cnn["network"] == net)].sort_values("depth")
      if g.empty or g["mean"].isna().all():
        continue
      c = color[net]
      x, m, e = g["depth"].to_numpy(), g["mean"].to_numpy(), g["sem"].fillna(0).to_numpy()
      ax.plot(x, m, "o-" if kind == "trained" else "o--", color=c, ms=3,
              label=network_label(net, arch, kind))
      ax.fill_between(x, m - e, m + e, color=c, alpha=0.2 if kind == "trained" else 0.1)
      pick = chosen[(chosen["area"] == area) & (chosen["network"] == net)]
      if len(pick):
        row = g[g["layer"] == pick["layer"].iloc[0]]
        if len(row):
          ax.plot(row["depth"], row["mean"], "o", ms=9, mfc="none", mec=c, mew=1.5)
    e = by[(by["area"] == area) & (by["weights_kind"] == "energy")]
    pick = chosen[(chosen["area"] == area) & (chosen["weights_kind"] == "energy")]
    if len(pick):
      val = e.loc[e["layer"] == pick["layer"].iloc[0], "mean"].iloc[0]
      ax.axhline(val, color=_ENERGY_COLOR, ls=":", label="energy model")
    n = int(by[by["area"] == area]["count"].max())
    ax.set_title(f"{area} (n={n})")
    ax.set_xlim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    if len(set(a for _, a, _ in networks)) == 1 and len(networks):
      # One architecture: its layers' names on the depth axis.
      ticks = cnn[["layer", "depth"]].drop_duplicates().sort_values("depth")
      ax.set_xticks(ticks["depth"])
      ax.set_xticklabels(ticks["layer"], rotation=90, fontsize=7)
    else:
      ax.set_xlabel("relative depth (first layer 0, last 1)", fontsize=8)
  axes[0][0].set_ylabel("test FEVE (mean ± sem over neurons)")
  axes[0][0].legend(fontsize=7, loc="best")
  title = (f"Feature space versus area, {readout} readout\ntrained weights solid, random "
           "dashed; circles: the layer chosen on validation")
  fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
  fig.tight_layout()
  return fig
