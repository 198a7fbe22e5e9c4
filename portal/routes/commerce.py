"""The wallet, purchases and library over HTTP, as the pages use them.

A thin layer over the money domain (portal.payments, portal.purchases): parse, call, answer.
It follows docs/api.md ("Money"). Every paying request needs an `Idempotency-Key` header;
a retry with the same key answers the first result and charges nothing more.

Interim: the money branch owns these endpoints; when its routes land, they replace this
module (the paths, bodies and route names here are the ones the pages rely on).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth import require_user
from portal.db import purchases, subscriptions, users, utcnow, videos
from portal.errors import BadRequest
from portal.money import Money, ShareSplit, parse_money
from portal.payments import DevelopmentProvider, PaymentProvider, top_up, wallet_balances
from portal.purchases import Purchase, purchase
from portal.services import Services
from portal.web import services_of

MAX_KEY_LENGTH = 200


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise BadRequest(
            "Paying requests need an Idempotency-Key header (a fresh random value per "
            "intent, the same one when retrying).",
            "Idempotency-Key",
        )
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"The Idempotency-Key is longer than {MAX_KEY_LENGTH} characters.", "Idempotency-Key"
        )
    return key


async def _json_object(request: Request) -> Mapping[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise BadRequest("The body must be JSON.", "") from None
    if not isinstance(body, Mapping):
        raise BadRequest("The body must be a JSON object.", "")
    return body


async def payment_provider(services: Services, user_id: str, currency: str) -> PaymentProvider:
    """The `payment_provider` hook's answer; the development wallet when no plugin answers."""
    found = await services.plugins.decide(
        "payment_provider", portal=services, user_id=user_id, currency=currency
    )
    return found if found is not None else DevelopmentProvider()


def purchase_json(bought: Purchase) -> dict[str, Any]:
    return {
        "id": bought.id,
        "video_id": bought.video_id,
        "offer_id": bought.offer_id,
        "kind": bought.kind,
        **bought.price.as_json(),
        "created_at": bought.created_at.isoformat(),
        "expires_at": bought.expires_at.isoformat() if bought.expires_at else None,
    }


async def wallet_summary(services: Services, user_id: str) -> dict[str, Any]:
    """`{"balance", "balances", "provider"}`: the balance in the main currency (the pass
    currency unless the wallet only holds another), every currency held, and who tops it up."""
    held = sorted(await wallet_balances(services.engine, user_id), key=lambda m: m.currency)
    main_currency = services.settings.pass_currency
    main = next((m for m in held if m.currency == main_currency), None)
    if main is None:
        main = held[0] if held else Money(0, main_currency)
    provider = await payment_provider(services, user_id, main.currency)
    return {
        "balance": main.as_json(),
        "balances": [m.as_json() for m in held],
        "provider": {"name": provider.name, "label": provider.label},
    }


async def get_wallet(request: Request) -> Response:
    user = require_user(request)
    body = await wallet_summary(services_of(request), user.id)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def post_top_up(request: Request) -> Response:
    """`POST {"amount": 1000, "currency": "EUR"}` + Idempotency-Key: 201 (200 on a retry)."""
    user = require_user(request)
    key = idempotency_key(request)
    money = parse_money(await _json_object(request))
    services = services_of(request)
    provider = await payment_provider(services, user.id, money.currency)
    done, created = await top_up(
        services.engine, provider, user_id=user.id, money=money, idempotency_key=key
    )
    return JSONResponse(
        {
            "id": done.id,
            **done.money.as_json(),
            "balance": done.balance.as_json(),
            "provider": {"name": provider.name, "label": provider.label},
            "created_at": done.created_at.isoformat(),
        },
        status_code=201 if created else 200,
        headers={"Cache-Control": "no-store"},
    )


