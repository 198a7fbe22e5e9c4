"""The segment hot path: the route found without the router.

A player fetches a 2-6 MB segment every few seconds. `SegmentFastPath` is the innermost
middleware: every middleware (metrics, security headers, the unexpected-error 500, allowed
hosts, auth) runs for a segment as for any request, and only what lies between the last of
them and the endpoint is skipped: Starlette's router (a regular expression per route, tried
in order, for a hundred routes) and its exception middleware. What it does instead:

- the route: `GET /stream/{token}/{video_id}/{rendition}/{name}` is recognised by splitting
  the path; `index.m3u8` is the media playlist's route and goes the normal way, as does
  anything that is not exactly that shape (and every other method);
- the endpoint: the very same `portal.routes.playback.segment`, so token, licence, metering
  and conditional-request semantics are the endpoint's own, whatever they become;
- errors: mapped by the app's own exception handlers (`portal.http_errors`), found the way
  Starlette finds them; anything unhandled propagates to the middleware above, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]

_PREFIX = "/stream/"
_PLAYLIST = "index.m3u8"


class SegmentFastPath:
    def __init__(self, app: ASGIApp, endpoint: Endpoint, handlers: Mapping[Any, object]) -> None:
        """`handlers`: the app's exception handlers (portal.http_errors.exception_handlers)."""
        self.app = app
        self.endpoint = endpoint
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(_PREFIX) or scope["method"] != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        parts = path.split("/")  # "", "stream", token, video, rendition, name
        if len(parts) != 6 or not all(parts[2:]) or parts[5] == _PLAYLIST:
            await self.app(scope, receive, send)
            return
        token, video_id, rendition, name = parts[2:]
        scope["path_params"] = {
            "token": token,
            "video_id": video_id,
            "rendition": rendition,
            "name": name,
        }
        request = Request(scope, receive)
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            response = await self._handle(request, exc)
        await response(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        """The app's handler for `exc`, found by its MRO as Starlette's exception middleware
        finds it; no handler (or the catch-all one): raised on, to the middleware above."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                break
            handler = cast(Handler | None, self.handlers.get(cls))
            if handler is not None:
                return await handler(request, exc)
        raise exc
