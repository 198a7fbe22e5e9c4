"""What the creator dashboard shows per film: views, watch time and earnings, in total and per
day (the statements come from portal.payouts).

Earnings per film are the creator's ledger entries (account `earnings:<creator>`) of the
purchases of that film, refunds netted off. Channel subscriptions and Mega Movie Pass
allocations are earned by the channel rather than one film: they are listed as `video_id`
None ("Channel and Pass"). Payouts are not earnings and are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import (
    ledger_entries,
    ledger_transactions,
    purchases,
    utcnow,
    views,
    watched_segments,
)
from portal.ledger import earnings

#: Ledger transaction kinds that are not earnings (money leaving the earnings account).
NOT_EARNINGS = ("payout",)
DEFAULT_DAYS = 30


@dataclass
class FilmStats:
    video_id: str | None  # None: channel subscriptions and pass allocations
    views: int = 0
    watch_seconds: float = 0.0
    earned: dict[str, int] = field(default_factory=dict)  # currency -> minor units
    sales: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "views": self.views,
            "watch_seconds": round(self.watch_seconds, 1),
            "sales": self.sales,
            "earned": [{"amount": a, "currency": c} for c, a in sorted(self.earned.items())],
        }


@dataclass
class Series:
    """Per-day figures for the chart: `days` (ISO dates) and per film one value a day."""

    days: list[str]
    currency: str
    earned: dict[str, list[int]]  # video id ("" for channel and pass) -> minor units a day
    watch_minutes: dict[str, list[float]]
    views: dict[str, list[int]]

    def as_json(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "currency": self.currency,
            "earned": self.earned,
            "watch_minutes": self.watch_minutes,
            "views": self.views,
        }


def _day(value: Any) -> str:
    """`date()` answers a string on SQLite and a date on PostgreSQL."""
    return value.isoformat() if isinstance(value, date) else str(value)[:10]


def _earnings_query(creator_id: str) -> Any:
    return (
        select(
            ledger_entries.c.amount,
            ledger_entries.c.currency,
            ledger_transactions.c.kind,
            ledger_transactions.c.created_at,
            purchases.c.video_id,
        )
        .join(ledger_transactions, ledger_transactions.c.id == ledger_entries.c.transaction_id)
        .outerjoin(purchases, purchases.c.id == ledger_transactions.c.reference)
        .where(
            ledger_entries.c.account == earnings(creator_id),
            ledger_transactions.c.kind.not_in(NOT_EARNINGS),
        )
    )


async def film_stats(
    engine: AsyncEngine, creator_id: str, video_ids: Iterable[str]
) -> dict[str | None, FilmStats]:
    """Totals per film of the creator (and a `None` entry for channel and pass earnings)."""
    ids = list(video_ids)
    stats: dict[str | None, FilmStats] = {vid: FilmStats(vid) for vid in ids}
    stats[None] = FilmStats(None)
    async with engine.connect() as conn:
        if ids:
            for vid, count in await conn.execute(
                select(views.c.video_id, func.count())
                .where(views.c.video_id.in_(ids))
                .group_by(views.c.video_id)
            ):
                stats[vid].views = int(count)
        for vid, seconds in await conn.execute(
            select(watched_segments.c.video_id, func.sum(watched_segments.c.seconds))
            .where(watched_segments.c.creator_id == creator_id)
            .group_by(watched_segments.c.video_id)
        ):
            if vid in stats:
                stats[vid].watch_seconds = float(seconds or 0)
        rows = (await conn.execute(_earnings_query(creator_id))).all()
    for row in rows:
        target = stats.get(row.video_id) or stats[None]
        target.earned[row.currency] = target.earned.get(row.currency, 0) + int(row.amount)
        if row.kind == "purchase":
            target.sales += 1
        elif row.kind == "refund":
            target.sales -= 1
    return stats


async def daily_series(
    engine: AsyncEngine,
    creator_id: str,
    video_ids: Iterable[str],
    currency: str,
    *,
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
) -> Series:
    """The last `days` days (today included, UTC) of earnings in `currency`, watch minutes
    and new views, per film."""
    now = now or utcnow()
    first = (now - timedelta(days=days - 1)).date()
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    labels = [(first + timedelta(days=n)).isoformat() for n in range(days)]
    position = {label: n for n, label in enumerate(labels)}
    ids = list(video_ids)
    earned: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    minutes: dict[str, list[float]] = defaultdict(lambda: [0.0] * days)
    viewed: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    watched_day = func.date(watched_segments.c.watched_at)
    view_day = func.date(views.c.counted_at)
    async with engine.connect() as conn:
        for vid, day, seconds in await conn.execute(
            select(watched_segments.c.video_id, watched_day, func.sum(watched_segments.c.seconds))
            .where(
                watched_segments.c.creator_id == creator_id,
                watched_segments.c.watched_at >= since,
            )
            .group_by(watched_segments.c.video_id, watched_day)
        ):
            if (n := position.get(_day(day))) is not None and vid in ids:
                minutes[vid][n] += round(float(seconds or 0) / 60, 2)
        if ids:
            for vid, day, count in await conn.execute(
                select(views.c.video_id, view_day, func.count())
                .where(views.c.video_id.in_(ids), views.c.counted_at >= since)
                .group_by(views.c.video_id, view_day)
            ):
                if (n := position.get(_day(day))) is not None:
                    viewed[vid][n] += int(count)
        rows = (
            await conn.execute(
                _earnings_query(creator_id).where(
                    ledger_transactions.c.created_at >= since,
                    ledger_entries.c.currency == currency,
                )
            )
        ).all()
    for row in rows:
        n = position.get(row.created_at.date().isoformat())
        if n is not None:
            key = row.video_id if row.video_id in ids else ""
            earned[key][n] += int(row.amount)
    return Series(labels, currency, dict(earned), dict(minutes), dict(viewed))
