"""The bearer token MinIO takes for its metrics, made as `mc admin prometheus generate` makes it.

MinIO serves its metrics only to a request that carries a JWT it can verify
(`MINIO_PROMETHEUS_AUTH_TYPE=jwt`, its default): signed with HMAC (HS512 here) using the secret
key of the access key named in the token's subject, with the issuer `prometheus` and an expiry
(MinIO's `cmd/jwt.go`, `metricsRequestAuthenticate`, and `cmd/metrics.go`, `AuthMiddleware`).
`mc` makes it from the alias's keys with exactly these three claims (`cmd/utils.go`,
`getPrometheusToken`); this module does the same with the standard library, for the run's own
MinIO, whose root keys the run made. It follows that scheme as those sources define it; no
MinIO runs on the machines this package is tested on, so it was checked against them, not
against a running server.

The token opens the server's metrics and nothing else, and is worth no more than the secret
key it is signed with, which dies with the server: so it lives long (a year) rather than
failing a long run or a kept service mid-way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

ISSUER = "prometheus"
"""The issuer MinIO requires of a metrics token."""
ALGORITHM = "HS512"
LIFETIME_S = 365 * 24 * 3600


def _segment(data: bytes) -> str:
    """JWT's base64url without padding (RFC 7515), as MinIO decodes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Mapping[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def prometheus_token(
    access_key: str,
    secret_key: str,
    now: float | None = None,
    lifetime_s: int = LIFETIME_S,
) -> str:
    """A JWT that lets its holder read the metrics of a MinIO whose root (or any) user is
    `access_key` with `secret_key`, until `now` + `lifetime_s`."""
    issued = int(time.time() if now is None else now)
    header = {"alg": ALGORITHM, "typ": "JWT"}
    claims = {"iss": ISSUER, "sub": access_key, "exp": issued + lifetime_s}
    signing_input = f"{_segment(_json(header))}.{_segment(_json(claims))}"
    signature = hmac.new(secret_key.encode(), signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{_segment(signature)}"
