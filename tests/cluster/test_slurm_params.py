"""What each Slurm job asks for, checked without a cluster: the sbatch script submitit writes
from a recipe's resource keys, each job's time limit, `--no-requeue`, the guard of a restarted
job, the GPUs a server is given, and what a job that never started says.

The sbatch scripts are submitit's own (`_make_sbatch_string`, what `SlurmExecutor` submits);
the jobs that run here run through the local executor, as on a laptop. tests/slurm/
test_slurm_resources.py checks the same on the dev cluster.
"""

from __future__ import annotations

import datetime
import stat
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from pytest_aifactory.cases import LoadCase, cases_for
from pytest_aifactory.cluster.base import JobResources, SubmitError, gres_gpus
from pytest_aifactory.cluster.local import LocalJobExecutor, local_gpus
from pytest_aifactory.cluster.restart import JobRestartError, refuse_restart, restart_count
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.cluster.slurm import (
    SlurmError,
    check_partitions,
    describe_start,
    effective_settings,
    explain_reason,
    for_cluster,
    pending_message,
    requeued_message,
    run_partitions,
    sbatch_parameters,
)
from pytest_aifactory.cluster.slurm_commands import expected_start
from pytest_aifactory.job_resources import client_resources, service_resources
from pytest_aifactory.job_time import (
    SESSION_SLACK_S,
    START_SLACK_S,
    client_job_minutes,
    level_seconds,
    minutes,
    planned_levels,
    session_seconds,
)
from pytest_aifactory.loadgen.runner import run_load_task
from pytest_aifactory.recipe import Recipe, RecipeError, load_recipe
from pytest_aifactory.services.launch import (
    ServiceLaunch,
    granted_gpus,
    run_service,
    server_environment,
)
from pytest_aifactory.testing.load_specs import load_spec
from tests.helpers import wait_for


def recipe_of(document: dict[str, Any]) -> Recipe:
    return Recipe.model_validate({"name": "params", **document})


def sbatch_lines(
    tmp_path: Path, recipe: Recipe | None, resources: JobResources, **slurm: Any
) -> list[str]:
    """The `#SBATCH` lines submitit writes for one job of `recipe` (with `slurm` settings)."""
    settings = effective_settings(recipe).model_copy(update=slurm)
    params = sbatch_parameters(settings, resources, "aif-run-job")
    script = _make_sbatch_string(command="true", folder=tmp_path, **params)
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def launch_of(name: str, heartbeat: bool = True) -> ServiceLaunch:
    return ServiceLaunch(
        name=name,
        argv=["srv"],
        rendezvous_path="/r.json",
        heartbeat_path="/hb" if heartbeat else None,
    )


def only_case(recipe: Recipe) -> LoadCase:
    (case,) = cases_for(recipe)
    return case


COMMAND = {"kind": "command", "command": "srv --port {port}"}


# -- resources ----------------------------------------------------------------------------------


def test_a_services_resource_keys_reach_its_sbatch_script(tmp_path: Path) -> None:
    recipe = recipe_of(
        {
            "platform": {"slurm": {"partition": "batch", "time_limit": "02:00:00"}},
            "services": {
                "llm": {
                    **COMMAND,
                    "nodes": 2,
                    "partition": "gpu",
                    "cpus_per_task": 8,
                    "memory": "64G",
                    "gpus_per_node": 4,
                    "constraint": "a100&ib",
                    "exclusive": True,
                }
            },
        }
    )
    (launch,), resources = for_cluster(
        recipe, (launch_of("llm"),), service_resources(recipe.services["llm"])
    )
    lines = sbatch_lines(tmp_path, recipe, resources)
    for expected in (
        "#SBATCH --partition=gpu",  # the service's own, not the run's
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64G",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --constraint='a100&ib'",
        "#SBATCH --exclusive",
        "#SBATCH --no-requeue",
    ):
        assert expected in lines, lines
    assert not [line for line in lines if "--gres" in line]
    assert launch.host == "auto"


