"""NeuRN and domain generalization on digits (Qazi, Jalil & Iqbal, arXiv 2505.06881 / 2505.06886).

A small CNN and a small VGG-style network (flax.nnx) are trained on one digit domain, with and
without NeuRN in front, and tested on the unseen domains; several seeds, mean +- sd. NeuRN's k
is chosen for each source on a validation split of that source (never on a target domain or a
test split); the sweep's target accuracies are reported as k's effect. The configs and the code
are in ``jaxmouse/studies/neurn_digits.py`` (``CONFIGS``: quick, full, tiny), so the installed
``jaxmouse`` command runs them too. Exact commands:

  jaxmouse compare digits --config quick --out runs/neurn_digits
      the offline default: scikit-learn's handwritten digits (source) and four shifted domains
      made from them (MNIST-M recipe with scikit-image photographs, inverted colour/contrast,
      blur + noise, clutter), 32x32, both networks, 3 seeds, 10 epochs, k chosen among
      3/5/7/9/11 on the source's validation split; about 10 minutes on 2 CPU cores.
  jaxmouse compare digits --config full --out runs/neurn_digits_full
      every domain as the source (each chooses its own k), 5 seeds, 30 epochs, k among 3..15.
  jaxmouse compare digits --config quick --data-dir DIGITS --domains mnist,mnist_m,svhn,usps \\
      --source mnist --out runs/neurn_real
      the papers' domains from local files (DIGITS/mnist.npz, ... with x_train, y_train, x_test,
      y_test) or prepared tensorflow-datasets copies (mnist, svhn_cropped); nothing is downloaded.

This file runs the same thing: ``python experiments/neurn_digits.py --config quick --out RUN``.
"""

import sys

from jaxmouse.cli import main

if __name__ == "__main__":
  raise SystemExit(main(["compare", "digits", *sys.argv[1:]]))
