"""Fitting readouts on frozen features: every neuron and every hyperparameter config at once.

The parameters of a readout carry leading axes ``(g, k)`` = (configs, neurons). Each (config,
neuron) pair is an independent model, so the total loss is the sum of the pairs' losses and its
gradient with respect to one pair's parameters is that pair's own gradient; Adam is elementwise,
so one optimizer over the whole pytree is exactly one Adam per pair. A step is therefore one
jitted function of the whole grid, compiled once per feature shape (penalty strengths are data).

Per pair, as in the studies' training loops (Cadena et al. 2019; neuralpredictors):
  - a loss that fits the response type, plus the readout's penalties:
    Poisson ``mean_b (pred - r log(pred))`` for non-negative responses (spike counts,
    deconvolved events; the log taken exactly, see ``log_output_fn``, instead of the studies'
    ``log(pred + 1e-9)`` guard), or Gaussian ``mean_b (pred - r)^2`` (mean squared error) for
    responses that can be negative (dF/F). ``loss="auto"`` picks Gaussian when any training
    response is negative, else Poisson (``resolve_loss``); an explicit Poisson loss on negative
    responses is refused;
  - output nonlinearity ELU(x - 1) + 1 (or softplus) for Poisson, the identity (``linear``) for
    Gaussian; bias initialised so that the output equals the mean response;
  - validation correlation every ``eval_every`` steps; after ``patience`` checks without
    improvement the pair's best parameters are restored and its learning rate divided by
    ``lr_decay``; after ``max_decays`` such decays the pair stops (its updates become zero).
    The studies apply this rule to one all-neuron model, on the mean over neurons, and so does
    ``FitConfig.stop_on="config"`` (the default) for each config (and each area: ``fit``'s
    ``stop_groups``); ``"pair"`` applies it to each pair on its own correlation;
  - the returned parameters are each pair's best on validation (per config: at the config's
    best check).

Model selection picks one config per neuron (or one per area) by validation correlation; test
scores come from ``jaxmouse.metrics``.

Sharding: pass ``mesh=make_mesh()`` to split the neuron (and config) axes of parameters and
optimizer state over devices with ``NamedSharding``, and the features' images over all of them
(each device holds its share; a step gathers only its batch); the code is the same on one CPU or
many accelerators and the numbers agree. After ``jax.distributed.initialize`` the mesh
spans the devices of every process: each process passes the same inputs, places only its own
devices' blocks, and reads results (the stopping test, the returned arrays) gathered over all
processes, so every process takes the same decisions and returns the same ``FitResult``.

Example: ridge readouts of every neuron of a small simulated mouse on its raw pixels, a penalty
chosen per neuron on validation, scored on the test repeats:

>>> from jaxmouse import fit
>>> from jaxmouse.data import SimulationConfig, simulate
>>> ds, _ = simulate(SimulationConfig.tiny(seed=1))
>>> tiers = {t: fit.Trials(*ds.tier(t)) for t in ("train", "validation", "test")}
>>> r = fit.fit_and_score(ds.images[..., None], **tiers, readout="ridge")
>>> r.scores["feve"].shape == (ds.n_neurons,) and len(r.configs) == 7
True
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import mmap
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmouse import metrics
from jaxmouse import readouts as readouts_lib
from jaxmouse.readouts import ridge as ridge_lib

LOSSES = ("poisson", "gaussian")
RATE_OUTPUTS = ("elu", "softplus")  # positive outputs: a Poisson rate
OUTPUTS = (*RATE_OUTPUTS, "linear")
DEFAULT_OUTPUT = {"poisson": "elu", "gaussian": "linear"}
DEFAULT_LR = {"factorized": 5e-3, "gaussian": 5e-3, "full": 1e-4}
_LOG_EPS = 1e-9
DTYPES = ("float32", "bfloat16")
STOP_ON = ("pair", "config")

_log = logging.getLogger(__name__)


# ---- configuration and inputs ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig:
  """How readouts are trained. Every field has the studies' convention or a tested default.

  Attributes:
    loss: ``"poisson"`` (non-negative responses: spike counts, deconvolved events),
      ``"gaussian"`` (mean squared error; responses that can be negative, such as dF/F) or
      ``"auto"`` (Gaussian when any training response is negative, else Poisson; resolved by
      ``resolve_loss`` when a fit starts).
    output: ``"elu"`` (ELU(x - 1) + 1), ``"softplus"`` or ``"linear"`` (the identity); None
      takes the loss's default (Poisson ``elu``, Gaussian ``linear``). A Poisson rate must be
      positive, so Poisson with ``linear`` is refused; Gaussian with ``elu``/``softplus`` (a
      shifted positive output) is allowed for non-negative responses.
    lr: Adam learning rate (per pair; divided by ``lr_decay`` on each plateau); None takes the
      readout's default ``DEFAULT_LR`` (the full readout has h*w*c weights per neuron and
      needs a much smaller step than the factorized one, as in Cadena et al. 2019).
    batch_size: trials per step.
    max_steps: upper bound on steps (early stopping usually ends sooner).
    eval_every: steps between validation checks (one jitted chunk of steps).
    patience: checks without improvement before a pair's learning rate decays.
    lr_decay: divisor of the learning rate on a plateau.
    max_decays: decays before a pair stops.
    tolerance: minimal improvement of validation correlation that counts.
    batch_norm: standardize each channel on the training images and apply ReLU before the
      readout (the studies' batch norm + ReLU, with the affine part left to the readout; sweeps
      apply it to CNN layers, not to the energy model's already rectified features);
      otherwise the features are only divided by one global scale so that penalty strengths
      mean the same for every layer.
    init_scale: scale of the initial feature weights (None: the readout's default).
    memory_mb: bound for the step's largest intermediate; larger batches are split into
      micro-batches whose gradients are summed (the same result, less memory).
    compact: once at most half of the pairs still train, gather them onto a smaller table so
      that stopped pairs cost nothing (every pair's result is the same either way; the step
      recompiles for each new table size, a power of two). Stochastic readouts keep one table.
    state_mb: bound for the pairs' parameters, best parameters and Adam moments; a larger
      grid is fitted in blocks, one after another: of whole configs per config (``stop_on``),
      of neurons per pair (every pair's result is the same either way). A step's gradients
      and penalty terms take more again: with the default, a block of the ``full`` readout on
      conv1_2 (36x64, 18 configs x 12 neurons) added up to 1.2 GiB to the 4.8 GiB that a sweep
      held (the layer's 2.8 GiB of features among them).
    warm_start: start every config from the ridge solution on the same features (penalty per
      neuron chosen on validation, as early stopping is), through the readout's
      ``from_linear`` (factorized: each neuron's rank-1 factor). None (default): wherever the
      readout has one (factorized, full); False: small random weights, as in Cadena et al.
      On planted problems the start is most of the way to the answer, early stopping ends
      sooner and ends higher (``jaxmouse bench fit --to-solution``).
    dtype: ``"float32"`` or ``"bfloat16"``: how the features are held on the device and
      multiplied (with float32 accumulation; parameters, gradients and Adam stay float32).
      bfloat16 halves the features' memory and uses the faster bf16 matmul units.
    stop_on: what the stopping rule (improvement, plateau, decay, stop, kept check) is applied
      to. ``"config"`` (default): all neurons of a config together (of each of ``fit``'s
      ``stop_groups``, e.g. areas), on their mean validation correlation, as one all-neuron
      model per config is stopped in neuralpredictors and Cadena et al. Where the grid's state
      is over ``state_mb``, whole configs are fitted one block after another (the same
      results); where even one config's neurons are over it, blocks of neurons, each config
      stopping on a block's mean (a warning says so). ``"pair"``: each (config, neuron) pair on
      its own validation correlation, so that a pair stops as soon as it has converged. One
      neuron's correlation on a validation set of a few hundred images is noisy, so per pair
      the rule stops sooner and keeps checks that were lucky on validation: on the planted
      problem of ``jaxmouse bench fit --to-solution`` (100 validation images) a neuron's chosen
      config predicted held-out images worse per pair than per config.
    warmup: steps over which each pair's learning rate rises linearly from ``lr / warmup`` to
      ``lr`` (then the rule's decays apply). Adam's first steps move every parameter by about
      the learning rate whatever its gradient, which throws much of a warm start away. None
      (default): 100 steps where a fit starts from the ridge solution and stops per config, 0
      otherwise (random starts, as in Cadena et al.; per pair, where it cost on the tests'
      strong-signal problem). Measured with ``jaxmouse bench fit --to-solution``'s rule on its
      planted problems: 37-49% fewer config-steps and better held-out predictions, and the
      same test FEVE on the strong-signal problem of the tests; no change that matters on the
      full readout (README).
    seed: initialisation and minibatch order.
  """
  loss: str = "auto"
  output: str | None = None
  lr: float | None = None
  batch_size: int = 256
  max_steps: int = 5000
  eval_every: int = 100
  patience: int = 10
  lr_decay: float = 3.0
  max_decays: int = 3
  tolerance: float = 1e-5
  batch_norm: bool = False
  init_scale: float | None = None
  memory_mb: float = 1024.0
  compact: bool = True
  state_mb: float = 512.0
  warm_start: bool | None = None
  dtype: str = "float32"
  stop_on: str = "config"
  warmup: int | None = None
  seed: int = 0

  def __post_init__(self):
    if self.loss not in (*LOSSES, "auto"):
      raise ValueError(f"FitConfig.loss must be one of {(*LOSSES, 'auto')}, got {self.loss!r}")
    if self.output is not None and self.output not in OUTPUTS:
      raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
    if self.loss == "poisson" and self.output == "linear":
      raise ValueError("FitConfig: a Poisson loss needs a positive rate; output 'linear' can be "
                       f"negative (use one of {RATE_OUTPUTS}, or loss='gaussian')")
    for name in ("batch_size", "max_steps", "eval_every", "patience"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"FitConfig.{name} must be a positive integer, got {v!r}")
    if not isinstance(self.max_decays, (int, np.integer)) or self.max_decays < 0:
      raise ValueError(f"FitConfig.max_decays must be an integer >= 0, got {self.max_decays!r}")
    if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"FitConfig.lr must be positive or None, got {self.lr!r}")
    if not self.lr_decay > 1:
      raise ValueError(f"FitConfig.lr_decay must be > 1, got {self.lr_decay!r}")
    if not self.state_mb > 0:
      raise ValueError(f"FitConfig.state_mb must be positive, got {self.state_mb!r}")
    if self.tolerance < 0 or self.memory_mb <= 0:
      raise ValueError("FitConfig.tolerance must be >= 0 and memory_mb > 0, got "
                       f"{self.tolerance!r}, {self.memory_mb!r}")
    if self.stop_on not in STOP_ON:
      raise ValueError(f"FitConfig.stop_on must be one of {STOP_ON}, got {self.stop_on!r}")
    if self.dtype not in DTYPES:
      raise ValueError(f"FitConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
    if self.warmup is not None and not (isinstance(self.warmup, (int, np.integer))
                                        and self.warmup >= 0):
      raise ValueError(f"FitConfig.warmup must be an integer >= 0 or None, got {self.warmup!r}")
    if self.init_scale is not None and not self.init_scale > 0:
      raise ValueError(f"FitConfig.init_scale must be positive or None, got {self.init_scale!r}")


WARM_START_WARMUP = 100  # FitConfig.warmup's default from the warm start, per config


def resolve_warmup(config: FitConfig, warm: bool) -> int:
  """The warm-up steps of a fit: ``config.warmup``, or where None, ``WARM_START_WARMUP`` for a
  fit from the warm start that stops per config, else 0."""
  if config.warmup is not None:
    return int(config.warmup)
  return WARM_START_WARMUP if warm and config.stop_on == "config" else 0


def resolve_loss(config: FitConfig, train_responses) -> tuple[FitConfig, str]:
  """The config with a concrete loss and output for these training responses ``(t, k)``, and a
  readable account of the choice (e.g. ``"auto: 12% of training responses are negative"``).

  ``"auto"``: Gaussian when any training response is negative (dF/F), else Poisson (counts,
  events). The choice is a property of the response type, made on the training trials only.
  Raises ValueError for an explicit Poisson loss on negative responses.
  """
  y = np.asarray(train_responses)
  n_neg = int(np.count_nonzero(y < 0))
  share = f"{100.0 * n_neg / max(y.size, 1):.3g}%"
  if config.loss == "auto":
    loss = "gaussian" if n_neg else "poisson"
    why = (f"auto: {share} of training responses are negative" if n_neg else
           "auto: no training response is negative")
  else:
    loss, why = config.loss, "as configured"
    if loss == "poisson" and n_neg:
      raise ValueError(f"a Poisson loss needs non-negative responses, but {n_neg} of {y.size} "
                       f"training responses ({share}) are negative (min {float(y.min()):.3g}; "
                       "dF/F?); use loss 'gaussian' or 'auto' (--loss gaussian), or "
                       "non-negative responses such as L0 events")
  output = config.output or DEFAULT_OUTPUT[loss]
  if loss == "poisson" and output not in RATE_OUTPUTS:
    raise ValueError(f"a Poisson loss needs a positive output ({RATE_OUTPUTS}), got {output!r}")
  return dataclasses.replace(config, loss=loss, output=output), why


class Trials(NamedTuple):
  """Trials of one tier: ``image (t,)`` indexes the feature array's first axis; ``responses (t, k)``."""
  image: np.ndarray
  responses: np.ndarray


def check_inputs(features, tiers: Mapping[str, Trials]) -> tuple[int, int]:
  """Validates features ``(n, h, w, c)`` and the tiers' trials; returns ``(n_images, k)``.

  Raises ValueError naming the tier and shapes for disagreeing neuron counts, image indices
  beyond the feature array, or non-finite responses; NaN features are checked by
  ``prepare_features``.
  """
  shape = tuple(getattr(features, "shape", ()))
  if len(shape) != 4:
    raise ValueError(f"features must be (n_images, h, w, c), got shape {shape}")
  n = shape[0]
  k = None
  for name, t in tiers.items():
    image = np.asarray(t.image)
    resp = np.asarray(t.responses)
    if resp.ndim != 2 or image.shape != (resp.shape[0],):
      raise ValueError(f"{name} trials: image must be (t,) and responses (t, k) with one t, got "
                       f"{image.shape} and {resp.shape}")
    if resp.shape[0] == 0:
      raise ValueError(f"{name} tier has no trials")
    if not np.issubdtype(image.dtype, np.integer):
      raise ValueError(f"{name} trials: image indices must be integers, got {image.dtype}")
    if image.min() < 0 or image.max() >= n:
      raise ValueError(f"{name} trials refer to images {image.min()}..{image.max()} but the "
                       f"features {shape} hold {n} images (features and responses disagree on "
                       "the image count)")
    if k is None:
      k = resp.shape[1]
    elif resp.shape[1] != k:
      raise ValueError(f"{name} responses have {resp.shape[1]} neurons, other tiers {k}")
    if not np.isfinite(resp).all():
      raise ValueError(f"{name} responses {resp.shape} contain NaN or infinite values")
  if not k:
    raise ValueError("no neurons to fit (responses have 0 columns)")
  return n, k


def feature_dtype(config: FitConfig):
  """The NumPy dtype features are held in for ``config`` (float32 or ml_dtypes' bfloat16)."""
  return jnp.bfloat16 if config.dtype == "bfloat16" else np.float32


def prepare_features(features, *, train_images, batch_norm: bool = False, dtype=np.float32,
                     chunk_mb: float = 256.0) -> np.ndarray:
  """Features normalized with statistics of the training images, as a new ``dtype`` array.

  ``batch_norm``: per channel ``relu((x - mean_c) / std_c)``; else ``x / std`` with one global std.
  ``features`` (e.g. a memmap of the feature cache) is read in chunks of about ``chunk_mb``
  twice (statistics, then the normalized copy); no whole-size temporary is made, so the peak
  is the result plus a chunk. The result is 64-byte aligned, so that a fit on the CPU places
  it on the device without a second copy. Raises ValueError if any value is NaN or infinite.
  """
  shape = tuple(features.shape)
  n = shape[0]
  rows = max(1, int(chunk_mb * 2**20 // max(8 * int(np.prod(shape[1:])), 1)))
  train = np.unique(np.asarray(train_images))
  axes = tuple(range(len(shape) - 1)) if batch_norm else None
  chunks = [(a, min(a + rows, n)) for a in range(0, n, rows)]
  bad, shift, total, total_sq, count = [], None, 0.0, 0.0, 0
  for a, b in chunks:
    x = _read_rows(features, a, b)
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    bad.extend((a + np.flatnonzero(~finite)).tolist())
    ref = x[train[(train >= a) & (train < b)] - a].astype(np.float64)
    if ref.size and finite.all():
      if shift is None:  # sums of shifted values: no cancellation when the mean is large
        shift = ref.mean(axis=axes)
      ref -= shift
      total = total + ref.sum(axis=axes)
      total_sq = total_sq + (ref**2).sum(axis=axes)
      count += ref.size // (np.size(shift) if batch_norm else 1)
  if bad:
    raise ValueError(f"features {shape} contain NaN or infinite values in {len(bad)} image(s), "
                     f"first indices {bad[:10]}")
  mean = shift + total / count
  std = np.sqrt(np.maximum(total_sq / count - (total / count)**2, 0.0))
  out = ridge_lib.aligned_empty(shape, dtype)
  if batch_norm:
    std = np.where(std > 1e-8, std, 1.0)
    mean, scale = mean.astype(np.float32), (1.0 / std).astype(np.float32)
    for a, b in chunks:
      out[a:b] = np.maximum((_read_rows(features, a, b) - mean) * scale, 0.0)
  else:
    scale = np.float32(1.0 / (float(std) if std > 1e-8 else 1.0))
    for a, b in chunks:
      out[a:b] = _read_rows(features, a, b) * scale
  return out


def _read_rows(features, a: int, b: int) -> np.ndarray:
  """Rows ``a:b`` as float32. From a read-only memmap (the feature cache), the pages just read
  are handed back to the kernel, so that reading a whole file does not keep it resident in this
  process (a copy-on-write map is left alone: dropping its pages would drop its changes)."""
  x = np.array(features[a:b], np.float32)
  mapping = getattr(features, "_mmap", None)
  if getattr(features, "mode", None) == "r" and hasattr(mapping, "madvise"):
    mapping.madvise(mmap.MADV_DONTNEED)
  return x


# ---- outputs and loss ------------------------------------------------------------------------

def output_fn(name: str):
  """The output nonlinearity: ``elu`` is ELU(x - 1) + 1, ``softplus`` log(1 + e^x), ``linear``
  the identity."""
  if name == "elu":
    return lambda z: jax.nn.elu(z - 1.0) + 1.0
  if name == "softplus":
    return jax.nn.softplus
  if name == "linear":
    return lambda z: z
  raise ValueError(f"output must be one of {OUTPUTS}, got {name!r}")


def log_output_fn(name: str):
  """The log of the output nonlinearity, exact where the rate underflows.

  The studies' loss guards ``log(rate + 1e-9)``; in float32 ``ELU(x - 1) + 1`` is exactly 0 below
  x ~ -16, and the compiler may fold ``(... + 1) + 1e-9`` into ``... + 1``, giving log(0) = -inf
  and NaN gradients. ``log(ELU(x - 1) + 1)`` is simply ``x - 1`` there, so no guard is needed.
  Both branches are kept finite so that ``where`` has finite gradients.
  """
  if name == "elu":
    return lambda z: jnp.where(z > 1.0, jnp.log(jnp.where(z > 1.0, z, 1.0)), z - 1.0)
  if name == "softplus":
    def log_softplus(z):
      small = z < -15.0  # softplus(z) = e^z (1 - e^z / 2 + ...): log is z to float32 precision
      return jnp.where(small, z, jnp.log(jax.nn.softplus(jnp.where(small, 0.0, z))))
    return log_softplus
  raise ValueError(f"a log rate needs a positive output, one of {RATE_OUTPUTS}; got {name!r}")


def initial_bias(mean_response, output: str):
  """The bias whose output equals the mean response: ``(k,)`` -> ``(k,)``.

  ``linear``: the mean itself (negative for a neuron whose mean dF/F is negative); the positive
  outputs clip the mean at 1e-3, the smallest rate they start from.
  """
  if output == "linear":
    return np.asarray(mean_response, np.float32)
  m = np.maximum(np.asarray(mean_response, np.float64), 1e-3)
  if output == "elu":
    b = np.where(m >= 1.0, m, 1.0 + np.log(m))
  elif output == "softplus":
    b = np.where(m > 20, m, np.log(np.expm1(np.minimum(m, 20))))
  else:
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
  return b.astype(np.float32)


def per_slot(y):
  """Responses ``(b, k)`` (one column per neuron, shared by every config) as ``(b, 1, k)``; a
  ``(b, g, k)`` table (each (config, neuron) slot's own neuron) is returned as it is."""
  return y[:, None, :] if y.ndim == 2 else y


def poisson_loss(z, y, *, output: str = "elu"):
  """Poisson negative log likelihood ``rate - y log(rate)`` summed over the batch, per (config,
  neuron): ``z (b, g, k)`` linear predictions, ``y (b, k)`` or ``(b, g, k)`` -> ``(g, k)``."""
  rate = output_fn(output)(z)
  return jnp.sum(rate - per_slot(y) * log_output_fn(output)(z), axis=0)


def gaussian_loss(z, y, *, output: str = "linear"):
  """Squared error ``(pred - y)^2`` summed over the batch, per (config, neuron): ``z (b, g, k)``
  linear predictions, ``y (b, k)`` or ``(b, g, k)`` -> ``(g, k)``. The negative log likelihood of
  a Gaussian with fixed variance, up to scale and a constant."""
  return jnp.sum((output_fn(output)(z) - per_slot(y)) ** 2, axis=0)


def data_loss(params, x, y, *, readout: str, output: str, key=None, n_total=None,
              loss: str = "poisson"):
  """The loss of a batch, ``(g, k)``: summed over ``x (b, ...)``, divided by ``n_total``
  (default ``b``; a micro-batch passes the full batch size so that its parts sum to the mean).
  ``loss``: ``"poisson"`` or ``"gaussian"`` (mean squared error)."""
  z = readouts_lib.get(readout).predict(params, x, key=key)  # (b, g, k)
  n = x.shape[0] if n_total is None else n_total
  if loss == "poisson":
    return poisson_loss(z, y, output=output) / n
  if loss == "gaussian":
    return gaussian_loss(z, y, output=output) / n
  raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def loss_per_pair(params, x, y, reg, *, readout: str, output: str, key=None,
                  loss: str = "poisson"):
  """The loss (mean over the batch) plus penalties, ``(g, k)``: the objective of a step."""
  return (data_loss(params, x, y, readout=readout, output=output, key=key, loss=loss)
          + readouts_lib.get(readout).penalty(params, reg))


def reference_loss_one(p, x, y, reg, *, readout: str, output: str, loss: str = "poisson"):
  """One (config, neuron): the readable per-neuron loss the batched step is tested against.

  ``p``: one pair's parameters; ``x (b, h, w, c)``; ``y (b,)``; ``reg``: ``{name: ()}``.
  """
  r = readouts_lib.get(readout)
  z = r.predict_one(p, x)  # (b,)
  pred = output_fn(output)(z)
  if loss == "gaussian":
    data = jnp.mean((pred - y) ** 2)
  else:
    data = jnp.mean(pred - y * jnp.log(pred + _LOG_EPS))
  return data + r.penalty_one(p, reg)


# ---- the state of a fit ----------------------------------------------------------------------

class FitState(NamedTuple):
  params: Any          # pytree, leaves (g, k, ...)
  opt_state: Any       # Adam moments, leaves (g, k, ...), and a step count
  best_params: Any     # each pair's parameters at its best validation correlation
  best_corr: jax.Array   # (g, k) validation correlation at the pair's kept check
  best_score: jax.Array  # (g, k) what the stopping rule compares: the pair's best correlation,
                         # or (stop_on="config") its config's best mean over neurons
  wait: jax.Array        # (g, k) checks since the last improvement
  lr: jax.Array          # (g, k) current learning rate
  n_decays: jax.Array    # (g, k)
  active: jax.Array      # (g, k) False once a pair has stopped
  stop_step: jax.Array   # (g, k) step at which a pair stopped (max_steps if it never did)
  step: jax.Array        # ()
  key: jax.Array         # for stochastic readouts


class _Spec(NamedTuple):
  """Static (hashable) part of a step: changing it recompiles, changing the grid does not."""
  readout: str
  output: str
  microbatch: int
  patience: int
  lr_decay: float
  max_decays: int
  tolerance: float
  eval_batch: int
  mesh: Mesh | None
  loss: str = "poisson"
  pair_chunk: int = 0  # neurons per block of a step's gradient (0: all at once)
  stop_on: str = "pair"
  warmup: int = 0  # steps over which the learning rate rises to its value


_ADAM = optax.scale_by_adam()
# Bytes of one block's temporaries in a chunked gradient (``_pair_chunk``). On 2 cores with 2 MiB
# of L2 each, one run each of 2, 8 and 32 MiB (per-step bench, 4x4x32, 16 configs): every size
# beat none at 2,000 neurons, 8 MiB was best at 500 and 32 MiB at 2,000; timings there varied
# by up to 2x between repeats, so this is a reasonable size, not a measured optimum.
_CHUNK_BYTES = 8 * 2**20
# Each block reads the micro-batch's features again, so a block's temporaries are also at least
# this many times those features' bytes. At 16x16x256, 16 configs, batch 64 (medians of 9 and 5
# interleaved steps, 2 cores): 200 neurons 71 -> 107 GFLOP/s (blocks of 5 -> 25 neurons),
# 2,000 neurons 115 -> 125 (10 -> 25); the 4x4x32 features of the scaling table are unchanged.
_CHUNK_FEATURE_READS = 2


def _pair_chunk(readout: str, G: int, K: int, microbatch: int, feature_shape,
                mesh: Mesh | None) -> int:
  """Neurons per block when a step's gradient is taken one block of the (config, neuron) table
  at a time (``_chunked_value_and_grad``), or 0 for all at once.

  The factorized readout's gradient is memory-bound: its temporaries grow with the pairs
  (``microbatch x min(h*w, c)`` floats each), and once they leave the cache the time per pair
  doubles (``jaxmouse bench fit --to-solution --scaling``). Blocks keep them near ``_CHUNK_BYTES``,
  or near ``_CHUNK_FEATURE_READS`` times the micro-batch's features where those are larger (every
  block reads them again).
  The block is a divisor of ``K`` (the table's neurons), at least a quarter of the wanted size;
  where none is, on a mesh (whose neuron axis is sharded), or where the whole table needs fewer
  than 4 blocks (its time per pair was flat up to there), the table stays whole.
  """
  if readout != "factorized" or mesh is not None:
    return 0
  h, w, c = feature_shape
  per_neuron = 4 * G * (microbatch * min(h * w, c) + h * w + c)
  block_bytes = max(_CHUNK_BYTES, _CHUNK_FEATURE_READS * 4 * microbatch * h * w * c)
  want = max(1, block_bytes // per_neuron)
  if K < 4 * want:
    return 0
  best = max(d for d in range(1, want + 1) if K % d == 0)
  return best if 4 * best >= want else 0


def _chunked_value_and_grad(fn, params, y, chunk: int):
  """``value_and_grad`` of ``fn(params, y)``, a sum over (config, neuron) pairs, taken one block
  of ``chunk`` neurons at a time (axis 1 of the ``(g, k, ...)`` leaves, the last axis of
  ``y (m, g, k)``). Pairs do not interact, so every pair's gradient is the one of the whole
  table; only the temporaries are smaller."""
  k = y.shape[-1]
  n = k // chunk
  split = lambda a: jnp.moveaxis(a.reshape(a.shape[:1] + (n, chunk) + a.shape[2:]), 1, 0)
  blocks = (jax.tree.map(split, params), jnp.moveaxis(y.reshape(y.shape[:-1] + (n, chunk)), -2, 0))
  values, grads = jax.lax.map(lambda block: jax.value_and_grad(fn)(*block), blocks)
  join = lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1:2] + (k,) + a.shape[3:])
  return values.sum(), jax.tree.map(join, grads)


def _pair_spec(x, mesh):
  """Leaves with (g, k, ...) leading axes are split over (config, neuron); the rest replicated."""
  if getattr(x, "ndim", 0) >= 2:
    return NamedSharding(mesh, P("config", "neuron"))
  return NamedSharding(mesh, P())


def _constrain(tree, mesh):
  if mesh is None:
    return tree
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, _pair_spec(x, mesh)), tree)


def _image_spec(mesh: Mesh) -> NamedSharding:
  """The features' images split over every device of the mesh (``_place_features``)."""
  return NamedSharding(mesh, P(mesh.axis_names))


def _gathered(x, mesh):
  """Features of a batch of images, whole on every device: over a mesh the images are split
  (``_image_spec``), and only the batch crosses between devices (one all-reduce of the rows that
  each device holds)."""
  return x if mesh is None else jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P()))


def step_value_and_grad(params, idx, features, train_image, train_resp, reg, *, spec: _Spec,
                        key=None, neuron=None):
  """The objective of one step and its gradient, summed over every (config, neuron) pair.

  ``idx (b,)`` indexes the training trials. ``neuron (g, k)``, when given, is the response column
  of each slot (a fit whose stopped pairs were compacted away; ``reg`` is then ``(g, k)`` too);
  None: slot ``(i, j)`` is neuron ``j``. The batch is processed in micro-batches of
  ``spec.microbatch`` trials (bounded memory); the data term is a mean over the whole batch,
  summed over micro-batches, and the penalty is added once, so value and gradient do not depend
  on how the batch is split.
  """
  r = readouts_lib.get(spec.readout)
  b = idx.shape[0]
  n_micro = b // spec.microbatch

  def micro(acc, i):
    sub = jax.lax.dynamic_slice_in_dim(idx, i * spec.microbatch, spec.microbatch)
    x = _gathered(features[train_image[sub]], spec.mesh)  # (m, h, w, c)
    y = train_resp[sub]  # (m, k)
    y = y if neuron is None else y[:, neuron]  # (m, g, k)
    total = lambda p, y: jnp.sum(data_loss(p, x, y, readout=spec.readout, output=spec.output,
                                           key=key, n_total=b, loss=spec.loss))
    if spec.pair_chunk and neuron is not None:
      value, g = _chunked_value_and_grad(total, params, y, spec.pair_chunk)
    else:
      value, g = jax.value_and_grad(total)(params, y)
    return jax.tree.map(jnp.add, acc, (value, g)), None

  zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
  if n_micro == 1:
    value, grads = micro(zero, 0)[0]
  else:
    value, grads = jax.lax.scan(micro, zero, jnp.arange(n_micro))[0]
  pen, pen_grads = jax.value_and_grad(lambda p: jnp.sum(r.penalty(p, reg)))(params)
  return value + pen, jax.tree.map(jnp.add, grads, pen_grads)


def _train_chunk(state: FitState, batches, features, train_image, train_resp, reg, neuron,
                 spec: _Spec):
  """``len(batches)`` Adam steps on every (config, neuron) slot.

  Args:
    state: the FitState (donated).
    batches: ``(s, b)`` trial indices into the training trials, one row per step.
    features: ``(n_images, h, w, c)``; train_image ``(t,)``; train_resp ``(t, k)``.
    reg: ``{penalty: (g, k)}`` per slot.
    neuron: ``(g, k)`` the response column of each slot.
  """
  r = readouts_lib.get(spec.readout)

  def step(state, idx):
    key = jax.random.fold_in(state.key, state.step) if r.stochastic else None
    value, grads = step_value_and_grad(state.params, idx, features, train_image, train_resp,
                                       reg, spec=spec, key=key, neuron=neuron)
    direction, opt_state = _ADAM.update(grads, state.opt_state, state.params)
    rate = state.lr * state.active  # (g, k); stopped pairs get no update
    if spec.warmup:  # linear warm-up: step s (from 0) at (s + 1) / warmup of the rate
      rate = rate * jnp.minimum(1.0, (state.step + 1) / spec.warmup)

    def apply(p, d):
      return p - rate.reshape(rate.shape + (1,) * (p.ndim - 2)) * d

    params = jax.tree.map(apply, state.params, direction)
    state = state._replace(params=params, opt_state=opt_state, step=state.step + 1)
    return _constrain(state, spec.mesh), value

  state, values = jax.lax.scan(step, state, batches)
  return _constrain(state, spec.mesh), values


def _predict_images(params, features, images, spec: _Spec):
  """Outputs for ``images (m,)`` (m a multiple of ``spec.eval_batch``): ``(m, g, k)``."""
  r = readouts_lib.get(spec.readout)
  out = output_fn(spec.output)
  chunks = images.reshape(-1, spec.eval_batch)
  pred = jax.lax.map(lambda i: out(r.predict(params, _gathered(features[i], spec.mesh))),
                     chunks)  # (n, e, g, k)
  return pred.reshape((-1,) + pred.shape[2:])


def pair_corr(pred, y):
  """Pearson correlation over trials per pair: ``pred (t, g, k)``, ``y (t, k)`` or ``(t, g, k)``
  -> ``(g, k)``."""
  pc = pred - pred.mean(axis=0)
  yc = per_slot(y - y.mean(axis=0))
  num = jnp.sum(pc * yc, axis=0)  # (g, k)
  den = jnp.sqrt(jnp.sum(pc**2, axis=0) * jnp.sum(yc**2, axis=0))
  return jnp.where(den > 1e-12, num / jnp.maximum(den, 1e-12), 0.0)


def group_mean(values, group, weight):
  """Per slot, the ``weight``-weighted mean of ``values`` over the slots of its ``group`` (all
  ``(g, k)``; group ids below ``g * k``); 0 for a group of zero weight."""
  ids, w = group.reshape(-1), weight.reshape(-1).astype(values.dtype)
  n = ids.size
  sums = jax.ops.segment_sum(values.reshape(-1) * w, ids, num_segments=n)
  counts = jax.ops.segment_sum(w, ids, num_segments=n)
  return (sums / jnp.maximum(counts, 1))[ids].reshape(values.shape)


def _evaluate(state: FitState, features, val_images, val_inverse, val_resp, neuron, group,
              spec: _Spec):
  """Validation correlation of every slot; best-parameter bookkeeping, LR decay and stopping.
  ``val_resp (t, k)``; ``neuron (g, k)`` the response column of each slot; ``group (g, k)`` the
  slots that stop together (``stop_on="config"``: a config's neurons), unused per pair."""
  pred = _predict_images(state.params, features, val_images, spec)[val_inverse]  # (t, g, k)
  corr = pair_corr(pred, val_resp[:, neuron])
  # What the rule compares: each pair's own correlation, or the mean over its config's neurons
  # (the one all-neuron model per config of neuralpredictors and Cadena et al.).
  score = corr if spec.stop_on == "pair" else group_mean(corr, group, state.active)
  improved = state.active & (score > state.best_score + spec.tolerance)
  pick = lambda mask, a, b: jax.tree.map(
      lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 2)), x, y), a, b)
  best_params = pick(improved, state.params, state.best_params)
  best_corr = jnp.where(improved, corr, state.best_corr)
  best_score = jnp.where(improved, score, state.best_score)
  wait = jnp.where(improved, 0, state.wait + state.active)
  plateau = state.active & (wait >= spec.patience)
  n_decays = state.n_decays + plateau
  stop = plateau & (n_decays > spec.max_decays)
  active = state.active & ~stop
  # On a plateau the pair restarts from its best parameters with a smaller learning rate.
  params = pick(plateau, best_params, state.params)
  state = state._replace(
      params=params, best_params=best_params, best_corr=best_corr, best_score=best_score,
      wait=jnp.where(plateau, 0, wait), lr=jnp.where(plateau, state.lr / spec.lr_decay, state.lr),
      n_decays=n_decays, active=active,
      stop_step=jnp.where(stop, state.step, state.stop_step))
  return _constrain(state, spec.mesh), corr


