"""Subscriptions: a creator's channel, and the platform pass shared by watch time.

Both run for `SUBSCRIPTION_PERIOD` (30 days, not a calendar month: every period is the same
length, so a pass fee always buys the same watching). Paying again while a subscription
runs buys the next period, starting when the current one ends; each period is a row.

- **channel**: the creator's monthly price (`channel_plans`), paid from the wallet and shared
  at once like a purchase: the creator's earnings and the platform's revenue.
- **pass**: the platform's price (`MEGAMOVIE_PASS_AMOUNT` / `MEGAMOVIE_PASS_CURRENCY`), paid
  into `pass:pool`. After the period ends, the payout run shares each subscriber's fee
  among the creators *that subscriber* watched during *that period*, in proportion to the
  seconds metered in `watched_segments`; each creator's part is then split with the
  platform like any sale. A subscriber who watched nothing leaves the fee in `pass:pool`
  (the ledger shows it there; no creator earned it).

Rounding in the pass allocation: each creator gets the fee times their share of the seconds,
rounded down, and the minor units left over go one each to the creators with the largest
remainders (ties: the creator id), so the parts always add up to the fee exactly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portal.db import begin_write, channel_plans, new_id, subscriptions, utcnow, watched_segments
from portal.errors import NotFound, ValidationFailed
from portal.ledger import (
    PASS_POOL,
    PLATFORM_REVENUE,
    Entry,
    Transaction,
    earnings,
    key_reused,
    post,
    run_once,
    user_scope,
    wallet,
)
from portal.money import Money, RevenueSplit, checked_split, from_price_row, price_columns
from portal.purchases import notify, sale_entries

SUBSCRIPTION = "subscription"
ALLOCATION = "pass_allocation"
PLANS = ("pass", "channel")
SUBSCRIPTION_PERIOD = timedelta(days=30)
#: Watch time is weighed in whole milliseconds: integers from here on, no float in money.
_MS = 1000


@dataclass(frozen=True)
class Subscription:
    id: str
    user_id: str
    plan: str  # pass | channel
    creator_id: str | None  # the channel's creator; None for the pass
    price: Money
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    refunded_at: datetime | None
    allocated_at: datetime | None
    transaction_id: str

    @classmethod
    def from_row(cls, row: Any) -> Subscription:
        return from_price_row(cls, row)

    def columns(self) -> dict[str, Any]:
        """The table row for this record."""
        return price_columns(self)


async def subscribe(
    engine: AsyncEngine,
    *,
    user_id: str,
    plan: str,
    idempotency_key: str,
    pass_price: Money,
    revenue_split: RevenueSplit,
    creator_id: str | None = None,
    now: datetime | None = None,
    purchase_completed: Callable[[Subscription], Awaitable[None]] | None = None,
) -> tuple[Subscription, bool]:
    """Pay one period of `plan` from the wallet: (subscription, created). A new one is
    announced to `purchase_completed` (not a retry).

    Raises ValidationFailed (unknown plan, or a channel without creator), NotFound (the
    creator has no channel plan), InsufficientFunds, Conflict (key reused)."""
    now = now or utcnow()
    scope = user_scope(user_id)
    if plan not in PLANS:
        raise ValidationFailed(f"plan must be one of {', '.join(PLANS)}, not {plan!r}.")
    if plan == "channel" and not creator_id:
        raise ValidationFailed("A channel subscription needs the creator_id of the channel.")
    if plan == "pass":
        creator_id = None

    async def work(conn: AsyncConnection) -> Subscription:
        if plan == "channel":
            assert creator_id is not None
            offered = (
                await conn.execute(
                    select(channel_plans).where(channel_plans.c.creator_id == creator_id)
                )
            ).first()
            if offered is None:
                raise NotFound("This creator offers no channel subscription.")
            price = Money(offered.amount, offered.currency)
            entries = await sale_entries(user_id, creator_id, price, "channel", revenue_split)
        else:
            price = pass_price
            entries = [
                Entry(wallet(user_id), -price.amount, price.currency),
                Entry(PASS_POOL, price.amount, price.currency),
            ]
        subscription_id = new_id()
        posted = await post(
            conn,
            kind=SUBSCRIPTION,
            scope=scope,
            key=idempotency_key,
            entries=entries,
            user_id=user_id,
            reference=subscription_id,
            memo=f"{plan} subscription" + (f" to {creator_id}" if creator_id else ""),
            now=now,
        )
        # After the posting locked the wallet: a period bought twice at once still queues up.
        running_until = (
            await conn.execute(
                select(func.max(subscriptions.c.ends_at)).where(
                    subscriptions.c.user_id == user_id,
                    subscriptions.c.plan == plan,
                    subscriptions.c.creator_id.is_(None)
                    if creator_id is None
                    else subscriptions.c.creator_id == creator_id,
                    subscriptions.c.refunded_at.is_(None),
                    subscriptions.c.ends_at > now,
                )
            )
        ).scalar()
        starts_at = max(now, running_until) if running_until is not None else now
        subscription = Subscription(
            id=subscription_id,
            user_id=user_id,
            plan=plan,
            creator_id=creator_id,
            price=price,
            starts_at=starts_at,
            ends_at=starts_at + SUBSCRIPTION_PERIOD,
            created_at=now,
            refunded_at=None,
            allocated_at=None,
            transaction_id=posted.id,
        )
        await conn.execute(subscriptions.insert().values(**subscription.columns()))
        return subscription

    async def replay(conn: AsyncConnection, found: Transaction) -> Subscription:
        row = (
            await conn.execute(
                select(subscriptions).where(subscriptions.c.transaction_id == found.id)
            )
        ).first()
        if (
            found.kind != SUBSCRIPTION
            or row is None
            or (row.plan, row.creator_id) != (plan, creator_id)
        ):
            raise key_reused(idempotency_key, found.kind)
        return Subscription.from_row(row)

    subscription, created = await run_once(engine, scope, idempotency_key, work, replay)
    if created:
        await notify(purchase_completed, subscription)
    return subscription, created


# -- the pass: sharing each fee by what its subscriber watched ------------------------------


def allocate(fee: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Share `fee` minor units in proportion to integer `weights` (largest remainder).

    Every part is at least the exact share rounded down; the leftover units go one each to
    the largest remainders, ties to the smallest key. The parts add up to `fee` exactly; no
    weight, no part. Empty weights: nothing is shared."""
    positive = {key: weight for key, weight in weights.items() if weight > 0}
    total = sum(positive.values())
    if fee < 0:
        raise ValueError("only non-negative fees are shared")
    if total == 0:
        return {}
    parts = {key: fee * weight // total for key, weight in positive.items()}
    left = fee - sum(parts.values())
    by_remainder = sorted(positive, key=lambda key: (-(fee * positive[key] % total), key))
    for key in by_remainder[:left]:
        parts[key] += 1
    return parts


@dataclass(frozen=True)
class Allocation:
    subscription_id: str
    user_id: str
    fee: Money
    parts: dict[str, int]  # creator id -> minor units before their split with the platform

    @property
    def unallocated(self) -> bool:
        """Nothing was watched: the fee stays in pass:pool."""
        return not self.parts


async def watched_seconds(
    conn: AsyncConnection, user_id: str, starts_at: datetime, ends_at: datetime
) -> dict[str, int]:
    """Milliseconds of each creator's films `user_id` watched *under the pass* in
    [starts_at, ends_at): films they watched for free, bought, or through a channel
    subscription earn nothing from the pass fee."""
    rows = await conn.execute(
        select(watched_segments.c.creator_id, func.sum(watched_segments.c.seconds))
        .where(
            watched_segments.c.user_id == user_id,
            watched_segments.c.licence == "pass",
            watched_segments.c.watched_at >= starts_at,
            watched_segments.c.watched_at < ends_at,
        )
        .group_by(watched_segments.c.creator_id)
    )
    # Metering stores float seconds; rounding to the millisecond is the last float.
    return {creator: round(float(seconds) * _MS) for creator, seconds in rows if seconds}


async def allocate_pass_fees(
    engine: AsyncEngine,
    *,
    ended_by: datetime,
    revenue_split: RevenueSplit,
    now: datetime | None = None,
) -> list[Allocation]:
    """Share the fee of every pass period that ended by `ended_by` and is not yet shared.

    Each one is its own transaction, claimed by a conditional UPDATE of `allocated_at`, so
    two payout runs at once never share a fee twice, and a run that stops half way is
    finished by the next."""
    now = now or utcnow()
    async with engine.connect() as conn:
        due = (
            await conn.execute(
                select(subscriptions.c.id)
                .where(
                    subscriptions.c.plan == "pass",
                    subscriptions.c.allocated_at.is_(None),
                    subscriptions.c.refunded_at.is_(None),
                    subscriptions.c.ends_at <= ended_by,
                )
                .order_by(subscriptions.c.ends_at, subscriptions.c.id)
            )
        ).scalars()
        ids = list(due)
    done = []
    for subscription_id in ids:
        allocation = await _allocate_one(engine, subscription_id, revenue_split, now)
        if allocation is not None:
            done.append(allocation)
    return done


async def _allocate_one(
    engine: AsyncEngine, subscription_id: str, revenue_split: RevenueSplit, now: datetime
) -> Allocation | None:
    async with begin_write(engine) as conn:
        claimed = await conn.execute(
            update(subscriptions)
            .where(subscriptions.c.id == subscription_id, subscriptions.c.allocated_at.is_(None))
            .values(allocated_at=now)
        )
        if claimed.rowcount != 1:
            return None  # another run got there first
        row = (
            await conn.execute(select(subscriptions).where(subscriptions.c.id == subscription_id))
        ).one()
        fee = Money(row.amount, row.currency)
        parts = allocate(
            fee.amount, await watched_seconds(conn, row.user_id, row.starts_at, row.ends_at)
        )
        entries = []
        for creator_id, part in sorted(parts.items()):
            share = Money(part, fee.currency)
            creator, platform = await checked_split(
                revenue_split, share, creator_id=creator_id, kind="pass"
            )
            entries += [
                Entry(PASS_POOL, -part, fee.currency),
                Entry(earnings(creator_id), creator, fee.currency),
                Entry(PLATFORM_REVENUE, platform, fee.currency),
            ]
        if any(entry.amount for entry in entries):
            await post(
                conn,
                kind=ALLOCATION,
                scope=ALLOCATION,
                key=subscription_id,
                entries=entries,
                user_id=row.user_id,
                reference=subscription_id,
                memo=f"pass fee of {row.starts_at:%Y-%m-%d} shared by watch time",
                now=now,
            )
        return Allocation(subscription_id, row.user_id, fee, parts)
