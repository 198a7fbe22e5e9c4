"""Catalog query throughput: the portal's `list_videos` against bare sqlite3, same run.

Fills a fresh SQLite database with 10,000 ready videos from 200 creators, then times two
queries each way: a full-text search and the newest-first first page (each is a COUNT plus
one page of 24 rows joined to the creator, as the catalog page runs them). The peer is the
same SQL shape through the standard library's `sqlite3`, so the ratio is the cost of our
layers (SQLAlchemy Core, aiosqlite's thread hop, building the page objects).

    .venv/bin/python benchmarks/catalog.py [--videos 10000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from portal.catalog import PAGE_SIZE, fts5_query, list_videos, search_terms
from portal.db import create_engine, new_id, users, utcnow, videos
from portal.migrations import upgrade

WORDS = (
    "harbour night train summer river mountain city rain garden winter light storm desert "
    "island forest ocean road story journey dance music kitchen market festival silent "
    "golden blue red green lost found home far away north south east west morning evening"
).split()
TAGS = "drama comedy documentary nature travel music animation short horror family".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


async def fill(engine, count: int, creators: int, rng: random.Random) -> None:
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
        rows = []
        for i in range(count):
            rows.append(
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
                    "ready_at": now - timedelta(seconds=i),
                }
            )
        await conn.execute(videos.insert(), rows)


PEER_SELECT = (
    "SELECT v.id, v.title, v.duration, v.creator_id, u.display_name, v.has_poster, v.views, "
    "v.ready_at FROM videos v JOIN users u ON u.id = v.creator_id WHERE v.status = 'ready' "
)
PEER_MATCH = "AND v.id IN (SELECT video_id FROM videos_fts WHERE videos_fts MATCH ?) "


def peer_page(conn: sqlite3.Connection, q: str) -> int:
    """The catalog's query, hand-written: COUNT, then one page, newest first."""
    terms = search_terms(q)
    where = PEER_MATCH if terms else ""
    params: tuple[str, ...] = (fts5_query(terms),) if terms else ()
    count = "SELECT count(*) FROM videos v WHERE v.status = 'ready' " + where  # noqa: S608
    total = conn.execute(count, params).fetchone()[0]
    rows = conn.execute(
        PEER_SELECT + where + "ORDER BY v.ready_at DESC, v.id LIMIT ? OFFSET 0",
        (*params, PAGE_SIZE),
    ).fetchall()
    return total + len(rows)


async def rate(fn: Callable[[], Awaitable[object]], seconds: float) -> float:
    await fn()  # warm caches and statement compilation
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        await fn()
        done += 1
    return done / elapsed


async def main(count: int, seconds: float) -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await upgrade(engine)
        started = time.perf_counter()
        await fill(engine, count, 200, rng)
        print(f"{count:,} videos inserted (FTS kept by triggers) in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        peer = sqlite3.connect(path)
        queries = {"search 'river night'": "river night", "newest, page 1": ""}
        print(f"\n{'query':<22} {'portal q/s':>11} {'sqlite3 q/s':>12} {'portal/sqlite3':>15}")
        for label, q in queries.items():
            ours_rows = await list_videos(engine, q=q)
            assert ours_rows.total + len(ours_rows.items) == peer_page(peer, q), label

            async def ours(q: str = q) -> object:
                return await list_videos(engine, q=q)

            async def theirs(q: str = q) -> object:
                return peer_page(peer, q)

            a = await rate(ours, seconds)
            b = await rate(theirs, seconds)
            print(f"{label:<22} {a:>11,.0f} {b:>12,.0f} {a / b:>15.2f}")
        peer.close()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(main(args.videos, args.seconds))
