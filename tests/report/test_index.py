"""The experiments dashboard: its rows, each recipe's history, the marks on it, the page and
`aifactory index`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.cluster.run_records import RunRecord, utcnow, write_run
from pytest_aifactory.report import verify_cache
from pytest_aifactory.report.index import (
    NOT_VERIFIED_WHILE_RUNNING,
    History,
    histories,
    read_rows,
)
from pytest_aifactory.report.index_html import build_index, render_index
from pytest_aifactory.report.manifest import verify_run
from tests.report.test_compare import level_test, save_run


def at(hour: int) -> str:
    return f"2026-03-0{1 + hour // 24}T{hour % 24:02d}:00:00+00:00"


def failing(test: dict[str, Any]) -> dict[str, Any]:
    """The test with its TTFT p99 objective broken."""
    slo = {
        "client": test["client"],
        "key": "ttft_ms.p99",
        "metric": "ttft_ms",
        "statistic": "p99",
        "bound": "max",
        "limit": 50.0,
        "unit": "ms",
        "value": test["per_request"]["ttft_ms"]["p99"],
        "passed": False,
        "margin": -50.0,
        "detail": "",
    }
    return {**test, "passed": False, "slo": [slo]}


def edit_summary(root: Path, change: Any) -> None:
    summary = json.loads((root / "summary.json").read_text())
    change(summary)
    (root / "summary.json").write_text(json.dumps(summary))


def by_client(found: list[History]) -> dict[tuple[str, str], History]:
    return {(h.recipe, h.client): h for h in found}


def test_a_row_per_run_latest_first_with_what_the_run_says(tmp_path: Path) -> None:
    old = save_run(tmp_path, "old", [level_test("chat", 1)], started_at=at(0))
    new = save_run(
        tmp_path,
        "new",
        [level_test("chat", 1, throughput=80.0), failing(level_test("chat", 4))],
        recipe="other",
        started_at=at(5),
    )
    edit_summary(old, lambda s: s.update(environment={"hostname": "laptop"}))
    edit_summary(new, lambda s: s.update(environment={"slurm_cluster": "meluxina"}))
    save_run(tmp_path, "old-2", [level_test("chat", 1)], started_at=at(1))
    (new / "report.html").write_text("<html></html>")
    write_run(
        RunRecord(
            run_id="new",
            run_dir=str(new),
            recipe="other",
            executor="slurm",
            driver_host="login1",
            started_at=utcnow(),
        )
    )

    rows = read_rows(tmp_path)

    assert [r.run_id for r in rows] == ["new", "old-2", "old"]
    first = rows[0]
    assert (first.recipe, first.date, first.status) == ("other", "2026-03-01", "complete")
    # from the job record, with the cluster the summary names
    assert (first.host, first.executor) == ("meluxina: login1", "slurm")
    assert (first.passed, first.failed) == (1, 1)
    assert first.report == "new/report.html"
    figures = {f.name: (f.label, f.value) for f in first.tests[0].figures}
    assert figures == {
        "throughput": ("out tok/s", 80.0),
        "p50": ("TTFT p50 (ms)", 50.0),
        "p99": ("TTFT p99 (ms)", 100.0),
    }
    assert first.tests[1].failed_objectives == ("objective ttft_ms.p99 max 50.00 ms: 100.0",)
    # without a job record: the recipe's executor and the summary's host
    assert (rows[2].host, rows[2].executor, rows[2].report) == ("laptop", "local", None)


def test_a_run_that_does_not_verify_is_listed_marked_and_left_out_of_the_history(
    tmp_path: Path,
) -> None:
    save_run(tmp_path, "a", [level_test("chat", 1)], started_at=at(0))
    edited = save_run(tmp_path, "b", [level_test("chat", 1)], started_at=at(1))
    save_run(tmp_path, "c", [level_test("chat", 1)], started_at=at(2))
    edit_summary(edited, lambda s: s["tests"][0]["per_level"].update(output_throughput=1e9))

    rows = read_rows(tmp_path)
    marked = {r.run_id: r.problems for r in rows if not r.verified}
    assert list(marked) == ["b"]
    assert "changed since the run wrote it" in marked["b"][0]
    (history,) = histories(rows)
    assert {p.run_id for p in history.points} == {"a", "c"}
    assert history.left_out == ("b",)

    page = render_index(rows, tmp_path, script="")
    (row,) = re.findall(r'<tr class="unverified"[^>]*>.*?</tr>', page, flags=re.S)
    assert 'data-sort="b"' in row
    assert "not verified" in row
    assert "changed since the run wrote it" in row
    assert "Not drawn (not verified): b." in page


def test_verifications_are_remembered_until_a_file_of_the_run_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of many large runs is not hashed whole at every session's end; an edit is
    still caught."""
    root = save_run(tmp_path, "r0", [level_test("chat", 1)], started_at=at(0))
    verified: list[Path] = []

    def counting(path: Path) -> list[str]:
        verified.append(path)
        return verify_run(path)

    monkeypatch.setattr(verify_cache, "verify_run", counting)
    assert read_rows(tmp_path)[0].verified
    assert read_rows(tmp_path)[0].verified
    assert verified == [root]

    edit_summary(root, lambda s: s["tests"][0]["per_level"].update(output_throughput=1.0))
    (row,) = read_rows(tmp_path)
    assert not row.verified
    assert "changed since the run wrote it" in row.problems[0]
    assert verified == [root, root]


