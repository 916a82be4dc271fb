"""Weight-file readers against damaged and hostile files: every file is refused with one line
naming it, nothing in a file runs, no tensor is read past its storage."""

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxmouse.weights import readers
from weight_files import (LEGACY_SLOTS, Payload, legacy_parts, payload_pickle, rezip,
                          short_legacy_storage, with_legacy_slot)

ROOT = Path(__file__).resolve().parents[1]


def _env():
  # The subprocesses import this checkout's jaxmouse, whatever is installed.
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _small_state():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  return {"features.0.weight": torch.randn(4, 3, 3, 3, generator=g),
          "features.0.bias": torch.randn(4, generator=g),
          "features.2.weight": base.t(),  # a non-contiguous view
          "features.2.bias": base[1:3, 2]}  # a strided view with an offset


def _save(obj, path: Path, *, legacy: bool) -> Path:
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
  return path


def _reference(state):
  return {k: v.detach().float().numpy() for k, v in state.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  root = tmp_path_factory.mktemp("small")
  state = _small_state()
  return {"state": state, "zip": _save(state, root / "zip.pth", legacy=False),
          "legacy": _save(state, root / "legacy.pth", legacy=True)}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_valid_files_read_exactly(small, fmt):
  got = readers.read_torch(small[fmt])
  ref = _reference(small["state"])
  assert set(got) == set(ref)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


# ---- the hostile corpus -----------------------------------------------------------------------

def _corpus(root: Path, small) -> list[tuple[str, Path, list[str]]]:
  """(label, file, extra CLI args) of files that must all be refused."""
  marker = root / "MARKER"
  legacy, zipped = small["legacy"].read_bytes(), small["zip"]
  cases = []

  def add(label, data_or_path, name=None, args=()):
    path = root / (name or f"{label}.pth")
    if isinstance(data_or_path, bytes):
      path.write_bytes(data_or_path)
    else:
      assert data_or_path == path
    cases.append((label, path, list(args)))

  # A payload in every pickle slot of the legacy format, and in the zip format's data.pkl.
  for slot in LEGACY_SLOTS:
    add(f"legacy-payload-{slot}", with_legacy_slot(legacy, slot, payload_pickle(marker)))
  add("zip-payload-data.pkl", rezip(zipped, root / "zip-payload-data.pkl.pth",
                                    {"data.pkl": payload_pickle(marker)}))
  # A payload as one entry of an otherwise valid state dict, written by torch itself.
  for legacy_fmt in (False, True):
    label = f"{'legacy' if legacy_fmt else 'zip'}-payload-entry"
    _save({**small["state"], "evil": Payload(marker)}, root / f"{label}.pth", legacy=legacy_fmt)
    add(label, root / f"{label}.pth")
  # The same payload through a file without suffix and through `weights fetch torchvision`.
  add("no-suffix-payload", with_legacy_slot(legacy, "magic", payload_pickle(marker)),
      name="vgg16_weights")
  add("fetch-file-payload", with_legacy_slot(legacy, "sys_info", payload_pickle(marker)),
      args=["fetch"])
  # Storages shorter than their tensors, in files that are otherwise consistent.
  with zipfile_member(zipped, "data/0") as (name, data):
    add("zip-short-storage-4-bytes", rezip(zipped, root / "zip-short-storage-4-bytes.pth",
                                           {name: data[:-4]}))
    add("zip-short-storage-most", rezip(zipped, root / "zip-short-storage-most.pth",
                                        {name: data[:8]}))
  add("legacy-short-storage-1", short_legacy_storage(legacy, 1))
  count = int.from_bytes(legacy_parts(legacy)[1][:8], "little")
  add("legacy-short-storage-most", short_legacy_storage(legacy, count - 1))
  # Truncated files: the last 1000 / 4 bytes missing, and cut inside every slot.
  parts, _ = legacy_parts(legacy)
  cuts = {"last-4": len(legacy) - 4, "last-1000": len(legacy) - 1000}
  offset = 0
  for slot, part in zip(LEGACY_SLOTS, parts):
    cuts[f"in-{slot}"] = offset + len(part) // 2
    offset += len(part)
  cuts["before-storage"] = offset
  for label, n in cuts.items():
    add(f"legacy-truncated-{label}", legacy[:max(n, 1)])
  zdata = zipped.read_bytes()
  for n in (len(zdata) - 4, len(zdata) // 2, 10):
    add(f"zip-truncated-{n}", zdata[:n])
  # Not a weight file at all, and an empty one.
  add("text", b"hello, these are not weights\n")
  add("empty", b"")
  return cases


@contextlib.contextmanager
def zipfile_member(path: Path, suffix: str):
  import zipfile
  with zipfile.ZipFile(path) as zf:
    name = next(n for n in zf.namelist() if n.endswith(suffix))
    yield name, zf.read(name)


# Runs many CLI commands in one fresh interpreter: a crash (segfault) of any of them fails the
# whole run with a negative return code instead of killing pytest.
_RUNNER = r"""
import contextlib, io, json, sys, traceback
import jaxmouse
from jaxmouse.cli import main
results = []
for argv in json.loads(sys.argv[1]):
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      rc = main(argv)
  except BaseException:
    rc = "raised"
    err.write(traceback.format_exc())
  results.append({"rc": rc, "err": err.getvalue()})
print(json.dumps({"module": jaxmouse.__file__, "results": results}))
"""


def run_cli(commands: list[list[str]]) -> list[dict]:
  proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(commands)],
                        capture_output=True, text=True, env=_env())
  assert proc.returncode == 0, f"crashed with {proc.returncode}: {proc.stderr[-3000:]}"
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert Path(out["module"]).resolve().is_relative_to(ROOT), out["module"]
  return out["results"]


