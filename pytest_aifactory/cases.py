"""Load cases: one client at one load level, i.e. one pytest test.

The driver splits a case into one `LoadSpec` per client process (nodes x processes per node),
each with its share of the concurrency or rate (of a replay: of the trace's entries, dealt
round-robin, at the level's speed) and its own seed, so that together they make one load of the
requested size.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Client, Recipe


@dataclass(frozen=True)
class LoadCase:
    """One test case: a recipe client at one load level."""

    client: str
    kind: str
    mode: str
    level: float
    label: str
    """`concurrency=8`, as printed in SLO messages."""
    id: str
    """`chat-concurrency-8`, the pytest parameter id."""


def cases_for(recipe: Recipe, kinds: tuple[str, ...] = ()) -> list[LoadCase]:
    """Every client x level of the recipe, in recipe order, optionally only some client kinds."""
    cases = []
    for name, client in recipe.clients.items():
        if kinds and client.kind not in kinds:
            continue
        if client.load.mode == "sweep":
            # one test: the driver measures the levels the capacity search picks
            cases.append(LoadCase(name, client.kind, "sweep", 0.0, "sweep", f"{name}-sweep"))
            continue
        for level in client.load.levels:
            cases.append(
                LoadCase(
                    client=name,
                    kind=client.kind,
                    mode=client.load.mode,
                    level=float(level),
                    label=client.load.level_label(level),
                    id=f"{name}-{client.load.level_id(level)}",
                )
            )
    return cases


def sweep_step(case: LoadCase, client: Client, level: float) -> LoadCase:
    """One level a sweep measures: an ordinary case of the sweep's `over` mode."""
    load = client.load
    return LoadCase(
        client=case.client,
        kind=case.kind,
        mode=load.levels_mode,
        level=float(level),
        label=load.level_label(level),
        id=f"{case.id}-{load.level_id(level)}",
    )


def slug(text: str) -> str:
    """A test id as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "case"


def process_seed(base: int, case: LoadCase, process: int, repeat: int = 0) -> int:
    """Distinct prompts per level, process and repeat: a server's prefix cache must not see a
    later level's (or repeat's) prompts before (it would flatter its TTFT), yet runs stay
    reproducible. The first repeat keeps the seed a level had before repeats existed."""
    key = f"{base}/{case.client}/{case.level!r}/{process}"
    if repeat:
        key += f"/repeat-{repeat}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big")


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def task_rank(process: int, nodes: int, processes_per_node: int) -> int:
    """The task of a client job (ranks are node-major, as Slurm and submitit number them:
    `node * processes_per_node + local`) that runs load process `process`. Processes go round
    the nodes, so a level with fewer processes than slots still loads from every node it can
    (concurrency 2 over 2 nodes x 2 processes: one process on each node, not both on the
    first)."""
    if not 0 <= process < nodes * processes_per_node:
        raise ValueError(f"process {process} does not fit {nodes} x {processes_per_node} slots")
    return (process % nodes) * processes_per_node + process // nodes


def place(specs: list[LoadSpec], nodes: int, processes_per_node: int) -> list[LoadSpec | None]:
    """The specs by task rank of a job of `nodes` x `processes_per_node` tasks (`task_rank`);
    None for a task that has no share of this level and exits at once."""
    tasks: list[LoadSpec | None] = [None] * (nodes * processes_per_node)
    for spec in specs:
        tasks[task_rank(spec.process, nodes, processes_per_node)] = spec
    return tasks


def process_specs(
    case: LoadCase,
    client: Client,
    *,
    base_url: str,
    replica_urls: Sequence[str] = (),
    model: str,
    records_path: Callable[[int], Path],
    progress_path: Callable[[int], Path],
    heartbeat_path: str | None,
    barrier_dir: Path | None = None,
    api_key: str | None = None,
    service_env: dict[str, str] | None = None,
    service_kind: str = "",
    repeat: int = 0,
) -> list[LoadSpec]:
    """The shares of the client processes that take part in the level, by process index;
    `repeat`: which measurement of the level (0 for the first) this load is.

    Processes that would get nothing (concurrency 2 over 6 slots) are not started: `place`
    spreads the ones that are over the client's nodes, and the job's other tasks stay idle.
    """
    slots = client.nodes * client.processes_per_node
    load = client.load
    if case.mode == "concurrency":
        shares = [float(s) for s in split_evenly(int(case.level), slots)]
    elif case.mode == "replay":
        # a speed, not an amount: every process replays its entries at the trace's pace
        shares = [case.level] * slots
    else:
        shares = [case.level / slots] * slots
    requests: list[int | None] = (
        list(split_evenly(load.requests, slots)) if load.requests else [None] * slots
    )
    active = [i for i in range(slots) if shares[i] > 0 and requests[i] != 0]
    if load.requests:
        # every started process needs at least one request: re-split over the started ones
        active = active[: load.requests]
        requests = [None for _ in range(slots)]
        for i, n in zip(active, split_evenly(load.requests, len(active)), strict=True):
            requests[i] = n
    if case.mode == "rate":
        shares = [case.level / len(active)] * slots
    warmups = split_evenly(load.warmup_requests, len(active))
    caps = (
        split_evenly(load.max_concurrency, len(active))
        if load.max_concurrency
        else [None] * len(active)
    )
    dataset = DatasetSpec(**client.dataset.model_dump())
    options = client.options()
    specs = []
    for rank, slot in enumerate(active):
        specs.append(
            LoadSpec(
                client=case.client,
                kind=client.kind,
                level_label=case.label,
                mode=case.mode,
                level=shares[slot],
                base_url=base_url,
                replica_urls=tuple(replica_urls),
                model=model,
                records_path=str(records_path(rank)),
                progress_path=str(progress_path(rank)),
                api=client.api,
                models=tuple(client.model_mix) if len(client.model_mix) > 1 else (),
                arrival=load.arrival,
                burstiness=load.burstiness,
                requests=requests[slot],
                duration_s=load.duration_s,
                warmup_requests=warmups[rank],
                timeout_s=load.timeout_s,
                max_concurrency=caps[rank] or None,
                connections=load.connections,
                api_key=api_key,
                dataset=dataset,
                seed=process_seed(client.dataset.seed, case, rank, repeat),
                process=rank,
                repeat=repeat,
                processes=len(active),
                barrier_dir=str(barrier_dir) if barrier_dir else None,
                heartbeat_path=heartbeat_path,
                options=options,
                service_env=dict(service_env or {}),
                service_kind=service_kind,
            )
        )
    return specs
