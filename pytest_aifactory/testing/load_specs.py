"""One process's load for a test or a measuring script, naming only what it is about.

A `LoadSpec` has nine required fields, most of them beside the point of any one check (the
client's name, where its records go); a test of rate accuracy cares about the rate, a test of a
fault about the fault. `load_spec` fills the rest with small defaults, so every caller builds
the spec the same way and a new required field is added here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_aifactory.loadgen.spec import LoadSpec


def load_spec(folder: Path | str, **fields: Any) -> LoadSpec:
    """A load of client `chat` (kind `openai`) at concurrency 1 with no server address, its
    records and progress under `folder`; `fields` replace any of these. The level label
    follows the mode and level unless given."""
    folder = Path(folder)
    values: dict[str, Any] = {
        "client": "chat",
        "kind": "openai",
        "mode": "concurrency",
        "level": 1,
        "base_url": "",
        "model": "",
        "records_path": str(folder / "records" / "p0000.jsonl"),
        "progress_path": str(folder / "progress" / "p0000.json"),
    }
    values.update(fields)
    values.setdefault("level_label", f"{values['mode']}={values['level']:g}")
    return LoadSpec(**values)
