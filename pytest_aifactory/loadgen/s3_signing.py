"""AWS Signature Version 4 for the `s3` client's requests, by botocore (the signer boto3 uses).

The client sends with aiohttp for its timing; only the headers come from botocore. A body's
SHA-256 is part of the signature: bodies are hashed once when made, not on every request.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from pytest_aifactory.services.kinds.s3 import ACCESS_KEY_ENV, REGION, REGION_ENV, SECRET_KEY_ENV

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_REGION = REGION
AWS_ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
AWS_SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
AWS_REGION_ENV = "AWS_REGION"
"""What a client of an `external` S3 service reads from its own environment instead."""


class MissingCredentials(ValueError):
    """Neither the service nor the environment gave an access key and a secret key."""


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str
    region: str = DEFAULT_REGION

    def __repr__(self) -> str:  # never show the secret in a traceback or a log
        return f"S3Credentials(access_key='***', secret_key='***', region={self.region!r})"

    @classmethod
    def find(
        cls,
        service_env: Mapping[str, str],
        region: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> S3Credentials:
        """The service's per-run keys, else the standard AWS variables of this process."""
        env = os.environ if environ is None else environ
        access = service_env.get(ACCESS_KEY_ENV) or env.get(AWS_ACCESS_KEY_ENV)
        secret = service_env.get(SECRET_KEY_ENV) or env.get(AWS_SECRET_KEY_ENV)
        if not access or not secret:
            raise MissingCredentials(
                "no S3 credentials: the service gave none and "
                f"{AWS_ACCESS_KEY_ENV}/{AWS_SECRET_KEY_ENV} are not set"
            )
        found_region = (
            region
            or service_env.get(REGION_ENV)
            or env.get(AWS_REGION_ENV)
            or env.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        return cls(access, secret, found_region)


class _KnownPayloadAuth(S3SigV4Auth):
    """S3's SigV4 with the body's SHA-256 given rather than computed on every request."""

    def payload(self, request: AWSRequest) -> str:
        known = request.context.get("payload_sha256")
        return known if known else super().payload(request)


class Signer:
    """Signed headers for path-style requests to one endpoint (`http://host:port/bucket/key`)."""

    def __init__(self, endpoint: str, credentials: S3Credentials) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.region = credentials.region
        self._auth = _KnownPayloadAuth(
            Credentials(credentials.access_key, credentials.secret_key), "s3", credentials.region
        )

    def url(self, bucket: str, key: str = "", query: Mapping[str, str] | None = None) -> str:
        """The request URL, already percent-encoded as S3 expects (send it as it is)."""
        path = f"/{bucket}/" + quote(key, safe="/~") if key else f"/{bucket}"
        if query:
            path += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="-_.~")
        return self.endpoint + path

    def headers(
        self,
        method: str,
        url: str,
        payload_sha256: str = EMPTY_SHA256,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, headers=dict(extra or {}))
        request.context["payload_sha256"] = payload_sha256
        self._auth.add_auth(request)
        return dict(request.headers.items())
