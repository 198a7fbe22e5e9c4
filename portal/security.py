"""Browser hardening headers on every response, and rate limits on the doors people knock on.

Rate limits use the `rate_limits` table (a fixed one-minute window per action and client IP),
so they hold across every process serving the same database, which an in-memory counter
would not once the portal runs more than one server process.
"""

from __future__ import annotations

import time

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.db import rate_limits
from portal.errors import RateLimited

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


class SecurityHeadersMiddleware:
    """Adds `SECURITY_HEADERS` to every HTTP response that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_ip(request: Request) -> str:
    # uvicorn puts the client here: the peer, or behind a trusted proxy the address it sent
    # (MEGAMOVIE_FORWARDED_ALLOW_IPS, see `portal.cli.server_options`).
    return request.client.host if request.client else "unknown"


async def hit_rate_limit(
    engine: AsyncEngine, bucket: str, limit: int, now: float | None = None
) -> None:
    """Count one hit on `bucket`; raise RateLimited once it passes `limit` in this minute."""
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
    dialect = engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = insert(rate_limits).values(bucket=bucket, window_start=window, hits=1)
    statement = values.on_conflict_do_update(
        index_elements=[rate_limits.c.bucket, rate_limits.c.window_start],
        set_={"hits": rate_limits.c.hits + 1},
    ).returning(rate_limits.c.hits)
    async with engine.begin() as conn:
        hits = (await conn.execute(statement)).scalar_one()
        if hits == 1:
            # First hit of a new window: forget this bucket's old windows.
            await conn.execute(
                delete(rate_limits).where(
                    rate_limits.c.bucket == bucket, rate_limits.c.window_start < window
                )
            )
    if hits > limit:
        retry_after = max(1, int(window + WINDOW_SECONDS - now))
        raise RateLimited(
            f"Too many attempts from your address; wait {retry_after} seconds and try again.",
            retry_after=retry_after,
        )
