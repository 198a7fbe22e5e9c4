"""A video as JSON, its deletion, and a live feed of a creator's videos (server-sent events).

Who sees what: a ready video is public; an unfinished or failed one is seen by its creator
and admins only, and is a 404 to everyone else so ids reveal nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy import delete, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from portal.accounts import User
from portal.auth import current_user, require_role, require_user
from portal.db import renditions, users, videos
from portal.errors import NotFound, PermissionDenied

#: How often the event stream looks for changes, and sends a keep-alive comment.
EVENTS_POLL_SECONDS = 1.0
EVENTS_PING_SECONDS = 15.0


async def fetch_video(engine: AsyncEngine, video_id: str) -> RowMapping | None:
    async with engine.connect() as conn:
        return (
            (await conn.execute(select(videos).where(videos.c.id == video_id))).mappings().first()
        )


def can_manage(video: RowMapping, user: User | None) -> bool:
    return user is not None and (user.id == video["creator_id"] or user.role == "admin")


async def visible_video(request: Request, video_id: str) -> RowMapping:
    """The video if this request may see it; NotFound otherwise (never 403: no leak)."""
    video = await fetch_video(request.app.state.engine, video_id)
    if video is None or (
        video["status"] != "ready" and not can_manage(video, current_user(request))
    ):
        raise NotFound("There is no such video; it may have been deleted.")
    return video


async def video_json(engine: AsyncEngine, video: RowMapping) -> dict[str, Any]:
    async with engine.connect() as conn:
        creator = (
            await conn.execute(
                select(users.c.id, users.c.display_name).where(users.c.id == video["creator_id"])
            )
        ).first()
        rungs = (
            await conn.execute(
                select(renditions)
                .where(renditions.c.video_id == video["id"])
                .order_by(renditions.c.position)
            )
        ).mappings()
        rendition_list = [
            {"name": r["name"], "height": r["height"], "width": r["width"],
             "bandwidth": r["bandwidth"]}
            for r in rungs
        ]  # fmt: skip
    return {
        "id": video["id"],
        "title": video["title"],
        "description": video["description"],
        "tags": video["tags"].split(),
        "creator": {"id": creator.id, "display_name": creator.display_name} if creator else None,
        "status": video["status"],
        "progress": round(video["progress"], 4),
        "playable": video["playable"],
        "error": video["error"],
        "duration": video["duration"],
        "renditions": rendition_list,
        "poster_url": f"/media/{video['id']}/poster.jpg"
        if video["has_poster"] and video["status"] == "ready"
        else None,
        "views": video["views"],
        "created_at": video["created_at"].isoformat(),
    }


async def get_video(request: Request) -> Response:
    video = await visible_video(request, request.path_params["video_id"])
    body = await video_json(request.app.state.engine, video)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def delete_video(request: Request) -> Response:
    """Crypto-shred: the data key goes first, then the objects and the rows."""
    user = require_user(request)
    video = await visible_video(request, request.path_params["video_id"])
    if not can_manage(video, user):
        raise PermissionDenied("Only the video's creator or an admin can delete it.")
    await delete_video_everywhere(request.app.state.engine, request.app.state.vault, video["id"])
    return Response(status_code=204)


async def delete_video_everywhere(engine: AsyncEngine, vault: Any, video_id: str) -> None:
    """Destroy the data key and stored objects, then every row (the schema cascades)."""
    await vault.destroy(video_id)
    async with engine.begin() as conn:
        await conn.execute(delete(videos).where(videos.c.id == video_id))


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
    engine: AsyncEngine = request.app.state.engine
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
    Route("/api/videos/{video_id}", delete_video, methods=["DELETE"]),
    Route("/api/events/videos", video_events, methods=["GET"], name="video_events"),
]
