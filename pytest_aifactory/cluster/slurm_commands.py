"""Slurm's commands and what they print, in one place: `squeue`, `sacct`, `scontrol`, `scancel`.

The executor (`slurm.py`) asks here while a run goes on; `aifactory status` and `stop` ask here
after the driver is gone. Every command runs through `run_slurm`, with one timeout and one way of
saying that Slurm gave no answer. Nothing here imports submitit, so the command line tools that
read job states start quickly.

Job ids are read as `squeue` and `sacct` show them: the tasks of a job array that still wait share
one line, `43_[0-2]`, `12_[1,3-5]` or `12_[0-3%2]` (`%2`: at most two of them run at once), while
each task was recorded by its own id (`43_0`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

COMMAND_TIMEOUT_S = 30.0
"""A controller that has not answered by then is taken as down (a busy one answers within it)."""
SQUEUE_FORMAT = "%i|%T|%N|%r"
"""Job id, state, nodes and the reason it waits: the reason last, as it is free text."""
ENDED = "ENDED"
"""The state of a job neither `squeue` nor `sacct` knows (any more)."""

_STEP_ID = re.compile(r"^\d+(?:_\d+)?\.\d+$")
"""A job step: `12.3` (an array task's step: `12_4.3`)."""
_ARRAY_ID = re.compile(r"^(?P<array>\d+)_(?:(?P<task>\d+)|\[(?P<tasks>[\d,\-]+)(?:%\d+)?\])$")


class SlurmCommandError(Exception):
    """A Slurm command gave no answer: not on this machine, it failed to run, it hung, or Slurm
    refused. The message says which, for the user."""

    def __init__(self, message: str, unknown_job: bool = False) -> None:
        super().__init__(message)
        self.unknown_job = unknown_job
        """Slurm only said it does not know a job id: it forgets jobs soon after they end."""


def run_slurm(argv: Sequence[str]) -> str:
    """What the command prints; `SlurmCommandError` when it gives no answer."""
    command = argv[0]
    if shutil.which(command) is None:
        raise SlurmCommandError(f"{command} is not available on this machine")
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise SlurmCommandError(f"{command} failed: {err}") from None
    if done.returncode != 0:
        raise SlurmCommandError(
            f"{command} failed: {done.stderr.strip() or done.returncode}",
            unknown_job="Invalid job id" in done.stderr,
        )
    return done.stdout


# -- job ids ------------------------------------------------------------------------------------


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


# -- reading squeue and sacct -------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEntry:
    """A job as `squeue` lists it."""

    state: str
    nodelist: str = ""
    """Slurm's short form (`gpu[01-03]`); `expand_nodelist` names each node."""
    reason: str = ""
    """Why it waits (`Resources`, `Priority`); `None` once it runs."""


def _rows(text: str, fields: int) -> Iterator[tuple[ShownJobId, list[str]]]:
    """Lines of `fields` `|`-separated fields, a job id first; the last field keeps any `|` of
    its own. Shorter lines are passed over."""
    for line in text.splitlines():
        parts = [part.strip() for part in line.strip().split("|", fields - 1)]
        if len(parts) == fields and parts[0]:
            yield parse_job_id(parts[0]), parts[1:]


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    """`squeue -h -o SQUEUE_FORMAT` lines by job id; a waiting array range `12_[0-3%2]` gives
    one entry per task (`12_0` ... `12_3`) and one for the array itself (`12`)."""
    entries: dict[str, QueueEntry] = {}
    for shown, (state, nodelist, reason) in _rows(text, 4):
        entry = QueueEntry(state=state, nodelist=nodelist, reason=reason)
        for job_id in shown.ids:
            entries[job_id] = entry
        if shown.array is not None:
            entries.setdefault(shown.array, entry)
    return entries


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -n -X -P -o JobID,State` lines: each job's state by id, without what follows the
    state's name (`CANCELLED by 1000` -> `CANCELLED`)."""
    states: dict[str, str] = {}
    for shown, (state,) in _rows(text, 2):
        if state:
            states.update((job_id, state.split()[0]) for job_id in shown.ids)
    return states


# -- asking -------------------------------------------------------------------------------------


def squeue(job_ids: Sequence[str]) -> dict[str, QueueEntry] | None:
    """The queued and running jobs among `job_ids` (an array's id asks for all its tasks): {}
    when Slurm no longer knows any of them, None when it gives no answer."""
    try:
        text = run_slurm(["squeue", "-h", f"--jobs={','.join(job_ids)}", "-o", SQUEUE_FORMAT])
    except SlurmCommandError as err:
        return {} if err.unknown_job else None
    return parse_squeue(text)


def expected_start(job_id: str) -> str | None:
    """When Slurm expects a waiting job to start (`squeue`'s `%S`: `2026-12-02T15:00:00` in the
    cluster's local time, or `N/A` when the scheduler has not planned it yet); None when
    Slurm gives no answer."""
    try:
        text = run_slurm(["squeue", "-h", f"--jobs={job_id}", "-o", "%S"])
    except SlurmCommandError:
        return None
    lines = text.split()
    return lines[0] if lines else None


def expand_nodelist(nodelist: str) -> list[str]:
    """`gpu[01-02],cpu1` -> gpu01, gpu02, cpu1 (by `scontrol show hostnames`); the list as it is
    when scontrol cannot say."""
    if not nodelist or nodelist in ("(null)", "None assigned"):
        return []
    if "[" not in nodelist:
        return nodelist.split(",")
    try:
        expanded = run_slurm(["scontrol", "show", "hostnames", nodelist]).split()
    except SlurmCommandError:
        return [nodelist]
    return expanded or [nodelist]


@dataclass
class SlurmState:
    state: str
    nodes: list[str]


def job_states(job_ids: Sequence[str]) -> dict[str, SlurmState] | None:
    """States of Slurm jobs: `squeue` for those waiting or running, `sacct` for those that
    ended, ENDED for those neither knows. None when Slurm cannot be asked from here. A job
    step (`12.3`, a job run in an allocation) is asked about as a step."""
    steps = [job_id for job_id in job_ids if _STEP_ID.match(job_id)]
    if steps:
        jobs = job_states([job_id for job_id in job_ids if job_id not in steps])
        stepped = step_states(steps)
        return None if jobs is None or stepped is None else {**jobs, **stepped}
    if not job_ids:
        return {}
    queued = _queued(job_ids)
    if queued is None:
        return None
    found = {
        job_id: SlurmState(entry.state, expand_nodelist(entry.nodelist))
        for job_id, entry in queued.items()
        if job_id in job_ids
    }
    missing = [job_id for job_id in job_ids if job_id not in found]
    if missing:
        try:
            ended = parse_sacct(
                run_slurm(["sacct", "-n", "-X", "-P", "-j", ",".join(missing), "-o", "JobID,State"])
            )
        except SlurmCommandError:
            ended = {}
        for job_id in missing:
            found[job_id] = SlurmState(ended.get(job_id, ENDED), [])
    return found


def step_states(step_ids: Sequence[str]) -> dict[str, SlurmState] | None:
    """States of job steps (`12.3`): RUNNING while `squeue --steps` lists them, then as
    `sacct` recorded their end (a step has no state of its own in squeue, nor a queue)."""
    try:
        text = run_slurm(["squeue", "-h", f"--steps={','.join(step_ids)}", "-o", "%i|%N"])
    except SlurmCommandError as err:
        if not err.unknown_job:
            return None
        text = ""
    found: dict[str, SlurmState] = {}
    for line in text.splitlines():
        step_id, _, nodelist = line.strip().partition("|")
        if step_id in step_ids:
            found[step_id] = SlurmState("RUNNING", expand_nodelist(nodelist))
    missing = [step_id for step_id in step_ids if step_id not in found]
    if missing:
        try:
            ended = parse_sacct(
                run_slurm(["sacct", "-n", "-P", "-j", ",".join(missing), "-o", "JobID,State"])
            )
        except SlurmCommandError:
            ended = {}
        for step_id in missing:
            found[step_id] = SlurmState(ended.get(step_id, ENDED), [])
    return found


def _queued(job_ids: Sequence[str]) -> dict[str, QueueEntry] | None:
    """squeue's entries; None when it cannot answer. Some versions refuse (or answer nothing
    for) a list that holds one forgotten id: then each id is asked alone."""
    entries = squeue(job_ids)
    if entries is None or entries or len(job_ids) == 1:
        return entries
    for job_id in job_ids:
        one = squeue([job_id])
        if one is None:
            return None
        entries.update(one)
    return entries


def scancel(job_ids: Sequence[str], signal: str | None = None) -> str | None:
    """Cancel the jobs, or with `signal` (`KILL`) send it to every process of theirs. None when
    done; else why not."""
    if not job_ids:
        return None
    options = [f"--signal={signal}", "--full"] if signal else []
    try:
        run_slurm(["scancel", *options, *job_ids])
    except SlurmCommandError as err:
        return str(err)
    return None


def partitions() -> list[str] | None:
    """The cluster's partition names; None when `sinfo` cannot say."""
    try:
        return sorted(set(run_slurm(["sinfo", "-h", "-o", "%R"]).split()))
    except SlurmCommandError:
        return None
