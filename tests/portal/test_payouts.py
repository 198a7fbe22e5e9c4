"""Subscriptions, the pass shared by watch time, payout runs, statements and earnings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from portal.db import ledger_transactions, statements
from portal.errors import InsufficientFunds, NotFound, ValidationFailed
from portal.ledger import PASS_POOL, PLATFORM_REVENUE, earnings, payouts, wallet
from portal.migrations import upgrade
from portal.money import Money
from portal.payouts import (
    creator_earnings,
    creator_statements,
    period_bounds,
    run_payouts,
    statement_csv,
)
from portal.purchases import refund_purchase
from portal.subscriptions import SUBSCRIPTION_PERIOD, allocate, allocate_pass_fees, subscribe
from tests.helpers import insert_user, insert_video
from tests.portal.commerce import (
    SPLIT,
    books_balance,
    buy,
    channel_plan,
    film_with_offer,
    funded_viewer,
    held,
    watch,
)

pytestmark = pytest.mark.anyio

PASS = Money(999, "EUR")
MAY = datetime(2026, 5, 1, tzinfo=UTC)


async def subscribe_to(engine, viewer, plan, key, creator_id=None, now=MAY):
    """`subscribe` at a pass price of 9.99 EUR and the 90/10 split."""
    return await subscribe(
        engine,
        user_id=viewer,
        plan=plan,
        creator_id=creator_id,
        idempotency_key=key,
        pass_price=PASS,
        revenue_split=SPLIT,
        now=now,
    )


async def subscribe_pass(engine, viewer, key="p", now=MAY):
    subscription, _ = await subscribe_to(engine, viewer, "pass", key, now=now)
    return subscription


# -- sharing a fee ---------------------------------------------------------------------------


def test_allocate_shares_by_weight_with_the_largest_remainders_getting_the_odd_units():
    # 999 by 3600:1800:600 -> exact 599.4, 299.7, 99.9; the two odd cents go to .9 and .7
    assert allocate(999, {"a": 3600, "b": 1800, "c": 600}) == {"a": 599, "b": 300, "c": 100}
    assert allocate(10, {"x": 1, "y": 1, "z": 1}) == {"x": 4, "y": 3, "z": 3}  # tie: by key
    assert allocate(999, {}) == {}
    assert allocate(999, {"idle": 0}) == {}
    assert allocate(0, {"a": 5}) == {"a": 0}


@given(
    fee=st.integers(0, 10**9),
    weights=st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 10**7)),
)
def test_allocate_never_makes_or_loses_a_minor_unit(fee, weights):
    parts = allocate(fee, weights)
    total = sum(w for w in weights.values() if w > 0)
    if total == 0:
        assert parts == {}
        return
    assert sum(parts.values()) == fee
    for key, part in parts.items():
        exact_floor = fee * weights[key] // total
        assert exact_floor <= part <= exact_floor + 1


async def test_the_pass_fee_goes_to_what_that_subscriber_watched_in_exact_cents(engine):
    ann_c, bo_c, cy_c = [await insert_user(engine, "creator") for _ in range(3)]
    ann_film = await insert_video(engine, ann_c, status="ready")
    bo_film = await insert_video(engine, bo_c, status="ready")
    cy_film = await insert_video(engine, cy_c, status="ready")
    viewer = await funded_viewer(engine, 999)
    other = await funded_viewer(engine, 999)

    period = await subscribe_pass(engine, viewer)
    assert (period.starts_at, period.ends_at) == (MAY, MAY + SUBSCRIPTION_PERIOD)
    assert await held(engine, wallet(viewer)) == 0
    assert await held(engine, PASS_POOL) == 999

    day = MAY + timedelta(days=3)
    await watch(engine, viewer, ann_film, 3600, day)
    await watch(engine, viewer, bo_film, 1800, day)
    await watch(engine, viewer, cy_film, 600, day)
    # None of this is the subscriber's watching in the period:
    await watch(engine, viewer, cy_film, 9000, MAY - timedelta(days=1))  # before it
    await watch(engine, viewer, cy_film, 9000, period.ends_at)  # at its end (exclusive)
    await watch(engine, other, cy_film, 9000, day)  # another viewer (not subscribed)
    await watch(engine, None, cy_film, 9000, day)  # anonymous
    await watch(engine, viewer, cy_film, 9000, day, licence="purchase")  # bought, not the pass
    await watch(engine, viewer, cy_film, 9000, day, licence="free")  # a free film

    [shared] = await allocate_pass_fees(
        engine, ended_by=period.ends_at, revenue_split=SPLIT, now=period.ends_at
    )
    assert shared.parts == {ann_c: 599, bo_c: 300, cy_c: 100}
    # Each part is then split 90/10, rounded down for the creator.
    assert await held(engine, earnings(ann_c)) == 539
    assert await held(engine, earnings(bo_c)) == 270
    assert await held(engine, earnings(cy_c)) == 90
    assert await held(engine, PLATFORM_REVENUE) == 60 + 30 + 10
    assert await held(engine, PASS_POOL) == 0
    # Shared once: a second pass finds nothing left to share.
    assert await allocate_pass_fees(engine, ended_by=period.ends_at, revenue_split=SPLIT) == []
    await books_balance(engine)


async def test_a_pass_fee_is_shared_only_after_its_period_and_stays_pooled_if_nothing_watched(
    engine,
):
    creator = await insert_user(engine, "creator")
    film = await insert_video(engine, creator, status="ready")
    watcher = await funded_viewer(engine, 999)
    idle = await funded_viewer(engine, 999)
    running = await subscribe_pass(engine, watcher)
    await subscribe_pass(engine, idle)
    await watch(engine, watcher, film, 100, MAY + timedelta(days=1))

    before_end = running.ends_at - timedelta(seconds=1)
    assert await allocate_pass_fees(engine, ended_by=before_end, revenue_split=SPLIT) == []
    done = await allocate_pass_fees(engine, ended_by=running.ends_at, revenue_split=SPLIT)
    assert sorted(a.unallocated for a in done) == [False, True]
    assert await held(engine, earnings(creator)) == 899
    assert await held(engine, PASS_POOL) == 999  # the idle subscriber's fee
    await books_balance(engine)


async def test_paying_again_while_subscribed_buys_the_next_period(engine):
    creator = await insert_user(engine, "creator")
    await channel_plan(engine, creator, 500)
    viewer = await funded_viewer(engine, 1200)

    first, _ = await subscribe_to(engine, viewer, "channel", "1", creator_id=creator, now=MAY)
    second, _ = await subscribe_to(
        engine, viewer, "channel", "2", creator_id=creator, now=MAY + timedelta(days=2)
    )
    again, created = await subscribe_to(
        engine, viewer, "channel", "2", creator_id=creator, now=MAY + timedelta(days=2)
    )
    assert not created and again == second
    assert second.starts_at == first.ends_at == MAY + timedelta(days=30)
    # A channel is shared at once, like a purchase.
    assert await held(engine, earnings(creator)) == 2 * 450
    assert await held(engine, PLATFORM_REVENUE) == 2 * 50
    with pytest.raises(InsufficientFunds):
        await subscribe_to(engine, viewer, "channel", "3", creator_id=creator)
    with pytest.raises(NotFound, match="no channel subscription"):
        await subscribe_to(engine, viewer, "channel", "4", creator_id=viewer)
    with pytest.raises(ValidationFailed):
        await subscribe_to(engine, viewer, "gold", "5")
    await books_balance(engine)


# -- payout runs -----------------------------------------------------------------------------


def test_periods_are_calendar_months_in_utc():
    assert period_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    for bad in ("2026-13", "2026-5", "26-05", "2026-05-01", ""):
        with pytest.raises(ValidationFailed, match="YYYY-MM"):
            period_bounds(bad)


async def count_postings(engine, kind):
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(func.count())
                .select_from(ledger_transactions)
                .where(ledger_transactions.c.kind == kind)
            )
        ).scalar_one()


async def test_a_payout_run_pays_each_creator_once_and_writes_a_statement(engine):
    creator = await insert_user(engine, "creator")
    video, offer = await film_with_offer(engine, creator, amount=499)
    _, rent = await film_with_offer(engine, creator, kind="rent", amount=299)
    closed = []

    async def payout_closed(statement):
        closed.append(statement.id)

    for n in range(3):
        viewer = await funded_viewer(engine, 2000)
        await buy(engine, viewer, offer, "b", now=MAY + timedelta(days=n))
    await buy(engine, viewer, rent, "r", now=MAY + timedelta(days=5))
    # June's sale belongs to June.
    await buy(
        engine, await funded_viewer(engine, 600), offer, "june", datetime(2026, 6, 2, tzinfo=UTC)
    )

    run = await run_payouts(
        engine,
        "2026-05",
        revenue_split=SPLIT,
        now=datetime(2026, 6, 3, tzinfo=UTC),
        payout_closed=payout_closed,
    )

    assert not run.already_closed
    assert run.cutoff == datetime(2026, 6, 1, tzinfo=UTC)
    [statement] = run.statements
    assert statement.amount == Money(3 * 449 + 269, "EUR")
    assert [(line.kind, line.count, line.amount) for line in statement.lines] == [
        ("buy", 3, 3 * 449),
        ("rent", 1, 269),
    ]
    assert statement.lines[0].video_id == video
    assert closed == [statement.id]
    assert await held(engine, earnings(creator)) == 449  # June's, still owed
    assert await held(engine, payouts(creator)) == 3 * 449 + 269
    assert any("Paid 16.16 EUR" in line for line in run.report())

    again = await run_payouts(engine, "2026-05", revenue_split=SPLIT, payout_closed=payout_closed)
    assert again.already_closed
    assert again.statements == []
    assert "already closed" in again.report()[0] and "nothing changed" in again.report()[0]
    assert closed == [statement.id]
    assert await count_postings(engine, "payout") == 1
    assert [s.id for s in await creator_statements(engine, creator)] == [statement.id]

    june = await run_payouts(
        engine, "2026-06", revenue_split=SPLIT, now=datetime(2026, 7, 1, 9, tzinfo=UTC)
    )
    assert [s.amount for s in june.statements] == [Money(449, "EUR")]
    assert await held(engine, earnings(creator)) == 0
    await books_balance(engine)


async def test_the_current_month_settles_up_to_now_and_future_months_are_refused(engine):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=1000)
    viewer = await funded_viewer(engine, 3000)
    await buy(engine, viewer, offer, "1", now=MAY + timedelta(days=1))
    now = MAY + timedelta(days=10)
    run = await run_payouts(engine, "2026-05", revenue_split=SPLIT, now=now)
    assert run.cutoff == now
    assert [s.amount.amount for s in run.statements] == [900]
    with pytest.raises(ValidationFailed, match="has not started"):
        await run_payouts(engine, "2026-06", revenue_split=SPLIT, now=now)


async def test_a_refund_after_a_payout_is_netted_off_the_next_statement(engine):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=1000)
    _, cheap = await film_with_offer(engine, creator, amount=500)
    viewer = await funded_viewer(engine, 5000)
    bought, _ = await buy(engine, viewer, offer, "1", now=MAY)
    await run_payouts(engine, "2026-05", revenue_split=SPLIT, now=datetime(2026, 6, 1, tzinfo=UTC))
    assert await held(engine, payouts(creator)) == 900

    await refund_purchase(engine, bought.id, now=datetime(2026, 6, 5, tzinfo=UTC))
    assert await held(engine, earnings(creator)) == -900  # the creator owes it back
    june = await run_payouts(
        engine, "2026-06", revenue_split=SPLIT, now=datetime(2026, 7, 1, tzinfo=UTC)
    )
    assert june.statements == []  # nothing to pay: the debt waits

    await buy(engine, viewer, cheap, "2", now=datetime(2026, 7, 3, tzinfo=UTC))
    await buy(
        engine, await funded_viewer(engine, 5000), offer, "3", datetime(2026, 7, 4, tzinfo=UTC)
    )
    july = await run_payouts(
        engine, "2026-07", revenue_split=SPLIT, now=datetime(2026, 8, 1, tzinfo=UTC)
    )
    [statement] = july.statements
    assert statement.amount.amount == 450 + 900 - 900
    assert sorted((line.kind, line.amount) for line in statement.lines) == [
        ("buy", 450),
        ("buy", 900),
        ("refund", -900),
    ]
    assert sum(line.amount for line in statement.lines) == statement.amount.amount
    await books_balance(engine)


async def test_the_payout_run_shares_pass_fees_first(engine):
    creator = await insert_user(engine, "creator")
    film = await insert_video(engine, creator, status="ready")
    viewer = await funded_viewer(engine, 999)
    await subscribe_pass(engine, viewer, now=datetime(2026, 4, 20, tzinfo=UTC))
    await watch(engine, viewer, film, 60, datetime(2026, 4, 25, tzinfo=UTC))

    run = await run_payouts(
        engine, "2026-05", revenue_split=SPLIT, now=datetime(2026, 6, 1, tzinfo=UTC)
    )
    assert len(run.allocations) == 1
    [statement] = run.statements
    assert [(line.kind, line.title, line.amount) for line in statement.lines] == [
        ("pass", "Platform pass (by watch time)", 899)
    ]
    await books_balance(engine)


async def test_statements_as_csv_and_earnings_per_film_and_month(engine):
    creator = await insert_user(engine, "creator")
    video, offer = await film_with_offer(engine, creator, amount=499)
    await channel_plan(engine, creator, 300)
    viewer = await funded_viewer(engine, 5000)
    await buy(engine, viewer, offer, "1", now=MAY)
    await subscribe_to(engine, viewer, "channel", "2", creator_id=creator, now=MAY)
    run = await run_payouts(
        engine, "2026-05", revenue_split=SPLIT, now=datetime(2026, 6, 1, tzinfo=UTC)
    )
    await buy(
        engine, await funded_viewer(engine, 600), offer, "3", datetime(2026, 6, 2, tzinfo=UTC)
    )

    [statement] = run.statements
    text = statement_csv(statement)
    rows = text.splitlines()
    assert rows[0] == "statement,creator,period,currency,kind,video_id,title,count,amount"
    assert rows[1].endswith(f",buy,{video},A test film,1,4.49")
    assert rows[2].endswith(",channel,,Channel subscriptions,1,2.70")
    assert rows[3].endswith(",total,,,,7.19")

    earned = await creator_earnings(engine, creator)
    [eur] = earned.totals
    assert (eur.currency, eur.earned, eur.paid, eur.payable) == ("EUR", 449 + 270 + 449, 719, 449)
    assert [(c, s.kind, s.video_id, s.count, s.amount) for c, s in earned.sources] == [
        ("EUR", "buy", video, 2, 898),
        ("EUR", "channel", None, 1, 270),
    ]
    assert [(p.period, p.earned, p.paid) for p in earned.periods] == [
        ("2026-06", 449, 719),
        ("2026-05", 719, 0),
    ]
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(statements))).scalar() == 1


@pytest.mark.postgres
async def test_payout_runs_at_the_same_instant_pay_every_entry_once(postgres_url):
    from portal.db import create_engine

    engine = create_engine(postgres_url)
    try:
        await upgrade(engine)
        creators = [await insert_user(engine, "creator") for _ in range(3)]
        for number, creator in enumerate(creators):
            film = await insert_video(engine, creator, status="ready")
            _, offer = await film_with_offer(engine, creator, amount=1000)
            viewer = await funded_viewer(engine, 5000)
            await buy(engine, viewer, offer, "k", now=MAY + timedelta(days=number))
            await subscribe_pass(engine, viewer, now=datetime(2026, 4, 1, tzinfo=UTC))
            await watch(engine, viewer, film, 60, datetime(2026, 4, 2, tzinfo=UTC))
        now = datetime(2026, 6, 2, tzinfo=UTC)
        runs = []

        async def close(period: str) -> None:
            runs.append(await run_payouts(engine, period, revenue_split=SPLIT, now=now))

        async with anyio.create_task_group() as tg:
            for period in ["2026-05"] * 4 + ["2026-06"] * 2:
                tg.start_soon(close, period)

        statements = [s for run in runs for s in run.statements]
        shared = [a for run in runs for a in run.allocations]
        assert len(shared) == 3  # each pass fee shared once
        assert sorted(s.creator_id for s in statements) == sorted(creators)
        for creator in creators:
            assert await held(engine, payouts(creator)) == 900 + 899
            assert await held(engine, earnings(creator)) == 0
        assert await count_postings(engine, "payout") == 3
        await books_balance(engine)
    finally:
        await engine.dispose()
