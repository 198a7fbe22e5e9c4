"""Helpers for the money tests: films with offers, funded wallets, metered watching.

Rows go straight into the real tables (like `insert_user` in conftest.py); the money moves
only through the domain functions under test.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import channel_plans, new_id, offers, utcnow, videos, watched_segments
from portal.ledger import balance, verify
from portal.money import Money, ShareSplit
from portal.payments import DevelopmentProvider, top_up
from portal.purchases import Purchase, purchase
from tests.helpers import insert_user, insert_video

SPLIT = ShareSplit(9000)
PROVIDER = DevelopmentProvider()


async def film_with_offer(
    engine: AsyncEngine,
    creator_id: str,
    *,
    kind: str = "buy",
    amount: int | None = 499,
    currency: str | None = "EUR",
    status: str = "ready",
) -> tuple[str, str]:
    """A film of `creator_id` with one offer: (video id, offer id)."""
    video_id = await insert_video(engine, creator_id, status=status)
    return video_id, await add_offer(engine, video_id, kind, amount, currency)


async def buy(
    engine: AsyncEngine,
    viewer: str,
    offer_id: str,
    key: str,
    now: datetime | None = None,
    **options: Any,
) -> tuple[Purchase, bool]:
    """`purchase` with the default 90/10 split."""
    options.setdefault("revenue_split", SPLIT)
    return await purchase(
        engine, user_id=viewer, offer_id=offer_id, idempotency_key=key, now=now, **options
    )


async def add_offer(
    engine: AsyncEngine,
    video_id: str,
    kind: str,
    amount: int | None,
    currency: str | None = "EUR",
) -> str:
    offer_id = new_id()
    async with engine.begin() as conn:
        await conn.execute(
            offers.insert().values(
                id=offer_id,
                video_id=video_id,
                kind=kind,
                amount=amount,
                currency=currency,
                created_at=utcnow(),
            )
        )
    return offer_id


async def funded_viewer(engine: AsyncEngine, amount: int, currency: str = "EUR") -> str:
    viewer = await insert_user(engine, "viewer")
    if amount:
        await top_up(
            engine, PROVIDER, user_id=viewer, money=Money(amount, currency), idempotency_key="fund"
        )
    return viewer


async def channel_plan(engine: AsyncEngine, creator_id: str, amount: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            channel_plans.insert().values(
                creator_id=creator_id, amount=amount, currency="EUR", updated_at=utcnow()
            )
        )


async def watch(
    engine: AsyncEngine,
    user_id: str | None,
    video_id: str,
    seconds: float,
    at: datetime,
    segment_seconds: float = 4.0,
    licence: str = "pass",
) -> None:
    """Meter `seconds` of `video_id` watched by `user_id` at `at` under `licence`, as the
    player would."""
    async with engine.begin() as conn:
        creator_id = (
            await conn.execute(select(videos.c.creator_id).where(videos.c.id == video_id))
        ).scalar_one()
        grant = new_id()
        rows = []
        left, idx = seconds, 0
        while left > 0:
            piece = min(segment_seconds, left)
            rows.append(
                {
                    "grant_id": grant,
                    "idx": idx,
                    "user_id": user_id,
                    "video_id": video_id,
                    "creator_id": creator_id,
                    "seconds": piece,
                    "watched_at": at + timedelta(seconds=idx * segment_seconds),
                    "licence": licence,
                }
            )
            left -= piece
            idx += 1
        await conn.execute(watched_segments.insert(), rows)


async def held(engine: AsyncEngine, account: str, currency: str = "EUR") -> int:
    async with engine.connect() as conn:
        return await balance(conn, account, currency)


async def books_balance(engine: AsyncEngine) -> None:
    problems = await verify(engine)
    assert problems == [], [p.message for p in problems]
