"""The wallet, purchases, subscriptions, a creator's earnings and a viewer's library.

Every request that moves money carries an `Idempotency-Key` header: a retry with the same key
answers the first result (200, `Idempotent-Replayed: true`) instead of charging again.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth import require_role, require_user
from portal.commerce import Commerce
from portal.errors import BadRequest, NotFound, PaymentFailed
from portal.library import library
from portal.money import Money, parse_money
from portal.payments import DeferredPaymentProvider, wallet_balances
from portal.payouts import (
    Statement,
    StatementLine,
    creator_earnings,
    creator_statements,
    statement_csv,
)
from portal.purchases import Purchase
from portal.routes.payments import deferred_top_up
from portal.subscriptions import Subscription
from portal.web import json_object, services_of

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as Stripe and the IETF draft
NO_STORE = {"Cache-Control": "no-store"}


def idempotency_key(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None or not _KEY.match(key):
        raise BadRequest(
            f"Send an {IDEMPOTENCY_HEADER} header (1 to 255 visible ASCII characters, e.g. a "
            "UUID) with every payment, and the same one when you retry it, so that it is "
            "never charged twice.",
            field=IDEMPOTENCY_HEADER,
        )
    return key


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _answer(body: dict[str, Any], created: bool) -> Response:
    if created:
        return JSONResponse(body, 201, headers=NO_STORE)
    return JSONResponse(body, 200, headers={**NO_STORE, "Idempotent-Replayed": "true"})


def purchase_json(bought: Purchase) -> dict[str, Any]:
    return {
        "id": bought.id,
        "video_id": bought.video_id,
        "kind": bought.kind,
        **bought.price.as_json(),
        "created_at": bought.created_at.isoformat(),
        "first_played_at": _when(bought.first_played_at),
        "expires_at": _when(bought.expires_at),
    }


def subscription_json(subscription: Subscription) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "plan": subscription.plan,
        "creator_id": subscription.creator_id,
        **subscription.price.as_json(),
        "starts_at": subscription.starts_at.isoformat(),
        "ends_at": subscription.ends_at.isoformat(),
    }


def line_json(line: StatementLine) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "video_id": line.video_id,
        "title": line.title,
        "count": line.count,
        "amount": line.amount,
    }


def statement_json(statement: Statement) -> dict[str, Any]:
    return {
        "id": statement.id,
        "period": statement.period,
        **statement.amount.as_json(),
        "cutoff": statement.cutoff.isoformat(),
        "created_at": statement.created_at.isoformat(),
        "lines": [line_json(line) for line in statement.lines],
    }


# -- the wallet -------------------------------------------------------------------------------


async def get_wallet(request: Request) -> Response:
    user = require_user(request)
    services = services_of(request)
    commerce = Commerce(services)
    held = await wallet_balances(services.engine, user.id)
    main = next((m for m in held if m.currency == commerce.main_currency), None)
    try:
        provider = await commerce.provider(user.id, commerce.main_currency)
    except PaymentFailed:
        provider = None  # no provider takes top-ups (the development one turned off)
    return JSONResponse(
        {
            "balance": (main or Money(0, commerce.main_currency)).as_json(),
            "balances": [money.as_json() for money in held],
            "provider": {"name": provider.name, "label": provider.label} if provider else None,
        },
        headers=NO_STORE,
    )


async def post_top_up(request: Request) -> Response:
    """`{"amount": 2000, "currency": "EUR"}` -> the wallet's new balance in that currency."""
    user = require_user(request)
    key = idempotency_key(request)
    money = parse_money(await json_object(request))
    services = services_of(request)
    commerce = Commerce(services)
    provider = await commerce.provider(user.id, money.currency)
    if isinstance(provider, DeferredPaymentProvider):
        # Stripe: 202 pending with a PaymentIntent; credited on fulfilment (routes.payments).
        return await deferred_top_up(
            services, provider, user_id=user.id, money=money, idempotency_key=key
        )
    done, created = await commerce.top_up(user.id, money, key)
    body = {"id": done.id, **done.money.as_json(), "balance": done.balance.as_json()}
    return _answer(body, created)


