"""Recipe loading: the v1 format validates, and every mistake is reported with file, line, key."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pytest_aifactory.metrics.catalog import SloObjective
from pytest_aifactory.recipe import (
    SERVICE_KINDS,
    Load,
    Recipe,
    RecipeError,
    RecipeProblem,
    load_recipe,
    recipe_json_schema,
)
from tests.helpers import RECIPE_DATA, REPO

MINIMAL = """\
name: t
services:
  llm: {kind: llamacpp}
clients:
  chat:
    kind: openai
    service: llm
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[RecipeProblem]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={} if environ is None else environ)
    assert caught.value.path == path
    return caught.value.problems


# -- valid recipes ------------------------------------------------------------------------------


def test_the_example_of_the_format_validates() -> None:
    recipe = load_recipe(RECIPE_DATA / "example.yaml", environ={})
    assert recipe.name == "llamacpp-smollm2"
    assert recipe.path == RECIPE_DATA / "example.yaml"
    assert recipe.base_dir == RECIPE_DATA
    assert recipe.platform.slurm.additional == {"reservation": "cpudev"}
    assert recipe.platform.slurm.setup == ["module load Apptainer"]
    llm = recipe.services["llm"]
    assert (llm.kind, llm.model, llm.port, llm.container) == (
        "llamacpp",
        "smollm2-135m",
        "auto",
        None,
    )
    chat = recipe.clients["chat"]
    assert chat.load.levels == [1, 4, 8]
    assert (chat.load.requests, chat.load.warmup_requests) == (64, 4)
    assert recipe.objectives("chat") == [
        SloObjective("chat", "ttft_ms", "p99", "max", 2000.0),
        SloObjective("chat", "tpot_ms", "p50", "max", 100.0),
        SloObjective("chat", "output_throughput", None, "min", 20.0),
        SloObjective("chat", "error_rate", None, "max", 0.0),
    ]
    assert recipe.objectives("nobody") == []


def test_generic_service_kinds_validate() -> None:
    recipe = load_recipe(RECIPE_DATA / "generic-kinds.yaml", environ={})
    mine, theirs = recipe.services["mine"], recipe.services["theirs"]
    assert mine.command == "python -m http.server {port} --bind {host}"
    assert mine.health is not None
    assert mine.health.http == "/"
    assert mine.metrics == "/metrics"
    assert theirs.url == "http://127.0.0.1:8000"


def test_the_shipped_recipes_validate() -> None:
    vllm = load_recipe(REPO / "recipes" / "meluxina" / "vllm.yaml", environ={})
    assert vllm.platform.executor == "slurm"
    service = vllm.services["llm"]
    data = os.path.expanduser("~/aifactory")  # AIFACTORY_DATA's default
    assert service.model == f"{data}/models/Llama-3.1-8B-Instruct"
    assert service.gpus_per_node == 4
    assert service.container is not None
    assert service.container.image == f"{data}/images/vllm.sif"
    assert vllm.clients["chat"].load.levels == [1, 8, 32, 64]
    assert {o.key for o in vllm.objectives("chat")} == {
        "ttft_ms.p99",
        "tpot_ms.p50",
        "output_throughput",
        "error_rate",
    }
    scratch = load_recipe(
        REPO / "recipes" / "meluxina" / "vllm.yaml", environ={"AIFACTORY_DATA": "/scratch/me"}
    )
    assert scratch.services["llm"].container.image == "/scratch/me/images/vllm.sif"  # type: ignore[union-attr]
    load_recipe(REPO / "recipes" / "llamacpp-smollm2.yaml", environ={})
    cpu = load_recipe(REPO / "recipes" / "vllm.yaml", environ={})
    assert (cpu.platform.executor, cpu.services["llm"].model) == ("local", "smollm2-135m")


def test_a_hub_id_is_not_a_path(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "{kind: llamacpp}", "{kind: vllm, model: meta-llama/Llama-3.1-8B-Instruct}"
    )
    recipe = load_recipe(write(tmp_path, text), environ={})
    assert next(iter(recipe.services.values())).model == "meta-llama/Llama-3.1-8B-Instruct"


