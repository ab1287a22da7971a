"""What a client kind must declare: everything the driver, the summaries and the reports know
of it, in one object.

A kind is one module in `loadgen/kinds/` (or in another package, through the
`pytest_aifactory.kinds` entry point group) holding a module-level `CLIENT_KIND`; nothing else
in the project names a kind. The load and the summary are given as `module:function` so the
registry reads every declaration without importing a client library (aiohttp, psycopg, FAISS,
tritonclient) or pandas: the load is imported only in the client job, the summary only where
records are summarized. docs/adding-a-kind.md is the checklist.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from pytest_aifactory.metrics.catalog import COMMON_METRICS, Headline, MetricInfo

if TYPE_CHECKING:
    import pandas as pd

    from pytest_aifactory.loadgen.spec import LoadSpec
    from pytest_aifactory.metrics.catalog import SloObjective

LoadFunction = Callable[["LoadSpec"], Coroutine[Any, Any, dict[str, Any]]]
"""One process's share of a load level: takes its `LoadSpec`, writes its records, returns
{"sent", "completed", "failed", "warmup", "started_at", "ended_at", "records_path",
"interrupted"}."""


class Summarizer(Protocol):
    """The summary of one level from its records (every phase: setup rows feed a kind's setup
    figures, only measure rows its latencies), in the shape every kind shares: `counts`,
    `per_request`, `per_level`, `errors` (docs/metrics.md)."""

    def __call__(
        self,
        records: pd.DataFrame,
        *,
        kind: ClientKind,
        requested_rate: float | None,
        objectives: Sequence[SloObjective],
    ) -> dict[str, Any]: ...


class KindOptions(BaseModel):
    """Base of a kind's own recipe section (the section's key is the kind's name): strict, so a
    typo stops the session before any job starts; the client job receives it as plain data
    (`LoadSpec.options`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def level_seconds(self, load_s: float) -> float:
        """The longest one process may take at one level, given `load_s`, what the recipe's
        load keys allow (warmup, requests or duration, the last requests' timeout). A kind with
        timing or set-up of its own (fio's runtime, loading a vector collection) says so here:
        a cluster job's time limit is made from it, and a limit too short kills the level."""
        return load_s

    def client_problem(self, client: Any) -> KindProblem | None:
        """What is wrong with this section given the rest of its client (`recipe.Client`: its
        `api`, its dataset), as (key path below the section, message); None when nothing is."""
        return None


KindProblem = tuple[tuple[str | int, ...], str]
"""A problem of a kind's recipe section: where below the section, and what."""

ByteSize = Annotated[str | int, Field(examples=["4k", "1M", 1048576])]
"""A size as fio and S3 users write it: bytes, or a number with k, M, G (powers of 1024)."""

COMMON_METRIC_NAMES: tuple[str, ...] = tuple(info.name for info in COMMON_METRICS)


class KindDeclarationError(Exception):
    """A kind module declares something inconsistent (a developer's mistake, not a user's)."""


@dataclass(frozen=True)
class ClientKind:
    """One client kind. `metrics` are the kind's own (names no other kind declares);
    `common_metrics` the shared ones it reports (metrics.catalog.COMMON_METRICS)."""

    name: str
    load: str
    """`module:function` of its `LoadFunction`, imported in the client job only."""
    summarize: str
    """`module:function` of its `Summarizer`."""
    headline: Headline
    throughput_metric: str
    """Its name for completed operations per second (qps, tps, ...): per-level."""
    description: str = ""
    options: type[KindOptions] | None = None
    """The model of its recipe section, named like the kind; None: it has none."""
    needs_service: bool = True
    """False: a client may run with no service (FAISS inside the job, fio on its disk)."""
    metrics: tuple[MetricInfo, ...] = ()
    common_metrics: tuple[str, ...] = COMMON_METRIC_NAMES
    datasets: str | None = None
    """The family of `dataset` kinds it sends (`dataset_kinds.DATASET_FAMILIES`: `prompts`,
    `vectors`); None: it reads no dataset, and the recipe's is not checked."""
    pooled_connections: bool = False
    """Whether the recipe's `load.connections` applies (its client pools HTTP connections)."""
    model_mix: bool = False
    """Whether the recipe's `model` may be a weighted mix of models (one drawn per request)."""
    replicas: bool = False
    """Whether it spreads its requests over a service's replicas (`services.<s>.replicas`, a
    list of external URLs); a client of another kind may not load a service that has several."""
    api_headlines: tuple[tuple[str, Headline], ...] = ()
    """(api, headline) for a client `api` that its figures sum up otherwise than `headline`
    (an embeddings client has no TTFT)."""
    api_omits: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(api, metric names) that a client speaking `api` never reports (an embeddings client has
    no TTFT, a streaming one no single latency): an objective on one could never be judged."""
    closing_columns: tuple[tuple[str, str], ...] = ()
    """(label, figure) columns of the end-of-session table when every test is of this kind, a
    figure written `metric.statistic` (per request) or `metric` (per level); empty: the
    headline figures."""

    def __post_init__(self) -> None:
        unknown = set(self.common_metrics) - set(COMMON_METRIC_NAMES)
        if unknown:
            raise KindDeclarationError(
                f"client kind '{self.name}': {sorted(unknown)} are not common metrics "
                f"(declare them in its `metrics`)"
            )
        names = self.metric_names
        for api, omitted in self.api_omits:
            if set(omitted) - set(names):
                raise KindDeclarationError(
                    f"client kind '{self.name}': api '{api}' omits metrics it does not declare: "
                    f"{sorted(set(omitted) - set(names))}"
                )
        figures = [figure.split(".", 1)[0] for _, figure in self.closing_columns]
        heads = [self.headline, *(head for _, head in self.api_headlines)]
        for needed in (
            self.throughput_metric,
            *(head.throughput for head in heads),
            *(head.latency for head in heads),
            *figures,
        ):
            if needed not in names:
                raise KindDeclarationError(
                    f"client kind '{self.name}' names metric '{needed}' but does not declare it"
                )

    def headline_for(self, api: str | None) -> Headline:
        """The headline of a client of this kind speaking `api` (None: the kind's own)."""
        return dict(self.api_headlines).get(api or "", self.headline)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric its summaries hold and its SLOs may bound."""
        return (*self.common_metrics, *(info.name for info in self.metrics))

    def metric_names_for(self, api: str | None) -> tuple[str, ...]:
        """The metrics a client of this kind speaking `api` reports (None: all the kind's)."""
        omitted = set(dict(self.api_omits).get(api or "", ()))
        return tuple(name for name in self.metric_names if name not in omitted)

    def load_function(self) -> LoadFunction:
        function: LoadFunction = resolve(self.load, f"client kind '{self.name}' load")
        return function

    def summarizer(self) -> Summarizer:
        function: Summarizer = resolve(self.summarize, f"client kind '{self.name}' summary")
        return function


def resolve(target: str, what: str) -> Any:
    """The object a `module:attribute` string names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise KindDeclarationError(f"{what}: expected 'module:function', got {target!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise KindDeclarationError(f"{what}: {module_name} has no {attribute!r}") from None
