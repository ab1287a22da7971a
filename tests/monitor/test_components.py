"""Where each monitoring program comes from (recipe, environment, PATH), the command line of one
in an Apptainer image, and what a job says ran on its node."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from pytest_aifactory.monitor.components import (
    DCGM_EXPORTER,
    NODE_EXPORTER,
    PROMETHEUS,
    PUSHGATEWAY,
    ComponentSource,
    ComponentStatus,
    Missing,
    Program,
    choose_source,
    describe,
    locate,
    read_node_statuses,
    report,
    write_node_status,
)
from pytest_aifactory.monitor.node_exporter import NodeExporterOrder, node_exporter
from pytest_aifactory.monitor.targets import read_targets
from pytest_aifactory.recipe import MonitorComponent
from tests.components import require_component
from tests.helpers import processes_matching

HOST = "127.0.0.1"


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_recipe_wins_over_the_environment_and_the_path(tmp_path: Path) -> None:
    given = MonitorComponent(path=str(tmp_path / "prometheus"))
    environ = {"AIFACTORY_PROMETHEUS": "/elsewhere/prometheus"}
    source = choose_source(PROMETHEUS, given, environ)
    assert source.origin == "monitor.components.prometheus"
    assert source.path == str(tmp_path / "prometheus")
    from_env = choose_source(PROMETHEUS, None, environ)
    assert (from_env.origin, from_env.path) == ("AIFACTORY_PROMETHEUS", "/elsewhere/prometheus")
    assert choose_source(PROMETHEUS, None, {}).origin == "PATH"


@pytest.mark.parametrize(
    ("value", "image"),
    [
        ("/images/pushgateway.sif", True),
        ("/images/pushgateway.simg", True),
        ("docker://prom/pushgateway:v1.9.0", True),
        ("/opt/pushgateway-1.9.0/pushgateway", False),
    ],
)
def test_the_environment_names_a_path_or_an_image(value: str, image: bool) -> None:
    source = choose_source(PUSHGATEWAY, None, {"AIFACTORY_PUSHGATEWAY": value})
    assert source.origin == "AIFACTORY_PUSHGATEWAY"
    assert (source.image, source.path) == ((value, None) if image else (None, value))


def test_an_empty_variable_turns_the_program_off() -> None:
    source = choose_source(NODE_EXPORTER, None, {"AIFACTORY_NODE_EXPORTER": ""})
    found = locate(source)
    assert isinstance(found, Missing)
    assert found.why == "turned off: AIFACTORY_NODE_EXPORTER is empty"


def test_a_path_must_be_an_executable_file(tmp_path: Path) -> None:
    missing = locate(ComponentSource(PROMETHEUS, "AIFACTORY_PROMETHEUS", path=str(tmp_path / "x")))
    assert isinstance(missing, Missing)
    assert missing.why == f"{tmp_path / 'x'} (AIFACTORY_PROMETHEUS): no such file"
    plain = tmp_path / "prometheus"
    plain.write_text("")
    found = locate(ComponentSource(PROMETHEUS, "monitor.components.prometheus", path=str(plain)))
    assert isinstance(found, Missing)
    assert found.why.endswith("not executable")
    executable(plain)
    program = locate(ComponentSource(PROMETHEUS, "monitor.components.prometheus", path=str(plain)))
    assert isinstance(program, Program)
    assert program.argv(["--version"]) == [str(plain), "--version"]
    assert program.source == f"{plain} (monitor.components.prometheus)"


def test_the_path_is_searched_under_every_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = executable(tmp_path / "bin" / "node_exporter")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    program = locate(ComponentSource(NODE_EXPORTER, "PATH"))
    assert isinstance(program, Program)
    assert program.prefix == (str(upstream),)
    assert program.source == f"{upstream} (PATH)"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    missing = locate(ComponentSource(NODE_EXPORTER, "PATH"))
    assert isinstance(missing, Missing)
    assert "prometheus-node-exporter, node_exporter" in missing.why
    assert "monitor.components.node_exporter or AIFACTORY_NODE_EXPORTER" in missing.why


def test_an_image_runs_its_program_through_the_runtime(tmp_path: Path) -> None:
    image = tmp_path / "images" / "prometheus.sif"
    image.parent.mkdir()
    image.write_bytes(b"SIF")
    given = MonitorComponent(image=str(image), binds=["/project/data:/data"])
    program = locate(choose_source(PROMETHEUS, given, {}))
    assert isinstance(program, Program)
    argv = program.argv(["--config.file=/run/p.yml"], binds=["/run", "/tmp/db"])
    assert argv == [
        "apptainer",
        "exec",
        "--bind",
        "/project/data:/data",
        "--bind",
        "/run",
        "--bind",
        "/tmp/db",
        str(image),
        "prometheus",  # the program of the upstream image
        "--config.file=/run/p.yml",
    ]
    assert program.source == f"image {image} (monitor.components.prometheus)"
    dcgm = MonitorComponent(
        image="docker://nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
        runtime="singularity",
        command="/usr/bin/dcgm-exporter",
    )
    program = locate(choose_source(DCGM_EXPORTER, dcgm, {}))
    assert isinstance(program, Program)
    assert program.argv(["--address", "h:1"], gpu=True) == [
        "singularity",
        "exec",
        "--nv",
        dcgm.image,
        "/usr/bin/dcgm-exporter",
        "--address",
        "h:1",
    ]


def test_an_image_needs_its_file_and_in_a_job_its_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ComponentSource(
        NODE_EXPORTER, "AIFACTORY_NODE_EXPORTER", image=str(tmp_path / "n.sif")
    )
    missing = locate(source)
    assert isinstance(missing, Missing)
    assert missing.why == f"image {tmp_path / 'n.sif'} (AIFACTORY_NODE_EXPORTER): no such file"
    (tmp_path / "n.sif").write_bytes(b"SIF")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert isinstance(locate(source), Program)  # the driver cannot tell what a node will have
    in_job = locate(source, check_runtime=True)
    assert isinstance(in_job, Missing)
    assert in_job.why.endswith("apptainer is not on the PATH")


def test_a_summary_entry_names_the_nodes_and_why_not_elsewhere(tmp_path: Path) -> None:
    for status in (
        ComponentStatus(NODE_EXPORTER, True, "/x/node_exporter (PATH)", node="n1"),
        ComponentStatus(NODE_EXPORTER, True, "/x/node_exporter (PATH)", node="n2"),
        ComponentStatus(NODE_EXPORTER, False, None, "not on the PATH", node="n3"),
        ComponentStatus(NODE_EXPORTER, False, None, "not on the PATH", node="n4"),
    ):
        write_node_status(tmp_path, status)
    entry = report(read_node_statuses(tmp_path, NODE_EXPORTER), "no job ran")
    assert entry.as_dict() == {
        "ran": True,
        "source": "/x/node_exporter (PATH)",
        "nodes": ["n1", "n2"],
        "why_not": "n3, n4: not on the PATH",
    }
    assert describe(NODE_EXPORTER, entry) == (
        "node exporter ran on n1, n2: /x/node_exporter (PATH) (not on n3, n4: not on the PATH)"
    )
    nothing = report([], "no service or client job ran")
    assert describe(PUSHGATEWAY, nothing) == "pushgateway did not run: no service or client job ran"


def test_a_job_says_why_its_nodes_exporter_did_not_run(tmp_path: Path) -> None:
    absent = str(tmp_path / "tools" / "node_exporter")
    source = ComponentSource(NODE_EXPORTER, "monitor.components.node_exporter", path=absent)
    order = NodeExporterOrder(str(tmp_path), "run-1", None, source)
    with node_exporter(order, "n7", HOST):
        assert read_targets(tmp_path, ("nodes",)) == []
    (status,) = read_node_statuses(tmp_path, NODE_EXPORTER)
    assert status == ComponentStatus(
        NODE_EXPORTER,
        False,
        None,
        f"{absent} (monitor.components.node_exporter): no such file",
        "n7",
    )
    (dcgm,) = read_node_statuses(tmp_path, DCGM_EXPORTER)
    assert dcgm.why_not == "turned off (monitor.gpu_exporter_port is null)"


def test_a_job_runs_the_exporter_from_the_named_path(tmp_path: Path) -> None:
    """The distribution's node exporter under another name, in a folder not on the PATH."""
    require_component("prometheus-node-exporter")
    real = shutil.which("prometheus-node-exporter")
    assert real is not None
    tools = tmp_path / "project tools"
    tools.mkdir()
    (tools / "nx").symlink_to(real)
    source = ComponentSource(NODE_EXPORTER, "AIFACTORY_NODE_EXPORTER", path=str(tools / "nx"))
    order = NodeExporterOrder(str(tmp_path / "run"), "run-1", None, source)
    with node_exporter(order, "n1", HOST):
        (target,) = read_targets(tmp_path / "run", ("nodes",))
        running = processes_matching(str(tools / "nx"))
        assert running, "the exporter at the named path is not running"
        assert target.address.split(":")[1] in running[0]
    (status,) = read_node_statuses(tmp_path / "run", NODE_EXPORTER)
    assert status.ran
    assert status.source == f"{tools / 'nx'} (AIFACTORY_NODE_EXPORTER)"
    assert processes_matching(str(tools / "nx")) == []