@functools.partial(jax.jit, static_argnames="mesh")
def _initial_state(params, mesh=None):
  """Adam's moments and the best parameters (a copy) of the initial parameters, made on the
  devices and split over the mesh as the pairs are (one program per table shape)."""
  return _constrain((_ADAM.init(params), jax.tree.map(jnp.copy, params)), mesh)


def _start_state(params, active: np.ndarray, *, lr: float, max_steps: int, seed: int,
                 mesh=None) -> FitState:
  """The FitState before the first step: ``params`` (placed on the devices; ``(G, K, ...)``
  leaves), fresh Adam moments, no check yet; ``active (G, K)`` marks the slots that train."""
  opt_state, best_params = _initial_state(params, mesh=mesh)
  shape = active.shape
  return FitState(
      params=params, opt_state=opt_state, best_params=best_params,
      best_corr=np.full(shape, -np.inf, np.float32), best_score=np.full(shape, -np.inf, np.float32),
      wait=np.zeros(shape, np.int32), lr=np.full(shape, lr, np.float32),
      n_decays=np.zeros(shape, np.int32), active=active,
      stop_step=np.full(shape, max_steps, np.int32), step=np.zeros((), np.int32),
      key=jax.random.fold_in(jax.random.key(seed), 1))


def _step_spec(readout: str, config: FitConfig, table, feature_shape, *, batch: int,
               eval_batch: int, mesh=None, warm: bool = False) -> _Spec:
  """The static part of the steps of a ``(G, K)`` table: its micro-batches and gradient blocks
  follow from the table's size, the rest from ``config``."""
  G, K = table
  micro = _microbatch(batch, G * K, feature_shape, config.memory_mb)
  return _Spec(readout=readout, output=config.output, microbatch=micro,
               patience=config.patience, lr_decay=float(config.lr_decay),
               max_decays=config.max_decays, tolerance=float(config.tolerance),
               eval_batch=eval_batch, mesh=mesh, loss=config.loss,
               pair_chunk=_pair_chunk(readout, G, K, micro, feature_shape, mesh),
               stop_on=config.stop_on, warmup=resolve_warmup(config, warm))


