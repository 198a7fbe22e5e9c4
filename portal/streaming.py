"""The segment hot path, in front of the framework's layers.

A player fetches a 2-6 MB segment every few seconds, and on that path Starlette's middleware
stack and router (a regular expression per route, a closure per middleware per message) cost
a fifth of the CPU of a whole request. `SegmentFastPath` sits outside them and answers
`GET /stream/{token}/{video_id}/{rendition}/{name}` itself, doing what the layers it skips
would have done, and nothing else:

- the route: the path is split, not matched against every route; `index.m3u8` is the media
  playlist's route and goes the normal way, as does anything that is not exactly that shape;
- the endpoint: the very same `portal.routes.playback.segment`, so token, licence and
  conditional-request semantics are the endpoint's own, whatever they become;
- `AuthMiddleware`: /stream/ has no caller lookup there either (the token is the authority);
- errors: mapped by the app's own exception handlers (`portal.http_errors`), as Starlette
  would map them;
- `SecurityHeadersMiddleware` and `MetricsMiddleware`: the same headers, the same counters.

Everything else is passed to the framework untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from portal.security import SECURITY_HEADERS

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]

_PREFIX = "/stream/"
_PLAYLIST = "index.m3u8"
#: What AuthMiddleware puts on the state of every /stream/ request.
_ANONYMOUS_STATE = {"user": None, "auth_via": None, "csrf_token": ""}
_SECURITY = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]


class SegmentFastPath:
    def __init__(
        self, app: ASGIApp, endpoint: Endpoint, handlers: Mapping[type[Exception], Handler]
    ) -> None:
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
        scope.setdefault("state", {}).update(_ANONYMOUS_STATE)
        request = Request(scope, receive)
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            response = await self._handle(request, exc)
        services = getattr(scope["app"].state, "services", None)
        if services is not None:
            services.metrics.count_request("GET", response.status_code)
        present = {name for name, _ in response.raw_headers}
        response.raw_headers.extend(h for h in _SECURITY if h[0] not in present)
        await response(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        """The app's handler for `exc`, found the way Starlette finds it (by the MRO)."""
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return await handler(request, exc)
        raise exc
