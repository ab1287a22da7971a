"""How long each job may run: the time limit a client's or a service's Slurm job asks for.

On a busy queue a short job starts sooner (the scheduler fits it into gaps), so no job asks for
the recipe's whole `platform.slurm.time_limit` when less will do. A limit is an upper bound of
what the job can take, never a guess of what it will: a limit too short kills a measurement half
way, one too long only waits longer. Every part is therefore bounded by what the recipe allows,
not by how fast the server is expected to be:

- a client job, per level: start-up (`START_SLACK_S`: the interpreter, the dataset, connections,
  the start barrier), the warmup, the measured load, and the drain (a request still in flight
  when sending stops may take its whole `timeout_s`). Kinds with timing of their own adjust it
  (`KindOptions.level_seconds`: fio's runtime, a vector collection's loading).
- a service job: the whole session, every service's start (`health_timeout_s`), every level of
  every client with the time its job may wait in the queue (`pending_timeout_s`), and
  `SESSION_SLACK_S` for monitoring and the driver's own work.

The Slurm executor never asks for more than `platform.slurm.time_limit`, which stays the limit
of what has no bound of its own (a service kept for later sessions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.cases import split_evenly
from pytest_aifactory.loadgen.kind import KindOptions
from pytest_aifactory.loadgen.llm_datasets.trace_rows import load_trace, replay_span_s

if TYPE_CHECKING:
    from pytest_aifactory.cases import LoadCase
    from pytest_aifactory.recipe import Client, Recipe

START_SLACK_S = 300.0
"""A client process's start before its first request: Python and its imports on a cold node,
datasets and prompts, connections, the start barrier."""
SESSION_SLACK_S = 600.0
"""Beyond the services and the levels, a session starts monitoring, waits for jobs to end
between levels and saves its results."""
ARRIVAL_SPREAD = 6.0
"""Random arrivals (Poisson, gamma) end later than `requests / rate` by chance: the bound
allows this many standard deviations of the last arrival's time."""


def minutes(seconds: float) -> int:
    """Whole minutes, rounded up (Slurm's time limits count minutes), at least one."""
    return max(1, math.ceil(seconds / 60))


def level_seconds(client: Client, mode: str, level: float) -> float:
    """The longest one level of `client` may run in its job: each of its repeats' start-up,
    warmup, load and drain."""
    return client.load.repeats * _load_seconds(client, mode, level)


def _load_seconds(client: Client, mode: str, level: float) -> float:
    """The longest one load of a level may run.

    The load is shared among the client's processes as `cases.process_specs` shares it; the
    bound is that of the process with the most to do."""
    if mode == "replay":
        return START_SLACK_S + _replay_seconds(client, level)
    load = client.load
    slots = client.nodes * client.processes_per_node
    if mode == "concurrency":
        active = max(1, min(slots, int(level), load.requests or slots))
        per_level: float = max(1, math.floor(level / active))  # the smallest share of it
    else:
        active = max(1, min(slots, load.requests or slots))
        per_level = level / active
    cap = None
    if load.max_concurrency:
        cap = max(1, min(split_evenly(load.max_concurrency, active)))
    bounds = []
    if load.duration_s is not None:
        bounds.append(load.duration_s + load.timeout_s)
    if load.requests is not None:
        requests = math.ceil(load.requests / active)  # the largest share of the requests
        bounds.append(_requests_seconds(client, mode, per_level, requests, cap))
    load_s = _warmup_seconds(client, per_level, active, cap) + min(bounds)
    section = getattr(client, client.kind, None)
    if isinstance(section, KindOptions):
        load_s = section.level_seconds(load_s)
    return START_SLACK_S + load_s


