"""Past one machine: shards of a sweep's cells over independent workers, and one fit over the
devices of several processes.

Two ways, both on engines that clusters already run:

- **Shards.** ``--shard I/N`` makes a worker run shard ``I`` of ``N`` of a sweep's cells
  (``sweeps.shard_cells``); the workers share one run folder, each claiming a cell before it
  fits it (``_io.Claim``). Any scheduler starts them: a Slurm array, a Kubernetes indexed job,
  a shell loop. ``Shard.parse("auto")`` reads the index and count from the scheduler's
  environment.
- **Processes.** ``initialize`` starts JAX's multi-process runtime (``jax.distributed``), after
  which ``jax.devices()`` lists the devices of every process and ``fit.make_mesh()`` spans them
  all: every process runs the same program, holds the features, and computes the (config,
  neuron) pairs of its own devices. The lead process (0) alone writes files; ``on_lead`` runs
  its file work and tells every process whether it succeeded, so that all continue or all stop.

In a single process every function here is a no-op wrapper: the code of one CPU is the code of a
pod slice.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Mapping, NamedTuple, TypeVar

import numpy as np

T = TypeVar("T")

SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
KUBERNETES = "JOB_COMPLETION_INDEX"


class Shard(NamedTuple):
  """Worker ``index`` of ``count`` (``0 <= index < count``)."""
  index: int
  count: int

  def __str__(self) -> str:
    return f"{self.index}/{self.count}"

  @classmethod
  def parse(cls, text: str, environ: Mapping[str, str] | None = None) -> "Shard":
    """``"I/N"``, ``"auto"`` or ``"auto/N"`` -> Shard.

    ``auto`` takes the index from the scheduler's environment: a Slurm array task
    (``SLURM_ARRAY_TASK_ID`` less ``SLURM_ARRAY_TASK_MIN``, divided by ``SLURM_ARRAY_TASK_STEP``;
    the count from ``SLURM_ARRAY_TASK_COUNT``) or a Kubernetes indexed job
    (``JOB_COMPLETION_INDEX``, whose count the job does not publish: give it as ``auto/N``).
    Raises ValueError naming what was expected and what arrived.
    """
    environ = os.environ if environ is None else environ
    text = str(text).strip()
    m = re.fullmatch(r"(\d+|auto)(?:/(\d+))?", text)
    if m is None:
      raise ValueError(f"--shard expects I/N (worker I of N, from 0), auto or auto/N; got {text!r}")
    count = None if m.group(2) is None else int(m.group(2))
    if m.group(1) != "auto":
      if count is None:
        raise ValueError(f"--shard {text!r} has no count; expected I/N, e.g. 0/4")
      return cls._checked(int(m.group(1)), count, text)
    if all(k in environ for k in SLURM):
      index, n = _slurm_index(environ)
      if count is not None and count != n:
        raise ValueError(f"--shard {text}: the Slurm array has {n} tasks "
                         f"(SLURM_ARRAY_TASK_COUNT), not {count}")
      return cls._checked(index, n, f"{text} (Slurm array task {environ['SLURM_ARRAY_TASK_ID']})")
    if KUBERNETES in environ:
      if count is None:
        raise ValueError(f"--shard auto: {KUBERNETES}={environ[KUBERNETES]} gives the index "
                         "but not the count; give it as --shard auto/N (N = the job's completions)")
      try:
        index = int(environ[KUBERNETES])
      except ValueError:
        raise ValueError(f"--shard auto: {KUBERNETES} must be an integer, got "
                         f"{environ[KUBERNETES]!r}") from None
      return cls._checked(index, count, f"{text} ({KUBERNETES}={index})")
    raise ValueError(f"--shard {text}: no scheduler index in the environment (Slurm: "
                     f"{', '.join(SLURM)}; Kubernetes: {KUBERNETES}); give --shard I/N")

  @classmethod
  def _checked(cls, index: int, count: int, what: str) -> "Shard":
    if count < 1 or not 0 <= index < count:
      raise ValueError(f"--shard {what}: the index must be in 0..N-1 and N >= 1, got index "
                       f"{index} of {count}")
    return cls(index, count)


def _slurm_index(environ: Mapping[str, str]) -> tuple[int, int]:
  """(index, count) of a Slurm array task, numbered from 0 whatever the array's first id."""
  try:
    task = int(environ["SLURM_ARRAY_TASK_ID"])
    count = int(environ["SLURM_ARRAY_TASK_COUNT"])
    first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    step = int(environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
  except ValueError:
    raise ValueError("--shard auto: the SLURM_ARRAY_TASK_* variables must be integers") from None
  index, rest = divmod(task - first, max(step, 1))
  if rest or not 0 <= index < count:
    raise ValueError(f"--shard auto: Slurm array task {task} is not one of {count} evenly "
                     f"spaced tasks from {first} (an array given as a list?); submit "
                     f"--array=0-{count - 1} or pass --shard I/N")
  return index, count


def check_shard(shard) -> Shard | None:
  """None, a Shard, an ``(index, count)`` pair or an ``"I/N"`` string -> Shard or None."""
  if shard is None or isinstance(shard, Shard):
    return shard
  if isinstance(shard, str):
    return Shard.parse(shard)
  index, count = (int(x) for x in shard)
  return Shard._checked(index, count, f"{index}/{count}")


# ---- JAX's multi-process runtime ---------------------------------------------------------------

class LeadFailed(RuntimeError):
  """The lead process (0) failed at a step every process waits for; its error is its own."""


def initialize(*, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
  """Starts ``jax.distributed`` before any JAX computation of this process.

  Without arguments JAX detects the cluster (Slurm, TPU pod slices, Open MPI); otherwise
  ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and ``process_id`` are all
  required. Raises ValueError for a partial or malformed set.
  """
  import jax

  given = {"--coordinator": coordinator, "--num-processes": num_processes,
           "--process-id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if 0 < len(missing) < 3:
    raise ValueError(f"{', '.join(k for k, v in given.items() if v is not None)} given without "
                     f"{', '.join(missing)}: give all three, or none to let JAX detect the cluster "
                     "(Slurm, TPU, Open MPI)")
  kwargs = {}
  if coordinator is not None:
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"--coordinator expects HOST:PORT (process 0's address), got "
                       f"{coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process-id must be in 0..{num_processes - 1} and --num-processes >= 1, "
                       f"got {process_id} of {num_processes}")
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)


def process_count() -> int:
  import jax

  return jax.process_count()


def is_lead() -> bool:
  """Whether this process writes files: process 0 (always, in a single process)."""
  import jax

  return jax.process_index() == 0


def _broadcast(values: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.broadcast_one_to_all(values))


def on_lead(fn: Callable[[], T]) -> T | None:
  """Runs ``fn`` on the lead process only and has every process learn whether it succeeded.

  Returns ``fn()`` on the lead, None elsewhere. If ``fn`` raises, the lead re-raises its error
  and the other processes raise ``LeadFailed``, so that no process waits for a collective that
  will never come. In a single process: ``fn()``.
  """
  if process_count() == 1:
    return fn()
  result, error = None, None
  if is_lead():
    try:
      result = fn()
    except BaseException as e:  # noqa: BLE001 -- re-raised below, after every process knows
      error = e
  ok = _broadcast(np.array([error is None], np.int32))[0]
  if error is not None:
    raise error
  if not ok:
    raise LeadFailed("the lead process (0) stopped with an error; see its output")
  return result


def lead_decides(fn: Callable[[], np.ndarray], size: int) -> np.ndarray:
  """``fn()`` (an int array of ``size`` values) computed by the lead and given to every process,
  so that all take the same branch; errors as in ``on_lead``."""
  if process_count() == 1:
    return np.asarray(fn(), np.int32).reshape(size)
  value = on_lead(lambda: np.asarray(fn(), np.int32).reshape(size))
  return _broadcast(value if value is not None else np.zeros(size, np.int32))
