"""Slurm job ids as `squeue` and `sacct` show them.

The tasks of a job array that still wait share one line, `43_[0-2]`, `12_[1,3-5]` or `12_[0-3%2]`
(`%2`: at most two of them run at once), while each task was recorded by its own id (`43_0`).
The executor and `aifactory status` both read such a line as the tasks it stands for, so they
read it the same way. It lives apart from `slurm.py` so that the registry, which every command
line tool imports, does not have to import submitit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_ARRAY_ID = re.compile(r"^(?P<array>\d+)_(?:(?P<task>\d+)|\[(?P<tasks>[\d,\-]+)(?:%\d+)?\])$")


@dataclass(frozen=True)
class ShownJobId:
    """What one job id printed by `squeue`/`sacct` stands for."""

    ids: tuple[str, ...]
    """The jobs: each task of a waiting array range, otherwise the id as shown."""
    array: str | None
    """The job array the jobs belong to (`12` for `12_3` and `12_[0-3]`): `squeue -j 12` asks
    for all of its tasks. None for an id that is no array task."""


def parse_job_id(shown: str) -> ShownJobId:
    """`43_[0-2]` -> 43_0, 43_1, 43_2 of array 43; `43_1` -> itself, of array 43; anything else
    (`12`, `12+0`, `12.batch`) -> itself, of no array."""
    match = _ARRAY_ID.match(shown)
    if match is None:
        return ShownJobId(ids=(shown,), array=None)
    array = match.group("array")
    if match.group("tasks") is None:
        return ShownJobId(ids=(shown,), array=array)
    return ShownJobId(
        ids=tuple(f"{array}_{task}" for task in _task_indices(match.group("tasks"))), array=array
    )


def _task_indices(spec: str) -> Iterator[int]:
    """`1,3-5` -> 1, 3, 4, 5. A part that is no number or range is passed over rather than
    failing: the other parts still name tasks that are in the queue."""
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (high or low).isdigit():
            yield from range(int(low), int(high or low) + 1)
