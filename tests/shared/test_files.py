"""The one atomic writer: all or nothing, create-only when asked, no temporary file left."""

from __future__ import annotations

from pathlib import Path

import pytest

from geozarr_pipeline.files import write_atomic


def test_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "doc.json"
    assert write_atomic(target, b"one") is True
    assert write_atomic(target, b"two") is True
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.json"]


def test_if_absent_refuses_an_existing_name_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    assert write_atomic(target, b"first", if_absent=True) is True
    assert write_atomic(target, b"second", if_absent=True) is False
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_failed_write_leaves_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    write_atomic(target, b"old")
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    with pytest.raises((FileExistsError, NotADirectoryError)):
        write_atomic(tmp_path / "blocker" / "x.json", b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "doc.json"]