def test_a_clients_resource_keys_and_time_limit_reach_its_sbatch_script(tmp_path: Path) -> None:
    recipe = recipe_of(
        {
            "clients": {
                "io": {
                    "kind": "fio",
                    "nodes": 2,
                    "processes_per_node": 3,
                    "partition": "cpu",
                    "cpus_per_task": 2,
                    "memory": "4096",
                    "gres": "gpu:a100:1",
                    "constraint": "ib",
                    "exclusive": True,
                    "fio": {"runtime_s": 100, "ramp_time_s": 20},
                }
            },
        }
    )
    client = recipe.clients["io"]
    resources = client_resources(client, [only_case(recipe)])
    assert resources.time_limit_min == minutes(START_SLACK_S + 120) == 7
    lines = sbatch_lines(tmp_path, recipe, resources)
    for expected in (
        "#SBATCH --partition=cpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=3",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4096",
        "#SBATCH --gres=gpu:a100:1",
        "#SBATCH --constraint=ib",
        "#SBATCH --exclusive",
        "#SBATCH --time=7",
        "#SBATCH --no-requeue",
    ):
        assert expected in lines, lines
    assert not [line for line in lines if "--gpus-per-node" in line]
    # never above the recipe's limit
    assert "#SBATCH --time=5" in sbatch_lines(tmp_path, recipe, resources, time_limit="5")


def test_without_resource_keys_a_job_asks_only_for_its_nodes_and_time(tmp_path: Path) -> None:
    recipe = recipe_of({"services": {"web": COMMAND}})
    _, resources = for_cluster(
        recipe, (launch_of("web"),), service_resources(recipe.services["web"])
    )
    flags = {line.split("=")[0] for line in sbatch_lines(tmp_path, recipe, resources)}
    assert flags == {
        "#SBATCH --job-name",
        "#SBATCH --time",
        "#SBATCH --nodes",
        "#SBATCH --ntasks-per-node",
        "#SBATCH --no-requeue",
        "#SBATCH --signal",  # submitit's own: its preemption signal
        "#SBATCH --output",
        "#SBATCH --error",
        "#SBATCH --open-mode",
        "#SBATCH --wckey",
    }


@pytest.mark.parametrize(
    ("additional", "present", "absent"),
    [
        ({}, ["#SBATCH --no-requeue"], ["#SBATCH --requeue"]),
        ({"requeue": False}, ["#SBATCH --no-requeue"], ["#SBATCH --requeue"]),
        ({"requeue": True}, ["#SBATCH --requeue"], ["#SBATCH --no-requeue"]),
        ({"no-requeue": False}, [], ["#SBATCH --requeue", "#SBATCH --no-requeue"]),
    ],
)
def test_requeueing_is_off_unless_the_recipe_turns_it_on(
    tmp_path: Path, additional: dict[str, Any], present: list[str], absent: list[str]
) -> None:
    recipe = recipe_of({"platform": {"slurm": {"additional": additional}}})
    lines = sbatch_lines(tmp_path, recipe, JobResources())
    assert all(line in lines for line in present), lines
    assert not any(line in lines for line in absent), lines


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("gpu:4", 4),
        ("gpu:a100:4", 4),
        ("gpu", 1),
        ("gpu:a100", 1),
        ("nvme:1", 0),
        ("nvme:1,gpu:2", 2),
        ("gres/gpu:3", 3),
    ],
)
def test_the_gpus_a_gres_asks_for(gres: str, gpus: int) -> None:
    assert gres_gpus(gres) == gpus
    assert JobResources(gres=gres).gpus == gpus
    service = recipe_of({"services": {"s": {**COMMAND, "gres": gres}}}).services["s"]
    assert service.gpu_count == gpus


def test_a_service_with_a_gres_of_gpus_gets_them_in_its_container() -> None:
    recipe = recipe_of(
        {"services": {"s": {**COMMAND, "gres": "gpu:2", "container": {"image": "/x.sif"}}}}
    )
    (launch,), _ = for_cluster(recipe, (launch_of("s"),), JobResources())
    assert launch.gpus


# -- recipe validation --------------------------------------------------------------------------


def problems(tmp_path: Path, text: str) -> list[tuple[int | None, str, str]]:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={})
    return [(p.line, p.key, p.message) for p in caught.value.problems]


