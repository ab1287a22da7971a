"""The run's Prometheus configuration: one scrape job per kind of target, all file-discovered.

Targets appear while the run goes on (a service becomes healthy, a client job starts on a new
node), so nothing is listed statically: each scrape job watches one folder of target files.

The run's own programs (node exporters, the DCGM exporters it starts, the pushgateway,
Prometheus itself) let in only holders of the run's monitoring password, which Prometheus sends;
services get the run's API key. Three kinds of target are scraped by jobs of their own, from the
same target files, so that no credential goes where it does not belong: a service exporter
locked with the monitoring password (PostgreSQL's) gets the password, not the key; a service
whose server takes a token of its own for its metrics (MinIO) gets its token from the service's
token file, one job per such service (Prometheus sends one credential per job, and each server
has its own); a site's DCGM exporter, which the run did not start, gets nothing.

Pushed series cannot pose as anyone else's: the pushgateway is scraped without
`honor_labels`, so the labels that say where a series comes from (`aif_run`, `aif_role`,
`aif_node`, `job`, `instance`) are the gateway target's own, whatever a pusher wrote; a pushed
one that disagrees is kept aside as `exported_<name>`. Every reader of server and node series
selects them by `aif_role` as well as by run, so nothing pushed lands among them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from pytest_aifactory.monitor.credentials import USER, reserve_token, token_path
from pytest_aifactory.monitor.layout import TARGET_GROUPS, monitor_dir, targets_dir
from pytest_aifactory.monitor.series import (
    AUTH_LABEL,
    BASIC_AUTH,
    EXTERNAL_KIND,
    KIND_LABEL,
    SERVICE_LABEL,
)
from pytest_aifactory.monitor.targets import BEARER_AUTH, NO_AUTH

SCRAPE_JOBS = {
    "services": "aifactory-services",
    "nodes": "aifactory-nodes",
    "pushgateway": "aifactory-pushgateway",
    "prometheus": "aifactory-prometheus",
}
"""Target folder -> Prometheus job name."""


def duration(seconds: float) -> str:
    """Prometheus durations are integers of a unit: 1.5 s is `1500ms`."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


PUSHED_DUPLICATES = r"exported_(job|instance|aif_run)"
"""What the gateway's target labels replace in every pushed series and say again (a client
pushes its run's id and the gateway adds `job` and `instance`): dropped. Pushed labels that
differ from the target's (`exported_aif_role`, ...) stay, so they show as the pushers'."""


EXTERNAL_SERVICES_JOB = "aifactory-external-services"


def _kind_is_external(action: str) -> dict[str, object]:
    return {"action": action, "source_labels": [KIND_LABEL], "regex": EXTERNAL_KIND}


EXPORTER_SERVICES_JOB = "aifactory-service-exporters"


def _target_auth(action: str, value: str) -> dict[str, object]:
    return {"action": action, "source_labels": [AUTH_LABEL], "regex": value}


def _basic_auth_target(action: str) -> dict[str, object]:
    return _target_auth(action, BASIC_AUTH)


def _service_exporters(
    services_job: dict[str, object], user: str, password_file: Path
) -> dict[str, object]:
    """Services whose metrics come from an exporter locked with the run's monitoring password
    (PostgreSQL's): scraped by a job of their own, from the same target files, with it."""
    return {
        **services_job,
        "job_name": EXPORTER_SERVICES_JOB,
        "basic_auth": {"username": user, "password_file": str(password_file)},
        "relabel_configs": [_basic_auth_target("keep")],
    }


TOKEN_SERVICE_JOB = "aifactory-service-token"
"""Prefix of the job of each service scraped with its own token: `<prefix>-<service>`."""


