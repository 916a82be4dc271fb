"""The random-weights control, drawn as torchvision initializes VGG."""

from __future__ import annotations

import jax
import numpy as np

from jaxmouse.models import vgg
from jaxmouse.weights._types import Weights


_init_params = jax.jit(vgg.init_params, static_argnums=1)


def random_init(arch: str, seed: int, *, normalization: str = "torchvision") -> Weights:
  """Kaiming normal (fan_out, ReLU gain) conv kernels and zero biases, from ``jax.random.key(seed)``.

  The draw is a function of ``(arch, seed)`` only; the random control in the studies is fed
  images normalized as torchvision does, which is the default here.
  """
  params = _init_params(jax.random.key(int(seed)), vgg.check_arch(arch))
  params = jax.tree.map(np.asarray, params)
  return Weights(arch=arch, params=params, normalization=normalization,
                 metadata={"source": "random", "seed": int(seed),
                           "init": "kaiming_normal(fan_out, relu), zero bias"})
