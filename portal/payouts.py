"""Paying creators: monthly payout runs, their statements, and what a creator has earned.

`run_payouts("2026-05")` closes a period (a calendar month in UTC):

1. The fee of every platform-pass period that ended by the cutoff is shared among the
   creators its subscriber watched (portal/subscriptions.py). A pass period still running at
   the cutoff is shared by the first run after it ends.
2. For each creator and currency, every earnings entry posted before the cutoff and not yet
   paid out is gathered (a pass fee's shares count from the end of its pass period, so a
   fee shared by this run belongs to it). If they add up to more than zero, one posting
   moves that amount from `earnings:<creator>` to `payouts:<creator>`, the entries are
   marked with the new statement, and the statement lists them per film (and per channel /
   pass). If they add up to zero or less (a refund after an earlier payout), nothing is paid
   and they wait for the next run, where they are netted off.
3. The period is recorded as closed. Running it again changes nothing and says so.

The cutoff is the end of the month, or now for the current month: the current month may be
closed early, and what is earned after that goes to the next month's statement. Months that
have not started are refused. Each creator is paid in a transaction of its own that first
locks their earnings balance, so two runs at once (even of different months) never pay an
entry twice, and a run that stops half way is completed by running it again.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from portal.db import (
    begin_write,
    ledger_balances,
    ledger_entries,
    ledger_transactions,
    new_id,
    payout_runs,
    purchases,
    statement_lines,
    statements,
    subscriptions,
    utcnow,
    videos,
)
from portal.errors import ValidationFailed
from portal.ledger import Transaction, earnings, payouts, post, transfer
from portal.money import Money, RevenueSplit, format_amount
from portal.purchases import PURCHASE, REFUND, notify
from portal.subscriptions import ALLOCATION, SUBSCRIPTION, Allocation, allocate_pass_fees

PAYOUT = "payout"
_PERIOD = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")
_EARNINGS_PREFIX = "earnings:"
#: Statement line kinds, in the order a statement lists them.
LINE_KINDS = ("buy", "rent", "refund", "channel", "pass")
_TITLES = {"channel": "Channel subscriptions", "pass": "Platform pass (by watch time)"}
_IN_CHUNK = 500  # transaction ids per IN (...) list when marking entries paid


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """`"2026-05"` -> (2026-05-01 00:00 UTC, 2026-06-01 00:00 UTC)."""
    match = _PERIOD.match(period)
    if not match:
        raise ValidationFailed(
            f"A period is a month written YYYY-MM, like 2026-05; not {period!r}."
        )
    year, month = int(match[1]), int(match[2])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_of(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m}"


@dataclass(frozen=True)
class StatementLine:
    kind: str  # buy | rent | refund | channel | pass
    video_id: str | None
    title: str
    count: int  # postings in this line (sales, refunds, subscriptions, pass fees)
    amount: int  # minor units of the statement's currency; negative for refunds


@dataclass(frozen=True)
class Statement:
    id: str
    creator_id: str
    period: str
    amount: Money
    cutoff: datetime
    transaction_id: str
    created_at: datetime
    lines: tuple[StatementLine, ...] = ()


@dataclass(frozen=True)
class PayoutRun:
    period: str
    cutoff: datetime
    closed_at: datetime
    already_closed: bool
    allocations: list[Allocation] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)

    def report(self) -> list[str]:
        """What the run did, as sentences for the operator."""
        if self.already_closed:
            return [
                f"{self.period} was already closed on {self.closed_at:%Y-%m-%d %H:%M} UTC "
                f"(earnings up to {self.cutoff:%Y-%m-%d %H:%M} UTC); nothing changed."
            ]
        lines = [f"{self.period} closed: earnings up to {self.cutoff:%Y-%m-%d %H:%M} UTC settled."]
        shared = [a for a in self.allocations if not a.unallocated]
        idle = len(self.allocations) - len(shared)
        if self.allocations:
            lines.append(
                f"Shared {len(shared)} pass fee(s) by watch time"
                + (f"; {idle} stay in pass:pool (nothing watched)." if idle else ".")
            )
        for statement in self.statements:
            lines.append(
                f"Paid {statement.amount} to creator {statement.creator_id} "
                f"(statement {statement.id}, {len(statement.lines)} line(s))."
            )
        if not self.statements:
            lines.append("No creator had anything to be paid.")
        return lines


async def run_payouts(
    engine: AsyncEngine,
    period: str,
    *,
    revenue_split: RevenueSplit,
    now: datetime | None = None,
    payout_closed: Callable[[Statement], Awaitable[None]] | None = None,
) -> PayoutRun:
    """Close `period` (YYYY-MM): share pass fees, pay every creator what they are owed, write
    their statements. Idempotent: a closed period is reported, not paid again."""
    now = (now or utcnow()).astimezone(UTC)
    start, end = period_bounds(period)
    if start > now:
        raise ValidationFailed(
            f"{period} has not started yet; it can be closed from {start:%Y-%m-%d}."
        )
    cutoff = min(end, now)
    async with engine.connect() as conn:
        closed = (
            await conn.execute(select(payout_runs).where(payout_runs.c.period == period))
        ).first()
    if closed is not None:
        return PayoutRun(period, closed.cutoff, closed.closed_at, already_closed=True)

    allocations = await allocate_pass_fees(
        engine, ended_by=cutoff, revenue_split=revenue_split, now=now
    )
    paid = []
    for account, currency in await _owed_accounts(engine, cutoff):
        statement = await _pay(engine, account, currency, period, cutoff, now)
        if statement is not None:
            paid.append(statement)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                payout_runs.insert().values(period=period, cutoff=cutoff, closed_at=now)
            )
    except IntegrityError:
        pass  # a run beside this one closed it too; both paid disjoint entries
    for statement in paid:
        await notify(payout_closed, statement)
    return PayoutRun(period, cutoff, now, False, allocations, paid)


def _earned_before(cutoff: datetime) -> ColumnElement[bool]:
    """Postings that belong to a period ending at `cutoff`: those posted before it, and pass
    fees shared for pass periods that ended by then (shared by this very run, after the
    cutoff, when a past month is closed)."""
    return or_(
        ledger_transactions.c.created_at < cutoff,
        and_(
            ledger_transactions.c.kind == ALLOCATION,
            ledger_transactions.c.reference.in_(
                select(subscriptions.c.id).where(subscriptions.c.ends_at <= cutoff)
            ),
        ),
    )


def _unpaid(account: str, currency: str, cutoff: datetime) -> ColumnElement[bool]:
    return and_(
        ledger_entries.c.account == account,
        ledger_entries.c.currency == currency,
        ledger_entries.c.statement_id.is_(None),
        _earned_before(cutoff),
    )


async def _owed_accounts(engine: AsyncEngine, cutoff: datetime) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(ledger_entries.c.account, ledger_entries.c.currency)
            .join(ledger_transactions, ledger_transactions.c.id == ledger_entries.c.transaction_id)
            .where(
                ledger_entries.c.account.startswith(_EARNINGS_PREFIX),
                ledger_entries.c.statement_id.is_(None),
                _earned_before(cutoff),
            )
            .distinct()
            .order_by(ledger_entries.c.account, ledger_entries.c.currency)
        )
        return [(row.account, row.currency) for row in rows]


#: What an earnings entry was for: the posting's kind and, for sales, the film.
_SOURCE = (
    ledger_transactions.c.kind,
    purchases.c.kind.label("sale_kind"),
    purchases.c.video_id,
    videos.c.title,
)
_SOURCE_GROUP = (ledger_transactions.c.kind, purchases.c.kind, purchases.c.video_id, videos.c.title)


def _with_source(query: Any) -> Any:
    return (
        query.join(ledger_transactions, ledger_transactions.c.id == ledger_entries.c.transaction_id)
        .outerjoin(
            purchases,
            and_(
                purchases.c.id == ledger_transactions.c.reference,
                ledger_transactions.c.kind.in_((PURCHASE, REFUND)),
            ),
        )
        .outerjoin(videos, videos.c.id == purchases.c.video_id)
    )


def _line_kind(row: Any) -> str:
    if row.kind == PURCHASE:
        return str(row.sale_kind)
    return {REFUND: "refund", SUBSCRIPTION: "channel", ALLOCATION: "pass"}.get(row.kind, row.kind)


def make_lines(rows: Iterable[Any]) -> tuple[StatementLine, ...]:
    """Rows of (source columns, amount, postings) summed per kind and film, in LINE_KINDS
    order, then by title."""
    totals: dict[tuple[str, str | None], list[Any]] = defaultdict(lambda: [0, 0, ""])
    for row in rows:
        kind = _line_kind(row)
        video_id = row.video_id if kind in ("buy", "rent", "refund") else None
        line = totals[(kind, video_id)]
        line[0] += int(row.amount)
        line[1] += int(row.postings)
        line[2] = _TITLES.get(kind) or row.title or "(a film since deleted)"
    order = {kind: position for position, kind in enumerate(LINE_KINDS)}
    return tuple(
        StatementLine(kind, video_id, title, postings, amount)
        for (kind, video_id), (amount, postings, title) in sorted(
            totals.items(),
            key=lambda item: (order.get(item[0][0], 99), item[1][2], item[0][1] or ""),
        )
    )


async def _pay(
    engine: AsyncEngine, account: str, currency: str, period: str, cutoff: datetime, now: datetime
) -> Statement | None:
    creator_id = account.removeprefix(_EARNINGS_PREFIX)
    try:
        async with begin_write(engine) as conn:
            await _lock_balance(conn, account, currency)
            entries = select(
                ledger_entries.c.transaction_id,
                ledger_entries.c.amount,
                literal(1).label("postings"),
                *_SOURCE,
            )
            rows = (
                await conn.execute(_with_source(entries).where(_unpaid(account, currency, cutoff)))
            ).all()
            owed = sum(row.amount for row in rows)
            if owed <= 0:
                return None  # nothing, or a refund to net off against later earnings
            statement_id = new_id()
            posted = await post(
                conn,
                kind=PAYOUT,
                scope=PAYOUT,
                key=f"{period}:{creator_id}:{currency}",
                entries=transfer(account, payouts(creator_id), Money(owed, currency)),
                reference=statement_id,
                memo=f"payout for {period}",
                now=now,
            )
            await _mark_paid(
                conn, account, currency, [row.transaction_id for row in rows], posted, statement_id
            )
            statement = Statement(
                id=statement_id,
                creator_id=creator_id,
                period=period,
                amount=Money(owed, currency),
                cutoff=cutoff,
                transaction_id=posted.id,
                created_at=now,
                lines=make_lines(rows),
            )
            await _insert_statement(conn, statement)
            return statement
    except IntegrityError:
        # This creator was paid for this period already (a run that stopped half way and
        # was started again with a later cutoff): what came since waits for the next run.
        return None


async def _lock_balance(conn: AsyncConnection, account: str, currency: str) -> None:
    """Serialise payouts of one account (SQLite's BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(ledger_balances.c.balance)
            .where(ledger_balances.c.account == account, ledger_balances.c.currency == currency)
            .with_for_update()
        )


