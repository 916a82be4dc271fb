"""Atomic writes: a failed write leaves neither a partial file nor a changed old one."""

import pytest

from jaxmouse._io import atomic_path, check_output_path


def test_atomic_file_and_dir(tmp_path):
  target = tmp_path / "out.txt"
  with atomic_path(target) as tmp:
    tmp.write_text("new")
    assert not target.exists()
  assert target.read_text() == "new"
  with pytest.raises(RuntimeError):
    with atomic_path(target) as tmp:
      tmp.write_text("half")
      raise RuntimeError("killed mid-write")
  assert target.read_text() == "new"
  folder = tmp_path / "ckpt"
  with atomic_path(folder, is_dir=True) as tmp:
    (tmp / "a").write_text("1")
  assert (folder / "a").read_text() == "1"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out.txt"]


def test_check_output_path(tmp_path):
  (tmp_path / "x").write_text("")
  with pytest.raises(FileExistsError, match="--overwrite"):
    check_output_path(tmp_path / "x", overwrite=False)
  assert check_output_path(tmp_path / "x", overwrite=True).name == "x"
