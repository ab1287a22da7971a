"""Files replaced whole: a reader (another process, Prometheus's file discovery, a copy being
taken) sees the old file or the new one, never half of one.

Each write goes to a temporary file of its own beside the target (a name no other writer can
have, created private to its owner) and is renamed over the target when complete; a write that
fails leaves the target as it was and no temporary file behind. Two processes writing the same
file (pytest-xdist workers, fanned-out clients) therefore never write into one temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: Path, durable: bool = False) -> Iterator[Path]:
    """A fresh private path to write `path`'s new content to; renamed over `path` when the
    block ends, removed if it raises. `durable`: the content reaches the disk before the
    rename and the rename before returning, so a crash (a lost node, a power cut) cannot
    leave a later file of a sequence on disk without this one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, durable: bool = False) -> None:
    with replacing(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(
    path: Path, data: Any, indent: int | None = None, durable: bool = False
) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent), durable)
