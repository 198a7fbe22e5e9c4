"""Catalog queries at scale: the portal's `list_videos` against the bare driver, same run.

    .venv/bin/python benchmarks/catalog.py [--videos 100000] [--seconds 2] [--rounds 3]
        [--databases sqlite,postgres]

Fills a fresh database (SQLite in a temp dir; PostgreSQL in a scratch database on
127.0.0.1:5432, dropped afterwards) with `--videos` ready films from 200 creators, their text
drawn from a 40-word vocabulary, so that every word is in about half the films: a search for
two of them ("river night") matches a quarter of the catalog, the worst case for a search.
Then it times catalog pages each way:

- ours: `portal.catalog.list_videos`, as the pages and /api/videos call it (SQLAlchemy Core,
  the async driver, building the page objects);
- the peer: the very SQL statements `list_videos` ran (captured, with their parameters),
  run through the bare driver (the standard library's `sqlite3`; `asyncpg` on one
  connection) and fetched, nothing else.

So "ours / bare" is the cost of our layers on the same query shape, and the latency columns
are the query shape itself. Rounds alternate ours and the peer so drift on the machine hits
both alike; it prints the median q/s over the rounds and p50/p99 latency over every call.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# This checkout, or MM_BENCH_ROOT: the same benchmark on another (say, a worktree of main).
sys.path.insert(0, os.environ.get("MM_BENCH_ROOT") or str(Path(__file__).resolve().parent.parent))

import portal.catalog
from portal.catalog import CatalogPage, list_videos
from portal.db import create_engine, new_id, users, utcnow, videos
from portal.migrations import upgrade

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
WORDS = (
    "harbour night train summer river mountain city rain garden winter light storm desert "
    "island forest ocean road story journey dance music kitchen market festival silent "
    "golden blue red green lost found home far away north south east west morning evening"
).split()
TAGS = "drama comedy documentary nature travel music animation short horror family".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


async def fill(engine: AsyncEngine, count: int, creators: int, rng: random.Random) -> None:
    now = utcnow()
    creator_ids = [new_id() for _ in range(creators)]
    async with engine.begin() as conn:
        await conn.execute(
            users.insert(),
            [
                {
                    "id": cid,
                    "email": f"{cid}@example.test",
                    "display_name": f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}",
                    "password_hash": "!",
                    "role": "creator",
                    "created_at": now,
                }
                for cid in creator_ids
            ],
        )
        batch = []
        for i in range(count):
            batch.append(
                {
                    "id": new_id(),
                    "creator_id": rng.choice(creator_ids),
                    "title": sentence(rng, 3).title(),
                    "description": sentence(rng, 25),
                    "tags": " ".join(rng.sample(TAGS, 2)),
                    "status": "ready",
                    "duration": rng.uniform(30, 7200),
                    "views": rng.randint(0, 100_000),
                    "created_at": now,
                    "updated_at": now,
                    # Published in order: the oldest film first.
                    "ready_at": now - timedelta(seconds=count - i),
                }
            )
            if len(batch) == 10_000:
                await conn.execute(videos.insert(), batch)
                batch = []
        if batch:
            await conn.execute(videos.insert(), batch)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.exec_driver_sql("COMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE videos")


class Capture:
    """Records the statements `list_videos` runs (SQL and parameters, as the driver gets
    them), to replay them through the bare driver."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.on = False
        capture = self
        reader = getattr(portal.catalog, "_Reader", None)
        if reader is None:  # a checkout whose catalog runs through SQLAlchemy's cursor
            event.listen(engine.sync_engine, "before_cursor_execute", self._record)
            return
        original = reader.fetch

        async def fetch(self: Any, query: Any, values: dict[str, Any], **kw: Any) -> Any:
            if capture.on:
                capture.statements.append((query.sql, query.params(values)))
            return await original(self, query, values, **kw)

        reader.fetch = fetch

    def _record(self, _conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if self.on:
            self.statements.append((statement, params))

    async def run(self, call: Callable[[], Awaitable[CatalogPage]]) -> list[tuple[str, Any]]:
        self.statements, self.on = [], True
        try:
            await call()
        finally:
            self.on = False
        return self.statements


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(fn: Callable[[], Awaitable[object]], seconds: float, times: list[float]) -> float:
    """Calls per second over `seconds`; every call's latency is added to `times`."""
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        began = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - began)
        done += 1
    return done / elapsed


