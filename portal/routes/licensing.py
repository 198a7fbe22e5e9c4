"""What creators sell: a film's offers and preview, and their channel's monthly price."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth import require_role, require_user
from portal.db import is_id
from portal.licensing.offers import (
    channel_plan,
    parse_channel_price,
    parse_offers,
    replace_offers,
    set_channel_plan,
)
from portal.videos import managed_video
from portal.web import json_object, services_of, viewer_of


async def put_offers(request: Request) -> Response:
    """`PUT {"preview_seconds": 120, "offers": [...]}` (the film's creator or an admin)."""
    require_user(request)
    services = services_of(request)
    video = await managed_video(
        services.engine, viewer_of(request), request.path_params["video_id"]
    )
    preview, specs = parse_offers(await json_object(request), video.duration)
    stored = await replace_offers(services.engine, video.id, preview, specs)
    return JSONResponse(
        {"video_id": video.id, "preview_seconds": stored.preview_seconds,
         "offers": stored.as_json()},
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


async def put_channel_offers(request: Request) -> Response:
    """`PUT {"amount": 500, "currency": "EUR"}`: the creator's channel subscription, a month."""
    user = require_role(request, "creator", "admin")
    price = parse_channel_price(await json_object(request))
    await set_channel_plan(services_of(request).engine, user.id, price)
    return JSONResponse(
        {"creator_id": user.id, **price.as_json(), "period": "month"},
        headers={"Cache-Control": "no-store"},
    )


async def get_channel_offers(request: Request) -> Response:
    creator_id = request.path_params["creator_id"]
    # An id from a URL: one that cannot exist has no plan (and NUL would fail the query).
    engine = services_of(request).engine
    price = await channel_plan(engine, creator_id) if is_id(creator_id) else None
    body: dict[str, Any] = {"creator_id": creator_id, "period": "month", "price": None}
    if price is not None:
        body["price"] = price.as_json()
    return JSONResponse(body)


routes = [
    Route("/api/videos/{video_id}/offers", put_offers, methods=["PUT"], name="video_offers"),
    Route("/api/channel/offers", put_channel_offers, methods=["PUT"], name="channel_offers"),
    Route(
        "/api/channels/{creator_id}/offers",
        get_channel_offers,
        methods=["GET"],
        name="channel_price",
    ),
]
