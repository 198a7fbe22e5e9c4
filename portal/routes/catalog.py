"""The catalog pages and its JSON: parse the query, ask `portal.catalog`, render."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.accounts import get_user
from portal.catalog import CatalogPage, list_videos
from portal.errors import NotFound
from portal.parsing import query_int
from portal.web import render, services_of

#: Past the last page shows the last page; this only keeps the number inside an integer.
MAX_PAGE = 1_000_000


def _params(request: Request) -> dict[str, Any]:
    page = query_int(request.query_params, "page", default=1, minimum=1, maximum=MAX_PAGE)
    return {
        "q": request.query_params.get("q", "")[:200],
        "sort": request.query_params.get("sort", ""),
        "page": page,
        "after": request.query_params.get("after", "")[:500] or None,
    }


def page_links(result: CatalogPage, window: int = 2) -> list[int | None]:
    """Page numbers to link, with None where a run is elided: [1, None, 4, 5, 6, None, 12]."""
    keep = {1, result.pages, *range(result.page - window, result.page + window + 1)}
    links: list[int | None] = []
    for number in sorted(n for n in keep if 1 <= n <= result.pages):
        if links and links[-1] is not None and number - links[-1] > 1:
            links.append(None)
        links.append(number)
    return links


async def catalog(request: Request) -> Response:
    result = await list_videos(services_of(request).engine, **_params(request))
    return render(
        request, "catalog.html", {"result": result, "links": page_links(result), "channel": None}
    )


async def channel(request: Request) -> Response:
    engine = services_of(request).engine
    owner = await get_user(engine, request.path_params["user_id"])
    if owner is None:
        raise NotFound("There is no channel at this address.")
    result = await list_videos(engine, creator_id=owner.id, **_params(request))
    return render(
        request, "catalog.html", {"result": result, "links": page_links(result), "channel": owner}
    )


async def api_videos(request: Request) -> Response:
    """`GET /api/videos?q=&sort=newest|popular&page=`: the catalog as JSON."""
    result = await list_videos(services_of(request).engine, **_params(request))
    return JSONResponse(
        {
            "videos": [item.as_json() for item in result.items],
            "page": result.page,
            "pages": result.pages,
            "total": result.total,
            "total_capped": result.total_capped,
            "next": result.next_cursor,
            "q": result.query,
            "sort": result.sort,
        }
    )


routes = [
    Route("/", catalog, methods=["GET"], name="catalog"),
    Route("/channel/{user_id}", channel, methods=["GET"], name="channel"),
    Route("/api/videos", api_videos, methods=["GET"], name="api_videos"),
]
