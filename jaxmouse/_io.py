"""File helpers shared by the stateful shells: atomic writes, output-path checks, run-folder
locks, claims of single pieces of work, stale temporaries and the memory check.

Nothing here touches arrays or models; it only guarantees that a file or folder a user sees is
either complete or absent, that two runs never write into one folder at once unless they are
workers of one sharded sweep (which claim each piece of work before doing it), and that a run
that cannot fit in memory is refused before it starts.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

try:
  import fcntl
except ImportError:  # not POSIX: folders are not locked
  fcntl = None

LOCK_NAME = ".jaxmouse.lock"
NO_LOCK_ENV = "JAXMOUSE_NO_LOCK"
MEMORY_CHECK_ENV = "JAXMOUSE_MEMORY_CHECK"


def check_output_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
  """Refuses an existing output unless ``overwrite``; returns the path as a ``Path``."""
  path = Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
  return path


def read_json(path: str | os.PathLike, *, what: str) -> dict:
  """A JSON object from ``path``; bad JSON is a ValueError naming the file and ``what`` it is."""
  path = Path(path)
  try:
    value = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
    raise ValueError(f"{path}: not valid JSON ({e}); expected {what}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path}: holds a JSON {type(value).__name__}, expected {what} (an object)")
  return value


# ---- who owns a temporary or a lock -----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _host_id() -> str:
  """This host and pid namespace (containers with one hostname see different pids)."""
  try:
    namespace = os.stat("/proc/self/ns/pid").st_ino
  except OSError:
    namespace = 0
  return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def _proc_stat(pid: int) -> tuple[str, int] | None:
  """(state, start time in clock ticks since boot) of a process, from /proc; None if unknown."""
  try:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state is field 3
    return fields[0], int(fields[19])  # field 22: starttime
  except (OSError, ValueError, IndexError):
    return None


def _process_start(pid: int) -> int:
  stat = _proc_stat(pid)
  return stat[1] if stat else 0


def _process_alive(pid: int, start: int) -> bool:
  """Whether process ``pid`` of this host runs (and is the one that started at ``start``).

  Unknown cases count as alive: a live run must never be taken for a dead one.
  """
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  stat = _proc_stat(pid)
  if stat is None:
    return True
  state, now = stat
  return state not in ("Z", "X") and not (start and now != start)  # zombie, or pid reused


def owner_tag() -> str:
  """``@<pid>.<start>.<host>``: appended to temporary names so that a later run can tell a
  live writer's temporary from one left by a killed process."""
  pid = os.getpid()
  return f"@{pid}.{_process_start(pid)}.{_host_id()}"


_OWNER = re.compile(r"@(\d+)\.(\d+)\.([0-9a-f]{8})$")


