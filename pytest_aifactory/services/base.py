"""What a service kind must say: how to start it, how to know it is up, where its metrics are.

Adding a kind is one module in `services/kinds/` (or in another package, named in the
`pytest_aifactory.kinds` entry point group) that subclasses `ServiceKind` and registers itself
with `@service_kind("name")`; the recipe's choices and everything else follow from the registry
(docs/adding-a-kind.md).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pytest_aifactory.services.kinds as kinds_package
from pytest_aifactory.kind_plugins import plugin_kind_modules

if TYPE_CHECKING:
    from pytest_aifactory.monitor.series import Series
    from pytest_aifactory.recipe import Recipe, Service


API_KEY_SETTING = "AIFACTORY_API_KEY"
"""The client setting (`ServicePlan.client_env`) that holds the key clients must send."""
GPUS = "{gpus}"
"""Placeholder in a plan's argv of the GPUs each task of the service may use: as many as its
job was granted (`CUDA_VISIBLE_DEVICES`), else as the recipe asked for."""


class ServiceConfigError(Exception):
    """The recipe asks for something this machine cannot provide (missing binary or model)."""


@dataclass(frozen=True)
class HealthCheck:
    """An HTTP path that must answer 2xx, or a bare TCP connect when `http_path` is None."""

    http_path: str | None = "/health"


@dataclass(frozen=True)
class MetricsExporter:
    """The exporter of a server that serves no metrics itself (PostgreSQL): the service's job
    runs it beside the server and stops it with it. `argv` and `env` take the plan's
    placeholders and `{metrics_port}`, the port the plan's metrics are scraped on."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    web_config_flag: str | None = None
    """The exporter's flag for a `--web.config.file` (the Prometheus exporters' toolkit): given,
    the job passes the run's monitoring web config, and the exporter answers only the run's
    Prometheus, which scrapes it with the run's monitoring password."""


@dataclass(frozen=True)
class ServicePlan:
    """Everything a job needs to run one service: argv with `{host}`/`{port}` placeholders,
    `{gpus}` (`GPUS`), and `{scratch}` (in argv and env values) for a fresh private folder on
    the node's local disk that is removed when the service ends."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None
    health: HealthCheck = field(default_factory=HealthCheck)
    metrics_path: str | None = None
    served_model: str | None = None
    external_url: str | None = None
    worker_argv: list[str] | None = None
    """What ranks other than 0 of a multi-node service run (placeholders as in `argv`, plus
    `{head_host}` and `{head_port}`); None: every rank runs `argv`."""
    client_env: dict[str, str] = field(default_factory=dict)
    """What its clients must be told (per-run credentials, bucket, database name); they get it
    as `LoadSpec.service_env`."""
    metrics_port_offset: int = 0
    """`metrics_path` answers on `{port}` plus this (Triton serves metrics on a port of its
    own)."""
    ports: int = 1
    """Consecutive ports the server listens on from `{port}` (all chosen free together)."""
    exporter: MetricsExporter | None = None
    """Serves `metrics_path` on `{port}` + `metrics_port_offset` for the server."""


class ServiceKind:
    """Base of every kind; subclasses override `plan`."""

    kind: ClassVar[str] = ""
    default_health: ClassVar[HealthCheck] = HealthCheck(http_path=None)
    default_metrics_path: ClassVar[str | None] = None
    metric_series: ClassVar[tuple[Series, ...]] = ()
    """The key series of its metrics endpoint: collected per test, charted in Grafana."""
    generated_tokens_series: ClassVar[str | None] = None
    """The series (a counter) of output tokens the server generated, cross-checked against the
    clients' count; None for kinds that do not generate tokens."""
    api_key_env: ClassVar[str | None] = None
    """The variable through which the server takes an API key (`LLAMA_API_KEY`,
    `VLLM_API_KEY`): the run's key is given that way, never on the command line where `ps`
    shows it to every user of the node. None: the kind takes no key."""
    unauthenticated: ClassVar[str | None] = None
    """What anyone who reaches the server can do without a credential, for kinds whose server
    takes none (or guards only part of itself): such a service is refused on addresses other
    hosts reach unless its nodes are exclusive (services/exposure.py). None: it locks itself."""
    request_count_series: ClassVar[str | None] = None
    """The series (a counter) of requests the server answered successfully, cross-checked
    against the clients' successful requests; None for kinds that do not count them."""
    server_extra_requests: ClassVar[float] = 0.0
    """How many more requests than the clients sent the server may count in a test window
    by its own doing (a database's background transactions), before the check flags it."""
    metrics_token_of_its_own: ClassVar[bool] = False
    """Whether a server of the kind may serve its metrics only to a bearer token made for it
    (MinIO's JWT): the run's Prometheus then scrapes each such service by a job of its own,
    sending `metrics_token`. False: the run's key, or nothing, as `api_key_env` says."""

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        raise NotImplementedError

    def metrics_token(self, served_model: str | None, client_env: Mapping[str, str]) -> str | None:
        """The token a started server of the kind takes for its metrics (made from what its
        clients were given); None where it takes none."""
        return None

    def plan_for(self, name: str, service: Service, argv: list[str], **fields: Any) -> ServicePlan:
        """A plan with what every kind takes from the recipe as it is (env, bind address,
        port, health check, metrics path); `fields` add to or replace it."""
        settings: dict[str, Any] = {
            "env": dict(service.env),
            "host": service.host or "127.0.0.1",
            "port": None if service.port == "auto" else int(service.port),
            "health": self.health(service),
            "metrics_path": self.metrics_path(service),
            **fields,
        }
        return ServicePlan(name=name, argv=argv, **settings)

    def health(self, service: Service) -> HealthCheck:
        if service.health is not None:
            return HealthCheck(http_path=service.health.http)
        return self.default_health

    def metrics_path(self, service: Service) -> str | None:
        return service.metrics or self.default_metrics_path

    def server_figures(self, increase: Callable[[str], float | None]) -> dict[str, float | None]:
        """The kind's own figures for one test from its counters: `increase(series)` is how
        much a series of `metric_series` grew over the test (None when not covered). Shown
        in the summary under `server.<service>`; none by default."""
        return {}


