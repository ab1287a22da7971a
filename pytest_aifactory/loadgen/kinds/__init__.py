"""The registry of client kinds: every module of this package, and every module another package
names in the `pytest_aifactory.kinds` entry point group (`kind_plugins`), that holds a
`CLIENT_KIND`.

Recipe validation, the summaries, the metric catalog, the reports' headline figures and the
client job all ask here, so a kind is added by adding one module (docs/adding-a-kind.md) and an
unknown kind is an error everywhere.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType

from pytest_aifactory.kind_plugins import plugin_kind_modules
from pytest_aifactory.loadgen.kind import ClientKind, KindDeclarationError
from pytest_aifactory.metrics.catalog import COMMON_METRICS, Headline, MetricInfo

BUILTIN_ORDER: tuple[str, ...] = ("openai", "vectordb", "s3", "fio", "sql", "triton")
"""The shipped kinds in the order listings show them; kinds from elsewhere follow by name."""


class UnknownKind(ValueError):
    """A name no registered kind has."""


def kind_modules() -> list[ModuleType]:
    """This package's kind modules, then those named by entry points (each imported once)."""
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    return [*modules, *plugin_kind_modules()]


@functools.cache
def client_kinds() -> dict[str, ClientKind]:
    """Every client kind by name."""
    found: dict[str, ClientKind] = {}
    for module in kind_modules():
        kind = getattr(module, "CLIENT_KIND", None)
        if kind is None:
            continue
        if not isinstance(kind, ClientKind):
            raise KindDeclarationError(f"{module.__name__}.CLIENT_KIND is not a ClientKind")
        if kind.name in found:
            raise KindDeclarationError(
                f"client kind '{kind.name}' is declared twice ({module.__name__})"
            )
        found[kind.name] = kind
    rank = {name: i for i, name in enumerate(BUILTIN_ORDER)}
    ordered = sorted(found, key=lambda name: (rank.get(name, len(rank)), name))
    return {name: found[name] for name in ordered}


def client_kind_names() -> tuple[str, ...]:
    return tuple(client_kinds())


def get_client_kind(name: str) -> ClientKind:
    """The kind called `name`; UnknownKind naming the known ones otherwise."""
    try:
        return client_kinds()[name]
    except KeyError:
        known = ", ".join(client_kinds())
        raise UnknownKind(f"unknown client kind '{name}' (known: {known})") from None


@functools.cache
def all_metrics() -> dict[str, MetricInfo]:
    """Every metric name any kind reports: each kind's own, then the common ones. Two kinds
    declaring one name must mean the same by it."""
    table: dict[str, MetricInfo] = {}
    for kind in client_kinds().values():
        for info in kind.metrics:
            seen = table.get(info.name)
            if seen is not None and (seen.unit, seen.higher_is_better, seen.per_request) != (
                info.unit,
                info.higher_is_better,
                info.per_request,
            ):
                raise KindDeclarationError(
                    f"metric '{info.name}' of client kind '{kind.name}' differs from the one "
                    f"already declared (unit, direction or per-request)"
                )
            table.setdefault(info.name, info)
    for info in COMMON_METRICS:
        if info.name in table:
            raise KindDeclarationError(
                f"metric '{info.name}' is common: a kind may not redeclare it"
            )
        table[info.name] = info
    return table


def metric_info(name: str) -> MetricInfo | None:
    """A metric by name; a name with a statistic suffix (`ttft_ms.p99`) gives its base."""
    return all_metrics().get(name.split(".", 1)[0])


def higher_is_better(metric: str) -> bool:
    """Direction of a metric (`ttft_ms` or `ttft_ms.p99`)."""
    info = metric_info(metric)
    if info is None:
        raise UnknownKind(f"unknown metric '{metric}'")
    return info.higher_is_better


def metrics_for_client_kind(kind: str, api: str | None = None) -> dict[str, MetricInfo]:
    """Metric names an SLO of a client of this kind (speaking `api`, where it has one) may use."""
    table = all_metrics()
    return {name: table[name] for name in get_client_kind(kind).metric_names_for(api)}


def kind_metrics(kind: str | None) -> list[MetricInfo]:
    """The metrics a test entry of this kind holds, its own first (as reports list them)."""
    declared = get_client_kind(kind or "openai")
    table = all_metrics()
    own = [info.name for info in declared.metrics]
    return [table[name] for name in (*own, *declared.common_metrics)]


def headline_of(kind: str | None, api: str | None = None) -> Headline:
    """A kind's headline figures (for a client speaking `api`, where it has its own); a test
    entry without a kind comes from a run that had only LLM clients."""
    return get_client_kind(kind or "openai").headline_for(api)
