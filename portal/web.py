"""What every route module shares: the typed services, who is asking, and page rendering.

Routes parse, call the domain, render: this module is the glue they use for it. Templates get
`url_for(name, **params)`, which answers the route's *path* (never an absolute URL built from
the request's Host header), and filters for durations and sizes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, cast

import jinja2
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.errors import BadRequest, PayloadTooLarge
from portal.metrics import Metrics
from portal.money import CURRENCIES, format_amount
from portal.parsing import clean_text, optional_header_int, parse_json
from portal.security import client_ip
from portal.services import Services
from portal.settings import Settings
from portal.videos import Viewer, poster_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
STATIC_DIR = PROJECT_ROOT / "static"


#: JSON bodies of the money and licensing endpoints are small objects.
API_BODY_LIMIT = 16 * 1024


def services_of(request: Request) -> Services:
    """The app's services (set by the lifespan in portal.app)."""
    return cast(Services, request.app.state.services)


def settings_of(request: Request) -> Settings:
    """The app's settings (known from construction, before the lifespan has run)."""
    return cast(Settings, request.app.state.settings)


def viewer_of(request: Request) -> Viewer:
    """The caller as a `Viewer`: the logged-in user, or a keyed hash of the address."""
    user = getattr(request.state, "user", None)
    if user is not None:
        return Viewer(user)
    return Viewer.anonymous(services_of(request).secret_key, client_ip(request))


def public_url(request: Request, path: str) -> str:
    """The URL clients should use for `path`: under `MEGAMOVIE_BASE_URL` when it is set, or
    the path alone (relative to wherever the client reached us). Never built from the Host
    header, which the client chose."""
    base = settings_of(request).base_url
    return base + path if base else path


def format_duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour up; empty when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_size(size: int | None) -> str:
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - loop returns at GB


@jinja2.pass_context
def _url_for(context: dict[str, Any], name: str, /, **params: Any) -> str:
    request: Request = context["request"]
    return str(request.app.url_path_for(name, **params))


def format_money(amount: int | None, currency: str | None) -> str:
    """499, "EUR" -> "4.99 EUR" (integer arithmetic; the currency's own minor unit)."""
    if amount is None or not currency:
        return ""
    try:
        return f"{format_amount(int(amount), currency)} {currency}"
    except KeyError:
        return f"{amount} {currency}"


def format_time_left(seconds: int | None) -> str:
    """Time left in words, coarse: "2 d 3 h", "5 h 12 min", "8 min"; "ended" below zero."""
    if seconds is None:
        return ""
    if seconds <= 0:
        return "ended"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{max(1, minutes)} min"


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(("html", "xml")),
    )
    env.globals["url_for"] = _url_for
    env.globals["poster_path"] = poster_path
    env.filters["duration"] = format_duration
    env.filters["filesize"] = format_size
    env.filters["time_left"] = format_time_left
    env.globals["money"] = format_money
    env.globals["currencies"] = list(CURRENCIES)
    # For static/js/money.js: each currency's minor unit exponent (EUR 2, JPY 0).
    env.globals["currency_exponents"] = json.dumps(CURRENCIES, separators=(",", ":"))
    return Jinja2Templates(env=env)


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    """A page from templates/: every page shows who is logged in and carries the CSRF token."""
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(
        request,
        name,
        context or {},
        status_code=status_code,
        # Pages hold a CSRF token and personal data: never keep them in a shared cache.
        headers={"Cache-Control": "no-store"},
    )


# -- request bodies: read only up to each endpoint's cap, parsed by portal.parsing ----------

#: An HTML form is at most this big unless its endpoint says otherwise.
FORM_BODY_LIMIT = 16 * 1024
#: Form fields per request: our forms have five or fewer.
MAX_FORM_FIELDS = 50


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes: from
    `Content-Length` before reading anything, or while counting a chunked body."""
    declared = optional_header_int(request.headers, "content-length")
    if declared is not None and declared > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise BadRequest("The request body ended before it was complete.", "body") from None
    return bytes(body)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"This request body is limited to {limit:,} bytes.")


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, bounded in size (`read_body`) and depth (`portal.parsing.parse_json`);
    BadRequest when it is not JSON."""
    return parse_json(await read_body(request, limit))


async def json_object(request: Request, limit: int = API_BODY_LIMIT) -> dict[str, Any]:
    """The request's JSON body, which must be an object: bounded in size and depth by
    `read_json` (413, 400), BadRequest (400) when it is not an object."""
    body = await read_json(request, limit)
    if not isinstance(body, dict):
        raise BadRequest("Send a JSON object as the request body.", "body")
    return body


async def read_form(request: Request, limit: int = FORM_BODY_LIMIT) -> FormData:
    """The submitted form (URL-encoded or multipart without files), bounded like `read_body`,
    every field name and value clean text."""
    body = await read_body(request, limit)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(
        max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=limit
    )
    for name, value in form.multi_items():
        clean_text(name, "form")
        if isinstance(value, UploadFile):  # max_files=0 refuses them; belt and braces
            raise BadRequest("This form takes no files.", name)
        clean_text(value, name)
    return form


async def check_rate_limit(request: Request, action: str) -> None:
    """Rate-limit `action` (login, signup, token) per client and for everyone together
    (portal.ratelimit); RateLimited (429 + Retry-After) when over."""
    services_of(request).limiter.hit(action, client_ip(request))


def _is_segment(path: str) -> bool:
    return path.startswith("/stream/") and path.endswith((".m4s", ".mp4"))


class MetricsMiddleware:
    """Counts every HTTP response by method and status, and times segment requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = getattr(scope["app"].state, "services", None)
        metrics: Metrics | None = services.metrics if services is not None else None
        if metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        timed = _is_segment(scope["path"])

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics.count_request(scope["method"], message["status"])
            await send(message)
            if timed and message["type"] == "http.response.body" and not message.get("more_body"):
                metrics.segment_seconds.observe(time.perf_counter() - started)

        await self.app(scope, receive, counting_send)
