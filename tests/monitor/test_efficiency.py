"""Efficiency figures of a test: energy, GPUs and CPU time against what the clients delivered,
from the window's node and GPU samples (built here as monitoring stores them)."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.monitor.efficiency import (
    FIGURES,
    LoadWindow,
    Placement,
    covered_increase,
    covered_integral,
    efficiency,
    efficiency_figures,
    load_window,
    merged_spans,
    service_placement,
)
from pytest_aifactory.monitor.series import GPU_SERIES, NODE_LABEL, NODE_SERIES
from pytest_aifactory.monitor.window import sample_rows, to_frame
from pytest_aifactory.report.headline import efficiency_headline
from pytest_aifactory.report.html_report import efficiency_table, level_section, overview_table
from pytest_aifactory.testing import dcgm_exporter

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
SERIES = {s.name: s for s in (*NODE_SERIES, *GPU_SERIES)}
NODE = "gpu01"
PLACEMENT = Placement("llm", frozenset({NODE}), frozenset({"10.0.0.1"}))
TIMES = [float(t) for t in range(11)]
"""Scrapes at 0, 1, ..., 10 s; the test windows below lie inside."""


def frame(
    series: str,
    sub_series: list[tuple[dict[str, str], Callable[[float], float]]],
    times: list[float] = TIMES,
    node: str = NODE,
    instance: str = "10.0.0.1:9400",
) -> pd.DataFrame:
    """Samples of one series as the run stores them: each sub-series' labels and its value at
    each scrape time."""
    found = [
        ({NODE_LABEL: node, "instance": instance, **labels}, [(t, value(t)) for t in times])
        for labels, value in sub_series
    ]
    return to_frame(sample_rows(SERIES[series], found, "prometheus"), "test-1")


def gpus(
    series: str,
    value: Callable[[int, float], float],
    count: int = 2,
    node: str = NODE,
    instance: str = "10.0.0.1:9400",
) -> pd.DataFrame:
    def of(gpu: int) -> Callable[[float], float]:
        return lambda t: value(gpu, t)

    subs = [({"gpu": str(g), "UUID": f"GPU-{g}"}, of(g)) for g in range(count)]
    return frame(series, subs, node=node, instance=instance)


def energy_counter(
    watts: float, count: int = 2, node: str = NODE, instance: str = "10.0.0.1:9400"
) -> pd.DataFrame:
    """Each GPU drawing `watts` steadily: its counter (mJ) grows by 1000 x watts a second."""
    return gpus(
        "gpu_energy_millijoules", lambda g, t: 5e6 + 1000 * watts * t, count, node, instance
    )


def power(watts: Callable[[float], float], count: int = 2) -> pd.DataFrame:
    return gpus("gpu_power_watts", lambda g, t: watts(t), count)


def cpu_seconds(busy_per_cpu: dict[str, float], cpus: int = 2) -> pd.DataFrame:
    """The node exporter's CPU counters: per CPU, each mode growing by its share a second."""

    def growing(share: float) -> Callable[[float], float]:
        return lambda t: 100 + share * t

    subs = [
        ({"cpu": str(c), "mode": mode}, growing(share))
        for c in range(cpus)
        for mode, share in busy_per_cpu.items()
    ]
    return frame("node_cpu_seconds", subs)


def window(
    start: float = 2.5,
    end: float = 7.5,
    tokens: float | None = 1000,
    requests: int = 10,
    throughput: float | None = 200.0,
) -> LoadWindow:
    return LoadWindow(((start, end),), tokens, requests, throughput)


# -- counters and gauges over a window ------------------------------------------------------------


def test_a_counter_s_edges_are_interpolated_between_scrapes() -> None:
    rows = energy_counter(100.0, count=1)
    # 100 W for 5 s: 500 J, not the 700 J from the scrapes around the window (2 to 8 s)
    assert covered_increase(rows, [(2.5, 7.5)]) == pytest.approx(500_000)


