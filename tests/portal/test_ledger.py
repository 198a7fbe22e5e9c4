"""The ledger on real databases: balanced, idempotent postings, floors, verification, and
wallet top-ups through a payment provider."""

from __future__ import annotations

import anyio
import pytest
from sqlalchemy import func, select, update

from portal.db import ledger_balances, ledger_entries, ledger_transactions
from portal.errors import Conflict, InsufficientFunds, PaymentFailed
from portal.ledger import (
    PLATFORM_REVENUE,
    Entry,
    UnbalancedPosting,
    balance,
    earnings,
    funding,
    post_once,
    transfer,
    verify,
    wallet,
)
from portal.migrations import upgrade
from portal.money import Money
from portal.payments import DevelopmentProvider, ProviderResult, top_up, wallet_balances

pytestmark = pytest.mark.anyio

EUR = "EUR"


async def held(engine, account, currency=EUR):
    async with engine.connect() as conn:
        return await balance(conn, account, currency)


async def count(engine, table):
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


async def test_a_posting_moves_money_and_keeps_balances_in_the_same_transaction(engine):
    posting, created = await post_once(
        engine,
        kind="top_up",
        scope="test",
        key="k1",
        entries=transfer(funding("development"), wallet("ann"), Money(1000, EUR)),
    )
    assert created
    assert await held(engine, wallet("ann")) == 1000
    assert await held(engine, funding("development")) == -1000
    assert posting.entries == (
        Entry("funding:development", -1000, EUR),
        Entry("wallet:ann", 1000, EUR),
    )
    assert await verify(engine) == []


async def test_unbalanced_entries_are_refused_and_nothing_is_written(engine):
    with pytest.raises(UnbalancedPosting, match="sum to zero"):
        await post_once(
            engine,
            kind="purchase",
            scope="test",
            key="bad",
            entries=[Entry(wallet("ann"), -499, EUR), Entry(earnings("bo"), 449, EUR)],
        )
    # Balanced in total but not per currency: still refused.
    with pytest.raises(UnbalancedPosting):
        await post_once(
            engine,
            kind="purchase",
            scope="test",
            key="bad",
            entries=[Entry(wallet("ann"), -100, EUR), Entry(earnings("bo"), 100, "USD")],
        )
    with pytest.raises(UnbalancedPosting, match="not a ledger account"):
        await post_once(
            engine,
            kind="purchase",
            scope="test",
            key="bad",
            entries=transfer("somewhere", wallet("ann"), Money(1, EUR)),
        )
    assert await count(engine, ledger_transactions) == 0
    assert await count(engine, ledger_balances) == 0


async def test_a_retry_with_the_same_key_returns_the_first_posting(engine):
    entries = transfer(funding("development"), wallet("ann"), Money(700, EUR))
    first, created = await post_once(
        engine, kind="top_up", scope="user:ann", key="same", entries=entries
    )
    again, created_again = await post_once(
        engine, kind="top_up", scope="user:ann", key="same", entries=entries
    )
    assert created and not created_again
    assert again.id == first.id
    assert await held(engine, wallet("ann")) == 700
    # The same key in another scope is another request.
    _, other = await post_once(engine, kind="top_up", scope="user:bo", key="same", entries=entries)
    assert other
    assert await held(engine, wallet("ann")) == 1400


async def test_a_wallet_never_goes_below_zero(engine):
    await post_once(
        engine,
        kind="top_up",
        scope="t",
        key="fund",
        entries=transfer(funding("development"), wallet("ann"), Money(300, EUR)),
    )
    with pytest.raises(InsufficientFunds) as refused:
        await post_once(
            engine,
            kind="purchase",
            scope="t",
            key="buy",
            entries=transfer(wallet("ann"), PLATFORM_REVENUE, Money(499, EUR)),
        )
    assert refused.value.status_code == 402
    assert refused.value.message == (
        "Your wallet holds 3.00 EUR and this costs 4.99 EUR; top up at least 1.99 EUR and "
        "try again."
    )
    # A wallet that never held this currency is empty too.
    with pytest.raises(InsufficientFunds, match=r"0\.00 USD"):
        await post_once(
            engine,
            kind="purchase",
            scope="t",
            key="buy-usd",
            entries=transfer(wallet("ann"), PLATFORM_REVENUE, Money(1, "USD")),
        )
    assert await held(engine, wallet("ann")) == 300
    assert await held(engine, PLATFORM_REVENUE) == 0
    assert await count(engine, ledger_transactions) == 1
    # The refused key was not used up: the same request succeeds once the money is there.
    await post_once(
        engine,
        kind="top_up",
        scope="t",
        key="fund-more",
        entries=transfer(funding("development"), wallet("ann"), Money(199, EUR)),
    )
    _, created = await post_once(
        engine,
        kind="purchase",
        scope="t",
        key="buy",
        entries=transfer(wallet("ann"), PLATFORM_REVENUE, Money(499, EUR)),
    )
    assert created
    assert await held(engine, wallet("ann")) == 0


