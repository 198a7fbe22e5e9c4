"""The catalog: public films with posters, full-text search, sorting and paging.

Search matches films whose title, description and tags contain every word of the query (as
word prefixes), or whose creator's name does. SQLite answers from the FTS5 table
`videos_fts`, PostgreSQL from GIN expression indexes (both made in portal/db.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ColumnElement, TextClause

from portal.db import users, videos
from portal.videos import poster_path, public_filter

PAGE_SIZE = 24
SORTS = ("newest", "popular")
MAX_TERMS = 8  # a pasted paragraph should not become a 200-term query
_WORD = re.compile(r"[^\W_]+")


def search_terms(query: str) -> list[str]:
    """The words of a search box, lower case; punctuation is dropped so no query syntax leaks."""
    return _WORD.findall(query.lower())[:MAX_TERMS]


def fts5_query(terms: list[str]) -> str:
    words = " AND ".join(f'"{term}"*' for term in terms)
    return f"({{title description tags}} : ({words})) OR (creator : ({words}))"


def tsquery(terms: list[str]) -> str:
    return " & ".join(f"{term}:*" for term in terms)


@dataclass(frozen=True)
class CatalogItem:
    id: str
    title: str
    duration: float | None
    creator_id: str
    creator_name: str
    has_poster: bool
    views: int
    ready_at: datetime | None

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
    pages: int
    total: int
    query: str
    sort: str


def _search_filter(dialect: str, terms: list[str]) -> ColumnElement[bool] | TextClause:
    if dialect == "sqlite":
        matches = text("SELECT video_id FROM videos_fts WHERE videos_fts MATCH :fts").bindparams(
            fts=fts5_query(terms)
        )
        return videos.c.id.in_(matches.columns(video_id=String))
    # Spelled exactly as the GIN indexes in portal/db.py, so the planner can use them. The
    # creator's name is matched through a subquery, so no join is needed here.
    return text(
        "(to_tsvector('simple', videos.title || ' ' || videos.description || ' ' || "
        "videos.tags) @@ to_tsquery('simple', :tsq) OR videos.creator_id IN (SELECT id FROM "
        "users WHERE to_tsvector('simple', users.display_name) @@ to_tsquery('simple', :tsq)))"
    ).bindparams(tsq=tsquery(terms))


async def list_videos(
    engine: AsyncEngine,
    *,
    q: str = "",
    sort: str = "newest",
    page: int = 1,
    creator_id: str | None = None,
    page_size: int = PAGE_SIZE,
) -> CatalogPage:
    """One page of public films (`portal.videos.public_filter`), newest first or most
    watched first, optionally searched."""
    sort = sort if sort in SORTS else "newest"
    filters: list[ColumnElement[bool] | TextClause] = [public_filter()]
    if creator_id is not None:
        filters.append(videos.c.creator_id == creator_id)
    terms = search_terms(q)
    if terms:
        filters.append(_search_filter(engine.dialect.name, terms))
    # Every video has its creator, so counting needs no join with users.
    count = select(func.count()).select_from(videos).where(*filters)
    newest = (videos.c.ready_at.desc(), videos.c.id)
    order = newest if sort == "newest" else (videos.c.views.desc(), *newest)
    statement = (
        select(
            videos.c.id,
            videos.c.title,
            videos.c.duration,
            videos.c.creator_id,
            users.c.display_name.label("creator_name"),
            videos.c.has_poster,
            videos.c.views,
            videos.c.ready_at,
        )
        .join(users, users.c.id == videos.c.creator_id)
        .where(*filters)
        .order_by(*order)
    )
    async with engine.connect() as conn:
        total = (await conn.execute(count)).scalar_one()
        pages = max(1, math.ceil(total / page_size))
        page = min(max(1, page), pages)
        rows = (await conn.execute(statement.limit(page_size).offset((page - 1) * page_size))).all()
    items = [
        CatalogItem(
            r.id,
            r.title,
            r.duration,
            r.creator_id,
            r.creator_name,
            bool(r.has_poster),
            int(r.views),
            r.ready_at,
        )
        for r in rows
    ]
    return CatalogPage(items, page, pages, total, q.strip(), sort)
