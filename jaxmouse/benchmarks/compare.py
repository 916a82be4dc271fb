"""Seconds for a whole mice-to-machines table: areas x layers x neurons, RMSE + RSA + CKA.

A synthetic problem of the study's size: ``--neurons`` neurons in six areas (and two cell
classes), ``--images`` images, the 13 VGG16 conv layers at their real shapes for ``--size`` inputs
(random ReLU features stand in for the network, so the network's own cost is not counted: see
``jaxmouse bench features``). ``jaxmouse.compare.compare_dataset`` computes everything; the
baseline computes only the whole-layer RSA and CKA table pair by pair with SciPy/NumPy
(``pdist(..., "correlation")`` + ``spearmanr``, CKA from centred Gram matrices), the way a loop
over rsatoolbox-style calls would.

    jaxmouse bench compare                      # 118 images, 3000 neurons, 13 layers at 36x64
    jaxmouse bench compare --neurons 6000 --no-baseline
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--images", type=int, default=118, help="distinct images (Allen: 118)")
  parser.add_argument("--repeats", type=int, default=10, help="trials per image")
  parser.add_argument("--neurons", type=int, default=3000, help="neurons over six areas")
  parser.add_argument("--size", default="36x64", help="HxW network input")
  parser.add_argument("--layers", type=int, default=13, help="first N VGG16 conv layers")
  parser.add_argument("--no-baseline", action="store_true", help="skip the SciPy/NumPy loop")


def problem(*, images: int, repeats: int, neurons: int, size: tuple[int, int], seed: int = 0):
  """A NeuralDataset of random responses in six areas plus random cell classes."""
  from jaxmouse.data import NeuralDataset

  rng = np.random.default_rng(seed)
  trial_image = np.repeat(np.arange(images), repeats)
  areas = np.array(["VISp", "VISl", "VISal", "VISrl", "VISpm", "VISam"])[
      rng.integers(6, size=neurons)]
  return NeuralDataset(
      images=rng.uniform(0, 255, (images,) + size).astype(np.float32),
      responses=rng.gamma(2.0, 1.0, (trial_image.size, neurons)).astype(np.float32),
      trial_image=trial_image, tiers=np.full(trial_image.size, "train"),
      unit_ids=np.arange(neurons), areas=areas,
      neuron_meta={"cell_class": np.where(rng.random(neurons) < 0.5, "excitatory", "inhibitory")},
      name="bench")


def baseline(responses_by_group, features_by_layer) -> float:
  """Seconds for whole-layer RSA + CKA, pair by pair, with SciPy / NumPy (float64)."""
  from scipy.spatial.distance import pdist
  from scipy.stats import spearmanr

  start = time.perf_counter()
  for r in responses_by_group:
    for f in features_by_layer:
      spearmanr(pdist(r, "correlation"), pdist(f, "correlation"))
      x, y = f - f.mean(0), r - r.mean(0)
      k, l = x @ x.T, y @ y.T  # Gram form: feature-space X^T X of a whole layer does not fit
      np.sum(k * l) / (np.linalg.norm(k) * np.linalg.norm(l))
  return time.perf_counter() - start


def run(args) -> dict:
  import jax

  from jaxmouse import compare
  from jaxmouse.models import vgg

  h, w = (int(v) for v in args.size.lower().split("x"))
  layers = vgg.CONV_LAYERS["vgg16"][:args.layers]
  ds = problem(images=args.images, repeats=args.repeats, neurons=args.neurons, size=(h, w))
  rng = np.random.default_rng(1)
  feats = {l: np.maximum(rng.standard_normal((args.images,) + vgg.output_shape("vgg16", l, h, w),
                                             dtype=np.float32), 0) for l in layers}
  config = compare.CompareConfig(layers=layers, map_shape=(h // 2, w // 2))
  fn = lambda images, ls: {ls[0]: feats[ls[0]]}
  compare.compare_dataset(ds, fn, config)  # compile
  start = time.perf_counter()
  out = compare.compare_dataset(ds, fn, config)
  seconds = time.perf_counter() - start
  n_groups = sum(len(g) for g in out["groups"].values())
  dev = jax.devices()[0]
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__} on "
        f"{dev.platform} ({dev.device_kind})")
  print(f"{args.neurons} neurons in {n_groups} groups (6 areas + 2 cell classes), {args.images} "
        f"images x {args.repeats} repeats, {len(layers)} VGG16 layers at {h}x{w} "
        f"({sum(f[0].size for f in feats.values()):,} features per image)")
  result = {"seconds": seconds, "cells": n_groups * len(layers)}
  print(f"jaxmouse compare_dataset (RMSE top-down/bottom-up, RSA + CKA layer + matched): "
        f"{seconds:.2f} s for {result['cells']} group x layer cells")
  if not args.no_baseline:
    mean = compare.image_average(ds.responses, ds.trial_image, ds.n_images)
    groups = [mean[:, idx] for gs in out["groups"].values() for idx in gs.values()]
    flat = [f.reshape(args.images, -1).astype(np.float64) for f in feats.values()]
    base = baseline(groups, flat)
    result["baseline_seconds"] = base
    print(f"SciPy/NumPy pair-by-pair loop (whole-layer RSA + CKA only): {base:.2f} s "
          f"({base / seconds:.1f}x the full jaxmouse table)")
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  run(parser.parse_args(argv))


if __name__ == "__main__":
  main()
