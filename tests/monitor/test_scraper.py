"""The direct scraper against a real node exporter and a llama.cpp-style metrics endpoint."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.samples import SAMPLE_COLUMNS
from pytest_aifactory.monitor.scraper import DirectScraper
from pytest_aifactory.monitor.series import NODE_SERIES
from pytest_aifactory.monitor.targets import Target, base_labels, write_target
from pytest_aifactory.services.kinds.llamacpp import METRIC_SERIES as LLAMACPP_SERIES
from pytest_aifactory.testing.dcgm_exporter import metrics_handler
from tests.components import require_component
from tests.helpers import running_server, wait_for

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
RUN = "20240501-120000-scrape"
SCRAPER_THREAD = "aifactory-scraper"


@pytest.fixture
def node_exporter() -> Iterator[str]:
    """A real node exporter on 127.0.0.1 (its address), stopped by its PID."""
    require_component("prometheus-node-exporter")
    with running_server(
        lambda address: [
            NODE_EXPORTER,
            "--no-collector.systemd",
            f"--web.listen-address={address}",
        ],
        "/metrics",
        "node exporter",
    ) as address:
        yield address


class LlamaCounter:
    """`/metrics` as llama-server writes it; every scrape generated 5 more tokens."""

    def __init__(self) -> None:
        self.predicted = 0
        self.lock = threading.Lock()

    def __call__(self) -> str:
        with self.lock:
            self.predicted += 5
            predicted = self.predicted
        return (
            "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
            "# TYPE llamacpp:prompt_tokens_total counter\n"
            "llamacpp:prompt_tokens_total 640\n"
            "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n"
            "# TYPE llamacpp:tokens_predicted_total counter\n"
            f"llamacpp:tokens_predicted_total {predicted}\n"
            "# HELP llamacpp:requests_processing Number of requests processing.\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            "llamacpp:requests_processing 2\n"
            "# HELP llamacpp:not_catalogued_total Something no series names.\n"
            "# TYPE llamacpp:not_catalogued_total counter\n"
            "llamacpp:not_catalogued_total 7\n"
        )


@pytest.fixture
def llama_metrics() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), metrics_handler(LlamaCounter()))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def service_target(name: str, address: str) -> Target:
    labels = {**base_labels(RUN, "service", "n2"), "aif_service": name, "aif_kind": "llamacpp"}
    return Target("services", name, address, "/metrics", labels)


def rising(values: pd.Series) -> bool:
    return bool(values.is_monotonic_increasing) and values.iloc[-1] > values.iloc[0]


def test_scrapes_node_and_service_targets_as_they_appear(
    tmp_path: Path, node_exporter: str, llama_metrics: str
) -> None:
    run_root = tmp_path / RUN
    write_target(
        run_root, Target("nodes", "n1", node_exporter, labels=base_labels(RUN, "node", "n1"))
    )
    dead = service_target("dead", f"127.0.0.1:{free_port('127.0.0.1')}")
    write_target(run_root, dead)
    scraper = DirectScraper(
        run_root, {"node": NODE_SERIES, "service": LLAMACPP_SERIES}, interval_s=0.2
    )
    scraper.start()
    try:
        wait_for(lambda: scraper.scrapes >= 2, 30, "two passes before the service appears")
        announced = time.time()
        write_target(run_root, service_target("llm", llama_metrics))  # a service starts late

        def generated_since_announced() -> int:
            frame = scraper.samples(start=announced)
            return int((frame["series"] == "llamacpp_generated_tokens").sum())

        # counted passes, not seconds: how many fit in a second is this machine's business
        wait_for(
            lambda: scraper.scrapes >= 5 and generated_since_announced() >= 3,
            30,
            "five passes, three of them over the late service",
        )
    finally:
        scraper.stop()
    frame = scraper.samples()

    assert list(frame.columns) == list(SAMPLE_COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == SAMPLE_COLUMNS
    assert set(frame["origin"]) == {"scrape"}
    assert frame["test_id"].isna().all()
    assert scraper.scrapes >= 5

    node = frame[frame["source"] == "node"]
    assert {"node_cpu_seconds", "node_load1", "node_memory_available_bytes"} <= set(node["series"])
    assert set(node["node"]) == {"n1"}
    assert set(node["instance"]) == {node_exporter}
    assert node["service"].eq("").all()
    memory = node[node["series"] == "node_memory_total_bytes"]
    assert set(memory["metric"]) == {"node_memory_MemTotal_bytes"}
    assert memory["value"].nunique() == 1
    assert memory["value"].iloc[0] > 1e8
    cpu = node[node["series"] == "node_cpu_seconds"]
    assert set(cpu["metric"]) == {"node_cpu_seconds_total"}
    labels = json.loads(cpu["labels"].iloc[0])
    assert {"cpu", "mode"} <= set(labels)
    assert (labels["aif_run"], labels["aif_role"]) == (RUN, "node")
    assert "aif_node" not in labels
    for _, one in cpu.groupby("labels"):
        assert one["value"].is_monotonic_increasing  # a counter, in scrape order
    cpu_time = cpu.groupby("timestamp")["value"].sum()
    assert cpu_time.size >= 5
    assert rising(cpu_time)

    llm = frame[frame["service"] == "llm"]
    assert set(llm["series"]) == {
        "llamacpp_prompt_tokens",
        "llamacpp_generated_tokens",
        "llamacpp_requests_processing",
    }
    assert set(llm["source"]) == {"service"}
    assert set(llm["node"]) == {"n2"}
    assert set(llm["instance"]) == {llama_metrics}
    assert llm["timestamp"].min() >= announced
    generated = llm[llm["series"] == "llamacpp_generated_tokens"]
    assert set(generated["metric"]) == {"llamacpp:tokens_predicted_total"}
    assert len(generated) >= 3
    assert generated["value"].is_monotonic_increasing
    assert generated["value"].is_unique
    assert json.loads(generated["labels"].iloc[0]) == {
        "aif_kind": "llamacpp",
        "aif_role": "service",
        "aif_run": RUN,
    }
    assert not frame["metric"].str.contains("not_catalogued").any()

    assert set(scraper.errors) == {dead.url}
    assert "ConnectionError" in scraper.errors[dead.url]
    assert scraper.failures[dead.url] >= 5
    assert frame[frame["service"] == "dead"].empty

    later = scraper.samples(start=announced)
    assert 0 < len(later) < len(frame)
    assert later["timestamp"].min() >= announced
    window = scraper.samples(start=announced, end=announced + 0.5)
    assert window["timestamp"].between(announced, announced + 0.5).all()
    assert scraper.samples(start=time.time() + 60).empty


def test_unmapped_role_is_matched_against_every_series(tmp_path: Path, llama_metrics: str) -> None:
    run_root = tmp_path / RUN
    labels = {**base_labels(RUN, "embedding", "n3"), "aif_service": "llm"}
    write_target(run_root, Target("services", "llm", llama_metrics, labels=labels))
    scraper = DirectScraper(run_root, {"node": NODE_SERIES, "service": LLAMACPP_SERIES})
    scraper.scrape_once()
    scraper.scrape_once()
    frame = scraper.samples()
    generated = frame[frame["series"] == "llamacpp_generated_tokens"]
    assert len(generated) == 2
    assert rising(generated["value"])
    assert set(frame["node"]) == {"n3"}
    assert scraper.errors == {}


def test_a_hanging_target_does_not_hold_the_others(tmp_path: Path, llama_metrics: str) -> None:
    run_root = tmp_path / RUN
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hanging = service_target("hanging", f"127.0.0.1:{silent.getsockname()[1]}")
        write_target(run_root, hanging)
        write_target(run_root, service_target("llm", llama_metrics))
        scraper = DirectScraper(run_root, {"service": LLAMACPP_SERIES}, interval_s=0.2)
        assert scraper.timeout_s == 1.0
        scraper.start()
        (loop,) = [t for t in threading.enumerate() if t.name == SCRAPER_THREAD]
        try:
            wait_for(lambda: scraper.errors, timeout=10, what="the hanging target's timeout")
        finally:
            scraper.stop()
        # the hanging request ends at the scrape timeout and lets the loop end with it
        wait_for(lambda: not loop.is_alive(), 30, "the scraper's thread to end")
    assert "Timeout" in scraper.errors[hanging.url]
    assert len(scraper.samples()[lambda f: f["service"] == "llm"]) >= 3


def test_a_pushed_series_keeps_the_gateways_labels(tmp_path: Path) -> None:
    """Labels a pusher wrote do not override the target's: a series served by the pushgateway
    names no service, whatever it was pushed with."""
    pushed = (
        "# TYPE llamacpp:tokens_predicted_total counter\n"
        f'llamacpp:tokens_predicted_total{{aif_run="{RUN}",aif_role="service",'
        'aif_service="llm",aif_node="n9"} 99\n'
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), metrics_handler(lambda: pushed))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        run_root = tmp_path / RUN
        address = f"127.0.0.1:{server.server_address[1]}"
        labels = base_labels(RUN, "pushgateway", "n1")
        write_target(run_root, Target("pushgateway", "gw", address, labels=labels))
        # the pushgateway's role is not mapped: every series is looked for in what it serves
        scraper = DirectScraper(run_root, {"service": LLAMACPP_SERIES})
        scraper.scrape_once()
        frame = scraper.samples()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert scraper.errors == {}
    assert len(frame) == 1
    assert frame["service"].tolist() == [""]
    assert frame["node"].tolist() == ["n1"]
    assert json.loads(frame["labels"].iloc[0])["aif_role"] == "pushgateway"
