"""The money endpoints through the real app, and the money commands through CliRunner."""

from __future__ import annotations

import re

import anyio
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from portal.cli import main
from portal.db import create_engine, ledger_entries, utcnow
from tests.helpers import add_user, bearer, insert_video, pipeline_settings
from tests.portal.commerce import add_offer


@pytest.fixture
def settings(tmp_path):
    return pipeline_settings(tmp_path)


def in_database(settings, action, *args):
    """Run `await action(engine, *args)` on the settings' database, beside the app."""

    async def run():
        engine = create_engine(settings.database_url)
        try:
            return await action(engine, *args)
        finally:
            await engine.dispose()

    return anyio.run(run)


async def paid_film(engine, creator_id, kind="buy", amount=499):
    video_id = await insert_video(engine, creator_id, status="ready")
    return video_id, await add_offer(engine, video_id, kind, amount)


@pytest.fixture
def shop(client, settings):
    """A running app with a creator selling one film and a viewer, both with bearer tokens."""
    creator = add_user(client, "maker@example.org", "creator").id
    add_user(client, "watcher@example.org", "viewer")
    video_id, offer_id = in_database(settings, paid_film, creator)
    return {
        "client": client,
        "creator": creator,
        "video_id": video_id,
        "offer_id": offer_id,
        "maker": bearer(client, "maker@example.org"),
        "watcher": bearer(client, "watcher@example.org"),
    }


def key(value):
    return {"Idempotency-Key": value}


def test_a_top_up_needs_a_key_and_whole_minor_units(shop):
    client, auth = shop["client"], shop["watcher"]
    missing = client.post("/api/wallet/top-ups", json={"amount": 2000, "currency": "EUR"},
                          headers=auth)  # fmt: skip
    assert missing.status_code == 400
    assert missing.json()["error"] == "bad_request"
    assert missing.json()["field"] == "Idempotency-Key"
    for body, field in (
        ({"amount": 19.99, "currency": "EUR"}, "amount"),
        ({"amount": "2000", "currency": "EUR"}, "amount"),
        ({"amount": 0, "currency": "EUR"}, "amount"),
        ({"amount": 2000, "currency": "EURO"}, "currency"),
    ):
        refused = client.post("/api/wallet/top-ups", json=body, headers={**auth, **key("a")})
        assert refused.status_code == 400, body
        assert refused.json()["field"] == field
    not_json = client.post("/api/wallet/top-ups", content=b"[1]", headers={**auth, **key("a")})
    assert (not_json.status_code, not_json.json()["field"]) == (400, "body")

    first = client.post("/api/wallet/top-ups", json={"amount": 2000, "currency": "EUR"},
                        headers={**auth, **key("a")})  # fmt: skip
    assert first.status_code == 201
    assert first.json() == {
        "id": first.json()["id"],
        "amount": 2000,
        "currency": "EUR",
        "balance": {"amount": 2000, "currency": "EUR"},
    }
    again = client.post("/api/wallet/top-ups", json={"amount": 2000, "currency": "EUR"},
                        headers={**auth, **key("a")})  # fmt: skip
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    reused = client.post("/api/wallet/top-ups", json={"amount": 5, "currency": "EUR"},
                         headers={**auth, **key("a")})  # fmt: skip
    assert reused.status_code == 409

    wallet = client.get("/api/wallet", headers=auth).json()
    assert wallet == {
        "balance": {"amount": 2000, "currency": "EUR"},
        "balances": [{"amount": 2000, "currency": "EUR"}],
        "provider": {"name": "development", "label": "Development wallet: no real money"},
    }
    assert client.get("/api/wallet").status_code == 401


def test_buying_a_film_from_the_wallet_and_finding_it_in_the_library(shop):
    client, auth = shop["client"], shop["watcher"]
    buy = {"offer_id": shop["offer_id"]}
    poor = client.post("/api/purchases", json=buy, headers={**auth, **key("p1")})
    assert poor.status_code == 402
    assert poor.json()["error"] == "insufficient_funds"
    assert "top up at least 4.99 EUR" in poor.json()["message"]

    client.post("/api/wallet/top-ups", json={"amount": 1000, "currency": "EUR"},
                headers={**auth, **key("t1")})  # fmt: skip
    bought = client.post("/api/purchases", json=buy, headers={**auth, **key("p1")})
    assert bought.status_code == 201, bought.text
    body = bought.json()
    assert (body["video_id"], body["kind"], body["amount"], body["currency"]) == (
        shop["video_id"],
        "buy",
        499,
        "EUR",
    )
    assert body["expires_at"] is None
    retried = client.post("/api/purchases", json=buy, headers={**auth, **key("p1")})
    assert (retried.status_code, retried.json()) == (200, body)
    twice = client.post("/api/purchases", json=buy, headers={**auth, **key("p2")})
    assert twice.status_code == 409
    assert client.get("/api/wallet", headers=auth).json()["balance"]["amount"] == 501

    shelf = client.get("/api/library", headers=auth).json()
    assert [(f["id"], f["title"], f["seconds_left"]) for f in shelf["films"]] == [
        (body["id"], "A test film", None)
    ]
    assert client.post("/api/purchases", json={"offer_id": 5}, headers={**auth, **key("x")}
                       ).json()["field"] == "offer_id"  # fmt: skip
    assert client.post("/api/purchases", json={"offer_id": "nope"},
                       headers={**auth, **key("y")}).status_code == 404  # fmt: skip

    earned = client.get("/api/earnings", headers=shop["maker"]).json()
    assert earned["totals"] == [{"currency": "EUR", "earned": 449, "paid": 0, "payable": 449}]
    assert [(s["kind"], s["video_id"], s["amount"]) for s in earned["sources"]] == [
        ("buy", shop["video_id"], 449)
    ]
    assert client.get("/api/earnings", headers=auth).status_code == 403


