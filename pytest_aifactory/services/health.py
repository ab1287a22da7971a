"""Is a service up? An HTTP path answering 2xx, or a TCP port accepting connections."""

from __future__ import annotations

import socket

import requests

from pytest_aifactory import direct_http
from pytest_aifactory.services.base import HealthCheck


def base_url(host: str, port: int, scheme: str = "http") -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def is_healthy(host: str, port: int, check: HealthCheck, url: str | None = None) -> bool:
    if check.http_path is None:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            return False
    target = (url or base_url(host, port)) + check.http_path
    try:
        response = direct_http.get(target, timeout=2)
    except requests.RequestException:
        return False
    return 200 <= response.status_code < 300
