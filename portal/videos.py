"""A video as the domain sees it, who may see it, and how it is deleted.

One rule decides visibility, and every entry point uses it: the catalog, channels and search
(through `public_filter`, the same rule in SQL), `/watch`, `/api/videos/{id}`, the playback
grant, posters and storyboards (through `visible_video`).

- A film is *public* once it can be watched: `ready`, or still `processing` but `playable`
  (its first segments are in). Everyone sees it.
- Anything else (uploading, queued, processing before the first segments, failed) is seen by
  its creator and by admins only. To everyone else it does not exist: 404, never 403, so ids
  reveal nothing. A film that fails after it became playable stops being public at once.
- A deleted film is gone for everyone.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from portal.accounts import User
from portal.db import is_id, renditions, segments, users, videos
from portal.errors import Conflict, NotFound, PermissionDenied
from portal.layout import POSTER
from portal.vault import Vault

STATES = ("uploading", "queued", "processing", "ready", "failed")
NOT_FOUND = "There is no film at this address; it may have been deleted."


@dataclass(frozen=True)
class Viewer:
    """Who is asking: a logged-in user, or an anonymous client known only by a keyed hash of
    its address (never the raw address)."""

    user: User | None
    anonymous_key: str = ""

    @property
    def key(self) -> str:
        """Stable id for per-viewer bookkeeping (views, open streams)."""
        return f"u:{self.user.id}" if self.user is not None else f"a:{self.anonymous_key}"

    @property
    def user_id(self) -> str | None:
        return self.user.id if self.user is not None else None

    @property
    def is_admin(self) -> bool:
        return self.user is not None and self.user.role == "admin"

    @classmethod
    def anonymous(cls, secret_key: bytes, address: str) -> Viewer:
        key = hmac.new(secret_key, b"mm.views", hashlib.sha256).digest()
        return cls(None, hmac.new(key, address.encode(), hashlib.sha256).hexdigest())


@dataclass(frozen=True)
class Video:
    id: str
    creator_id: str
    creator_name: str
    title: str
    description: str
    tags: tuple[str, ...]
    status: str
    progress: float
    error: str | None
    duration: float | None
    width: int | None
    height: int | None
    has_poster: bool
    has_storyboard: bool
    playable: bool
    preview_seconds: int
    views: int
    created_at: datetime
    ready_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Video:
        return cls(
            id=row.id,
            creator_id=row.creator_id,
            creator_name=row.creator_name,
            title=row.title,
            description=row.description or "",
            tags=tuple((row.tags or "").split()),
            status=row.status,
            progress=float(row.progress),
            error=row.error,
            duration=row.duration,
            width=row.width,
            height=row.height,
            has_poster=bool(row.has_poster),
            has_storyboard=bool(row.has_storyboard),
            playable=bool(row.playable),
            preview_seconds=int(row.preview_seconds),
            views=int(row.views),
            created_at=row.created_at,
            ready_at=row.ready_at,
        )

    @property
    def is_public(self) -> bool:
        return self.status == "ready" or (self.status == "processing" and self.playable)

    @property
    def can_play(self) -> bool:
        """Has segments a player can start on (the same condition as public)."""
        return self.is_public

    def managed_by(self, viewer: Viewer) -> bool:
        user = viewer.user
        return user is not None and (user.id == self.creator_id or user.role == "admin")

    def visible_to(self, viewer: Viewer) -> bool:
        return self.is_public or self.managed_by(viewer)

    @property
    def poster_path(self) -> str | None:
        """The poster's URL path, when it has one; the only place that URL is built."""
        return poster_path(self.id) if self.has_poster else None


#: The poster route's path (portal.routes.playback mounts it): ids are letters and digits, so
#: formatting it needs no quoting.
POSTER_ROUTE = f"/media/{{video_id}}/{POSTER}"


def poster_path(video_id: str) -> str:
    """A video's poster URL path: pages, the API and the dashboard script all get it here."""
    return POSTER_ROUTE.format(video_id=video_id)


