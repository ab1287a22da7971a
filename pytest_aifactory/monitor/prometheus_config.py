"""The run's Prometheus configuration: one scrape job per kind of target, all file-discovered.

Targets appear while the run goes on (a service becomes healthy, a client job starts on a new
node), so nothing is listed statically: each scrape job watches one folder of target files.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pytest_aifactory.monitor.layout import TARGET_GROUPS, monitor_dir, targets_dir

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


def render_config(
    run_root: Path, scrape_interval_s: float, api_key_file: Path | None = None
) -> str:
    """`api_key_file`: the run's API key, sent to the services (servers that take a key
    serve their metrics only to its holder; the others ignore it)."""
    interval = duration(scrape_interval_s)
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
            job["honor_labels"] = True  # keep each client process's own labels
        if group == "services" and api_key_file is not None:
            job["authorization"] = {"type": "Bearer", "credentials_file": str(api_key_file)}
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
    run_root: Path, scrape_interval_s: float, api_key_file: Path | None = None
) -> Path:
    for group in TARGET_GROUPS:
        targets_dir(run_root, group).mkdir(parents=True, exist_ok=True, mode=0o700)
    path = monitor_dir(run_root) / "prometheus.yml"
    path.write_text(render_config(run_root, scrape_interval_s, api_key_file))
    return path