def test_a_counter_that_restarts_counts_the_value_after_the_drop_in_full() -> None:
    def restarted(t: float) -> float:
        return 1000 + 10 * t if t < 5 else 4 + 10 * (t - 5)

    rows = frame("gpu_energy_millijoules", [({"gpu": "0"}, restarted)])
    # 1040 at 4 s, 4 at 5 s: a restart, whose 4 count in full; then 10 a second to 7.5 s
    assert covered_increase(rows, [(4.0, 7.5)]) == pytest.approx(4 + 10 * 2.5)


def test_a_sub_series_that_does_not_cover_the_window_voids_the_sum() -> None:
    late = frame("gpu_energy_millijoules", [({"gpu": "1"}, lambda t: 10 * t)], times=TIMES[4:])
    rows = pd.concat([energy_counter(100.0, count=1), late])
    assert covered_increase(rows, [(2.5, 7.5)]) is None
    assert covered_increase(rows, [(4.0, 7.5)]) is not None
    assert covered_increase(rows.iloc[:0], [(2.5, 7.5)]) is None


def test_a_gauge_is_integrated_by_trapezoids_over_the_window() -> None:
    rows = power(lambda t: 100 + 10 * t, count=1)
    # a straight line: the trapezoids are exact, 100 + 10 t over [2.5, 7.5]
    assert covered_integral(rows, [(2.5, 7.5)]) == pytest.approx(100 * 5 + 5 * (7.5**2 - 2.5**2))


def test_spans_count_only_their_own_time() -> None:
    rows = energy_counter(100.0, count=1)
    assert covered_increase(rows, [(1.0, 2.0), (6.0, 9.0)]) == pytest.approx(100_000 * 4)
    assert covered_integral(power(lambda t: 50.0, count=1), [(1.0, 2.0), (6.0, 9.0)]) == (
        pytest.approx(50 * 4)
    )
    assert merged_spans([(6, 9), (1, 2), (1.5, 3), (4, 4)]) == ((1.0, 3.0), (6.0, 9.0))


# -- energy ---------------------------------------------------------------------------------------


def test_energy_per_token_and_request_from_the_counter() -> None:
    samples = pd.concat([energy_counter(150.0), power(lambda t: 999.0)])
    figures = efficiency(samples, window(), PLACEMENT)
    assert figures is not None
    assert figures["energy_source"] == "counter"
    joules = 2 * 150.0 * 5  # two GPUs, 5 s: the counter wins over a disagreeing power gauge
    assert figures["energy_j"] == pytest.approx(joules)
    assert figures["average_power_w"] == pytest.approx(300.0)
    assert figures["energy_per_output_token_j"] == pytest.approx(joules / 1000)
    assert figures["energy_per_request_j"] == pytest.approx(joules / 10)
    assert "notes" not in figures


def test_without_the_counter_power_is_integrated_over_time() -> None:
    figures = efficiency(power(lambda t: 200.0 + 20 * t), window(), PLACEMENT)
    assert figures is not None
    assert figures["energy_source"] == "power x time"
    joules = 2 * (200 * 5 + 10 * (7.5**2 - 2.5**2))
    assert figures["energy_per_output_token_j"] == pytest.approx(joules / 1000)
    assert "notes" not in figures


def test_a_counter_short_of_the_window_gives_way_to_power_and_says_so() -> None:
    short = energy_counter(150.0)
    short = short[short["timestamp"] <= 6]
    figures = efficiency(pd.concat([short, power(lambda t: 200.0)]), window(), PLACEMENT)
    assert figures is not None
    assert figures["energy_source"] == "power x time"
    assert figures["energy_j"] == pytest.approx(2 * 200 * 5)
    assert any("counter does not cover" in note for note in figures["notes"])


def test_gpu_series_short_of_the_window_give_no_energy_figure() -> None:
    short = power(lambda t: 200.0)
    figures = efficiency(short[short["timestamp"] <= 6], window(), PLACEMENT)
    assert figures is not None  # the GPUs are still counted
    assert not {"energy_j", "energy_per_output_token_j", "energy_source"} & set(figures)
    assert any("no energy figure" in note for note in figures["notes"])


