"""What one load-generator process is told to do.

The driver builds one `LoadSpec` per client process and ships it, pickled, to a job; nothing in
it refers to driver state, so the same spec runs in a local process or on a Slurm node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_aifactory.monitor.node_exporter import NodeExporterOrder


@dataclass(frozen=True)
class DatasetSpec:
    """Prompts to send. `random`: prompts of exactly `input_tokens` tokens where the server can
    tokenize, asking for exactly `output_tokens` tokens (EOS ignored where the server allows);
    either is a count or a distribution (`llm_datasets/lengths.py`), as plain data. `sharegpt`:
    first turns of ShareGPT conversations within the `min_*`/`max_*` bounds; `file`: prompts
    from `path`; `shared_prefix`, random prompts opening with one of `groups` shared prefixes.
    `output_tokens` None: 64 for `random` and `shared_prefix`, the data's own for the others."""

    kind: str = "random"
    input_tokens: int | dict[str, Any] = 128
    output_tokens: int | dict[str, Any] | None = None
    seed: int = 0
    ignore_eos: bool = True
    min_input_tokens: int = 4
    min_output_tokens: int = 4
    max_input_tokens: int = 1024
    max_total_tokens: int = 2048
    format: str = "auto"
    """`trace`: the layout of the file at `path` (`auto`, `mooncake`, `burstgpt`, `file`),
    replayed at its own instants (`llm_datasets/trace.py`); `block_tokens`: tokens per
    Mooncake hash id."""
    block_tokens: int = 512
    groups: int = 8
    """`shared_prefix`: `groups` prefixes of `prefix_tokens` tokens, each opening its group's
    prompts; `input_tokens` is then each prompt's own suffix."""
    prefix_tokens: int = 256
    source: str = "sharegpt"
    """`conversation`: multi-turn sessions from ShareGPT or from a file at `path`, cut at
    `max_turns` (None: all); a session waits `think_time_s` (seconds, or a distribution as
    plain data) after each answer before its next turn."""
    max_turns: int | None = None
    think_time_s: float | dict[str, Any] = 0.0
    dim: int = 128
    """Vector kinds: `random` (uniform), `clustered` (Gaussian mixture of `clusters` centres),
    `file` (a user's .npy/.parquet at `path`); `count` vectors stored, `queries` searched for
    their `k` nearest."""
    count: int = 10_000
    queries: int = 200
    k: int = 10
    clusters: int = 32
    path: str | None = None


@dataclass(frozen=True)
class LoadSpec:
    """One process's share of one load level of one client."""

    client: str
    kind: str
    level_label: str
    mode: str
    level: float
    base_url: str
    model: str
    records_path: str
    progress_path: str
    api: str = "completions"
    replica_urls: tuple[str, ...] = ()
    """Every server of a service of several (replicas), `base_url` first; a client that
    spreads its requests (`openai`) picks one per request. Empty: `base_url` alone."""
    models: tuple[tuple[str, float], ...] = ()
    """A mix: (name, relative weight) of each model a request may name, one drawn per
    request; empty: every request names `model`."""
    arrival: str = "poisson"
    burstiness: float = 1.0
    requests: int | None = None
    duration_s: float | None = None
    warmup_requests: int = 0
    timeout_s: float = 300.0
    max_concurrency: int | None = None
    connections: str = "pooled"
    """`pooled`: keep connections open between requests; `per_request`: a new one each time."""
    api_key: str | None = None
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    seed: int = 0
    node: str = ""
    process: int = 0
    repeat: int = 0
    """Which measurement of the level this is (`load.repeats`; 0 for the first)."""
    processes: int = 1
    start_at: float | None = None
    """Wall-clock start time, when the caller fixes it."""
    barrier_dir: str | None = None
    """Shared folder where the `processes` processes of this load agree on a start time."""
    heartbeat_path: str | None = None
    push_url: str | None = None
    """The run's pushgateway: live counters go there while the load runs (None: not pushed)."""
    push_password_file: str | None = None
    """The run's monitoring password, which its pushgateway asks of every push."""
    run_id: str = ""
    node_exporter: NodeExporterOrder | None = None
    """Run the node's exporter while the load runs (the run is monitored)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The client kind's own section of the recipe (`vectordb:`, `s3:`, `sql:`, `fio:`,
    `triton:`), as plain data."""
    service_env: dict[str, str] = field(default_factory=dict)
    """What the service told its clients (credentials, bucket, database name)."""
    service_kind: str = ""
    """Kind of the service the client talks to; empty when it has none (FAISS, fio)."""
