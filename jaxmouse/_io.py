"""File helpers shared by the stateful shells: atomic writes and output-path checks.

Nothing here touches arrays or models; it only guarantees that a file or folder a user sees is
either complete or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
  """Yields a temporary sibling of ``path``; on success renames it onto ``path``.

  On any exception (or a kill) the temporary is removed or left under a hidden ``.tmp-`` name, so
  ``path`` itself is never half written. An existing ``path`` is replaced only after the new one
  is complete.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
  target = tmp if is_dir else tmp / path.name
  try:
    yield target
    if path.exists():
      old = path.with_name(f".old-{path.name}-{os.getpid()}")
      os.replace(path, old)
      os.replace(target, path)
      shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
      os.replace(target, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


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