def test_gpus_of_other_nodes_are_not_the_service_s() -> None:
    """The client's node (another host) has GPUs too: neither its energy nor its GPUs count."""
    other = energy_counter(1000.0, count=4, node="cpu07", instance="10.0.0.7:9400")
    figures = efficiency(pd.concat([energy_counter(150.0), other]), window(), PLACEMENT)
    assert figures is not None
    assert figures["gpus"] == 2
    assert figures["energy_j"] == pytest.approx(2 * 150.0 * 5)


def test_a_rank_s_node_is_known_by_its_address() -> None:
    """A multi-node service's other rank: its node name is not the endpoint's, its address is."""
    rank = energy_counter(100.0, node="gpu02", instance="10.0.0.2:9400")
    two_nodes = Placement("llm", frozenset({NODE}), frozenset({"10.0.0.1", "10.0.0.2"}))
    figures = efficiency(pd.concat([energy_counter(100.0), rank]), window(), two_nodes)
    assert figures is not None
    assert (figures["gpus"], figures["nodes"]) == (4, 2)
    assert figures["energy_j"] == pytest.approx(4 * 100.0 * 5)


# -- per GPU and per node -------------------------------------------------------------------------


def test_throughput_per_gpu_seen_and_per_node() -> None:
    figures = efficiency(energy_counter(100.0, count=4), window(throughput=200.0), PLACEMENT)
    assert figures is not None
    assert (figures["gpus"], figures["gpus_from"], figures["nodes"]) == (4, "DCGM series", 1)
    assert figures["output_throughput_per_gpu"] == pytest.approx(50.0)
    assert figures["output_throughput_per_node"] == pytest.approx(200.0)


def test_without_gpu_series_the_recipe_s_gpus_times_nodes() -> None:
    declared = Placement("llm", frozenset({"a", "b"}), frozenset(), gpus_per_node=4)
    figures = efficiency(to_frame([], "t"), window(throughput=400.0), declared)
    assert figures is not None
    assert (figures["gpus"], figures["gpus_from"], figures["nodes"]) == (8, "recipe", 2)
    assert figures["output_throughput_per_gpu"] == pytest.approx(50.0)
    assert figures["output_throughput_per_node"] == pytest.approx(200.0)
    assert "energy_j" not in figures


def test_more_gpus_seen_than_asked_for_is_said() -> None:
    declared = Placement("llm", frozenset({NODE}), frozenset(), gpus_per_node=1)
    figures = efficiency(energy_counter(100.0, count=8), window(), declared)
    assert figures is not None
    assert figures["gpus"] == 8
    assert any("8 GPUs, the recipe asked for 1" in note for note in figures["notes"])


# -- CPU time -------------------------------------------------------------------------------------


def test_cpu_seconds_count_every_mode_but_idle() -> None:
    modes = {"user": 0.5, "system": 0.25, "idle": 0.2, "iowait": 0.05}
    figures = efficiency(cpu_seconds(modes, cpus=2), window(tokens=1000, requests=10), PLACEMENT)
    assert figures is not None
    busy = 2 * (0.5 + 0.25) * 5  # two CPUs, 5 s; idle and iowait are no work
    assert figures["cpu_seconds"] == pytest.approx(busy)
    assert figures["busy_cores"] == pytest.approx(1.5)
    assert figures["node_cpus"] == 2
    assert figures["busy_cores"] <= figures["node_cpus"]
    assert figures["cpu_seconds_per_output_token"] == pytest.approx(busy / 1000)
    assert figures["cpu_seconds_per_request"] == pytest.approx(busy / 10)
    assert "gpus" not in figures
    assert "energy_j" not in figures


# -- absent series, absent counts -----------------------------------------------------------------


