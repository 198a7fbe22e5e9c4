"""The double-entry ledger: every movement of money is a balanced, idempotent posting.

A posting (`ledger_transactions` row) has entries (`ledger_entries`) whose signed amounts sum
to zero in each currency: money only ever moves between accounts, it is never made or lost.
`ledger_balances` keeps each account's balance, updated in the posting's own database
transaction, so a balance is always the sum of its entries (`verify` checks it).

Accounts are named by the functions below. Sign convention: a positive balance is value held
by or owed to the account.

| account | what | balance |
| --- | --- | --- |
| `wallet:<user>` | a viewer's prepaid money | never below zero (a floor) |
| `earnings:<creator>` | what the platform owes a creator | may go negative after a refund |
| `platform:revenue` | the platform's share | |
| `pass:pool` | platform-pass fees not yet shared out | never below zero (a floor) |
| `funding:<provider>` | money that came in from outside | negative: what came in |
| `payouts:<creator>` | money sent out to a creator | positive: what went out |

Concurrency: idempotency is the UNIQUE (scope, key) constraint on `ledger_transactions`, not
a read-then-write check, so two processes retrying one request at the same instant cannot
both post (the second waits on the index entry and then fails, and `run_once` answers it
with the first posting). Floors are one conditional UPDATE on the balance row
(`balance + delta >= 0`), which also locks the row: twenty purchases racing for one wallet
are serialised by it and the ones that no longer fit are refused. Balance rows are updated in
sorted order, so two postings never wait on each other in a cycle.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from portal.db import (
    begin_write,
    ledger_balances,
    ledger_entries,
    ledger_transactions,
    new_id,
    utcnow,
)
from portal.errors import Conflict, InsufficientFunds
from portal.money import CURRENCIES, Money

PLATFORM_REVENUE = "platform:revenue"
PASS_POOL = "pass:pool"  # noqa: S105 - an account name, not a password
_ACCOUNT = re.compile(
    r"^(?:(?:wallet|earnings|funding|payouts):[A-Za-z0-9_.-]{1,64}|platform:revenue|pass:pool)$"
)
#: Accounts that may never go below zero.
FLOORED = ("wallet:", "pass:")


def wallet(user_id: str) -> str:
    return f"wallet:{user_id}"


def earnings(creator_id: str) -> str:
    """What the platform owes the creator (payable); paid out to `payouts:<creator>`."""
    return f"earnings:{creator_id}"


def funding(provider: str) -> str:
    """Money brought in from outside through a payment provider."""
    return f"funding:{provider}"


def payouts(creator_id: str) -> str:
    """Money sent out to the creator."""
    return f"payouts:{creator_id}"


class UnbalancedPosting(ValueError):
    """A programming error: entries that do not sum to zero, or name no known account."""


@dataclass(frozen=True)
class Entry:
    account: str
    amount: int  # signed minor units: + into the account, - out of it
    currency: str


def transfer(source: str, target: str, money: Money) -> list[Entry]:
    """Two entries moving `money` from `source` to `target`."""
    return [
        Entry(source, -money.amount, money.currency),
        Entry(target, money.amount, money.currency),
    ]


@dataclass(frozen=True)
class Transaction:
    id: str
    kind: str
    scope: str
    key: str
    user_id: str | None
    reference: str | None
    memo: str
    created_at: datetime
    entries: tuple[Entry, ...] = field(default=())


def check_balanced(entries: Iterable[Entry]) -> list[Entry]:
    """The entries without zero amounts, or UnbalancedPosting when they cannot be posted."""
    kept = [e for e in entries if e.amount != 0]
    if not kept:
        raise UnbalancedPosting("a posting needs at least one non-zero entry")
    sums: dict[str, int] = defaultdict(int)
    for entry in kept:
        if type(entry.amount) is not int:
            raise UnbalancedPosting(f"{entry.account}: amounts are integers, not {entry.amount!r}")
        if entry.currency not in CURRENCIES:
            raise UnbalancedPosting(f"{entry.account}: unknown currency {entry.currency!r}")
        if not _ACCOUNT.match(entry.account):
            raise UnbalancedPosting(f"{entry.account!r} is not a ledger account")
        sums[entry.currency] += entry.amount
    off = {currency: total for currency, total in sums.items() if total != 0}
    if off:
        raise UnbalancedPosting(f"entries must sum to zero per currency; they sum to {off}")
    return kept


async def post(
    conn: AsyncConnection,
    *,
    kind: str,
    scope: str,
    key: str,
    entries: Iterable[Entry],
    user_id: str | None = None,
    reference: str | None = None,
    memo: str = "",
    now: datetime | None = None,
) -> Transaction:
    """Post balanced `entries` inside the caller's database transaction.

    The (scope, key) row is inserted first, so a concurrent posting with the same key blocks
    on it and then fails with IntegrityError when this one commits; call it through
    `run_once` to turn that into "here is the first posting". A floored account that would
    go below zero raises InsufficientFunds, and the caller's transaction must roll back.
    """
    kept = check_balanced(entries)
    now = now or utcnow()
    transaction = Transaction(
        new_id(), kind, scope, key, user_id, reference, memo, now, tuple(kept)
    )
    await conn.execute(
        ledger_transactions.insert().values(
            id=transaction.id,
            kind=kind,
            idempotency_scope=scope,
            idempotency_key=key,
            user_id=user_id,
            reference=reference,
            memo=memo,
            created_at=now,
        )
    )
    await conn.execute(
        ledger_entries.insert(),
        [
            {
                "transaction_id": transaction.id,
                "line": line,
                "account": entry.account,
                "currency": entry.currency,
                "amount": entry.amount,
            }
            for line, entry in enumerate(kept)
        ],
    )
    deltas: dict[tuple[str, str], int] = defaultdict(int)
    for entry in kept:
        deltas[(entry.account, entry.currency)] += entry.amount
    for (account, currency), delta in sorted(deltas.items()):
        if delta != 0:
            await _apply(conn, account, currency, delta, now)
    return transaction


async def _apply(
    conn: AsyncConnection, account: str, currency: str, delta: int, now: datetime
) -> None:
    row = (ledger_balances.c.account == account) & (ledger_balances.c.currency == currency)
    if delta < 0 and account.startswith(FLOORED):
        # One statement checks and debits: the row lock it takes makes racing spenders wait
        # for each other, and each sees the balance the previous one left.
        result = await conn.execute(
            update(ledger_balances)
            .where(row, ledger_balances.c.balance + delta >= 0)
            .values(balance=ledger_balances.c.balance + delta, updated_at=now)
        )
        if result.rowcount != 1:
            held = (await conn.execute(select(ledger_balances.c.balance).where(row))).scalar()
            raise InsufficientFunds(_short_message(account, Money(held or 0, currency), -delta))
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(ledger_balances).values(
        account=account, currency=currency, balance=delta, updated_at=now
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[ledger_balances.c.account, ledger_balances.c.currency],
            set_={"balance": ledger_balances.c.balance + delta, "updated_at": now},
        )
    )


def _short_message(account: str, held: Money, needed: int) -> str:
    price = Money(needed, held.currency)
    if account.startswith("wallet:"):
        missing = Money(needed - max(held.amount, 0), held.currency)
        return (
            f"Your wallet holds {held} and this costs {price}; "
            f"top up at least {missing} and try again."
        )
    return f"The account {account} holds {held}, less than the {price} it would have to pay."


# -- reading --------------------------------------------------------------------------------


async def find_transaction(conn: AsyncConnection, scope: str, key: str) -> Transaction | None:
    """The posting made under (scope, key), if any."""
    return await _load(
        conn,
        (ledger_transactions.c.idempotency_scope == scope)
        & (ledger_transactions.c.idempotency_key == key),
    )


async def get_transaction(conn: AsyncConnection, transaction_id: str) -> Transaction | None:
    return await _load(conn, ledger_transactions.c.id == transaction_id)


async def _load(conn: AsyncConnection, where: ColumnElement[bool]) -> Transaction | None:
    row = (await conn.execute(select(ledger_transactions).where(where))).mappings().first()
    if row is None:
        return None
    entries = (
        await conn.execute(
            select(ledger_entries.c.account, ledger_entries.c.amount, ledger_entries.c.currency)
            .where(ledger_entries.c.transaction_id == row["id"])
            .order_by(ledger_entries.c.line)
        )
    ).all()
    return Transaction(
        id=row["id"],
        kind=row["kind"],
        scope=row["idempotency_scope"],
        key=row["idempotency_key"],
        user_id=row["user_id"],
        reference=row["reference"],
        memo=row["memo"],
        created_at=row["created_at"],
        entries=tuple(Entry(e.account, e.amount, e.currency) for e in entries),
    )


async def balance(conn: AsyncConnection, account: str, currency: str) -> int:
    """The account's balance in minor units of `currency` (0 for an account never used)."""
    held = (
        await conn.execute(
            select(ledger_balances.c.balance).where(
                ledger_balances.c.account == account, ledger_balances.c.currency == currency
            )
        )
    ).scalar()
    return int(held or 0)


