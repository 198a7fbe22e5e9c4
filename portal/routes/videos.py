"""A video as JSON, its deletion, and a live feed of a creator's videos (server-sent events).

Who sees what is `portal.videos`' one rule; this module only parses and answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from portal.auth import require_role, require_user
from portal.db import videos
from portal.videos import delete_video, describe, managed_video, visible_video
from portal.web import services_of, viewer_of

#: How often the event stream looks for changes, and sends a keep-alive comment.
EVENTS_POLL_SECONDS = 1.0
EVENTS_PING_SECONDS = 15.0


async def get_video(request: Request) -> Response:
    services = services_of(request)
    video = await visible_video(
        services.engine, viewer_of(request), request.path_params["video_id"]
    )
    body = await describe(services.engine, video)
    offers = await services.plugins.decide("video_offers", portal=services, video=video)
    body.update(preview_seconds=offers.preview_seconds, offers=offers.as_json())
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def remove_video(request: Request) -> Response:
    """Crypto-shred: the data key goes first, then the objects and the rows."""
    require_user(request)
    services = services_of(request)
    video = await managed_video(
        services.engine, viewer_of(request), request.path_params["video_id"]
    )
    await delete_video(services.engine, services.vault, video.id)
    await services.plugins.notify("video_deleted", portal=services, video_id=video.id)
    return Response(status_code=204)


def _event_state(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "progress": round(row["progress"], 3),
        "error": row["error"],
        "playable": row["playable"],
    }


async def video_events(request: Request) -> Response:
    """`data: {"id","status","progress","error","playable"}` for each of the creator's videos
    when it changes (all of them at first). Polls the database, so it sees work done by
    workers in other processes too."""
    user = require_role(request, "creator", "admin")
    engine: AsyncEngine = services_of(request).engine
    query = select(
        videos.c.id, videos.c.status, videos.c.progress, videos.c.error, videos.c.playable
    ).where(videos.c.creator_id == user.id)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 3000\n\n"
        seen: dict[str, dict[str, Any]] = {}
        quiet = 0.0
        while True:
            async with engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
            sent = False
            for row in rows:
                state = _event_state(row)
                if seen.get(state["id"]) != state:
                    seen[state["id"]] = state
                    yield f"data: {json.dumps(state)}\n\n"
                    sent = True
            current = {row["id"] for row in rows}
            for gone in [video_id for video_id in seen if video_id not in current]:
                del seen[gone]
                yield f"data: {json.dumps({'id': gone, 'status': 'deleted'})}\n\n"
                sent = True
            quiet = 0.0 if sent else quiet + EVENTS_POLL_SECONDS
            if quiet >= EVENTS_PING_SECONDS:
                quiet = 0.0
                yield ": ping\n\n"  # keeps proxies from closing an idle stream
            await anyio.sleep(EVENTS_POLL_SECONDS)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


routes = [
    Route("/api/videos/{video_id}", get_video, methods=["GET"], name="video"),
    Route("/api/videos/{video_id}", remove_video, methods=["DELETE"], name="delete_video"),
    Route("/api/events/videos", video_events, methods=["GET"], name="video_events"),
]
