"""The recipe: one YAML file saying what to start, which load to drive and which SLOs must hold.

The format (v1, docs/recipes.md) is a contract with users, so its rules live in one place: the
pydantic models below are the schema (also exported as JSON Schema for editors), and
`load_recipe` turns every mistake in a file into a `RecipeProblem` with file, line and key, all
of them at once, so that a run on a cluster never starts only to stop at the second typo.

Loading, in order: YAML with line numbers (`recipe_yaml`), `${VAR}` / `${VAR:-default}`
expansion in every string value (`$$` is a literal `$`), relative paths made relative to the
recipe file, then validation of types and of the references between sections.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    NoReturn,
    Self,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pytest_aifactory.cluster.base import gres_gpus
from pytest_aifactory.dataset_checks import dataset_problems
from pytest_aifactory.loadgen.kind import KindOptions
from pytest_aifactory.loadgen.kinds import (
    all_metrics,
    client_kind_names,
    client_kinds,
    metric_info,
    metrics_for_client_kind,
)
from pytest_aifactory.matrix_configs import (
    MATRIX_KEY,
    MatrixConfig,
    apply_config,
    matrix_configs,
    matrix_problems,
    without_matrix,
)
from pytest_aifactory.metrics.catalog import SLO_STATISTICS, SloObjective
from pytest_aifactory.numbers import finite_number
from pytest_aifactory.recipe_yaml import KeyPath, YamlSyntaxError, load_located
from pytest_aifactory.replica_checks import REPLICA_SERVICE_KINDS, replica_problems
from pytest_aifactory.services.base import service_kind_names
from pytest_aifactory.services.kinds.vllm import VLLM_PARALLEL_FLAGS

SERVICE_KINDS: tuple[str, ...] = service_kind_names()
CLIENT_KINDS: tuple[str, ...] = client_kind_names()
"""Both from the registries (`services/kinds/`, `loadgen/kinds/`): a kind's module is the only
place that names it."""
if TYPE_CHECKING:
    ClientKindName = str
    ServiceKindName = str
else:
    ClientKindName = Literal[CLIENT_KINDS]
    ServiceKindName = Literal[SERVICE_KINDS]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TIME_LIMIT = re.compile(r"^(\d+|\d+:\d{2}:\d{2}|\d+-\d{1,2}:\d{2}:\d{2})$")
_MEMORY = re.compile(r"^\d+[KMGTkmgt]?$")
_PARTITIONS = re.compile(r"^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$")
_GRES = re.compile(r"^[A-Za-z][\w./-]*(:[\w.-]+)*(,[A-Za-z][\w./-]*(:[\w.-]+)*)*$")
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_AT = "at_key"
"""Context key of a validation error that points below the value being validated."""
_SKIP_CROSS_CHECKS = "aifactory_cross_checked"


# -- problems -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeProblem:
    """One mistake in a recipe file, located for the person who has to fix it."""

    file: str
    line: int | None
    key: str
    """Dotted key path such as `clients.chat.load.levels[1]`; empty for the whole file."""
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class RecipeError(Exception):
    """A recipe that cannot be used; `problems` lists every mistake found, not just the first."""

    def __init__(self, path: str | os.PathLike[str], problems: list[RecipeProblem]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__(self.path, self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        header = f"invalid recipe {self.path}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([header, *(f"  {problem}" for problem in self.problems)])


def format_key(path: KeyPath) -> str:
    """`("clients", "chat", "load", "levels", 1)` -> `clients.chat.load.levels[1]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def describe(value: Any) -> str:
    """A value as the user wrote it in YAML, for 'got ...' in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _fail(message: str, at: KeyPath = ()) -> NoReturn:
    """A validation error with a readable message; `at` points below the validated value."""
    raise PydanticCustomError("recipe", message, {_AT: list(at)} if at else None)


def _close(word: str, choices: list[str]) -> str:
    found = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{found[0]}'? " if found else ""


# -- value types --------------------------------------------------------------------------------


def _not_bool(value: Any) -> Any:
    """YAML `true` is not the number 1 in a recipe."""
    if isinstance(value, bool):
        _fail(f"expected a number, got {describe(value)}")
    return value


def _as_text(value: Any) -> Any:
    """Numbers written without quotes in args, env and setup lines are meant as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _port(value: Any) -> Any:
    if value == "auto":
        return value
    number = value.strip() if isinstance(value, str) else value
    if isinstance(number, str) and number.isdigit():
        number = int(number)
    if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
        return number
    _fail(f"expected 'auto' or a port number 1-65535, got {describe(value)}")


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, Mapping | list):
        _fail(f"expected a string, number or boolean, got {describe(value)}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
PositiveInt = Annotated[int, BeforeValidator(_not_bool), Field(ge=1)]
PortNumber = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=65535)]
NonNegativeInt = Annotated[int, BeforeValidator(_not_bool), Field(ge=0)]
PositiveFloat = Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]
Text = Annotated[str, BeforeValidator(_as_text)]
Port = Annotated[
    Literal["auto"] | int,
    BeforeValidator(_port),
    WithJsonSchema(
        {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": 65535}]}
    ),
]
SbatchValue = Annotated[str | int | float | bool, BeforeValidator(_scalar)]
_LIMIT_SCHEMA = {
    "type": "object",
    "properties": {"max": {"type": "number"}, "min": {"type": "number"}},
    "additionalProperties": False,
    "minProperties": 1,
}
SloBound = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "description": "per-level metrics: {max|min: x}; per-request metrics: "
            "{statistic: {max|min: x}} with a statistic of " + ", ".join(SLO_STATISTICS),
            "anyOf": [
                _LIMIT_SCHEMA,
                {
                    "type": "object",
                    "propertyNames": {"enum": list(SLO_STATISTICS)},
                    "additionalProperties": _LIMIT_SCHEMA,
                    "minProperties": 1,
                },
            ],
        }
    ),
]


class _Section(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())


# -- platform -----------------------------------------------------------------------------------


class SlurmSettings(_Section):
    """Where jobs go when the executor is slurm; `additional` carries any other sbatch option."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str = "01:00:00"
    setup: list[Text] = Field(default_factory=list)
    additional: dict[str, SbatchValue] = Field(default_factory=dict)
    pending_timeout_s: PositiveFloat = 300.0
    """A job still waiting in the queue after this long is cancelled and its start fails,
    naming Slurm's reason (no free nodes, a reservation, a begin time...)."""
    mode: Literal["auto", "jobs", "allocation"] = "auto"
    """`jobs`: one sbatch job per service and client; `allocation`: every job a step (`srun`)
    of the allocation the session runs in (salloc, a batch job); `auto`: `allocation` when the
    session runs inside one (SLURM_JOB_ID is set), else `jobs`."""

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time_limit(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # minutes
        if isinstance(value, str) and not _TIME_LIMIT.match(value.strip()):
            _fail(f"expected minutes, HH:MM:SS or D-HH:MM:SS (quote it), got {describe(value)}")
        return value.strip() if isinstance(value, str) else value


SLURM_OVERRIDE_KEYS: tuple[str, ...] = (
    "partition",
    "account",
    "qos",
    "time_limit",
    "setup",
    "pending_timeout_s",
    "mode",
)
"""The `platform.slurm` settings the command line may override (`--slurm-partition` ...);
`setup` lines are added after the recipe's."""


class Platform(_Section):
    executor: Literal["local", "slurm"] = "local"
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    silent_task_s: float = Field(default=30.0, ge=6.0)
    """A client task whose sign of life (renewed every 2 s in the run folder) has not changed
    for this long counts as gone. Raise it where the shared filesystem shows other nodes'
    changes late."""


# -- services -----------------------------------------------------------------------------------


class Container(_Section):
    """An Apptainer/Singularity image the service runs in; a relative image path or bind
    source is relative to the recipe file, `docker://...`-style references stay as written."""

    image: str
    runtime: Literal["apptainer", "singularity"] = "apptainer"
    binds: list[str] = Field(default_factory=list)
    gpu: bool = False

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not value.strip():
            _fail("must not be empty")
        return value


