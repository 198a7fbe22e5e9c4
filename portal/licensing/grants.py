"""The playback grant: the one place where a viewer's licence is decided and sealed into a
short-lived token.

The token carries what the licence allows (the last segment a preview covers) and ends no
later than the licence, so the segment endpoint enforces it with an HMAC and no database
query. A preview's media playlists end at the preview.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import purchases, renditions
from portal.licensing.licences import Licence
from portal.licensing.offers import VideoOffers
from portal.licensing.policies import RENTAL_PERIOD
from portal.licensing.streams import open_stream
from portal.videos import Video, Viewer, playable_video, segment_timeline
from portal.views import count_view

if TYPE_CHECKING:
    from portal.services import Services


@dataclass(frozen=True)
class Grant:
    token: str
    expires_at: datetime
    stream: str
    licence: Licence
    video: Video
    renew_seconds: int


async def decide_licence(
    services: Services, viewer: Viewer, video: Video, now: datetime
) -> tuple[VideoOffers, Licence]:
    plugins = services.plugins
    offers = await plugins.decide("video_offers", portal=services, video=video)
    licence = await plugins.decide(
        "viewer_licence", portal=services, viewer=viewer, video=video, offers=offers, now=now
    )
    return offers, licence


async def grant_playback(
    services: Services,
    viewer: Viewer,
    video_id: str,
    *,
    stream: str | None = None,
    now: datetime | None = None,
) -> Grant:
    settings = services.settings
    now = now or datetime.now(UTC)
    video = await playable_video(services.engine, viewer, video_id)
    _, licence = await decide_licence(services, viewer, video, now)
    stream_id = await open_stream(
        services.engine,
        viewer_key=viewer.key,
        video_id=video.id,
        stream_id=stream,
        limit=settings.max_streams if viewer.user is not None else None,
        idle_seconds=settings.stream_idle_seconds,
        now=now,
    )
    if licence.starts_rental is not None:
        licence = await _start_rental(services.engine, licence.starts_rental, licence, now)
    limit_index = None
    if not licence.full:
        limit_index = await preview_last_index(
            services.engine, video.id, licence.preview_seconds or 0, settings.segment_seconds
        )
    token, expires = services.tokens.issue(
        viewer.user_id,
        video.id,
        grant=stream_id,
        limit_index=limit_index,
        licence=licence.source[:32],
        not_after=licence.expires_at.timestamp() if licence.expires_at else None,
        now=now.timestamp(),
    )
    await count_view(services.engine, viewer.key, video.id)
    await services.plugins.notify(
        "playback_granted", portal=services, viewer=viewer, video=video, licence=licence
    )
    renew = max(5, int(settings.stream_idle_seconds / 3))
    return Grant(token, datetime.fromtimestamp(expires, UTC), stream_id, licence, video, renew)


async def _start_rental(
    engine: AsyncEngine, purchase_id: str, licence: Licence, now: datetime
) -> Licence:
    """The first play of a rental starts its 48 hours (once: a second grant racing this one
    finds `first_played_at` set and keeps the end the first one wrote)."""
    end = now + RENTAL_PERIOD
    async with engine.begin() as conn:
        await conn.execute(
            update(purchases)
            .where(purchases.c.id == purchase_id, purchases.c.first_played_at.is_(None))
            .values(first_played_at=now, expires_at=end)
        )
        stored = await conn.scalar(
            select(purchases.c.expires_at).where(purchases.c.id == purchase_id)
        )
    return Licence.whole("rental", expires_at=stored or end)


async def preview_last_index(
    engine: AsyncEngine, video_id: str, preview_seconds: float, segment_seconds: float
) -> int:
    """The last segment index that starts before `preview_seconds` (-1: none). Every
    rendition has the same boundaries, so the first rendition's segments decide; segments not
    transcoded yet are assumed `segment_seconds` long."""
    async with engine.connect() as conn:
        first = await conn.scalar(
            select(renditions.c.name)
            .where(renditions.c.video_id == video_id)
            .order_by(renditions.c.position)
            .limit(1)
        )
        rows = await segment_timeline(conn, video_id, first) if first else []
    start, last = 0.0, -1
    for index, duration in rows:
        if start >= preview_seconds:
            return last
        last, start = index, start + duration
    while start < preview_seconds:
        last, start = last + 1, start + segment_seconds
    return last
