"""Streams a viewer has open, so an account can be limited to `max_streams` at once.

A grant opens a stream; the player renews its grant every `renew_seconds` and so keeps the
stream fresh; a stream not renewed for `idle_seconds` is over (a closed tab frees its slot
by itself). Counted in the database, so the limit holds across portal processes. Anonymous
viewers get streams too (they name the grant for metering) but no limit: many people may
share one address.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import new_id, streams
from portal.errors import TooManyStreams


async def open_stream(
    engine: AsyncEngine,
    *,
    viewer_key: str,
    video_id: str,
    stream_id: str | None,
    limit: int | None,
    idle_seconds: float,
    now: datetime,
) -> str:
    """Renew `stream_id` when it is this viewer's live stream, else open a new one; raises
    TooManyStreams when `limit` streams are already open."""
    fresh_after = now - timedelta(seconds=idle_seconds)
    async with engine.begin() as conn:
        if stream_id:
            renewed = await conn.execute(
                update(streams)
                .where(
                    streams.c.id == stream_id,
                    streams.c.viewer_key == viewer_key,
                    streams.c.video_id == video_id,
                    streams.c.seen_at > fresh_after,
                )
                .values(seen_at=now)
            )
            if renewed.rowcount == 1:
                return stream_id
        await conn.execute(
            delete(streams).where(
                streams.c.viewer_key == viewer_key, streams.c.seen_at <= fresh_after
            )
        )
        if limit is not None:
            live = await conn.scalar(
                select(func.count()).select_from(streams).where(streams.c.viewer_key == viewer_key)
            )
            if (live or 0) >= limit:
                raise TooManyStreams(
                    f"You are already watching on {limit} screens, the most one account may "
                    "use at once. Stop one of them (it frees its place within "
                    f"{int(idle_seconds)} seconds) and try again."
                )
        new = new_id()
        await conn.execute(
            streams.insert().values(
                id=new, viewer_key=viewer_key, video_id=video_id, started_at=now, seen_at=now
            )
        )
    return new


async def close_idle_streams(engine: AsyncEngine, idle_seconds: float) -> int:
    """Forget every stream not renewed for `idle_seconds` (the sweep calls this)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=idle_seconds)
    async with engine.begin() as conn:
        result = await conn.execute(delete(streams).where(streams.c.seen_at <= cutoff))
    return result.rowcount or 0