def test_defaults_fill_a_minimal_recipe(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL), environ={})
    assert recipe.platform.executor == "local"
    assert recipe.platform.slurm.time_limit == "01:00:00"
    load = recipe.clients["chat"].load
    assert (load.mode, load.levels, load.requests, load.timeout_s) == ("concurrency", [1], 64, 300)
    assert recipe.clients["chat"].dataset.input_tokens == 128
    assert recipe.monitor.prometheus is True
    assert recipe.report.dir == "reports"
    assert recipe.slo == {}


def test_duration_alone_means_no_request_limit(tmp_path: Path) -> None:
    text = MINIMAL + "    load: {mode: rate, levels: [0.5, 2], duration_s: 30}\n"
    load = load_recipe(write(tmp_path, text), environ={}).clients["chat"].load
    assert (load.requests, load.duration_s) == (None, 30)
    both = MINIMAL + "    load: {requests: 10, duration_s: 30}\n"
    load = load_recipe(write(tmp_path, both), environ={}).clients["chat"].load
    assert (load.requests, load.duration_s) == (10, 30)


def test_yaml_11_surprises_do_not_bite(tmp_path: Path) -> None:
    text = "name: t\nplatform:\n  slurm: {time_limit: 01:30:00, setup: [module load X, 3]}\n"
    recipe = load_recipe(write(tmp_path, text), environ={})
    assert recipe.platform.slurm.time_limit == "01:30:00"  # not the sexagesimal 5400
    assert recipe.platform.slurm.setup == ["module load X", "3"]


def test_merge_keys_and_anchors_work(tmp_path: Path) -> None:
    text = """\
    name: t
    services:
      a: &base {kind: llamacpp, nodes: 2}
      b:
        <<: *base
        nodes: 3
    """
    services = load_recipe(write(tmp_path, text), environ={}).services
    assert (services["a"].nodes, services["b"].kind, services["b"].nodes) == (2, "llamacpp", 3)


# -- level names --------------------------------------------------------------------------------


def test_level_labels_and_ids() -> None:
    concurrency = Load(levels=[1, 8])
    assert concurrency.level_label(8) == "concurrency=8"
    assert concurrency.level_label(8.0) == "concurrency=8"
    assert concurrency.level_id(8.0) == "concurrency-8"
    rate = Load(mode="rate", levels=[2.5, 10])
    assert rate.level_label(2.5) == "rate=2.5"
    assert rate.level_id(2.5) == "rate-2.5"
    assert rate.level_id(10.0) == "rate-10"


# -- mistakes -----------------------------------------------------------------------------------

SERVICE = "name: t\nservices:\n  llm:\n    kind: llamacpp\n"
CLIENT = SERVICE + "clients:\n  chat:\n    kind: openai\n    service: llm\n"