def public_filter() -> ColumnElement[bool]:
    """`Video.is_public` in SQL, for listings (catalog, channels, search)."""
    return or_(
        videos.c.status == "ready",
        and_(videos.c.status == "processing", videos.c.playable.is_(True)),
    )


_QUERY = select(videos, users.c.display_name.label("creator_name")).join(
    users, users.c.id == videos.c.creator_id
)


async def fetch_video(engine: AsyncEngine, video_id: str) -> Video | None:
    if not is_id(video_id):  # from a URL: not worth a query, and NUL would fail one
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(_QUERY.where(videos.c.id == video_id))).first()
    return Video.from_row(row) if row is not None else None


async def visible_video(engine: AsyncEngine, viewer: Viewer, video_id: str) -> Video:
    """The video if `viewer` may see it; NotFound otherwise."""
    video = await fetch_video(engine, video_id)
    if video is None or not video.visible_to(viewer):
        raise NotFound(NOT_FOUND)
    return video


async def managed_video(engine: AsyncEngine, viewer: Viewer, video_id: str) -> Video:
    """The video if `viewer` may change it (its creator or an admin)."""
    video = await visible_video(engine, viewer, video_id)
    if not video.managed_by(viewer):
        raise PermissionDenied("Only the film's creator or an admin can change it.")
    return video


async def playable_video(engine: AsyncEngine, viewer: Viewer, video_id: str) -> Video:
    """The video if `viewer` may see it and it has segments to play; Conflict when it is
    visible (to its creator) but not playable yet."""
    video = await visible_video(engine, viewer, video_id)
    if not video.can_play:
        if video.status == "failed":
            raise Conflict(f"This film could not be processed: {video.error or 'unknown error'}")
        raise Conflict("This film is not ready to play yet; try again when processing is done.")
    return video


async def delete_video(engine: AsyncEngine, vault: Vault, video_id: str) -> None:
    """Crypto-shred a video: the data key goes first (once it is gone the objects are
    noise, even if deleting them fails), then the objects and every row (the schema
    cascades). The one delete path: the API, the CLI and discarded uploads all come here."""
    await vault.destroy(video_id)
    async with engine.begin() as conn:
        await conn.execute(delete(videos).where(videos.c.id == video_id))


async def describe(engine: AsyncEngine, video: Video) -> dict[str, Any]:
    """A video as the API shows it."""
    async with engine.connect() as conn:
        rungs = (
            await conn.execute(
                select(renditions)
                .where(renditions.c.video_id == video.id)
                .order_by(renditions.c.position)
            )
        ).mappings()
        rendition_list = [
            {"name": r["name"], "height": r["height"], "width": r["width"],
             "bandwidth": r["bandwidth"]}
            for r in rungs
        ]  # fmt: skip
    return {
        "id": video.id,
        "title": video.title,
        "description": video.description,
        "tags": list(video.tags),
        "creator": {"id": video.creator_id, "display_name": video.creator_name},
        "status": video.status,
        "progress": round(video.progress, 4),
        "playable": video.can_play,
        "error": video.error,
        "duration": video.duration,
        "renditions": rendition_list,
        "poster_url": video.poster_path,
        "views": video.views,
        "created_at": video.created_at.isoformat(),
    }


async def segment_timeline(
    conn: AsyncConnection, video_id: str, rendition: str, *, with_init: bool = False
) -> list[tuple[int, float]]:
    """(index, duration) of a rendition's stored segments in order: media segments only, or
    the init segment (index -1) first as well. Every rendition has the same boundaries."""
    query = select(segments.c.idx, segments.c.duration).where(
        segments.c.video_id == video_id, segments.c.rendition == rendition
    )
    if not with_init:
        query = query.where(segments.c.idx >= 0)
    rows = (await conn.execute(query.order_by(segments.c.idx))).all()
    return [(int(idx), float(duration)) for idx, duration in rows]
