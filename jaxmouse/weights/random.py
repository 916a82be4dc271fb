"""The random-weights control, drawn as torchvision initializes each network."""

from __future__ import annotations

import jax
import numpy as np

from jaxmouse.models import vgg, zoo
from jaxmouse.weights._types import Weights


_init_vgg = jax.jit(vgg.init_params, static_argnums=1)


def random_init(arch: str, seed: int, *, normalization: str = "torchvision") -> Weights:
  """Params drawn from ``jax.random.key(seed)`` as torchvision initializes ``arch`` (VGG: Kaiming
  normal (fan_out, ReLU gain) conv kernels and zero biases; ResNet and MobileNetV2 the same with
  batch norms at weight 1, bias 0, running mean 0 and variance 1; AlexNet PyTorch's default
  uniform; ViT its own truncated-normal / Xavier scheme: ``zoo.init_description(arch)``).

  The draw is a function of ``(arch, seed)`` only; the random control in the studies is fed
  images normalized as torchvision does, which is the default here.
  """
  arch = zoo.check_arch(arch)
  key = jax.random.key(int(seed))
  params = _init_vgg(key, arch) if arch in vgg.ARCHS else zoo.init_params(key, arch)
  params = jax.tree.map(np.asarray, params)
  return Weights(arch=arch, params=params, normalization=normalization,
                 metadata={"source": "random", "seed": int(seed), "kind": "random",
                           "init": ("kaiming_normal(fan_out, relu), zero bias"
                                    if arch in vgg.ARCHS else zoo.init_description(arch))})
