"""Files replaced whole, by one writer or several at once."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path

import pytest

from pytest_aifactory.atomic import replacing, write_json_atomic


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "p.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["p.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600, "private to its owner"


def _write_half_and_die(target: Path) -> None:
    with replacing(target) as tmp:
        tmp.write_text('{"a": ')
        raise RuntimeError("the writer died half way")


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "p.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        _write_half_and_die(target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def _write_many(target: str, writer: int) -> None:
    for round_ in range(200):
        write_json_atomic(Path(target), {"writer": writer, "round": round_, "pad": "x" * 4000})


def test_two_writers_of_one_file_never_tear_it(tmp_path: Path) -> None:
    """Each writer has its own temporary file: a shared one would interleave their bytes."""
    target = tmp_path / "summary.json"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(target), w)) for w in (0, 1)]
    for writer in writers:
        writer.start()
    while any(w.is_alive() for w in writers):
        if target.exists():
            data = json.loads(target.read_text())  # never half a file
            assert data["writer"] in (0, 1)
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert json.loads(target.read_text())["round"] == 199
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
