"""The built-in policies, as a plugin like any other, registered `trylast`: a plugin that
answers a decision hook replaces the built-in answer.

- Offers come from the `offers` table; no offers means free.
- A viewer holds the whole film when it is free, when they made it or are an admin, when they
  bought it, while a rental runs (the first grant starts its 48 h), while a channel
  subscription to its creator or a Mega Movie Pass runs and the film is offered that way.
  Everyone else gets the preview.
- The split is `MEGAMOVIE_CREATOR_SHARE_BPS` (90%) to the creator, rounded down; the rest to
  the platform.
- Payments go through the development wallet (`portal.payments.DevelopmentProvider`) unless
  `MEGAMOVIE_DEVELOPMENT_PAYMENTS=0`; a real provider (the `stripe` plugin, when configured)
  answers `payment_provider` before it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import purchases, subscriptions
from portal.licensing.hookspecs import hookimpl
from portal.licensing.licences import PREVIEW, Licence
from portal.licensing.offers import VideoOffers, load_offers
from portal.money import split
from portal.payments import DevelopmentProvider, PaymentProvider

RENTAL_PERIOD = timedelta(hours=48)
DEVELOPMENT_PROVIDER = DevelopmentProvider()


class BuiltinPolicies:
    @hookimpl(trylast=True)
    async def video_offers(self, portal: Any, video: Any) -> VideoOffers:
        return await load_offers(portal.engine, video.id, video.preview_seconds)

    @hookimpl(trylast=True)
    async def viewer_licence(
        self, portal: Any, viewer: Any, video: Any, offers: VideoOffers, now: datetime
    ) -> Licence:
        if offers.free:
            return Licence.whole("free")
        if viewer.user is not None:
            if viewer.user.id == video.creator_id:
                return Licence.whole("owner")
            if viewer.user.role == "admin":
                return Licence.whole("admin")
            held = await _held(portal.engine, viewer.user.id, video, offers, now)
            if held is not None:
                return held
        preview = min(offers.preview_seconds, int(video.duration or offers.preview_seconds))
        return Licence(PREVIEW, "preview", preview_seconds=preview, offers=offers.offers)

    @hookimpl(trylast=True)
    def payment_provider(self, portal: Any, user_id: str, currency: str) -> PaymentProvider | None:
        if not portal.settings.development_payments:
            return None
        return DEVELOPMENT_PROVIDER

    @hookimpl(trylast=True)
    def revenue_split(
        self, portal: Any, amount: int, currency: str, kind: str, creator_id: str
    ) -> tuple[int, int]:
        return split(amount, portal.settings.creator_share_bps)


async def _held(
    engine: AsyncEngine, user_id: str, video: Any, offers: VideoOffers, now: datetime
) -> Licence | None:
    """The best licence `user_id` holds for `video` from purchases and subscriptions."""
    async with engine.connect() as conn:
        bought = (
            await conn.execute(
                select(purchases)
                .where(
                    purchases.c.user_id == user_id,
                    purchases.c.video_id == video.id,
                    purchases.c.refunded_at.is_(None),
                    or_(purchases.c.expires_at.is_(None), purchases.c.expires_at > now),
                )
                .order_by(purchases.c.expires_at.is_(None).desc(), purchases.c.created_at)
            )
        ).all()
        plans = []
        if "channel" in offers.kinds():
            plans.append(and_(subscriptions.c.plan == "channel",
                              subscriptions.c.creator_id == video.creator_id))  # fmt: skip
        if "pass" in offers.kinds():
            plans.append(subscriptions.c.plan == "pass")
        subscribed = None
        if plans:
            subscribed = (
                await conn.execute(
                    select(subscriptions)
                    .where(
                        subscriptions.c.user_id == user_id,
                        subscriptions.c.refunded_at.is_(None),
                        subscriptions.c.starts_at <= now,
                        subscriptions.c.ends_at > now,
                        or_(*plans),
                    )
                    .order_by(subscriptions.c.ends_at.desc())
                )
            ).first()
    for row in bought:
        if row.kind == "buy":
            return Licence.whole("purchase")
    for row in bought:
        if row.first_played_at is None:
            # The rental's 48 hours start now; the grant records it (portal.licensing.grants).
            end = now + RENTAL_PERIOD
            return Licence("full", "rental", expires_at=end, starts_rental=row.id)
        return Licence.whole("rental", expires_at=row.expires_at)
    if subscribed is not None:
        return Licence.whole(subscribed.plan, expires_at=subscribed.ends_at)
    return None