async def bench_database(name: str, url: str, dsn: str | None, args: argparse.Namespace) -> None:
    engine = create_engine(url)
    await upgrade(engine)
    started = time.perf_counter()
    await fill(engine, args.videos, 200, random.Random(7))
    print(f"\n{name}: {args.videos:,} films inserted in {time.perf_counter() - started:.0f} s")
    capture = Capture(engine)
    deep: dict[str, Any] = {"sort": "newest", "page": args.deep_pages}
    if "after" in inspect.signature(list_videos).parameters:
        first = await list_videos(engine, sort="newest")
        cursor = first.next_cursor
        for _ in range(args.deep_pages - 2):  # follow "next" to a page deep in the catalog
            cursor = (await list_videos(engine, sort="newest", after=cursor)).next_cursor
        deep = {"sort": "newest", "after": cursor}
    cases: dict[str, dict[str, Any]] = {
        "search 'river night'": {"q": "river night"},
        "search 'river night', popular": {"q": "river night", "sort": "popular"},
        "search 'zebra' (no match)": {"q": "zebra"},
        "newest, page 1": {"sort": "newest"},
        "most watched, page 1": {"sort": "popular"},
        f"newest, page {args.deep_pages}": deep,
    }
    if dsn is None:
        peer_sqlite = sqlite3.connect(url.partition(":///")[2])
    else:
        import asyncpg

        peer_pg = await asyncpg.connect(dsn)
    print(
        f"{'query':<34} {'ours q/s':>9} {'bare q/s':>9} {'ours/bare':>9} "
        f"{'ours p50':>9} {'ours p99':>9} {'bare p99':>9}  (ms)"
    )
    for label, kwargs in cases.items():

        async def ours(kwargs: dict[str, Any] = kwargs) -> object:
            return await list_videos(engine, **kwargs)

        statements = await capture.run(ours)
        if dsn is None:

            async def bare(statements: list[tuple[str, Any]] = statements) -> object:
                return [peer_sqlite.execute(s, p).fetchall() for s, p in statements]
        else:

            async def bare(statements: list[tuple[str, Any]] = statements) -> object:
                return [await peer_pg.fetch(s, *p) for s, p in statements]

        await ours()
        await bare()  # warm caches and statement preparation
        ours_rates, bare_rates, ours_times, bare_times = [], [], [], []  # type: ignore[var-annotated]
        for _ in range(args.rounds):
            ours_rates.append(await timed(ours, args.seconds, ours_times))
            bare_rates.append(await timed(bare, args.seconds, bare_times))
        a, b = statistics.median(ours_rates), statistics.median(bare_rates)
        print(
            f"{label:<34} {a:>9,.0f} {b:>9,.0f} {a / b:>9.2f} "
            f"{percentile(ours_times, 0.5) * 1e3:>9.2f} {percentile(ours_times, 0.99) * 1e3:>9.2f} "
            f"{percentile(bare_times, 0.99) * 1e3:>9.2f}"
        )
    if dsn is None:
        peer_sqlite.close()
    else:
        await peer_pg.close()
    await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per side and query"
    )
    databases = args.databases.split(",")
    if "sqlite" in databases:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            await bench_database("SQLite", url, None, args)
    if "postgres" in databases:
        import asyncpg

        name = "mm_bench_" + secrets.token_hex(4)
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        try:
            dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
            await bench_database("PostgreSQL", url, dsn, args)
        finally:
            admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=1.0, help="per side, query and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deep-pages", type=int, default=200)
    parser.add_argument("--databases", default="sqlite,postgres")
    asyncio.run(main(parser.parse_args()))
