"""`aifactory submit RECIPE [-- pytest args]`: a whole session as one Slurm batch job.

HPC users run batch work by submitting it and coming back to the result. The command sizes one
allocation from the recipe (`slurm_steps.allocation_needs`: nodes for the services, the clients
and monitoring; the CPUs, memory and GPUs the widest of them asks for; a time limit the session
cannot outrun, never above `platform.slurm.time_limit`), and its batch script runs
`pytest BENCHMARKS --recipe RECIPE --executor slurm --slurm-mode allocation` with this Python:
every service and client is then a step of that allocation, started at once on its own nodes.

The run folder is made, and the run recorded, before sbatch is called: `aifactory status` and
`aifactory logs RUN session` show the job while it waits in the queue and the session's output
once it runs; the session fills that folder (`RunDir.submitted`) as any other run's.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_aifactory.cli_common import Subcommands, add_session_arguments, print_error
from pytest_aifactory.cluster.base import JobResources
from pytest_aifactory.cluster.run_records import (
    SESSION_ROLE,
    JobRecord,
    RunRecord,
    index_run,
    utcnow,
    write_run,
)
from pytest_aifactory.cluster.rundir import SUBMITTED_RUN_ENV, RunDir, make_run_id
from pytest_aifactory.cluster.slurm import (
    SlurmError,
    effective_settings,
    sbatch_parameters,
    time_limit_minutes,
)
from pytest_aifactory.cluster.slurm_steps import allocation_needs
from pytest_aifactory.job_time import minutes, session_seconds
from pytest_aifactory.recipe import RecipeError, load_recipe

if TYPE_CHECKING:
    from pytest_aifactory.recipe import JobResourceKeys, Recipe, SlurmSettings

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
SESSION_JOB = "session"
"""The batch job's name in the run (`aifactory logs RUN session`)."""
STOP_NOTICE_S = 120
"""SIGTERM reaches the session this long before the time limit: it stops its steps and writes
what it measured and its report instead of being killed half way."""
SBATCH_TIMEOUT_S = 60.0
_SBATCH_ERROR = re.compile(r"sbatch: error: (.*)")
_MEMORY = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Submission:
    """What `aifactory submit` asks Slurm for, and the script it gives it."""

    run_root: Path
    nodes: int
    time_limit_min: int
    script: str
    notes: tuple[str, ...] = ()


def memory_megabytes(memory: str) -> int:
    """Slurm's `64G`, `512M` or `2000` (megabytes) as megabytes."""
    match = _MEMORY.match(memory.strip())
    if match is None:
        raise ValueError(f"not a memory size: {memory!r}")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2).upper()]
    return math.ceil(int(match.group(1)) * scale)


def allocation_resources(recipe: Recipe, nodes: int, time_limit_min: int) -> JobResources:
    """The allocation's own request: one task per node, holding as many CPUs (`--mincpus`,
    see `allocation_cpus`), as much memory and as many GPUs per node as the widest service or
    client asks for."""
    entries: list[JobResourceKeys] = [*recipe.services.values(), *recipe.clients.values()]
    memories = [e.memory for e in entries if e.memory]
    memory = max(memories, key=memory_megabytes) if memories else None
    return JobResources(
        nodes=nodes,
        tasks_per_node=1,
        gpus_per_node=max((e.gpu_count for e in entries), default=0),
        memory=memory,
        time_limit_min=time_limit_min,
    )


def allocation_cpus(recipe: Recipe) -> int:
    """CPUs on each node: enough for the step that asks for most on one node (a client's
    processes times their CPUs each, a service's CPUs), so that srun can start every step."""
    wanted = [1]
    wanted += [s.cpus_per_task or 1 for s in recipe.services.values()]
    wanted += [c.processes_per_node * (c.cpus_per_task or 1) for c in recipe.clients.values()]
    return max(wanted)


