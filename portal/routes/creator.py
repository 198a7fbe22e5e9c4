"""The creator dashboard's figures as JSON: views, watch time and earnings per film per day."""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth import require_role
from portal.creator_stats import DEFAULT_DAYS, daily_series, film_stats
from portal.db import videos
from portal.money import parse_currency
from portal.parsing import query_number
from portal.web import services_of

MAX_DAYS = 366


async def creator_stats(request: Request) -> Response:
    """`GET /api/creator/stats?days=30&currency=EUR`: per film totals and a daily series."""
    user = require_role(request, "creator", "admin")
    services = services_of(request)
    days = query_number(
        request.query_params, "days", default=DEFAULT_DAYS, minimum=1, maximum=MAX_DAYS
    )
    currency = parse_currency(
        request.query_params.get("currency", services.settings.pass_currency), "currency"
    )
    async with services.engine.connect() as conn:
        films = (
            await conn.execute(
                select(videos.c.id, videos.c.title)
                .where(videos.c.creator_id == user.id)
                .order_by(videos.c.created_at.desc(), videos.c.id)
            )
        ).all()
    ids = [film.id for film in films]
    totals = await film_stats(services.engine, user.id, ids)
    series = await daily_series(services.engine, user.id, ids, currency, days=days)
    return JSONResponse(
        {
            "films": [{"title": film.title, **totals[film.id].as_json()} for film in films],
            "channel": totals[None].as_json() | {"title": "Channel and Pass"},
            "series": series.as_json(),
        },
        headers={"Cache-Control": "no-store"},
    )


routes = [Route("/api/creator/stats", creator_stats, methods=["GET"], name="creator_stats")]
