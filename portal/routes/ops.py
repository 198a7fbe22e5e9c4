"""Operational endpoints: health for load balancers, Prometheus metrics."""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def healthz(request: Request) -> JSONResponse:
    """Healthy when the database answers; a load balancer takes the node out otherwise."""
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # any database failure means "not healthy", whatever its type
        return JSONResponse({"status": "unhealthy", "database": "down"}, status_code=503)
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def metrics(request: Request) -> Response:
    """Prometheus text format; counters are this process's, job counts the database's."""
    job_counts = await request.app.state.jobs.counts()
    text = request.app.state.metrics.render(job_counts)
    return Response(
        text,
        media_type="text/plain; version=0.0.4; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