def test_no_series_and_no_throughput_give_no_figures() -> None:
    assert efficiency(to_frame([], "t"), window(throughput=None), PLACEMENT) is None
    load1 = frame("node_load1", [({}, lambda t: 1.0)])
    assert efficiency(load1, window(throughput=None), PLACEMENT) is None


def test_no_tokens_no_per_token_figures() -> None:
    """A kind without tokens (a vector database): per request only."""
    samples = pd.concat([energy_counter(100.0), cpu_seconds({"user": 1.0})])
    figures = efficiency(samples, window(tokens=None, requests=5, throughput=None), PLACEMENT)
    assert figures is not None
    assert figures["energy_per_request_j"] == pytest.approx(2 * 100 * 5 / 5)
    assert "cpu_seconds_per_request" in figures
    assert not [key for key in figures if "token" in key or "throughput" in key]


def test_every_figure_is_finite() -> None:
    """No request completed: per-request figures are left out, not infinite."""
    figures = efficiency(energy_counter(100.0), window(tokens=0, requests=0), PLACEMENT)
    assert figures is not None
    assert "energy_per_request_j" not in figures
    assert "energy_per_output_token_j" not in figures
    assert all(math.isfinite(value) for value in figures.values() if isinstance(value, int | float))


# -- the window from the records ------------------------------------------------------------------