async def test_earnings_may_go_below_zero(engine):
    # A refund after a payout leaves the creator owing; only wallets and the pool have floors.
    await post_once(
        engine,
        kind="refund",
        scope="t",
        key="r",
        entries=transfer(earnings("bo"), wallet("ann"), Money(449, EUR)),
    )
    assert await held(engine, earnings("bo")) == -449
    assert await verify(engine) == []


async def test_verify_names_unbalanced_postings_and_balances_that_differ_from_entries(engine):
    good, _ = await post_once(
        engine,
        kind="top_up",
        scope="t",
        key="a",
        entries=transfer(funding("development"), wallet("ann"), Money(500, EUR)),
    )
    assert await verify(engine) == []
    async with engine.begin() as conn:  # somebody edits the books by hand
        await conn.execute(
            update(ledger_entries)
            .where(ledger_entries.c.transaction_id == good.id, ledger_entries.c.line == 1)
            .values(amount=5000)
        )
        await conn.execute(
            update(ledger_balances)
            .where(ledger_balances.c.account == funding("development"))
            .values(balance=-1)
        )
    problems = await verify(engine)
    assert [p.transaction_id for p in problems if p.transaction_id] == [good.id]
    assert {p.account for p in problems if p.account} == {"wallet:ann", "funding:development"}
    assert any("sum to 4500" in p.message for p in problems)


class RefusingProvider:
    """A provider whose bank says no: nothing may reach the wallet."""

    name = "refusing"
    label = "Always refuses"

    async def charge(self, user_id, money, idempotency_key):
        return ProviderResult(ok=False, message="Your card was declined; try another card.")


async def test_top_up_credits_the_wallet_once_per_key(engine):
    provider = DevelopmentProvider()
    assert provider.label == "Development wallet: no real money"
    first, created = await top_up(
        engine, provider, user_id="ann", money=Money(2000, EUR), idempotency_key="k"
    )
    again, created_again = await top_up(
        engine, provider, user_id="ann", money=Money(2000, EUR), idempotency_key="k"
    )
    assert (created, created_again) == (True, False)
    assert again == first
    assert first.balance == Money(2000, EUR)
    with pytest.raises(Conflict, match="already used for a different request"):
        await top_up(engine, provider, user_id="ann", money=Money(1, EUR), idempotency_key="k")
    await top_up(engine, provider, user_id="ann", money=Money(300, "JPY"), idempotency_key="y")
    assert await wallet_balances(engine, "ann") == [Money(2000, EUR), Money(300, "JPY")]
    assert await held(engine, funding("development")) == -2000


async def test_a_refused_charge_credits_nothing(engine):
    with pytest.raises(PaymentFailed, match="declined"):
        await top_up(
            engine, RefusingProvider(), user_id="ann", money=Money(500, EUR), idempotency_key="k"
        )
    assert await wallet_balances(engine, "ann") == []
    assert await count(engine, ledger_transactions) == 0


@pytest.mark.postgres
async def test_twenty_concurrent_top_ups_with_one_key_credit_once(settings, postgres_url):
    from portal.db import create_engine

    engine = create_engine(postgres_url)
    try:
        await upgrade(engine)
        results = []

        async def one() -> None:
            results.append(
                await top_up(
                    engine,
                    DevelopmentProvider(),
                    user_id="ann",
                    money=Money(1000, EUR),
                    idempotency_key="once",
                )
            )

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        assert len({result.id for result, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        assert await held(engine, wallet("ann")) == 1000
        assert await verify(engine) == []
    finally:
        await engine.dispose()