def _command(path: Path, args: list[str], out: Path) -> list[str]:
  if args == ["fetch"]:
    return ["weights", "fetch", "torchvision", "--file", str(path), "--out", str(out)]
  return ["weights", "convert", str(path), "--out", str(out)]


def test_hostile_corpus_is_refused_by_the_cli(tmp_path, small):
  cases = _corpus(tmp_path, small)
  assert len(cases) >= 25
  outs = [tmp_path / "out" / label for label, _, _ in cases]
  results = run_cli([_command(path, args, out) for (_, path, args), out in zip(cases, outs)])
  for (label, path, _), out, r in zip(cases, outs, results):
    lines = r["err"].splitlines()
    assert r["rc"] == 1, (label, r)
    assert len(lines) == 1 and lines[0].startswith("jaxmouse weights: error: "), (label, r)
    assert path.name in lines[0] and "Traceback" not in r["err"], (label, r)
    assert not out.exists(), label
  assert not (tmp_path / "MARKER").exists()
  # What the messages say, for a few of them.
  said = {label: r["err"] for (label, _, _), r in zip(cases, results)}
  assert "refusing to load posix.system" in said["legacy-payload-magic"]
  assert "refusing to load posix.system" in said["zip-payload-data.pkl"]
  assert "tensor 'features.0.weight' of shape (4, 3, 3, 3)" in said["zip-short-storage-4-bytes"]
  assert "needs 108 elements but its storage holds 107" in said["zip-short-storage-4-bytes"]
  assert "truncated" in said["legacy-truncated-last-4"]
  assert "truncated" in said["legacy-truncated-in-body"]


def test_the_payload_is_live_for_plain_pickle(tmp_path, small):
  """The corpus's payloads do run under plain pickle.load, so the test above can fail."""
  marker = tmp_path / "MARKER"
  path = tmp_path / "payload-magic.pth"
  path.write_bytes(with_legacy_slot(small["legacy"].read_bytes(), "magic", payload_pickle(marker)))
  subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"],
                 check=True, env=_env())
  assert marker.exists()


def test_one_line_on_the_real_stderr(tmp_path, small):
  marker = tmp_path / "MARKER"
  path = tmp_path / "weights"  # no suffix
  path.write_bytes(with_legacy_slot(small["legacy"].read_bytes(), "protocol",
                                    payload_pickle(marker)))
  for cmd in (["convert", str(path)], ["fetch", "torchvision", "--file", str(path)]):
    proc = subprocess.run([sys.executable, "-m", "jaxmouse", "weights", *cmd, "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=_env())
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"jaxmouse weights: error: cannot read {path} as a PyTorch state dict: its protocol "
        "version is not a plain pickle: refusing to load posix.system: a header pickle holds "
        "plain values only"], proc.stderr
  assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_every_truncation_is_refused(tmp_path, small, fmt):
  data = small[fmt].read_bytes()
  path = tmp_path / "cut.pth"
  for n in range(len(data)):
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"cannot read .*cut\.pth as a PyTorch state dict"):
      readers.read_torch(path)


