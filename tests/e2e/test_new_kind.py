"""A client kind added from one module, with no file of the project edited: registered through
the `pytest_aifactory.kinds` entry point group as another package would, it validates in the
recipe, runs against a real HTTP server, and gets a verdict, a summary and the report's headline
figures like a shipped kind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import processes_matching, run_benchmark, write_recipe

pytestmark = pytest.mark.slow

KIND_MODULE = Path(__file__).resolve().parent.parent / "data" / "http_get_kind.py"
BENCHMARK = """
from pytest_aifactory import CaseResult, LoadCase, assert_slos


def test_http(aifactory_load, load_case: LoadCase) -> None:
    result: CaseResult = aifactory_load(load_case)
    assert_slos(result)
"""


def installed_kind(site: Path) -> dict[str, str]:
    """The kind's module on a path of its own with the metadata of an installed distribution,
    and the environment that makes Python find it."""
    site.mkdir()
    shutil.copy(KIND_MODULE, site / "http_get_kind.py")
    info = site / "http_get_kind-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: http-get-kind\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest_aifactory.kinds]\nhttp_get = http_get_kind\n")
    return {"PYTHONPATH": str(site)}


def recipe_document(page_bytes: int) -> dict[str, object]:
    served = {
        "kind": "command",
        "command": f"{sys.executable} -m http.server {{port}} --bind {{host}}",
    }
    load = {"mode": "concurrency", "levels": [1, 2], "requests": 30, "warmup_requests": 2}
    return {
        "name": "new-kind",
        "services": {"web": served},
        "clients": {
            "pages": {
                "kind": "http_get",
                "service": "web",
                "http_get": {"path": "/page.html", "expect_bytes": page_bytes},
                "load": load,
            },
            "impossible": {
                "kind": "http_get",
                "service": "web",
                "http_get": {"path": "/page.html"},
                "load": {"mode": "concurrency", "levels": [1], "requests": 10},
            },
        },
        "slo": {
            "pages": {"latency_ms": {"p99": {"max": 10_000}}, "error_rate": {"max": 0}},
            "impossible": {"gets_s": {"min": 1_000_000_000}},
        },
        "monitor": {"prometheus": False},
    }


def test_a_kind_from_one_module_runs_end_to_end(tmp_path: Path) -> None:
    env = installed_kind(tmp_path / "site")
    page = b"<html>" + b"x" * 1000 + b"</html>"
    (tmp_path / "page.html").write_bytes(page)  # http.server serves its working directory
    recipe = write_recipe(tmp_path / "new-kind.yaml", recipe_document(len(page)))
    benchmark = tmp_path / "test_http_kind.py"
    benchmark.write_text(BENCHMARK)

    validate = subprocess.run(
        [sys.executable, "-m", "pytest_aifactory.cli", "recipe", "validate", str(recipe)],
        capture_output=True, text=True, env={**_env(), **env}, check=False,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stdout + validate.stderr

    session = run_benchmark(tmp_path, recipe, "-rA", timeout=300, env=env, benchmark=benchmark)
    output = session.output
    passed, failed = session.verdicts()
    assert passed == {"test_http[pages-concurrency-1]", "test_http[pages-concurrency-2]"}, output
    assert failed == ["test_http[impossible-concurrency-1]"], output[-4000:]
    assert "gets_s" in output, output[-4000:]
    assert "< min 1000000000" in output, output[-4000:]
    assert "GET/s" in output  # the closing table speaks the kind's headline

    tests = {t["test_id"]: t for t in session.summary()["tests"]}
    pages = [t for t in tests.values() if t["client"] == "pages"]
    assert len(pages) == 2
    for test in pages:
        assert test["kind"] == "http_get"
        assert test["counts"]["completed"] == test["counts"]["sent"] == 30
        assert test["per_level"]["gets_s"] == pytest.approx(test["per_level"]["request_throughput"])
        assert test["per_level"]["gets_s"] > 0
        assert test["per_request"]["latency_ms"]["p50"] > 0
    (run,) = session.run_dirs()
    report = (run / "report.html").read_text()
    assert "GET/s" in report
    assert "gets_s" in report
    assert not processes_matching(str(tmp_path))


def test_a_kind_nobody_registered_is_a_recipe_error(tmp_path: Path) -> None:
    document = recipe_document(1)
    recipe = write_recipe(tmp_path / "unknown-kind.yaml", document)
    validate = subprocess.run(
        [sys.executable, "-m", "pytest_aifactory.cli", "recipe", "validate", str(recipe)],
        capture_output=True, text=True, env=_env(), check=False,
    )  # fmt: skip
    assert validate.returncode != 0
    assert "http_get" in validate.stdout + validate.stderr
    assert "Traceback" not in validate.stdout + validate.stderr


def _env() -> dict[str, str]:
    return dict(os.environ)
