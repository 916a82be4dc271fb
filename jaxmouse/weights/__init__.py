"""CNN weights: conversion (PyTorch state dicts, Keras h5), random init, orbax save/load, fetch.

``Weights`` is the value every later stage takes; ``load``/``save`` move it to and from an
orbax checkpoint folder with a ``metadata.json`` (arch, normalization, source file, sha256).
"""

from jaxmouse.weights._types import Weights, check_params
from jaxmouse.weights.checkpoint import load, read_metadata, save
from jaxmouse.weights.convert import convert
from jaxmouse.weights.fetch import FetchError, fetch_hed, fetch_torchvision
from jaxmouse.weights.random import random_init

__all__ = ["Weights", "check_params", "load", "read_metadata", "save", "random_init", "convert",
           "fetch_hed", "fetch_torchvision", "FetchError"]
