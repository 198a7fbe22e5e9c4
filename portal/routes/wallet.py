"""The wallet: its balance, top-ups through the payment provider, and Stripe's webhook.

Which provider takes a top-up is the `payment_provider` licensing hook's answer: the
development provider credits at once (201); a deferred one (Stripe) answers 202 pending with
what the browser needs to pay, and the wallet is credited on fulfilment, by the provider's
webhook or by `GET /api/wallet/top-ups/{id}`, which asks the provider.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth import require_user
from portal.errors import BadRequest, NotFound, PortalError
from portal.ledger import balance, get_transaction, wallet
from portal.money import Money, parse_money
from portal.payments import (
    PENDING,
    SUCCEEDED,
    TOP_UP,
    DeferredPaymentProvider,
    PaymentState,
    top_up,
    wallet_balances,
)
from portal.services import Services
from portal.top_ups import (
    PaymentsUnavailable,
    ProviderPayment,
    begin_top_up,
    find_payment,
    payment_by_reference,
    refresh_top_up,
    settle,
)
from portal.web import services_of

log = logging.getLogger("megamovie.payments")

NO_STORE = {"Cache-Control": "no-store"}
#: Stripe's events are a few kilobytes; anything much larger is not one.
MAX_WEBHOOK_BYTES = 512 * 1024
MAX_KEY_LENGTH = 255


class PayloadTooLarge(PortalError):
    status_code = 413
    code = "payload_too_large"


def idempotency_key(request: Request) -> str:
    """The request's `Idempotency-Key`: required, printable ASCII, at most 255 characters."""
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise BadRequest(
            "A top-up needs an Idempotency-Key header: a new random value for each top-up, "
            "the same one when retrying it.",
            field="Idempotency-Key",
        )
    if len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise BadRequest(
            f"The Idempotency-Key must be printable ASCII of at most {MAX_KEY_LENGTH} "
            "characters (a UUID is a good one).",
            field="Idempotency-Key",
        )
    return key


async def _json_object(request: Request) -> Mapping[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise BadRequest("The body must be JSON.", "") from None
    if not isinstance(body, dict):
        raise BadRequest('The body must be a JSON object: {"amount": 1000, "currency": "EUR"}.', "")
    return body


async def payment_provider(services: Services, user_id: str, currency: str) -> Any:
    """The hook's provider for this charge, or 503 when none takes payments."""
    provider = await services.plugins.decide(
        "payment_provider", portal=services, user_id=user_id, currency=currency
    )
    if provider is None:
        raise PaymentsUnavailable(
            "Top-ups are not available here: no payment provider is configured."
        )
    return provider


def stripe_provider(services: Services) -> Any:
    """The built-in Stripe provider when it is on (whoever answers the hook), else None."""
    plugin = services.plugins.manager.get_plugin("stripe")
    return getattr(plugin, "provider", None)


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


def _provider_json(provider: Any) -> dict[str, str]:
    return {"name": provider.name, "label": provider.label}


async def get_wallet(request: Request) -> Response:
    """`{"balance": {...}, "balances": [...], "provider": {"name", "label"}}`."""
    user = require_user(request)
    services = services_of(request)
    main = services.settings.pass_currency
    held = await wallet_balances(services.engine, user.id)
    shown = next((m for m in held if m.currency == main), Money(0, main))
    others = [m for m in held if m.currency != main]
    provider = await services.plugins.decide(
        "payment_provider", portal=services, user_id=user.id, currency=main
    )
    return JSONResponse(
        {
            "balance": shown.as_json(),
            "balances": [m.as_json() for m in [shown, *others]],
            "provider": _provider_json(provider) if provider is not None else None,
        },
        headers=NO_STORE,
    )


async def post_top_up(request: Request) -> Response:
    """`POST {"amount": 1000, "currency": "EUR"}` with `Idempotency-Key`."""
    user = require_user(request)
    key = idempotency_key(request)
    money = parse_money(await _json_object(request))
    services = services_of(request)
    provider = await payment_provider(services, user.id, money.currency)
    if isinstance(provider, DeferredPaymentProvider):
        payment, state, created = await begin_top_up(
            services.engine, provider, user_id=user.id, money=money, idempotency_key=key
        )
        body = await _payment_body(services, payment, state, provider)
        status = 202 if payment.status == PENDING else 200
        headers = dict(NO_STORE)
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(body, status_code=status, headers=headers)
    done, created = await top_up(
        services.engine, provider, user_id=user.id, money=money, idempotency_key=key
    )
    headers = dict(NO_STORE)
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        {
            "id": done.id,
            "status": SUCCEEDED,
            **done.money.as_json(),
            "provider": _provider_json(provider),
            "balance": done.balance.as_json(),
            "created_at": done.created_at.isoformat(),
        },
        status_code=201,
        headers=headers,
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


async def _body_at_most(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"A webhook body is at most {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def stripe_webhook(request: Request) -> Response:
    """Stripe's events, verified by `Stripe-Signature`; PaymentIntent events settle top-ups."""
    services = services_of(request)
    provider = stripe_provider(services)
    if provider is None:
        raise NotFound("Stripe payments are not configured on this portal.")
    payload = await _body_at_most(request, MAX_WEBHOOK_BYTES)
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
    Route("/api/wallet", get_wallet, methods=["GET"], name="wallet"),
    Route("/api/wallet/top-ups", post_top_up, methods=["POST"], name="wallet_top_ups"),
    Route("/api/wallet/top-ups/{top_up_id}", get_top_up, methods=["GET"], name="wallet_top_up"),
    Route(
        "/api/payments/stripe/webhook",
        stripe_webhook,
        methods=["POST"],
        name="stripe_webhook",
    ),
]