def test_subscribing_to_the_pass_and_to_a_channel(shop, settings):
    client, auth = shop["client"], shop["watcher"]
    client.post("/api/wallet/top-ups", json={"amount": 3000, "currency": "EUR"},
                headers={**auth, **key("t")})  # fmt: skip
    passed = client.post("/api/subscriptions", json={"plan": "pass"},
                         headers={**auth, **key("s1")})  # fmt: skip
    assert passed.status_code == 201, passed.text
    assert (passed.json()["plan"], passed.json()["amount"]) == ("pass", settings.pass_amount)

    no_creator = client.post("/api/subscriptions", json={"plan": "channel"},
                             headers={**auth, **key("s2")})  # fmt: skip
    assert (no_creator.status_code, no_creator.json()["field"]) == (400, "creator_id")
    no_plan = client.put("/api/channel/offers", json={"amount": 500, "currency": "EUR"},
                         headers=shop["maker"])  # fmt: skip
    assert no_plan.status_code == 200, no_plan.text
    channel = client.post("/api/subscriptions",
                          json={"plan": "channel", "creator_id": shop["creator"]},
                          headers={**auth, **key("s3")})  # fmt: skip
    assert channel.status_code == 201, channel.text
    shelf = client.get("/api/library", headers=auth).json()
    assert sorted(s["plan"] for s in shelf["subscriptions"]) == ["channel", "pass"]
    assert client.get("/api/wallet", headers=auth).json()["balance"]["amount"] == 3000 - 999 - 500


def test_a_session_needs_the_csrf_header_to_spend(shop):
    """A cookie-authenticated call without X-CSRF-Token is refused before any money moves."""
    client = shop["client"]
    page = client.get("/login")
    signed_in = client.post(
        "/login",
        data={"email": "watcher@example.org", "password": "correct horse battery",
              "next": "/", "csrf_token": _form_token(page.text)},
        follow_redirects=False,
    )  # fmt: skip
    assert signed_in.status_code == 303
    refused = client.post("/api/wallet/top-ups", json={"amount": 100, "currency": "EUR"},
                          headers=key("c"))  # fmt: skip
    assert refused.status_code == 403
    assert refused.json()["error"] == "csrf_failed"


def _form_token(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


# -- the command line ---------------------------------------------------------------------


def test_refund_payouts_and_ledger_verify_on_the_command_line(shop, settings):
    client, auth = shop["client"], shop["watcher"]
    env = {"MEGAMOVIE_DATA_DIR": str(settings.data_dir)}
    client.post("/api/wallet/top-ups", json={"amount": 2000, "currency": "EUR"},
                headers={**auth, **key("t")})  # fmt: skip
    first = client.post("/api/purchases", json={"offer_id": shop["offer_id"]},
                        headers={**auth, **key("p")}).json()  # fmt: skip
    runner = CliRunner()

    refunded = runner.invoke(main, ["purchases", "refund", first["id"]], env=env)
    assert refunded.exit_code == 0, refunded.output
    assert "refunded 4.99 EUR" in refunded.output
    again = runner.invoke(main, ["purchases", "refund", first["id"]], env=env)
    assert "already refunded" in again.output
    missing = runner.invoke(main, ["purchases", "refund", "nosuchpurchase"], env=env)
    assert missing.exit_code == 1
    assert "There is no purchase nosuchpurchase" in missing.output

    rent = in_database(settings, add_offer, shop["video_id"], "rent", 299)
    rented = client.post("/api/purchases", json={"offer_id": rent}, headers={**auth, **key("r")})
    assert rented.status_code == 201, rented.text
    period = f"{utcnow():%Y-%m}"
    paid = runner.invoke(main, ["payouts", "run", "--period", period], env=env)
    assert paid.exit_code == 0, paid.output
    assert f"{period} closed" in paid.output
    assert "Paid 2.69 EUR" in paid.output
    closed = runner.invoke(main, ["payouts", "run", "--period", period], env=env)
    assert "already closed" in closed.output and "nothing changed" in closed.output
    bad = runner.invoke(main, ["payouts", "run", "--period", "May"], env=env)
    assert bad.exit_code == 1 and "YYYY-MM" in bad.output

    earned = client.get("/api/earnings", headers=shop["maker"]).json()
    [statement] = earned["statements"]
    csv = client.get(f"/api/earnings/statements/{statement['id']}.csv", headers=shop["maker"])
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[-1].endswith(",total,,,,2.69")

    verified = runner.invoke(main, ["ledger", "verify"], env=env)
    assert verified.exit_code == 0, verified.output
    assert "The books balance" in verified.output

    async def tamper(engine):
        async with engine.begin() as conn:
            await conn.execute(
                update(ledger_entries)
                .where(ledger_entries.c.account == "platform:revenue")
                .values(amount=ledger_entries.c.amount + 1)
            )

    in_database(settings, tamper)
    broken = runner.invoke(main, ["ledger", "verify"], env=env)
    assert broken.exit_code == 1
    assert "does not balance: its EUR entries sum to 1" in broken.output
    assert "platform:revenue holds 30 EUR but its entries sum to 33" in broken.output
    assert re.search(r"^    platform:revenue +51 EUR$", broken.output, re.M)
