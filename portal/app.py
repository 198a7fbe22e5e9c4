"""The application factory: `create_app(settings)` builds the whole portal, no globals.

Everything long-lived is built by `portal.services.open_services` in the lifespan and hung on
`app.state.services` (handlers reach it typed through `portal.web.services_of`), so two apps
with two settings can live in one process (the tests rely on it). Only the CLI imports this
module.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from portal.admission import Admission, AdmissionMiddleware
from portal.auth import AuthMiddleware
from portal.http_errors import UnexpectedErrorMiddleware, exception_handlers
from portal.playback import tune_allocator
from portal.routes import (
    accounts,
    catalog,
    creator,
    licensing,
    money,
    ops,
    pages,
    payments,
    playback,
    uploads,
    videos,
    viewer_pages,
)
from portal.security import RequestGateMiddleware, SecurityHeadersMiddleware
from portal.services import open_services
from portal.settings import Settings
from portal.streaming import SegmentFastPath
from portal.web import STATIC_DIR, MetricsMiddleware, make_templates
from portal.worker import media_pipeline

log = logging.getLogger("megamovie")

# Each feature module exposes `routes`; add a module here to mount it.
ROUTE_MODULES = [
    ops,
    accounts,
    catalog,
    pages,
    viewer_pages,
    uploads,
    videos,
    playback,
    licensing,
    money,
    creator,
    payments,
]


def build_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for module in ROUTE_MODULES:
        routes.extend(module.routes)
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    return routes


def build_middleware(settings: Settings, admission: Admission | None = None) -> list[Middleware]:
    # Outermost first: even a CSRF refusal from AuthMiddleware and the 500 for an unexpected
    # exception get the security headers, and so does a request shed by admission control,
    # which comes before any database work.
    if admission is None:
        admission = Admission(settings.max_in_flight, settings.max_in_flight_new)
    return [
        Middleware(MetricsMiddleware),
        Middleware(SecurityHeadersMiddleware),
        Middleware(uploads.TusResumableMiddleware),
        Middleware(UnexpectedErrorMiddleware),
        Middleware(RequestGateMiddleware, allowed=settings.host_names),
        Middleware(AdmissionMiddleware, admission=admission),
        Middleware(AuthMiddleware, settings=settings),
        # Innermost: segment GETs go straight to their endpoint, not through the router.
        Middleware(
            SegmentFastPath,
            endpoint=playback.segment,
            handlers=exception_handlers(),
        ),
    ]


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tune_allocator()  # segment buffers reused, not page-faulted in per request
        async with open_services(settings) as services:
            app.state.services = services
            # In-process workers and the upload-expiry sweep.
            async with media_pipeline(services):
                yield

    admission = Admission(settings.max_in_flight, settings.max_in_flight_new)
    app = Starlette(
        routes=build_routes(),
        middleware=build_middleware(settings, admission),
        exception_handlers=exception_handlers(),  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.admission = admission
    app.state.templates = make_templates()
    return app
