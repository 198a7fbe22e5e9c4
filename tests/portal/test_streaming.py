"""The segment fast path answers exactly what the router would, and only segment GETs.

The end-to-end behaviour (tokens, licences, ranges, tampering, metrics) is in
test_playback.py, which goes through the fast path; these tests pin down what it takes over
and what it passes on, behind the portal's own middleware.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from portal.errors import NotFound
from portal.http_errors import UnexpectedErrorMiddleware, exception_handlers
from portal.metrics import Metrics
from portal.security import SECURITY_HEADERS, SecurityHeadersMiddleware
from portal.streaming import SegmentFastPath
from portal.web import MetricsMiddleware


class App(Starlette):
    """A stand-in portal: every request the fast path passes on answers "framework"."""

    def __init__(self) -> None:
        super().__init__(
            routes=[Route("/{path:path}", self.framework, methods=["GET", "HEAD"])],
            middleware=[  # as in portal.app, the fast path innermost
                Middleware(MetricsMiddleware),
                Middleware(SecurityHeadersMiddleware),
                Middleware(UnexpectedErrorMiddleware),
                Middleware(SegmentFastPath, endpoint=self.segment, handlers=exception_handlers()),
            ],
            exception_handlers=exception_handlers(),  # type: ignore[arg-type]
        )
        self.state.services = SimpleNamespace(metrics=Metrics())
        self.seen: list[dict[str, str]] = []

    async def framework(self, request: Request) -> Response:
        return PlainTextResponse("framework")

    async def segment(self, request: Request) -> Response:
        self.seen.append(dict(request.path_params))
        if request.path_params["name"] == "missing.m4s":
            raise NotFound("There is no such segment.")
        if request.path_params["name"] == "broken.m4s":
            raise RuntimeError("a bug")
        return Response(b"segment", media_type="video/iso.segment")


@pytest.fixture
def app() -> App:
    return App()


def test_segment_gets_go_to_the_endpoint_behind_the_middleware(app: App) -> None:
    client = TestClient(app)
    response = client.get("/stream/tok/vid/720p/000001.m4s")
    assert (response.status_code, response.content) == (200, b"segment")
    assert app.seen == [
        {"token": "tok", "video_id": "vid", "rendition": "720p", "name": "000001.m4s"}
    ]
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert app.state.services.metrics.answered("GET", 200) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/stream/tok/vid/720p/index.m3u8",  # the media playlist's route
        "/stream/tok/vid/master.m3u8",
        "/stream/tok/vid/storyboard.vtt",
        "/stream/tok/vid/720p/000001.m4s/more",
        "/stream/tok//720p/000001.m4s",
        "/stream/tok",
        "/api/videos",
        "/streamer/tok/vid/720p/000001.m4s",
    ],
)
def test_everything_else_goes_to_the_framework(app: App, path: str) -> None:
    assert TestClient(app).get(path).text == "framework"
    assert app.seen == []


def test_other_methods_go_to_the_framework(app: App) -> None:
    assert TestClient(app).head("/stream/tok/vid/720p/000001.m4s").status_code == 200
    assert app.seen == []


def test_errors_are_mapped_by_the_apps_handlers(app: App) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    missing = client.get("/stream/tok/vid/720p/missing.m4s")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert missing.headers["x-content-type-options"] == "nosniff"
    broken = client.get("/stream/tok/vid/720p/broken.m4s")
    assert (broken.status_code, broken.json()["error"]) == (500, "internal_error")
    assert "a bug" not in broken.text
    assert broken.headers["x-content-type-options"] == "nosniff"
    assert app.state.services.metrics.answered("GET", 404) == 1
    assert app.state.services.metrics.answered("GET", 500) == 1


def test_the_portal_puts_the_fast_path_innermost(tmp_path) -> None:
    from portal.app import build_middleware
    from portal.settings import Settings

    settings = Settings.from_env({"MEGAMOVIE_DATA_DIR": str(tmp_path)})
    assert build_middleware(settings)[-1].cls is SegmentFastPath
