"""Atomic result folders: all or nothing, and never a silent overwrite."""

from pathlib import Path

import pytest

from deeplense.atomic import atomic_directory
from deeplense.errors import OutputExistsError


def test_a_finished_folder_appears_whole(tmp_path: Path) -> None:
    out = tmp_path / "result"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # nothing visible until the block ends
    assert (out / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["result"]  # no temp folder left


def test_an_existing_folder_is_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "result"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_directory(out):
        pass


def test_a_failure_keeps_the_old_result_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "result"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("crash half-way")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["result"]


def test_overwrite_replaces_the_old_result(tmp_path: Path) -> None:
    out = tmp_path / "result"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_directory(out, overwrite=True, shared=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert out.stat().st_mode & 0o777 == 0o755
