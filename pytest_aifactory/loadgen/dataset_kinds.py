"""Which dataset kinds each family of clients sends, and which recipe keys each kind reads.

A client kind names its family (`ClientKind.datasets`: `prompts` for LLM clients, `vectors`
for vector search); the recipe's checks (`dataset_checks.py`) refuse a kind outside the family
and a key the kind does not read, before any job starts. A prompt kind's builder is given as
`module:function` and imported only in the client job, like a client kind's load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_aifactory.loadgen.kind import resolve

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.datasets import Prompt, ServerTokenizer
    from pytest_aifactory.loadgen.spec import LoadSpec

PoolBuilder = Callable[["ServerTokenizer", "LoadSpec", int], Awaitable[list["Prompt"]]]
"""Builds a process's pool of `count` prompts, the server's tokenizer at hand (not probed)."""

COMMON_KEYS = ("kind", "seed")
SHAREGPT_LIMITS = ("min_input_tokens", "min_output_tokens", "max_input_tokens", "max_total_tokens")


@dataclass(frozen=True)
class DatasetKind:
    name: str
    keys: tuple[str, ...]
    """Recipe keys it reads besides `kind` and `seed`."""
    description: str
    build: str | None = None
    """`module:function` of its `PoolBuilder` (prompt kinds other than `random`)."""
    needs_path: bool = False
    apis: tuple[str, ...] | None = None
    """The `api`s of the clients that can send it (None: every one)."""


def _kinds(*kinds: DatasetKind) -> dict[str, DatasetKind]:
    return {kind.name: kind for kind in kinds}


PROMPT_DATASETS = _kinds(
    DatasetKind("random", ("input_tokens", "output_tokens", "ignore_eos"), "random prompts"),
    DatasetKind(
        "sharegpt",
        ("path", "output_tokens", "ignore_eos", *SHAREGPT_LIMITS),
        "first turns of ShareGPT conversations",
        build="pytest_aifactory.loadgen.llm_datasets.sharegpt:sharegpt_pool",
    ),
    DatasetKind(
        "file",
        ("path", "output_tokens", "ignore_eos"),
        "prompts from a JSONL, CSV or Parquet file",
        build="pytest_aifactory.loadgen.llm_datasets.prompt_file:file_pool",
        needs_path=True,
    ),
    DatasetKind(
        "trace",
        ("path", "format", "block_tokens", "output_tokens", "ignore_eos"),
        "a request trace (Mooncake, BurstGPT or a prompt file) replayed at its own instants",
        build="pytest_aifactory.loadgen.llm_datasets.trace:trace_pool",
        needs_path=True,
    ),
    DatasetKind(
        "shared_prefix",
        ("groups", "prefix_tokens", "input_tokens", "output_tokens", "ignore_eos"),
        "random prompts in groups sharing a prefix",
        build="pytest_aifactory.loadgen.llm_datasets.shared_prefix:shared_prefix_pool",
    ),
    DatasetKind(
        "conversation",
        (
            "source",
            "path",
            "max_turns",
            "think_time_s",
            "output_tokens",
            "ignore_eos",
            "max_total_tokens",
        ),
        "multi-turn sessions (ShareGPT or a file), each turn sending the history",
        apis=("chat",),
    ),
)
VECTOR_DATASETS = _kinds(
    DatasetKind("random", ("dim", "count", "queries", "k"), "uniform random vectors"),
    DatasetKind("clustered", ("dim", "count", "queries", "k", "clusters"), "Gaussian clusters"),
    DatasetKind("file", ("path", "count", "queries", "k"), "vectors from a file", needs_path=True),
)
DATASET_FAMILIES: dict[str, dict[str, DatasetKind]] = {
    "prompts": PROMPT_DATASETS,
    "vectors": VECTOR_DATASETS,
}


def pool_builder(kind: str) -> PoolBuilder:
    """The builder of a prompt dataset kind (not `random`, which `datasets.py` builds)."""
    declared = PROMPT_DATASETS.get(kind)
    if declared is None or declared.build is None:
        known = ", ".join(PROMPT_DATASETS)
        raise ValueError(f"unknown prompt dataset kind '{kind}' (expected one of {known})")
    builder: PoolBuilder = resolve(declared.build, f"dataset kind '{kind}'")
    return builder