def test_a_running_run_and_a_run_without_a_summary_are_listed(tmp_path: Path) -> None:
    save_run(tmp_path, "live", [level_test("chat", 1)], status="running", started_at=at(0))
    died = tmp_path / "died"
    died.mkdir(mode=0o700)
    write_run(
        RunRecord(
            run_id="died",
            run_dir=str(died),
            recipe="demo",
            executor="local",
            driver_host="h",
            started_at=utcnow(),
        )
    )
    (tmp_path / "not-a-run").mkdir()

    rows = {r.run_id: r for r in read_rows(tmp_path)}

    assert sorted(rows) == ["died", "live"]
    assert rows["live"].problems == (NOT_VERIFIED_WHILE_RUNNING,)
    assert "no such file" in rows["died"].unreadable.lower()
    assert (rows["died"].recipe, rows["died"].status) == ("demo", "running")
    page = render_index(list(rows.values()), tmp_path, script="")
    assert "unreadable" in page


def test_histories_are_per_recipe_and_client_never_mixing_recipes(tmp_path: Path) -> None:
    for hour in range(3):
        save_run(
            tmp_path,
            f"a{hour}",
            [level_test("chat", 1), level_test("batch", 1)],
            recipe="alpha",
            started_at=at(hour),
        )
        save_run(tmp_path, f"b{hour}", [level_test("chat", 1)], recipe="beta", started_at=at(hour))

    found = by_client(histories(read_rows(tmp_path)))

    assert sorted(found) == [("alpha", "batch"), ("alpha", "chat"), ("beta", "chat")]
    beta = found[("beta", "chat")]
    assert {p.run_id for p in beta.points} == {"b0", "b1", "b2"}
    assert {p.recipe for p in beta.points} == {"beta"}
    alpha = found[("alpha", "chat")]
    throughput = [p for p in alpha.points if p.figure == "throughput"]
    assert [p.run_id for p in throughput] == ["a0", "a1", "a2"]  # oldest first
    assert {p.test for p in alpha.points} == {"chat[concurrency=1]"}
    assert {p.figure for p in alpha.points} == {"throughput", "p50", "p99"}


def test_failed_objectives_and_regressions_are_marked_on_their_points(tmp_path: Path) -> None:
    save_run(tmp_path, "r0", [level_test("chat", 1, throughput=100.0)], started_at=at(0))
    save_run(tmp_path, "r1", [level_test("chat", 1, throughput=95.0)], started_at=at(1))
    # an interrupted run is drawn but never the run a regression is measured against
    save_run(
        tmp_path,
        "r2",
        [level_test("chat", 1, throughput=10.0)],
        status="interrupted",
        started_at=at(2),
    )
    save_run(tmp_path, "r3", [level_test("chat", 1, throughput=80.0)], started_at=at(3))
    save_run(
        tmp_path,
        "r4",
        [failing(level_test("chat", 1, throughput=80.0, ttft_p99=200.0))],
        started_at=at(4),
    )

    (history,) = histories(read_rows(tmp_path), tolerance=0.10)
    marks = {(p.run_id, p.figure): p for p in history.points}

    assert marks[("r1", "throughput")].flag == "ok"  # 5% worse: within the tolerance
    assert marks[("r2", "throughput")].flag == "regression"
    regression = marks[("r3", "throughput")]
    assert regression.flag == "regression"  # against r1, not the interrupted r2
    assert regression.marks == (
        "regression: output_throughput 95.00 -> 80.00 (-15.8%) against r1, beyond 10%",
    )
    assert marks[("r4", "throughput")].flag == "objective failed"  # same as r3
    assert marks[("r4", "p99")].flag == "objective failed + regression"
    assert marks[("r4", "p50")].marks[0].startswith("objective ttft_ms.p99 max")
    loose = {(p.run_id, p.figure): p.flag for p in histories(read_rows(tmp_path), 0.5)[0].points}
    assert loose[("r3", "throughput")] == "ok"


