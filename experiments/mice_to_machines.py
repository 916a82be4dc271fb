"""Mice to Machines (Qazi, Jalil & Iqbal, arXiv 2505.06886): mouse areas and Cre lines against
VGG16 layers and units by RMSE of normalised representations (top-down, bottom-up), RSA and
linear CKA, with and without NeuRN in front of the network.

The configs and the code are in ``jaxmouse/studies/mice_to_machines.py`` (``CONFIGS``: quick,
full, tiny) and ``jaxmouse/compare.py``. Exact commands:

  jaxmouse compare mice --config quick --out runs/mice
      the simulated mouse (six Allen areas, 250 neurons in the paper's proportions, one planted
      VGG16 layer per area, random Cre-line labels as a null control), 400 images at 36x64,
      random VGG16 weights, 7 layers, raw vs NeuRN; a minute or two on 2 CPU cores. Every
      choice (best unit, matched unit, central members, best layer) is made on half of the
      images and every reported value measured on the other half.
  jaxmouse compare --data ALLEN_NWB_DIR --weights WEIGHTS_DIR --config full --out runs/allen
      a folder of Allen Brain Observatory NWB files (natural scenes; Cre lines and excitatory /
      inhibitory classes from the files) against a converted VGG16 checkpoint, all 13 conv layers.

This file runs the same thing: ``python experiments/mice_to_machines.py --config quick --out RUN``.
"""

import sys

from jaxmouse.cli import main

if __name__ == "__main__":
  raise SystemExit(main(["compare", "mice", *sys.argv[1:]]))