# Built on first use and looked up through module globals at trace time, so that a test can wrap
# ``_train_chunk`` with ``chex.assert_max_traces`` and count compilations.
@functools.cache
def _jitted():
  train = jax.jit(lambda *a, spec: _train_chunk(*a, spec=spec), static_argnames="spec",
                  donate_argnums=0)
  evaluate = jax.jit(lambda *a, spec: _evaluate(*a, spec=spec), static_argnames="spec",
                     donate_argnums=0)
  return train, evaluate


# ---- sharding ---------------------------------------------------------------------------------

def make_mesh(devices: Sequence[jax.Device] | None = None, *, config_shards: int = 1) -> Mesh:
  """A ``(config, neuron)`` device mesh: ``config_shards`` x (devices / config_shards)."""
  devices = list(jax.devices() if devices is None else devices)
  if config_shards < 1 or len(devices) % config_shards:
    raise ValueError(f"config_shards={config_shards} must divide the {len(devices)} devices")
  grid = np.array(devices, dtype=object).reshape(config_shards, -1)
  return Mesh(grid, ("config", "neuron"))


def _put(tree, mesh):
  if mesh is None:
    return jax.device_put(tree)
  return jax.tree.map(lambda x: _place(x, _pair_spec(x, mesh)), tree)


def _place(x, sharding):
  """``x`` (the same value in every process) as an array split by ``sharding``; over a mesh that
  spans several processes, each process places the blocks of its own devices."""
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x  # already placed (over a mesh of several processes, it cannot be indexed)
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index])