# -- buying -----------------------------------------------------------------------------------


async def post_purchase(request: Request) -> Response:
    """`{"offer_id": "..."}`: buy or rent a film from the wallet."""
    user = require_user(request)
    key = idempotency_key(request)
    body = await json_object(request)
    offer_id = body.get("offer_id")
    if not isinstance(offer_id, str) or not offer_id:
        raise BadRequest("offer_id must be the id of one of the film's offers.", "offer_id")
    bought, created = await Commerce(services_of(request)).purchase(user.id, offer_id, key)
    return _answer(purchase_json(bought), created)


async def post_subscription(request: Request) -> Response:
    """`{"plan": "pass"}` or `{"plan": "channel", "creator_id": "..."}`: one 30-day period."""
    user = require_user(request)
    key = idempotency_key(request)
    body = await json_object(request)
    plan, creator_id = body.get("plan"), body.get("creator_id")
    if plan not in ("pass", "channel"):
        raise BadRequest('plan must be "pass" or "channel".', "plan")
    if plan == "channel" and (not isinstance(creator_id, str) or not creator_id):
        raise BadRequest("A channel subscription needs the channel's creator_id.", "creator_id")
    subscription, created = await Commerce(services_of(request)).subscribe(
        user.id, plan, creator_id if plan == "channel" else None, key
    )
    return _answer(subscription_json(subscription), created)


async def get_library(request: Request) -> Response:
    user = require_user(request)
    shelf = await library(services_of(request).engine, user.id)
    return JSONResponse(
        {
            "films": [
                {
                    **purchase_json(holding.purchase),
                    "title": holding.title,
                    "seconds_left": holding.seconds_left,
                }
                for holding in shelf.films
            ],
            "subscriptions": [subscription_json(s) for s in shelf.subscriptions],
        },
        headers=NO_STORE,
    )


# -- creators ---------------------------------------------------------------------------------


async def get_earnings(request: Request) -> Response:
    user = require_role(request, "creator", "admin")
    engine = services_of(request).engine
    earned = await creator_earnings(engine, user.id)
    statements = await creator_statements(engine, user.id)
    return JSONResponse(
        {
            "totals": [
                {"currency": t.currency, "earned": t.earned, "paid": t.paid, "payable": t.payable}
                for t in earned.totals
            ],
            "sources": [{"currency": c, **line_json(line)} for c, line in earned.sources],
            "periods": [
                {"period": p.period, "currency": p.currency, "earned": p.earned, "paid": p.paid}
                for p in earned.periods
            ],
            "statements": [statement_json(s) for s in statements],
        },
        headers=NO_STORE,
    )


async def get_statement_csv(request: Request) -> Response:
    user = require_role(request, "creator", "admin")
    wanted = request.path_params["statement_id"]
    statements = await creator_statements(services_of(request).engine, user.id)
    statement = next((s for s in statements if s.id == wanted), None)
    if statement is None:
        raise NotFound("You have no statement with that id.")
    return Response(
        statement_csv(statement),
        media_type="text/csv; charset=utf-8",
        headers={
            **NO_STORE,
            "Content-Disposition": (
                f'attachment; filename="statement-{statement.period}-'
                f'{statement.amount.currency}.csv"'
            ),
        },
    )


routes = [
    Route("/api/wallet", get_wallet, methods=["GET"], name="wallet"),
    Route("/api/wallet/top-ups", post_top_up, methods=["POST"], name="wallet_top_up"),
    Route("/api/purchases", post_purchase, methods=["POST"], name="purchases"),
    Route("/api/subscriptions", post_subscription, methods=["POST"], name="subscriptions"),
    Route("/api/library", get_library, methods=["GET"], name="library"),
    Route("/api/earnings", get_earnings, methods=["GET"], name="earnings"),
    Route(
        "/api/earnings/statements/{statement_id}.csv",
        get_statement_csv,
        methods=["GET"],
        name="statement_csv",
    ),
]
