"""View counting: a viewer's views of one film count once in `VIEW_WINDOW`.

Grant renewals and reloads do not inflate `videos.views`. Viewers are `Viewer.key` strings,
so the `views` table holds user ids or keyed hashes of addresses, never a raw IP.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import utcnow, videos, views

VIEW_WINDOW = timedelta(hours=24)


async def count_view(
    engine: AsyncEngine, viewer: str, video_id: str, now: datetime | None = None
) -> bool:
    """Count a view of `video_id` by `viewer` unless one was counted in the last VIEW_WINDOW.

    Returns whether it counted. One upsert decides, atomically on both databases: it inserts
    the viewer's row, or moves its time forward only when the old one is a window old, and
    returns a row only when it wrote one; then the video's counter goes up.
    """
    now = utcnow() if now is None else now
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    values = insert(views).values(viewer_key=viewer, video_id=video_id, counted_at=now)
    statement = values.on_conflict_do_update(
        index_elements=[views.c.viewer_key, views.c.video_id],
        set_={"counted_at": values.excluded.counted_at},
        where=views.c.counted_at <= now - VIEW_WINDOW,
    ).returning(views.c.video_id)
    async with engine.begin() as conn:
        if (await conn.execute(statement)).first() is None:
            return False
        await conn.execute(
            update(videos).where(videos.c.id == video_id).values(views=videos.c.views + 1)
        )
    return True
