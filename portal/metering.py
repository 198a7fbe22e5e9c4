"""Metering: seconds of each film really watched, from the segments delivered under a grant.

The segment endpoint calls `Meter.record` (memory only, no database). Every
`metering_flush_seconds` the meter writes what was earned in one batch:

- A moment of a film counts once per grant: a replay, a retry, or the same moment in another
  rendition adds nothing (the `watched_segments` key is grant and segment index, and every
  rendition has the same segment boundaries).
- Never faster than real time: a grant's segments are credited in the order they arrived, and
  the next one only once the wall time since its first segment reaches what is credited
  already. A client that downloads a whole film in a second is credited its first segment.
  Segments buffered ahead are credited as their time comes.
- On a clean shutdown everything earned by then is written; what was fetched ahead of real
  time and not yet earned is not credited.

Pacing is per process: a grant's segments served by two processes are paced separately (and
still never counted twice). Pass allocations (portal.payouts) read these rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import segments, utcnow, videos, watched_segments
from portal.tokens import ANONYMOUS, PlaybackClaims

log = logging.getLogger("megamovie.metering")

#: A grant with nothing pending and no delivery for this long is forgotten.
FORGET_AFTER_SECONDS = 900.0


@dataclass(frozen=True)
class WatchRecord:
    grant: str
    user_id: str | None
    video_id: str
    creator_id: str
    index: int
    seconds: float
    licence: str = ""


@dataclass
class _Grant:
    user_id: str | None
    video_id: str
    licence: str
    first_at: float
    last_at: float
    pending: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    credited_seconds: float = 0.0


class Meter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_recorded: Callable[[list[WatchRecord]], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.on_recorded = on_recorded
        self._grants: dict[str, _Grant] = {}

    def record(self, claims: PlaybackClaims, index: int) -> None:
        """A media segment of `claims.video` was delivered under the grant. No I/O."""
        if not claims.grant or index < 0:
            return
        now = self.clock()
        state = self._grants.get(claims.grant)
        if state is None:
            user = None if claims.viewer == ANONYMOUS else claims.viewer
            state = self._grants[claims.grant] = _Grant(
                user, claims.video, claims.licence, now, now
            )
        state.last_at = now
        if index not in state.seen:
            state.seen.add(index)
            state.pending.append(index)

    @property
    def pending(self) -> int:
        return sum(len(state.pending) for state in self._grants.values())

    async def flush(self, wall: datetime | None = None) -> list[WatchRecord]:
        """Write every segment whose time has come, in one batch; returns what was written."""
        now = self.clock()
        wanted = {
            (state.video_id, index) for state in self._grants.values() for index in state.pending
        }
        records: list[WatchRecord] = []
        if wanted:
            durations = await self._durations(wanted)
            for grant, state in self._grants.items():
                elapsed = now - state.first_at
                while state.pending and state.credited_seconds <= elapsed:
                    index = state.pending[0]
                    found = durations.get((state.video_id, index))
                    if found is None:
                        state.pending.pop(0)  # not a segment of this film (deleted since)
                        continue
                    seconds, creator_id = found
                    state.pending.pop(0)
                    state.credited_seconds += seconds
                    records.append(WatchRecord(grant, state.user_id, state.video_id,
                                               creator_id, index, seconds,
                                               state.licence))  # fmt: skip
            if records:
                await self._write(records, wall or utcnow())
        for grant in [g for g, s in self._grants.items()
                      if not s.pending and now - s.last_at > FORGET_AFTER_SECONDS]:  # fmt: skip
            del self._grants[grant]
        if records and self.on_recorded is not None:
            await self.on_recorded(records)
        return records

    async def _durations(
        self, wanted: set[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[float, str]]:
        """(video, index) -> (segment duration, creator id), for the segments that exist."""
        by_video: dict[str, set[int]] = {}
        for video_id, index in wanted:
            by_video.setdefault(video_id, set()).add(index)
        condition = or_(*(and_(segments.c.video_id == video_id, segments.c.idx.in_(sorted(idxs)))
                          for video_id, idxs in by_video.items()))  # fmt: skip
        query = (
            select(segments.c.video_id, segments.c.idx, func.max(segments.c.duration),
                   videos.c.creator_id)
            .join(videos, videos.c.id == segments.c.video_id)
            .where(condition)
            .group_by(segments.c.video_id, segments.c.idx, videos.c.creator_id)
        )  # fmt: skip
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {(row[0], row[1]): (float(row[2]), row[3]) for row in rows}

    async def _write(self, records: list[WatchRecord], wall: datetime) -> None:
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        values = [
            {"grant_id": r.grant, "idx": r.index, "user_id": r.user_id, "video_id": r.video_id,
             "creator_id": r.creator_id, "seconds": r.seconds, "watched_at": wall,
             "licence": r.licence}
            for r in records
        ]  # fmt: skip
        statement = insert(watched_segments).on_conflict_do_nothing(
            index_elements=[watched_segments.c.grant_id, watched_segments.c.idx]
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement, values)


async def watch_seconds(engine: AsyncEngine, video_id: str) -> float:
    """Seconds of `video_id` watched, over every viewer."""
    query = select(func.coalesce(func.sum(watched_segments.c.seconds), 0.0)).where(
        watched_segments.c.video_id == video_id
    )
    async with engine.connect() as conn:
        return float((await conn.execute(query)).scalar_one())