def is_stale(name: str) -> bool:
  """Whether a temporary named ``name`` was left by a process that is gone.

  Temporaries of live processes and of other hosts are never stale; untagged ones (from an older
  jaxmouse) are.
  """
  m = _OWNER.search(name)
  if m is None:
    return True
  pid, start, host = int(m.group(1)), int(m.group(2)), m.group(3)
  return host == _host_id() and not _process_alive(pid, start)


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
  """Removes the ``.tmp-``/``.old-`` entries of ``folder`` that killed processes left.

  An ``.old-`` entry is the previous version of a folder being replaced; if the kill came before
  the new version was in place, the old one is put back instead of removed. Entries that cannot
  be removed (a read-only folder) are left. Returns what was removed or restored.
  """
  folder = Path(folder)
  done = []
  try:
    entries = list(folder.iterdir())
  except OSError:
    return done
  for p in entries:
    if not p.name.startswith((".tmp-", ".old-")) or not is_stale(p.name):
      continue
    try:
      m = _OWNER.search(p.name)
      if p.name.startswith(".old-") and m:  # ".old-<name>-<random>@<owner>"
        original = folder / p.name[len(".old-"):m.start()].rsplit("-", 1)[0]
        if not original.exists():
          os.replace(p, original)
          done.append(original)
          continue
      shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
      done.append(p)
    except OSError:
      pass
  return done


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
  """Yields a temporary sibling of ``path``; on success renames it onto ``path``.

  On any exception the temporary is removed; after a kill it is left under a hidden ``.tmp-``
  name tagged with its process, which ``clean_stale_temporaries`` removes once that process is
  gone. ``path`` itself is never half written: an existing file is replaced in one rename, an
  existing folder only after the new one is complete.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", suffix=owner_tag(), dir=path.parent))
  target = tmp / path.name
  try:
    if is_dir:
      target.mkdir()
    yield target
    if is_dir and path.exists():
      old = path.with_name(".old-" + tmp.name[len(".tmp-"):])
      os.replace(path, old)
      os.replace(target, path)
      shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
      os.replace(target, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


def check_free_space(path: str | os.PathLike, need: int) -> None:
  """Refuses (OSError ENOSPC naming ``path``) a write of about ``need`` bytes that the disk
  holding ``path`` has no room for, before any of it is written.

  Writers that fail midway (orbax's background threads) report a full disk with pages of
  tracebacks; this check turns the common case into one clear error.
  """
  path = Path(path)
  folder = next((p for p in [path.parent, *path.parents] if p.exists()), Path("."))
  free = shutil.disk_usage(folder).free
  if need > free:
    raise OSError(errno.ENOSPC, f"No space left on device: writing it needs about {gib(need)}, "
                  f"{gib(free)} is free", str(path))


def write_if_changed(path: str | os.PathLike, data: bytes) -> bool:
  """Writes ``data`` atomically unless ``path`` already holds exactly it; returns whether it
  wrote (so a finished run re-read in a read-only folder writes nothing)."""
  path = Path(path)
  try:
    if path.stat().st_size == len(data) and path.read_bytes() == data:
      return False
  except FileNotFoundError:
    pass
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)
  return True


# ---- run-folder locks ---------------------------------------------------------------------------

class FolderLocked(RuntimeError):
  """Another live process holds the lock of a run folder."""


def _holder_text(info: dict | None) -> str:
  if not info:
    return "another process"
  parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
  if info.get("since"):
    parts.append(f"since {info['since']}")
  if info.get("command"):
    parts.append(f"running `{info['command']}`")
  return ", ".join(parts)


def _command() -> str:
  prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
  prog = "jaxmouse" if prog == "__main__.py" else prog
  return " ".join([prog, *sys.argv[1:]])[:300]


def _record(**extra) -> dict:
  """Who this process is, for a lock or claim file: host, pid, process start, time, command."""
  return {"host": socket.gethostname(), "host_id": _host_id(), "pid": os.getpid(),
          "start": _process_start(os.getpid()),
          "since": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": _command(), **extra}


def _read_records(fd: int) -> list[dict]:
  """The JSON records of a lock or claim file, one per line (unreadable lines skipped)."""
  try:
    text = os.pread(fd, 1 << 20, 0).decode(errors="replace")
  except OSError:
    return []
  out = []
  for line in text.splitlines():
    try:
      info = json.loads(line)
    except ValueError:
      continue
    if isinstance(info, dict):
      out.append(info)
  return out


def _same_file(fd: int, path: Path) -> bool:
  """Whether ``path`` still names the file open as ``fd`` (not unlinked or replaced)."""
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _live_elsewhere(info: dict) -> bool:
  """Whether a record names a live process of this host other than this one."""
  try:
    pid, start = int(info.get("pid", 0)), int(info.get("start", 0))
  except (TypeError, ValueError):
    return False
  same_host = (info.get("host_id") == _host_id() if "host_id" in info
               else info.get("host") == socket.gethostname())
  return same_host and pid != os.getpid() and _process_alive(pid, start)


def _known_dead(info: dict) -> bool:
  """Whether a record names a process of this host that is gone (other hosts: unknown)."""
  same_host = (info.get("host_id") == _host_id() if "host_id" in info
               else info.get("host") == socket.gethostname())
  return same_host and not _live_elsewhere(info) and info.get("pid") != os.getpid()


def _locks_off() -> bool:
  return fcntl is None or os.environ.get(NO_LOCK_ENV, "") not in ("", "0")


class FolderLock:
  """A lock on a run folder: ``FOLDER/.jaxmouse.lock``, held for a process's run.

  Exclusive (the default) for a run that has the folder to itself; ``shared`` for the workers
  of a sharded sweep, which run side by side and split the cells by claims (``Claim``): shared
  holders exclude an exclusive one and the other way round, so a plain run never meets a
  sharded one. The lock is a kernel lock (``flock``) on that file, so it dies with its process,
  ``kill -9`` included, and an exclusive holder is always alone; the file records its holders,
  one JSON line each (host, pid, process start, command, mode), for the message that refuses a
  second process. A file left by a process that is gone is taken over. A file that names a live
  process of this host (for a shared lock: a live exclusive holder) is refused even when its
  kernel lock is free (a file system whose locks do nothing). ``path`` may be any lock file.
  The last holder removes the file.
  """

  def __init__(self, folder: str | os.PathLike, *, path: str | os.PathLike | None = None,
               shared: bool = False):
    self.folder = Path(folder)
    self.path = Path(path) if path is not None else self.folder / LOCK_NAME
    self.shared = shared
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> "FolderLock":
    if self._fd is not None:
      raise RuntimeError(f"{self.path} is already held by this FolderLock")
    if _locks_off():
      return self
    mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
    for _ in range(200):  # retried only while other processes release and unlink the file
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                   0o644)
      try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
      except BlockingIOError:
        records, moved = _read_records(fd), not _same_file(fd, self.path)
        os.close(fd)
        if moved:
          continue
        if self.shared and records and all(r.get("mode") == "shared" for r in records):
          # Only shard workers hold it: the exclusive lock in the way is the moment in which the
          # last of them checks that it is the last (see ``release``).
          time.sleep(0.01)
          continue
        raise FolderLocked(self._refusal(records)) from None
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          raise OSError(e.errno, f"{self.folder}: its file system does not support file locks "
                        f"({e.strerror}); set {NO_LOCK_ENV}=1 to run without the lock (then "
                        "never start two runs in this folder)") from None
        raise
      if not _same_file(fd, self.path):  # the previous holder unlinked it while we waited
        os.close(fd)
        continue
      records = _read_records(fd)
      live = [r for r in records if _live_elsewhere(r)
              and (not self.shared or r.get("mode") != "shared")]
      if live:
        os.close(fd)
        raise FolderLocked(self._refusal(live, kernel_lock_free=True))
      line = (json.dumps(_record(mode="shared" if self.shared else "exclusive")) + "\n").encode()
      if not self.shared:
        os.ftruncate(fd, 0)  # alone: the records of processes that are gone go
      os.write(fd, line)  # O_APPEND: shared holders add their line, each in one write
      self._fd = fd
      return self
    raise FolderLocked(f"{self.folder}: could not lock {self.path}; other processes keep "
                       "taking and releasing it")

  def _refusal(self, records: list[dict], kernel_lock_free: bool = False) -> str:
    records = [r for r in records if not _known_dead(r)] or records
    last = records[-1] if records else None
    holder = _holder_text(last)
    if last and last.get("mode") == "shared":
      others = len(records) - 1
      holder = (f"a sharded sweep: {holder}" + (f", and {others} other worker(s)" if others else "")
                + "; it takes --shard workers only")
    msg = (f"{self.folder} is in use by another jaxmouse run ({holder}); wait for it to finish "
           "or use another folder")
    if kernel_lock_free:
      msg += f"; if that run is gone, delete {self.path}"
    return msg

  def release(self) -> None:
    if self._fd is None:
      return
    last = True
    if self.shared:  # the last shard worker out removes the file; the others leave it
      try:
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        last = False
    if last:
      with contextlib.suppress(OSError):
        os.unlink(self.path)  # while still locked, so no one locks a file that is then removed
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "FolderLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike, *, shared: bool = False) -> Iterator[FolderLock]:
  """``with lock_folder(run): ...`` holds ``run``'s lock (see ``FolderLock``; ``shared`` for the
  workers of a sharded sweep).

  A folder this process cannot write to (read-only) is not locked: the process cannot harm
  another there, and any write it tries fails with a clear OSError.
  """
  lock = FolderLock(folder, shared=shared)
  try:
    lock.acquire()
  except OSError as e:
    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
      raise
  try:
    yield lock
  finally:
    lock.release()


@contextlib.contextmanager
def taking_turns(path: str | os.PathLike) -> Iterator[None]:
  """Holds an exclusive lock on the file ``path``, waiting for it: processes that would do the
  same work (extract one layer, prepare one study) do it one after the other, and each finds
  what the previous one made. The file is removed on release. Without file locks (or in a
  read-only folder) it does nothing: the work is then done by each, atomically."""
  path = Path(path)
  if _locks_off():
    yield
    return
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
      if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise
      yield
      return
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
      yield  # a file system without locks: as with JAXMOUSE_NO_LOCK
      return
    if _same_file(fd, path):
      break
    os.close(fd)  # the previous holder removed it while we waited: lock the new one
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.unlink(path)
    os.close(fd)


# ---- claims of single pieces of work -------------------------------------------------------------

CLAIM_TIMEOUT_S = 600.0


class Claim:
  """One process's claim of one piece of work (a sweep cell): the file ``path``, created with
  ``O_EXCL`` and holding a JSON record of its holder (host, pid, process start, time, command).

  ``acquire()`` returns False while another live process holds the claim. The holder also keeps
  a kernel lock (``flock``) on the file and refreshes its modification time every
  ``timeout / 4`` seconds, so a claim is stale, and taken over, when its kernel lock is free and
  its process is gone: on this host by the same test as a folder lock's (the pid is gone or
  reused), on another host when the claim has not been refreshed for ``timeout`` seconds (the
  clocks of hosts sharing a folder must agree to well within it). A takeover rewrites the file
  in place under the kernel lock, so of two processes that find one stale claim only one gets
  it; ``previous`` then holds the record it replaced. ``release()`` removes the file.
  """

  def __init__(self, path: str | os.PathLike, *, timeout: float = CLAIM_TIMEOUT_S, **note):
    if not timeout > 0:
      raise ValueError(f"a claim timeout must be positive, got {timeout!r} seconds")
    self.path = Path(path)
    self.timeout = float(timeout)
    self.note = note
    self.previous: dict | None = None
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> bool:
    if self._fd is not None:
      raise RuntimeError(f"{self.path} is already held by this Claim")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
      try:
        fd, created = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
      except FileExistsError:
        try:
          fd, created = os.open(self.path, flags), False
        except FileNotFoundError:  # released meanwhile: create it
          continue
      if not _locks_off():
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its holder lives (or another process is taking it over)
          os.close(fd)
          return False
        except OSError as e:
          if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
      if not _same_file(fd, self.path):  # released (removed) while we opened it
        os.close(fd)
        continue
      previous = None
      if not created:
        records = _read_records(fd)
        previous = records[-1] if records else {}
        if not self._stale(previous, fd):
          os.close(fd)
          return False
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(_record(**self.note)) + "\n").encode(), 0)
      self._fd, self.previous = fd, previous
      _heartbeat.add(self)
      return True
    return False

  def _stale(self, record: dict, fd: int) -> bool:
    """Whether the process that wrote ``record`` into the claim open as ``fd`` is gone."""
    if record.get("host_id") == _host_id() and record.get("pid") != os.getpid():
      try:
        return not _process_alive(int(record.get("pid", 0)), int(record.get("start", 0)))
      except (TypeError, ValueError):
        return True
    # Another host (or a record not yet written): only the refreshed time tells.
    return time.time() - os.fstat(fd).st_mtime > self.timeout

  def refresh(self) -> None:
    if self._fd is not None:
      with contextlib.suppress(OSError):
        os.utime(self._fd)

  def release(self) -> None:
    if self._fd is None:
      return
    _heartbeat.discard(self)
    if _same_file(self._fd, self.path):
      with contextlib.suppress(OSError):
        os.unlink(self.path)  # while still locked, as a folder lock
    os.close(self._fd)
    self._fd = None

class _Heartbeat:
  """One daemon thread per process that refreshes the claims it holds."""

  def __init__(self):
    self._claims: set[Claim] = set()
    self._lock = threading.Lock()
    self._thread: threading.Thread | None = None

  def add(self, claim: Claim) -> None:
    with self._lock:
      self._claims.add(claim)
      if self._thread is None or not self._thread.is_alive():
        self._thread = threading.Thread(target=self._run, name="jaxmouse-claims", daemon=True)
        self._thread.start()

  def discard(self, claim: Claim) -> None:
    with self._lock:
      self._claims.discard(claim)

  def _run(self) -> None:
    while True:
      with self._lock:
        claims = list(self._claims)
      period = min([c.timeout / 4 for c in claims] or [60.0])
      time.sleep(min(period, 60.0))
      for c in claims:
        c.refresh()


_heartbeat = _Heartbeat()


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Appends ``data`` to the file ``path`` in one ``write``; a write that fails midway (a full
  disk) is cut off again, so the file holds either all of ``data`` or none of it."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
  try:
    size = os.fstat(fd).st_size
    try:
      written = os.write(fd, data)
      if written != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except OSError:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, size)
      raise
  finally:
    os.close(fd)


def create_once(path: str | os.PathLike, data: bytes) -> bytes:
  """Writes ``data`` to ``path`` unless it exists, atomically (a complete file appears in one
  hard link, and of processes racing to create it one wins, never replacing another's); returns
  what ``path`` holds afterwards."""
  path = Path(path)
  if path.exists():
    return path.read_bytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=owner_tag(), dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    try:
      os.link(tmp, path)
    except FileExistsError:
      pass
    except OSError as e:  # a file system without hard links: a rename, if still absent
      if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
        raise
      if not path.exists():
        os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
  return path.read_bytes()


# ---- memory -------------------------------------------------------------------------------------

def _read_int(path: str) -> int | None:
  try:
    return int(Path(path).read_text().split()[0])
  except (OSError, ValueError, IndexError):
    return None


def _stat_field(path: str, names: tuple[str, ...]) -> int:
  try:
    lines = Path(path).read_text().splitlines()
  except OSError:
    return 0
  fields = dict(line.split()[:2] for line in lines if len(line.split()) >= 2)
  for n in names:
    if n in fields and fields[n].isdigit():
      return int(fields[n])
  return 0


def available_memory() -> int | None:
  """Bytes this process can still allocate: ``MemAvailable`` plus free swap from /proc/meminfo,
  capped by the cgroup's limit less its usage (page cache counted as free); None if unknown."""
  try:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    avail = int(info["MemAvailable"].split()[0]) * 1024
    avail += int(info.get("SwapFree", "0 kB").split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return None
  for limit_f, usage_f, stat_f, cache in (
      ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
       ("file",)),
      ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
       "/sys/fs/cgroup/memory/memory.stat", ("total_cache", "cache"))):
    limit, usage = _read_int(limit_f), _read_int(usage_f)
    if limit is not None and usage is not None and limit < 1 << 60:
      avail = min(avail, max(0, limit - usage + _stat_field(stat_f, cache)))
      break
  return avail


def gib(n: float) -> str:
  return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_memory(need: int, *, what: str, hint: str = "") -> None:
  """Refuses (MemoryError) work estimated to need ``need`` bytes when less is available.

  The estimates count only the largest arrays, so a refusal means the work cannot fit; set
  ``JAXMOUSE_MEMORY_CHECK=0`` to skip the check.
  """
  if os.environ.get(MEMORY_CHECK_ENV, "1").lower() in ("0", "off", "no", "false"):
    return
  avail = available_memory()
  if avail is None or need <= avail:
    return
  raise MemoryError(f"{what} needs at least {gib(need)} of memory, but only {gib(avail)} is "
                    f"available{'; ' + hint if hint else ''} (set {MEMORY_CHECK_ENV}=0 to try "
                    "anyway)")


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
  """Hex sha256 of a file, read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def cache_dir() -> Path:
  """Where fetched weights and other downloads are cached (``$JAXMOUSE_CACHE`` or ~/.cache)."""
  root = os.environ.get("JAXMOUSE_CACHE") or Path.home() / ".cache" / "jaxmouse"
  return Path(root)
