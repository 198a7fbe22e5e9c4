"""Top-ups through a deferred provider (Stripe): the pending answer, the poll, the webhook.

`POST /api/wallet/top-ups` (portal.routes.money) asks the `payment_provider` hook; when the
answer is a `DeferredPaymentProvider` it hands over to `deferred_top_up` here, which answers
202 pending with what the browser needs to pay. The wallet is credited on fulfilment: by
Stripe's webhook, or by `GET /api/wallet/top-ups/{id}`, which asks the provider.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth import require_user
from portal.errors import NotFound
from portal.ledger import balance, get_transaction, wallet
from portal.money import Money
from portal.payments import (
    PENDING,
    SUCCEEDED,
    TOP_UP,
    DeferredPaymentProvider,
    PaymentState,
)
from portal.services import Services
from portal.stripe_payments import stripe_provider
from portal.top_ups import (
    ProviderPayment,
    begin_top_up,
    find_payment,
    payment_by_reference,
    refresh_top_up,
    settle,
)
from portal.web import read_body, services_of

log = logging.getLogger("megamovie.payments")

NO_STORE = {"Cache-Control": "no-store"}
#: Stripe's events are a few kilobytes; anything much larger is not one.
MAX_WEBHOOK_BYTES = 512 * 1024


async def deferred_provider(
    services: Services, payment: ProviderPayment
) -> DeferredPaymentProvider | None:
    """The provider that took `payment`, if it is still configured."""
    answer = await services.plugins.decide(
        "payment_provider",
        portal=services,
        user_id=payment.user_id,
        currency=payment.money.currency,
    )
    for provider in (answer, stripe_provider(services)):
        if isinstance(provider, DeferredPaymentProvider) and provider.name == payment.provider:
            return provider
    return None


async def _balance(services: Services, user_id: str, currency: str) -> Money:
    async with services.engine.connect() as conn:
        return Money(await balance(conn, wallet(user_id), currency), currency)


async def _payment_body(
    services: Services,
    payment: ProviderPayment,
    state: PaymentState | None,
    provider: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": payment.id,
        "status": payment.status,
        **payment.money.as_json(),
        "provider": {
            "name": payment.provider,
            "label": getattr(provider, "label", payment.provider),
        },
        "reference": payment.reference,
        "created_at": payment.created_at.isoformat(),
    }
    if payment.status == PENDING:
        body["payment"] = {
            "provider_status": state.provider_status if state else "",
            **(state.client if state else {}),
        }
    if payment.message:
        body["message"] = payment.message
    if payment.status == SUCCEEDED:
        held = await _balance(services, payment.user_id, payment.money.currency)
        body["balance"] = held.as_json()
    return body


async def deferred_top_up(
    services: Services,
    provider: DeferredPaymentProvider,
    *,
    user_id: str,
    money: Money,
    idempotency_key: str,
) -> Response:
    """`202` pending with the provider's payment (or, for a retry after it succeeded, `200`
    and the balance); a retry says `Idempotent-Replayed: true`."""
    payment, state, created = await begin_top_up(
        services.engine, provider, user_id=user_id, money=money, idempotency_key=idempotency_key
    )
    body = await _payment_body(services, payment, state, provider)
    headers = dict(NO_STORE)
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        body, status_code=202 if payment.status == PENDING else 200, headers=headers
    )


async def get_top_up(request: Request) -> Response:
    """A top-up's state; a pending one is read from its provider (and credited if paid)."""
    user = require_user(request)
    services = services_of(request)
    top_up_id = request.path_params["top_up_id"]
    try:
        payment = await find_payment(services.engine, user.id, top_up_id)
    except NotFound:
        return JSONResponse(await _instant_top_up(services, user.id, top_up_id), headers=NO_STORE)
    provider = await deferred_provider(services, payment)
    payment, state = await refresh_top_up(services.engine, provider, payment)
    body = await _payment_body(services, payment, state, provider)
    return JSONResponse(body, headers=NO_STORE)


async def _instant_top_up(services: Services, user_id: str, top_up_id: str) -> dict[str, Any]:
    """A top-up the provider credited at once (the development provider): its posting."""
    async with services.engine.connect() as conn:
        found = await get_transaction(conn, top_up_id)
    if found is None or found.kind != TOP_UP or found.user_id != user_id:
        raise NotFound("No such top-up.")
    credit = next(e for e in found.entries if e.account == wallet(user_id))
    source = next(e for e in found.entries if e.account != wallet(user_id))
    return {
        "id": found.id,
        "status": SUCCEEDED,
        "amount": credit.amount,
        "currency": credit.currency,
        "provider": {"name": source.account.removeprefix("funding:")},
        "balance": (await _balance(services, user_id, credit.currency)).as_json(),
        "created_at": found.created_at.isoformat(),
    }


async def stripe_webhook(request: Request) -> Response:
    """Stripe's events, verified by `Stripe-Signature`; PaymentIntent events settle top-ups."""
    services = services_of(request)
    provider = stripe_provider(services)
    if provider is None:
        raise NotFound("Stripe payments are not configured on this portal.")
    # 413 from Content-Length before reading, or once a chunked body passes the cap.
    payload = await read_body(request, MAX_WEBHOOK_BYTES)
    event = provider.verify_event(payload, request.headers.get("stripe-signature"))
    from portal.stripe_payments import PAYMENT_INTENT_EVENTS

    if event.type not in PAYMENT_INTENT_EVENTS:
        return JSONResponse({"received": True, "handled": False})
    intent = event.data.object.to_dict()
    payment = await payment_by_reference(services.engine, provider.name, str(intent["id"]))
    if payment is None:
        # Another integration on the same Stripe account, or a test event: not ours.
        log.info("Stripe event %s for unknown PaymentIntent %s", event.id, intent["id"])
        return JSONResponse({"received": True, "handled": False})
    state = provider.state_of(intent)
    payment = await settle(services.engine, payment, state)
    return JSONResponse(
        {"received": True, "handled": True, "top_up": payment.id, "status": payment.status}
    )


routes = [
    Route("/api/wallet/top-ups/{top_up_id}", get_top_up, methods=["GET"], name="top_up_status"),
    Route(
        "/api/payments/stripe/webhook",
        stripe_webhook,
        methods=["POST"],
        name="stripe_webhook",
    ),
]