def test_gpus_per_node_and_gres_together_are_refused_naming_the_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        name: t
        services:
          llm: {kind: command, command: srv, gpus_per_node: 2, gres: "gpu:2"}
        clients:
          io: {kind: fio, gpus_per_node: 1, gres: gpu}
        """,
    )
    assert [(line, key) for line, key, _ in found] == [
        (3, "services.llm.gres"),
        (5, "clients.io.gres"),
    ]
    assert found[0][2] == (
        "give gpus_per_node (2) or gres ('gpu:2'), not both: both ask Slurm for GPUs"
    )


def test_bad_resource_values_are_refused_naming_the_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        name: t
        clients:
          io:
            kind: fio
            partition: "cpu nodes"
            memory: lots
            gres: "gpu 2"
            constraint: "a100 & ib"
            cpus_per_task: 0
            exclusive: sometimes
        """,
    )
    keys = {key: message for _, key, message in found}
    assert sorted(keys) == [
        "clients.io.constraint",
        "clients.io.cpus_per_task",
        "clients.io.exclusive",
        "clients.io.gres",
        "clients.io.memory",
        "clients.io.partition",
    ]
    assert "comma-separated list" in keys["clients.io.partition"]
    assert "e.g. gpu:4 or gpu:a100:4" in keys["clients.io.gres"]
    assert "64G" in keys["clients.io.memory"]


def test_every_partition_of_the_run_is_checked_naming_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    sinfo = folder / "sinfo"
    sinfo.write_text("#!/bin/sh\necho debug; echo cpu; echo gpu\n")
    sinfo.chmod(sinfo.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(folder))
    recipe = recipe_of(
        {
            "services": {"llm": {**COMMAND, "partition": "gpu,debug"}},
            "clients": {"io": {"kind": "fio", "partition": "cpux"}},
            "monitor": {"partition": "debug"},
        }
    )
    named = run_partitions(recipe, effective_settings(recipe, {"partition": "debug"}))
    assert named == {
        "platform.slurm.partition": "debug",
        "services.llm.partition": "gpu,debug",
        "clients.io.partition": "cpux",
        "monitor.partition": "debug",
    }
    with pytest.raises(SlurmError) as caught:
        check_partitions(named)
    assert str(caught.value) == (
        "clients.io.partition: Slurm has no partition 'cpux' (partitions: cpu, debug, gpu)"
    )
    check_partitions({"services.llm.partition": "gpu,debug"})


# -- time limits --------------------------------------------------------------------------------

TIMEOUT = 10.0


@pytest.mark.parametrize(
    ("client", "load_s"),
    [
        # every round of 8 in flight within one timeout: 64 / 8 rounds
        ({"load": {"levels": [8], "requests": 64}}, 8 * TIMEOUT),
        # a duration ends it sooner: then the last requests' timeout
        ({"load": {"levels": [8], "requests": 64, "duration_s": 30}}, 30 + TIMEOUT),
        ({"load": {"levels": [1], "duration_s": 30}}, 30 + TIMEOUT),
        # warmup: 4 requests 2 at a time
        ({"load": {"levels": [2], "requests": 2, "warmup_requests": 4}}, 2 * TIMEOUT + TIMEOUT),
        # the process with the smallest share of the level and the largest of the requests:
        # concurrency 3 over 2 processes is 2 + 1, 64 requests 32 each
        (
            {"processes_per_node": 2, "load": {"levels": [3], "requests": 64}},
            32 * TIMEOUT,
        ),
        # rate: the arrivals' span, then one timeout
        (
            {"load": {"mode": "rate", "arrival": "constant", "levels": [10], "requests": 100}},
            100 / 10 + TIMEOUT,
        ),
        # random arrivals may end later: six standard deviations of the last one's time
        (
            {"load": {"mode": "rate", "levels": [10], "requests": 100}},
            (100 + 6 * 10) / 10 + TIMEOUT,
        ),
        (
            {
                "load": {
                    "mode": "rate",
                    "arrival": "gamma",
                    "burstiness": 0.25,
                    "levels": [10],
                    "requests": 100,
                }
            },
            (100 + 6 * 20) / 10 + TIMEOUT,
        ),
        # at most 2 in flight: 50 rounds of 2, each within a timeout
        (
            {
                "load": {
                    "mode": "rate",
                    "arrival": "constant",
                    "levels": [10],
                    "requests": 100,
                    "max_concurrency": 2,
                }
            },
            50 * TIMEOUT + TIMEOUT,
        ),
    ],
)
def test_a_levels_bound_from_the_load_keys(
    make_recipe: Callable[..., Recipe], client: dict[str, Any], load_s: float
) -> None:
    load = {"timeout_s": TIMEOUT, **client.pop("load")}
    recipe = make_recipe(client={**client, "load": load})
    case = cases_for(recipe)[0]
    seconds = level_seconds(recipe.clients["chat"], case.mode, case.level)
    assert seconds == pytest.approx(START_SLACK_S + load_s)


