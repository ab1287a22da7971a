"""Remembered run verifications, so the experiments dashboard need not hash every run each time.

Verifying a run hashes all its data files; a folder of hundreds of runs of a million requests
each would be read whole at the end of every session. A verification is kept in the user's
state folder with the run's fingerprint: the owner, mode, inode, size and modification time of
the run folder, its manifest, each data file and the signing key. Any write to one of them
(an edit, a copy, a rename into place, a new key) changes the fingerprint and the run is
verified again; a run of another account is never remembered as good, since its folder's
owner is part of what is checked each time.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from pytest_aifactory.atomic import write_json_atomic
from pytest_aifactory.cluster.run_records import state_dir
from pytest_aifactory.report.manifest import DATA_FILES, MANIFEST_FILE, verify_run
from pytest_aifactory.report.signing import key_path

CACHE_FILE = "verified-runs.json"
CACHE_FORMAT = 1


def _stat(path: Path) -> list[int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_uid, info.st_mode, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]


def fingerprint(root: Path) -> list[list[int] | None]:
    paths = [root, root / MANIFEST_FILE, *(root / name for name in DATA_FILES), key_path()]
    return [_stat(path) for path in paths]


class VerifyCache:
    """`problems(root)` is `verify_run(root)`, answered from memory while the run's fingerprint
    is unchanged; `save()` keeps what was learnt (for the folders that still exist)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / CACHE_FILE
        self._entries: dict[str, Any] = {}
        self._changed = False
        with contextlib.suppress(OSError, ValueError, AttributeError):
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") == CACHE_FORMAT and isinstance(data.get("runs"), dict):
                self._entries = data["runs"]

    def problems(self, root: Path) -> list[str]:
        key = str(root.resolve())
        current = fingerprint(root)
        entry = self._entries.get(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == current:
            return [str(p) for p in entry.get("problems") or []]
        problems = verify_run(root)
        self._entries[key] = {"fingerprint": current, "problems": problems}
        self._changed = True
        return problems

    def save(self) -> None:
        """Best effort: a cache that cannot be written only costs the hashing again."""
        if not self._changed:
            return
        runs = {key: entry for key, entry in self._entries.items() if Path(key).is_dir()}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_json_atomic(self.path, {"format": CACHE_FORMAT, "runs": runs})
