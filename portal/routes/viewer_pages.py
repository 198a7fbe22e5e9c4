"""A viewer's own pages: the library (bought, rented, subscribed) and the wallet.

Both read the money domain directly (portal.library, portal.payments, portal.commerce); the
scripts on them call the money API in portal/routes/money.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from portal.accounts import User
from portal.auth import current_user
from portal.commerce import Commerce
from portal.db import users, utcnow
from portal.library import library
from portal.money import Money
from portal.payments import wallet_balances
from portal.web import render, services_of


def _login_first(request: Request) -> User | Response:
    user = current_user(request)
    if user is None:
        login = request.app.url_path_for("login")
        return RedirectResponse(f"{login}?next={request.url.path}", status_code=303)
    return user


async def library_page(request: Request) -> Response:
    user = _login_first(request)
    if isinstance(user, Response):
        return user
    engine = services_of(request).engine
    shelf = await library(engine, user.id)
    creator_ids = {s.creator_id for s in shelf.subscriptions if s.creator_id}
    names: dict[str, str] = {}
    if creator_ids:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(users.c.id, users.c.display_name).where(users.c.id.in_(creator_ids))
            )
            names = {row.id: row.display_name for row in rows}
    films = [
        {
            "video_id": h.purchase.video_id,
            "title": h.title,
            "kind": h.purchase.kind,
            "amount": h.purchase.price.amount,
            "currency": h.purchase.price.currency,
            "started": h.purchase.first_played_at is not None,
            "seconds_left": h.seconds_left,
        }
        for h in shelf.films
    ]
    now = utcnow()
    subscriptions: list[dict[str, Any]] = [
        {
            "plan": s.plan,
            "creator_id": s.creator_id,
            "creator_name": names.get(s.creator_id or ""),
            "amount": s.price.amount,
            "currency": s.price.currency,
            "ends_at": s.ends_at,
            "seconds_left": int((s.ends_at - now).total_seconds()),
        }
        for s in shelf.subscriptions
    ]
    return render(request, "library.html", {"films": films, "subscriptions": subscriptions})


async def wallet_page(request: Request) -> Response:
    user = _login_first(request)
    if isinstance(user, Response):
        return user
    services = services_of(request)
    commerce = Commerce(services)
    held = sorted(await wallet_balances(services.engine, user.id), key=lambda m: m.currency)
    main = next((m for m in held if m.currency == commerce.main_currency), None)
    provider = await commerce.provider(user.id, commerce.main_currency)
    wallet = {
        "balance": (main or Money(0, commerce.main_currency)).as_json(),
        "balances": [m.as_json() for m in held],
        "provider": {"name": provider.name, "label": provider.label},
    }
    return render(request, "wallet.html", {"wallet": wallet})


routes = [
    Route("/library", library_page, methods=["GET"], name="library_page"),
    Route("/wallet", wallet_page, methods=["GET"], name="wallet_page"),
]