def _requests_seconds(
    client: Client, mode: str, level: float, requests: int, cap: int | None
) -> float:
    """How long one process's `requests` may take at its share `level` of the load."""
    load = client.load
    if mode == "concurrency":
        # every round of `level` requests in flight ends within one request timeout
        return math.ceil(requests / int(level)) * load.timeout_s
    shape = {"poisson": 1.0, "gamma": load.burstiness}.get(load.arrival)
    spread = ARRIVAL_SPREAD * math.sqrt(requests / shape) if shape else 0.0
    sending = (requests + spread) / level
    if cap is not None:  # requests wait for one of `cap` slots, each free within a timeout
        sending = max(sending, math.ceil(requests / cap) * load.timeout_s)
    return sending + load.timeout_s


def _replay_seconds(client: Client, speed: float) -> float:
    """A replay sends for its part of the trace's span at its speed (`duration_s` at most),
    each process its warmup first, and the last request may take its whole timeout. A
    `max_concurrency` cap can hold sends back: then every round of the cap takes a timeout."""
    load = client.load
    dataset = client.dataset
    try:
        span = replay_span_s(Path(dataset.path or ""), dataset.format, load.requests) / speed
        entries = len(load_trace(Path(dataset.path or ""), dataset.format))
    except (OSError, ValueError):  # a bad trace was refused before any job: no time to plan
        span, entries = 0.0, 0
    if load.duration_s is not None:
        span = min(span, load.duration_s)
    active = client.nodes * client.processes_per_node
    if load.requests is not None:
        active = max(1, min(active, load.requests))
        entries = min(entries, load.requests)
    cap = None
    if load.max_concurrency:
        cap = max(1, min(split_evenly(load.max_concurrency, active)))
        span = max(span, math.ceil(math.ceil(entries / active) / cap) * load.timeout_s)
    return _warmup_seconds(client, 1.0, active, cap) + span + load.timeout_s


def _warmup_seconds(client: Client, level: float, active: int, cap: int | None) -> float:
    """Warmup requests go `level` at a time (at most `cap`), each within its timeout."""
    warmup = math.ceil(client.load.warmup_requests / active)
    if warmup == 0:
        return 0.0
    width = min(warmup, max(1, math.ceil(level)), cap or warmup)
    return math.ceil(warmup / width) * client.load.timeout_s


def client_job_minutes(client: Client, cases: Iterable[LoadCase]) -> int:
    """The time limit of a client job that runs `cases` one after the other."""
    return minutes(sum(level_seconds(client, case.mode, case.level) for case in cases))


def planned_levels(client: Client) -> list[tuple[str, float]]:
    """(mode, level) of every level a session may run for `client`. A sweep chooses its own:
    at most as many as stepping up from `start` by `factor` to `max` and then bisecting down
    to the resolution take, each counted at `start` (the lowest level runs the longest), and
    the loads that confirming the capacity may add: every bisected level and the capacity
    measured `boundary_repeats` times."""
    load = client.load
    if load.mode != "sweep":
        return [(load.mode, float(level)) for level in load.levels]
    sweep = load.sweep
    assert sweep is not None  # the recipe fills it in for mode sweep
    up = 1 + math.ceil(math.log(sweep.max / sweep.start) / math.log(sweep.factor))
    bisect = 1 + math.ceil(math.log2(max(sweep.max / sweep.step, 1.0)))
    missing = max(sweep.boundary_repeats - load.repeats, 0)
    confirming = (bisect + 1) * math.ceil(missing / load.repeats)
    return [(sweep.over, float(sweep.start))] * (up + bisect + confirming)


def session_seconds(recipe: Recipe, pending_timeout_s: float) -> float:
    """The longest a session of `recipe` may run: every service started, every level of every
    client run in its own job (which may wait `pending_timeout_s` in the queue first)."""
    services = sum(service.health_timeout_s for service in recipe.services.values())
    levels = sum(
        level_seconds(client, mode, level) + pending_timeout_s
        for client in recipe.clients.values()
        for mode, level in planned_levels(client)
    )
    return SESSION_SLACK_S + services + levels
