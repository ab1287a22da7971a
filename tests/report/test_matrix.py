"""A recipe's configuration matrix: expanded into one validated recipe per configuration, and
the configurations' runs set side by side (Pareto front, best configuration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.recipe import RecipeError, load_recipe
from pytest_aifactory.report.charts import to_svg
from pytest_aifactory.report.matrix import (
    USER_SPEED_AXIS,
    ConfigRun,
    best_config,
    matrix_result,
    pareto_chart,
    pareto_front,
    points,
    render_matrix_html,
)
from tests.factories import recipe_document
from tests.helpers import BENCHMARK, write_recipe

MATRIX = {"args": [["--parallel", "1"], ["--parallel", "4"]], "nodes": [1, 2]}


def matrix_recipe(tmp_path: Path, matrix: Any = MATRIX) -> Path:
    document = recipe_document(name="slots", service={"matrix": matrix})
    return write_recipe(tmp_path / "recipe.yaml", document)


def test_every_combination_is_a_configuration_with_a_name_of_its_own(tmp_path: Path) -> None:
    path = matrix_recipe(tmp_path)
    base = load_recipe(path)
    assert [c.label for c in base.matrix] == [
        "llm.args=--parallel 1, llm.nodes=1",
        "llm.args=--parallel 1, llm.nodes=2",
        "llm.args=--parallel 4, llm.nodes=1",
        "llm.args=--parallel 4, llm.nodes=2",
    ]
    assert base.matrix_config is None
    assert base.services["llm"].matrix == {}
    third = load_recipe(path, matrix_config=2)
    assert third.name == "slots-c3-parallel-4-1"
    assert third.services["llm"].args == ["--parallel", "4"]
    assert third.services["llm"].nodes == 1
    assert third.matrix_config == base.matrix[2]
    assert len({c.config_id for c in base.matrix}) == 4


@pytest.mark.parametrize(
    ("matrix", "key", "words"),
    [
        ({"nodes": [1, "two"]}, "services.llm.matrix.nodes[1]", "expected an integer"),
        ({"kind": ["vllm"]}, "services.llm.matrix.kind", "cannot vary"),
        ({"args": []}, "services.llm.matrix.args", "non-empty list"),
        ([1, 2], "services.llm.matrix", "mapping of service keys"),
    ],
)
def test_a_bad_configuration_is_named_before_anything_runs(
    tmp_path: Path, matrix: Any, key: str, words: str
) -> None:
    with pytest.raises(RecipeError) as raised:
        load_recipe(matrix_recipe(tmp_path, matrix))
    (problem,) = raised.value.problems
    assert problem.key == key
    assert words in problem.message
    assert problem.line > 0


def test_a_configuration_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no configuration 4: its matrix has 4"):
        load_recipe(matrix_recipe(tmp_path), matrix_config=4)


def test_pytest_asks_which_configuration(tmp_path: Path) -> None:
    path = matrix_recipe(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCHMARK), "--recipe", str(path), "--co", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 4, done.stdout + done.stderr
    assert "configuration matrix of 4" in done.stderr
    assert "aifactory matrix" in done.stderr
    assert "Traceback" not in done.stderr


def test_side_by_side_needs_slurm(tmp_path: Path) -> None:
    recipe = matrix_recipe(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pytest_aifactory.cli", "matrix", str(recipe), "--side-by-side"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs the slurm executor" in done.stderr
    assert not (tmp_path / "reports").exists()


def summary(
    config: int, throughputs: list[float], ttfts: list[float], **extra: Any
) -> dict[str, Any]:
    tests = [
        {
            "client": "chat",
            "kind": "openai",
            "level_label": f"concurrency={level}",
            "passed": extra.get("passed", True),
            "per_level": {"output_throughput": throughput},
            "per_request": {"ttft_ms": {"p50": ttft, "p99": ttft * 2}, "tpot_ms": {"p50": tpot}},
        }
        for level, throughput, ttft, tpot in zip(
            (1, 2, 4), throughputs, ttfts, extra.get("tpots", (20.0, 20.0, 20.0)), strict=True
        )
    ]
    service = {"kind": "llamacpp", "nodes": extra.get("nodes", 1)}
    if "gpus" in extra:
        service["gpus_per_node"] = extra["gpus"]
    return {
        "run_id": f"run-{config}",
        "verdict": "pass" if extra.get("passed", True) else "fail",
        "recipe": {
            "document": {"services": {"llm": service}, "clients": {"chat": {"service": "llm"}}}
        },
        "tests": tests,
    }


def runs() -> list[ConfigRun]:
    return [
        ConfigRun(0, "c1", "one slot", None, summary(0, [40, 45, 46], [50, 120, 400]), 0),
        ConfigRun(1, "c2", "four slots", None, summary(1, [42, 80, 120], [60, 70, 150]), 0),
        # the fastest of all, but it broke an objective
        ConfigRun(
            2, "c3", "eight slots", None, summary(2, [50, 90, 200], [55, 65, 90], passed=False), 1
        ),
    ]


def test_the_front_holds_what_nothing_beats_on_both_and_the_best_met_every_objective() -> None:
    frame = points(runs())
    assert len(frame) == 9
    on_front = frame[pareto_front(frame)]
    assert set(on_front["config_id"]) == {"c1", "c3"}  # c3 beats c2 everywhere
    best = best_config(runs(), frame)
    assert best is not None
    assert best.config_id == "c2"
    result = matrix_result("slots", runs())
    assert result["best"] == {"id": "c2", "label": "four slots"}
    by_id = {c["id"]: c for c in result["configurations"]}
    assert by_id["c2"]["peak_throughput_per_unit"] == 120
    assert by_id["c2"]["peak_level"] == "concurrency=4"
    assert by_id["c3"]["verdict"] == "fail"


def test_a_second_front_sets_throughput_against_each_user_s_speed() -> None:
    configs = [
        # one slot: each user streams fast, the node serves little
        ConfigRun(
            0, "c1", "one slot", None, summary(0, [40, 45, 46], [50, 60, 70], tpots=[10, 10, 10]), 0
        ),
        # four slots: slower per user, more in all; its level 1 is beaten by c1's on both
        ConfigRun(
            1,
            "c2",
            "four slots",
            None,
            summary(1, [30, 80, 120], [60, 70, 150], tpots=[20, 25, 40]),
            0,
        ),
    ]
    frame = points(configs)
    on_front = frame[pareto_front(frame, USER_SPEED_AXIS)]
    assert sorted(zip(on_front["config_id"], on_front["level"], strict=True)) == [
        ("c1", "concurrency=4"),
        ("c2", "concurrency=2"),
        ("c2", "concurrency=4"),
    ]
    result = matrix_result("slots", configs)
    flagged = {(p["config_id"], p["level"]) for p in result["points"] if p["on_user_front"]}
    assert flagged == set(zip(on_front["config_id"], on_front["level"], strict=True))
    chart = pareto_chart(pd.DataFrame(result["points"]), USER_SPEED_AXIS)
    assert chart is not None
    assert "tokens/s per user" in to_svg(chart)
    assert render_matrix_html(result, {}).count("data-spec='chart-") == 2


def test_throughput_is_per_gpu_where_the_service_has_gpus() -> None:
    both = [
        ConfigRun(0, "tp1", "tp 1", None, summary(0, [100, 100, 100], [50, 50, 50], gpus=1), 0),
        ConfigRun(
            1, "tp4", "tp 4", None, summary(1, [300, 300, 300], [40, 40, 40], gpus=4, nodes=1), 0
        ),
    ]
    frame = points(both)
    assert set(frame["unit"]) == {"GPU"}
    per_gpu = frame.groupby("config_id")["throughput_per_unit"].max().to_dict()
    assert per_gpu == {"tp1": 100.0, "tp4": 75.0}
    best = best_config(both, frame)
    assert best is not None
    assert best.config_id == "tp1"


def test_no_best_when_no_configuration_met_every_objective() -> None:
    failing = [r for r in runs() if r.config_id == "c3"]
    assert best_config(failing, points(failing)) is None
    page = render_matrix_html(matrix_result("slots", failing), {})
    assert "No configuration met every objective" in page


def test_the_page_names_the_best_and_its_chart_draws() -> None:
    result = matrix_result("slots", runs())
    page = render_matrix_html(result, {"c2": "../run-1/report.html"})
    assert "<b>Best configuration:</b> four slots" in page
    assert "href='../run-1/report.html'" in page
    frame = pd.DataFrame(result["points"])
    chart = pareto_chart(frame)
    assert chart is not None
    svg = to_svg(chart)
    assert svg.startswith("<svg")
    assert "TTFT p50 (ms)" in svg
