"""Buying and renting films from the wallet, and refunds.

A purchase is one database transaction: the ledger posting (wallet -> the creator's earnings
and the platform's revenue, shared by the revenue split) and the `purchases` row commit
together or not at all. It is idempotent by the client's key: a retry answers the first
purchase and charges nothing more.

A rental must be started within `RENT_START_WINDOW` (its `expires_at` until then); the
licensing code sets `first_played_at` on first play and moves `expires_at` to 48 hours later.

Refunds reverse the purchase's posting entry by entry, so the wallet gets back exactly what it
paid and the creator and platform give back exactly what they got. A refund is always
possible, also after the creator was paid out: their earnings then go below zero and the
next statements net it off (see docs/operations.md, "Money").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portal.db import new_id, offers, purchases, utcnow, videos
from portal.errors import Conflict, NotFound, ValidationFailed
from portal.ledger import (
    PLATFORM_REVENUE,
    Entry,
    Transaction,
    earnings,
    get_transaction,
    key_reused,
    post,
    run_once,
    user_scope,
    wallet,
)
from portal.money import Money, RevenueSplit, checked_split, from_price_row, price_columns
from portal.videos import public_filter

log = logging.getLogger("megamovie.money")

PURCHASE = "purchase"
REFUND = "refund"
#: Offer kinds bought here; channel and pass offers are subscriptions.
PURCHASE_KINDS = ("buy", "rent")
#: A rental not started within this long lapses.
RENT_START_WINDOW = timedelta(days=30)

S = TypeVar("S")


async def notify(callback: Callable[[S], Awaitable[None]] | None, subject: S) -> None:
    """Tell a listener about something that has already happened (and committed).

    A failing listener is logged, not raised: the money has moved, and answering the buyer
    with an error would only make them try again."""
    if callback is None:
        return
    try:
        await callback(subject)
    except Exception:
        log.exception("a money notification failed for %r", subject)


@dataclass(frozen=True)
class Purchase:
    id: str
    user_id: str
    video_id: str | None
    creator_id: str
    offer_id: str | None
    kind: str  # buy | rent
    price: Money
    created_at: datetime
    first_played_at: datetime | None
    expires_at: datetime | None  # None: owned for good
    refunded_at: datetime | None
    transaction_id: str

    @classmethod
    def from_row(cls, row: Any) -> Purchase:
        return from_price_row(cls, row)

    def columns(self) -> dict[str, Any]:
        """The table row for this record."""
        return price_columns(self)


async def sale_entries(
    buyer_id: str, creator_id: str, price: Money, kind: str, revenue_split: RevenueSplit
) -> list[Entry]:
    """The wallet pays `price`; the creator and the platform receive their shares of it."""
    creator_share, platform_share = await checked_split(
        revenue_split, price, creator_id=creator_id, kind=kind
    )
    return [
        Entry(wallet(buyer_id), -price.amount, price.currency),
        Entry(earnings(creator_id), creator_share, price.currency),
        Entry(PLATFORM_REVENUE, platform_share, price.currency),
    ]


async def purchase(
    engine: AsyncEngine,
    *,
    user_id: str,
    offer_id: str,
    idempotency_key: str,
    revenue_split: RevenueSplit,
    now: datetime | None = None,
    purchase_completed: Callable[[Purchase], Awaitable[None]] | None = None,
) -> tuple[Purchase, bool]:
    """Buy or rent the film of `offer_id` from the user's wallet: (purchase, created).

    Raises NotFound (no such offer, or the film is not public), ValidationFailed (a
    subscription offer), InsufficientFunds (402, nothing charged), Conflict (the film is
    already owned or rented, or the key was used for another request)."""
    now = now or utcnow()
    scope = user_scope(user_id)

    async def work(conn: AsyncConnection) -> Purchase:
        offer = (
            await conn.execute(
                select(offers, videos.c.creator_id)
                .join(videos, videos.c.id == offers.c.video_id)
                .where(offers.c.id == offer_id, public_filter())
            )
        ).first()
        if offer is None:
            raise NotFound("There is no such offer; the film may have been withdrawn.")
        if offer.kind not in PURCHASE_KINDS:
            raise ValidationFailed(
                f"This film comes with a {offer.kind} subscription: subscribe instead "
                "(POST /api/subscriptions)."
            )
        price = Money(offer.amount, offer.currency)
        purchase_id = new_id()
        posted = await post(
            conn,
            kind=PURCHASE,
            scope=scope,
            key=idempotency_key,
            entries=await sale_entries(user_id, offer.creator_id, price, offer.kind, revenue_split),
            user_id=user_id,
            reference=purchase_id,
            memo=f"{offer.kind} {offer.video_id}",
            now=now,
        )
        # Checked after the posting on purpose: it has locked the wallet's balance row, so a
        # second purchase of the same film by the same person waits here for the first to
        # commit and then sees it.
        await _refuse_if_held(conn, user_id, offer.video_id, offer.kind, now)
        bought = Purchase(
            id=purchase_id,
            user_id=user_id,
            video_id=offer.video_id,
            creator_id=offer.creator_id,
            offer_id=offer_id,
            kind=offer.kind,
            price=price,
            created_at=now,
            first_played_at=None,
            expires_at=now + RENT_START_WINDOW if offer.kind == "rent" else None,
            refunded_at=None,
            transaction_id=posted.id,
        )
        await conn.execute(purchases.insert().values(**bought.columns()))
        return bought

    async def replay(conn: AsyncConnection, found: Transaction) -> Purchase:
        row = (
            await conn.execute(select(purchases).where(purchases.c.transaction_id == found.id))
        ).first()
        if found.kind != PURCHASE or row is None or row.offer_id != offer_id:
            raise key_reused(idempotency_key, found.kind)
        return Purchase.from_row(row)

    bought, created = await run_once(engine, scope, idempotency_key, work, replay)
    if created:
        await notify(purchase_completed, bought)
    return bought, created


async def _refuse_if_held(
    conn: AsyncConnection, user_id: str, video_id: str, kind: str, now: datetime
) -> None:
    held = (
        await conn.execute(
            select(purchases.c.kind, purchases.c.expires_at).where(
                purchases.c.user_id == user_id,
                purchases.c.video_id == video_id,
                purchases.c.refunded_at.is_(None),
                or_(purchases.c.kind == "buy", purchases.c.expires_at > now),
            )
        )
    ).all()
    if any(row.kind == "buy" for row in held):
        raise Conflict("You already own this film; it is in your library.")
    if kind == "rent" and held:
        raise Conflict("You are already renting this film; it is in your library.")


async def get_purchase(engine: AsyncEngine, purchase_id: str) -> Purchase | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(purchases).where(purchases.c.id == purchase_id))).first()
    return Purchase.from_row(row) if row is not None else None


async def refund_purchase(
    engine: AsyncEngine,
    purchase_id: str,
    *,
    now: datetime | None = None,
    purchase_refunded: Callable[[Purchase], Awaitable[None]] | None = None,
) -> tuple[Purchase, bool]:
    """Reverse a purchase's posting exactly and mark it refunded: (purchase, refunded now).

    Refunding twice changes nothing the second time (refunded now is False)."""
    now = now or utcnow()

    async def work(conn: AsyncConnection) -> Purchase:
        row = (await conn.execute(select(purchases).where(purchases.c.id == purchase_id))).first()
        if row is None:
            raise NotFound(f"There is no purchase {purchase_id}.")
        original = await get_transaction(conn, row.transaction_id)
        assert original is not None, "every purchase row is written with its posting"
        await post(
            conn,
            kind=REFUND,
            scope=REFUND,
            key=purchase_id,
            entries=[Entry(e.account, -e.amount, e.currency) for e in original.entries],
            user_id=row.user_id,
            reference=purchase_id,
            memo=f"refund of {row.kind} {row.video_id}",
            now=now,
        )
        await conn.execute(
            update(purchases)
            .where(purchases.c.id == purchase_id, purchases.c.refunded_at.is_(None))
            .values(refunded_at=now)
        )
        return dataclasses.replace(Purchase.from_row(row), refunded_at=now)

    async def replay(conn: AsyncConnection, found: Transaction) -> Purchase:
        row = (await conn.execute(select(purchases).where(purchases.c.id == purchase_id))).first()
        assert row is not None
        return Purchase.from_row(row)

    refunded, created = await run_once(engine, REFUND, purchase_id, work, replay)
    if created:
        await notify(purchase_refunded, refunded)
    return refunded, created