async def _mark_paid(
    conn: AsyncConnection,
    account: str,
    currency: str,
    transaction_ids: Sequence[str],
    payout: Transaction,
    statement_id: str,
) -> None:
    ids = sorted(set(transaction_ids))
    for start in range(0, len(ids), _IN_CHUNK):
        await conn.execute(
            update(ledger_entries)
            .where(
                ledger_entries.c.account == account,
                ledger_entries.c.currency == currency,
                ledger_entries.c.statement_id.is_(None),
                ledger_entries.c.transaction_id.in_(ids[start : start + _IN_CHUNK]),
            )
            .values(statement_id=statement_id)
        )
    await conn.execute(
        update(ledger_entries)
        .where(ledger_entries.c.transaction_id == payout.id)
        .values(statement_id=statement_id)
    )


async def _insert_statement(conn: AsyncConnection, statement: Statement) -> None:
    await conn.execute(
        statements.insert().values(
            id=statement.id,
            creator_id=statement.creator_id,
            period=statement.period,
            currency=statement.amount.currency,
            amount=statement.amount.amount,
            cutoff=statement.cutoff,
            transaction_id=statement.transaction_id,
            created_at=statement.created_at,
        )
    )
    if statement.lines:
        await conn.execute(
            statement_lines.insert(),
            [
                {
                    "statement_id": statement.id,
                    "line": number,
                    "kind": line.kind,
                    "video_id": line.video_id,
                    "title": line.title[:200],
                    "count": line.count,
                    "amount": line.amount,
                }
                for number, line in enumerate(statement.lines)
            ],
        )


