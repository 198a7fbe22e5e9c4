"""Money values, strict parsing of JSON money fields, and the revenue split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.errors import BadRequest, ValidationFailed
from portal.money import (
    CURRENCIES,
    MAX_AMOUNT,
    Money,
    ShareSplit,
    checked_split,
    format_amount,
    parse_money,
    split,
)


def test_split_gives_the_creator_the_rounded_down_share_and_the_platform_the_rest():
    assert split(499, 9000) == (449, 50)
    assert split(1000, 9000) == (900, 100)
    assert split(1, 9000) == (0, 1)
    assert split(0, 9000) == (0, 0)
    assert split(999, 10_000) == (999, 0)
    assert split(999, 0) == (0, 999)


@given(amount=st.integers(0, MAX_AMOUNT), bps=st.integers(0, 10_000))
def test_split_never_makes_or_loses_a_minor_unit(amount, bps):
    creator, platform = split(amount, bps)
    assert creator + platform == amount
    assert creator >= 0
    assert platform >= 0
    # Rounded down: the creator is never paid more than their exact share.
    assert creator * 10_000 <= amount * bps < (creator + 1) * 10_000


def test_split_refuses_shares_outside_zero_to_a_hundred_percent():
    with pytest.raises(ValueError):
        split(100, 10_001)
    with pytest.raises(ValueError):
        split(100, -1)


@pytest.mark.anyio
async def test_a_plugged_in_split_may_answer_an_awaitable_but_may_not_make_money():
    def generous(money, *, creator_id, kind):
        return money.amount, 1

    async def from_a_plugin(money, *, creator_id, kind):
        return 400, 99

    with pytest.raises(ValueError, match="add up to the amount"):
        await checked_split(generous, Money(499, "EUR"), creator_id="c", kind="buy")
    assert await checked_split(from_a_plugin, Money(499, "EUR"), creator_id="c", kind="buy") == (
        400,
        99,
    )
    assert await checked_split(ShareSplit(9000), Money(499, "EUR"), creator_id="c", kind="buy") == (
        449,
        50,
    )


def test_minor_units_are_formatted_with_the_currency_exponent():
    assert format_amount(499, "EUR") == "4.99"
    assert format_amount(5, "EUR") == "0.05"
    assert format_amount(-1050, "USD") == "-10.50"
    assert format_amount(500, "JPY") == "500"
    assert str(Money(999, "EUR")) == "9.99 EUR"
    assert CURRENCIES["JPY"] == 0


def test_money_refuses_floats_and_unknown_currencies():
    with pytest.raises(TypeError):
        Money(4.99, "EUR")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "EUR")
    with pytest.raises(ValueError):
        Money(499, "XXX")


def test_parse_money_accepts_an_integer_of_minor_units():
    assert parse_money({"amount": 499, "currency": "EUR"}) == Money(499, "EUR")
    assert parse_money({"amount": 0, "currency": "JPY"}, positive=False) == Money(0, "JPY")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 4.99, "currency": "EUR"}, "amount"),
        ({"amount": 499.0, "currency": "EUR"}, "amount"),
        ({"amount": "499", "currency": "EUR"}, "amount"),
        ({"amount": True, "currency": "EUR"}, "amount"),
        ({"amount": None, "currency": "EUR"}, "amount"),
        ({"currency": "EUR"}, "amount"),
        ({"amount": 0, "currency": "EUR"}, "amount"),
        ({"amount": -5, "currency": "EUR"}, "amount"),
        ({"amount": MAX_AMOUNT, "currency": "EUR"}, "amount"),
        ({"amount": 499, "currency": "eur"}, "currency"),
        ({"amount": 499, "currency": "XTS"}, "currency"),
        ({"amount": 499, "currency": 978}, "currency"),
        ({"amount": 499}, "currency"),
    ],
)
def test_parse_money_refuses_anything_but_a_bounded_integer_and_a_known_currency(body, field):
    with pytest.raises(BadRequest) as caught:
        parse_money(body)
    assert caught.value.field == field
    assert caught.value.status_code == 400
    assert field in caught.value.message
    # Still a validation failure for code that catches those.
    assert isinstance(caught.value, ValidationFailed)