ERRORS = {
    "syntax": ("name: t\nservices:\n  llm: {kind: llamacpp\nclients: {}\n", 4, "", "YAML syntax"),
    "tab-syntax": ("name: t\nservices:\n\tllm: {}\n", 3, "", "YAML syntax"),
    "unknown-key": (
        SERVICE + "    modle: smollm2-135m\n",
        5,
        "services.llm.modle",
        "did you mean 'model'",
    ),
    "unknown-top-key": ("name: t\nclient: {}\n", 2, "client", "unknown key 'client'"),
    "wrong-type": (
        CLIENT + "    load:\n      levels: [1, eight]\n",
        10,
        "clients.chat.load.levels[1]",
        "expected a number, got 'eight'",
    ),
    "integer": (
        CLIENT + "    nodes: eight\n",
        9,
        "clients.chat.nodes",
        "expected an integer, got 'eight'",
    ),
    "literal": (
        CLIENT + "    load: {mode: burst}\n",
        9,
        "clients.chat.load.mode",
        "expected one of 'concurrency', 'rate', 'replay', 'sweep', got 'burst'",
    ),
    "fractional-concurrency": (
        CLIENT + "    load:\n      levels:\n        - 1\n        - 2.5\n",
        12,
        "clients.chat.load.levels[1]",
        "whole number",
    ),
    "missing-service": (
        SERVICE + "clients:\n  chat:\n    kind: openai\n    service: nope\n",
        8,
        "clients.chat.service",
        "no service named 'nope' (services: llm)",
    ),
    "missing-kind": (
        "name: t\nservices:\n  llm:\n    model: x\n",
        3,
        "services.llm.kind",
        "required",
    ),
    "missing-name": ("\n# comment\nservices: {}\n", 3, "name", "required"),
    "silence-shorter-than-three-signs-of-life": (
        SERVICE + "platform:\n  silent_task_s: 3\n",
        6,
        "platform.silent_task_s",
        "must be at least 6",
    ),
    "missing-env": (
        SERVICE + "    model: ${MODEL_DIR}/m.gguf\n",
        5,
        "services.llm.model",
        "MODEL_DIR",
    ),
    "bad-statistic": (
        CLIENT + "slo:\n  chat:\n    ttft_ms: {p98: {max: 1}}\n",
        11,
        "slo.chat.ttft_ms.p98",
        "unknown statistic 'p98'",
    ),
    "bad-metric": (
        CLIENT + "slo:\n  chat:\n    ttft: {p99: {max: 1}}\n",
        11,
        "slo.chat.ttft",
        "unknown metric 'ttft'",
    ),
    "slo-never-reported-by-embeddings": (
        CLIENT + "    api: embeddings\nslo:\n  chat:\n    ttft_ms: {p99: {max: 1}}\n",
        12,
        "slo.chat.ttft_ms",
        "unknown metric 'ttft_ms' for a client of kind 'openai' speaking api 'embeddings'",
    ),
    "slo-never-reported-by-a-stream": (
        CLIENT + "    api: chat\nslo:\n  chat:\n    embedding_throughput: {min: 1}\n",
        12,
        "slo.chat.embedding_throughput",
        "unknown metric 'embedding_throughput' for a client of kind 'openai' speaking api 'chat'",
    ),
    "metric-of-another-kind": (
        CLIENT + "slo:\n  chat:\n    recall_at_k: {min: 0.9}\n",
        11,
        "slo.chat.recall_at_k",
        "for a client of kind 'openai'",
    ),
    "per-request-without-statistic": (
        CLIENT + "slo:\n  chat:\n    ttft_ms: {max: 100}\n",
        11,
        "slo.chat.ttft_ms.max",
        "bound a statistic",
    ),
    "per-level-with-statistic": (
        CLIENT + "slo:\n  chat:\n    error_rate: {p99: {max: 0}}\n",
        11,
        "slo.chat.error_rate",
        "bound it directly",
    ),
    "empty-bound": (
        CLIENT + "slo:\n  chat:\n    ttft_ms: {p99: {}}\n",
        11,
        "slo.chat.ttft_ms.p99",
        "max, min",
    ),
    "slo-unknown-client": (
        CLIENT + "slo:\n  chat2:\n    error_rate: {max: 0}\n",
        10,
        "slo.chat2",
        "chat",
    ),
    "command-without-command": (
        "name: t\nservices:\n  web:\n    kind: command\n",
        3,
        "services.web.command",
        "required for kind 'command'",
    ),
    "command-on-other-kind": (
        SERVICE + "    command: serve\n",
        5,
        "services.llm.command",
        "only for kind",
    ),
    "external-without-url": (
        "name: t\nservices:\n  x: {kind: external}\n",
        3,
        "services.x.url",
        "required",
    ),
    "external-bad-url": (
        "name: t\nservices:\n  x: {kind: external, url: 'ftp://h'}\n",
        3,
        "services.x.url",
        "http://host:port",
    ),
    "port": (SERVICE + "    port: 70000\n", 5, "services.llm.port", "1-65535"),
    "duplicate-key": (SERVICE + "    kind: vllm\n", 5, "services.llm.kind", "duplicate key 'kind'"),
    "not-a-mapping": ("- a\n- b\n", 1, "", "a recipe is a mapping"),
    "empty-file": ("", 1, "", "empty file"),
    "bad-name": ("name: my recipe\n", 1, "name", "letters, digits"),
    "time-limit": (
        "name: t\nplatform:\n  slurm: {time_limit: 1h}\n",
        3,
        "platform.slurm.time_limit",
        "HH:MM:SS",
    ),
    "unsupported-tag": ("name: !!python/name:os.system t\n", 1, "name", "not supported"),
    "requests-and-duration-null": (
        CLIENT + "    load: {requests: null}\n",
        9,
        "clients.chat.load.requests",
        "requests (per level) or duration_s",
    ),
    "gpu-exporter-port": (
        "name: t\nmonitor:\n  gpu_exporter_port: 94000\n",
        3,
        "monitor.gpu_exporter_port",
        "must be at most 65535, got 94000",
    ),
    "health-both": (
        "name: t\nservices:\n  w:\n    kind: command\n    command: x\n"
        "    health: {http: /, tcp: true}\n",
        6,
        "services.w.health",
        "exactly one",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_each_mistake_names_file_line_and_key(tmp_path: Path, case: str) -> None:
    text, line, key, words = ERRORS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.file == str(path)
    assert (problem.line, problem.key) == (line, key), problem
    assert words in problem.message
    where = f"{path}:{line}: {key}: " if key else f"{path}:{line}: "
    assert str(problem).startswith(where)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: t
        platform: {executor: slrum}
        services:
          llm:
            kind: llamacpp
            modle: x
          web: {kind: command}
        clients:
          chat:
            kind: openai
            service: nope
            load: {levelz: [1], mode: burst}
        slo:
          chat:
            ttft_ms: {p98: {max: 1}}
        """,
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={})
    located = [(p.line, p.key) for p in caught.value.problems]
    assert [line for line, _ in located] == sorted(line for line, _ in located)
    assert sorted(located) == [
        (2, "platform.executor"),
        (6, "services.llm.modle"),
        (7, "services.web.command"),
        (11, "clients.chat.service"),
        (12, "clients.chat.load.levelz"),
        (12, "clients.chat.load.mode"),
        (15, "slo.chat.ttft_ms.p98"),
    ]
    report = str(caught.value).splitlines()
    assert report[0] == f"invalid recipe {path}: 7 problems"
    assert report[1:] == [f"  {p}" for p in caught.value.problems]
    assert "Traceback" not in str(caught.value)


def test_a_missing_file_is_a_recipe_error(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert "no such file" in problem.message
    assert problem.line is None


def test_unknown_keys_list_what_is_expected(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, CLIENT + "    load: {levelz: [1]}\n"))
    assert problem.message.startswith(
        "unknown key 'levelz' (did you mean 'levels'? expected one of:"
    )
    assert "mode, levels, sweep, arrival" in problem.message


def test_model_validate_checks_references_too() -> None:
    document = yaml.safe_load(CLIENT.replace("service: llm", "service: nope"))
    with pytest.raises(ValidationError, match="no service named 'nope'"):
        Recipe.model_validate(document)


# -- environment variables ----------------------------------------------------------------------


def test_environment_variables_are_expanded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: ${NAME:-fallback}
        description: costs $$5, ${EMPTY:-was empty}, ${SET:-unused}
        services:
          llm:
            kind: llamacpp
            args: ["--threads", "${THREADS}"]
            nodes: ${NODES:-2}
            env: {HOME_DIR: "${HOME_DIR}"}
        clients:
          chat: {kind: openai, service: llm}
        slo:
          chat:
            ttft_ms: {p99: {max: "${TTFT_MAX:-1500}"}}
        """,
    )
    environ = {"EMPTY": "", "SET": "given", "THREADS": "4", "HOME_DIR": "/h"}
    recipe = load_recipe(path, environ=environ)
    assert recipe.name == "fallback"
    assert recipe.description == "costs $5, was empty, given"
    llm = recipe.services["llm"]
    assert (llm.args, llm.nodes, llm.env) == (["--threads", "4"], 2, {"HOME_DIR": "/h"})
    assert recipe.objectives("chat")[0].value == 1500.0


def test_every_missing_variable_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\ndescription: ${A} and ${B}\nreport: {dir: '${C'}\n")
    problems = problems_of(path)
    assert [(p.line, p.key) for p in problems] == [(2, "description")] * 2 + [(3, "report.dir")]
    assert "A is not set" in problems[0].message
    assert "B is not set" in problems[1].message
    assert "invalid '${'" in problems[2].message


def test_a_missing_variable_is_not_reported_twice(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, SERVICE + "    nodes: ${NODES}\n"))
    assert (problem.key, problem.line) == ("services.llm.nodes", 5)
    assert "NODES" in problem.message


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFACTORY_TEST_RECIPE_NAME", "from-env")
    path = write(tmp_path, "name: ${AIFACTORY_TEST_RECIPE_NAME}\n")
    assert load_recipe(path).name == "from-env"


