"""Top-ups through a deferred payment provider: pending first, credited once on fulfilment.

`begin_top_up` records the top-up (`provider_payments`, unique per user and Idempotency-Key)
before it asks the provider for a payment, and passes the provider the row's id, so a retried
request, even one retried after a crash between the two, answers the same payment and never
makes a second one. The wallet is credited only when the provider says the payment succeeded:
`settle` is called with the provider's word from a verified webhook or from asking the
provider (`refresh_top_up`), and posts `funding:<provider> -> wallet:<user>` keyed by the
provider's reference (`payment:<provider>`, `pi_...`). The ledger's unique key makes that
exactly once: a replayed webhook, a poll racing a webhook, or a second process all find the
first posting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portal.db import new_id, provider_payments, utcnow
from portal.errors import NotFound, PaymentFailed, PortalError
from portal.ledger import Transaction, funding, key_reused, post, run_once, transfer, wallet
from portal.money import Money
from portal.payments import (
    CANCELED,
    PENDING,
    SUCCEEDED,
    TOP_UP,
    DeferredPaymentProvider,
    PaymentState,
)

log = logging.getLogger("megamovie.payments")


class PaymentsUnavailable(PortalError):
    """No provider takes payments now: none is configured, or it cannot be reached."""

    status_code = 503
    code = "payments_unavailable"


@dataclass(frozen=True)
class ProviderPayment:
    """A top-up through a deferred provider, as the portal recorded it."""

    id: str
    user_id: str
    idempotency_key: str
    provider: str
    reference: str | None
    money: Money
    status: str  # PENDING, SUCCEEDED or CANCELED
    message: str
    transaction_id: str | None  # the ledger posting that credited the wallet
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> ProviderPayment:
        return cls(
            id=row.id,
            user_id=row.user_id,
            idempotency_key=row.idempotency_key,
            provider=row.provider,
            reference=row.reference,
            money=Money(int(row.amount), row.currency),
            status=row.status,
            message=row.message or "",
            transaction_id=row.transaction_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def fulfilment_scope(provider: str) -> str:
    """The ledger scope of fulfilments: keys are the provider's references, unique in it."""
    return f"payment:{provider}"


async def _one(engine: AsyncEngine, *where: Any) -> ProviderPayment | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(provider_payments).where(*where))).first()
    return ProviderPayment.from_row(row) if row is not None else None


async def find_payment(engine: AsyncEngine, user_id: str, payment_id: str) -> ProviderPayment:
    """The user's own top-up `payment_id`, or NotFound (also for someone else's)."""
    found = await _one(
        engine, provider_payments.c.id == payment_id, provider_payments.c.user_id == user_id
    )
    if found is None:
        raise NotFound("No such top-up.")
    return found


async def payment_by_reference(
    engine: AsyncEngine, provider: str, reference: str
) -> ProviderPayment | None:
    return await _one(
        engine,
        provider_payments.c.provider == provider,
        provider_payments.c.reference == reference,
    )


async def begin_top_up(
    engine: AsyncEngine,
    provider: DeferredPaymentProvider,
    *,
    user_id: str,
    money: Money,
    idempotency_key: str,
) -> tuple[ProviderPayment, PaymentState | None, bool]:
    """Start (or, for a retried key, look up) a top-up: (top-up, provider's state, created).

    The state is None when the top-up is already over (succeeded or canceled). The same key
    with another amount, currency or provider is a Conflict."""
    now = utcnow()
    created = False
    found = await _one(
        engine,
        provider_payments.c.user_id == user_id,
        provider_payments.c.idempotency_key == idempotency_key,
    )
    if found is None:
        payment_id = new_id()
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    provider_payments.insert().values(
                        id=payment_id,
                        user_id=user_id,
                        idempotency_key=idempotency_key,
                        provider=provider.name,
                        reference=None,
                        amount=money.amount,
                        currency=money.currency,
                        status=PENDING,
                        message="",
                        transaction_id=None,
                        created_at=now,
                        updated_at=now,
                    )
                )
            created = True
        except IntegrityError:
            pass  # the same request, retried at the same instant: answer the first
        found = await _one(
            engine,
            provider_payments.c.user_id == user_id,
            provider_payments.c.idempotency_key == idempotency_key,
        )
        assert found is not None
    if found.money != money or found.provider != provider.name:
        raise key_reused(idempotency_key, f"top-up of {found.money} through {found.provider}")
    if found.status != PENDING:
        return found, None, created
    if found.reference is None:
        # A crash (or a refused call) after the row was written and before the provider
        # answered leaves no reference: ask again with the same id, which the provider is
        # given as its own idempotency key, so this never makes a second payment.
        try:
            state = await provider.start(user_id, money, found.id)
        except PaymentFailed:
            # Refused outright (not unreachable): nothing was made, so the key is not used
            # up (as for every refused payment request); a retry may try again.
            async with engine.begin() as conn:
                await conn.execute(
                    provider_payments.delete().where(
                        provider_payments.c.id == found.id,
                        provider_payments.c.reference.is_(None),
                    )
                )
            raise
        async with engine.begin() as conn:
            await conn.execute(
                update(provider_payments)
                .where(provider_payments.c.id == found.id, provider_payments.c.reference.is_(None))
                .values(reference=state.reference, updated_at=utcnow())
            )
        found = await find_payment(engine, user_id, found.id)
        if found.reference != state.reference:
            # A racing retry stored its payment first (a provider that ignores idempotency
            # keys makes a second one, which nobody is shown): answer the stored one.
            assert found.reference is not None
            log.warning(
                "%s made a second payment %s for top-up %s; %s is kept",
                provider.name,
                state.reference,
                found.id,
                found.reference,
            )
            state = await provider.lookup(found.reference)
    else:
        state = await provider.lookup(found.reference)
    return await settle(engine, found, state), state, created


