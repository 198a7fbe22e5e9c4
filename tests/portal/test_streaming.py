"""The segment fast path answers exactly what the framework would, and only segment GETs.

The end-to-end behaviour (tokens, ranges, tampering, metrics) is in test_playback.py, which
goes through the fast path; these tests pin down what it takes over and what it passes on.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from portal.errors import NotFound
from portal.http_errors import exception_handlers
from portal.metrics import Metrics
from portal.security import SECURITY_HEADERS
from portal.streaming import SegmentFastPath


class App(Starlette):
    """A stand-in portal: every request the fast path passes on answers "framework"."""

    def __init__(self) -> None:
        super().__init__(routes=[Route("/{path:path}", self.framework, methods=["GET", "HEAD"])])
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
        assert request.state.user is None  # as AuthMiddleware sets it for /stream/
        return Response(b"segment", media_type="video/iso.segment")

    def build_middleware_stack(self):  # type: ignore[no-untyped-def]
        return SegmentFastPath(super().build_middleware_stack(), self.segment, exception_handlers())


@pytest.fixture
def app() -> App:
    return App()


def test_segment_gets_are_answered_with_the_security_headers_and_counted(app: App) -> None:
    client = TestClient(app)
    response = client.get("/stream/tok/vid/720p/000001.m4s")
    assert (response.status_code, response.content) == (200, b"segment")
    assert app.seen == [
        {"token": "tok", "video_id": "vid", "rendition": "720p", "name": "000001.m4s"}
    ]
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert app.state.services.metrics.requests[("GET", 200)] == 1


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
    assert app.state.services.metrics.requests[("GET", 404)] == 1
    assert app.state.services.metrics.requests[("GET", 500)] == 1
