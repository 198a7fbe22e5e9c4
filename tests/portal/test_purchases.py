"""Buying and renting from the wallet, refunds, the library; concurrency on PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from sqlalchemy import func, select

from portal.db import create_engine, ledger_transactions, purchases
from portal.errors import Conflict, InsufficientFunds, NotFound, ValidationFailed
from portal.ledger import PLATFORM_REVENUE, earnings, wallet
from portal.library import library
from portal.migrations import upgrade
from portal.money import Money
from portal.purchases import RENT_START_WINDOW, refund_purchase
from tests.helpers import insert_user
from tests.portal.commerce import (
    add_offer,
    books_balance,
    buy,
    film_with_offer,
    funded_viewer,
    held,
)

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


async def purchase_rows(engine, user_id):
    async with engine.connect() as conn:
        return (await conn.execute(select(purchases).where(purchases.c.user_id == user_id))).all()


async def test_buying_a_film_pays_the_creator_90_percent_and_the_platform_the_rest(engine):
    creator = await insert_user(engine, "creator")
    video, offer = await film_with_offer(engine, creator, amount=499)
    viewer = await funded_viewer(engine, 1000)

    bought, created = await buy(engine, viewer, offer, "k1", now=NOW)

    assert created
    assert (bought.video_id, bought.kind, bought.price, bought.expires_at) == (
        video,
        "buy",
        Money(499, "EUR"),
        None,
    )
    assert await held(engine, wallet(viewer)) == 501
    assert await held(engine, earnings(creator)) == 449
    assert await held(engine, PLATFORM_REVENUE) == 50
    [row] = await purchase_rows(engine, viewer)
    assert row.transaction_id == bought.transaction_id
    assert row.creator_id == creator
    await books_balance(engine)


async def test_a_retry_with_the_same_key_returns_the_first_purchase_and_charges_once(engine):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=499)
    _, other_offer = await film_with_offer(engine, creator, amount=300)
    viewer = await funded_viewer(engine, 1000)
    calls = []

    async def completed(bought):
        calls.append(bought.id)

    first, _ = await buy(engine, viewer, offer, "k", purchase_completed=completed)
    again, created = await buy(engine, viewer, offer, "k", purchase_completed=completed)
    assert not created
    assert again == first
    assert calls == [first.id]  # told once, not on the retry
    assert await held(engine, wallet(viewer)) == 501
    with pytest.raises(Conflict, match="already used for a different request"):
        await buy(engine, viewer, other_offer, "k")
    # The key of the wallet top-up cannot be replayed as a purchase either.
    with pytest.raises(Conflict, match="a wallet top-up"):
        await buy(engine, viewer, other_offer, "fund")
    assert len(await purchase_rows(engine, viewer)) == 1


async def test_too_little_in_the_wallet_charges_nothing_and_records_nothing(engine):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=499)
    viewer = await funded_viewer(engine, 300)
    with pytest.raises(InsufficientFunds) as refused:
        await buy(engine, viewer, offer, "k")
    assert refused.value.code == "insufficient_funds"
    assert "top up at least 1.99 EUR" in refused.value.message
    assert await purchase_rows(engine, viewer) == []
    assert await held(engine, wallet(viewer)) == 300
    assert await held(engine, earnings(creator)) == 0
    await books_balance(engine)


async def test_a_rental_must_start_within_30_days(engine):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, kind="rent", amount=299)
    viewer = await funded_viewer(engine, 1000)
    rented, _ = await buy(engine, viewer, offer, "r", now=NOW)
    assert rented.kind == "rent"
    assert rented.expires_at == NOW + RENT_START_WINDOW == NOW + timedelta(days=30)
    assert rented.first_played_at is None


async def test_a_film_held_is_not_sold_twice(engine):
    creator = await insert_user(engine, "creator")
    video, rent_offer = await film_with_offer(engine, creator, kind="rent", amount=299)
    buy_offer = await add_offer(engine, video, "buy", 999)
    viewer = await funded_viewer(engine, 5000)

    await buy(engine, viewer, rent_offer, "1", now=NOW)
    with pytest.raises(Conflict, match="already renting"):
        await buy(engine, viewer, rent_offer, "2", now=NOW)
    # Renting, then buying for good, is fine.
    await buy(engine, viewer, buy_offer, "3", now=NOW)
    for key, offer in (("4", buy_offer), ("5", rent_offer)):
        with pytest.raises(Conflict, match="already own"):
            await buy(engine, viewer, offer, key, now=NOW)
    # A lapsed rental does not stand in the way of a new one.
    other = await funded_viewer(engine, 1000)
    await buy(engine, other, rent_offer, "1", now=NOW)
    later = NOW + timedelta(days=31)
    await buy(engine, other, rent_offer, "2", now=later)
    assert await held(engine, wallet(viewer)) == 5000 - 299 - 999
    assert await held(engine, wallet(other)) == 1000 - 2 * 299
    await books_balance(engine)


async def test_only_public_films_with_a_price_are_sold_here(engine):
    creator = await insert_user(engine, "creator")
    viewer = await funded_viewer(engine, 1000)
    _, unready = await film_with_offer(engine, creator, status="processing")
    _, channel = await film_with_offer(engine, creator, kind="channel", amount=None, currency=None)
    with pytest.raises(NotFound):
        await buy(engine, viewer, unready, "a")
    with pytest.raises(NotFound):
        await buy(engine, viewer, "nosuchoffer", "b")
    with pytest.raises(ValidationFailed, match="subscribe instead"):
        await buy(engine, viewer, channel, "c")
    assert await held(engine, wallet(viewer)) == 1000


async def test_a_plugged_in_split_decides_the_shares_and_may_not_make_money(engine):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=1000)
    viewer = await funded_viewer(engine, 5000)

    def all_to_creator(money, *, creator_id, kind):
        assert (creator_id, kind) == (creator, "buy")
        return money.amount, 0

    def broken(money, *, creator_id, kind):
        return money.amount, 5

    with pytest.raises(ValueError, match="add up to the amount"):
        await buy(engine, viewer, offer, "x", revenue_split=broken)
    await buy(engine, viewer, offer, "y", revenue_split=all_to_creator)
    assert await held(engine, earnings(creator)) == 1000
    assert await held(engine, PLATFORM_REVENUE) == 0
    await books_balance(engine)


async def test_a_refund_reverses_the_purchase_exactly_once(engine):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=499)
    viewer = await funded_viewer(engine, 1000)
    told = []

    async def refunded(p):
        told.append(p.id)

    bought, _ = await buy(engine, viewer, offer, "k")
    first, done = await refund_purchase(engine, bought.id, now=NOW, purchase_refunded=refunded)
    again, done_again = await refund_purchase(engine, bought.id, purchase_refunded=refunded)
    assert (done, done_again) == (True, False)
    assert first.refunded_at == again.refunded_at == NOW
    assert told == [bought.id]
    assert await held(engine, wallet(viewer)) == 1000
    assert await held(engine, earnings(creator)) == 0
    assert await held(engine, PLATFORM_REVENUE) == 0
    with pytest.raises(NotFound):
        await refund_purchase(engine, "nosuchpurchase")
    # The film can be bought again after its refund.
    await buy(engine, viewer, offer, "k2")
    await books_balance(engine)


async def test_a_failing_listener_does_not_undo_a_purchase(engine, caplog):
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=499)
    viewer = await funded_viewer(engine, 1000)

    async def broken(bought):
        raise RuntimeError("mail server down")

    with caplog.at_level(logging.ERROR, logger="megamovie.money"):
        _, created = await buy(engine, viewer, offer, "k", purchase_completed=broken)
    assert created
    assert "notification failed" in caplog.text
    assert len(await purchase_rows(engine, viewer)) == 1


async def test_the_library_lists_what_can_be_watched_and_the_time_left(engine):
    creator = await insert_user(engine, "creator")
    video, owned = await film_with_offer(engine, creator, amount=499)
    _, rent = await film_with_offer(engine, creator, kind="rent", amount=299)
    _, refunded = await film_with_offer(engine, creator, amount=100)
    viewer = await funded_viewer(engine, 2000)
    for key, offer in (("a", owned), ("b", rent), ("c", refunded)):
        await buy(engine, viewer, offer, key, now=NOW)
    [undone] = [r for r in await purchase_rows(engine, viewer) if r.amount == 100]
    await refund_purchase(engine, undone.id)

    shelf = await library(engine, viewer, now=NOW + timedelta(days=1))
    assert sorted((h.purchase.kind, h.seconds_left) for h in shelf.films) == [
        ("buy", None),
        ("rent", 29 * 24 * 3600),
    ]
    assert {h.title for h in shelf.films} == {"A test film"}
    lapsed = await library(engine, viewer, now=NOW + timedelta(days=31))
    assert [h.purchase.video_id for h in lapsed.films] == [video]


# -- PostgreSQL: many requests at the same instant -------------------------------------------


@pytest.fixture
async def pg_engine(postgres_url):
    engine = create_engine(postgres_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.mark.postgres
async def test_twenty_concurrent_purchases_with_one_key_charge_once(pg_engine):
    engine = pg_engine
    creator = await insert_user(engine, "creator")
    _, offer = await film_with_offer(engine, creator, amount=499)
    viewer = await funded_viewer(engine, 1000)
    results = []

    async def attempt() -> None:
        results.append(await buy(engine, viewer, offer, "one-click"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(attempt)

    assert len({bought.id for bought, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(await purchase_rows(engine, viewer)) == 1
    assert await held(engine, wallet(viewer)) == 501
    assert await held(engine, earnings(creator)) == 449
    await books_balance(engine)


@pytest.mark.postgres
async def test_twenty_concurrent_purchases_beyond_the_balance_never_overdraw(pg_engine):
    engine = pg_engine
    creator = await insert_user(engine, "creator")
    offer_ids = [(await film_with_offer(engine, creator, amount=300))[1] for _ in range(20)]
    viewer = await funded_viewer(engine, 1000)
    outcomes: list[str] = []

    async def attempt(number: int, offer_id: str) -> None:
        try:
            await buy(engine, viewer, offer_id, f"k{number}")
            outcomes.append("bought")
        except InsufficientFunds:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        for number, offer_id in enumerate(offer_ids):
            tg.start_soon(attempt, number, offer_id)

    assert sorted(outcomes) == ["bought"] * 3 + ["refused"] * 17
    assert await held(engine, wallet(viewer)) == 100
    assert len(await purchase_rows(engine, viewer)) == 3
    assert await held(engine, earnings(creator)) == 3 * 270
    async with engine.connect() as conn:
        postings = (
            await conn.execute(
                select(func.count())
                .select_from(ledger_transactions)
                .where(ledger_transactions.c.kind == "purchase")
            )
        ).scalar_one()
    assert postings == 3
    await books_balance(engine)
