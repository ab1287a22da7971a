"""Which credential the run's Prometheus sends to which target: a site's DCGM exporter gets
none, a MinIO gets its own token from a job of its service's, the rest what they got before."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_aifactory.cluster.rundir import RunDir, make_run_id, secrets_dir_of
from pytest_aifactory.monitor.credentials import (
    ensure_credentials,
    read_token,
    token_path,
    write_token,
)
from pytest_aifactory.monitor.prometheus_config import (
    SCRAPE_JOBS,
    SITE_EXPORTERS_JOB,
    TOKEN_SERVICE_JOB,
    render_config,
    write_config,
)
from pytest_aifactory.monitor.series import AUTH_LABEL, SERVICE_LABEL
from pytest_aifactory.monitor.targets import BEARER_AUTH, NO_AUTH


def new_run(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path / "reports", make_run_id("auth"))


def jobs_of(run: RunDir, token_services: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    made = ensure_credentials(run.root)
    text = render_config(
        run.root, 1.0, run.api_key_path, made.password_file, token_services=token_services
    )
    return {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}


def test_a_sites_exporter_is_scraped_without_the_runs_password(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    jobs = jobs_of(run)
    nodes, site = jobs[SCRAPE_JOBS["nodes"]], jobs[SITE_EXPORTERS_JOB]
    assert site["file_sd_configs"] == nodes["file_sd_configs"]  # the same target files
    assert "basic_auth" not in site
    assert "authorization" not in site
    open_targets = {"source_labels": [AUTH_LABEL], "regex": NO_AUTH}
    assert site["relabel_configs"] == [{"action": "keep", **open_targets}]
    # the run's own node programs (node exporters, the DCGM exporters it starts) get it
    assert nodes["basic_auth"]["password_file"].endswith("password")
    assert nodes["relabel_configs"] == [{"action": "drop", **open_targets}]


def test_each_token_service_has_a_job_sending_its_own_token(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    jobs = jobs_of(run, ("store", "archive.b"))
    services = jobs[SCRAPE_JOBS["services"]]
    for name in ("store", "archive.b"):
        job = jobs[f"{TOKEN_SERVICE_JOB}-{name}"]
        assert job["file_sd_configs"] == services["file_sd_configs"]
        assert job["authorization"] == {
            "type": "Bearer",
            "credentials_file": str(token_path(run.root, name)),
        }
        assert "basic_auth" not in job
        (keep,) = job["relabel_configs"]
        assert keep["action"] == "keep"
        assert keep["source_labels"] == [AUTH_LABEL, SERVICE_LABEL]
    # and the key job leaves those targets to them: the key would not open MinIO's metrics
    drop = {"action": "drop", "source_labels": [AUTH_LABEL], "regex": BEARER_AUTH}
    assert drop in services["relabel_configs"]
    assert str(run.api_key_path) == services["authorization"]["credentials_file"]


def test_without_token_services_there_are_no_token_jobs(tmp_path: Path) -> None:
    jobs = jobs_of(new_run(tmp_path))
    assert not [name for name in jobs if name.startswith(TOKEN_SERVICE_JOB)]
    for rule in jobs[SCRAPE_JOBS["services"]]["relabel_configs"]:
        assert rule.get("regex") != BEARER_AUTH


def test_a_token_is_kept_private_and_reserved_before_it_exists(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    made = ensure_credentials(run.root)
    write_config(run.root, 1.0, run.api_key_path, made.password_file, token_services=["store"])
    path = token_path(run.root, "store")
    assert path.is_relative_to(secrets_dir_of(run.root))  # not in the run folder people share
    assert not path.is_relative_to(run.root)
    assert path.read_text() == ""  # an empty token opens nothing
    assert read_token(run.root, "store") is None
    assert write_token(run.root, "store", "a.b.c") == path
    assert read_token(run.root, "store") == "a.b.c"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # a second configuration (a later write) keeps the token there
    write_config(run.root, 1.0, run.api_key_path, made.password_file, token_services=["store"])
    assert read_token(run.root, "store") == "a.b.c"


@pytest.mark.requires("prometheus")
def test_prometheus_accepts_the_configuration(tmp_path: Path) -> None:
    """Prometheus's own checker reads the regular expressions and files as Prometheus will."""
    prometheus = shutil.which("prometheus")
    assert prometheus is not None
    promtool = shutil.which("promtool") or str(Path(prometheus).with_name("promtool"))
    run = new_run(tmp_path)
    run.api_key()  # as the driver makes the files the configuration names, before it
    made = ensure_credentials(run.root)
    config = write_config(
        run.root, 1.0, run.api_key_path, made.password_file, token_services=["s3-a.b"]
    )
    checked = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