def _place_features(features: np.ndarray, dtype, mesh: Mesh | None):
  """The prepared features on the devices, as ``dtype``. Without a mesh, one copy on the default
  device. Over a mesh, every pair needs every feature of the images it is trained and checked
  on, but no device needs the images it is not given in a step: the images are split over all
  the mesh's devices (padded with zero images to a multiple of them, never indexed), so each
  device holds ``1/devices`` of the features, and a step gathers only its batch
  (``_gathered``). Each process converts and places the blocks of its own devices only, so no
  whole-size host copy is made."""
  if mesh is None:
    return jax.device_put(features if features.dtype == dtype else features.astype(dtype))
  n = len(features)
  shape = (_pad_to(n, mesh.size),) + features.shape[1:]

  def block(index):
    start, stop, _ = index[0].indices(shape[0])
    part = np.asarray(features[min(start, n):min(stop, n)], dtype)
    short = stop - start - len(part)  # rows of zero images past the last real one
    return np.concatenate([part, np.zeros((short,) + part.shape[1:], dtype)]) if short else part

  return jax.make_array_from_callback(shape, _image_spec(mesh), block)


def _to_host(a) -> np.ndarray:
  """A NumPy copy of ``a`` in every process, gathered when it is spread over several."""
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return np.asarray(a)