async def post_purchase(request: Request) -> Response:
    """`POST {"offer_id": "..."}` + Idempotency-Key: 201 (200 on a retry); 402
    insufficient_funds when the wallet is short (nothing charged)."""
    user = require_user(request)
    key = idempotency_key(request)
    body = await _json_object(request)
    offer_id = body.get("offer_id")
    if not isinstance(offer_id, str) or not offer_id:
        raise BadRequest('Send {"offer_id": "..."}: one of the film\'s offers.', "offer_id")
    services = services_of(request)

    def revenue_split(money: Money, *, creator_id: str, kind: str) -> tuple[int, int]:
        # The purchase runs the split inside its transaction, synchronously: a plugin that
        # answers with an awaitable here falls back to the configured share.
        answer = services.plugins.manager.hook.revenue_split(
            portal=services, amount=money.amount, currency=money.currency, kind=kind,
            creator_id=creator_id,
        )  # fmt: skip
        if isinstance(answer, tuple):
            return answer
        return ShareSplit(services.settings.creator_share_bps)(
            money, creator_id=creator_id, kind=kind
        )

    async def completed(bought: Purchase) -> None:
        await services.plugins.notify("purchase_completed", portal=services, purchase=bought)

    bought, created = await purchase(
        services.engine,
        user_id=user.id,
        offer_id=offer_id,
        idempotency_key=key,
        revenue_split=revenue_split,
        purchase_completed=completed,
    )
    return JSONResponse(
        purchase_json(bought),
        status_code=201 if created else 200,
        headers={"Cache-Control": "no-store"},
    )


async def holdings(
    engine: AsyncEngine, user_id: str, now: datetime | None = None
) -> dict[str, Any]:
    """What a viewer can watch: films bought, rentals running (with the seconds left; for a
    rental not started yet, the time left to start it) and subscriptions running."""
    now = now or utcnow()
    creators = users.alias("creators")
    async with engine.connect() as conn:
        bought = (
            await conn.execute(
                select(purchases, videos.c.title)
                .outerjoin(videos, videos.c.id == purchases.c.video_id)
                .where(
                    purchases.c.user_id == user_id,
                    purchases.c.refunded_at.is_(None),
                    or_(purchases.c.expires_at.is_(None), purchases.c.expires_at > now),
                )
                .order_by(purchases.c.created_at.desc(), purchases.c.id)
            )
        ).all()
        running = (
            await conn.execute(
                select(subscriptions, creators.c.display_name.label("creator_name"))
                .outerjoin(creators, creators.c.id == subscriptions.c.creator_id)
                .where(
                    subscriptions.c.user_id == user_id,
                    subscriptions.c.refunded_at.is_(None),
                    subscriptions.c.ends_at > now,
                )
                .order_by(subscriptions.c.starts_at, subscriptions.c.id)
            )
        ).all()
    films = []
    for row in bought:
        left = None if row.expires_at is None else int((row.expires_at - now).total_seconds())
        films.append(
            {
                "purchase_id": row.id,
                "video_id": row.video_id,
                "title": row.title,
                "kind": row.kind,
                "amount": int(row.amount),
                "currency": row.currency,
                "bought_at": row.created_at.isoformat(),
                "started": row.first_played_at is not None,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                "seconds_left": left,
            }
        )
    subs = [
        {
            "id": row.id,
            "plan": row.plan,
            "creator_id": row.creator_id,
            "creator_name": row.creator_name,
            "amount": int(row.amount),
            "currency": row.currency,
            "starts_at": row.starts_at.isoformat(),
            "ends_at": row.ends_at.isoformat(),
            "seconds_left": int((row.ends_at - now).total_seconds()),
        }
        for row in running
    ]
    return {"films": films, "subscriptions": subs}


async def get_library(request: Request) -> Response:
    user = require_user(request)
    body = await holdings(services_of(request).engine, user.id)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


routes = [
    Route("/api/wallet", get_wallet, methods=["GET"], name="wallet_api"),
    Route("/api/wallet/top-ups", post_top_up, methods=["POST"], name="wallet_top_ups"),
    Route("/api/purchases", post_purchase, methods=["POST"], name="purchases"),
    Route("/api/library", get_library, methods=["GET"], name="library_api"),
]