async def balances(conn: AsyncConnection, account: str) -> dict[str, int]:
    """Every currency the account has ever held, with its balance."""
    rows = await conn.execute(
        select(ledger_balances.c.currency, ledger_balances.c.balance)
        .where(ledger_balances.c.account == account)
        .order_by(ledger_balances.c.currency)
    )
    return {row.currency: int(row.balance) for row in rows}


# -- posting once ----------------------------------------------------------------------------


def user_scope(user_id: str) -> str:
    """Idempotency keys come from clients, so they are unique per user, not globally."""
    return f"user:{user_id}"


_REQUESTS = {
    "top_up": "a wallet top-up",
    "purchase": "a purchase",
    "subscription": "a subscription",
}


def key_reused(key: str, kind: str) -> Conflict:
    earlier = _REQUESTS.get(kind, f"a {kind}")
    return Conflict(
        f"The Idempotency-Key {key!r} was already used for a different request ({earlier}); "
        "use a new key for each new request."
    )


T = TypeVar("T")


async def run_once(
    engine: AsyncEngine,
    scope: str,
    key: str,
    work: Callable[[AsyncConnection], Awaitable[T]],
    replay: Callable[[AsyncConnection, Transaction], Awaitable[T]],
) -> tuple[T, bool]:
    """Do `work` (which posts under (scope, key) first thing) in one write transaction, unless
    a posting with this key exists: then answer `replay(conn, first_posting)` instead.

    Returns (result, created). `replay` should refuse (Conflict) a key reused for a different
    request. The fast path reads before writing only to save work; correctness comes from the
    unique constraint: a racing duplicate fails its insert and is answered by `replay` too.
    """
    async with engine.connect() as conn:
        found = await find_transaction(conn, scope, key)
        if found is not None:
            return await replay(conn, found), False
    try:
        async with begin_write(engine) as conn:
            return await work(conn), True
    except IntegrityError:
        async with engine.connect() as conn:
            found = await find_transaction(conn, scope, key)
            if found is None:
                raise  # another constraint failed, not our key
            return await replay(conn, found), False


