"""The catalog: public films with posters, full-text search, sorting and paging.

Search matches films whose text (title, description, tags and the creator's name, together)
contains every word of the query as a word prefix. SQLite answers from the FTS5 table
`videos_fts`, PostgreSQL from the GIN-indexed `videos.search_vector` (both kept by triggers,
made in portal/db.py). Every query's cost is bounded, whatever the catalog's size:

- Browsing (no query) walks an index in the order shown (`ix_videos_newest`,
  `ix_videos_popular`) and stops after one page. Numbered pages are offsets within the first
  `COUNT_CAP` films; "next" links carry a keyset cursor (`after`), so page 500 costs what
  page 1 does.
- A search takes at most the `SEARCH_CANDIDATES` newest matches from the full-text index,
  ranks them there (FTS5 bm25 or ts_rank, title words weighing most) and orders them by
  rank ("relevance", a search's default) or by the chosen sort. A query matching fewer films
  is exact; one matching a quarter of the catalog ranks its newest 500.
- Counts stop at `COUNT_CAP` (shown as "1,000+"): nothing counts every match.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import sqlite3
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import anyio
from sqlalchemy import (
    Dialect,
    Float,
    String,
    bindparam,
    event,
    func,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from portal.db import UTCDateTime, users, videos
from portal.errors import Unavailable
from portal.outages import DATABASE_DOWN
from portal.videos import poster_path, public_filter

PAGE_SIZE = 24
SORTS = ("relevance", "newest", "popular")
MAX_TERMS = 8  # a pasted paragraph should not become a 200-term query
#: Counts stop here: past it the catalog says "1,000+ films".
COUNT_CAP = 1000
#: A search ranks at most this many of its newest matches.
SEARCH_CANDIDATES = 500
#: PostgreSQL looks for them among this many newest films first (see `_search_query`).
SEARCH_WINDOW = 5_000
_WORD = re.compile(r"[^\W_]+")
#: bm25 weights of the FTS5 columns: video_id (not indexed), title, description, tags, creator.
_FTS_WEIGHTS = "0.0, 10.0, 1.0, 4.0, 4.0"


def search_terms(query: str) -> list[str]:
    """The words of a search box, lower case; punctuation is dropped so no query syntax leaks."""
    return _WORD.findall(query.lower())[:MAX_TERMS]


def fts5_query(terms: list[str]) -> str:
    """Every term as a word prefix, anywhere in the film's text or its creator's name."""
    return " AND ".join(f'"{term}"*' for term in terms)


def tsquery(terms: list[str]) -> str:
    """The same on PostgreSQL. `word | word:*` means `word:*`, but PostgreSQL's planner
    estimates prefixes blindly (2% of rows) and whole words from statistics: with the whole
    word beside it, a common word walks the newest films instead of sorting every match."""
    return " & ".join(f"({term} | {term}:*)" for term in terms)


class CatalogItem(NamedTuple):
    """One film of a page: a tuple (a page makes 24 of them per request), its publication
    time parsed only when asked for (the catalog page never shows it)."""

    id: str
    title: str
    duration: float | None
    creator_id: str
    creator_name: str
    has_poster: bool
    views: int
    published: Any  # `ready_at` as the driver gave it
    parse_time: Callable[[Any], datetime | None] | None = None

    @property
    def ready_at(self) -> datetime | None:
        return self.parse_time(self.published) if self.parse_time else self.published

    @property
    def poster_url(self) -> str | None:
        return poster_path(self.id) if self.has_poster else None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "duration": self.duration,
            "creator": {"id": self.creator_id, "name": self.creator_name},
            "poster_url": self.poster_url,
            "views": self.views,
            "ready_at": self.ready_at.isoformat() if self.ready_at else None,
            "url": f"/watch/{self.id}",
        }


@dataclass(frozen=True)
class CatalogPage:
    items: list[CatalogItem]
    page: int
    #: Pages reachable by number (within the first COUNT_CAP films or search candidates).
    pages: int
    #: How many films there are, up to COUNT_CAP; `total_capped` when there are more.
    total: int
    query: str
    sort: str
    total_capped: bool = False
    #: Keyset cursor of the page after this one (`list_videos(after=...)`), when there is one.
    next_cursor: str | None = None

    @property
    def total_label(self) -> str:
        """The total as shown: 1,234 films, or 1,000+ when there are more."""
        return f"{self.total:,}+" if self.total_capped else f"{self.total:,}"

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None or self.page < self.pages


async def list_videos(
    engine: AsyncEngine,
    *,
    q: str = "",
    sort: str = "",
    page: int = 1,
    after: str | None = None,
    creator_id: str | None = None,
    page_size: int = PAGE_SIZE,
) -> CatalogPage:
    """One page of public films (`portal.videos.public_filter`), optionally searched: by
    relevance (searches only; their default), newest first (the default otherwise) or most
    watched first. `page` counts from 1 (past the end: the last page); `after` is a
    `next_cursor` from the page before, which wins over `page`."""
    terms = search_terms(q)
    if sort not in SORTS or (sort == "relevance" and not terms):
        sort = "relevance" if terms else "newest"
    if terms:
        return await _search(engine, terms, q.strip(), sort, page, creator_id, page_size)
    return await _browse(engine, sort, page, after, creator_id, page_size)


# -- the queries ------------------------------------------------------------------------
#
# Each query shape is built once per dialect with SQLAlchemy Core (so the visibility rule is
# `public_filter()` itself, and every name comes from the schema), rendered to SQL once, and
# then run on the bare driver: no statement building, cache lookup or result wrapping per
# call. A catalog page is one statement: the page's rows with the capped count beside them.

_COLUMNS = (
    videos.c.id,
    videos.c.title,
    videos.c.duration,
    videos.c.creator_id,
    users.c.display_name.label("creator_name"),
    videos.c.has_poster,
    videos.c.views,
    videos.c.ready_at,
)
_TOTAL = len(_COLUMNS)  # the capped count's place in a row
# Sort keys, all descending: the keyset cursor compares them as one row value.
_KEYS = {
    "newest": (videos.c.ready_at, videos.c.id),
    "popular": (videos.c.views, videos.c.ready_at, videos.c.id),
}
# The index that walks each order (portal/db.py). SQLite is told which: without statistics
# its planner takes the status index for the visibility rule's OR, then sorts every film.
_INDEXES = {"newest": "ix_videos_newest", "popular": "ix_videos_popular"}
#: Offsets deeper than this many pages are not walked (the page is clamped); "next" links
#: carry cursors, which cost the same at any depth.
MAX_OFFSET_PAGES = 100


@dataclass(frozen=True)
class _Query:
    sql: str
    names: tuple[str, ...]  # the positional parameters' names, in order
    fixed: dict[str, Any]  # values of the parameters the shape itself carries
    bind: dict[str, Any]  # bind processors by name (datetimes)

    def params(self, values: dict[str, Any]) -> list[Any]:
        out = []
        for name in self.names:
            value = values[name] if name in values else self.fixed[name]
            process = self.bind.get(name)
            out.append(process(value) if process is not None and value is not None else value)
        return out


_SHAPES: dict[tuple[Any, ...], _Query] = {}


def _render(dialect: Dialect, statement: Any, dates: tuple[str, ...] = ()) -> _Query:
    compiled = statement.compile(dialect=dialect)
    processor = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    bind = {name: processor for name in dates} if processor is not None else {}
    return _Query(str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params), bind)


def _browse_query(dialect: Dialect, sort: str, creator: bool, cursor: bool) -> _Query:
    key = ("browse", dialect.name, dialect.driver, sort, creator, cursor)
    if key in _SHAPES:
        return _SHAPES[key]
    keys = _KEYS[sort]
    # Every public film has `ready_at` (set when it became public); the sort keys are then
    # never NULL, so both databases order, and compare cursors, alike.
    filters = [public_filter(), videos.c.ready_at.is_not(None)]
    if creator:
        filters.append(videos.c.creator_id == bindparam("creator_id"))
    films = select(videos.c.id).where(*filters).limit(COUNT_CAP + 1).subquery()
    total = select(func.count()).select_from(films).scalar_subquery()
    where = list(filters)
    if cursor:
        where.append(tuple_(*keys) < tuple_(*(bindparam(f"k{i}") for i in range(len(keys)))))
    statement = (
        select(*_COLUMNS, total.label("total"))
        .join(users, users.c.id == videos.c.creator_id)
        .where(*where)
        .order_by(*(k.desc() for k in keys))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
    dates = ("k0",) if sort == "newest" else ("k1",)
    query = _render(dialect, statement, dates if cursor else ())
    if dialect.name == "sqlite" and not creator:
        # A channel's films are few (the creator index finds them); the catalog is walked.
        # SQLAlchemy renders no FROM hints for SQLite, so the shape's one FROM is amended.
        plain = "FROM videos JOIN users"
        assert query.sql.count(plain) == 1, query.sql
        hinted = f"FROM videos INDEXED BY {_INDEXES[sort]} JOIN users"
        query = dataclasses.replace(query, sql=query.sql.replace(plain, hinted))
    _SHAPES[key] = query
    return query


def _search_query(dialect: Dialect, sort: str, creator: bool, *, window: bool = False) -> _Query:
    """A search's page. On PostgreSQL in two shapes: `window` takes the candidates from the
    newest `SEARCH_WINDOW` public films only (a walk of ix_videos_newest that stops early
    for a common word and cannot run long for a rare one); the other takes every match
    from the GIN index, for words too rare for the window to hold a full set of candidates.
    PostgreSQL's planner cannot choose between these itself: it estimates a prefix at 2% of
    the rows whatever the word, so LIMIT would send it walking the whole index for a word
    that matches nothing."""
    key = ("search", dialect.name, dialect.driver, sort, creator, window)
    if key in _SHAPES:
        return _SHAPES[key]
    filters = [public_filter()]
    if creator:
        filters.append(videos.c.creator_id == bindparam("creator_id"))
    if dialect.name == "sqlite":
        # The newest matches in the FTS index's own order (rowid: when the film's text was
        # indexed), ranked there by bm25 (lower is better); visibility is checked after.
        matches = (
            text(
                f"SELECT video_id, bm25(videos_fts, {_FTS_WEIGHTS}) AS score FROM videos_fts "  # noqa: S608 (constants)
                "WHERE videos_fts MATCH :fts ORDER BY rowid DESC LIMIT :candidates"
            )
            .columns(video_id=String, score=Float)
            .cte("matches")
        )
        films: Any = matches.join(videos, videos.c.id == matches.c.video_id)
        columns: Any = _COLUMNS
        ready_at, views, video_id, creator_id = (
            videos.c.ready_at, videos.c.views, videos.c.id, videos.c.creator_id,
        )  # fmt: skip
        best: Any = matches.c.score.asc()
    else:
        # The newest visible matches, with the columns shown and their ts_rank (higher is
        # better), taken while the row is at hand.
        tsq = func.to_tsquery(literal_column("'simple'"), bindparam("fts", type_=String))
        shown = [c for c in _COLUMNS if c.table is videos]
        vector: Any = literal_column("videos.search_vector").label("search_vector")
        pool = (
            select(*shown, vector).where(*filters, videos.c.ready_at.is_not(None))
        )  # fmt: skip
        if window:
            # The walk stops at the LIMIT: the word's filter is applied above it.
            source: Any = (
                pool.order_by(videos.c.ready_at.desc(), videos.c.id.desc())
                .limit(bindparam("window"))
                .subquery("recent")
            )
        else:
            # Materialised: every match, from the GIN index, whatever LIMIT comes after.
            matching = pool.where(literal_column("videos.search_vector").op("@@")(tsq))
            source = matching.cte("found").prefix_with("MATERIALIZED")
        chosen = (
            select(
                *(source.c[c.name] for c in shown),
                func.ts_rank(source.c.search_vector, tsq).label("score"),
            )
            .order_by(source.c.ready_at.desc(), source.c.id.desc())
            .limit(bindparam("candidates"))
        )
        if window:
            chosen = chosen.where(source.c.search_vector.op("@@")(tsq))
        films = chosen.cte("matches")
        columns = [
            users.c.display_name.label("creator_name")
            if c.name == "creator_name"
            else films.c[c.name]
            for c in _COLUMNS
        ]
        ready_at, views, video_id, creator_id = (
            films.c.ready_at, films.c.views, films.c.id, films.c.creator_id,
        )  # fmt: skip
        best = films.c.score.desc()
        filters = []  # applied while choosing the candidates
    # Every visible candidate is sorted anyway: counting them is a window over the same rows.
    total = func.count().over()
    order = {
        "relevance": (best, ready_at.desc(), video_id.desc()),
        "newest": (ready_at.desc(), video_id.desc()),
        "popular": (views.desc(), ready_at.desc(), video_id.desc()),
    }[sort]
    statement = (
        select(*columns, total.label("total"))
        .select_from(films.join(users, users.c.id == creator_id))
        .where(*filters)
        .order_by(*order)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
    _SHAPES[key] = query = _render(dialect, statement)
    return query


class _Reader:
    """Runs rendered queries on the bare driver of a pooled connection; or, for SQLite
    queries known to be short (one page of an index walk), on this thread's own sqlite3
    connection, which costs less than the hop to aiosqlite's thread and back."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        database = engine.url.database if self.dialect.name == "sqlite" else None
        memory = not database or database == ":memory:" or "mode=memory" in str(engine.url)
        self._path = None if memory else database
        if self._path is not None:
            event.listen(engine.sync_engine, "engine_disposed", self._close_all)
        ready_at = UTCDateTime().dialect_impl(self.dialect)
        self.parse_time = ready_at.result_processor(self.dialect, None)

    async def fetch(self, query: _Query, values: dict[str, Any], *, short: bool) -> list[Any]:
        params = query.params(values)
        if short and self._path is not None:
            rows = self._fetch_here(query.sql, params)
            if rows is not None:
                return rows
        if self.dialect.name != "sqlite":
            return await self._fetch_postgres(query.sql, params)
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            return list(await raw.execute_fetchall(query.sql, params))  # type: ignore[union-attr]

    async def _fetch_postgres(self, sql: str, params: list[Any]) -> list[Any]:
        """The rows, read once more on a fresh connection if the pooled one turns out to be
        dead (the engine pings only connections that sat idle: portal.idle_ping). A read
        can be repeated; one retry at most, so the waits stay bounded by twice the
        engine's. A statement that timed out is not retried: its connection is alive."""
        lost: Exception | None = None
        for _attempt in range(2):
            # The pooled connection without a SQLAlchemy `Connection` around it: checking it
            # out and back costs half as much (issue 11: the newest page).
            pooled = await self.engine.raw_connection()
            try:
                raw = pooled.driver_connection
                try:
                    return list(await raw.fetch(sql, *params))  # type: ignore[union-attr]
                except Exception as exc:
                    if not raw.is_closed():  # type: ignore[union-attr]
                        raise
                    # Out of the pool with it; the pool then pings its neighbours.
                    await greenlet_spawn(pooled.invalidate, exc)
                    lost = exc
            finally:
                # Shielded from anyio's cancellation (a request's), so a cancelled request
                # still gives its connection back; the close awaits only when the pool shuts
                # a connection over its size. (SQLAlchemy's `Connection` uses asyncio.shield,
                # whose task and extra loop turns cost more than this whole checkout.)
                with anyio.CancelScope(shield=True):
                    await greenlet_spawn(pooled.close)
        raise Unavailable(DATABASE_DOWN, part="database") from lost

    def _fetch_here(self, sql: str, params: list[Any]) -> list[Any] | None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                assert self._path is not None
                # No waiting for a lock here (timeout 0): on contention, the pool's way.
                conn = sqlite3.connect(self._path, timeout=0, check_same_thread=False)
                conn.execute("PRAGMA query_only = ON")
                with self._lock:
                    self._opened.append(conn)
                self._local.conn = conn
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return None

    def _close_all(self, _engine: object) -> None:
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()
        self._local = threading.local()