def records(rows: list[tuple[str, float, float, int, str | None, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["phase", "send_ts", "end_ts", "output_tokens", "error", "repeat"]
    )


def test_the_window_is_the_measured_requests_one_span_per_repeat() -> None:
    found = load_window(
        records(
            [
                ("warmup", 0.0, 1.0, 64, None, 0),
                ("measure", 2.0, 4.0, 64, None, 0),
                ("measure", 2.5, 5.0, 10, "HTTPError: 503", 0),
                ("measure", 20.0, 22.0, 64, None, 1),
                ("measure", 21.0, 23.0, 64, None, 1),
            ]
        ),
        {"output_throughput": 70.0},
    )
    assert found is not None
    # the failed request's time counts (the server worked on it), its tokens do not
    assert found.spans == ((2.0, 5.0), (20.0, 23.0))
    assert found.duration_s == 6.0
    assert (found.output_tokens, found.requests, found.output_throughput) == (192, 3, 70.0)


def test_no_measured_requests_no_window() -> None:
    assert load_window(records([("warmup", 0.0, 1.0, 64, None, 0)])) is None


# -- where the service ran ------------------------------------------------------------------------


def endpoint(name: str, node: str, host: str, **kw: object) -> Endpoint:
    return Endpoint(name, "vllm", host, 8000, f"http://{host}:8000", None, None, node, **kw)  # type: ignore[arg-type]


def test_the_placement_holds_every_replica_and_rank() -> None:
    head = endpoint("llm", "gpu01", "10.0.0.1", nodes=["10.0.0.1:8000", "10.0.0.2:8001"])
    head.more_replicas = [endpoint("llm", "gpu03", "10.0.0.3")]
    placement = service_placement(head, gpus_per_node=4)
    assert placement.nodes == {"gpu01", "gpu03"}
    assert placement.hosts == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert (placement.node_count, placement.gpus_per_node) == (3, 4)


def test_replicas_on_one_machine_are_one_node() -> None:
    head = endpoint("llm", "laptop", "127.0.0.1")
    head.more_replicas = [endpoint("llm", "laptop", "127.0.0.1")]
    assert service_placement(head).node_count == 1


def test_an_external_service_s_nodes_are_not_the_run_s() -> None:
    outside = Endpoint("llm", "external", "10.9.9.9", 80, "http://10.9.9.9", None, None)
    load = records([("measure", 2.0, 4.0, 64, None, 0)])
    summary = {"per_level": {"output_throughput": 32.0}}
    assert efficiency_figures(energy_counter(100.0), load, summary, outside) is None
    ours = endpoint("llm", NODE, "10.0.0.1")
    figures = efficiency_figures(energy_counter(100.0), load, summary, ours)
    assert figures is not None
    assert figures["energy_j"] == pytest.approx(2 * 100.0 * 2)


# -- the stand-in exporter and the docs ----------------------------------------------------------


def _values(text: str, metric: str) -> list[float]:
    return [float(v) for v in re.findall(rf"^{metric}{{[^}}]*}} (\S+)$", text, re.MULTILINE)]


def test_the_stand_in_s_energy_counter_is_its_power_integrated() -> None:
    """The DCGM stand-in (a test double: this machine has no GPU) keeps energy and power
    consistent, so a run's energy per token can be checked against what it served."""
    since = time.time() - 50
    start, end = since + 10, since + 16
    before = dcgm_exporter.exposition(2, start, since)
    after = dcgm_exporter.exposition(2, end, since)
    energy = dcgm_exporter.ENERGY
    assert f"# TYPE {energy} counter" in before
    steps = 6000
    for gpu, (a, b) in enumerate(zip(_values(before, energy), _values(after, energy), strict=True)):
        integral = sum(
            dcgm_exporter.power_w(gpu, start + (i + 0.5) * (end - start) / steps)
            for i in range(steps)
        ) * ((end - start) / steps)
        assert (b - a) / 1000 == pytest.approx(integral, abs=0.01)
        assert b - a == pytest.approx(
            dcgm_exporter.energy_mj(gpu, end, since) - dcgm_exporter.energy_mj(gpu, start, since),
            abs=1,
        )
    assert energy not in dcgm_exporter.exposition(2, end, since, energy=False)


def test_every_figure_is_documented() -> None:
    page = DOCS.read_text(encoding="utf-8")
    assert "## Efficiency" in page
    section = page.split("## Efficiency", 1)[1]
    missing = [info.key for info in FIGURES if f"`{info.key}`" not in section]
    missing += [key for key in ("energy_source", "gpus_from", "node_cpus") if key not in section]
    assert not missing, f"docs/metrics.md's Efficiency section lacks: {missing}"


def test_summary_keys_are_json() -> None:
    figures = efficiency(
        pd.concat([energy_counter(100.0), cpu_seconds({"user": 1.0})]), window(), PLACEMENT
    )
    assert figures is not None
    assert json.loads(json.dumps(figures, allow_nan=False)) == figures


# -- the report -----------------------------------------------------------------------------------


def test_a_test_s_report_section_shows_its_figures_and_their_basis() -> None:
    samples = pd.concat([energy_counter(150.0), cpu_seconds({"user": 0.5, "idle": 0.5})])
    figures = efficiency(samples, window(), PLACEMENT)
    test = {"test_id": "t1", "name": "test_serving[chat-1]", "efficiency": figures}
    page = level_section(test, "t1", [])
    assert "<h4>Efficiency</h4>" in page
    assert 'GPU energy per output token</td><td class="num">1.5</td><td>J/token' in page
    assert "busy CPU time per output token" in page
    assert "2 GPU(s) from the DCGM series; energy by counter" in page
    assert efficiency_table({"test_id": "t2"}) == ""


def test_the_overview_has_an_efficiency_column_only_when_a_test_has_figures() -> None:
    plain = {"test_id": "t1", "kind": "openai", "per_level": {"output_throughput": 10.0}}
    assert "Efficiency" not in overview_table([plain], {})
    measured = {**plain, "test_id": "t2", "efficiency": {"output_throughput_per_gpu": 5.0}}
    page = overview_table([plain, measured], {})
    assert "<th>Efficiency</th>" in page
    assert "5 tok/s/GPU" in page
    both = {"energy_per_output_token_j": 0.25, "output_throughput_per_gpu": 5.0}
    assert efficiency_headline({"efficiency": both}) == (0.25, "J/token")
    assert efficiency_headline({"efficiency": {"cpu_seconds_per_request": 0.1}}) == (
        0.1,
        "CPU-s/request",
    )
    assert efficiency_headline(plain) is None
