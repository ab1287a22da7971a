"""The shapes of summary.json: a run, its test entries and the summary of one load level.

summary.json outlives the version that wrote it: reports, comparisons and gates read runs of
any age, so readers keep using `.get` with a default, and these types say what a key holds when
it is there. `per_request` and `per_level` stay mappings because they are read by name (the
metric names of the kinds' catalogs, the statistics of `metrics.catalog.STATISTICS`). Every
figure may be None: NaN and infinities are saved as null (`metrics.stats.json_safe`).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from pytest_aifactory.metrics.catalog import BoundKind

Figure = float | None
"""A measured number; None when there was nothing to measure it on."""
Statistics = dict[str, Figure]
"""One per-request metric's statistics by name: `mean`, `std`, `min`, `max`, `p50` ... `p999`."""


class Counts(TypedDict):
    """What was sent and how it ended; for fio, fio runs (one record each) and their I/Os."""

    sent: int
    completed: int
    failed: int
    good: int
    """Completed and within every per-request objective (the numerator of goodput)."""
    resends: NotRequired[int]
    """LLM clients: sends that found a pooled connection closed and went again."""
    ios: NotRequired[int]
    bytes: NotRequired[int]
    processes: NotRequired[int]


class OperationFigures(TypedDict):
    """One operation of a mix (`by_op`: S3's PUT/GET/LIST/DELETE, fio's read/write)."""

    count: int
    failed: int
    ops_s: Figure
    throughput_mib_s: Figure
    bytes: NotRequired[float]
    latency_ms: NotRequired[Statistics]
    ttfb_ms: NotRequired[Statistics]
    clat_ms: NotRequired[Statistics]
    bw_mib_s: NotRequired[Figure]
    iops: NotRequired[Figure]
    ios: NotRequired[int]


class ClientHealth(TypedDict):
    """Whether the load generator itself was in the way (`metrics.stats.client_health`)."""

    processes: int
    cpu_percent: dict[Literal["max", "mean"], Figure]
    queue_ms_p99: Figure
    client_wait_share: Figure
    loop_lag_ms_p99: Figure
    events_per_s: Figure
    saturated: bool
    reason: str


class PrefixCache(TypedDict):
    """LLM kinds: the prompt tokens the server said it served from its prefix cache, over the
    completed requests it said it for (`metrics.prefix_cache`)."""

    hit_rate: Figure
    cached_tokens: int
    input_tokens: int
    requests: int
    source: str


class CrossCheck(TypedDict):
    """A quantity counted by both the clients and the server (`monitor.window.cross_check`)."""

    metric: str
    client: float
    server: Figure
    difference: Figure
    flagged: bool
    server_extra_allowed: NotRequired[float]


class Shortfall(TypedDict):
    """What a client process that ended early left undone."""

    process: int
    node: str
    error: str
    sent: int
    note: str
    expected: NotRequired[int]
    missing: NotRequired[int]
    ran_s: NotRequired[float]
    expected_s: NotRequired[float]