def has_flag(args: list[str], flags: tuple[str, ...]) -> bool:
    """Whether a command line gives any of `flags`, as `--flag value` or `--flag=value`: a
    kind adds its own defaults only where the recipe's `args` leave them out."""
    return any(arg in flags or arg.split("=", 1)[0] in flags for arg in args)


_KINDS: dict[str, type[ServiceKind]] = {}


def service_kind(name: str) -> Callable[[type[ServiceKind]], type[ServiceKind]]:
    """Class decorator registering a service kind under its recipe name."""

    def register(cls: type[ServiceKind]) -> type[ServiceKind]:
        if _KINDS.get(name, cls) is not cls:
            raise ValueError(f"service kind '{name}' is declared twice ({cls.__module__})")
        cls.kind = name
        _KINDS[name] = cls
        return cls

    return register


@functools.cache
def _discover() -> None:
    """Import every kind module: those of `services/kinds/` and those other packages name in
    the `pytest_aifactory.kinds` entry point group (each registers its kinds as it loads)."""
    plugin_kind_modules()
    for module in pkgutil.iter_modules(kinds_package.__path__):
        importlib.import_module(f"{kinds_package.__name__}.{module.name}")


def service_kind_names() -> tuple[str, ...]:
    """Every registered service kind, in the order listings show them."""
    _discover()
    rank = {name: i for i, name in enumerate(SHIPPED_ORDER)}
    return tuple(sorted(_KINDS, key=lambda name: (rank.get(name, len(rank)), name)))


SHIPPED_ORDER: tuple[str, ...] = (
    "vllm", "llamacpp", "triton", "chroma", "milvus", "postgres", "s3", "command", "external"
)  # fmt: skip
"""The shipped service kinds in the order listings show them; others follow by name."""


def get_kind(name: str) -> ServiceKind:
    """A new instance of the kind called `name`."""
    _discover()
    try:
        return _KINDS[name]()
    except KeyError:
        known = ", ".join(service_kind_names())
        raise ServiceConfigError(
            f"service kind '{name}' is not available in this version (available: {known})"
        ) from None