_READERS: weakref.WeakKeyDictionary[Any, _Reader] = weakref.WeakKeyDictionary()


def _reader(engine: AsyncEngine) -> _Reader:
    reader = _READERS.get(engine.sync_engine)
    if reader is None:
        reader = _READERS[engine.sync_engine] = _Reader(engine)
    return reader


def _items(reader: _Reader, rows: list[Any]) -> list[CatalogItem]:
    parse = reader.parse_time
    return [
        CatalogItem(r[0], r[1], r[2], r[3], r[4], bool(r[5]), int(r[6]), r[7], parse) for r in rows
    ]


async def _browse(
    engine: AsyncEngine,
    sort: str,
    page: int,
    after: str | None,
    creator_id: str | None,
    page_size: int,
) -> CatalogPage:
    reader = _reader(engine)
    cursor = _decode_cursor(after, sort) if after else None
    values: dict[str, Any] = {"limit": page_size + 1, "offset": 0, "creator_id": creator_id}
    if cursor is not None:
        page, keys = cursor
        values.update({f"k{i}": value for i, value in enumerate(keys)})
    else:
        page = min(max(1, page), MAX_OFFSET_PAGES)
        values["offset"] = (page - 1) * page_size
    query = _browse_query(engine.dialect, sort, creator_id is not None, cursor is not None)
    rows = await reader.fetch(query, values, short=True)
    if not rows and cursor is None and page > 1:  # past the end: the last page
        first = await reader.fetch(query, {**values, "offset": 0, "limit": 1}, short=True)
        total = int(first[0][_TOTAL]) if first else 0
        page = max(1, math.ceil(min(total, COUNT_CAP) / page_size))
        values["offset"] = (page - 1) * page_size
        rows = await reader.fetch(query, values, short=True)
    total = int(rows[0][_TOTAL]) if rows else 0
    items = _items(reader, rows[:page_size])
    next_cursor = None
    if len(rows) > page_size:
        last = items[-1]
        key = [last.ready_at, last.id] if sort == "newest" else [last.views, last.ready_at, last.id]
        next_cursor = _encode_cursor(sort, page + 1, key)
    pages = max(1, math.ceil(min(total, COUNT_CAP) / page_size), page)
    capped = total > COUNT_CAP
    return CatalogPage(items, page, pages, min(total, COUNT_CAP), "", sort, capped, next_cursor)