def _pad_to(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


# ---- the fit ----------------------------------------------------------------------------------

class FitResult(NamedTuple):
  """Each (config, neuron) pair's best parameters and validation correlation (NumPy arrays).

  ``params`` leaves ``(g, k, ...)``, or ``(k, ...)`` the parameters of each neuron's config
  ``choice (k,)`` when the fit kept only those (``fit(keep="best")``); ``val_corr (g, k)``;
  ``stop_step (g, k)``; ``steps`` the number of steps run; ``val_history (checks, g, k)``
  validation correlation at every check, made after ``check_steps (checks,)`` steps (the first,
  0, at initialisation).
  """
  readout: str
  params: Any
  val_corr: np.ndarray
  stop_step: np.ndarray
  steps: int
  val_history: np.ndarray
  check_steps: np.ndarray | None = None
  choice: np.ndarray | None = None


class FitProgress(NamedTuple):
  """Where a fit stands after a validation check (what a progress bar shows).

  ``step`` of at most ``max_steps``; ``active`` of ``pairs`` (config, neuron) pairs still
  training; ``best_val_corr``: the median over neurons of the best validation correlation so
  far of each neuron's best config.
  """
  step: int
  max_steps: int
  active: int
  pairs: int
  best_val_corr: float


def _microbatch(batch: int, n_pairs: int, feature_shape, memory_mb: float) -> int:
  h, w, c = feature_shape
  # The bilinear readouts' largest intermediate is (m, g*k, min(h*w, c)): both contraction orders
  # cost the same FLOPs and the einsum path takes the one with the smaller intermediate.
  per_image = 4.0 * n_pairs * min(h * w, c) + 4.0 * h * w * c
  for m in range(batch, 0, -1):
    if batch % m == 0 and m * per_image <= memory_mb * 2**20:
      return m
  return 1


def batch_order(n_trials: int, batch: int, steps: int, *, seed: int, start: int = 0) -> np.ndarray:
  """Trial indices ``(steps, batch)`` for steps ``start .. start+steps-1``: consecutive windows of
  a stream of random permutations (one per epoch), reproducible from ``seed`` alone."""
  rng = np.random.default_rng(seed)
  first, last = start * batch, (start + steps) * batch
  n_epochs = -(-last // n_trials)
  stream = np.concatenate([rng.permutation(n_trials) for _ in range(n_epochs)])
  return stream[first:last].reshape(steps, batch).astype(np.int32)


def fit(features, *, train: Trials, validation: Trials, readout: str = "factorized",
        grid: Mapping[str, Sequence[float]] | None = None, config: FitConfig = FitConfig(),
        mesh: Mesh | None = None, prepared: bool = False,
        progress: Callable[[FitProgress], None] | None = None,
        first_neuron: int = 0, start=None, keep: str = "all", stop_groups=None) -> FitResult:
  """Trains one readout for every (config, neuron) pair of a penalty grid.

  Args:
    features: ``(n_images, h, w, c)`` frozen features (NumPy or memmap).
    train, validation: ``Trials`` whose ``image`` indexes ``features``.
    readout: ``factorized``, ``full`` or ``gaussian``.
    grid: ``{penalty: (g,)}`` strengths (see ``jaxmouse.readouts.make_grid``); missing
      penalties are 0.
    config: FitConfig.
    mesh: a ``make_mesh()`` to shard pairs over devices; None runs on the default device.
    prepared: the features are already normalized (``prepare_features``); skip it.
    progress: called with a ``FitProgress`` after every validation check (e.g. to draw a
      progress bar); it sees the fit, never changes it.
    first_neuron: the index of the first neuron in a larger population (random starts are
      drawn per neuron index; the blocks of ``FitConfig.state_mb`` use it).
    start: linear weights ``(k, h, w, c)`` and intercepts ``(k,)`` to warm start from (when
      ``config.warm_start`` applies); None computes the ridge solution.
    keep: ``"all"`` returns every pair's best parameters; ``"best"`` only those of each
      neuron's best config (``select_configs``), chosen within each block of neurons
      (``FitConfig.state_mb``), so that the result never holds a whole grid of a large
      population (the ``full`` readout's grid for 2,000 neurons of conv1_2 is 21 GB).
    stop_groups: ``(k,)`` labels (e.g. each neuron's area) of the neurons that stop together
      under ``FitConfig.stop_on="config"``: each config's neurons of each label, on their mean,
      so that fitting several areas at once equals fitting each on its own. None: all of a
      config's neurons. Unused per pair.

  Returns:
    FitResult with every pair's best parameters (chosen on validation).
  """
  return _fit(features, train=train, validation=validation, readout=readout, grid=grid,
              config=config, mesh=mesh, prepared=prepared, progress=progress,
              first_neuron=first_neuron, start=start, keep=keep, stop_groups=stop_groups,
              announce=True)


def _fit(features, *, train, validation, readout, grid, config, mesh, prepared, progress,
         first_neuron, start, keep, stop_groups, announce) -> FitResult:
  """``fit``; ``announce``: log how the grid is split into blocks (the outermost call only)."""
  if keep not in ("all", "best"):
    raise ValueError(f"keep must be 'all' or 'best', got {keep!r}")
  r = readouts_lib.get(readout)
  _, k = check_inputs(features, {"train": train, "validation": validation})
  config, _ = resolve_loss(config, train.responses)
  reg = readouts_lib.check_grid(grid or {}, r.penalties, readout=readout)
  g = readouts_lib.grid_size(reg)
  dtype = feature_dtype(config)
  if not prepared:  # float32 on the host: the warm start and the scores read these features
    features = prepare_features(features, train_images=train.image, batch_norm=config.batch_norm)
  features = np.asarray(features)
  h, w, c = features.shape[1:]
  warm = config.warm_start or (config.warm_start is None and r.from_linear is not None)
  if warm and r.from_linear is None:
    raise ValueError(f"warm_start needs a readout with a closed-form start (factorized, full); "
                     f"the {readout} readout has none")
  if stop_groups is not None:
    stop_groups = np.asarray(stop_groups)
    if stop_groups.shape != (k,):
      raise ValueError(f"stop_groups must be one label per neuron, shape ({k},), got shape "
                       f"{stop_groups.shape}")
  if warm and start is None:
    start = _RidgeStart(ridge_lib.streamed_dual(*_ridge_problem(features, train, validation)),
                        features)
  block = _neuron_block(r, g, k, (h, w, c), config.state_mb)
  per_config = _config_block(r, k, (h, w, c), config.state_mb)
  if block < k and config.stop_on == "config" and announce and per_config < 1:
    _log.warning(
        "stop_on='config': one config of the %d neurons of this %s fit on features %s needs "
        "%.0f MiB of state, over state_mb=%g; each config is fitted in blocks of %d neurons "
        "and stops on each block's mean (raise state_mb to stop on all of them)", k, readout,
        (h, w, c), 4 * 4 * k * _pair_size(r, (h, w, c)) / 2**20, config.state_mb,
        _neuron_block(r, 1, k, (h, w, c), config.state_mb))
  if block < k and config.stop_on == "config":
    if per_config >= 1:
      # A config's neurons stop together, so the blocks are of whole configs: each block is the
      # fit of a part of the grid, and every pair's result is the one of the whole fit.
      return _fit_config_blocks(features, train, validation, readout, reg, config, mesh,
                                progress, first_neuron, _start_of(start, slice(None)), keep,
                                stop_groups, per_config)
    # Not even one config's neurons fit: blocks of as many neurons as one config's state holds,
    # each block's configs then fitted in turn from the block's start (made once per block).
    block = _neuron_block(r, 1, k, (h, w, c), config.state_mb)
  if block < k:
    # One block after another; each block's start weights are made just before it, and its
    # result is copied into the population's as soon as it is fitted.
    part = lambda t, s: Trials(t.image, np.asarray(t.responses)[:, s])
    parts, params = [], None
    for a in range(0, k, block):
      s = slice(a, min(a + block, k))
      res = _fit(features, train=part(train, s), validation=part(validation, s),
                 readout=readout, grid=grid, config=config, mesh=mesh, prepared=True,
                 progress=progress, first_neuron=first_neuron + a, start=_start_of(start, s),
                 keep=keep, stop_groups=None if stop_groups is None else stop_groups[s],
                 announce=False)
      axis = 0 if keep == "best" else 1  # leaves (k, ...) or (g, k, ...)
      if params is None:
        params = jax.tree.map(
            lambda x: np.empty(x.shape[:axis] + (k,) + x.shape[axis + 1:], x.dtype), res.params)
      for out, x in zip(jax.tree.leaves(params), jax.tree.leaves(res.params)):
        out[(slice(None),) * axis + (s,)] = x
      parts.append(res._replace(params=None))
    return _concat_blocks(parts, axis=1)._replace(params=params)
  if isinstance(start, _RidgeStart):
    start = start.weights(slice(None))

  # Slots: the (config, neuron) pairs laid out on a (G, K) table, at first pair (i, j) in slot
  # (i, j), padded to multiples of the mesh axes (padded slots never train and are discarded).
  # As pairs stop, the active ones are gathered onto smaller tables (``_compact``).
  G, K = g, k
  if mesh is not None:
    G, K = _pad_to(g, mesh.shape["config"]), _pad_to(k, mesh.shape["neuron"])
  slot = np.full((G, K), -1, np.int64)  # the pair (i * k + j) in each slot; -1: padding
  slot[:g, :k] = np.arange(g * k).reshape(g, k)
  per_pair = lambda a: np.broadcast_to(a, (g, k) + a.shape[2:]).reshape((g * k,) + a.shape[2:])
  take = lambda a: per_pair(np.asarray(a))[np.maximum(slot, 0)]  # (g, k, ...) -> (G, K, ...)

  train_resp = np.asarray(train.responses, np.float32)
  val_resp = np.asarray(validation.responses, np.float32)
  bias = initial_bias(np.asarray(train.responses, np.float64).mean(axis=0), config.output)
  init_kw = {} if config.init_scale is None else {"init_scale": config.init_scale}
  key = jax.random.key(config.seed)
  # Every config starts from the same parameters: they are made once, (1, k, ...), laid out on
  # the slot table on the host, and placed on the devices (split over the mesh when there is
  # one); Adam's moments and the best parameters are made there, so that the host never holds
  # more than one copy of the table.
  if warm:
    params = r.from_linear(*start, n_configs=1)
    del start
  else:
    params = r.init(jax.random.fold_in(key, 0), n_configs=1, n_neurons=k,
                    feature_shape=(h, w, c), bias=bias, first=first_neuron, **init_kw)
  params = _put(jax.tree.map(take, params), mesh)
  state = _start_state(params, slot >= 0, lr=DEFAULT_LR[readout] if config.lr is None else
                       config.lr, max_steps=config.max_steps, seed=config.seed, mesh=mesh)
  slot_reg = {n: take(v[:, None]).astype(np.float32) for n, v in reg.items()}  # (G, K)
  slot_neuron = take(np.arange(k, dtype=np.int32)[None, :])  # (G, K)

  batch = min(config.batch_size, len(train.image))
  val_images, val_inverse = np.unique(np.asarray(validation.image), return_inverse=True)
  eval_batch = min(batch, len(val_images))
  val_images = np.pad(val_images, (0, _pad_to(len(val_images), eval_batch) - len(val_images)))
  spec = _step_spec(readout, config, (G, K), (h, w, c), batch=batch, eval_batch=eval_batch,
                    mesh=mesh, warm=warm)

  replicated = (lambda a: jax.device_put(a)) if mesh is None else \
      (lambda a: _place(a, NamedSharding(mesh, P())))
  feats_d = _place_features(features, dtype, mesh)
  train_image_d = replicated(np.asarray(train.image, np.int32))
  train_resp_d = replicated(train_resp)
  val_images_d = replicated(val_images.astype(np.int32))
  val_inverse_d = replicated(val_inverse.reshape(-1).astype(np.int32))
  val_resp_d = replicated(val_resp)
  # Every pair's outcome on the host, (g * k, ...): written for the slots of a table before it
  # is compacted and at the end; ``last_corr`` is each pair's latest validation correlation.
  out_params = jax.tree.map(lambda a: np.zeros((g * k,) + a.shape[2:], a.dtype), params)
  state, reg_d, neuron_d, group_d = _put(
      (state, slot_reg, slot_neuron, _stop_groups(slot, k, config.stop_on, stop_groups)), mesh)
  del params  # the host's reference to the initial parameters (the state holds them)
  out_corr = np.full(g * k, -np.inf, np.float32)
  out_stop = np.full(g * k, config.max_steps, np.int32)
  last_corr = np.zeros(g * k, np.float32)
  valid = slot >= 0

  def record(corr, with_params=False):
    """Copies the pairs of the current table to the host outcome; returns the active mask."""
    pairs = slot[valid]
    out_corr[pairs] = _to_host(state.best_corr)[valid]
    out_stop[pairs] = _to_host(state.stop_step)[valid]
    last_corr[pairs] = _to_host(corr)[valid]
    if with_params:
      for o, a in zip(jax.tree.leaves(out_params), jax.tree.leaves(state.best_params)):
        a = _to_host(a)  # on a CPU, the device's memory itself: index it without a copy
        o[pairs] = a.reshape((-1,) + a.shape[2:]) if valid.all() else a[valid]
    return _to_host(state.active) & valid

  def report(steps, active):
    if progress is not None:
      best = out_corr.reshape(g, k).max(axis=0)  # (k,) each neuron's best config
      progress(FitProgress(step=steps, max_steps=config.max_steps, active=int(active.sum()),
                           pairs=g * k, best_val_corr=float(np.median(best))))

  train_fn, eval_fn = _jitted()
  evaluate = lambda st: eval_fn(st, feats_d, val_images_d, val_inverse_d, val_resp_d, neuron_d,
                                group_d, spec=spec)
  if warm:
    # The start is the unpenalized ridge solution, shared by every config: it is not a
    # candidate for any config's best, so that each config's result is a fit under its own
    # penalties (and the best validation correlation is the maximum of the history).
    history, check_steps, active = [], [], valid
  else:
    state, corr = evaluate(state)
    active = record(corr)
    history, check_steps = [last_corr.copy()], [0]
    report(0, active)
  steps = 0
  n_train = len(train.image)
  compact = config.compact and not r.stochastic
  while steps < config.max_steps and active.any():
    s = min(config.eval_every, config.max_steps - steps)
    order = batch_order(n_train, batch, s, seed=config.seed, start=steps)
    state, _ = train_fn(state, replicated(order), feats_d, train_image_d, train_resp_d, reg_d,
                        neuron_d, spec=spec)
    steps += s
    state, corr = evaluate(state)
    active = record(corr)
    history.append(last_corr.copy())
    check_steps.append(steps)
    report(steps, active)
    shape = _compact_shape(int(active.sum()), mesh)
    if compact and active.any() and steps < config.max_steps and \
        _worth_compacting(shape[0] * shape[1], valid.size):
      # Stopped pairs leave the table once it can shrink enough (``_worth_compacting``): their
      # best parameters go to the host, the active ones move onto a table of (bucketed) size
      # ``shape``, and the step recompiles for it.
      record(corr, with_params=True)
      stopped = valid & ~active
      last_corr[slot[stopped]] = out_corr[slot[stopped]]  # a stopped pair rests at its best
      kept = np.flatnonzero(active.reshape(-1))
      pos = np.concatenate([kept, np.repeat(kept[:1], shape[0] * shape[1] - len(kept))])
      pos = pos.reshape(shape)
      pad = np.arange(pos.size).reshape(shape) >= len(kept)
      (state, reg_h, neuron_h) = _gather_slots((state, reg_d, neuron_d), pos, valid.shape)
      slot = slot.reshape(-1)[pos]
      slot[pad] = -1
      valid = slot >= 0
      state = state._replace(active=state.active & valid)
      state, reg_d, neuron_d, group_d = _put(
          (state, reg_h, neuron_h, _stop_groups(slot, k, config.stop_on, stop_groups)), mesh)
      spec = _step_spec(readout, config, shape, (h, w, c), batch=batch, eval_batch=eval_batch,
                        mesh=mesh, warm=warm)

  record(corr, with_params=True)
  shaped = lambda a: a.reshape((g, k) + a.shape[1:])
  params, choice = jax.tree.map(shaped, out_params), None
  if keep == "best":
    choice = select_configs(shaped(out_corr))
    params = take_configs(params, choice)
  return FitResult(readout=readout, params=params,
                   val_corr=shaped(out_corr), stop_step=shaped(out_stop), steps=steps,
                   val_history=np.stack([shaped(h) for h in history]),
                   check_steps=np.asarray(check_steps, np.int64), choice=choice)


def _pair_size(r, feature_shape) -> int:
  """Parameters of one (config, neuron) pair."""
  one = r.init(jax.random.key(0), n_configs=1, n_neurons=1, feature_shape=feature_shape)
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(one))


def _neuron_block(r, g: int, k: int, feature_shape, state_mb: float) -> int:
  """Neurons fitted together so that parameters, best parameters and two Adam moments of their
  ``g`` configs (float32) stay within ``state_mb``; at least one."""
  per_neuron = 4 * 4 * g * _pair_size(r, feature_shape)
  return int(min(k, max(1, state_mb * 2**20 // per_neuron)))


def _config_block(r, k: int, feature_shape, state_mb: float) -> int:
  """Configs whose ``k`` neurons are fitted together within ``state_mb`` (0: not one)."""
  per_config = 4 * 4 * k * _pair_size(r, feature_shape)
  return int(state_mb * 2**20 // per_config)


def _concat_blocks(parts: Sequence[FitResult], axis: int) -> FitResult:
  """One FitResult (without parameters or choice) from fits of consecutive blocks of neurons
  (``axis=1``) or of configs (``axis=0``): learning curves of blocks that stopped sooner are
  continued at each pair's best, where a stopped pair rests (as on one table)."""
  longest = max(parts, key=lambda p: len(p.check_steps))
  n = len(longest.check_steps)
  hist = [np.concatenate([p.val_history, np.repeat(p.val_corr[None], n - len(p.val_history),
                                                   axis=0)]) for p in parts]
  cat = lambda *a: np.concatenate(a, axis=axis)
  kept = axis == 1 and parts[0].choice is not None
  return FitResult(readout=parts[0].readout, params=None,
                   val_corr=cat(*[p.val_corr for p in parts]),
                   stop_step=cat(*[p.stop_step for p in parts]),
                   steps=max(p.steps for p in parts),
                   val_history=np.concatenate(hist, axis=axis + 1),
                   check_steps=longest.check_steps,
                   choice=np.concatenate([p.choice for p in parts]) if kept else None)


def _fit_config_blocks(features, train, validation, readout, reg, config, mesh, progress,
                       first_neuron, start, keep, stop_groups, per_block) -> FitResult:
  """``fit`` of every neuron, ``per_block`` configs of the grid ``reg`` at a time (the blocks of
  ``FitConfig.state_mb`` under ``stop_on="config"``). Every block starts from the same
  ``start``; with ``keep="best"`` only each neuron's best config so far is held."""
  g = readouts_lib.grid_size(reg)
  parts, params, best_corr, choice = [], None, None, None
  for a in range(0, g, per_block):
    s = slice(a, min(a + per_block, g))
    res = _fit(features, train=train, validation=validation, readout=readout,
               grid={n: v[s] for n, v in reg.items()}, config=config, mesh=mesh, prepared=True,
               progress=progress, first_neuron=first_neuron, start=start, keep=keep,
               stop_groups=stop_groups, announce=False)
    if keep == "best":
      # The running choice: a later config wins only where strictly better on validation, as
      # ``select_configs``' argmax keeps the first of equals.
      corr = np.nan_to_num(res.val_corr[res.choice, np.arange(len(res.choice))], nan=-np.inf)
      if params is None:
        params, best_corr, choice = res.params, corr, res.choice + a
      else:
        better = corr > best_corr
        params = jax.tree.map(lambda o, x: np.where(better.reshape((-1,) + (1,) * (o.ndim - 1)),
                                                    x, o), params, res.params)
        best_corr = np.where(better, corr, best_corr)
        choice = np.where(better, res.choice + a, choice)
    else:
      if params is None:
        params = jax.tree.map(lambda x: np.empty((g,) + x.shape[1:], x.dtype), res.params)
      for out, x in zip(jax.tree.leaves(params), jax.tree.leaves(res.params)):
        out[s] = x
    parts.append(res._replace(params=None))
  return _concat_blocks(parts, axis=0)._replace(params=params, choice=choice)


def _ridge_problem(features, train: Trials, validation: Trials):
  """The arguments of ``ridge_lib.streamed_dual`` for prepared ``features``: the default
  relative penalty grid, one penalty per neuron chosen on validation."""
  ids, means, counts = image_means(train)
  return (np.asarray(features).reshape(len(features), -1), ids, means, counts, validation.image,
          validation.responses, default_grid("ridge")["alpha"])


class _RidgeStart(NamedTuple):
  """The ridge solution a fit warm starts from, in its dual form: the weights ``(k', h, w, c)``
  are made for one block of neurons at a time, so that a population's are never all held."""
  solution: ridge_lib.StreamedDual
  features: np.ndarray  # prepared (n, h, w, c)

  def weights(self, neurons):
    flat = self.features.reshape(len(self.features), -1)
    coef, intercept = ridge_lib.streamed_weights(self.solution, flat, neurons)
    return coef.reshape((-1,) + self.features.shape[1:]), intercept


def _start_of(start, neurons: slice):
  """The start of a block of neurons: None, weights made from a ``_RidgeStart``, or a slice of
  given ``(weights, intercepts)``."""
  if start is None:
    return None
  if isinstance(start, _RidgeStart):
    return start.weights(neurons)
  return start[0][neurons], start[1][neurons]


def _stop_groups(slot: np.ndarray, k: int, stop_on: str, labels=None) -> np.ndarray:
  """``(G, K)`` int32 ids of the slots that stop together, dense (below ``G * K``): each slot
  alone (``"pair"``), or the slots of one config (``"config"``) whose neurons share a label of
  ``labels (k,)`` (None: all of them); padding is a group of its own, never active."""
  if stop_on == "pair":
    return np.arange(slot.size, dtype=np.int32).reshape(slot.shape)
  codes = np.zeros(k, np.int64) if labels is None else np.unique(labels, return_inverse=True)[1]
  n_labels = int(codes.max()) + 1 if k else 1
  pair = np.maximum(slot, 0)
  groups = np.where(slot >= 0, pair // k * n_labels + codes.reshape(-1)[pair % k], -1)
  return np.unique(groups, return_inverse=True)[1].reshape(slot.shape).astype(np.int32)


def _compact_shape(n_active: int, mesh: Mesh | None) -> tuple[int, int]:
  """The table for ``n_active`` pairs: one row per config shard of the mesh, and columns the
  neuron shards times a bucketed size, a power of two or 1.5 times one (1, 2, 3, 4, 6, 8, 12,
  ...), so that a fit compiles at most 2 log2(pairs) programs and a table need not be more than
  a third larger than its pairs (with powers of two alone, 700 active pairs of 1,600 kept a
  table of 1,600: ``jaxmouse bench fit --to-solution --stop-on config`` spent most of its time
  there)."""
  rows = 1 if mesh is None else mesh.shape["config"]
  unit = 1 if mesh is None else mesh.shape["neuron"]
  size = 1
  while rows * unit * size < n_active:  # 1 -> 2 -> 3 -> 4 -> 6 -> 8 -> 12 -> ...
    size = size // 3 * 4 if size % 3 == 0 else max(2, size * 3 // 2)
  return rows, unit * size


# A table shrinks by a quarter only where that frees this many slots; otherwise by half. Each new
# table compiles a program (about 1.5 s on 2 CPU cores at the bench's default size), while a
# slot costs about 0.5 ms per check of 25 steps there: shrinking small tables by a quarter cost
# more compilation than it saved (a cold per-pair to-solution fit, one run each: 20 tables and
# 56.6 s with a quarter at every size, 12 tables and 48.7 s with this floor).
_COMPACT_MIN_SLOTS = 256


def _worth_compacting(new: int, old: int) -> bool:
  """Whether a table of ``old`` slots moves onto one of ``new``: at least half the size, or a
  quarter smaller where that frees ``_COMPACT_MIN_SLOTS``."""
  return 2 * new <= old or (4 * new <= 3 * old and old - new >= _COMPACT_MIN_SLOTS)


def _gather_slots(tree, pos, shape):
  """Leaves whose leading axes are the slot table ``shape (G, K)`` gathered at ``pos (G', K')``
  (positions in the flattened table), on the host; other leaves (step count, key) are kept."""
  def gather(a):
    if getattr(a, "ndim", 0) < 2 or a.shape[:2] != shape:
      return a
    return _to_host(a).reshape((-1,) + a.shape[2:])[pos]
  return jax.tree.map(gather, tree)


# ---- selection, prediction, scores --------------------------------------------------------------

def select_configs(val_corr, *, groups=None) -> np.ndarray:
  """The best config per neuron, ``(k,)``, from ``val_corr (g, k)``.

  ``groups (k,)`` (e.g. areas) picks one config per group instead: the config with the highest
  mean validation correlation over the group's neurons.
  """
  val_corr = np.nan_to_num(np.asarray(val_corr, np.float64), nan=-np.inf)
  if val_corr.ndim != 2:
    raise ValueError(f"val_corr must be (g, k), got shape {val_corr.shape}")
  if groups is None:
    return np.argmax(val_corr, axis=0)
  groups = np.asarray(groups)
  if groups.shape != (val_corr.shape[1],):
    raise ValueError(f"groups must be (k,) = ({val_corr.shape[1]},), got shape {groups.shape}")
  choice = np.empty(val_corr.shape[1], np.int64)
  finite = np.where(np.isfinite(val_corr), val_corr, -1.0)
  for label in np.unique(groups):
    members = groups == label
    choice[members] = np.argmax(finite[:, members].mean(axis=1))
  return choice


def take_configs(params, choice):
  """Per neuron the parameters of its chosen config: leaves ``(g, k, ...)`` -> ``(k, ...)``."""
  choice = np.asarray(choice)
  return jax.tree.map(lambda a: np.asarray(a)[choice, np.arange(len(choice))], params)


@functools.partial(jax.jit, static_argnames=("readout", "output"))
def _predict_chunk(params, x, *, readout, output):
  return output_fn(output)(readouts_lib.get(readout).predict(params, x))[:, 0]  # (b, k)


def predict(params, features, images=None, *, readout: str, output: str = "elu",
            batch_size: int = 256, block_mb: float = 256.0) -> np.ndarray:
  """Predicted responses of the chosen readouts: leaves ``(k, ...)`` -> ``(m, k)``.

  ``output`` must be the one the readouts were fitted with (``FitConfig.output`` after
  ``resolve_loss``: ``linear`` for a Gaussian fit).

  ``features`` must be prepared like the training features; ``images (m,)`` selects rows
  (default: all). Neurons are predicted in blocks of at most ``block_mb`` MiB of parameters.
  """
  images = np.arange(len(features)) if images is None else np.asarray(images)
  # Neurons in blocks of at most ``block_mb`` of parameters: only one block's weights (and the
  # product's temporaries of the same size) are on the device at a time.
  leaves = jax.tree.leaves(params)
  k = leaves[0].shape[0]
  per_neuron = sum(np.asarray(a[:1]).nbytes for a in leaves)
  block = int(max(1, min(k, block_mb * 2**20 // max(per_neuron, 1))))
  cols = []
  for n in range(0, k, block):
    one = jax.tree.map(lambda a: jnp.asarray(a[n:n + block])[None], params)  # (1, block, ...)
    out = []
    for s in range(0, len(images), batch_size):
      idx = images[s:s + batch_size]
      x = np.asarray(features[idx], np.float32)
      pad = batch_size - len(idx) if len(images) > batch_size else 0
      if pad:  # one compiled shape for every chunk
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.float32)])
      out.append(np.asarray(_predict_chunk(one, x, readout=readout, output=output))[:len(idx)])
    cols.append(np.concatenate(out))
    del one
  return np.concatenate(cols, axis=1)


def scores(predictions, test: Trials) -> dict[str, np.ndarray]:
  """Test scores per neuron, ``(k,)`` each: ``feve``, ``corr`` (single trial), ``corr_avg``
  (to the repeat average), ``oracle`` (leave-one-out over repeats), ``fev`` (explainable
  variance fraction of the data). ``predictions (t, k)`` per test trial."""
  y, ids = np.asarray(test.responses), np.asarray(test.image)
  return {
      "feve": metrics.feve(predictions, y, ids),
      "corr": metrics.corr(predictions, y),
      "corr_avg": metrics.corr_to_average(predictions, y, ids),
      "oracle": metrics.oracle_corr(y, ids),
      "fev": metrics.explainable_variance_fraction(y, ids),
  }


# ---- ridge --------------------------------------------------------------------------------------

class RidgeResult(NamedTuple):
  solution: ridge_lib.RidgeSolution
  alphas: np.ndarray    # (a,)
  val_corr: np.ndarray  # (a, k)


def image_means(trials: Trials):
  """Distinct images, mean responses and repeat counts: ``(m,)``, ``(m, k)``, ``(m,)``."""
  ids, inverse, counts = np.unique(np.asarray(trials.image), return_inverse=True,
                                   return_counts=True)
  sums = np.zeros((len(ids), trials.responses.shape[1]))
  np.add.at(sums, inverse.reshape(-1), np.asarray(trials.responses, np.float64))
  return ids, (sums / counts[:, None]).astype(np.float32), counts


def fit_ridge(features, *, train: Trials, validation: Trials, alphas, relative: bool = False,
              batch_norm: bool = False, prepared: bool = False) -> RidgeResult:
  """Closed-form ridge for every neuron and penalty; validation correlation per (alpha, neuron).

  Training images are fitted through their repeat means weighted by repeat counts, which
  equals fitting every trial. ``relative``: ``alphas`` are multiples of the mean non-zero
  eigenvalue of the centred training covariance, so that one grid suits layers of any size;
  the result holds the absolute penalties.
  """
  check_inputs(features, {"train": train, "validation": validation})
  alphas = ridge_lib.check_alphas(alphas)
  if not prepared:
    features = prepare_features(features, train_images=train.image, batch_norm=batch_norm)
  flat = np.asarray(features, np.float32).reshape(len(features), -1)
  ids, means, counts = image_means(train)
  sol = ridge_lib.solve(flat[ids], means, weights=counts)
  if relative:
    alphas = ridge_lib.relative_alphas(alphas, sol.eigvals)
  pred = ridge_lib.predict(sol, flat[validation.image], alphas)  # (a, t, k)
  return RidgeResult(sol, alphas, ridge_lib.correlations(pred, validation.responses))


# ---- one readout, fitted, selected and scored ------------------------------------------------

class ReadoutFit(NamedTuple):
  """The selected readout of every neuron and its test scores (NumPy arrays).

  ``params`` leaves ``(k, ...)`` (ridge: ``coef (k, h, w, c)``, ``intercept (k,)``);
  ``choice (k,)`` index into the grid, ``configs`` the grid's descriptions (``"l1=0.01 ..."``);
  ``val_corr (k,)`` of the chosen config, ``val_corr_grid (g, k)``; ``scores`` per neuron
  (``feve, corr, corr_avg, oracle, fev``); ``steps`` run (0 for ridge); ``test_stats`` the
  per-test-image statistics of ``metrics.image_stats`` (``pred, sum, sum_sq (m, k)``), from which
  FEVE can be recomputed with test images resampled (``metrics.feve_from_stats``). Readouts
  trained by gradient descent also carry their learning curves: ``val_history (checks, g, k)``
  at ``check_steps (checks,)`` and each pair's ``stop_step (g, k)`` (None for ridge).
  """
  readout: str
  params: Any
  choice: np.ndarray
  configs: list[str]
  val_corr: np.ndarray
  val_corr_grid: np.ndarray
  scores: dict[str, np.ndarray]
  steps: int
  test_stats: dict[str, np.ndarray] | None = None
  val_history: np.ndarray | None = None
  check_steps: np.ndarray | None = None
  stop_step: np.ndarray | None = None


def default_grid(readout: str) -> dict[str, np.ndarray]:
  """A small grid per readout for features normalized as ``prepare_features`` does (ridge: the
  ``alpha`` multiples of the mean eigenvalue, see ``fit_ridge(relative=True)``)."""
  make = readouts_lib.make_grid
  grids = {
      "factorized": lambda: make(l1=[1e-4, 1e-3, 1e-2], smooth=[1e-3, 1e-1]),
      "full": lambda: make(smooth=[1e-2, 1e-1], group=[1e-3, 1e-2], l1=[0.0, 1e-3]),
      "gaussian": lambda: make(l1=[0.0, 1e-3, 1e-2, 1e-1]),
      "ridge": lambda: {"alpha": np.logspace(-3, 3, 7).astype(np.float32)},
  }
  if readout not in grids:
    raise ValueError(f"unknown readout {readout!r}; available: {list(readouts_lib.NAMES)}")
  return grids[readout]()


def fit_and_score(features, *, train: Trials, validation: Trials, test: Trials,
                  readout: str, grid: Mapping[str, Sequence[float]] | None = None,
                  config: FitConfig = FitConfig(), select: str = "neuron", groups=None,
                  mesh: Mesh | None = None, prepared: bool = False,
                  progress: Callable[[FitProgress], None] | None = None) -> ReadoutFit:
  """Fits a readout over its grid, picks a config per neuron (``select="neuron"``) or per group
  (``"area"``, with ``groups (k,)``), and scores the chosen readouts on the test trials.

  ``groups (k,)`` (e.g. each neuron's area) are also the neurons that stop together under
  ``FitConfig.stop_on="config"`` (``fit``'s ``stop_groups``), whatever ``select``.

  For ``readout="ridge"`` the grid is ``{"alpha": (a,)}`` multiples of the mean eigenvalue
  (least squares, whatever ``config.loss``). ``progress``: see ``fit`` (never called for ridge,
  which has no steps).
  """
  if select not in ("neuron", "area"):
    raise ValueError(f"select must be 'neuron' or 'area', got {select!r}")
  check_inputs(features, {"train": train, "validation": validation, "test": test})
  if readout != "ridge":
    config, _ = resolve_loss(config, train.responses)
  grid = default_grid(readout) if grid is None else dict(grid)
  if not prepared:
    features = prepare_features(features, train_images=train.image, batch_norm=config.batch_norm)
  k = np.asarray(train.responses).shape[1]
  stop_groups = None if groups is None else np.asarray(groups)
  if select == "area":
    groups = np.zeros(k) if groups is None else np.asarray(groups)
  else:
    groups = None
  if readout == "ridge":
    unknown = set(grid) - {"alpha"}
    if unknown or "alpha" not in grid:
      raise ValueError(f"the ridge grid is {{'alpha': values}}, got keys {sorted(grid)}")
    res = fit_ridge(features, train=train, validation=validation, alphas=grid["alpha"],
                    relative=True, prepared=True)
    choice = select_configs(res.val_corr, groups=groups)
    alpha = res.alphas[choice]
    flat = np.asarray(features, np.float32).reshape(len(features), -1)
    pred = ridge_lib.predict_chosen(res.solution, flat[np.asarray(test.image)], alpha)
    coef, intercept = ridge_lib.coef(res.solution, alpha)
    params = {"coef": coef.T.reshape((k,) + features.shape[1:]), "intercept": intercept}
    configs = [f"alpha={a:g}" for a in np.asarray(grid["alpha"], np.float64)]
    val_grid, steps = res.val_corr, 0
    curves = {}
  else:
    # Per neuron, each block of neurons keeps only its chosen configs' parameters; per area,
    # the choice needs every neuron's validation correlations first.
    res = fit(features, train=train, validation=validation, readout=readout, grid=grid,
              config=config, mesh=mesh, prepared=True, progress=progress,
              keep="best" if groups is None else "all", stop_groups=stop_groups)
    if groups is None:
      choice, params = res.choice, res.params
    else:
      choice = select_configs(res.val_corr, groups=groups)
      params = take_configs(res.params, choice)
    pred = predict(params, features, test.image, readout=readout, output=config.output,
                   batch_size=config.batch_size)
    full_grid = readouts_lib.check_grid(grid, readouts_lib.get(readout).penalties,
                                        readout=readout)
    given = {n: v for n, v in full_grid.items() if n in grid}
    configs = [readouts_lib.describe_config(given, i) for i in range(res.val_corr.shape[0])]
    val_grid, steps = res.val_corr, res.steps
    curves = {"val_history": np.asarray(res.val_history, np.float32),
              "check_steps": res.check_steps, "stop_step": np.asarray(res.stop_step)}
  val_grid = np.asarray(val_grid, np.float32)
  return ReadoutFit(readout=readout, params=params, choice=np.asarray(choice, np.int32),
                    configs=configs, val_corr=val_grid[choice, np.arange(k)],
                    val_corr_grid=val_grid, scores=scores(pred, test), steps=steps,
                    test_stats=metrics.image_stats(pred, test.responses, test.image), **curves)


def memory_bytes(*, readout: str, feature_shape: Sequence[int], n_images: int,
                 n_train_images: int, n_neurons: int, n_configs: int,
                 state_mb: float = FitConfig.state_mb, select: str = "neuron",
                 stop_on: str = FitConfig.stop_on) -> int:
  """A lower bound on the memory (bytes) that ``fit_and_score`` of one feature space needs.

  Counts only the largest arrays. For trained readouts: the normalized features
  ``(n_images, h, w, c)`` once (``prepare_features`` reads the raw ones in chunks, and on a CPU
  the device uses the same memory); the parameters, best parameters and Adam's two moments
  of the (config, neuron) pairs fitted together (at most ``state_mb``, see
  ``FitConfig.state_mb``); the result, one config per neuron (``select="neuron"``) or the
  whole grid (``"area"``, chosen once every neuron is fitted); and the warm start's linear
  weights ``(neurons, h * w * c)`` of one block of neurons (of all neurons where
  ``stop_on="config"`` blocks whole configs), for readouts that have one. For ridge: the
  features twice,
  the training features' copies in the decomposition and the ``(n_neurons, h * w * c)``
  coefficients.
  """
  h, w, c = (int(s) for s in feature_shape)
  d = h * w * c
  feats = 4 * int(n_images) * d
  if readout == "ridge":
    return max(2 * feats, feats + 3 * 4 * int(n_train_images) * d) + 4 * int(n_neurons) * d
  r = readouts_lib.get(readout)
  pair = _pair_size(r, (h, w, c))
  state = 4 * 4 * int(n_configs) * int(n_neurons) * pair
  result = 4 * int(n_neurons) * pair * (int(n_configs) if select == "area" else 1)
  block = _neuron_block(r, int(n_configs), int(n_neurons), (h, w, c), state_mb)
  if stop_on == "config" and block < int(n_neurons):
    # blocks of whole configs share one start of every neuron; else each config alone is
    # fitted in blocks of neurons
    whole = _config_block(r, int(n_neurons), (h, w, c), state_mb) >= 1
    block = int(n_neurons) if whole else _neuron_block(r, 1, int(n_neurons), (h, w, c), state_mb)
  start = 4 * block * d if r.from_linear is not None else 0
  return feats + min(state, int(state_mb * 2**20)) + result + start