@pytest.mark.parametrize("slot,pickled,match", [
    ("body", b"\x80\x05\x96" + (3).to_bytes(8, "little") + b"abc.", "opcode BYTEARRAY8"),
    ("body", b"\x80\x05\x96" + (2**62).to_bytes(8, "little") + b"abc.",
     "ends inside its tensor pickle"),
    ("body", b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc.",
     "ends inside its tensor pickle"),
    ("sys_info", b"\x80\x02\xff.", "system info is not a valid pickle"),
    ("keys", b"\x80\x02]q\x00(X\x01\x00\x00\x00", "its list of storage keys is not a valid pickle"),
    ("protocol", b"\x80\x02K\x07.", "unsupported legacy protocol version 7"),
])
def test_malformed_pickles_are_refused(tmp_path, small, slot, pickled, match):
  path = tmp_path / "bad.pth"
  path.write_bytes(with_legacy_slot(small["legacy"].read_bytes(), slot, pickled))
  with pytest.raises(ValueError, match=match):
    readers.read_torch(path)


# ---- the extent check ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 40), offset=st.integers(0, 45),
       dims=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7)), max_size=3))
def test_build_tensor_reads_inside_its_storage_only(n, offset, dims):
  size = tuple(d[0] for d in dims)
  stride = tuple(d[1] for d in dims)
  data = np.arange(n, dtype=np.float32)
  numel = int(np.prod(size, dtype=np.int64))
  last = offset + sum((s - 1) * t for s, t in zip(size, stride))
  fits = numel == 0 or (last < n and numel <= n)
  if not fits:
    with pytest.raises(ValueError, match="tensor 'w'.*storage holds"):
      readers.build_tensor(data, offset, size, stride, name="w")
    return
  got = readers.build_tensor(data, offset, size, stride, name="w")
  ref = np.zeros(size, np.float32)
  for idx in np.ndindex(*size):  # element i of the tensor is storage[offset + i . stride]
    ref[idx] = data[offset + sum(i * t for i, t in zip(idx, stride))]
  np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("offset,size,stride,match", [
    (-1, (2,), (1,), "offset must be a non-negative integer"),
    (0, (2, 2), (1,), "differ in length"),
    (0, (2,), (-1,), "strides must be a tuple of non-negative integers"),
    (0, "ab", (1,), "shape must be a tuple"),
    (1.5, (2,), (1,), "offset"),
])
def test_build_tensor_refuses_malformed_arguments(offset, size, stride, match):
  with pytest.raises(ValueError, match=match):
    readers.build_tensor(np.zeros(8, np.float32), offset, size, stride, name="w")


# ---- property tests of the torch reader ---------------------------------------------------------

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64]


@st.composite
def state_dicts(draw):
  n = draw(st.integers(1, 4))
  out = {}
  for i in range(n):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    dtype = draw(st.sampled_from(_DTYPES))
    t = torch.arange(int(np.prod(shape, dtype=np.int64)) * 2, dtype=torch.float64)
    t = (t * 0.37 - 3).to(dtype)
    view = draw(st.sampled_from(["contiguous", "offset", "transposed"]))
    if view == "offset":
      out[f"t{i}"] = t[len(t) // 2:].reshape(shape)  # shares a storage, starts mid-way
    elif view == "transposed" and len(shape) >= 2:
      out[f"t{i}"] = t[:int(np.prod(shape))].reshape(shape[::-1]).transpose(0, -1)
    else:
      out[f"t{i}"] = t[:int(np.prod(shape))].reshape(shape)
  return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=state_dicts(), legacy=st.booleans())
def test_torch_files_round_trip(tmp_path, state, legacy):
  path = _save(state, tmp_path / "x.pth", legacy=legacy)
  got = readers.read_torch(path)
  assert set(got) == set(state)
  for k, v in state.items():
    ref = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    assert got[k].shape == ref.shape
    np.testing.assert_array_equal(got[k], ref, err_msg=k)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(legacy=st.booleans(), at=st.floats(0, 1), junk=st.binary(min_size=1, max_size=16),
       cut=st.booleans())
def test_damaged_files_are_read_or_refused_never_anything_else(tmp_path, small, legacy, at, junk,
                                                               cut):
  data = bytearray(small["legacy" if legacy else "zip"].read_bytes())
  i = int(at * (len(data) - 1))
  if cut:
    data = data[:i]
  else:
    data[i:i + len(junk)] = junk
  path = tmp_path / "damaged.pth"
  path.write_bytes(bytes(data))
  try:
    got = readers.read_torch(path)
  except ValueError as e:
    assert str(path) in str(e)
  else:
    assert all(isinstance(v, np.ndarray) for v in got.values())
