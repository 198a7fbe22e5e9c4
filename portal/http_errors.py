"""The one place where domain errors become HTTP responses.

API clients (paths under /api/, or asking for JSON) get `{"error": code, "message": ...}`;
people in a browser get the error page. Unexpected exceptions are logged with a reference
and answered with a generic 500 that leaks nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.errors import (
    BearerTokenRequired,
    DataKeyExists,
    DataKeyMissing,
    KeyringError,
    ObjectNameInvalid,
    ObjectNotFound,
    Overloaded,
    PayloadTooLarge,
    PortalError,
    RateLimited,
    StorageError,
    StorageFull,
    Unavailable,
    VaultError,
    VaultTampered,
)
from portal.outages import outage_of
from transcoder.errors import MediaError

log = logging.getLogger("megamovie.http")


def wants_json(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/api/") or path.startswith("/stream/") or path == "/metrics":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def render_error(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
) -> Response:
    # Every error response is made here, also the auth middleware's CSRF refusal and the 500
    # for an unexpected exception. (`portal.routes.uploads.TusResumableMiddleware` adds the
    # tus header to those under /api/uploads.)
    headers = {"Cache-Control": "no-store"}
    if wants_json(request):
        body = {"error": code, "message": message, **(details or {})}
        return JSONResponse(body, status, headers=headers)
    templates = getattr(request.app.state, "templates", None)
    if templates is None:
        return HTMLResponse(f"<h1>{status}</h1>", status, headers=headers)
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "code": code, "message": message},
        status_code=status,
        headers=headers,
    )


#: The vault's errors know nothing of HTTP (the vault is a leaf); their status and code are
#: here. Most specific first: the first class the error is an instance of wins.
VAULT_STATUSES: list[tuple[type[VaultError], int, str]] = [
    (DataKeyMissing, 404, "data_key_missing"),
    (DataKeyExists, 409, "conflict"),
    (ObjectNotFound, 404, "object_not_found"),
    (ObjectNameInvalid, 400, "object_name_invalid"),
    (StorageFull, 507, "insufficient_storage"),
    (StorageError, 503, "storage_error"),
    (KeyringError, 500, "keyring_error"),
    (VaultTampered, 500, "vault_tampered"),
    (VaultError, 500, "vault_error"),
]


def vault_status(exc: VaultError) -> tuple[int, str]:
    """The HTTP status and error code for a vault error."""
    return next((status, code) for kind, status, code in VAULT_STATUSES if isinstance(exc, kind))


async def vault_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VaultError)
    status, code = vault_status(exc)
    if status >= 500:
        # Tampering or a storage failure is an operator's problem: log it loudly, tell the
        # client only that it failed. Never send bytes that did not authenticate.
        log.error("vault failure on %s %s: %s", request.method, request.url.path, exc.message)
    response = render_error(request, status, code, exc.message)
    if isinstance(exc, StorageError):
        # The store is unreachable or full: worth trying again, not at once.
        response.headers["Retry-After"] = "60" if isinstance(exc, StorageFull) else "5"
    return response


async def portal_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PortalError)
    response = render_error(request, exc.status_code, exc.code, exc.message, exc.details())
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, RateLimited | Overloaded | Unavailable) and retry_after:
        response.headers["Retry-After"] = str(retry_after)
    if isinstance(exc, BearerTokenRequired):
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, PayloadTooLarge):
        # The rest of the body is still on its way: hang up instead of reading it.
        response.headers["Connection"] = "close"
    return response


async def media_error(request: Request, exc: Exception) -> Response:
    reason = getattr(exc, "reason", str(exc))
    return render_error(request, 422, "media_rejected", reason)


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    response = render_error(request, exc.status_code, "http_error", exc.detail)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    ref = secrets.token_hex(6)
    log.exception("unhandled error ref=%s on %s %s", ref, request.method, request.url.path)
    return render_error(
        request, 500, "internal_error", f"Something went wrong on our side (reference {ref})."
    )


class UnexpectedErrorMiddleware:
    """Answers an unexpected exception with the generic 500 *inside* the middleware that adds
    the security headers (and counts responses). Starlette's own ServerErrorMiddleware sits
    outside every user middleware, so its 500 went out without CSP, nosniff or frame options.

    The exception is raised again once the answer is sent, as Starlette does, so servers and
    test clients still see it. A database outage (portal.outages) is no bug: it is answered
    503 `unavailable` with Retry-After, and not raised again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            outage = outage_of(exc)
            if outage is not None and not started:
                # The database is down, not our code: a 503 naming it, and nothing to raise.
                response = await portal_error(Request(scope), outage)
                await response(scope, receive, send)
                return
            if not started:
                response = await unexpected_error(Request(scope), exc)
                await response(scope, receive, send)
            raise


def exception_handlers() -> dict[type[Exception] | int, object]:
    return {
        PortalError: portal_error,
        VaultError: vault_error,
        MediaError: media_error,
        HTTPException: http_exception,
        Exception: unexpected_error,
    }