def token_service_job(
    services_job: dict[str, object], run_root: Path, service: str
) -> dict[str, object]:
    """A service whose server takes a bearer token of its own for its metrics (MinIO's JWT):
    its targets, and no one else's, are scraped with the token in the service's token file,
    which Prometheus reads at each scrape (it is written when the service is up)."""
    return {
        **services_job,
        "job_name": f"{TOKEN_SERVICE_JOB}-{service}",
        "authorization": {
            "type": "Bearer",
            "credentials_file": str(token_path(run_root, service)),
        },
        "relabel_configs": [
            {
                "action": "keep",
                "source_labels": [AUTH_LABEL, SERVICE_LABEL],
                "separator": ";",
                "regex": f"{BEARER_AUTH};{re.escape(service)}",
            }
        ],
    }


SITE_EXPORTERS_JOB = "aifactory-site-exporters"


def _site_exporters(nodes_job: dict[str, object]) -> dict[str, object]:
    """Node targets the run did not start (a site's DCGM exporter): scraped without the run's
    password, which would otherwise go to whatever answers on the site's port."""
    return {
        **nodes_job,
        "job_name": SITE_EXPORTERS_JOB,
        "relabel_configs": [_target_auth("keep", NO_AUTH)],
    }


def _external_services(services_job: dict[str, object]) -> dict[str, object]:
    """`kind: external` services are someone else's servers: scraped by a job of their own,
    from the same target files, that sends them no key of the run's."""
    return {
        **services_job,
        "job_name": EXTERNAL_SERVICES_JOB,
        "relabel_configs": [_kind_is_external("keep")],
    }


def render_config(
    run_root: Path,
    scrape_interval_s: float,
    api_key_file: Path | None = None,
    password_file: Path | None = None,
    user: str = USER,
    token_services: Iterable[str] = (),
) -> str:
    """`api_key_file`: the run's API key, sent to the services (servers that take a key
    serve their metrics only to its holder; the others ignore it). `password_file`: the run's
    monitoring password, sent to its own programs. `token_services`: the services that may
    take a token of their own for their metrics (the recipe's `s3` services): each gets a job
    for its targets that say so (`aif_auth="bearer"`)."""
    interval = duration(scrape_interval_s)
    with_tokens = tuple(token_services)
    jobs = []
    for group, job_name in SCRAPE_JOBS.items():
        job: dict[str, object] = {
            "job_name": job_name,
            "file_sd_configs": [
                {
                    "files": [str(targets_dir(run_root, group) / "*.json")],
                    "refresh_interval": interval,
                }
            ],
        }
        if group == "pushgateway":
            job["honor_labels"] = False
            job["metric_relabel_configs"] = [{"action": "labeldrop", "regex": PUSHED_DUPLICATES}]
        if group == "services":
            relabel: list[dict[str, object]] = []
            if password_file is not None:
                jobs.append(_service_exporters(job, user, password_file))
                relabel.append(_basic_auth_target("drop"))
            if with_tokens:
                jobs += [token_service_job(job, run_root, name) for name in with_tokens]
                relabel.append(_target_auth("drop", BEARER_AUTH))
            if api_key_file is not None:
                jobs.append(_external_services(job))
                job["authorization"] = {"type": "Bearer", "credentials_file": str(api_key_file)}
                relabel.append(_kind_is_external("drop"))
            if relabel:
                job["relabel_configs"] = relabel
        elif password_file is not None:
            if group == "nodes":
                jobs.append(_site_exporters(job))
                job["relabel_configs"] = [_target_auth("drop", NO_AUTH)]
            job["basic_auth"] = {"username": user, "password_file": str(password_file)}
        jobs.append(job)
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_config(
    run_root: Path,
    scrape_interval_s: float,
    api_key_file: Path | None = None,
    password_file: Path | None = None,
    token_services: Iterable[str] = (),
) -> Path:
    for group in TARGET_GROUPS:
        targets_dir(run_root, group).mkdir(parents=True, exist_ok=True, mode=0o700)
    path = monitor_dir(run_root) / "prometheus.yml"
    with_tokens = tuple(token_services)
    for service in with_tokens:
        reserve_token(run_root, service)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    text = render_config(
        run_root, scrape_interval_s, api_key_file, password_file, token_services=with_tokens
    )
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path
