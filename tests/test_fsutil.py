import pytest

from edgecompress.errors import UserError
from edgecompress.fsutil import atomic_directory, atomic_write_text, sha256_file


def test_atomic_directory_commits_on_success(tmp_path):
    target = tmp_path / "bundle"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.onnx").write_text("partial")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_force_and_survives_a_failed_replacement(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(UserError, match="--force"):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, force=True) as tmp:
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old"
    with atomic_directory(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_atomic_write_and_sha256(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "f.txt", "abc")
    assert p.read_text() == "abc"
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_atomic_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_directory(tmp_path / "d") as d:
            pass
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
