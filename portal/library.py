"""A viewer's library: films bought, rentals still running, subscriptions still running.

Refunded purchases and lapsed rentals are left out: the library lists what can be watched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import purchases, subscriptions, utcnow, videos
from portal.purchases import Purchase
from portal.subscriptions import Subscription


@dataclass(frozen=True)
class Holding:
    """A film in the library: a purchase, its title, and for rentals the time left."""

    purchase: Purchase
    title: str | None  # None: the film was deleted since
    seconds_left: int | None  # None: bought for good; for a rental not yet started, the
    # time left to start it


@dataclass(frozen=True)
class Library:
    films: list[Holding]
    subscriptions: list[Subscription]


async def library(engine: AsyncEngine, user_id: str, now: datetime | None = None) -> Library:
    now = now or utcnow()
    async with engine.connect() as conn:
        bought = (
            await conn.execute(
                select(purchases, videos.c.title)
                .outerjoin(videos, videos.c.id == purchases.c.video_id)
                .where(
                    purchases.c.user_id == user_id,
                    purchases.c.refunded_at.is_(None),
                    or_(purchases.c.expires_at.is_(None), purchases.c.expires_at > now),
                )
                .order_by(purchases.c.created_at.desc(), purchases.c.id)
            )
        ).all()
        running = (
            await conn.execute(
                select(subscriptions)
                .where(
                    subscriptions.c.user_id == user_id,
                    subscriptions.c.refunded_at.is_(None),
                    subscriptions.c.ends_at > now,
                )
                .order_by(subscriptions.c.starts_at, subscriptions.c.id)
            )
        ).all()
    films = [
        Holding(
            Purchase.from_row(row),
            row.title,
            None if row.expires_at is None else int((row.expires_at - now).total_seconds()),
        )
        for row in bought
    ]
    return Library(films, [Subscription.from_row(row) for row in running])
