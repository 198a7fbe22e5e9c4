"""The viewer's library and wallet pages, the paywall's configuration on the watch page, the
creator dashboard's money side and its figures endpoint."""

from __future__ import annotations

import uuid

from starlette.testclient import TestClient

from portal.web import format_money, format_time_left
from tests.helpers import add_ready_video, add_user, csrf_from, log_in


def api(client: TestClient, method: str, path: str, body: object, key: str | None = None):
    csrf = csrf_from(client.get("/").text)
    headers = {"X-CSRF-Token": csrf}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.request(method, path, json=body, headers=headers)


def sell(client: TestClient, video_id: str) -> dict:
    answer = api(
        client,
        "PUT",
        f"/api/videos/{video_id}/offers",
        {
            "preview_seconds": 10,
            "offers": [
                {"kind": "buy", "amount": 499, "currency": "EUR"},
                {"kind": "rent", "amount": 199, "currency": "EUR"},
            ],
        },
    )
    assert answer.status_code == 200, answer.text
    return {offer["kind"]: offer["id"] for offer in answer.json()["offers"]}


def test_money_and_time_left_are_formatted_from_integers():
    assert format_money(499, "EUR") == "4.99 EUR"
    assert format_money(5, "EUR") == "0.05 EUR"
    assert format_money(-120, "USD") == "-1.20 USD"
    assert format_money(500, "JPY") == "500 JPY"
    assert format_time_left(None) == ""
    assert format_time_left(-1) == "ended"
    assert format_time_left(30) == "1 min"
    assert format_time_left(5 * 3600 + 12 * 60) == "5 h 12 min"
    assert format_time_left(2 * 86400 + 3 * 3600 + 59) == "2 d 3 h"


def test_library_and_wallet_ask_anonymous_viewers_to_log_in(client):
    for path in ("/library", "/wallet"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == f"/login?next={path}"


def test_header_links_library_and_wallet_when_logged_in(client):
    assert 'href="/library"' not in client.get("/").text
    add_user(client, "v@example.org")
    log_in(client, "v@example.org")
    page = client.get("/").text
    assert 'href="/library"' in page and 'href="/wallet"' in page


def test_watch_page_carries_the_paywall_configuration(client):
    creator = add_user(client, "c@example.org", role="creator", name="Cleo")
    video_id = add_ready_video(client, creator.id, title="Paid")
    page = client.get(f"/watch/{video_id}").text
    money = client.get("/static/js/money.js")
    assert 'data-purchase-url="/api/purchases"' in page
    assert 'data-subscription-url="/api/subscriptions"' in page
    assert 'data-top-up-url="/api/wallet/top-ups"' in page
    assert f'data-creator-id="{creator.id}"' in page
    assert 'data-pass-amount="999" data-pass-currency="EUR"' in " ".join(page.split())
    assert f'href="/login?next=/watch/{video_id}">Log in to buy</a>' in page
    assert 'id="paywall"' in page and "<script>" not in page
    assert "{&#34;EUR&#34;:2," in page  # the minor units money.js formats with
    assert money.status_code == 200


def test_the_library_lists_a_purchase_and_a_rental_and_the_wallet_its_balance(client):
    creator = add_user(client, "c@example.org", role="creator")
    bought = add_ready_video(client, creator.id, title="Kept Film")
    rented = add_ready_video(client, creator.id, title="Rented Film")
    log_in(client, "c@example.org")
    buy_offer = sell(client, bought)["buy"]
    rent_offer = sell(client, rented)["rent"]
    client.cookies.clear()
    add_user(client, "v@example.org")
    log_in(client, "v@example.org")
    empty = client.get("/library").text
    assert "Nothing bought or rented yet" in empty
    top_up = api(client, "POST", "/api/wallet/top-ups", {"amount": 1000, "currency": "EUR"}, "t1")
    assert top_up.status_code == 201, top_up.text
    for offer in (buy_offer, rent_offer):
        answer = api(client, "POST", "/api/purchases", {"offer_id": offer}, str(uuid.uuid4()))
        assert answer.status_code == 201, answer.text
    library = client.get("/library").text
    wallet = client.get("/wallet").text
    assert "Kept Film" in library and "yours to keep" in library and "4.99 EUR" in library
    assert "Rented Film" in library and "start within 29 d 23 h" in library
    assert f'href="/watch/{bought}"' in library
    assert 'id="wallet-balance" data-amount="302" data-currency="EUR">3.02 EUR' in wallet
    assert "Development wallet: no real money" in wallet


def test_dashboard_shows_offers_earnings_and_the_chart_figures(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id, title="Earner")
    log_in(client, "c@example.org")
    buy_offer = sell(client, video_id)["buy"]
    client.cookies.clear()
    add_user(client, "v@example.org")
    log_in(client, "v@example.org")
    api(client, "POST", "/api/wallet/top-ups", {"amount": 1000, "currency": "EUR"}, "t1")
    assert api(client, "POST", "/api/purchases", {"offer_id": buy_offer}, "p1").is_success
    assert client.get("/api/creator/stats").status_code == 403
    client.cookies.clear()
    log_in(client, "c@example.org")
    page = client.get("/dashboard").text
    stats = client.get("/api/creator/stats?days=7")
    bad = client.get("/api/creator/stats?days=0")
    assert '<strong data-field="earned">4.49 EUR</strong>' in page
    assert "buy 4.99 EUR · rent 1.99 EUR; preview 10 s" in page
    assert f'data-offers-url="/api/videos/{video_id}/offers"' in page
    assert 'name="buy_amount"' in page and 'value="4.99"' in page
    assert "/static/vendor/uPlot.iife.min.js" in page
    assert "No statements yet" in page
    assert 'data-channel-url="/api/channel/offers"' in page
    assert stats.status_code == 200
    body = stats.json()
    film = body["films"][0]
    assert film["video_id"] == video_id and film["sales"] == 1
    assert film["earned"] == [{"amount": 449, "currency": "EUR"}]
    assert len(body["series"]["days"]) == 7
    assert body["series"]["earned"][video_id][-1] == 449
    assert bad.status_code == 400 and bad.json()["field"] == "days"
