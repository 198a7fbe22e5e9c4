"""The watch, upload and dashboard pages, and saving where a viewer stopped watching.

Pages carry their configuration in `data-` attributes for our scripts: the CSP forbids inline
scripts, so nothing is written into a `<script>` block.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from portal.auth import current_user, require_role, require_user
from portal.db import users, utcnow, videos, watch_progress
from portal.errors import NotFound, ValidationFailed


def format_duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour up; empty when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_size(size: int | None) -> str:
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - loop returns at GB


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    # The app factory owns the Jinja environment; our filters are added once, on first use.
    filters = templates.env.filters
    if "duration" not in filters:
        filters["duration"] = format_duration
        filters["filesize"] = format_size
    return templates


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    """A page from templates/: every page shows who is logged in and carries the CSRF token."""
    return _templates(request).TemplateResponse(
        request,
        name,
        context or {},
        status_code=status_code,
        # Pages hold a CSRF token and personal data: never keep them in a shared cache.
        headers={"Cache-Control": "no-store"},
    )


async def _video_row(engine: AsyncEngine, video_id: str) -> Any:
    query = (
        select(videos, users.c.display_name.label("creator_name"))
        .join(users, users.c.id == videos.c.creator_id)
        .where(videos.c.id == video_id)
    )
    async with engine.connect() as conn:
        return (await conn.execute(query)).first()


def _can_see(request: Request, row: Any) -> bool:
    """Ready or playable films are public; anything else only to its creator and admins."""
    if row.status == "ready" or row.playable:
        return True
    user = current_user(request)
    return user is not None and (user.id == row.creator_id or user.role == "admin")


async def watch(request: Request) -> Response:
    video_id = request.path_params["video_id"]
    engine = request.app.state.engine
    row = await _video_row(engine, video_id)
    if row is None or not _can_see(request, row):
        raise NotFound("There is no film at this address; it may have been deleted.")
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
        if saved and not (row.duration and saved > row.duration - 5):
            position = float(saved)
    return render(request, "watch.html", {"video": row, "resume": position})


async def upload(request: Request) -> Response:
    require_role(request, "creator", "admin")
    settings = request.app.state.settings
    return render(request, "upload.html", {"quota_bytes": settings.quota_bytes})


async def dashboard(request: Request) -> Response:
    user = require_role(request, "creator", "admin")
    query = (
        select(videos)
        .where(videos.c.creator_id == user.id)
        .order_by(videos.c.created_at.desc(), videos.c.id)
    )
    async with request.app.state.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return render(request, "dashboard.html", {"videos": rows})


async def save_position(request: Request) -> Response:
    """`PUT {"position": seconds}`: where this viewer stopped, to resume from next time."""
    user = require_user(request)
    video_id = request.path_params["video_id"]
    try:
        body = await request.json()
        position = float(body["position"])
    except (ValueError, TypeError, KeyError):
        raise ValidationFailed('Send JSON: {"position": seconds}.') from None
    if not math.isfinite(position) or position < 0:
        raise ValidationFailed("The position must be a number of seconds, 0 or more.")
    engine: AsyncEngine = request.app.state.engine
    row = await _video_row(engine, video_id)
    if row is None or not _can_see(request, row):
        raise NotFound("There is no film at this address; it may have been deleted.")
    if row.duration:
        position = min(position, float(row.duration))
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
    Route("/upload", upload, methods=["GET"], name="upload"),
    Route("/dashboard", dashboard, methods=["GET"], name="dashboard"),
    Route("/api/videos/{video_id}/position", save_position, methods=["PUT"], name="position"),
]
