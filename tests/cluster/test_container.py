"""Container commands: the exact argument list, and that a service job runs it.

No Apptainer or Singularity runtime is installable on the machines this suite runs on, so the
command is checked as built; the last test puts a recording stand-in named `apptainer` on PATH
to show that a service job really runs its server through the runtime.
"""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path

import pytest

from pytest_aifactory.cluster.container import wrap_command
from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rendezvous import read_rendezvous
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.recipe import Container
from pytest_aifactory.services.launch import ServiceLaunch, run_service


def test_plain_exec_with_binds() -> None:
    container = Container(image="/sif/vllm.sif", binds=["/scratch:/data", "/models"])
    assert wrap_command(["vllm", "serve", "--port", "8000"], container, gpus=False) == [
        "apptainer",
        "exec",
        "--bind",
        "/scratch:/data",
        "--bind",
        "/models",
        "/sif/vllm.sif",
        "vllm",
        "serve",
        "--port",
        "8000",
    ]


def test_gpus_add_nv_from_the_service_or_the_container() -> None:
    plain = Container(image="img.sif", runtime="singularity")
    assert wrap_command(["x"], plain, gpus=True) == ["singularity", "exec", "--nv", "img.sif", "x"]
    flagged = Container(image="img.sif", gpu=True)
    assert wrap_command(["x"], flagged, gpus=False) == ["apptainer", "exec", "--nv", "img.sif", "x"]
    assert "--nv" not in wrap_command(["x"], plain, gpus=False)


def test_odd_values_stay_single_arguments() -> None:
    container = Container(
        image="/path with spaces/it's.sif", binds=["/a b:/c;d", "$(touch /tmp/x):/e"]
    )
    argv = ["sh", "-c", "echo 'hi' && exit 3", '{"json": [1, 2]}', "", "a\nb"]
    assert wrap_command(argv, container, gpus=False) == [
        "apptainer",
        "exec",
        "--bind",
        "/a b:/c;d",
        "--bind",
        "$(touch /tmp/x):/e",
        "/path with spaces/it's.sif",
        *argv,
    ]


def test_nothing_to_run_is_an_error() -> None:
    with pytest.raises(ValueError, match="no command"):
        wrap_command([], Container(image="img.sif"), gpus=False)


FAKE_RUNTIME = """#!{python}
# stand-in for apptainer: records its arguments, then runs the command after the image
import json, os, sys
args = sys.argv[1:]
with open({record!r}, "w") as fh:
    json.dump(args, fh)
image = args.index({image!r})
os.execvp(args[image + 1], args[image + 1:])
"""


def test_service_job_runs_its_server_through_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "runtime-args.json"
    image = str(tmp_path / "server image.sif")
    runtime = bin_dir / "apptainer"
    runtime.write_text(FAKE_RUNTIME.format(python=sys.executable, record=str(record), image=image))
    runtime.chmod(runtime.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")

    run = RunDir.create(tmp_path / "reports", make_run_id("container"))
    launch = ServiceLaunch(
        name="web",
        argv=[sys.executable, "-m", "http.server", "{port}", "--bind", "{host}", "-d", "{scratch}"],
        rendezvous_path=str(run.rendezvous_path("web")),
        container=Container(image=image, binds=[f"{tmp_path}:/work"]),
        gpus=True,
    )
    executor = LocalJobExecutor(run)
    try:
        executor.submit(run_service, launch, name="service-web", role="service")
        deadline = time.monotonic() + 30
        while not record.exists() or read_rendezvous(run.rendezvous_path("web")) is None:
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        info = read_rendezvous(run.rendezvous_path("web"))
        assert info is not None
        recorded = json.loads(record.read_text())
        # the service's scratch folder is made on the host and bound into the image
        scratch = recorded[-1]
        assert Path(scratch).name.startswith("aifactory-web-")
        assert recorded == [
            "exec",
            "--nv",
            "--bind",
            f"{tmp_path}:/work",
            "--bind",
            scratch,
            image,
            sys.executable,
            "-m",
            "http.server",
            str(info.port),
            "--bind",
            "127.0.0.1",
            "-d",
            scratch,
        ]
    finally:
        executor.cancel_all()
