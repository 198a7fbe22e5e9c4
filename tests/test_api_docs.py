"""docs/api.md names every route the app serves, as docs/operations.md names every setting."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import Route

from portal.app import build_routes

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"

# A request written in the docs: `GET /api/videos?q=`, `DELETE /api/videos/{id}`, `/watch/{id}`
# (a bare path is a GET), `/stream/{token}/{id}/{rendition}/NNNNNN.m4s`.
DOCUMENTED = re.compile(r"`(?:(?P<method>[A-Z]+) )?(?P<path>/[^`\s?#]*)")


def documented_requests() -> list[tuple[str, str]]:
    """(method, a concrete path) for every request docs/api.md writes down."""
    requests = []
    for match in DOCUMENTED.finditer(DOCS.read_text()):
        path = re.sub(r"\{[^}]*\}", "x1", match["path"]).replace("NNNNNN", "000000")
        requests.append((match["method"] or "GET", path))
    return requests


def route_for(routes: list[Route], method: str, path: str) -> Route | None:
    """The route that would answer: the first whose path and method match, as Starlette routes."""
    for route in routes:
        if route.path_regex.fullmatch(path) and method in (route.methods or ()):
            return route
    return None


def test_every_route_and_method_is_documented_in_api_md():
    routes = [route for route in build_routes() if isinstance(route, Route)]
    reached = {
        (route.name, method)
        for method, path in documented_requests()
        if (route := route_for(routes, method, path)) is not None
    }
    missing = []
    for route in routes:
        methods = set(route.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette answers HEAD wherever it answers GET
        missing += [f"{m} {route.path}" for m in sorted(methods) if (route.name, m) not in reached]
    assert missing == []


def test_an_undocumented_route_is_caught():
    routes = [Route("/api/secret-thing", lambda request: None, methods=["POST"], name="secret")]
    assert all(route_for(routes, m, p) is None for m, p in documented_requests())