@pytest.mark.parametrize(
    ("client", "load_s"),
    [
        # fio keeps its own clock: the load keys do not apply
        ({"kind": "fio", "fio": {"runtime_s": 60, "ramp_time_s": 5}}, 65.0),
        # a vector collection is loaded first, within load_timeout_s
        (
            {
                "kind": "vectordb",
                "vectordb": {"engine": "faiss", "load_timeout_s": 600},
                "load": {"levels": [1], "duration_s": 20},
            },
            600 + 20 + 300,
        ),
        # pgbench's tables are filled first
        (
            {
                "kind": "sql",
                "service": "db",
                "sql": {"scale": 50},
                "load": {"levels": [1], "duration_s": 20},
            },
            100 + 20 + 300,
        ),
    ],
)
def test_kinds_with_a_clock_of_their_own_set_their_levels_bound(
    client: dict[str, Any], load_s: float
) -> None:
    recipe = recipe_of(
        {
            "services": {"db": {"kind": "postgres"}},
            "clients": {"c": client},
        }
    )
    case = only_case(recipe)
    seconds = level_seconds(recipe.clients["c"], case.mode, case.level)
    assert seconds == pytest.approx(START_SLACK_S + load_s)


def test_a_client_job_of_several_levels_asks_for_their_sum_in_whole_minutes(
    make_recipe: Callable[..., Recipe],
) -> None:
    recipe = make_recipe(client={"load": {"levels": [1, 2], "duration_s": 50, "timeout_s": 10}})
    client = recipe.clients["chat"]
    one, two = cases_for(recipe)
    assert client_job_minutes(client, [one]) == 6  # 300 + 60 s
    assert client_job_minutes(client, [one, two]) == 12  # 720 s


def test_a_sweep_counts_the_most_levels_it_can_take_at_its_lowest(
    make_recipe: Callable[..., Recipe],
) -> None:
    recipe = make_recipe(
        client={"load": {"mode": "sweep", "sweep": {"start": 1, "max": 64}, "duration_s": 5}},
        slo={"chat": {"error_rate": {"max": 0.0}}},
    )
    levels = planned_levels(recipe.clients["chat"])
    # up: 1, 2, 4 ... 64 (7 levels); bisecting a gap of at most 64 down to 1 (7 more); two
    # more loads for each bisected level and the capacity, to confirm them (8 x 2)
    assert levels == [("concurrency", 1.0)] * 30
    once = make_recipe(
        client={
            "load": {
                "mode": "sweep",
                "sweep": {"start": 1, "max": 64, "boundary_repeats": 1},
                "duration_s": 5,
            }
        },
        slo={"chat": {"error_rate": {"max": 0.0}}},
    )
    assert len(planned_levels(once.clients["chat"])) == 14


def test_a_service_job_lasts_the_session_and_a_kept_one_the_recipes_limit(
    tmp_path: Path,
) -> None:
    recipe = recipe_of(
        {
            "platform": {"slurm": {"time_limit": "1-00:00:00"}},
            "services": {"web": {**COMMAND, "health_timeout_s": 120}},
            "clients": {
                "c": {
                    "kind": "openai",
                    "service": "web",
                    "load": {"levels": [1, 4], "duration_s": 30, "timeout_s": 10},
                }
            },
        }
    )
    expected = SESSION_SLACK_S + 120 + 2 * (START_SLACK_S + 40 + 60)
    assert session_seconds(recipe, pending_timeout_s=60) == expected
    _, resources = for_cluster(recipe, (launch_of("web"),), JobResources(), 60)
    assert resources.time_limit_min == minutes(expected) == 26
    assert "#SBATCH --time=26" in sbatch_lines(tmp_path, recipe, resources)
    # kept for later sessions: no heartbeat to follow, the recipe's whole limit
    _, kept = for_cluster(recipe, (launch_of("web", heartbeat=False),), JobResources(), 60)
    assert kept.time_limit_min is None
    assert "#SBATCH --time=1440" in sbatch_lines(tmp_path, recipe, kept)
    # other jobs' orders are left as they are
    assert for_cluster(recipe, ("not a launch",), JobResources())[1] == JobResources()