async def _search(
    engine: AsyncEngine,
    terms: list[str],
    query_text: str,
    sort: str,
    page: int,
    creator_id: str | None,
    page_size: int,
) -> CatalogPage:
    reader = _reader(engine)
    sqlite = engine.dialect.name == "sqlite"
    page = min(max(1, page), math.ceil(SEARCH_CANDIDATES / page_size))
    values: dict[str, Any] = {
        "fts": fts5_query(terms) if sqlite else tsquery(terms),
        "candidates": SEARCH_CANDIDATES,
        "window": SEARCH_WINDOW,
        "creator_id": creator_id,
        "limit": page_size,
        "offset": (page - 1) * page_size,
    }
    creator = creator_id is not None
    if not sqlite:
        # The newest films first; all of them only when those hold too few matches.
        window = _search_query(engine.dialect, sort, creator, window=True)
        attempt = dict(values)
        rows, total = await _search_page(reader, window, attempt)
        if total >= SEARCH_CANDIDATES:
            return _search_result(reader, rows, attempt, total, query_text, sort, page_size)
    query = _search_query(engine.dialect, sort, creator)
    rows, total = await _search_page(reader, query, values)
    return _search_result(reader, rows, values, total, query_text, sort, page_size)


async def _search_page(
    reader: _Reader, query: _Query, values: dict[str, Any]
) -> tuple[list[Any], int]:
    """The rows of the page `values` asks for (the last page, when that is past the end),
    and how many candidates there are. `values["offset"]` becomes the page's offset."""
    # In the pool's thread, not on the event loop: ranking a common word's candidates
    # takes milliseconds.
    rows = await reader.fetch(query, values, short=False)
    if rows:
        return rows, int(rows[0][_TOTAL])
    if not values["offset"]:
        return rows, 0
    first = await reader.fetch(query, {**values, "offset": 0, "limit": 1}, short=False)
    total = int(first[0][_TOTAL]) if first else 0
    last = max(0, math.ceil(total / values["limit"]) - 1) * values["limit"]
    if values["offset"] > last:  # past the end: the last page
        values["offset"] = last
        rows = await reader.fetch(query, values, short=False) if total else []
    return rows, total