async def refresh_top_up(
    engine: AsyncEngine, provider: DeferredPaymentProvider | None, payment: ProviderPayment
) -> tuple[ProviderPayment, PaymentState | None]:
    """Ask the provider about a pending top-up and credit it if it succeeded: fulfilment does
    not wait for a webhook. Without the provider (turned off since) the record is answered."""
    if payment.status != PENDING or payment.reference is None or provider is None:
        return payment, None
    state = await provider.lookup(payment.reference)
    return await settle(engine, payment, state), state


async def settle(
    engine: AsyncEngine, payment: ProviderPayment, state: PaymentState
) -> ProviderPayment:
    """Record what the provider says about `payment`; on success credit the wallet, once.

    A state for another amount or currency than the top-up asked for credits nothing and is
    logged: it means the provider's record was changed behind the portal's back."""
    if state.reference != payment.reference:
        raise ValueError(f"state of {state.reference} given for {payment.reference}")
    if state.money != payment.money:
        log.error(
            "%s payment %s is for %s but top-up %s asked for %s: not credited",
            payment.provider,
            state.reference,
            state.money,
            payment.id,
            payment.money,
        )
        return payment
    if state.status == SUCCEEDED:
        return await _fulfil(engine, payment)
    status = CANCELED if state.status == CANCELED else PENDING
    if status != payment.status or state.message != payment.message:
        await _record(engine, payment, status, state.message)
    return await find_payment(engine, payment.user_id, payment.id)


async def _record(engine: AsyncEngine, payment: ProviderPayment, status: str, message: str) -> None:
    """Record a pending top-up's new status and message (a settled one is never changed)."""
    async with engine.begin() as conn:
        await conn.execute(
            update(provider_payments)
            .where(provider_payments.c.id == payment.id, provider_payments.c.status == PENDING)
            .values(status=status, message=message, updated_at=utcnow())
        )


async def _fulfil(engine: AsyncEngine, payment: ProviderPayment) -> ProviderPayment:
    assert payment.reference is not None
    scope = fulfilment_scope(payment.provider)

    async def work(conn: AsyncConnection) -> Transaction:
        posted = await post(
            conn,
            kind=TOP_UP,
            scope=scope,
            key=payment.reference or "",
            entries=transfer(funding(payment.provider), wallet(payment.user_id), payment.money),
            user_id=payment.user_id,
            reference=payment.id,
            memo=f"top-up through {payment.provider} ({payment.reference})",
        )
        await conn.execute(
            update(provider_payments)
            .where(provider_payments.c.id == payment.id)
            .values(status=SUCCEEDED, message="", transaction_id=posted.id, updated_at=utcnow())
        )
        return posted

    async def replay(conn: AsyncConnection, found: Transaction) -> Transaction:
        return found

    _, created = await run_once(engine, scope, payment.reference, work, replay)
    if created:
        log.info(
            "top-up %s credited %s to %s (%s %s)",
            payment.id,
            payment.money,
            payment.user_id,
            payment.provider,
            payment.reference,
        )
    return await find_payment(engine, payment.user_id, payment.id)


async def reconcile(
    engine: AsyncEngine, provider: DeferredPaymentProvider, *, older_than: timedelta
) -> tuple[int, int]:
    """Ask `provider` about every top-up of its still pending after `older_than` and credit
    those that were paid: (checked, credited). For when both the webhook and the payer's
    browser went away. Safe at any time and as often as wanted: each payment is credited
    once, whoever settles it first."""
    cutoff = utcnow() - older_than
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(provider_payments)
                .where(
                    provider_payments.c.provider == provider.name,
                    provider_payments.c.status == PENDING,
                    provider_payments.c.reference.is_not(None),
                    provider_payments.c.created_at <= cutoff,
                )
                .order_by(provider_payments.c.created_at)
            )
        ).all()
    credited = 0
    for row in rows:
        payment, _ = await refresh_top_up(engine, provider, ProviderPayment.from_row(row))
        if payment.status == SUCCEEDED and row.status != SUCCEEDED:
            credited += 1
    return len(rows), credited
