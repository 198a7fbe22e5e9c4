"""Browser hardening headers on every response, the allowed host names, and who the client is.

Rate limits on the doors people knock on live in portal.ratelimit (in memory, per process).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.http_errors import render_error
from portal.parsing import is_text

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        # hls.js plays through MediaSource, which the video element sees as a blob: URL.
        "media-src 'self' blob:",
        "worker-src 'self' blob:",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)

SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "permissions-policy": (
        "camera=(), microphone=(), geolocation=(), payment=(), usb=(), "
        "interest-cohort=(), fullscreen=(self), autoplay=(self)"
    ),
    "cross-origin-opener-policy": "same-origin",
}

WINDOW_SECONDS = 60


class ResponseHeadersMiddleware:
    """Adds `headers` to every HTTP response under `prefix` that does not set them itself,
    whatever made it: an endpoint, an error handler, a middleware's refusal, the router."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str], prefix: str = "/") -> None:
        self.app = app
        self.headers = dict(headers)
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SecurityHeadersMiddleware(ResponseHeadersMiddleware):
    """Adds `SECURITY_HEADERS` to every HTTP response that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, SECURITY_HEADERS)


#: C0 controls and DEL: no address of ours holds one, and PostgreSQL refuses NUL in text.
_CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F))


class RequestGateMiddleware:
    """Refuses, before anything reads the session or the database, a request no route should
    see (one middleware for all three, so a segment GET pays for one hop, not three):

    - `400 bad_path`: its path, once percent-decoded, holds a control character (`%00`,
      `%0A`...). Every path parameter (ids, names, tokens) is then free of them wherever it
      goes: a NUL reaching PostgreSQL was a 500, found by the fuzzer in one route after
      another until refused here, once, for all of them.
    - `400 bad_query`: its query string, percent-decoded, holds a control character other
      than tab and line breaks (`?q=a%00b`). No query parameter of the portal takes one, and
      a NUL in a search or a cursor would otherwise be echoed back, or reach the database.
    - `400 host_not_allowed`: its `Host` is not one of the portal's names
      (`MEGAMOVIE_ALLOWED_HOSTS`). Anything the portal builds from the request's host (an
      absolute link, a redirect) then points back at the portal, never at a name an
      attacker chose. `*` allows any host: the default, for a portal on loopback during
      development."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        if not _CONTROL.isdisjoint(scope["path"]):
            message = "The address holds a control character (such as %00); check the link."
            return render_error(Request(scope), 400, "bad_path", message)
        if _query_has_control(scope["query_string"]):
            message = (
                "The address's query (after ?) holds a control character (such as %00); "
                "check the link."
            )
            return render_error(Request(scope), 400, "bad_query", message)
        if "*" in self.allowed:
            return None
        request = Request(scope)
        host = host_name(request.headers.get("host", ""))
        if any(_host_matches(host, pattern) for pattern in self.allowed):
            return None
        message = "This server does not answer to that host name; use the portal's own address."
        return render_error(request, 400, "host_not_allowed", message)


def _query_has_control(query: bytes) -> bool:
    """Does the query hold what `parsing.is_text` refuses in a text field? The HTTP parser
    refuses raw control bytes, so only an escape can hold one; bytes map one to one onto
    latin-1 characters, none of them refused but the controls."""
    return b"%" in query and not is_text(unquote_to_bytes(query).decode("latin-1"))


def host_name(header: str) -> str:
    """The name in a `Host` header, lower case, without the port: `[::1]:8000` -> `[::1]`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.partition(":")[0]


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def client_ip(request: Request) -> str:
    # uvicorn puts the client here: the peer, or behind a trusted proxy the address it sent
    # (MEGAMOVIE_FORWARDED_ALLOW_IPS, see `portal.server.server_config`).
    return request.client.host if request.client else "unknown"