def ignored_keys(recipe: Recipe) -> list[str]:
    """Recipe keys that choose where a job goes, which the allocation decides instead."""
    found = []
    for section, entries in (("services", recipe.services), ("clients", recipe.clients)):
        for name, entry in entries.items():
            for key in ("partition", "constraint", "exclusive"):
                if getattr(entry, key, None):
                    found.append(f"{section}.{name}.{key}")
    if recipe.monitor.partition:
        found.append("monitor.partition")
    return found


def session_command(
    recipe_path: Path, benchmarks: Path, report_dir: Path, pytest_args: list[str]
) -> list[str]:
    """The session the batch job runs: this Python's pytest, every job a step."""
    return [
        sys.executable,
        "-m",
        "pytest",
        str(benchmarks),
        "--recipe",
        str(recipe_path),
        "--executor",
        "slurm",
        "--slurm-mode",
        "allocation",
        "--report-dir",
        str(report_dir),
        *pytest_args,
    ]


def plan_submission(
    recipe: Recipe,
    settings: SlurmSettings,
    run_root: Path,
    command: list[str],
    nodes: int | None = None,
) -> Submission:
    """The batch script of a session of `recipe` in the run folder `run_root`."""
    # deferred: submitit (and the asyncio it loads) only to write the script
    from submitit.slurm.slurm import _make_sbatch_string

    needs = allocation_needs(recipe)
    count = nodes or needs.preferred_nodes or 1
    if count < needs.exclusive_nodes:
        raise SlurmError(
            f"--nodes {count} is too few: the recipe needs {needs.exclusive_nodes} to keep "
            f"services and clients apart ({needs.describe()})"
        )
    ceiling = time_limit_minutes(settings.time_limit)
    limit = min(ceiling, minutes(session_seconds(recipe, 0.0)))
    resources = allocation_resources(recipe, count, limit)
    folder = run_root / "jobs" / SESSION_JOB
    params: dict[str, Any] = sbatch_parameters(
        settings, resources, f"aif-{run_root.name}-{SESSION_JOB}"
    )
    additional = dict(params.pop("additional_parameters", {}))
    # the recipe's own `additional` decides where it names these
    additional.setdefault("mincpus", str(allocation_cpus(recipe)))
    # to the batch shell only (`B:`), in place of submitit's USR2 to every step
    additional.setdefault("signal", f"B:TERM@{min(STOP_NOTICE_S, limit * 60 // 4)}")
    lines = [
        f"cd {shlex.quote(os.getcwd())}",
        f"export {SUBMITTED_RUN_ENV}={shlex.quote(str(run_root))}",
        # exec: the session is the batch shell, so the time limit's SIGTERM reaches it
        f"exec {shlex.join(command)}",
    ]
    script = _make_sbatch_string(
        command="\n".join(lines),
        folder=folder,
        use_srun=False,
        additional_parameters=additional,
        **params,
    )
    ignored = ignored_keys(recipe)
    notes = [
        "not used in allocation mode (the allocation decides where every step runs): "
        + ", ".join(ignored)
    ]
    return Submission(run_root, count, limit, script, tuple(notes if ignored else []))


