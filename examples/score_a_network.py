"""Score a network's layers on a simulated mouse with one call, and plot the result.

  python examples/score_a_network.py --out runs/example     # about a minute on 2 CPU cores

The mouse is simulated: its CNN cells read a random VGG19 (seed 1000) through a nonlinear
subunit model, V1 from conv2_2 and the higher areas from conv3_3 / conv4_1, and a share of its
cells are Gabor energy cells. The network scored is a different one, a random VGG16 (seed 0),
next to a feature space of raw pixels, so the example shows the API, not a foregone answer.
Writes scores.csv (the results table of ``jaxmouse sweep``) and feve_by_layer.png.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

import jaxmouse
from jaxmouse import weights
from jaxmouse.data import SimulationConfig, simulate


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="runs/example", help="output folder")
  args = p.parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  sim = SimulationConfig(areas=("V1", "LM", "AL", "RL"), neurons_per_area=20,
                         image_shape=(24, 32), n_images=400, n_test_images=40, n_repeats=5,
                         arch="vgg19", weights_seed=1000, subunits=2, seed=0)
  ds, truth = simulate(sim)

  layers = ["conv1_2", "conv2_2", "conv3_1", "conv3_3", "conv4_1", "conv4_3"]
  network = jaxmouse.score(weights.random_init("vgg16", 0), ds, layers=layers, readout="ridge",
                           name="random_vgg16", kind="random")
  pixels = jaxmouse.score({"pixels": ds.images[..., None]}, ds, readout="ridge", name="pixels")
  table = pd.concat([network, pixels], ignore_index=True)
  table.to_csv(out / "scores.csv", index=False)

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(sim.areas), figsize=(3.2 * len(sim.areas), 3.2), sharey=True)
  for ax, area, planted in zip(axes, sim.areas, sim.layers):
    sel = network[network["area"] == area]
    mean = sel.groupby("layer", sort=False)["feve"].mean().reindex(layers)
    sem = sel.groupby("layer", sort=False)["feve"].sem().reindex(layers)
    x = np.arange(len(layers))
    ax.errorbar(x, mean, yerr=sem, fmt="o-", ms=3, label="random VGG16")
    ax.axhline(pixels.loc[pixels["area"] == area, "feve"].mean(), color="gray", ls="--",
               label="pixels")
    ax.set_xticks(x, layers, rotation=90, fontsize=7)
    ax.set_title(f"{area} (planted: {'/'.join(planted)} of VGG19)", fontsize=8)
  axes[0].set_ylabel("test FEVE (mean ± sem)")
  axes[0].legend(fontsize=7)
  fig.suptitle("SIMULATED mouse: ridge readouts of a random VGG16's layers and of raw pixels "
               "(jaxmouse.score)", fontsize=9)
  fig.tight_layout()
  fig.savefig(out / "feve_by_layer.png", dpi=120)
  print(table.groupby(["weights", "layer"], sort=False)["feve"].mean().round(3).to_string())
  print(f"wrote {out / 'scores.csv'} and {out / 'feve_by_layer.png'} (simulated data)")


if __name__ == "__main__":
  main()
