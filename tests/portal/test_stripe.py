"""Top-ups through Stripe, against localstripe running as a real server on 127.0.0.1.

The portal runs under uvicorn (`LiveServer`) with its Stripe settings pointed at localstripe;
the test plays the browser (Stripe.js) by confirming the PaymentIntent with a test card
straight at localstripe, and plays Stripe by delivering webhook events it builds and signs
the way Stripe does (`t=<unix time>,v1=<HMAC-SHA256 of "t.payload" with the signing secret>`).
One test lets localstripe deliver its own webhook to the portal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import func, select

from portal.db import create_engine, ledger_transactions
from portal.errors import PaymentFailed
from portal.ledger import balance, verify, wallet
from portal.licensing.hookspecs import hookimpl
from portal.licensing.plugins import Plugins
from portal.money import Money
from portal.payments import (
    PENDING,
    SUCCEEDED,
    DeferredPaymentProvider,
    DevelopmentProvider,
    PaymentState,
)
from portal.settings import Secret, Settings
from portal.stripe_payments import (
    StripeProvider,
    from_stripe_amount,
    payment_plugins,
    to_stripe_amount,
)
from tests.helpers import LiveServer, bearer, create_account, insert_user, pipeline_settings

SECRET_KEY = "sk_test_megamovie"
WEBHOOK_SECRET = "whsec_megamovie_test"
WEBHOOK_PATH = "/api/payments/stripe/webhook"
VISA = "4242424242424242"
DECLINED = "4000000000000341"  # attaches, then the charge is declined

# localstripe's own aiohttp app, served on 127.0.0.1 only (its `localstripe` command binds
# every interface) and without its pickle in /tmp (shared by every run on the machine).
LAUNCHER = """
import sys
from aiohttp import web
import localstripe.resources
localstripe.resources.Store.dump_to_disk = lambda self: None
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def localstripe(tmp_path: Path) -> Iterator[str]:
    """A localstripe server on a free loopback port: its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "localstripe.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/v1/balance", auth=(SECRET_KEY, ""), timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "localstripe did not start: "
                        + (tmp_path / "localstripe.log").read_text(errors="replace")
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def stripe_settings(tmp_path: Path, api_base: str, **changes: Any) -> Settings:
    return pipeline_settings(
        tmp_path,
        stripe_secret_key=Secret(SECRET_KEY),
        stripe_webhook_secret=Secret(WEBHOOK_SECRET),
        stripe_publishable_key="pk_test_megamovie",
        stripe_api_base=api_base,
        development_payments=False,
        **changes,
    )


@dataclass
class Portal:
    server: LiveServer
    client: httpx.Client  # the portal
    stripe: httpx.Client  # localstripe, with the secret key
    auth: dict[str, str]  # a viewer's bearer token

    def top_up(self, amount: int, key: str, currency: str = "EUR") -> httpx.Response:
        return self.client.post(
            "/api/wallet/top-ups",
            json={"amount": amount, "currency": currency},
            headers={**self.auth, "Idempotency-Key": key},
        )

    def balance(self) -> int:
        response = self.client.get("/api/wallet", headers=self.auth)
        assert response.status_code == 200, response.text
        return int(response.json()["balance"]["amount"])

    def intent(self, reference: str) -> dict[str, Any]:
        """The PaymentIntent as localstripe holds it (the JSON Stripe would send)."""
        response = self.stripe.get(f"/v1/payment_intents/{reference}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def pay(self, reference: str, card: str = VISA) -> httpx.Response:
        """What Stripe.js does in the browser: attach a card and confirm."""
        method = self.stripe.post(
            "/v1/payment_methods",
            data={
                "type": "card",
                "card[number]": card,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
        )
        assert method.status_code == 200, method.text
        attached = self.stripe.post(
            f"/v1/payment_intents/{reference}", data={"payment_method": method.json()["id"]}
        )
        assert attached.status_code == 200, attached.text
        return self.stripe.post(f"/v1/payment_intents/{reference}/confirm")

    def deliver(
        self, event: dict[str, Any], secret: str = WEBHOOK_SECRET, **headers: str
    ) -> httpx.Response:
        payload, signature = signed(event, secret)
        return self.client.post(
            WEBHOOK_PATH,
            content=payload,
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": signature,
                **headers,
            },
        )

    def postings(self) -> int:
        """Top-up postings in the books (and the books balance)."""

        async def read() -> int:
            engine = create_engine(self.server.settings.database_url)
            try:
                assert await verify(engine) == []
                async with engine.connect() as conn:
                    return int(
                        (
                            await conn.execute(
                                select(func.count()).where(ledger_transactions.c.kind == "top_up")
                            )
                        ).scalar_one()
                    )
            finally:
                await engine.dispose()

        return anyio.run(read)


def event_for(intent: dict[str, Any], kind: str = "payment_intent.succeeded") -> dict[str, Any]:
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": "2026-10-28",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": intent},
    }


def signed(event: dict[str, Any], secret: str) -> tuple[bytes, str]:
    """The body and `Stripe-Signature` header Stripe would send for `event`."""
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return payload, f"t={timestamp},v1={mac.hexdigest()}"


@pytest.fixture
def portal(tmp_path: Path, localstripe: str) -> Iterator[Portal]:
    settings = stripe_settings(tmp_path, localstripe)
    create_account(settings, "payer@example.test", role="viewer")
    server = LiveServer(settings)
    server.start()
    try:
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            httpx.Client(base_url=localstripe, auth=(SECRET_KEY, ""), timeout=30) as stripe,
        ):
            yield Portal(server, client, stripe, bearer(client, "payer@example.test"))
    finally:
        server.stop()


def test_a_top_up_is_a_payment_intent_credited_once_by_its_signed_webhook(portal):
    first = portal.top_up(1000, "top-up-1")
    assert first.status_code == 202, first.text
    pending = first.json()
    assert pending["status"] == "pending"
    assert (pending["amount"], pending["currency"]) == (1000, "EUR")
    assert pending["provider"]["name"] == "stripe"
    reference = pending["reference"]
    assert reference.startswith("pi_")
    assert pending["payment"]["client_secret"].startswith(reference + "_secret_")
    assert pending["payment"]["publishable_key"] == "pk_test_megamovie"
    assert pending["payment"]["provider_status"] == "requires_payment_method"

    # The PaymentIntent is real, in localstripe, for the amount asked and tagged with the top-up.
    intent = portal.intent(reference)
    assert (intent["amount"], intent["currency"]) == (1000, "eur")
    assert intent["metadata"]["megamovie_top_up"] == pending["id"]

    # A retried request answers the same PaymentIntent and makes no second one.
    again = portal.top_up(1000, "top-up-1")
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (again.json()["id"], again.json()["reference"]) == (pending["id"], reference)
    assert len(portal.stripe.get("/v1/payment_intents").json()["data"]) == 1
    # ... and the same key for another amount is refused.
    assert portal.top_up(2000, "top-up-1").status_code == 409

    assert portal.balance() == 0  # pending credits nothing

    confirmed = portal.pay(reference)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "succeeded"

    event = event_for(portal.intent(reference))
    delivered = portal.deliver(event)
    assert delivered.status_code == 200, delivered.text
    assert delivered.json() == {
        "received": True,
        "handled": True,
        "top_up": pending["id"],
        "status": "succeeded",
    }
    assert portal.balance() == 1000

    # Stripe retries webhooks: the same event again (and again signed anew) changes nothing.
    for _ in range(2):
        assert portal.deliver(event).status_code == 200
    assert portal.balance() == 1000
    assert portal.postings() == 1

    done = portal.client.get(f"/api/wallet/top-ups/{pending['id']}", headers=portal.auth)
    assert done.status_code == 200
    assert done.json()["status"] == "succeeded"
    assert done.json()["balance"] == {"amount": 1000, "currency": "EUR"}
    assert "payment" not in done.json()
    # A retry of the original request now answers the finished top-up.
    finished = portal.top_up(1000, "top-up-1")
    assert (finished.status_code, finished.json()["status"]) == (200, "succeeded")
    assert portal.balance() == 1000


def test_a_webhook_that_does_not_verify_is_400_and_the_poll_still_credits_once(portal):
    pending = portal.top_up(700, "top-up-2").json()
    top_up_id, reference = pending["id"], pending["reference"]
    assert portal.pay(reference).status_code == 200
    event = event_for(portal.intent(reference))

    wrong_secret = portal.deliver(event, secret="whsec_someone_else")
    assert wrong_secret.status_code == 400
    assert wrong_secret.json()["error"] == "bad_signature"

    unsigned = portal.client.post(
        WEBHOOK_PATH, content=json.dumps(event), headers={"Content-Type": "application/json"}
    )
    assert unsigned.status_code == 400

    # A signed event whose body was changed afterwards (a bigger amount) does not verify.
    payload, signature = signed(event, WEBHOOK_SECRET)
    tampered = payload.replace(b'"amount": 700', b'"amount": 70000')
    assert tampered != payload
    forged = portal.client.post(
        WEBHOOK_PATH,
        content=tampered,
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
    )
    assert forged.status_code == 400

    # A signature from long ago is refused too (replayed capture of an old delivery).
    old = int(time.time()) - 3600
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{old}.".encode() + payload, hashlib.sha256)
    stale = portal.client.post(
        WEBHOOK_PATH,
        content=payload,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": f"t={old},v1={mac.hexdigest()}",
        },
    )
    assert stale.status_code == 400

    assert portal.balance() == 0
    assert portal.postings() == 0

    # Without any webhook, asking about the top-up reads the PaymentIntent from Stripe.
    polled = portal.client.get(f"/api/wallet/top-ups/{top_up_id}", headers=portal.auth)
    assert polled.status_code == 200, polled.text
    assert polled.json()["status"] == "succeeded"
    assert portal.balance() == 700
    # Polling again and the late webhook change nothing.
    assert (
        portal.client.get(f"/api/wallet/top-ups/{top_up_id}", headers=portal.auth).json()["status"]
        == "succeeded"
    )
    assert portal.deliver(event).status_code == 200
    assert portal.balance() == 700
    assert portal.postings() == 1

    # Someone else's top-up is not found.
    create_account(portal.server.settings, "other@example.test", role="viewer")
    other = bearer(portal.client, "other@example.test")
    assert portal.client.get(f"/api/wallet/top-ups/{top_up_id}", headers=other).status_code == 404


def test_a_declined_card_credits_nothing(portal):
    pending = portal.top_up(1500, "top-up-3").json()
    top_up_id, reference = pending["id"], pending["reference"]

    declined = portal.pay(reference, card=DECLINED)
    assert declined.status_code == 402, declined.text
    assert declined.json()["error"]["code"] == "card_declined"
    intent = portal.intent(reference)
    assert intent["status"] == "requires_payment_method"

    failed = portal.deliver(event_for(intent, "payment_intent.payment_failed"))
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == "pending"  # the payer may still try another card

    polled = portal.client.get(f"/api/wallet/top-ups/{top_up_id}", headers=portal.auth).json()
    assert polled["status"] == "pending"
    assert polled["message"] == "Your card was declined."
    assert polled["payment"]["client_secret"].startswith(reference)
    assert portal.balance() == 0

    # Even a correctly signed "succeeded" event for a PaymentIntent Stripe does not hold as
    # paid credits only what it says: here, a different amount than the top-up asked for.
    wrong = dict(intent, status="succeeded", amount=150000)
    assert portal.deliver(event_for(wrong)).json()["status"] == "pending"
    assert portal.balance() == 0
    assert portal.postings() == 0


def test_localstripe_delivers_its_own_signed_webhook_to_the_portal(portal, localstripe):
    registered = httpx.post(
        f"{localstripe}/_config/webhooks/megamovie",
        data={
            "url": portal.server.url + WEBHOOK_PATH,
            "secret": WEBHOOK_SECRET,
            "events[]": ["payment_intent.succeeded", "payment_intent.payment_failed"],
        },
    )
    assert registered.status_code == 200, registered.text

    pending = portal.top_up(2500, "top-up-4").json()
    assert portal.pay(pending["reference"]).status_code == 200

    # Only the wallet is read here: nothing asks Stripe, so only the webhook can credit it.
    deadline = time.monotonic() + 20
    while portal.balance() != 2500:
        assert time.monotonic() < deadline, "localstripe's webhook never credited the wallet"
        time.sleep(0.2)
    assert portal.postings() == 1


# -- the provider seam, without a server ------------------------------------------------------


class OtherProvider(DevelopmentProvider):
    name = "other"
    label = "Someone else's provider"


@hookimpl
def payment_provider(portal: Any, user_id: str, currency: str) -> Any:
    """A third-party plugin (this module, named in MEGAMOVIE_PLUGINS) answering first."""
    return OtherProvider()


@dataclass
class FakePortal:
    settings: Settings


@pytest.mark.anyio
async def test_the_payment_provider_hook_chooses_stripe_development_or_a_plugin(tmp_path):
    base = pipeline_settings(tmp_path)
    plain = Plugins(entry_points=False)
    chosen = await plain.decide(
        "payment_provider", portal=FakePortal(base), user_id="u", currency="EUR"
    )
    assert isinstance(chosen, DevelopmentProvider)
    off = base.replace(development_payments=False)
    assert (
        await plain.decide("payment_provider", portal=FakePortal(off), user_id="u", currency="EUR")
        is None
    )

    configured = stripe_settings(tmp_path, "http://127.0.0.1:9")
    with_stripe = Plugins(entry_points=False, extra=payment_plugins(configured))
    chosen = await with_stripe.decide(
        "payment_provider", portal=FakePortal(configured), user_id="u", currency="EUR"
    )
    assert isinstance(chosen, StripeProvider)
    # Stripe stays the answer even with the development provider on.
    dev_too = configured.replace(development_payments=True)
    chosen = await with_stripe.decide(
        "payment_provider", portal=FakePortal(dev_too), user_id="u", currency="EUR"
    )
    assert isinstance(chosen, StripeProvider)
    await with_stripe.aclose()

    replaced = Plugins([__name__], entry_points=False, extra=payment_plugins(configured))
    chosen = await replaced.decide(
        "payment_provider", portal=FakePortal(configured), user_id="u", currency="EUR"
    )
    assert isinstance(chosen, OtherProvider)
    await replaced.aclose()


def test_stripe_settings_need_the_webhook_secret(tmp_path):
    with pytest.raises(ValueError, match="MEGAMOVIE_STRIPE_WEBHOOK_SECRET"):
        Settings.from_env(
            {"MEGAMOVIE_DATA_DIR": str(tmp_path), "MEGAMOVIE_STRIPE_SECRET_KEY": "sk_test_x"}
        )
    assert "sk_test_x" not in repr(
        Settings.from_env(
            {
                "MEGAMOVIE_DATA_DIR": str(tmp_path),
                "MEGAMOVIE_STRIPE_SECRET_KEY": "sk_test_x",
                "MEGAMOVIE_STRIPE_WEBHOOK_SECRET": "whsec_x",
            }
        )
    )


def test_stripe_amounts_are_minor_units_except_the_krona():
    assert to_stripe_amount(Money(499, "EUR")) == 499
    assert to_stripe_amount(Money(500, "JPY")) == 500
    assert to_stripe_amount(Money(500, "ISK")) == 50000
    assert from_stripe_amount(50000, "isk") == Money(500, "ISK")
    assert from_stripe_amount(499, "eur") == Money(499, "EUR")
    with pytest.raises(ValueError):
        from_stripe_amount(50050, "isk")


def test_development_top_ups_through_the_api(tmp_path):
    settings = pipeline_settings(tmp_path)
    create_account(settings, "dev@example.test", role="viewer")
    server = LiveServer(settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            auth = bearer(client, "dev@example.test")
            wallet = client.get("/api/wallet", headers=auth).json()
            assert wallet["balance"] == {"amount": 0, "currency": "EUR"}
            assert wallet["provider"]["name"] == "development"
            assert "no real money" in wallet["provider"]["label"]

            body = {"amount": 1000, "currency": "EUR"}
            missing = client.post("/api/wallet/top-ups", json=body, headers=auth)
            assert missing.status_code == 400
            assert missing.json()["field"] == "Idempotency-Key"
            first = client.post(
                "/api/wallet/top-ups", json=body, headers={**auth, "Idempotency-Key": "d1"}
            )
            assert first.status_code == 201, first.text
            assert first.json()["balance"] == {"amount": 1000, "currency": "EUR"}
            again = client.post(
                "/api/wallet/top-ups", json=body, headers={**auth, "Idempotency-Key": "d1"}
            )
            assert again.json()["id"] == first.json()["id"]
            assert again.headers["Idempotent-Replayed"] == "true"
            assert client.get("/api/wallet", headers=auth).json()["balance"]["amount"] == 1000
            shown = client.get(f"/api/wallet/top-ups/{first.json()['id']}", headers=auth)
            assert shown.json()["status"] == "succeeded"
            # Stripe is not configured here: its webhook does not exist.
            assert client.post(WEBHOOK_PATH, content=b"{}").status_code == 404
    finally:
        server.stop()


@pytest.mark.anyio
async def test_a_top_up_survives_stripe_being_down_and_racing_retries(
    engine, tmp_path, localstripe
):
    from portal.top_ups import PaymentsUnavailable, begin_top_up

    user = await insert_user(engine, "viewer")
    down = StripeProvider(stripe_settings(tmp_path, f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(PaymentsUnavailable):
        await begin_top_up(engine, down, user_id=user, money=Money(900, "EUR"), idempotency_key="k")
    await down.aclose()

    # The retry (Stripe is back) makes the PaymentIntent for the top-up recorded the first time.
    up = StripeProvider(stripe_settings(tmp_path, localstripe))
    try:
        async with anyio.create_task_group() as tasks:
            answers: list[Any] = []

            async def retry() -> None:
                answers.append(
                    await begin_top_up(
                        engine, up, user_id=user, money=Money(900, "EUR"), idempotency_key="k"
                    )
                )

            for _ in range(3):
                tasks.start_soon(retry)
        payments = {payment.id for payment, _, _ in answers}
        references = {payment.reference for payment, _, _ in answers}
        states = {state.reference for _, state, _ in answers}
        assert len(payments) == 1
        assert len(references) == 1
        assert states == references  # each answer shows the one kept
        assert [created for _, _, created in answers] == [False, False, False]
    finally:
        await up.aclose()


class RefusingThenAccepting:
    """A deferred provider that refuses the first payment outright, then takes the next."""

    name = "stub"
    label = "Stub provider"

    def __init__(self) -> None:
        self.calls = 0

    async def start(self, user_id: str, money: Money, payment_id: str) -> PaymentState:
        self.calls += 1
        if self.calls == 1:
            raise PaymentFailed("Stripe refused the payment: Amount must be at least 0.50 EUR")
        return PaymentState(f"stub_{payment_id}", PENDING, money, "requires_payment_method")

    async def lookup(self, reference: str) -> PaymentState:
        return PaymentState(reference, SUCCEEDED, Money(900, "EUR"), "succeeded")


@pytest.mark.anyio
async def test_a_payment_the_provider_refuses_to_create_leaves_the_key_unused(engine):
    from portal.top_ups import begin_top_up, refresh_top_up

    user = await insert_user(engine, "viewer")
    provider = RefusingThenAccepting()
    assert isinstance(provider, DeferredPaymentProvider)
    money = Money(900, "EUR")
    with pytest.raises(PaymentFailed):
        await begin_top_up(engine, provider, user_id=user, money=money, idempotency_key="k")
    payment, state, created = await begin_top_up(
        engine, provider, user_id=user, money=money, idempotency_key="k"
    )
    assert created and state is not None and state.status == PENDING
    done, _ = await refresh_top_up(engine, provider, payment)
    again, _ = await refresh_top_up(engine, provider, done)
    assert done.status == again.status == SUCCEEDED
    assert done.transaction_id == again.transaction_id is not None
    async with engine.connect() as conn:
        assert await balance(conn, wallet(user), "EUR") == 900
    assert await verify(engine) == []


def test_with_the_development_provider_off_and_no_stripe_nobody_takes_top_ups(tmp_path):
    settings = pipeline_settings(tmp_path, development_payments=False)
    create_account(settings, "nobody@example.test", role="viewer")
    server = LiveServer(settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            auth = bearer(client, "nobody@example.test")
            assert client.get("/api/wallet", headers=auth).json()["provider"] is None
            refused = client.post(
                "/api/wallet/top-ups",
                json={"amount": 1000, "currency": "EUR"},
                headers={**auth, "Idempotency-Key": "n1"},
            )
            assert refused.status_code == 402
            assert refused.json()["error"] == "payment_failed"
            assert client.get("/api/wallet", headers=auth).json()["balance"]["amount"] == 0
    finally:
        server.stop()


def test_payments_reconcile_credits_what_was_paid_when_no_webhook_came(portal, localstripe):
    from click.testing import CliRunner

    from portal.cli import main

    paid = portal.top_up(1200, "paid").json()
    unpaid = portal.top_up(300, "unpaid").json()
    assert portal.pay(paid["reference"]).status_code == 200
    assert portal.balance() == 0  # no webhook, nobody polled

    settings = portal.server.settings
    env = {
        "MEGAMOVIE_DATA_DIR": str(settings.data_dir),
        "MEGAMOVIE_STRIPE_SECRET_KEY": SECRET_KEY,
        "MEGAMOVIE_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "MEGAMOVIE_STRIPE_API_BASE": localstripe,
    }
    runner = CliRunner()
    first = runner.invoke(main, ["payments", "reconcile", "--older-than", "0"], env=env)
    assert first.exit_code == 0, first.output
    assert "2 pending top-ups checked with Stripe, 1 paid and credited." in first.output
    assert portal.balance() == 1200
    again = runner.invoke(main, ["payments", "reconcile", "--older-than", "0"], env=env)
    assert "1 pending top-ups checked with Stripe, 0 paid and credited." in again.output
    recent = runner.invoke(main, ["payments", "reconcile"], env=env)
    assert "0 pending top-ups checked" in recent.output  # younger than five minutes
    assert portal.balance() == 1200
    assert portal.postings() == 1
    still = portal.client.get(f"/api/wallet/top-ups/{unpaid['id']}", headers=portal.auth)
    assert still.json()["status"] == "pending"

    no_stripe = runner.invoke(
        main, ["payments", "reconcile"], env={"MEGAMOVIE_DATA_DIR": str(settings.data_dir)}
    )
    assert no_stripe.exit_code != 0
    assert "Stripe is not configured" in no_stripe.output