def sbatch(script: Path) -> str:
    """The job id sbatch gave the script; `SlurmError` with sbatch's own words otherwise."""
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", str(script)],
            capture_output=True,
            text=True,
            timeout=SBATCH_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise SlurmError(f"sbatch failed: {err}") from None
    if done.returncode != 0:
        said = [m.group(1) for m in _SBATCH_ERROR.finditer(done.stderr)]
        raise SlurmError(f"sbatch refused the session: {'; '.join(said) or done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def record_submission(run: RunDir, recipe: Recipe, job_id: str) -> RunRecord:
    """The run as `aifactory status` shows it before the session starts: its batch job."""
    folder = run.jobs_dir / SESSION_JOB
    now = utcnow()
    record = RunRecord(
        run_id=run.run_id,
        run_dir=str(run.root.resolve()),
        recipe=recipe.name,
        recipe_path=str(Path(recipe.path).resolve()) if recipe.path else None,
        executor="slurm",
        driver_host="",
        started_at=now,
        status="submitted",
        jobs=[
            JobRecord(
                name=SESSION_JOB,
                role=SESSION_ROLE,
                job_id=job_id,
                executor="slurm",
                state="PENDING",
                stdout=str(folder / f"{job_id}_0_log.out"),
                stderr=str(folder / f"{job_id}_0_log.err"),
                submitted_at=now,
            )
        ],
    )
    write_run(record)
    index_run(record)
    return record


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.recipe)
    if not path.is_file():
        print_error(f"{args.recipe}: no such recipe file")
        return EXIT_USAGE
    try:
        recipe = load_recipe(path)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    named = args.benchmarks or "benchmarks"
    benchmarks = Path(named)
    if not benchmarks.exists():
        print_error(f"{named}: no such benchmark folder or file (--benchmarks)")
        return EXIT_USAGE
    if not recipe.clients:
        print_error(f"{args.recipe}: the recipe has no clients: nothing to run")
        return EXIT_INVALID
    overrides = {
        "partition": args.partition,
        "account": args.account,
        "qos": args.qos,
        "time_limit": args.time,
    }
    report_dir = Path(args.report_dir or recipe.report.dir).absolute()
    try:
        settings = effective_settings(recipe, overrides)
        run_root = report_dir / make_run_id(recipe.name)
        command = session_command(path.absolute(), benchmarks.absolute(), report_dir, args.pytest)
        plan = plan_submission(recipe, settings, run_root, command, args.nodes)
        if args.dry_run:
            sys.stdout.write(plan.script)
            return EXIT_OK
        if shutil.which("sbatch") is None:
            raise SlurmError("Slurm's sbatch is not on PATH: run on a Slurm login node")
        run = RunDir.create(report_dir, run_root.name)
        if run.root != run_root:  # a run of the same second took the name
            plan = plan_submission(recipe, settings, run.root, command, args.nodes)
        script = run.jobs_dir / SESSION_JOB / "submission.sh"
        script.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        script.write_text(plan.script)
        job_id = sbatch(script)
    except SlurmError as err:
        print_error(str(err))
        return EXIT_REFUSED
    record_submission(run, recipe, job_id)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    print(job_id)
    print(
        f"run {run.run_id} ({run.root}): {plan.nodes} node(s), time limit {plan.time_limit_min} "
        f"min; follow it with `aifactory status {run.run_id}` and "
        f"`aifactory logs {run.run_id} {SESSION_JOB} -f`",
        file=sys.stderr,
    )
    return EXIT_OK


def register_submit(subcommands: Subcommands) -> None:
    submit = subcommands.add_parser(
        "submit",
        help="run a recipe's session as one Slurm batch job (every service and client a step)",
        description="Submit `pytest BENCHMARKS --recipe RECIPE` as one Slurm batch job sized "
        "from the recipe; arguments after `--` go to pytest. Prints the job id.",
        usage="aifactory submit [OPTIONS] RECIPE [-- PYTEST_ARGS...]",
    )
    add_session_arguments(submit, "the benchmark suite pytest runs (default: benchmarks)")
    submit.add_argument(
        "--nodes", type=int, metavar="N", help="nodes to ask for (default: from the recipe)"
    )
    for option, key in (("--partition", "partition"), ("--account", "account"), ("--qos", "qos")):
        submit.add_argument(option, metavar="VALUE", help=f"overrides platform.slurm.{key}")
    submit.add_argument(
        "--time",
        metavar="LIMIT",
        help="the session's longest: minutes, HH:MM:SS or D-HH:MM:SS (overrides "
        "platform.slurm.time_limit)",
    )
    submit.add_argument(
        "--dry-run", action="store_true", help="print the batch script instead of submitting it"
    )
    submit.set_defaults(func=cmd_submit)
