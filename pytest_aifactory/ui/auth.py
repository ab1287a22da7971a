"""Who may talk to `aifactory ui`: the holder of the token it printed, through a browser pointed
at this very server.

A login node is shared: every local account can connect to 127.0.0.1:PORT, so the loopback
address alone proves nothing. Each request must carry the token (in the URL once, then in a
cookie; or in a header for scripts). The Host header must name the loopback address and this
port, so a web page whose name a foreign DNS server points at 127.0.0.1 cannot reach the server
with the browser's cookie (DNS rebinding). Requests that change something also need the token in
a header that only the interface's own scripts send (a form another site posts cannot).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

TOKEN_PARAM = "token"
CSRF_HEADER = "X-AIFactory-Token"
AUTH_SCHEME = "token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
SAFE_METHODS = frozenset({"GET", "HEAD"})
REPORTS_PATH = "/reports/"

REFUSED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aifactory ui: refused</title></head>
<body><h1>Refused</h1><p>{reason}</p>
<p>Open the URL that <code>aifactory ui</code> printed when it started (it carries the access
token), or start it again.</p></body></html>
"""


def cookie_name(port: int) -> str:
    """One cookie per port: cookies ignore ports, so two interfaces on one host would otherwise
    overwrite each other's token."""
    return f"aifactory-ui-{port}"


def reports_cookie_name(port: int) -> str:
    return f"aifactory-ui-{port}-reports"


def reports_token(token: str) -> str:
    """What the reports cookie holds: derived from the token, but worth nothing beyond
    reading reports."""
    return hmac.new(token.encode(), b"reports", hashlib.sha256).hexdigest()


def same_token(given: str | None, token: str) -> bool:
    """Constant-time, so the time a refusal takes says nothing about how much of a guess was
    right."""
    if not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def server_port(request: web.Request) -> int:
    """The port this connection came in on (the one the command chose when given port 0)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return 0


def host_allowed(host: str | None, port: int) -> bool:
    return host is not None and host in {f"{name}:{port}" for name in LOOPBACK_NAMES}


def header_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == AUTH_SCHEME and value.strip():
        return value.strip()
    return request.headers.get(CSRF_HEADER)


def refused(reason: str) -> web.Response:
    return web.Response(
        status=403, text=REFUSED_PAGE.format(reason=reason), content_type="text/html"
    )


def url_without_token(request: web.Request) -> str:
    query = [(key, value) for key, value in request.query.items() if key != TOKEN_PARAM]
    return request.path + (f"?{urlencode(query)}" if query else "")


def make_auth_middleware(token: str) -> Middleware:
    """The middleware that checks the host, the token and, for changes, the CSRF header."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        port = server_port(request)
        if not host_allowed(request.headers.get("Host"), port):
            return refused("This server answers only as 127.0.0.1 or localhost with its port.")
        in_url = request.query.get(TOKEN_PARAM)
        if in_url is not None:
            if not same_token(in_url, token) or request.method not in SAFE_METHODS:
                return refused("The access token is not the one this server printed.")
            # the token leaves the address bar (and the history) at once
            response = web.Response(status=302, headers={"Location": url_without_token(request)})
            response.set_cookie(
                cookie_name(port), token, httponly=True, samesite="Strict", path="/"
            )
            # a report linked from the dashboard opens from a sandboxed (opaque) origin, which
            # sends no Strict cookie: a Lax one that opens reports only, served sandboxed too
            response.set_cookie(
                reports_cookie_name(port),
                reports_token(token),
                httponly=True,
                samesite="Lax",
                path=REPORTS_PATH,
            )
            return response
        from_header = header_token(request)
        if (
            request.method in SAFE_METHODS
            and request.path.startswith(REPORTS_PATH)
            and same_token(request.cookies.get(reports_cookie_name(port)), reports_token(token))
        ):
            return await handler(request)
        if not (
            same_token(request.cookies.get(cookie_name(port)), token)
            or same_token(from_header, token)
        ):
            return refused("This request carries no valid access token.")
        if request.method not in SAFE_METHODS and not same_token(
            request.headers.get(CSRF_HEADER), token
        ):
            return refused(f"A change needs the {CSRF_HEADER} header the interface's pages send.")
        return await handler(request)

    return authenticate


APP_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)
"""The interface's own pages: scripts and styles from its own files only, never inline."""

REPORT_CSP = "sandbox allow-scripts"
"""Reports and dashboards: they run their own inline scripts, but in an opaque origin, so a
report planted in the reports folder cannot call the interface with the user's cookie."""


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Set on every answer, refusals and errors included (an `on_response_prepare` signal)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Content-Security-Policy", APP_CSP)
    response.headers.setdefault("Cache-Control", "no-store")
