"""MinIO's metrics token, as `mc admin prometheus generate` makes it and MinIO checks it
(issuer `prometheus`, subject the access key, HS512 with the secret key, an expiry), verified
here by decoding and signing again independently, and with PyJWT. No
MinIO runs here: the plan is checked to ask MinIO for this scheme, not a running server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import jwt
import pytest

from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.base import ServicePlan, get_kind
from pytest_aifactory.services.kinds.s3 import (
    ACCESS_KEY_ENV,
    MINIO_ENV,
    SECRET_KEY_ENV,
)
from pytest_aifactory.services.minio_token import LIFETIME_S, prometheus_token

NOW = 1_800_000_000
metrics_token = get_kind("s3").metrics_token


def token_services(recipe: Recipe) -> list[str]:
    """The services the run's Prometheus scrapes by a job of their own, with their token."""
    return [
        name
        for name, service in recipe.services.items()
        if get_kind(service.kind).metrics_token_of_its_own
    ]


def unpadded(segment: str) -> bytes:
    """base64url without padding, as JWT writes it and MinIO reads it (`RawURLEncoding`)."""
    assert "=" not in segment
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, claims, signature = token.split(".")
    return json.loads(unpadded(header)), json.loads(unpadded(claims)), unpadded(signature)


def test_the_token_has_mcs_claims_and_header() -> None:
    header, claims, _ = parts(prometheus_token("aifkey", "secret", now=NOW))
    assert header == {"alg": "HS512", "typ": "JWT"}
    assert claims == {"iss": "prometheus", "sub": "aifkey", "exp": NOW + LIFETIME_S}


def test_the_signature_is_hs512_with_the_secret_key() -> None:
    token = prometheus_token("aifkey", "the-secret", now=NOW)
    signing_input, _, _ = token.rpartition(".")
    _, _, signature = parts(token)
    expected = hmac.new(b"the-secret", signing_input.encode(), hashlib.sha512).digest()
    assert hmac.compare_digest(signature, expected)
    other = hmac.new(b"another-secret", signing_input.encode(), hashlib.sha512).digest()
    assert signature != other
    # a server with other keys gets another token
    assert prometheus_token("aifkey", "another-secret", now=NOW) != token
    assert prometheus_token("aifother", "the-secret", now=NOW) != token


def test_pyjwt_verifies_it_as_minio_would() -> None:
    secret = "s" * 64  # PyJWT warns of shorter HS512 keys (MinIO's are at most 40 characters)
    token = prometheus_token("aifkey", secret, now=NOW)
    decoded = jwt.decode(
        token,
        secret,
        algorithms=["HS512"],
        issuer="prometheus",
        options={"require": ["exp", "iss", "sub"], "verify_exp": False},
    )
    assert decoded["sub"] == "aifkey"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "t" * 64, algorithms=["HS512"])


# -- the s3 kind ---------------------------------------------------------------------------------


def recipe() -> Recipe:
    return Recipe.model_validate(
        {
            "name": "s3-token",
            "services": {
                "store": {"kind": "s3"},
                "llm": {"kind": "command", "command": "true"},
            },
            "clients": {"c": {"kind": "s3", "service": "store"}},
        }
    )


def plan_with(path: str, monkeypatch: pytest.MonkeyPatch) -> ServicePlan:
    monkeypatch.delenv(MINIO_ENV, raising=False)
    monkeypatch.setenv("PATH", path)
    document = recipe()
    return get_kind("s3").plan("store", document.services["store"], document)


def test_a_minio_asks_for_its_token_and_gets_one_signed_with_its_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `minio` on PATH (only its plan is made: it is never run)."""
    binary = tmp_path / "minio"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    plan = plan_with(f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}", monkeypatch)
    assert plan.served_model == "minio"
    assert plan.env["MINIO_PROMETHEUS_AUTH_TYPE"] == "jwt"
    assert "public" not in plan.env.values()
    token = metrics_token(plan.served_model, plan.client_env)
    assert token is not None
    _, claims, signature = parts(token)
    assert claims["sub"] == plan.env["MINIO_ROOT_USER"] == plan.client_env[ACCESS_KEY_ENV]
    secret = plan.env["MINIO_ROOT_PASSWORD"].encode()
    signing_input = token.rpartition(".")[0].encode()
    assert hmac.compare_digest(signature, hmac.new(secret, signing_input, hashlib.sha512).digest())


def test_nanio_has_no_metrics_and_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nanio", reason="nanio is not installed")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    plan = plan_with(str(empty), monkeypatch)
    assert plan.served_model == "nanio"
    assert plan.metrics_path is None
    assert "MINIO_PROMETHEUS_AUTH_TYPE" not in plan.env
    assert metrics_token(plan.served_model, plan.client_env) is None


def test_no_token_without_both_keys() -> None:
    assert metrics_token("minio", {ACCESS_KEY_ENV: "aifkey"}) is None
    assert metrics_token("minio", {SECRET_KEY_ENV: "secret"}) is None
    assert metrics_token("minio", {ACCESS_KEY_ENV: "aifkey", SECRET_KEY_ENV: "s"}) is not None


def test_only_s3_services_get_a_token_job() -> None:
    assert token_services(recipe()) == ["store"]
