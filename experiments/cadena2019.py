"""Cadena et al. 2019: VGG16 layers (trained vs random weights) and an energy model predict mouse
V1, LM, AL, RL; FEVE per neuron; the layer-to-area hierarchy test.

The configs are code, in ``jaxmouse/studies/cadena2019.py`` (``QUICK``, ``FULL``), so that the
installed ``jaxmouse`` command runs them too. Exact commands:

  jaxmouse run cadena2019 --config quick --out runs/quick
      the embedded default: the simulated mouse (4 areas x 60 neurons, 1,200 images at 36x64,
      100 of them test images shown 10 times; CNN cells planted on a random VGG19, seed 1000,
      through two rectified-squared subunits, with a layer hierarchy from V1 to the higher
      areas) against HED's VGG16 (fetched from PyPI) and one random VGG16 (seed 0), 7 layers
      from conv1_2 to conv5_3, and the energy model; closed-form ridge (5 penalties) on every
      layer and the factorized readout (2 penalty configs) on conv3_3, conv4_3 and conv5_3;
      minutes on 2 CPU cores.
  jaxmouse run cadena2019 --config full --data PATH --out runs/full
      a real data set (Sensorium file tree, Allen NWB files, npz/HDF5): all 13 conv layers,
      3 random seeds, factorized and full-linear readouts with their grids.
  jaxmouse run cadena2019 --config quick --print-config > mine.toml
  jaxmouse run cadena2019 --config mine.toml --set fit.max_steps=2000 --out runs/mine
      a config changed without editing the package (see README.md).

This file runs the same thing: ``python experiments/cadena2019.py --config quick --out RUN``.
"""

import sys

from jaxmouse.cli import main

if __name__ == "__main__":
  raise SystemExit(main(["run", "cadena2019", *sys.argv[1:]]))