# -- a job that never started, or was requeued --------------------------------------------------

NOW = datetime.datetime(2026, 12, 2, 14, 18, 0)


@pytest.mark.parametrize(
    ("start", "text"),
    [
        ("2026-12-02T15:00:00", "2026-12-02T15:00:00 (in 42 min)"),
        ("2026-12-03T16:20:00", "2026-12-03T16:20:00 (in 1 d 2 h 2 min)"),
        ("2026-12-02T17:18:00", "2026-12-02T17:18:00 (in 3 h)"),
        ("2026-12-02T14:18:30", "2026-12-02T14:18:30 (any moment now)"),
        ("2026-12-02T14:00:00", "2026-12-02T14:00:00 (any moment now)"),
        ("N/A", "unknown (Slurm has not planned it)"),
        (None, "unknown (Slurm has not planned it)"),
    ],
)
def test_the_estimated_start_as_squeue_gives_it(start: str | None, text: str) -> None:
    assert describe_start(start, NOW) == text


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("Resources", "Resources (the nodes, CPUs, memory or GPUs it asks for are in use)"),
        ("BeginTime", "BeginTime (its start time has not come)"),
        (
            "QOSMaxJobsPerUserLimit",
            "QOSMaxJobsPerUserLimit (a limit of its quality of service is reached)",
        ),
        ("AssocGrpGRES", "AssocGrpGRES (a limit of its account is reached)"),
        ("Whatever", "Whatever"),
        ("", "none given"),
    ],
)
def test_slurms_reasons_are_explained(reason: str, text: str) -> None:
    assert explain_reason(reason) == text


def test_the_pending_message_says_why_when_and_what_to_do() -> None:
    assert pending_message("123", 300.4, "Resources", "2026-12-02T15:00:00", NOW) == (
        "job 123 never started: still queued after 300 s (platform.slurm.pending_timeout_s), "
        "Slurm's reason: Resources (the nodes, CPUs, memory or GPUs it asks for are in use), "
        "estimated start: 2026-12-02T15:00:00 (in 42 min); cancelled. Raise pending_timeout_s "
        "(or --slurm-pending-timeout) to wait longer, or ask for less (nodes, GPUs, memory, "
        "time) or another partition"
    )
    requeued = requeued_message("124", "BeginTime")
    assert requeued.startswith("job 124 was requeued by Slurm after it had started")
    assert "requeue: true" in requeued


def test_the_estimated_start_is_asked_of_squeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    assert expected_start("123") is None  # no squeue here
    squeue = folder / "squeue"
    log = folder / "squeue.args"
    squeue.write_text(f'#!/bin/sh\necho "$*" > {log}\necho 2026-12-02T15:00:00\n')
    squeue.chmod(squeue.stat().st_mode | stat.S_IXUSR)
    assert expected_start("123") == "2026-12-02T15:00:00"
    assert log.read_text().split() == ["-h", "--jobs=123", "-o", "%S"]
    squeue.write_text("#!/bin/sh\necho N/A\n")
    assert expected_start("123") == "N/A"


# -- a job Slurm restarted ----------------------------------------------------------------------


