"""The Stripe payment provider: top-ups as PaymentIntents, credited on fulfilment.

On when `MEGAMOVIE_STRIPE_SECRET_KEY` is set (with `MEGAMOVIE_STRIPE_WEBHOOK_SECRET`), through
the official `stripe` package; `MEGAMOVIE_STRIPE_API_BASE` points it at a fake Stripe
(localstripe) for tests. It is the licensing plugin `stripe`, answering `payment_provider`;
`Plugins` registers it before third-party plugins, so one of those may answer first.

- `start` creates a PaymentIntent for the top-up and hands Stripe the top-up's id as the
  Idempotency-Key, so a retried request never creates a second one. The answer is pending,
  with the client secret the browser confirms the card with (Stripe.js).
- `lookup` reads the PaymentIntent back from Stripe: the server-side poll.
- `verify_event` checks a webhook's `Stripe-Signature` (HMAC-SHA256 with the endpoint's
  signing secret, five minutes' tolerance) with `stripe.Webhook.construct_event`; anything
  unsigned, wrongly signed, stale or not JSON is `WebhookRefused` (400).

Amounts: the portal's minor units are Stripe's, except that Stripe counts the Icelandic krona
(zero-decimal for us, as in ISO 4217) in hundredths that must end in 00.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import stripe
from stripe.params import PaymentIntentCreateParams

from portal.errors import PaymentFailed, PortalError
from portal.licensing.hookspecs import hookimpl
from portal.money import CURRENCIES, Money
from portal.payments import CANCELED, PENDING, SUCCEEDED, PaymentState
from portal.settings import Settings
from portal.top_ups import PaymentsUnavailable

if TYPE_CHECKING:
    from portal.services import Services

log = logging.getLogger("megamovie.payments.stripe")

NAME = "stripe"
#: The events the webhook acts on; others are acknowledged and ignored.
PAYMENT_INTENT_EVENTS = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.processing",
    "payment_intent.requires_action",
)
#: Currencies whose Stripe amounts have a different exponent than ISO 4217's.
_STRIPE_EXPONENT = {"ISK": 2}


class WebhookRefused(PortalError):
    """A webhook whose signature does not verify: nothing was done."""

    status_code = 400
    code = "bad_signature"


def to_stripe_amount(money: Money) -> int:
    shift = _STRIPE_EXPONENT.get(money.currency, CURRENCIES[money.currency])
    return money.amount * 10 ** (shift - CURRENCIES[money.currency])


def from_stripe_amount(amount: int, currency: str) -> Money:
    code = currency.upper()
    shift = _STRIPE_EXPONENT.get(code, CURRENCIES[code]) - CURRENCIES[code]
    whole, rest = divmod(int(amount), 10**shift)
    if rest:
        raise ValueError(f"{amount} {currency} is not a whole number of {code} minor units")
    return Money(whole, code)


def _status(stripe_status: str) -> str:
    if stripe_status == "succeeded":
        return SUCCEEDED
    if stripe_status == "canceled":
        return CANCELED
    # requires_payment_method (also after a declined card: the payer may try another),
    # requires_confirmation, requires_action, processing, requires_capture.
    return PENDING


class StripeProvider:
    """A `DeferredPaymentProvider` on Stripe PaymentIntents."""

    name = NAME
    label = "Card payment (Stripe)"

    def __init__(self, settings: Settings) -> None:
        if not settings.stripe_secret_key or not settings.stripe_webhook_secret:
            raise ValueError("the Stripe provider needs the secret key and the webhook secret")
        base = {"api": settings.stripe_api_base.rstrip("/")} if settings.stripe_api_base else {}
        # aiohttp, not httpx: stripe hands httpx raw bytes as `data=`, which it deprecates.
        self._http = stripe.AIOHTTPClient()
        self._client = stripe.StripeClient(
            settings.stripe_secret_key.reveal(),
            base_addresses=base,  # type: ignore[arg-type]
            http_client=self._http,
            max_network_retries=2,
        )
        self._webhook_secret = settings.stripe_webhook_secret.reveal()
        self.publishable_key = settings.stripe_publishable_key

    async def start(self, user_id: str, money: Money, payment_id: str) -> PaymentState:
        params: PaymentIntentCreateParams = {
            "amount": to_stripe_amount(money),
            "currency": money.currency.lower(),
            "metadata": {"megamovie_top_up": payment_id, "megamovie_user": user_id},
        }
        options: stripe.RequestOptions = {"idempotency_key": f"megamovie-top-up-{payment_id}"}
        intent = await self._call(self._client.v1.payment_intents.create_async(params, options))
        return self.state_of(intent)

    async def lookup(self, reference: str) -> PaymentState:
        intent = await self._call(self._client.v1.payment_intents.retrieve_async(reference))
        return self.state_of(intent)

    async def aclose(self) -> None:
        await self._http.close_async()

    async def _call(self, request: Any) -> Any:
        try:
            return await request
        except (stripe.CardError, stripe.InvalidRequestError) as exc:
            log.warning("Stripe refused a request: %s", exc)
            # Card errors carry a message for the payer; invalid requests (an amount below
            # Stripe's minimum, a currency the account cannot take) a plain explanation.
            reason = exc.user_message or (exc.error.message if exc.error else None)
            raise PaymentFailed(
                f"Stripe refused the payment: {reason}"
                if reason
                else "Stripe refused the payment; nothing was charged."
            ) from None
        except stripe.StripeError as exc:
            log.error("Stripe is unavailable: %s", exc)
            raise PaymentsUnavailable(
                "Card payments are unavailable at the moment; nothing was charged. "
                "Please try again in a few minutes."
            ) from None

    def state_of(self, intent: Any) -> PaymentState:
        """The portal's view of a PaymentIntent (from the API or from a verified event)."""
        if isinstance(intent, stripe.StripeObject):
            intent = intent.to_dict()
        status = _status(str(intent["status"]))
        error = intent.get("last_payment_error") or {}
        client: dict[str, str] = {}
        if status == PENDING and intent.get("client_secret"):
            client = {"client_secret": str(intent["client_secret"])}
            if self.publishable_key:
                client["publishable_key"] = self.publishable_key
        return PaymentState(
            reference=str(intent["id"]),
            status=status,
            money=from_stripe_amount(int(intent["amount"]), str(intent["currency"])),
            provider_status=str(intent["status"]),
            message=str(error.get("message") or "") if status == PENDING else "",
            client=client,
        )

    def verify_event(self, payload: bytes, signature: str | None) -> stripe.Event:
        """The webhook's event if its `Stripe-Signature` verifies, else WebhookRefused."""
        if not signature:
            raise WebhookRefused("The Stripe-Signature header is missing.")
        try:
            return stripe.Webhook.construct_event(payload, signature, self._webhook_secret)
        except stripe.SignatureVerificationError:
            raise WebhookRefused(
                "The Stripe-Signature does not verify with this endpoint's signing secret."
            ) from None
        except ValueError:
            raise WebhookRefused("The webhook's body is not a Stripe event.") from None


class StripePlugin:
    """The `stripe` plugin: Stripe takes every top-up while it is configured."""

    def __init__(self, provider: StripeProvider) -> None:
        self.provider = provider

    @hookimpl
    def payment_provider(self, portal: Any, user_id: str, currency: str) -> Any:
        return self.provider

    async def aclose(self) -> None:
        await self.provider.aclose()


def payment_plugins(settings: Settings) -> list[tuple[str, object]]:
    """The optional payment plugins `settings` turn on, for `Plugins(extra=...)`."""
    if not settings.stripe_enabled:
        return []
    return [(NAME, StripePlugin(StripeProvider(settings)))]


def stripe_provider(services: Services) -> Any:
    """The built-in Stripe provider when it is on (whoever answers the hook), else None.
    Here, not in the routes: `megamovie payments reconcile` needs it too."""
    plugin = services.plugins.manager.get_plugin("stripe")
    return getattr(plugin, "provider", None)
