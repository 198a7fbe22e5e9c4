"""The money domain wired to one portal: its engine, its settings and its plugin hooks.

The domain modules (payments, purchases, subscriptions, payouts) take everything as
arguments; this is the one place that answers those arguments from `Services`:

- the revenue split is the `revenue_split` hook (the built-in answers
  `MEGAMOVIE_CREATOR_SHARE_BPS`; `checked_split` refuses an answer that makes or loses money);
- the payment provider is the `payment_provider` hook (built in: the development wallet);
- `purchase_completed`, `purchase_refunded` and `payout_closed` are announced through the
  hooks of the same names, after the money has moved.

Routes and the CLI use `Commerce(services)`; tests of the domain call the modules directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from portal.errors import PaymentFailed
from portal.money import Money
from portal.payments import PaymentProvider, TopUp, top_up
from portal.payouts import PayoutRun, Statement, run_payouts
from portal.purchases import Purchase, purchase, refund_purchase
from portal.services import Services
from portal.subscriptions import Subscription, subscribe


@dataclass(frozen=True)
class Commerce:
    services: Services

    async def split(self, money: Money, *, creator_id: str, kind: str) -> Any:
        """A RevenueSplit answered by the `revenue_split` hook (checked by the domain)."""
        answer = await self.services.plugins.decide(
            "revenue_split",
            portal=self.services,
            amount=money.amount,
            currency=money.currency,
            kind=kind,
            creator_id=creator_id,
        )
        return answer

    async def provider(self, user_id: str, currency: str) -> PaymentProvider:
        """The `payment_provider` hook's answer (built in: the development wallet)."""
        answer = await self.services.plugins.decide(
            "payment_provider", portal=self.services, user_id=user_id, currency=currency
        )
        if answer is None:
            raise PaymentFailed(
                f"No payment provider takes {currency} here; top up in another currency."
            )
        return cast(PaymentProvider, answer)

    @property
    def main_currency(self) -> str:
        """The wallet's first currency: the pass's."""
        return self.services.settings.pass_currency

    @property
    def pass_price(self) -> Money:
        settings = self.services.settings
        return Money(settings.pass_amount, settings.pass_currency)

    async def _announce(self, hook: str, **subject: Any) -> None:
        await self.services.plugins.notify(hook, portal=self.services, **subject)

    async def _purchase_completed(self, bought: Purchase | Subscription) -> None:
        await self._announce("purchase_completed", purchase=bought)

    async def _purchase_refunded(self, refunded: Purchase) -> None:
        await self._announce("purchase_refunded", purchase=refunded)

    async def _payout_closed(self, statement: Statement) -> None:
        await self._announce("payout_closed", statement=statement)

    # -- what routes and commands do ----------------------------------------------------------

    async def top_up(self, user_id: str, money: Money, idempotency_key: str) -> tuple[TopUp, bool]:
        provider = await self.provider(user_id, money.currency)
        return await top_up(
            self.services.engine,
            provider,
            user_id=user_id,
            money=money,
            idempotency_key=idempotency_key,
        )

    async def purchase(
        self, user_id: str, offer_id: str, idempotency_key: str
    ) -> tuple[Purchase, bool]:
        return await purchase(
            self.services.engine,
            user_id=user_id,
            offer_id=offer_id,
            idempotency_key=idempotency_key,
            revenue_split=self.split,
            purchase_completed=self._purchase_completed,
        )

    async def subscribe(
        self, user_id: str, plan: str, creator_id: str | None, idempotency_key: str
    ) -> tuple[Subscription, bool]:
        return await subscribe(
            self.services.engine,
            user_id=user_id,
            plan=plan,
            creator_id=creator_id,
            idempotency_key=idempotency_key,
            pass_price=self.pass_price,
            revenue_split=self.split,
            purchase_completed=self._purchase_completed,
        )

    async def refund(self, purchase_id: str) -> tuple[Purchase, bool]:
        return await refund_purchase(
            self.services.engine, purchase_id, purchase_refunded=self._purchase_refunded
        )

    async def run_payouts(self, period: str, now: datetime | None = None) -> PayoutRun:
        return await run_payouts(
            self.services.engine,
            period,
            revenue_split=self.split,
            now=now,
            payout_closed=self._payout_closed,
        )