def test_a_restart_is_read_from_slurms_environment() -> None:
    assert restart_count({}) == 0
    assert restart_count({"SLURM_RESTART_COUNT": "0"}) == 0
    assert restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    refuse_restart("job", "harm", {"SLURM_RESTART_COUNT": "0"})
    with pytest.raises(JobRestartError) as caught:
        refuse_restart(
            "client job", "it would repeat", {"SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "77"}
        )
    assert str(caught.value).startswith(
        "client job refuses to run again: Slurm restarted job 77 (SLURM_RESTART_COUNT=1: it was "
        "requeued after it had started) and it would repeat"
    )


def test_a_restarted_client_or_service_job_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    spec = load_spec(tmp_path, base_url="http://127.0.0.1:9", requests=3)
    with pytest.raises(JobRestartError, match="client job refuses to run again"):
        run_load_task([spec])
    assert not Path(spec.records_path).exists()
    assert not Path(spec.progress_path).exists()
    launch = ServiceLaunch(name="web", argv=["true"], rendezvous_path=str(tmp_path / "web.json"))
    with pytest.raises(JobRestartError, match="service 'web' refuses to run again"):
        run_service(launch)
    assert not (tmp_path / "web.json").exists()


# -- GPUs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "gpus"),
    [("0,1", 2), ("3", 1), ("GPU-1a,GPU-2b,GPU-3c", 3), ("", None), ("NoDevFiles", None)],
)
def test_the_gpus_granted_are_counted_from_cuda_visible_devices(
    visible: str, gpus: int | None
) -> None:
    assert granted_gpus({"CUDA_VISIBLE_DEVICES": visible}) == gpus
    assert granted_gpus({}) is None


def test_slurms_cuda_visible_devices_is_not_overridden(capsys: pytest.CaptureFixture[str]) -> None:
    recipe_env = {"CUDA_VISIBLE_DEVICES": "0", "X": "1"}
    in_job = {"SLURM_JOB_ID": "5", "CUDA_VISIBLE_DEVICES": "2,3"}
    env = server_environment(recipe_env, in_job)
    assert (env["CUDA_VISIBLE_DEVICES"], env["X"]) == ("2,3", "1")
    assert "CUDA_VISIBLE_DEVICES=0 from the recipe ignored" in capsys.readouterr().err
    # the same value, or none from Slurm, or no Slurm job: the recipe's stands, silently
    assert server_environment({"CUDA_VISIBLE_DEVICES": "2,3"}, in_job)["CUDA_VISIBLE_DEVICES"] == (
        "2,3"
    )
    assert server_environment(recipe_env, {"SLURM_JOB_ID": "5"})["CUDA_VISIBLE_DEVICES"] == "0"
    outside = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert server_environment(recipe_env, outside)["CUDA_VISIBLE_DEVICES"] == "0"
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("visible", "asked", "seen"),
    [
        ("4,5,6", 3, "3 4,5,6"),  # the driver's devices, shared out
        (None, 2, "2 0,1"),  # the first ones of the machine
        ("4,5,6", 0, "2 none"),  # none for a job that asked for none: `{gpus}` as planned
    ],
)
def test_a_server_is_told_the_gpus_its_job_was_granted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, visible: str | None, asked: int, seen: str
) -> None:
    """`{gpus}`: the devices the job sees, else the number the service asked for."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    out = tmp_path / "gpus.txt"
    server = f"{sys.executable} -m http.server {{port}} --bind {{host}}"
    script = f'echo {{gpus}} "${{CUDA_VISIBLE_DEVICES:-none}}" > {out}; exec {server}'
    run = RunDir.create(tmp_path / "reports", make_run_id("gpus"))
    executor = LocalJobExecutor(run)
    launch = ServiceLaunch(
        name="web",
        argv=["sh", "-c", script],
        rendezvous_path=str(run.rendezvous_path("web")),
        gpus_per_node=2,
    )
    try:
        executor.submit(
            run_service,
            launch,
            name="service-web",
            role="service",
            resources=JobResources(gpus_per_node=asked),
        )
        wait_for(lambda: out.exists() and out.read_text().strip(), 30, "the server's line")
    finally:
        executor.cancel_all()
    assert out.read_text().strip() == seen


def test_a_local_job_cannot_have_more_gpus_than_the_driver_was_given() -> None:
    assert local_gpus(0, {"CUDA_VISIBLE_DEVICES": ""}) == {}
    assert local_gpus(2, {}) == {"gpus_per_node": 2}
    assert local_gpus(1, {"CUDA_VISIBLE_DEVICES": "3,1"}) == {
        "gpus_per_node": 1,
        "visible_gpus": (3, 1),
    }
    with pytest.raises(
        SubmitError, match=r"2 GPU\(s\) per node asked for, but .* gives this machine 1"
    ):
        local_gpus(2, {"CUDA_VISIBLE_DEVICES": "0"})
    with pytest.raises(SubmitError, match="need GPU indices"):
        local_gpus(1, {"CUDA_VISIBLE_DEVICES": "GPU-1a"})
