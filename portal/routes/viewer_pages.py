"""A viewer's own pages: the library (bought, rented, subscribed) and the wallet."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from portal.auth import current_user
from portal.routes.commerce import holdings, wallet_summary
from portal.web import render, services_of


def _login_first(request: Request) -> Response | None:
    if current_user(request) is None:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    return None


async def library_page(request: Request) -> Response:
    if (redirect := _login_first(request)) is not None:
        return redirect
    user = current_user(request)
    assert user is not None
    held = await holdings(services_of(request).engine, user.id)
    return render(request, "library.html", held)


async def wallet_page(request: Request) -> Response:
    if (redirect := _login_first(request)) is not None:
        return redirect
    user = current_user(request)
    assert user is not None
    summary = await wallet_summary(services_of(request), user.id)
    return render(request, "wallet.html", {"wallet": summary})


routes = [
    Route("/library", library_page, methods=["GET"], name="library"),
    Route("/wallet", wallet_page, methods=["GET"], name="wallet"),
]
