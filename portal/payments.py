"""Payment providers and the wallet they fill.

A viewer's wallet (`wallet:<user>` in the ledger) is topped up through a payment provider and
spent on purchases and subscriptions. A provider only has to charge: `charge(user_id, money,
idempotency_key)`. It is handed the request's idempotency key so that a retried top-up is not
charged twice by the provider either (Stripe, for one, honours such keys). The ledger then
posts `funding:<provider> -> wallet:<user>` under the same key.

`DevelopmentProvider` always succeeds and moves no real money; its label says so wherever it
is shown.

A provider whose payer finishes paying elsewhere (a card form, 3-D Secure) is a
`DeferredPaymentProvider` instead: `start` answers a pending payment (for Stripe, a
PaymentIntent and its client secret) and the wallet is credited only when the provider says it
succeeded (`portal.top_ups`). The provider for a charge is chosen by the `payment_provider`
licensing hook: the built-in answer is the development provider (unless
`MEGAMOVIE_DEVELOPMENT_PAYMENTS=0`), the `stripe` plugin answers first when Stripe is
configured (`portal.stripe_payments`), and any other plugin may answer before both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portal.errors import PaymentFailed
from portal.ledger import (
    Transaction,
    balance,
    balances,
    find_transaction,
    funding,
    key_reused,
    post,
    run_once,
    transfer,
    user_scope,
    wallet,
)
from portal.money import Money

TOP_UP = "top_up"


@dataclass(frozen=True)
class ProviderResult:
    """What a provider answers: `ok` and its own reference for the charge, or a `message`
    for the person paying when it refused."""

    ok: bool
    reference: str = ""
    message: str = ""


class PaymentProvider(Protocol):
    name: str  # short, stable: part of the ledger account funding:<name>
    label: str  # shown to people next to the wallet

    async def charge(self, user_id: str, money: Money, idempotency_key: str) -> ProviderResult:
        """Take `money` from the person; the same key must never charge twice."""
        ...


#: What a deferred payment is, in the portal's words (the provider has finer ones).
PENDING = "pending"
SUCCEEDED = "succeeded"
CANCELED = "canceled"


@dataclass(frozen=True)
class PaymentState:
    """What a deferred provider says about one payment, now."""

    reference: str  # the provider's id for it (Stripe: pi_...)
    status: str  # PENDING, SUCCEEDED or CANCELED
    money: Money  # what the provider takes (or took)
    provider_status: str = ""  # the provider's own word: requires_payment_method, ...
    message: str = ""  # why the last attempt was refused, for the person paying
    #: What the payer's browser needs to finish paying (Stripe: client_secret and
    #: publishable_key); empty once nothing is left to do.
    client: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class DeferredPaymentProvider(Protocol):
    """A provider that answers "pending" and is asked again (or told by a webhook) later."""

    name: str
    label: str

    async def start(self, user_id: str, money: Money, payment_id: str) -> PaymentState:
        """Begin taking `money`; the same `payment_id` must never make a second payment."""
        ...

    async def lookup(self, reference: str) -> PaymentState:
        """The payment's state as the provider knows it now."""
        ...


class DevelopmentProvider:
    """Succeeds at once and moves no real money: for laptops, demos and tests."""

    name = "development"
    label = "Development wallet: no real money"

    async def charge(self, user_id: str, money: Money, idempotency_key: str) -> ProviderResult:
        return ProviderResult(ok=True, reference=f"dev:{idempotency_key}")


@dataclass(frozen=True)
class TopUp:
    id: str  # the ledger transaction
    money: Money
    balance: Money  # the wallet's balance in that currency right after the top-up
    created_at: datetime


async def top_up(
    engine: AsyncEngine,
    provider: PaymentProvider,
    *,
    user_id: str,
    money: Money,
    idempotency_key: str,
) -> tuple[TopUp, bool]:
    """Charge `money` through `provider` and credit the user's wallet: (top-up, created).

    A retry with the same key answers the first top-up (created False) and charges nothing
    more; the same key with another amount is a Conflict. A refused charge is PaymentFailed
    and credits nothing."""
    scope = user_scope(user_id)

    async def replay(conn: AsyncConnection, found: Transaction) -> TopUp:
        credited = [e for e in found.entries if e.account == wallet(user_id)]
        if found.kind != TOP_UP or [(e.amount, e.currency) for e in credited] != [
            (money.amount, money.currency)
        ]:
            raise key_reused(idempotency_key, found.kind)
        held = await balance(conn, wallet(user_id), money.currency)
        return TopUp(found.id, money, Money(held, money.currency), found.created_at)

    async with engine.connect() as conn:
        found = await find_transaction(conn, scope, idempotency_key)
        if found is not None:
            return await replay(conn, found), False

    result = await provider.charge(user_id, money, idempotency_key)
    if not result.ok:
        raise PaymentFailed(
            result.message or f"{provider.label} refused the payment; nothing was charged."
        )

    async def work(conn: AsyncConnection) -> TopUp:
        posted = await post(
            conn,
            kind=TOP_UP,
            scope=scope,
            key=idempotency_key,
            entries=transfer(funding(provider.name), wallet(user_id), money),
            user_id=user_id,
            reference=result.reference[:64] or None,
            memo=f"top-up through {provider.name}",
        )
        held = await balance(conn, wallet(user_id), money.currency)
        return TopUp(posted.id, money, Money(held, money.currency), posted.created_at)

    return await run_once(engine, scope, idempotency_key, work, replay)


async def wallet_balances(engine: AsyncEngine, user_id: str) -> list[Money]:
    """The wallet's balance in every currency it has held, by currency code."""
    async with engine.connect() as conn:
        held = await balances(conn, wallet(user_id))
    return [Money(amount, currency) for currency, amount in held.items()]