def monitored(test: dict[str, Any], **efficiency: float) -> dict[str, Any]:
    """The test with an efficiency block, as a monitored run's summary holds it."""
    return {**test, "efficiency": dict(efficiency)}


def test_efficiency_figures_are_drawn_and_judged_in_their_direction(tmp_path: Path) -> None:
    for hour, joules in enumerate((2.0, 3.0, 1.0)):
        energy_run = [monitored(level_test("chat", 1), energy_per_output_token_j=joules)]
        save_run(tmp_path, f"r{hour}", energy_run, started_at=at(hour))
    # a run on GPUs without an energy counter heads with tokens per GPU: fewer is worse
    for hour, per_gpu in enumerate((100.0, 70.0)):
        gpu_run = [monitored(level_test("gen", 1), output_throughput_per_gpu=per_gpu)]
        save_run(tmp_path, f"g{hour}", gpu_run, recipe="gpu", started_at=at(hour))
    save_run(tmp_path, "n0", [level_test("chat", 1)], recipe="plain", started_at=at(0))

    found = by_client(histories(read_rows(tmp_path), tolerance=0.10))
    energy = {p.run_id: p for p in found[("demo", "chat")].points if p.figure == "efficiency"}
    assert {run: p.value for run, p in energy.items()} == {"r0": 2.0, "r1": 3.0, "r2": 1.0}
    assert energy["r0"].label == "J/token"
    assert energy["r1"].flag == "regression"  # more energy per token: worse
    assert energy["r1"].marks == (
        "regression: efficiency.energy_per_output_token_j 2.00 -> 3.00 (+50.0%) against r0, "
        "beyond 10%",
    )
    assert energy["r2"].flag == "ok"  # less energy per token: better
    per_gpu = {p.run_id: p for p in found[("gpu", "gen")].points if p.figure == "efficiency"}
    assert per_gpu["g1"].label == "tok/s/GPU"
    assert per_gpu["g1"].flag == "regression"  # fewer tokens per GPU: worse
    assert not [p for p in found[("plain", "chat")].points if p.figure == "efficiency"]
    page = render_index(read_rows(tmp_path), tmp_path)
    assert "J/token 3.00" in page


def test_the_page_is_self_contained_escaped_and_filterable(tmp_path: Path) -> None:
    save_run(tmp_path, "x0", [level_test("chat", 1)], recipe="<b>bold</b>", started_at=at(0))
    save_run(tmp_path, "x1", [level_test("chat", 1)], recipe="<b>bold</b>", started_at=at(1))
    save_run(tmp_path, "y0", [level_test("chat", 1)], recipe="plain", started_at=at(2))

    page = build_index(tmp_path)
    text = page.read_text(encoding="utf-8")

    assert page == tmp_path / "index.html"
    assert "<b>bold</b>" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert not re.search(r"""(src|href)=["']?https?:""", markup)
    assert "<script src" not in markup
    assert len(re.findall(r"<tr [^>]*data-recipe=", text)) == 3
    for control in ("filter-recipe", "filter-status", "filter-verdict", "filter-from"):
        assert f'id="{control}"' in text
    assert text.count('<div class="chart" id="history-') == 2
    assert 'data-recipe="plain"' in text


def test_cli_index_writes_the_page_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_run(tmp_path / "reports", "r0", [level_test("chat", 1)], started_at=at(0))
    out = tmp_path / "site"
    out.mkdir()

    assert main(["index", str(tmp_path / "reports"), "-o", str(out), "--tolerance", "5%"]) == 0

    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert "r0" in (out / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "no-such-folder"], "no-such-folder: no such folder"),
        (["index", ".", "--tolerance", "lots"], "expected a percentage such as 10%"),
    ],
)
def test_cli_index_usage_errors_exit_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