def _search_result(
    reader: _Reader,
    rows: list[Any],
    values: dict[str, Any],
    total: int,
    query_text: str,
    sort: str,
    page_size: int,
) -> CatalogPage:
    page = values["offset"] // page_size + 1
    pages = max(1, math.ceil(total / page_size))
    capped = total >= SEARCH_CANDIDATES
    return CatalogPage(_items(reader, rows), page, pages, total, query_text, sort, capped)


# Keyset cursors: which sort, which page number it leads to, and the sort key of the last
# film shown. Opaque to clients, checked on the way in; a bad one means "from the start".


def _encode_cursor(sort: str, page: int, values: list[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps([sort, page, plain], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_CURSOR_TYPES = {"newest": (datetime, str), "popular": (int, datetime, str)}


def _decode_cursor(cursor: str, sort: str) -> tuple[int, list[Any]] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, page, values = json.loads(raw)
        types = _CURSOR_TYPES[sort]
        if cursor_sort != sort or not isinstance(page, int) or len(values) != len(types):
            return None
        decoded: list[Any] = []
        for value, kind in zip(values, types, strict=True):
            if kind is datetime:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    return None
                decoded.append(moment)
            elif isinstance(value, kind) and not isinstance(value, bool):
                decoded.append(value)
            else:
                return None
        return max(1, page), decoded
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