class LevelSummary(TypedDict):
    """The statistics of one load level (`metrics.summaries.summarize`), plus what the driver
    adds once the level is over: early ends, the client's health and the server's view."""

    counts: Counts
    per_request: dict[str, Statistics]
    per_level: dict[str, Figure]
    errors: dict[str, int]
    """Failed requests by error class (the text before the first ':')."""
    by_op: NotRequired[dict[str, OperationFigures]]
    by_model: NotRequired[dict[str, dict[str, Any]]]
    """`openai` clients whose requests named several models: counts and figures per model."""
    by_replica: NotRequired[dict[str, dict[str, Any]]]
    """`openai` clients of a service of several servers: per replica index, its host:port
    (`address`), counts and figures."""
    by_turn: NotRequired[dict[str, dict[str, Any]]]
    """Multi-turn sessions (`conversation`): per turn index, requests, failures, TTFT and mean
    input tokens (`metrics.conversations`)."""
    sessions: NotRequired[dict[str, Any]]
    """Multi-turn sessions: how many the level opened and completed, and their mean turns."""
    api: NotRequired[str]
    """`embeddings` for an embeddings level of an `openai` client (its own headline)."""
    tokens_estimated: NotRequired[bool]
    prompt_tokens_exact: NotRequired[bool]
    """LLM kinds: every prompt's length was counted by the server's tokenizer."""
    prefix_cache: NotRequired[PrefixCache]
    percentiles: NotRequired[str]
    """fio: whether percentiles are exact or upper bounds over processes."""
    ended_early: NotRequired[list[Shortfall]]
    load_generator: NotRequired[ClientHealth]
    server: NotRequired[dict[str, dict[str, Figure]]]
    """Per service, the figures its own counters gave over the level's window."""
    cross_checks: NotRequired[list[CrossCheck]]
    monitoring_samples: NotRequired[int]
    efficiency: NotRequired[dict[str, Any]]
    """What the level cost the loaded service's nodes: energy, tokens/s per GPU and node, CPU
    time, and what they were made of (`monitor/efficiency.py`)."""
    intervals: NotRequired[dict[str, Any]]
    """Each figure's interval and how it was found (`metrics/intervals.py`)."""
    repeats: NotRequired[dict[str, Any]]
    """A level measured several times: how many, and each repeat's per-level figures."""
    slo_judged_on: NotRequired[str]


class SloEntry(TypedDict):
    """One objective checked against one level (`metrics.slo.SloOutcome.to_dict`)."""

    client: str
    key: str
    metric: str
    statistic: str | None
    bound: BoundKind
    limit: float
    unit: str
    value: Figure
    passed: bool
    margin: Figure
    detail: str


class SweepStepEntry(TypedDict):
    """One level a capacity search measured."""

    level: float
    passed: bool
    test_id: str
    breaches: str
    repeats: NotRequired[int]
    confirmed: NotRequired[bool]


class SweepOutcome(TypedDict):
    """A capacity search's result and its evidence (`sweep.CapacitySearch.outcome`)."""

    over: Literal["concurrency", "rate"]
    capacity: float | None
    reached_max: bool
    passed_at: SweepStepEntry | None
    failed_at: SweepStepEntry | None
    min_capacity: float | None
    below_min_capacity: bool
    boundary_repeats: NotRequired[int]
    capacity_range: NotRequired[list[float | None] | None]
    """[the capacity, the lowest level that broke an SLO (None: none did)]: where the true
    limit lies."""
    steps: list[SweepStepEntry]


class SweepMark(TypedDict):
    """On a level measured by a capacity search: the search's test, this step's index and,
    once the search is over, its outcome."""

    test_id: str
    step: int
    outcome: NotRequired[SweepOutcome]


class RunSweep(SweepOutcome):
    """A capacity search as the run lists it once (summary.json `sweeps`)."""

    test_id: str
    client: str


class RunTestEntry(LevelSummary):
    """One test of summary.json (`tests`): identity, verdict, SLO outcomes and statistics."""

    test_id: str
    name: str
    client: str
    kind: str
    mode: str
    level: float
    level_label: str
    passed: bool
    notes: list[str]
    warnings: list[str]
    sweep: SweepMark | None
    started_at: str
    ended_at: str
    slo: list[SloEntry]


class RecipeEntry(TypedDict):
    name: str
    description: str
    path: str
    document: dict[str, Any]
    """The validated recipe, secrets masked."""


class RunSummary(TypedDict):
    """summary.json, rewritten after every test."""

    format: int
    run_id: str
    recipe: RecipeEntry
    status: str
    verdict: Literal["pass", "fail"]
    started_at: str
    written_at: str
    aifactory_version: str
    environment: dict[str, Any]
    services: dict[str, dict[str, Any]]
    monitoring: dict[str, Any]
    sweeps: list[RunSweep]
    tests: list[RunTestEntry]
    matrix: NotRequired[dict[str, Any]]
    """Of a run of one configuration of a recipe's matrix: which (`run_store.matrix_of`)."""
