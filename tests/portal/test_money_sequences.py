"""Random sequences of top-ups, purchases, retries with reused keys, refunds, pass
subscriptions, watching and payout runs, against a model of what each wallet must hold.

After every step: the books balance (`verify`), no wallet is below zero, every wallet holds
exactly what the model says (so a retry never charged twice), and a payout run repeated for
the same month changes nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from portal.db import ledger_balances
from portal.errors import Conflict, InsufficientFunds
from portal.ledger import wallet
from portal.money import Money
from portal.payments import top_up
from portal.payouts import run_payouts
from portal.purchases import RENT_START_WINDOW, refund_purchase
from portal.subscriptions import subscribe
from tests.helpers import insert_user
from tests.portal.commerce import (
    PROVIDER,
    SPLIT,
    books_balance,
    buy,
    film_with_offer,
    held,
    watch,
)

pytestmark = pytest.mark.anyio

PASS = Money(999, "EUR")
PRICES = {"buy": 499, "rent": 299}
KEYS = ("a", "b", "c", "d")  # few keys per viewer: retries and reuse happen often
EXAMPLES = itertools.count()

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("top_up"),
            st.integers(0, 2),
            st.sampled_from(KEYS),
            st.sampled_from([100, 500, 1200]),
        ),
        st.tuples(st.just("buy"), st.integers(0, 2), st.sampled_from(KEYS), st.integers(0, 3)),
        st.tuples(st.just("refund"), st.integers(0, 30)),
        st.tuples(st.just("pass"), st.integers(0, 2), st.sampled_from(KEYS)),
        st.tuples(st.just("watch"), st.integers(0, 2), st.integers(0, 3), st.integers(1, 3600)),
        st.tuples(st.just("payout")),
        st.tuples(st.just("wait"), st.integers(1, 20)),
    ),
    min_size=1,
    max_size=25,
)


@dataclass
class Model:
    wallets: list[int] = field(default_factory=lambda: [0, 0, 0])
    # (viewer, key) -> (what, request, result id)
    keys: dict[tuple[int, str], tuple[str, object, str]] = field(default_factory=dict)
    purchases: list[dict] = field(default_factory=list)
    closed: set[str] = field(default_factory=set)


async def all_balances(engine):
    async with engine.connect() as conn:
        rows = await conn.execute(select(ledger_balances))
        return {(r.account, r.currency): r.balance for r in rows}


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
async def test_random_money_sequences_keep_the_books_and_wallets_right(engine, plan):
    # Each example has users and films of its own in the shared database.
    creators = [await insert_user(engine, "creator") for _ in range(2)]
    films = []  # (video id, offer id, kind)
    for number, kind in enumerate(("buy", "rent", "buy", "rent")):
        video_id, offer_id = await film_with_offer(
            engine, creators[number % 2], kind=kind, amount=PRICES[kind]
        )
        films.append((video_id, offer_id, kind))
    viewers = [await insert_user(engine, "viewer") for _ in range(3)]
    model = Model()
    # Closed months are the whole database's: each example lives in years of its own.
    now = datetime(2000 + 3 * next(EXAMPLES), 3, 28, tzinfo=UTC)

    for step in plan:
        now += timedelta(hours=7)
        what = step[0]
        if what == "top_up":
            _, v, key, amount = step
            earlier = model.keys.get((v, key))
            try:
                done, created = await top_up(
                    engine,
                    PROVIDER,
                    user_id=viewers[v],
                    money=Money(amount, "EUR"),
                    idempotency_key=key,
                )
            except Conflict:
                assert earlier is not None and earlier[:2] != ("top_up", amount)
                continue
            if earlier is None:
                assert created
                model.wallets[v] += amount
                model.keys[(v, key)] = ("top_up", amount, done.id)
            else:
                assert not created and earlier == ("top_up", amount, done.id)
        elif what == "buy":
            _, v, key, f = step
            video_id, offer_id, kind = films[f]
            earlier = model.keys.get((v, key))
            held_now = [
                p
                for p in model.purchases
                if p["viewer"] == v
                and p["video"] == video_id
                and not p["refunded"]
                and (p["kind"] == "buy" or p["expires_at"] > now)
            ]
            try:
                bought, created = await buy(engine, viewers[v], offer_id, key, now=now)
            except Conflict:
                reused = earlier is not None and earlier[:2] != ("buy", offer_id)
                owned = any(p["kind"] == "buy" for p in held_now) or (kind == "rent" and held_now)
                assert reused or (earlier is None and owned)
                continue
            except InsufficientFunds:
                assert earlier is None and model.wallets[v] < PRICES[kind]
                continue
            if earlier is not None:
                assert not created and earlier == ("buy", offer_id, bought.id)
                continue
            assert created and model.wallets[v] >= PRICES[kind]
            assert not any(p["kind"] == "buy" for p in held_now)
            model.wallets[v] -= PRICES[kind]
            model.keys[(v, key)] = ("buy", offer_id, bought.id)
            model.purchases.append(
                {
                    "id": bought.id,
                    "viewer": v,
                    "video": video_id,
                    "kind": kind,
                    "refunded": False,
                    "expires_at": now + RENT_START_WINDOW if kind == "rent" else None,
                }
            )
        elif what == "refund" and model.purchases:
            target = model.purchases[step[1] % len(model.purchases)]
            refunded, done = await refund_purchase(engine, target["id"], now=now)
            assert done == (not target["refunded"])
            if done:
                target["refunded"] = True
                model.wallets[target["viewer"]] += PRICES[target["kind"]]
            assert refunded.refunded_at is not None
        elif what == "pass":
            _, v, key = step
            earlier = model.keys.get((v, key))
            try:
                period, created = await subscribe(
                    engine,
                    user_id=viewers[v],
                    plan="pass",
                    idempotency_key=key,
                    pass_price=PASS,
                    revenue_split=SPLIT,
                    now=now,
                )
            except Conflict:
                assert earlier is not None and earlier[0] != "pass"
                continue
            except InsufficientFunds:
                assert earlier is None and model.wallets[v] < PASS.amount
                continue
            if earlier is None:
                assert created
                model.wallets[v] -= PASS.amount
                model.keys[(v, key)] = ("pass", None, period.id)
            else:
                assert not created and earlier == ("pass", None, period.id)
        elif what == "watch":
            _, v, f, seconds = step
            await watch(engine, viewers[v], films[f][0], seconds, now)
        elif what == "payout":
            month = f"{now:%Y-%m}"
            before = await all_balances(engine)
            run = await run_payouts(engine, month, revenue_split=SPLIT, now=now)
            assert run.already_closed == (month in model.closed)
            if run.already_closed:
                assert await all_balances(engine) == before
            else:
                model.closed.add(month)
                # Everything earned before now was paid, except debts (refunds after a payout).
                for creator in creators:
                    assert await held(engine, f"earnings:{creator}") <= 0
                again = await run_payouts(engine, month, revenue_split=SPLIT, now=now)
                assert again.already_closed and again.statements == []
        elif what == "wait":
            now += timedelta(days=step[1])

        for v, expected in enumerate(model.wallets):
            assert await held(engine, wallet(viewers[v])) == expected >= 0
    await books_balance(engine)