# -- reading statements and earnings ----------------------------------------------------------


async def creator_statements(engine: AsyncEngine, creator_id: str) -> list[Statement]:
    """The creator's statements, newest period first, with their lines."""
    async with engine.connect() as conn:
        heads = (
            await conn.execute(
                select(statements)
                .where(statements.c.creator_id == creator_id)
                .order_by(statements.c.period.desc(), statements.c.currency)
            )
        ).all()
        lines: dict[str, list[StatementLine]] = defaultdict(list)
        if heads:
            rows = await conn.execute(
                select(statement_lines)
                .where(statement_lines.c.statement_id.in_([h.id for h in heads]))
                .order_by(statement_lines.c.statement_id, statement_lines.c.line)
            )
            for row in rows.mappings():  # mappings: `count` would be the tuple method
                lines[row["statement_id"]].append(
                    StatementLine(
                        row["kind"], row["video_id"], row["title"], row["count"], row["amount"]
                    )
                )
    return [
        Statement(
            id=head.id,
            creator_id=head.creator_id,
            period=head.period,
            amount=Money(head.amount, head.currency),
            cutoff=head.cutoff,
            transaction_id=head.transaction_id,
            created_at=head.created_at,
            lines=tuple(lines[head.id]),
        )
        for head in heads
    ]


