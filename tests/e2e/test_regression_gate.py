"""The regression gate against the real llama-server: one server slot instead of four, at a
concurrency of four, makes three of every four requests wait for a slot, so the time to first
token rises whatever the CPU, and `--fail-on-regression` fails that session naming the metric;
the way back (four slots after one) passes the gate. The `aifactory compare` command gives the
same verdicts on the saved runs.

Throughput is no such certainty: whether four slots decoding together beat one depends on the
CPU (bound by reading the weights, as on a GPU, or by arithmetic), so it is not what is gated.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cli import main
from tests.helpers import Session, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]

CONCURRENCY = 4
METRIC = "ttft_ms.p50"
GATE = f"{METRIC}:20%"


def recipe_document(slots: int) -> dict[str, Any]:
    """The same recipe (same name: `--compare=last` finds the previous run) but for the number of
    llama-server slots serving the requests."""
    return {
        "name": "gate-smollm2",
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                # one thread: two threads spinning on a busy 2-core machine stall at random
                "args": ["--parallel", str(slots), "--threads", "1"],
                "health_timeout_s": 120,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                # short prompts, longer answers: a request waiting for the one slot waits long
                "dataset": {"kind": "random", "input_tokens": 8, "output_tokens": 48},
                "load": {
                    "mode": "concurrency",
                    "levels": [CONCURRENCY],
                    "requests": 12,
                    "warmup_requests": 2,
                },
            }
        },
        "monitor": {"prometheus": False},
    }


@dataclass
class Runs:
    folder: Path
    sessions: dict[str, Session]
    roots: dict[str, Path]

    def ttft_p50(self, name: str) -> float:
        summary = json.loads((self.roots[name] / "summary.json").read_text())
        (test,) = summary["tests"]
        return float(test["per_request"]["ttft_ms"]["p50"])

    def measured(self) -> str:
        return ", ".join(f"{n}: TTFT p50 {self.ttft_p50(n):.0f} ms" for n in self.roots)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """In one report folder: A with 4 slots, B with 1 slot gated against A, C with 4 slots
    gated against B."""
    tmp = tmp_path_factory.mktemp("gate")
    many = write_recipe(tmp / "slots-4.yaml", recipe_document(CONCURRENCY))
    one = write_recipe(tmp / "slots-1.yaml", recipe_document(1))
    gate = ("--compare=last", "--fail-on-regression", GATE)
    sessions: dict[str, Session] = {}
    roots: dict[str, Path] = {}
    for name, recipe, args in (("A", many, ()), ("B", one, gate), ("C", many, gate)):
        before = {p.name for p in (tmp / "reports").glob("*")}
        sessions[name] = run_benchmark(tmp, recipe, *args, timeout=300)
        (new,) = [p for p in (tmp / "reports").iterdir() if p.is_dir() and p.name not in before]
        roots[name] = new
    return Runs(tmp / "reports", sessions, roots)


def test_fewer_slots_fail_the_session_naming_the_metric(runs: Runs) -> None:
    first, session = runs.sessions["A"], runs.sessions["B"]
    assert first.returncode == 0, first.output
    assert runs.ttft_p50("B") > 1.2 * runs.ttft_p50("A"), runs.measured()
    # every test passed its SLOs: only the gate fails the session
    assert "1 passed" in session.stdout, session.output
    assert session.returncode == 1, session.output
    assert f"aifactory: compared with {runs.roots['A'].name}" in session.stdout
    assert f"REGRESSION: 1 value(s) worse than tolerated: {METRIC}" in session.stdout
    found = f"chat[concurrency=4] {METRIC}: "
    line = next(ln for ln in session.stdout.splitlines() if ln.strip().startswith(found))
    assert line.rstrip().endswith("worse than the 20% tolerance and than the noise)"), line
    # every gated metric is said with its change, its interval and why it counts
    gate = next(ln for ln in session.stdout.splitlines() if ln.startswith("gate: "))
    assert gate.rstrip().endswith("excludes no change: regressed"), gate
    page = runs.roots["B"] / f"compare-{runs.roots['A'].name}.html"
    assert page.is_file()
    assert runs.roots["A"].name in page.read_text()
    assert "Traceback" not in session.output


def test_more_slots_after_fewer_pass_the_gate(runs: Runs) -> None:
    session = runs.sessions["C"]
    # the premise, in the gate's own terms: C is not worse than B by more than the tolerance
    assert runs.ttft_p50("C") <= 1.2 * runs.ttft_p50("B"), runs.measured()
    assert session.returncode == 0, session.output
    assert f"aifactory: compared with {runs.roots['B'].name}" in session.stdout
    assert f"no regression beyond the tolerances ({GATE})" in session.stdout
    assert "REGRESSION" not in session.stdout


def test_the_compare_command_gives_the_same_verdicts(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = (str(runs.roots[n]) for n in "AB")
    assert main(["compare", a, b, "--no-html", "--fail-on-regression", GATE]) == 1
    out, err = capsys.readouterr()
    assert f"REGRESSION {runs.roots['B'].name}: chat[concurrency=4] {METRIC}: " in out
    assert f"1 regression(s) beyond tolerance: {METRIC}" in err
    # runs named by id, as the run index knows them
    ids = [runs.roots["B"].name, runs.roots["C"].name]
    assert main(["compare", *ids, "--no-html", "--fail-on-regression", GATE]) == 0
    out = capsys.readouterr().out
    assert "no regression beyond the tolerances" in out
    assert f"A (baseline)  {ids[0]}" in out


def test_a_run_altered_after_it_was_written_is_not_compared(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the real runs carry a manifest of their data files
    manifest = json.loads((runs.roots["A"] / "manifest.json").read_text())
    assert {"summary.json", "records.parquet", "benchmark.json"} <= set(manifest["files"])
    altered = tmp_path / runs.roots["A"].name
    shutil.copytree(runs.roots["A"], altered)
    records = altered / "records.parquet"
    records.write_bytes(records.read_bytes()[:-100])  # a torn copy
    assert main(["compare", str(altered), str(runs.roots["B"]), "--no-html"]) == 2
    err = capsys.readouterr().err
    assert "records.parquet: changed since the run wrote it" in err
    assert "Traceback" not in err
