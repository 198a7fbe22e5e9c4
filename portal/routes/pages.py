"""The watch, upload and dashboard pages, and saving where a viewer stopped watching.

Pages carry their configuration in `data-` attributes for our scripts: the CSP forbids inline
scripts, so nothing is written into a `<script>` block.
"""

from __future__ import annotations

import math

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from portal.auth import current_user, require_role, require_user
from portal.creator_stats import film_stats
from portal.db import utcnow, videos, watch_progress
from portal.errors import ValidationFailed
from portal.licensing.offers import channel_plan, load_offers
from portal.parsing import json_object, read_json
from portal.payouts import creator_statements
from portal.videos import visible_video
from portal.web import render, services_of, viewer_of

#: Bytes of `PUT /api/videos/{id}/position`: `{"position": 93.5}` and some room.
POSITION_BODY_LIMIT = 1024


async def watch(request: Request) -> Response:
    video_id = request.path_params["video_id"]
    engine = services_of(request).engine
    video = await visible_video(engine, viewer_of(request), video_id)
    position = 0.0
    user = current_user(request)
    if user is not None:
        async with engine.connect() as conn:
            saved = (
                await conn.execute(
                    select(watch_progress.c.position).where(
                        watch_progress.c.user_id == user.id,
                        watch_progress.c.video_id == video_id,
                    )
                )
            ).scalar_one_or_none()
        # Starting a finished film from its last seconds helps nobody: start it over.
        if saved and not (video.duration and saved > video.duration - 5):
            position = float(saved)
    settings = services_of(request).settings
    return render(
        request,
        "watch.html",
        {
            "video": video,
            "resume": position,
            "pass_price": {"amount": settings.pass_amount, "currency": settings.pass_currency},
            "channel_price": await channel_plan(engine, video.creator_id),
        },
    )


async def upload(request: Request) -> Response:
    require_role(request, "creator", "admin")
    settings = services_of(request).settings
    return render(request, "upload.html", {"quota_bytes": settings.quota_bytes})


async def dashboard(request: Request) -> Response:
    user = require_role(request, "creator", "admin")
    query = (
        select(videos)
        .where(videos.c.creator_id == user.id)
        .order_by(videos.c.created_at.desc(), videos.c.id)
    )
    services = services_of(request)
    engine = services.engine
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    ids = [row.id for row in rows]
    offers = {row.id: await load_offers(engine, row.id, row.preview_seconds) for row in rows}
    return render(
        request,
        "dashboard.html",
        {
            "videos": rows,
            "offers": offers,
            "stats": await film_stats(engine, user.id, ids),
            "statements": await creator_statements(engine, user.id),
            "channel_price": await channel_plan(engine, user.id),
            "currency": services.settings.pass_currency,
        },
    )


async def save_position(request: Request) -> Response:
    """`PUT {"position": seconds}`: where this viewer stopped, to resume from next time."""
    user = require_user(request)
    video_id = request.path_params["video_id"]
    body = json_object(
        await read_json(request, POSITION_BODY_LIMIT),
        {"position": (int, float)},
        '{"position": seconds}',
    )
    position = float(body["position"])
    if not math.isfinite(position) or position < 0:
        raise ValidationFailed("The position must be a number of seconds, 0 or more.")
    engine = services_of(request).engine
    video = await visible_video(engine, viewer_of(request), video_id)
    if video.duration:
        position = min(position, float(video.duration))
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    statement = insert(watch_progress).values(
        user_id=user.id, video_id=video_id, position=position, updated_at=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=[watch_progress.c.user_id, watch_progress.c.video_id],
        set_={"position": position, "updated_at": now},
    )
    async with engine.begin() as conn:
        await conn.execute(statement)
    return Response(status_code=204)


routes = [
    Route("/watch/{video_id}", watch, methods=["GET"], name="watch"),
    Route("/upload", upload, methods=["GET"], name="upload_page"),
    Route("/dashboard", dashboard, methods=["GET"], name="dashboard"),
    Route("/api/videos/{video_id}/position", save_position, methods=["PUT"], name="position"),
]
