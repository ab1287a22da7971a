"""The run's monitoring credentials: private, per run, and what the configuration and the
Grafana provisioning carry of them (paths, never the password)."""

from __future__ import annotations

import stat
from pathlib import Path

import bcrypt
import yaml

from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.monitor.credentials import ensure_credentials, read_credentials
from pytest_aifactory.monitor.grafana import datasource_provisioning, grafana_env
from pytest_aifactory.monitor.prometheus_config import (
    EXPORTER_SERVICES_JOB,
    SCRAPE_JOBS,
    render_config,
)
from pytest_aifactory.monitor.series import AUTH_LABEL, BASIC_AUTH


def new_run(tmp_path: Path, name: str) -> RunDir:
    return RunDir.create(tmp_path / "reports", make_run_id(name))


def test_each_run_has_its_own_private_password(tmp_path: Path) -> None:
    first = ensure_credentials(new_run(tmp_path, "a").root)
    second = ensure_credentials(new_run(tmp_path, "b").root)
    assert first.password != second.password
    assert len(first.password) >= 32
    for path in (first.password_file, first.web_config, first.password_file.parent):
        assert stat.S_IMODE(path.stat().st_mode) in (0o600, 0o700), path


def test_the_web_config_holds_only_a_hash_of_the_password(tmp_path: Path) -> None:
    run = new_run(tmp_path, "a")
    made = ensure_credentials(run.root)
    text = made.web_config.read_text()
    assert made.password not in text
    hashed = yaml.safe_load(text)["basic_auth_users"][made.user]
    assert bcrypt.checkpw(made.password.encode(), hashed.encode())
    assert ensure_credentials(run.root) == made  # made once per run
    assert read_credentials(run.root) == made


def test_an_unmonitored_run_has_no_credentials(tmp_path: Path) -> None:
    assert read_credentials(new_run(tmp_path, "a").root) is None


def test_prometheus_sends_the_credentials_and_keeps_pushed_labels_apart(tmp_path: Path) -> None:
    run = new_run(tmp_path, "a")
    made = ensure_credentials(run.root)
    config = yaml.safe_load(render_config(run.root, 1.0, run.api_key_path, made.password_file))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for group in ("nodes", "pushgateway", "prometheus"):
        auth = jobs[SCRAPE_JOBS[group]]["basic_auth"]
        assert auth == {"username": made.user, "password_file": str(made.password_file)}
    services = jobs[SCRAPE_JOBS["services"]]
    assert services["authorization"]["credentials_file"] == str(run.api_key_path)
    gateway = jobs[SCRAPE_JOBS["pushgateway"]]
    assert gateway["honor_labels"] is False
    assert made.password not in yaml.safe_dump(config)
    # a service's locked exporter (PostgreSQL's) is scraped with the password, not the key
    exporters = jobs[EXPORTER_SERVICES_JOB]
    assert exporters["basic_auth"]["password_file"] == str(made.password_file)
    assert "authorization" not in exporters
    keep = {"action": "keep", "source_labels": [AUTH_LABEL], "regex": BASIC_AUTH}
    assert exporters["relabel_configs"] == [keep]
    assert {**keep, "action": "drop"} in services["relabel_configs"]


def test_grafana_reads_the_password_from_its_file(tmp_path: Path) -> None:
    run = new_run(tmp_path, "a")
    made = ensure_credentials(run.root)
    (source,) = datasource_provisioning("http://n1:9090", credentials=made)["datasources"]
    assert source["basicAuth"] is True
    assert source["secureJsonData"] == {"basicAuthPassword": f"$__file{{{made.password_file}}}"}
    env = grafana_env(run.root)
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == str(made.password_file)
    data = Path(env["GF_PATHS_DATA"])
    assert not data.is_relative_to(run.root)  # not in the folder that gets shared
    assert stat.S_IMODE(data.parent.stat().st_mode) == 0o700