# -- paths --------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_recipe(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    (folder / "org" / "local-model").mkdir(parents=True)
    path = write(
        folder,
        """\
        name: t
        services:
          a: {kind: llamacpp, model: ./models/a.gguf}
          b: {kind: llamacpp, model: b.gguf}
          c: {kind: llamacpp, model: smollm2-135m}
          d: {kind: vllm, model: meta-llama/Llama-3.1-8B-Instruct}
          e: {kind: vllm, model: org/local-model}
          f: {kind: llamacpp, model: /abs/f.gguf}
          g: {kind: llamacpp, model: ~/g.gguf}
          h:
            kind: vllm
            container: {image: ../images/v.sif, binds: ["data:/data", "/scratch", "~/x:/x:ro"]}
          i:
            kind: vllm
            container: {image: "docker://vllm/vllm-openai:latest"}
        """,
    )
    services = load_recipe(path, environ={}).services
    model = {name: s.model for name, s in services.items()}
    assert model["a"] == str(folder / "models" / "a.gguf")
    assert model["b"] == str(folder / "b.gguf")
    assert model["c"] == "smollm2-135m"
    assert model["d"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert model["e"] == str(folder / "org" / "local-model")
    assert model["f"] == "/abs/f.gguf"
    assert model["g"] == os.path.expanduser("~/g.gguf")
    container = services["h"].container
    assert container is not None
    assert container.image == str(tmp_path / "images" / "v.sif")
    assert container.binds == [
        f"{folder / 'data'}:/data",
        "/scratch",
        f"{os.path.expanduser('~/x')}:/x:ro",
    ]
    assert services["i"].container.image == "docker://vllm/vllm-openai:latest"  # type: ignore[union-attr]


def test_recipe_path_is_kept_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "name: t\nservices: {a: {kind: llamacpp, model: m.gguf}}\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("recipe.yaml", environ={})
    assert recipe.path == Path("recipe.yaml")
    assert recipe.services["a"].model == str(tmp_path / "m.gguf")


# -- JSON Schema --------------------------------------------------------------------------------


def test_json_schema_is_json_and_describes_the_format() -> None:
    schema = recipe_json_schema()
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    service_kinds = schema["$defs"]["Service"]["properties"]["kind"]
    assert set(service_kinds["enum"]) == set(SERVICE_KINDS)
    assert "vllm" in text
    assert "llamacpp" in text
    assert "path" not in schema["properties"]


# -- anything at all ----------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_keys = st.sampled_from(
    [
        "name",
        "services",
        "clients",
        "slo",
        "kind",
        "load",
        "levels",
        "service",
        "llm",
        "chat",
        "platform",
        "slurm",
        "container",
        "model",
        "ttft_ms",
        "p99",
        "max",
        "min",
        "port",
        "x",
    ]
) | st.text(max_size=8)
_documents = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=25,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=_documents)
def test_any_document_gives_a_recipe_or_a_recipe_error(tmp_path: Path, document: object) -> None:
    path = tmp_path / "any.yaml"
    path.write_text(yaml.safe_dump(document))
    _load_or_error(path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(
        alphabet=st.sampled_from(list("name: kind[]{},-&*!|>'\"#$\n\t x1.\\%@`")) | st.characters(),
        max_size=80,
    )
)
def test_any_text_gives_a_recipe_or_a_recipe_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "any.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _load_or_error(path)


def _load_or_error(path: Path) -> None:
    try:
        outcome: Recipe | RecipeError = load_recipe(path, environ={"X": "1"})
    except RecipeError as err:
        outcome = err
    if isinstance(outcome, RecipeError):
        assert outcome.problems
        assert all(p.file == str(path) and p.message for p in outcome.problems)
        assert str(outcome).startswith(f"invalid recipe {path}: ")
    else:
        assert isinstance(outcome, Recipe)