async def post_once(
    engine: AsyncEngine,
    *,
    kind: str,
    scope: str,
    key: str,
    entries: Iterable[Entry],
    user_id: str | None = None,
    reference: str | None = None,
    memo: str = "",
) -> tuple[Transaction, bool]:
    """`post` in a transaction of its own, idempotent by (scope, key): (posting, created)."""
    kept = list(entries)

    async def work(conn: AsyncConnection) -> Transaction:
        return await post(
            conn,
            kind=kind,
            scope=scope,
            key=key,
            entries=kept,
            user_id=user_id,
            reference=reference,
            memo=memo,
        )

    async def replay(conn: AsyncConnection, found: Transaction) -> Transaction:
        return found

    return await run_once(engine, scope, key, work, replay)


# -- auditing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Something in the books that does not add up."""

    message: str
    transaction_id: str | None = None
    account: str | None = None
    currency: str | None = None
    entries: tuple[Entry, ...] = ()  # of an unbalanced posting


async def verify(engine: AsyncEngine) -> list[Problem]:
    """Every posting that does not balance, every balance that is not the sum of its
    account's entries, and every floored account below zero. Empty: the books are right."""
    problems: list[Problem] = []
    async with engine.connect() as conn:
        total = func.sum(ledger_entries.c.amount)
        unbalanced = await conn.execute(
            select(ledger_entries.c.transaction_id, ledger_entries.c.currency, total)
            .group_by(ledger_entries.c.transaction_id, ledger_entries.c.currency)
            .having(total != 0)
            .order_by(ledger_entries.c.transaction_id)
        )
        for tx_id, currency, off in unbalanced.all():
            posting = await get_transaction(conn, tx_id)
            problems.append(
                Problem(
                    f"posting {tx_id} does not balance: its {currency} entries sum to {off}",
                    transaction_id=tx_id,
                    currency=currency,
                    entries=posting.entries if posting is not None else (),
                )
            )
        sums = {
            (row.account, row.currency): int(row.total)
            for row in await conn.execute(
                select(
                    ledger_entries.c.account,
                    ledger_entries.c.currency,
                    total.label("total"),
                ).group_by(ledger_entries.c.account, ledger_entries.c.currency)
            )
        }
        kept = {
            (row.account, row.currency): int(row.balance)
            for row in await conn.execute(select(ledger_balances))
        }
    for account, currency in sorted(set(sums) | set(kept)):
        entered = sums.get((account, currency), 0)
        held = kept.get((account, currency), 0)
        if entered != held:
            problems.append(
                Problem(
                    f"{account} holds {held} {currency} but its entries sum to {entered}",
                    account=account,
                    currency=currency,
                )
            )
        if held < 0 and account.startswith(FLOORED):
            problems.append(
                Problem(
                    f"{account} is below zero: {held} {currency}",
                    account=account,
                    currency=currency,
                )
            )
    return problems