class Health(_Section):
    """How to know a service is up: an HTTP path that answers 2xx, or a bare TCP connect."""

    http: str | None = None
    tcp: bool | None = None

    @field_validator("http")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            _fail(f"expected a path starting with '/', got {describe(value)}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Health:
        if (self.http is not None) == bool(self.tcp):
            _fail("give exactly one of {http: /path} or {tcp: true}")
        return self


class JobResourceKeys(_Section):
    """What the Slurm job of a service or a client asks for, beside its nodes; each key becomes
    the sbatch option of the same name. The local executor has nothing to ask and ignores them."""

    partition: str | None = None
    """default: `platform.slurm.partition`; a comma-separated list lets Slurm pick."""
    cpus_per_task: PositiveInt | None = None
    memory: Annotated[str | None, BeforeValidator(_as_text)] = None
    """Memory per node as Slurm writes it: megabytes, or a number with K, M, G or T."""
    gpus_per_node: NonNegativeInt = 0
    """Slurm's `--gpus-per-node`; `gres` is the free-form alternative (`gpu:a100:4`)."""
    gres: str | None = None
    constraint: str | None = None
    """Node features the job needs (`--constraint`), e.g. `a100&ib`."""
    exclusive: bool = False
    """Whole nodes for the job alone (`--exclusive`)."""

    @field_validator("partition")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        if value is not None and not _PARTITIONS.match(value):
            _fail(f"expected a partition name or a comma-separated list, got {describe(value)}")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY.match(value):
            _fail(f"expected megabytes or a number with K, M, G or T (e.g. 64G), got {value!r}")
        return value

    @field_validator("gres")
    @classmethod
    def _gres(cls, value: str | None) -> str | None:
        if value is not None and not _GRES.match(value):
            _fail(
                "expected Slurm's name[:type][:count] list, e.g. gpu:4 or gpu:a100:4,nvme:1, "
                f"got {describe(value)}"
            )
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            _fail(f"expected node features without spaces, e.g. a100&ib, got {describe(value)}")
        return value

    @model_validator(mode="after")
    def _one_gpu_request(self) -> JobResourceKeys:
        if self.gres is not None and self.gpus_per_node > 0:
            _fail(
                f"give gpus_per_node ({self.gpus_per_node}) or gres ({self.gres!r}), not both: "
                "both ask Slurm for GPUs",
                ("gres",),
            )
        return self

    @property
    def gpu_count(self) -> int:
        """GPUs asked for on each node, by `gpus_per_node` or by `gres`."""
        return self.gpus_per_node or (gres_gpus(self.gres) if self.gres else 0)


class Service(JobResourceKeys):
    """A server the benchmark starts (or, for `external`, only uses)."""

    kind: ServiceKindName
    model: str | None = None
    """A catalogue key (`smollm2-135m`), a hub id (`org/model`) or a path to a model file or
    folder; a path is relative to the recipe file."""
    command: str | None = Field(default=None, validate_default=True)
    """kind command only: the command line; `{host}` and `{port}` are filled in."""
    url: str | list[str] | None = Field(default=None, validate_default=True)
    """kind external only: where the running service answers, http(s)://host:port; a list
    names several servers of one service (replicas), which `openai` clients spread over."""
    args: list[Text] = Field(default_factory=list)
    env: dict[str, Text] = Field(default_factory=dict)
    nodes: PositiveInt = 1
    replicas: PositiveInt = 1
    """How many copies of the server to start, each its own job with its own port (and node,
    where the cluster has them); `openai` clients spread their requests over them."""
    tensor_parallel_size: PositiveInt | None = None
    """kind vllm only: how many GPUs each layer is split over (vLLM's --tensor-parallel-size);
    default: `gpus_per_node`, or 1 without GPUs."""
    pipeline_parallel_size: PositiveInt | None = None
    """kind vllm only: how many stages the layers are split into (--pipeline-parallel-size);
    default: `nodes`. Their product must be nodes x GPUs per node when the service has GPUs."""
    host: str | None = None
    """Address to bind; None lets the executor choose (loopback locally, the node on Slurm)."""
    port: Port = "auto"
    container: Container | None = None
    health: Health | None = None
    metrics: str | None = None
    """Path of the service's Prometheus endpoint, when the kind has no default."""
    health_timeout_s: PositiveFloat = 600.0
    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    """Service keys and the values each takes in turn: one configuration per combination,
    each benchmarked as a recipe of its own (`aifactory matrix`; `matrix_configs.py`)."""

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "command" and not (value or "").strip():
            _fail("required for kind 'command': the command line that starts the server")
        if kind not in (None, "command") and value is not None:
            _fail(f"only for kind 'command' (this service is kind '{kind}')")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        kind = info.data.get("kind")
        if kind == "external" and value is None:
            _fail("required for kind 'external': where the service answers, http://host:port")
        if kind not in (None, "external") and value is not None:
            _fail(f"only for kind 'external' (this service is kind '{kind}')")
        for at, url in enumerate(value) if isinstance(value, list) else [(None, value)]:
            where = () if at is None else (at,)
            if url is not None and not re.match(r"^https?://[^/:\s]+(:\d{1,5})?(/\S*)?$", url):
                _fail(f"expected http://host:port or https://host:port, got {describe(url)}", where)
        if isinstance(value, list):
            if not value:
                _fail("a list of URLs needs at least one")
            normalized = [url.rstrip("/") for url in value]
            for at, url in enumerate(normalized):
                if url in normalized[:at]:
                    _fail(f"{url} is listed twice", (at,))
        return value

    @model_validator(mode="after")
    def _replicas(self) -> Service:
        """Replicas are whole servers of their own: a service of several nodes (a multi-node
        vLLM) is not repeated, and an external service lists its servers in `url`."""
        if self.replicas == 1:
            return self
        if self.kind == "external":
            _fail(
                "kind 'external' starts nothing: list the servers' URLs in `url` instead "
                "(each one replica)",
                ("replicas",),
            )
        if self.kind not in REPLICA_SERVICE_KINDS:
            kinds = ", ".join(f"'{kind}'" for kind in REPLICA_SERVICE_KINDS)
            _fail(
                f"a service of kind '{self.kind}' has one server (replicas apply to kinds "
                f"{kinds}, whose `openai` clients spread their requests over them)",
                ("replicas",),
            )
        if self.nodes > 1:
            _fail(
                f"replicas of a service of several nodes (nodes: {self.nodes}) are not "
                "supported: give replicas or nodes, not both",
                ("replicas",),
            )
        return self

    @property
    def urls(self) -> list[str]:
        """kind external: the servers' URLs, one per replica (empty for other kinds)."""
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @property
    def replica_count(self) -> int:
        """How many servers the service has: its `replicas`, or its external URLs."""
        return max(self.replicas, len(self.urls))

    @field_validator("tensor_parallel_size", "pipeline_parallel_size")
    @classmethod
    def _vllm_parallelism(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        kind = info.data.get("kind")
        if kind not in (None, "vllm"):
            _fail(f"only for kind 'vllm' (this service is kind '{kind}')")
        flags = VLLM_PARALLEL_FLAGS[str(info.field_name)]
        given = [arg.split("=", 1)[0] for arg in info.data.get("args") or []]
        repeated = [flag for flag in given if flag in flags]
        if repeated:
            _fail(f"given twice: here and as {repeated[0]} in args (keep one)")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            _fail(f"expected a path starting with '/', got {describe(value)}")
        return value


# -- clients ------------------------------------------------------------------------------------


def _format_level(level: float) -> str:
    level = float(level)
    return str(int(level)) if level.is_integer() else repr(level)


class _Spread(_Section):
    """What every drawn quantity's recipe mapping shares (`TokenLengths`, `ThinkTime`): a
    `mean` with a shape, or a list of `values`; one validator, so that both name the same
    mistakes the same way. A subclass gives the fields their types and bounds."""

    distribution: str | None = None
    mean: float | None = None
    range_ratio: float = 0.0
    std: float | None = None
    values: list[Any] | None = None
    order: Literal["cycle", "sample"] = "cycle"

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        if self.values is not None:
            for key in ("distribution", "mean", "std"):
                if getattr(self, key) is not None:
                    _fail(f"give values or {key}, not both", (key,))
            if self.range_ratio:
                _fail("give values or range_ratio, not both", ("range_ratio",))
            return self
        if "order" in self.model_fields_set:
            _fail("order applies to a list of values", ("order",))
        if self.mean is None:
            _fail("give mean (with range_ratio, std or distribution) or values", ("mean",))
        if self.distribution is None:
            self.distribution = "normal" if self.std is not None else "uniform"
        if self.distribution == "normal" and self.std is None:
            _fail("a normal distribution needs std", ("std",))
        if self.distribution != "normal" and self.std is not None:
            _fail("std is for distribution: normal", ("std",))
        if self.distribution != "uniform" and self.range_ratio:
            _fail("range_ratio is for the uniform distribution", ("range_ratio",))
        return self


class TokenLengths(_Spread):
    """Token counts that vary from request to request, each request drawing its own: `mean`
    with `range_ratio` r, uniform whole numbers in [floor(mean*(1-r)), ceil(mean*(1+r))] (vLLM's
    `--random-range-ratio`); `distribution: normal`, around `mean` with `std`, rounded and
    never below 1; or `values`, a list taken in turn (`order: cycle`) or drawn at random
    (`order: sample`). Real traffic's lengths vary, and fixed lengths hide how a server batches."""

    distribution: Literal["uniform", "normal"] | None = None
    """default: `uniform`, `normal` when `std` is given; not with `values`."""
    mean: PositiveInt | None = None
    range_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    std: Annotated[float, BeforeValidator(_not_bool), Field(ge=0.0)] | None = None
    values: list[PositiveInt] | None = Field(default=None, min_length=1)
    order: Literal["cycle", "sample"] = "cycle"


_SpreadModel = TypeVar("_SpreadModel", bound=_Spread)


def _spread(model: type[_SpreadModel], value: Mapping[str, Any]) -> _SpreadModel:
    """A drawn quantity's mapping validated where it is written, so that its mistakes are
    named by its own keys (a plain union would name its alternatives instead)."""
    try:
        return model.model_validate(value)
    except ValidationError as err:
        error = err.errors(include_url=False)[0]
        if error["type"] == "extra_forbidden":
            key = str(error["loc"][-1])
            allowed = list(model.model_fields)
            _fail(
                f"unknown key '{key}' ({_close(key, allowed)}expected one of: "
                f"{', '.join(allowed)})",
                error["loc"],
            )
        at, message = _humanize(error)
        _fail(message, at)


_LENGTH_SHAPES = (
    "expected a token count (128) or a distribution: {mean: 128, range_ratio: 0.5}, "
    "{distribution: normal, mean: 128, std: 32} or {values: [64, 128, 256]}"
)


def _token_count(value: Any) -> Any:
    """A count stays a number (so a saved recipe reads as written); a mapping is validated
    here, so that its mistakes are named by its own keys."""
    if isinstance(value, TokenLengths):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            _fail(f"must be at least 1, got {value}")
        return value
    if not isinstance(value, Mapping):
        _fail(f"{_LENGTH_SHAPES}, got {describe(value)}")
    return _spread(TokenLengths, value)


TokenCount = Annotated[PositiveInt | TokenLengths, BeforeValidator(_token_count)]


class ThinkTime(_Spread):
    """Seconds a conversation's user takes before the next turn, drawn per turn: `mean` with
    `range_ratio` r, uniform in [mean*(1-r), mean*(1+r)]; `distribution: normal` around `mean`
    with `std`, never below 0; `distribution: exponential` with `mean` (users acting
    independently, as vLLM's multi-turn benchmark sleeps); or `values`, taken in turn or drawn.
    A fixed pause would make every session send in lockstep."""

    distribution: Literal["uniform", "normal", "exponential"] | None = None
    """default: `uniform`, `normal` when `std` is given; not with `values`."""
    mean: Annotated[float, BeforeValidator(_not_bool), Field(ge=0.0)] | None = None
    range_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    std: Annotated[float, BeforeValidator(_not_bool), Field(ge=0.0)] | None = None
    values: list[Annotated[float, BeforeValidator(_not_bool), Field(ge=0.0)]] | None = Field(
        default=None, min_length=1
    )
    order: Literal["cycle", "sample"] = "cycle"


def _think_time(value: Any) -> Any:
    """Seconds stay a number; a mapping is validated here, so that its mistakes are named by
    its own keys."""
    if isinstance(value, ThinkTime):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not value >= 0 or value == float("inf"):
            _fail(f"must be seconds of at least 0, got {value}")
        return float(value)
    if not isinstance(value, Mapping):
        _fail(
            "expected seconds (2.5) or a distribution: {mean: 5, range_ratio: 0.5}, "
            "{distribution: exponential, mean: 5}, {distribution: normal, mean: 5, std: 2} "
            f"or {{values: [1, 5, 30]}}, got {describe(value)}"
        )
    return _spread(ThinkTime, value)


Seconds = Annotated[float | ThinkTime, BeforeValidator(_think_time)]


class Dataset(_Section):
    """What to send. LLM clients (docs/recipes.md has a section per kind): `random` prompts of
    exactly `input_tokens` tokens asking for exactly `output_tokens` tokens (the
    end-of-sequence token is ignored where the server allows), either a count or a
    distribution; `sharegpt`, first turns of real conversations selected as vLLM's benchmark
    selects them (`min_*`/`max_*` bound the pairs kept); `file`, a user's JSONL, CSV or Parquet
    prompts; `shared_prefix`, random prompts in `groups` groups that share a prefix of
    `prefix_tokens` tokens (a server's prefix cache at work); `conversation`, multi-turn
    sessions (ShareGPT or a file), each turn sending the history so far. Vector clients:
    `random` uniform vectors, `clustered` Gaussian clusters (how real embeddings look), or
    `file`, a user's own vectors (.npy or .parquet at `path`); `count` vectors of `dim`
    dimensions are stored and `queries` of them searched for their `k` nearest neighbours.
    Paths are relative to the recipe. Which kinds and keys a client may use is checked with the
    whole recipe (`dataset_checks.py`)."""

    kind: Literal[
        "random", "sharegpt", "file", "shared_prefix", "trace", "conversation", "clustered"
    ] = "random"
    input_tokens: TokenCount = 128
    output_tokens: TokenCount | None = None
    """default: 64 for `random` and `shared_prefix`; the data's own for `sharegpt`, `file`,
    `trace` and `conversation` (per turn; 64 where a conversation file gives none)."""
    seed: Int = 0
    ignore_eos: bool = True
    min_input_tokens: PositiveInt = 4
    min_output_tokens: PositiveInt = 4
    max_input_tokens: PositiveInt = 1024
    max_total_tokens: PositiveInt = 2048
    groups: PositiveInt = 8
    """`shared_prefix`: prompts in this many groups, each group's opening with the same
    `prefix_tokens` tokens; `input_tokens` is each prompt's own suffix after it."""
    prefix_tokens: PositiveInt = 256
    format: Literal["auto", "mooncake", "burstgpt", "file"] = "auto"
    """`trace`: the layout of the trace at `path`; `auto` tells it by extension and columns."""
    block_tokens: PositiveInt = 512
    """`trace`, Mooncake layout: tokens per hash id (Mooncake's traces: 512)."""
    source: Literal["sharegpt", "file"] = "sharegpt"
    """`conversation`: sessions from ShareGPT (the packaged file, or `path`) or from a file
    of conversations at `path`."""
    max_turns: PositiveInt | None = None
    """`conversation`: turns of a session at most (default: all it has)."""
    think_time_s: Seconds = 0.0
    """`conversation`: the pause after each answer before the session's next turn."""
    dim: PositiveInt = 128
    count: PositiveInt = 10_000
    queries: PositiveInt = 200
    k: PositiveInt = 10
    clusters: PositiveInt = 32
    path: str | None = None

    @model_validator(mode="after")
    def _file_has_path(self) -> Dataset:
        if self.kind == "file" and not self.path:
            _fail(
                "a dataset of kind 'file' needs path: prompts (.jsonl, .csv, .parquet) for "
                "an openai client, vectors (.npy, .parquet) for a vectordb client",
                ("path",),
            )
        if self.kind == "trace" and not self.path:
            _fail(
                "a dataset of kind 'trace' needs path: a Mooncake .jsonl, a BurstGPT .csv or a "
                "prompt file with a timestamp on every row",
                ("path",),
            )
        if self.kind == "conversation" and self.source == "file" and not self.path:
            _fail(
                "a conversation dataset of source 'file' needs path: conversations (.jsonl, "
                ".parquet), each with turns or messages",
                ("path",),
            )
        if self.path is not None and self.kind not in ("file", "sharegpt", "trace", "conversation"):
            _fail(
                f"path is for kinds 'file', 'sharegpt', 'trace' and 'conversation' (this dataset "
                f"is kind '{self.kind}')",
                ("path",),
            )
        return self


class Sweep(_Section):
    """Capacity search (`load.mode: sweep`): from `start`, multiply the load by `factor` until
    an SLO breaks (or `max` is reached), then bisect between the last level that met every SLO
    and the first that did not, until they are `resolution` apart (default: 1 request in flight
    for concurrency, a tenth of `start` for rate). The capacity is the highest level measured
    to meet every SLO; below `min_capacity` the sweep's test fails."""

    over: Literal["concurrency", "rate"] = "concurrency"
    start: PositiveFloat = 1.0
    factor: float = Field(default=2.0, gt=1.0)
    max: PositiveFloat = 64.0
    resolution: PositiveFloat | None = None
    min_capacity: PositiveFloat | None = None
    boundary_repeats: PositiveInt = 3
    """The capacity counts only once measured this many times in all and held on its
    intervals (`sweep.py`); 1: a single load decides."""

    @model_validator(mode="after")
    def _whole_numbers(self) -> Sweep:
        if self.max < self.start:
            _fail(
                f"max ({_format_level(self.max)}) is below start ({_format_level(self.start)})",
                ("max",),
            )
        if self.over == "concurrency":
            for key in ("start", "max", "resolution"):
                value = getattr(self, key)
                if value is not None and not float(value).is_integer():
                    _fail(
                        "a concurrency counts requests in flight: expected a whole number, "
                        f"got {_format_level(value)}",
                        (key,),
                    )
        return self

    @property
    def step(self) -> float:
        if self.resolution is not None:
            return float(self.resolution)
        return 1.0 if self.over == "concurrency" else self.start / 10


class Load(_Section):
    """The load of one client: each level is one test case.

    concurrency mode: a level is the number of requests kept in flight. rate mode: a level is
    requests per second, sent with the given arrival process (gamma's shape is `burstiness`),
    at most `max_concurrency` in flight. replay mode (a `trace` dataset): a level is a speed,
    each request sent at its trace instant divided by it. A level ends after `requests` requests
    or `duration_s` seconds, whichever comes first; giving only `duration_s` means no request
    limit (replay: neither means the whole trace).
    """

    mode: Literal["concurrency", "rate", "replay", "sweep"] = "concurrency"
    levels: list[PositiveFloat] = Field(default_factory=lambda: [1.0], min_length=1)
    sweep: Sweep | None = None
    """Settings of `mode: sweep` (defaults when omitted)."""
    arrival: Literal["poisson", "constant", "gamma"] = "poisson"
    burstiness: PositiveFloat = 1.0
    requests: PositiveInt | None = 64
    duration_s: PositiveFloat | None = None
    warmup_requests: NonNegativeInt = 0
    timeout_s: PositiveFloat = 300.0
    """Per request."""
    max_concurrency: PositiveInt | None = None
    connections: Literal["pooled", "per_request"] = "pooled"
    """`openai` clients: keep HTTP connections open between requests (`pooled`, as applications
    do) or open a new one for every request (`per_request`: connection setup inside TTFT)."""
    repeats: PositiveInt = 1
    """Each level is measured this many times, a fresh load each time (new prompts, same
    service): the spread between repeats is what one run cannot show (docs/metrics.md)."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    """The share of the resampled values a figure's interval holds."""
    slo_judged_on: Literal["estimate", "interval"] | None = None
    """`interval`: an objective holds only when the whole interval of its figure meets the
    bound; `estimate`: when the figure itself does. Default: `interval` with repeats,
    `estimate` without."""

    @field_validator("levels")
    @classmethod
    def _levels(cls, levels: list[float], info: ValidationInfo) -> list[float]:
        mode = info.data.get("mode")
        seen: dict[float, int] = {}
        for index, level in enumerate(levels):
            if mode == "concurrency" and not float(level).is_integer():
                _fail(
                    "a concurrency level counts requests in flight: expected a whole number, "
                    f"got {_format_level(level)}",
                    (index,),
                )
            if level in seen:
                _fail(f"level {_format_level(level)} is already levels[{seen[level]}]", (index,))
            seen[level] = index
        return levels

    @model_validator(mode="after")
    def _end(self) -> Load:
        if self.duration_s is not None and "requests" not in self.model_fields_set:
            self.requests = None
        if self.mode == "replay" and "requests" not in self.model_fields_set:
            self.requests = None  # the whole trace
        if self.requests is None and self.duration_s is None and self.mode != "replay":
            _fail("give requests (per level) or duration_s", ("requests",))
        if self.mode == "sweep":
            if "levels" in self.model_fields_set:
                _fail("a sweep chooses its own levels: set sweep.start and sweep.max", ("levels",))
            if self.sweep is None:
                self.sweep = Sweep()
        elif self.sweep is not None:
            _fail(f"sweep settings apply to mode: sweep, not mode: {self.mode}", ("sweep",))
        return self

    @property
    def levels_mode(self) -> str:
        """What a level counts: requests in flight or per second (a sweep's `over`)."""
        if self.mode == "sweep":
            assert self.sweep is not None
            return self.sweep.over
        return self.mode

    @property
    def slo_rule(self) -> Literal["estimate", "interval"]:
        """What an objective is judged on (`slo_judged_on`, or its default)."""
        if self.slo_judged_on is not None:
            return self.slo_judged_on
        return "interval" if self.repeats > 1 else "estimate"

    def level_label(self, level: float) -> str:
        """`concurrency=8`, `rate=2.5`: how a level is named in messages and reports."""
        return f"{self.levels_mode}={_format_level(level)}"

    def level_id(self, level: float) -> str:
        """`concurrency-8`, `rate-2.5`: the level's part of a pytest test id."""
        return f"{self.levels_mode}-{_format_level(level)}"


class WeightedModel(_Section):
    """One model of a client's mix and its relative weight."""

    name: str = Field(min_length=1)
    weight: PositiveFloat = 1.0


class ClientFields(JobResourceKeys):
    """A load generator aimed at one service; it runs as one job of nodes x processes_per_node
    tasks (`cpus_per_task` is per process).

    `service` may be left out only by kinds that work without one (`vectordb` with FAISS in
    the client job, `fio` on the client's file system). A kind with options reads its own
    section, named like the kind (declared in its module in `loadgen/kinds/`)."""

    kind: ClientKindName
    service: str | None = Field(default=None, validate_default=True)
    api: Literal["completions", "chat", "embeddings"] = "completions"
    model: str | dict[str, PositiveFloat] | list[WeightedModel] | None = None
    """Model name sent in requests; None lets the service decide (the name it serves). A
    mapping of names to weights (or a list of {name, weight}) is a mix: each request names one
    model, drawn with these relative weights from the load's seed (several served models or
    LoRA adapters behind one server)."""
    nodes: PositiveInt = 1
    processes_per_node: PositiveInt = 1
    dataset: Dataset = Field(default_factory=Dataset)
    load: Load = Field(default_factory=Load)

    @field_validator("service")
    @classmethod
    def _service(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = client_kinds().get(info.data.get("kind") or "")
        if value is None and kind is not None and kind.needs_service:
            _fail(f"required for a client of kind '{kind.name}': the name of a service it loads")
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        """A mix, in either spelling, as a list of {name, weight}, checked here so that a
        mistake reads as one problem at its key (not one per spelling the key allows)."""
        if isinstance(value, str) and not value.strip():
            _fail("must not be empty")
        if not isinstance(value, dict | list):
            return value
        if not value:
            _fail("a mix needs at least one model")
        if isinstance(value, dict):
            pairs = [((name,), {"name": name, "weight": w}) for name, w in value.items()]
        else:
            pairs = [((index,), entry) for index, entry in enumerate(value)]
        seen: dict[str, str] = {}
        for at, entry in pairs:
            if not isinstance(entry, dict):
                _fail(f"expected {{name, weight}}, got {describe(entry)}", at)
            extra = sorted(set(entry) - {"name", "weight"})
            if extra:
                _fail(f"unknown key '{extra[0]}' (expected name, weight)", at)
            name, weight = entry.get("name"), entry.get("weight", 1.0)
            if not isinstance(name, str) or not name.strip():
                _fail(f"name: expected a model name, got {describe(name)}", at)
            number = finite_number(weight) if isinstance(weight, int | float) else None
            if number is None or number <= 0:
                _fail(f"weight: expected a positive number, got {describe(weight)}", at)
            if name in seen:
                _fail(f"model '{name}' is already {seen[name]}", at)
            seen[name] = format_key(("model", *at))
        return [entry for _, entry in pairs]

    @property
    def model_mix(self) -> list[tuple[str, float]]:
        """(name, weight) of each model requests name; [] when the service decides."""
        if self.model is None:
            return []
        if isinstance(self.model, str):
            return [(self.model, 1.0)]
        if isinstance(self.model, dict):
            return [(name, float(weight)) for name, weight in self.model.items()]
        return [(entry.name, float(entry.weight)) for entry in self.model]

    @property
    def model_name(self) -> str | None:
        """The model a request names when there is one (a mix's first otherwise)."""
        mix = self.model_mix
        return mix[0][0] if mix else None

    @model_validator(mode="after")
    def _own_section(self) -> ClientFields:
        kind = client_kinds()[self.kind]
        for section in _SECTIONS:
            if section != self.kind and getattr(self, section) is not None:
                _fail(
                    f"the {section} section is for clients of kind '{section}' "
                    f"(this client is kind '{self.kind}')",
                    (section,),
                )
        # the default passes: a saved recipe (recipe.json) holds every key, defaults included
        if not kind.pooled_connections and self.load.connections != "pooled":
            _fail(
                f"connections applies to clients of kind {_POOLING_KINDS} (this client is kind "
                f"'{self.kind}', which keeps its own connections)",
                ("load", "connections"),
            )
        if len(self.model_mix) > 1 and not kind.model_mix:
            _fail(
                f"a mix of models applies to clients of kind {_MIX_KINDS} (this client is kind "
                f"'{self.kind}'): give one model name",
                ("model",),
            )
        if kind.options is not None and getattr(self, self.kind) is None:
            setattr(self, self.kind, kind.options())
        options = getattr(self, self.kind, None) if self.kind in _SECTIONS else None
        problem = options.client_problem(self) if isinstance(options, KindOptions) else None
        if problem is not None:
            at, message = problem
            _fail(message, (self.kind, *at))
        return self

    def options(self) -> dict[str, Any]:
        """The kind's own section as plain data ({} for kinds without one)."""
        section = getattr(self, self.kind, None) if self.kind in _SECTIONS else None
        return section.model_dump(mode="json") if section is not None else {}


_SECTIONS: tuple[str, ...] = tuple(k.name for k in client_kinds().values() if k.options)
_POOLING_KINDS = " or ".join(f"'{k.name}'" for k in client_kinds().values() if k.pooled_connections)
_MIX_KINDS = " or ".join(f"'{k.name}'" for k in client_kinds().values() if k.model_mix)

if TYPE_CHECKING:
    Client = ClientFields
else:
    # one optional section per kind that has options, so the schema lists every kind's keys
    Client = create_model(
        "Client",
        __base__=ClientFields,
        __module__=__name__,
        __doc__=ClientFields.__doc__,
        **{k.name: (k.options | None, None) for k in client_kinds().values() if k.options},
    )


# -- monitoring and reports ---------------------------------------------------------------------


MonitorComponentName = Literal["prometheus", "pushgateway", "node_exporter", "dcgm_exporter"]


class MonitorComponent(_Section):
    """Where one monitoring program comes from, for users without root or a package manager:
    `path`, its binary (a release archive unpacked in the project's folder), or `image`, an
    Apptainer/Singularity image holding it (`command`: the program inside the image, default
    its usual name). Relative paths are relative to the recipe file."""

    path: str | None = None
    image: str | None = None
    runtime: Literal["apptainer", "singularity"] = "apptainer"
    binds: list[str] = Field(default_factory=list)
    command: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> MonitorComponent:
        if (self.path is None) == (self.image is None):
            _fail("give exactly one of path (a binary) or image (an Apptainer image)")
        if self.path is not None:
            for key in ("binds", "command"):
                if getattr(self, key):
                    _fail(f"{key} applies to an image, not to a path", (key,))
        for key in ("path", "image"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                _fail("must not be empty", (key,))
        return self


class Monitor(_Section):
    """`prometheus: true` monitors the run: Prometheus where its binary exists (else the
    endpoints are scraped directly), a node exporter beside every service and client, a
    pushgateway for the clients' live counters. `partition`: where the Slurm executor runs
    Prometheus and the pushgateway (default: the run's partition). `gpu_exporter_port`: where
    a node's DCGM exporter answers (GPU sites run one as a system service); without one there,
    a job on a GPU node starts `dcgm-exporter` itself where the binary exists; null: no GPU
    series. `components`: where each program comes from, before the environment
    (`AIFACTORY_PROMETHEUS`...) and the PATH."""

    prometheus: bool = True
    scrape_interval_s: PositiveFloat = 1.0
    partition: str | None = None
    start_timeout_s: PositiveFloat = 60.0
    gpu_exporter_port: PortNumber | None = 9400
    components: dict[MonitorComponentName, MonitorComponent] = Field(default_factory=dict)


class ReportSettings(_Section):
    """`dir` is relative to the directory pytest runs in, not to the recipe: reports belong to
    the place a run was started from, and one recipe serves many checkouts."""

    dir: str = "reports"


class RegressionSettings(_Section):
    """The recipe's regression gate: each metric's tolerance (`ttft_ms.p99: 10%`), applied by
    `--fail-on-regression` (whose own SPEC adds to it and wins where both name a metric), and
    how sure a change must be to count (the interval it must leave: docs/metrics.md)."""

    tolerances: dict[str, str | float] = Field(default_factory=dict)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @field_validator("tolerances")
    @classmethod
    def _tolerances(cls, tolerances: dict[str, str | float]) -> dict[str, str | float]:
        # deferred: the metric catalogue knows every client kind, which imports this module
        from pytest_aifactory.report.compare import CompareError, parse_tolerances

        for metric, tolerance in tolerances.items():
            text = f"{tolerance:g}%" if isinstance(tolerance, int | float) else tolerance
            try:
                parse_tolerances(f"{metric}:{text}")
            except CompareError as err:
                _fail(str(err).replace("tolerance '", "'"), (metric,))
        return tolerances

    def fractions(self) -> dict[str, float]:
        """{'ttft_ms.p99': 0.1}: a number is a percentage, as `10%` is."""
        # deferred: the metric catalogue knows every client kind, which imports this module
        from pytest_aifactory.report.compare import parse_tolerances

        spec = ",".join(
            f"{metric}:{f'{value:g}%' if isinstance(value, int | float) else value}"
            for metric, value in self.tolerances.items()
        )
        return parse_tolerances(spec) if spec else {}


# -- the recipe ---------------------------------------------------------------------------------


class Recipe(_Section):
    """A whole recipe file. `path` is where it was loaded from (not part of the document)."""

    name: str
    """Used in run ids and report titles: letters, digits, '-', '_' and '.'."""
    description: str = ""
    platform: Platform = Field(default_factory=Platform)
    services: dict[str, Service] = Field(default_factory=dict)
    clients: dict[str, Client] = Field(default_factory=dict)
    slo: dict[str, dict[str, SloBound]] = Field(default_factory=dict)
    """client name -> metric -> bound (see SloBound)."""
    monitor: Monitor = Field(default_factory=Monitor)
    report: ReportSettings = Field(default_factory=ReportSettings)
    regression: RegressionSettings = Field(default_factory=RegressionSettings)

    _path: Path = PrivateAttr(default_factory=Path)
    _matrix: list[MatrixConfig] = PrivateAttr(default_factory=list)
    _matrix_config: MatrixConfig | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            _fail(
                "expected letters, digits, '-', '_' or '.' (it names run folders), "
                f"got {describe(value)}"
            )
        return value

    @field_validator("slo")
    @classmethod
    def _numbers(cls, slo: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
        """Bounds given through `${VAR}` arrive as text; keep them as numbers."""

        def convert(key: str, value: Any) -> Any:
            if isinstance(value, dict):
                return {k: convert(k, v) for k, v in value.items()}
            number = finite_number(value) if key in ("max", "min") else None
            return value if number is None else number

        return {client: convert(client, metrics) for client, metrics in slo.items()}

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Recipe:
        if info.context and info.context.get(_SKIP_CROSS_CHECKS):
            return self  # load_recipe reports these itself, located
        problems = reference_problems(self.model_dump())
        if problems:
            _fail("; ".join(f"{format_key(path)}: {message}" for path, message in problems))
        return self

    @property
    def path(self) -> Path:
        return self._path

    @property
    def matrix(self) -> list[MatrixConfig]:
        """Every configuration of the recipe's matrix (`matrix_configs.py`); empty without."""
        return list(self._matrix)

    @property
    def matrix_config(self) -> MatrixConfig | None:
        """The configuration this recipe is (`load_recipe(..., matrix_config=N)`), if any."""
        return self._matrix_config

    @property
    def base_dir(self) -> Path:
        """The recipe file's folder: relative paths in the recipe start here."""
        return self._path.parent

    def objectives(self, client: str) -> list[SloObjective]:
        """The SLO bounds of one client, one objective per max/min."""
        found = []
        for metric, bound in self.slo.get(client, {}).items():
            info = metric_info(metric)
            if info is None:
                continue
            limits = bound.items() if info.per_request else [(None, bound)]
            for statistic, limit in limits:
                for kind in ("max", "min"):
                    value = finite_number(limit.get(kind)) if isinstance(limit, dict) else None
                    if value is not None:
                        found.append(SloObjective(client, metric, statistic, kind, value))
        return found


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe format, for editors (e.g. the YAML language server)."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pytest-aifactory recipe (v1)"
    return schema


# -- checks across sections ---------------------------------------------------------------------


def _limit_problems(path: KeyPath, limit: Any) -> list[tuple[KeyPath, str]]:
    if not isinstance(limit, dict):
        return [(path, f"expected a bound such as {{max: 100}}, got {describe(limit)}")]
    if not limit:
        return [(path, "give max, min or both")]
    problems: list[tuple[KeyPath, str]] = []
    for key, value in limit.items():
        if key not in ("max", "min"):
            problems.append(
                (
                    (*path, key),
                    f"unknown key '{key}' ({_close(key, ['max', 'min'])}expected max or min)",
                )
            )
        elif finite_number(value) is None:
            problems.append(((*path, key), f"expected a number, got {describe(value)}"))
    low, high = finite_number(limit.get("min")), finite_number(limit.get("max"))
    if not problems and low is not None and high is not None and low > high:
        problems.append((path, f"min {low:g} is greater than max {high:g}"))
    return problems


def _slo_problems(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    slo = data.get("slo")
    if not isinstance(slo, dict):
        return []
    clients = data.get("clients")
    if not isinstance(clients, dict):
        clients = {}
    problems: list[tuple[KeyPath, str]] = []
    for client, metrics in slo.items():
        if client not in clients:
            known = ", ".join(clients) or "none"
            problems.append((("slo", client), f"no client named '{client}' (clients: {known})"))
            continue
        if not isinstance(metrics, dict):
            continue  # a type error, reported by the schema
        spec = clients[client]
        kind = spec.get("kind") if isinstance(spec, dict) else None
        api = spec.get("api", ClientFields.model_fields["api"].default) if kind else None
        api = api if isinstance(api, str) else None
        known_kind = isinstance(kind, str) and kind in CLIENT_KINDS
        allowed = (
            metrics_for_client_kind(kind, api)
            if isinstance(kind, str) and known_kind
            else all_metrics()
        )
        for metric, bound in metrics.items():
            path: KeyPath = ("slo", client, metric)
            if metric not in allowed:
                speaking = f" speaking api {api!r}" if known_kind and api else ""
                for_kind = f" for a client of kind {kind!r}{speaking}" if known_kind else ""
                problems.append(
                    (
                        path,
                        f"unknown metric '{metric}'{for_kind} ({_close(metric, list(allowed))}"
                        f"expected one of: {', '.join(allowed)})",
                    )
                )
                continue
            if not isinstance(bound, dict):
                continue  # a type error, reported by the schema
            if not allowed[metric].per_request:
                if any(key in SLO_STATISTICS and isinstance(v, dict) for key, v in bound.items()):
                    problems.append(
                        (
                            path,
                            f"{metric} is one value per load level: bound it directly, "
                            "e.g. {min: 10} or {max: 0.01}, not a statistic",
                        )
                    )
                else:
                    problems += _limit_problems(path, bound)
                continue
            if not bound:
                problems.append((path, "give a statistic with a bound, e.g. {p99: {max: 100}}"))
            for statistic, limit in bound.items():
                if statistic in ("max", "min") and not isinstance(limit, dict):
                    problems.append(
                        (
                            (*path, statistic),
                            f"{metric} is measured per request: bound a statistic, "
                            f"e.g. {{p99: {{{statistic}: {describe(limit)}}}}}",
                        )
                    )
                elif statistic not in SLO_STATISTICS:
                    problems.append(
                        (
                            (*path, statistic),
                            f"unknown statistic '{statistic}' "
                            f"({_close(statistic, list(SLO_STATISTICS))}"
                            f"expected one of: {', '.join(SLO_STATISTICS)})",
                        )
                    )
                else:
                    problems += _limit_problems((*path, statistic), limit)
    return problems


def reference_problems(data: Mapping[str, Any]) -> list[tuple[KeyPath, str]]:
    """Rules that tie sections together (names, references, SLO metrics), checked on the raw
    document so they are reported even when other parts of it have type errors."""
    problems: list[tuple[KeyPath, str]] = []
    services = data.get("services")
    services = services if isinstance(services, dict) else {}
    clients = data.get("clients")
    clients = clients if isinstance(clients, dict) else {}
    for section, names in (("services", services), ("clients", clients)):
        for name in names:
            if not _NAME.match(name):
                problems.append(
                    (
                        (section, name),
                        f"name {describe(name)} must be letters, digits, '-', '_' or '.' "
                        "(it names jobs and files)",
                    )
                )
    for name, client in clients.items():
        if not isinstance(client, dict):
            continue
        service = client.get("service")
        if isinstance(service, str) and service not in services:
            known = ", ".join(services) or "none"
            problems.append(
                (("clients", name, "service"), f"no service named '{service}' (services: {known})")
            )
        load = client.get("load")
        slo = data.get("slo")
        sweeps = isinstance(load, dict) and load.get("mode") == "sweep"
        if sweeps and not (isinstance(slo, dict) and slo.get(name)):
            problems.append(
                (
                    ("clients", name, "load", "mode"),
                    f"a sweep searches for the highest load meeting every SLO: give slo.{name}",
                )
            )
    problems += _slo_problems(dict(data))
    problems += dataset_problems(clients, _DATASET_DEFAULTS)
    problems += replica_problems(services, clients)
    return problems


_DATASET_DEFAULTS = {name: info.default for name, info in Dataset.model_fields.items()}


# -- loading ------------------------------------------------------------------------------------


def _expand_text(
    text: str, environ: Mapping[str, str], path: KeyPath, problems: list[tuple[KeyPath, str]]
) -> str:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name is None:
            problems.append(
                (path, "invalid '${': write ${NAME} or ${NAME:-default}, or $$ for a literal $")
            )
            return token
        value = environ.get(name)
        if default is not None:
            return value or default
        if value is None:
            problems.append(
                (path, f"environment variable {name} is not set (or write ${{{name}:-default}})")
            )
            return token
        return value

    return _VARIABLE.sub(replace, text)


def expand_env(
    data: Any, environ: Mapping[str, str], path: KeyPath = ()
) -> tuple[Any, list[tuple[KeyPath, str]]]:
    """Expand `${VAR}` and `${VAR:-default}` (default when unset or empty) in every string value;
    `$$` is a literal `$`. Keys are left as written."""
    problems: list[tuple[KeyPath, str]] = []

    def walk(value: Any, at: KeyPath) -> Any:
        if isinstance(value, dict):
            return {key: walk(item, (*at, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, (*at, index)) for index, item in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _expand_text(value, environ, at, problems)
        return value

    return walk(data, path), problems


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _absolute(text: str, base_dir: Path) -> str:
    expanded = os.path.expanduser(text)
    return os.path.normpath(expanded if os.path.isabs(expanded) else base_dir / expanded)


def _is_model_path(model: str, base_dir: Path) -> bool:
    """`./x`, `../x`, `~/x`, `/x` and `*.gguf` are paths; `org/name` is a path only when it
    exists beside the recipe, otherwise a hub id (vLLM's `meta-llama/Llama-3.1-8B-Instruct`);
    a catalogue key (`smollm2-135m`) never is."""
    if model.startswith((".", "~", "/")) or model.endswith(".gguf"):
        return True
    return "/" in model and _exists(base_dir / model)


def resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
    """Make model, container image, bind source, dataset file and fio directory paths relative
    to the recipe's folder."""
    clients = data.get("clients")
    for client in clients.values() if isinstance(clients, dict) else []:
        if not isinstance(client, dict):
            continue
        for section, key in (("dataset", "path"), ("fio", "directory")):
            part = client.get(section)
            if not isinstance(part, dict):
                continue
            value = part.get(key)
            if isinstance(value, str) and value.strip() and "${" not in value:
                part[key] = _absolute(value, base_dir)
    _resolve_monitor_paths(data.get("monitor"), base_dir)
    services = data.get("services")
    if not isinstance(services, dict):
        return
    for service in services.values():
        if not isinstance(service, dict):
            continue
        model = service.get("model")
        if isinstance(model, str) and model and _is_model_path(model, base_dir):
            service["model"] = _absolute(model, base_dir)
        container = service.get("container")
        if not isinstance(container, dict):
            continue
        image = container.get("image")
        if isinstance(image, str) and image.strip() and "://" not in image:
            container["image"] = _absolute(image, base_dir)
        binds = container.get("binds")
        if isinstance(binds, list):
            container["binds"] = [_resolve_bind(bind, base_dir) for bind in binds]


def _resolve_monitor_paths(monitor: Any, base_dir: Path) -> None:
    """A monitoring component's binary, image and bind sources, like a service container's."""
    components = monitor.get("components") if isinstance(monitor, dict) else None
    for component in components.values() if isinstance(components, dict) else []:
        if not isinstance(component, dict):
            continue
        for key in ("path", "image"):
            value = component.get(key)
            if isinstance(value, str) and value.strip() and "://" not in value:
                component[key] = _absolute(value, base_dir)
        binds = component.get("binds")
        if isinstance(binds, list):
            component["binds"] = [_resolve_bind(bind, base_dir) for bind in binds]


def _resolve_bind(bind: Any, base_dir: Path) -> Any:
    if not isinstance(bind, str) or not bind:
        return bind
    source, sep, rest = bind.partition(":")
    return _absolute(source, base_dir) + sep + rest if source else bind


def _model_fields_at(loc: KeyPath) -> list[str] | None:
    """The keys allowed at `loc` of a recipe, when `loc` is a section (a pydantic model)."""
    annotation: Any = Recipe
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) in (dict, list):
            annotation = get_args(annotation)[-1]
        else:
            return None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            options = [a for a in get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _humanize(error: Any) -> tuple[KeyPath, str]:
    """A pydantic error as (key path, message in the recipe's terms)."""
    loc: KeyPath = tuple(part for part in error["loc"] if part != "[key]")
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "recipe":
        return (*loc, *ctx.get(_AT, ())), error["msg"]
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        allowed = _model_fields_at(loc[:-1]) or []
        expected = f"expected one of: {', '.join(allowed)}" if allowed else "not allowed here"
        return loc, f"unknown key '{key}' ({_close(key, allowed)}{expected})"
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = _close(value, options) if isinstance(value, str) else ""
        listed = ", ".join(f"'{option}'" for option in options)
        return loc, f"expected one of {listed}, got {describe(value)}" + (
            f" ({hint.strip()})" if hint else ""
        )
    bounds = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return loc, f"must be {words} {ctx.get(key)}, got {describe(value)}"
    if kind == "too_short":
        return loc, "must not be empty"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return loc, str(ctx["error"])
    return loc, str(error["msg"])


def _sorted_problems(
    file: str, located: list[tuple[KeyPath, int | None, str]]
) -> list[RecipeProblem]:
    problems: list[RecipeProblem] = []
    for path, line, message in located:
        problem = RecipeProblem(file, line, format_key(path), message)
        if problem not in problems:
            problems.append(problem)
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return problems


def _read(path: Path, file: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(path, [RecipeProblem(file, None, "", "no such file")]) from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise RecipeError(path, [RecipeProblem(file, None, "", f"cannot read: {reason}")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise RecipeError(
            path, [RecipeProblem(file, line, "", "not UTF-8 text (a recipe is a YAML file)")]
        ) from None


def with_repeats(recipe: Recipe, repeats: int) -> Recipe:
    """The recipe with every client's levels measured `repeats` times (`--repeats`)."""
    changed = recipe.model_copy(deep=True)
    for client in changed.clients.values():
        client.load.repeats = repeats
    return changed


def load_recipe(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    matrix_config: int | None = None,
) -> Recipe:
    """Read, expand and validate a recipe; raises `RecipeError` listing every problem found.

    A recipe with a configuration matrix (`matrix_configs.py`) is validated as each of its
    configurations; `matrix_config` picks one (by index) as the recipe returned, else the
    recipe without its matrices is, with `matrix` listing the configurations."""
    path = Path(path)
    file = str(path)
    text = _read(path, file)
    try:
        document = load_located(text)
    except YamlSyntaxError as err:
        raise RecipeError(path, [RecipeProblem(file, err.line, "", err.message)]) from None
    data = document.data
    if not isinstance(data, dict):
        what = "an empty file" if data is None else describe(data)
        message = f"a recipe is a mapping of keys (name:, services:, clients:, ...), got {what}"
        raise RecipeError(path, [RecipeProblem(file, document.line_of(()), "", message)])

    located = [(p.path, p.line, p.message) for p in document.problems]
    data, env_problems = expand_env(data, os.environ if environ is None else environ)
    resolve_paths(data, Path(os.path.abspath(path)).parent)
    found = env_problems + reference_problems(data)
    shape_problems = matrix_problems(data)
    found += shape_problems
    configs = [] if shape_problems else matrix_configs(data)
    chosen: MatrixConfig | None = None
    if matrix_config is not None:
        if not configs:
            found.append(((), "this recipe has no configuration matrix (services.<s>.matrix)"))
        elif not 0 <= matrix_config < len(configs):
            found.append(((), f"no configuration {matrix_config}: its matrix has {len(configs)}"))
        else:
            chosen = configs[matrix_config]
    unexpanded = {p for p, _ in env_problems}
    recipe = None
    try:
        picked = apply_config(data, chosen) if chosen else without_matrix(data)
        recipe = Recipe.model_validate(picked, context={_SKIP_CROSS_CHECKS: True})
    except ValidationError as err:
        for error in err.errors(include_url=False):
            key, message = _humanize(error)
            if not any(key[: len(p)] == p for p in unexpanded):
                found.append(_in_matrix(data, chosen, key, message))
    for config in configs:
        if config is not chosen and not found:
            found += _config_problems(data, config)
    located += [(key, document.line_of(key), message) for key, message in found]
    if located or recipe is None:
        raise RecipeError(path, _sorted_problems(file, located))
    recipe._path = path
    recipe._matrix = configs
    recipe._matrix_config = chosen
    return recipe


def _in_matrix(
    data: dict[str, Any], config: MatrixConfig | None, key: tuple[str | int, ...], message: str
) -> tuple[tuple[str | int, ...], str]:
    """A problem of a configuration's recipe, placed at the matrix value that caused it."""
    if config is None:
        return key, message
    for service, name, value in config.values:
        if key[:3] == ("services", service, name):
            values = data["services"][service][MATRIX_KEY][name]
            where = ("services", service, MATRIX_KEY, name, values.index(value))
            return where, f"{message} (configuration {config.label})"
    return key, f"{message} (configuration {config.label})"


def _config_problems(
    data: dict[str, Any], config: MatrixConfig
) -> list[tuple[tuple[str | int, ...], str]]:
    try:
        Recipe.model_validate(apply_config(data, config), context={_SKIP_CROSS_CHECKS: True})
    except ValidationError as err:
        return [
            _in_matrix(data, config, *_humanize(error)) for error in err.errors(include_url=False)
        ]
    return []