def statement_csv(statement: Statement) -> str:
    """The statement as CSV: one row per line, amounts as decimals of the currency."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    currency = statement.amount.currency
    writer.writerow(["statement", "creator", "period", "currency", "kind", "video_id", "title",
                     "count", "amount"])  # fmt: skip
    head = [statement.id, statement.creator_id, statement.period, currency]
    for line in statement.lines:
        writer.writerow(
            [*head, line.kind, line.video_id or "", _csv_safe(line.title), line.count,
             format_amount(line.amount, currency)]
        )  # fmt: skip
    writer.writerow([*head, "total", "", "", "", format_amount(statement.amount.amount, currency)])
    return out.getvalue()


def _csv_safe(text: str) -> str:
    """Titles are written by creators: one starting with = + - @ would be a formula to a
    spreadsheet opening the file."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@dataclass(frozen=True)
class CurrencyEarnings:
    currency: str
    earned: int  # net of refunds
    paid: int  # sent out in payouts
    payable: int  # earned - paid: what the next payout would send (if positive)


@dataclass(frozen=True)
class PeriodEarnings:
    period: str  # YYYY-MM, by when the money was posted
    currency: str
    earned: int
    paid: int


@dataclass(frozen=True)
class Earnings:
    totals: list[CurrencyEarnings]
    sources: list[tuple[str, StatementLine]]  # (currency, per film / channel / pass)
    periods: list[PeriodEarnings]


def _month(conn: AsyncConnection, column: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM")
    # SQLite keeps UTC datetimes as ISO text: the month is its first seven characters.
    return func.substr(column, 1, 7)


async def creator_earnings(engine: AsyncEngine, creator_id: str) -> Earnings:
    """What the creator earned and was paid, per currency, per film and per month."""
    account = earnings(creator_id)
    async with engine.connect() as conn:
        per_source = select(
            ledger_entries.c.currency,
            func.sum(ledger_entries.c.amount).label("amount"),
            func.count().label("postings"),
            *_SOURCE,
        )
        rows = (
            await conn.execute(
                _with_source(per_source)
                .where(ledger_entries.c.account == account)
                .group_by(ledger_entries.c.currency, *_SOURCE_GROUP)
            )
        ).all()
        month = _month(conn, ledger_transactions.c.created_at).label("month")
        monthly = (
            await conn.execute(
                select(
                    month,
                    ledger_entries.c.currency,
                    ledger_transactions.c.kind,
                    func.sum(ledger_entries.c.amount).label("amount"),
                )
                .join(
                    ledger_transactions, ledger_transactions.c.id == ledger_entries.c.transaction_id
                )
                .where(ledger_entries.c.account == account)
                .group_by(month, ledger_entries.c.currency, ledger_transactions.c.kind)
            )
        ).all()
    earned: dict[str, int] = defaultdict(int)
    paid: dict[str, int] = defaultdict(int)
    by_currency: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        if row.kind == PAYOUT:
            paid[row.currency] -= int(row.amount)
        else:
            earned[row.currency] += int(row.amount)
            by_currency[row.currency].append(row)
    periods: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in monthly:
        totals = periods[(row.month, row.currency)]
        if row.kind == PAYOUT:
            totals[1] -= int(row.amount)
        else:
            totals[0] += int(row.amount)
    currencies = sorted(set(earned) | set(paid))
    return Earnings(
        totals=[CurrencyEarnings(c, earned[c], paid[c], earned[c] - paid[c]) for c in currencies],
        sources=[(c, line) for c in currencies for line in make_lines(by_currency[c])],
        periods=[
            PeriodEarnings(month, currency, totals[0], totals[1])
            for (month, currency), totals in sorted(periods.items(), reverse=True)
        ],
    )
