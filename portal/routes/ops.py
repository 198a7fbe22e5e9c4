"""Operational endpoints: health for load balancers, Prometheus metrics.

`/metrics` tells whoever reads it how busy the portal is and how many jobs fail, so it is not
public: with `MEGAMOVIE_METRICS_TOKEN` set it needs that bearer token, otherwise it answers
only clients on loopback.
"""

from __future__ import annotations

import hmac
import ipaddress

import anyio
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.errors import BearerTokenRequired, PermissionDenied
from portal.metrics import CONTENT_TYPE
from portal.web import services_of, settings_of


async def healthz(request: Request) -> JSONResponse:
    """Each part the portal needs, `up` or `down`; 503 when any is down, so a load balancer
    takes the node out. Every check is bounded by its part's timeout: a part that hangs is
    reported down, it does not hang the health check."""
    services = services_of(request)
    settings = services.settings

    async def database() -> None:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    parts = {
        "database": (database, settings.db_timeout_seconds),
        "storage": (services.vault.storage.ping, settings.s3_timeout_seconds),
    }
    report: dict[str, str] = {}
    for name, (check, timeout) in parts.items():
        try:
            with anyio.fail_after(timeout):
                await check()
            report[name] = "up"
        except Exception:  # whatever the failure, the part is not usable now
            report[name] = "down"
    healthy = all(state == "up" for state in report.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unhealthy", **report},
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )


def on_loopback(host: str | None) -> bool:
    """Is `host` (the peer address) this machine's loopback, 127.0.0.0/8 or ::1?"""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:  # no address (a Unix socket) or a name: not provably local
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback


def authorise_scrape(request: Request) -> None:
    """Let a scraper read /metrics, or raise BearerTokenRequired (401) / PermissionDenied."""
    settings = settings_of(request)
    if settings.metrics_token:
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        expected = settings.metrics_token.reveal().encode()
        # Constant time, so the token cannot be guessed a byte at a time from response times.
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), expected):
            raise BearerTokenRequired(
                "Metrics need 'Authorization: Bearer <token>' with the token from "
                "MEGAMOVIE_METRICS_TOKEN."
            )
        return
    if not on_loopback(request.client.host if request.client else None):
        raise PermissionDenied(
            "Metrics are only served to this machine; scrape from localhost, or set "
            "MEGAMOVIE_METRICS_TOKEN and send it as a bearer token."
        )


async def metrics(request: Request) -> Response:
    """Prometheus text format: every process of this machine (portal.metrics), and the
    database's job figures."""
    authorise_scrape(request)
    services = services_of(request)
    job_counts = await services.jobs.counts()
    depth, age = await services.jobs.backlog()
    body = services.metrics.render(job_counts, depth, age)
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


routes = [
    Route("/healthz", healthz, methods=["GET"], name="healthz"),
    Route("/metrics", metrics, methods=["GET"], name="metrics"),
]
