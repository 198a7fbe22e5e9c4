"""What a creator sets: a film's offers and preview, and the price of their channel.

A film with no offers is free. A paid film plays its first `preview_seconds` for everyone,
then asks for one of its offers: `buy` (watch forever) and `rent` (48 h from the first play,
to be started within 30 days) carry a price; `channel` (the creator's monthly subscription)
and `pass` (the Mega Movie Pass) are priced by the channel plan and the pass setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import channel_plans, new_id, offers, utcnow, videos
from portal.errors import BadRequest
from portal.money import Money, parse_amount, parse_currency, parse_money

KINDS = ("buy", "rent", "channel", "pass")
PRICED = ("buy", "rent")
DEFAULT_PREVIEW_SECONDS = 120
MAX_OFFERS = 8


@dataclass(frozen=True)
class Offer:
    id: str
    kind: str
    price: Money | None  # None for channel and pass: priced elsewhere

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.price is not None:
            body.update(self.price.as_json())
        return body


@dataclass(frozen=True)
class VideoOffers:
    preview_seconds: int
    offers: tuple[Offer, ...]

    @property
    def free(self) -> bool:
        return not self.offers

    def kinds(self) -> set[str]:
        return {offer.kind for offer in self.offers}

    def as_json(self) -> list[dict[str, Any]]:
        return [offer.as_json() for offer in self.offers]


@dataclass(frozen=True)
class OfferSpec:
    """An offer as sent by a creator, before it has an id."""

    kind: str
    price: Money | None


def parse_offers(body: object, duration: float | None) -> tuple[int, list[OfferSpec]]:
    """`{"preview_seconds": 120, "offers": [{"kind": "buy", "amount": 499, "currency":
    "EUR"}, {"kind": "pass"}]}` -> (preview seconds, specs); BadRequest naming the field."""
    if not isinstance(body, Mapping):
        raise BadRequest('Send a JSON object: {"preview_seconds": 120, "offers": [...]}.', "")
    raw_offers = body.get("offers")
    if not isinstance(raw_offers, list):
        raise BadRequest("offers must be a list ([] makes the film free).", "offers")
    if len(raw_offers) > MAX_OFFERS:
        raise BadRequest(f"offers may hold at most {MAX_OFFERS} offers.", "offers")
    if "preview_seconds" not in body:
        # The default preview, cut to the film when the film is shorter.
        preview = (
            DEFAULT_PREVIEW_SECONDS
            if duration is None
            else int(min(duration, DEFAULT_PREVIEW_SECONDS))
        )
    else:
        preview = parse_amount(body["preview_seconds"], "preview_seconds", positive=False)
    if duration is not None and preview > duration:
        raise BadRequest(
            f"preview_seconds ({preview}) is longer than the film ({int(duration)} s).",
            "preview_seconds",
        )
    specs: list[OfferSpec] = []
    for number, raw in enumerate(raw_offers):
        where = f"offers[{number}]"
        if not isinstance(raw, Mapping):
            raise BadRequest(f'{where} must be an object like {{"kind": "buy", ...}}.', where)
        kind = raw.get("kind")
        if kind not in KINDS:
            raise BadRequest(
                f"{where}.kind must be one of {', '.join(KINDS)}; got {kind!r}.", f"{where}.kind"
            )
        if any(spec.kind == kind for spec in specs):
            raise BadRequest(f"{where}: a film has at most one {kind} offer.", f"{where}.kind")
        if kind in PRICED:
            price = Money(
                parse_amount(raw.get("amount"), f"{where}.amount"),
                parse_currency(raw.get("currency"), f"{where}.currency"),
            )
            specs.append(OfferSpec(str(kind), price))
        else:
            if "amount" in raw or "currency" in raw:
                raise BadRequest(
                    f"{where}: a {kind} offer has no price of its own.", f"{where}.amount"
                )
            specs.append(OfferSpec(str(kind), None))
    return preview, specs


def parse_channel_price(body: object) -> Money:
    if not isinstance(body, Mapping):
        raise BadRequest('Send a JSON object: {"amount": 500, "currency": "EUR"}.', "")
    return parse_money(body)


def _offer(row: Any) -> Offer:
    price = Money(int(row.amount), row.currency) if row.amount is not None else None
    return Offer(row.id, row.kind, price)


async def load_offers(engine: AsyncEngine, video_id: str, preview_seconds: int) -> VideoOffers:
    query = select(offers).where(offers.c.video_id == video_id).order_by(offers.c.created_at)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    ordered = sorted((_offer(row) for row in rows), key=lambda o: KINDS.index(o.kind))
    return VideoOffers(preview_seconds, tuple(ordered))


async def find_offer(engine: AsyncEngine, offer_id: str) -> tuple[str, Offer] | None:
    """(video id, offer) for an offer id, or None."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(offers).where(offers.c.id == offer_id))).first()
    return (row.video_id, _offer(row)) if row is not None else None


async def replace_offers(
    engine: AsyncEngine, video_id: str, preview_seconds: int, specs: Sequence[OfferSpec]
) -> VideoOffers:
    """Store a film's offers and preview, replacing what it had. Purchases keep their own
    price and terms: changing offers never changes what someone already bought."""
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(delete(offers).where(offers.c.video_id == video_id))
        for spec in specs:
            await conn.execute(
                offers.insert().values(
                    id=new_id(),
                    video_id=video_id,
                    kind=spec.kind,
                    amount=spec.price.amount if spec.price else None,
                    currency=spec.price.currency if spec.price else None,
                    created_at=now,
                )
            )
        await conn.execute(
            videos.update()
            .where(videos.c.id == video_id)
            .values(preview_seconds=preview_seconds, updated_at=now)
        )
    return await load_offers(engine, video_id, preview_seconds)


async def set_channel_plan(engine: AsyncEngine, creator_id: str, price: Money) -> None:
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    statement = insert(channel_plans).values(
        creator_id=creator_id, amount=price.amount, currency=price.currency, updated_at=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=[channel_plans.c.creator_id],
        set_={"amount": price.amount, "currency": price.currency, "updated_at": now},
    )
    async with engine.begin() as conn:
        await conn.execute(statement)


async def channel_plan(engine: AsyncEngine, creator_id: str) -> Money | None:
    query = select(channel_plans).where(channel_plans.c.creator_id == creator_id)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return Money(int(row.amount), row.currency) if row is not None else None
