"""Money: integer minor units of an ISO 4217 currency, strict parsing, and the revenue split.

No floats anywhere near money: 4.99 EUR is `Money(499, "EUR")`, 500 JPY is `Money(500, "JPY")`
(the yen has no minor unit). Amounts from JSON must already be integers in minor units; a
float, a string or a bool is refused rather than guessed at, because `4.99` and `"4.99"` are
exactly the inputs that lose a cent somewhere.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from portal.errors import BadRequest

#: ISO 4217 codes we accept, with their minor-unit exponents (cents: 2, yen: 0).
CURRENCIES: dict[str, int] = {
    "EUR": 2,
    "USD": 2,
    "GBP": 2,
    "CHF": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "HUF": 2,
    "RON": 2,
    "ISK": 0,
    "JPY": 0,
    "KRW": 0,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "BRL": 2,
    "MXN": 2,
    "INR": 2,
    "ZAR": 2,
    "SGD": 2,
    "HKD": 2,
}

#: Largest amount accepted in minor units (10 billion euros): bounds arithmetic and typos.
MAX_AMOUNT = 10**12
#: The creator's share is given in basis points: 9000 bps is 90%.
FULL_SHARE_BPS = 10_000


@dataclass(frozen=True)
class Money:
    """An amount in minor units of `currency`. Negative amounts are allowed (a balance can be
    owed); what a client may send is decided by `parse_money`."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount) is not int:
            raise TypeError(f"Money amounts are integers of minor units, not {self.amount!r}")
        if self.currency not in CURRENCIES:
            raise ValueError(f"{self.currency!r} is not a currency we handle")

    def __str__(self) -> str:
        return f"{format_amount(self.amount, self.currency)} {self.currency}"

    def as_json(self) -> dict[str, Any]:
        return {"amount": self.amount, "currency": self.currency}


def format_amount(amount: int, currency: str) -> str:
    """`499, "EUR"` -> `"4.99"`; `500, "JPY"` -> `"500"`. Integer arithmetic only."""
    exponent = CURRENCIES[currency]
    sign = "-" if amount < 0 else ""
    whole, minor = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole}.{minor:0{exponent}d}" if exponent else f"{sign}{whole}"


def parse_currency(value: object, field: str = "currency") -> str:
    if not isinstance(value, str) or value not in CURRENCIES:
        raise BadRequest(
            f"{field} must be an ISO 4217 code in capitals, one of {', '.join(CURRENCIES)}; "
            f"got {value!r}.",
            field=field,
        )
    return value


def parse_amount(value: object, field: str = "amount", *, positive: bool = True) -> int:
    """An amount in minor units from JSON: an integer (not a bool, float or string), at least 1
    (or 0 when `positive` is false) and below MAX_AMOUNT."""
    # bool is a subclass of int: `true` must not become 1 cent.
    if type(value) is not int:
        raise BadRequest(
            f"{field} must be a whole number of minor units (cents: 4.99 EUR is 499), "
            f"got {value!r}.",
            field=field,
        )
    lowest = 1 if positive else 0
    if value < lowest:
        raise BadRequest(f"{field} must be at least {lowest}, got {value}.", field=field)
    if value >= MAX_AMOUNT:
        raise BadRequest(f"{field} must be below {MAX_AMOUNT}, got {value}.", field=field)
    return value


def parse_money(
    body: Mapping[str, object],
    *,
    amount_field: str = "amount",
    currency_field: str = "currency",
    positive: bool = True,
) -> Money:
    """`{"amount": 499, "currency": "EUR"}` -> `Money(499, "EUR")`, or BadRequest naming the
    field that is wrong."""
    amount = parse_amount(body.get(amount_field), amount_field, positive=positive)
    currency = parse_currency(body.get(currency_field), currency_field)
    return Money(amount, currency)


def split(amount: int, creator_bps: int) -> tuple[int, int]:
    """(creator, platform) shares of `amount`: the creator gets `creator_bps` basis points
    rounded down to the minor unit, the platform the rest, so the two always add up to
    `amount` exactly. 499 at 9000 bps -> (449, 50)."""
    if not 0 <= creator_bps <= FULL_SHARE_BPS:
        raise ValueError(f"creator share must be 0..{FULL_SHARE_BPS} bps, not {creator_bps}")
    if amount < 0:
        raise ValueError("only non-negative amounts are split")
    creator = amount * creator_bps // FULL_SHARE_BPS
    return creator, amount - creator


class RevenueSplit(Protocol):
    """Decides how a sale is shared: (creator, platform) in minor units of `money`, or an
    awaitable of it (a plugin hook may answer either).

    `kind` is what was sold (buy, rent, channel, pass); the licensing hooks may pass a
    function that gives some creators or kinds another share. The answer is checked by
    `checked_split`: two non-negative integers that add up to the amount."""

    def __call__(
        self, money: Money, *, creator_id: str, kind: str
    ) -> tuple[int, int] | Awaitable[tuple[int, int]]: ...


@dataclass(frozen=True)
class ShareSplit:
    """The default RevenueSplit: the same share for everyone (`MEGAMOVIE_CREATOR_SHARE_BPS`)."""

    creator_bps: int = 9000

    def __call__(self, money: Money, *, creator_id: str, kind: str) -> tuple[int, int]:
        return split(money.amount, self.creator_bps)


async def checked_split(
    revenue_split: RevenueSplit, money: Money, *, creator_id: str, kind: str
) -> tuple[int, int]:
    """Ask a (possibly plugged-in) split and refuse any answer that creates or loses money."""
    answer = revenue_split(money, creator_id=creator_id, kind=kind)
    shares: Any = await answer if inspect.isawaitable(answer) else answer
    if (
        not isinstance(shares, tuple | list)
        or len(shares) != 2
        or type(shares[0]) is not int
        or type(shares[1]) is not int
        or shares[0] < 0
        or shares[1] < 0
        or shares[0] + shares[1] != money.amount
    ):
        raise ValueError(
            f"a revenue split answered {shares!r} for {money}: it must be two non-negative "
            "integers that add up to the amount"
        )
    return shares[0], shares[1]


R = TypeVar("R")


def from_price_row(record_type: type[R], row: Any) -> R:
    """A dataclass record from a table row: its fields by name, `price` from the row's
    `amount` and `currency` (the inverse of `price_columns`)."""
    values: dict[str, Any] = {
        f.name: getattr(row, f.name)
        for f in dataclasses.fields(record_type)  # type: ignore[arg-type]
        if f.name != "price"
    }
    values["price"] = Money(row.amount, row.currency)
    return cast(Callable[..., R], record_type)(**values)


def price_columns(record: Any) -> dict[str, Any]:
    """A dataclass record's fields as table columns, its `price` as `amount` and `currency`
    (the shape of the purchases and subscriptions tables)."""
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    price: Money = values.pop("price")
    return {**values, "amount": price.amount, "currency": price.currency}
