"""A job that Slurm starts a second time must not do its work twice.

Slurm runs a requeued batch job again from the top (`scontrol requeue`, preemption, a node that
failed, an administrator) and says so in `SLURM_RESTART_COUNT`. The run's jobs are not made to
run twice: a client would send its level again into the records its first run wrote, and a
service would come back, maybe on another node, after the driver read its address. Jobs are
submitted with `--no-requeue`, but a site or a recipe may allow requeueing anyway: so each job
function asks here first and refuses, saying why, before it touches anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

RESTART_COUNT = "SLURM_RESTART_COUNT"


class JobRestartError(RuntimeError):
    """The job is a restart of one that already ran; the message is for the user."""


def restart_count(environ: Mapping[str, str] = os.environ) -> int:
    """How many times Slurm restarted this job (0 outside Slurm and on a first run)."""
    text = environ.get(RESTART_COUNT, "").strip()
    return int(text) if text.isdigit() else 0


def refuse_restart(what: str, harm: str, environ: Mapping[str, str] = os.environ) -> None:
    """Raise when this job was restarted. `what` the job is, `harm` what running again would do
    (both for the message)."""
    count = restart_count(environ)
    if count == 0:
        return
    job = environ.get("SLURM_JOB_ID", "?")
    raise JobRestartError(
        f"{what} refuses to run again: Slurm restarted job {job} "
        f"({RESTART_COUNT}={count}: it was requeued after it had started) and {harm}; "
        "what its first run did stands (jobs are submitted with --no-requeue unless "
        "platform.slurm.additional sets requeue: true)"
    )
