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
def replacing(path: Path) -> Iterator[Path]:
    """A fresh private path to write `path`'s new content to; renamed over `path` when the
    block ends, removed if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any, indent: int | None = None) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent))