def test_an_image_exporter_runs_through_the_runtime_with_its_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Apptainer here: a stand-in runtime records its arguments and runs the program the
    image would hold (the distribution's binary), as the real one would."""
    require_component("prometheus-node-exporter")
    record = tmp_path / "runtime-args"
    executable(
        tmp_path / "bin" / "apptainer",
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n'
        'shift; while [ "$1" = --bind ]; do shift 2; done; shift\n'
        '[ "$1" = node_exporter ] && shift\n'
        'exec prometheus-node-exporter "$@"\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    image = tmp_path / "node-exporter.sif"
    image.write_bytes(b"SIF")
    source = ComponentSource(
        NODE_EXPORTER, "monitor.components.node_exporter", image=str(image), binds=("/a:/b",)
    )
    order = NodeExporterOrder(str(tmp_path / "run"), "run-1", None, source)
    with node_exporter(order, "n1", HOST):
        (target,) = read_targets(tmp_path / "run", ("nodes",))
        args = record.read_text().splitlines()
    assert args[:5] == ["exec", "--bind", "/a:/b", str(image), "node_exporter"]
    assert args[5] == f"--web.listen-address={target.address}"
    (status,) = read_node_statuses(tmp_path / "run", NODE_EXPORTER)
    assert status.ran
    assert status.source == f"image {image} (monitor.components.node_exporter)"
    assert processes_matching(target.address) == []


def test_the_report_shows_what_ran_and_why_not() -> None:
    from pytest_aifactory.report.html_report import monitoring_table

    summary = {
        "monitoring": {
            "components": {
                "prometheus": {
                    "ran": True,
                    "source": "/p/prometheus (PATH)",
                    "nodes": ["n1"],
                    "why_not": "",
                },
                "node_exporter": {
                    "ran": False,
                    "source": None,
                    "nodes": [],
                    "why_not": "n2: /x<y> (AIFACTORY_NODE_EXPORTER): no such file",
                },
            }
        }
    }
    table = monitoring_table(summary)
    assert table.startswith("<h2>Monitoring</h2>")
    assert "<td>prometheus</td><td>ran</td><td>/p/prometheus (PATH)</td><td>n1</td>" in table
    assert "<td>node exporter</td><td>did not run</td>" in table
    assert "n2: /x&lt;y&gt; (AIFACTORY_NODE_EXPORTER): no such file" in table
    assert monitoring_table({"monitoring": {"mode": "off"}}) == ""
