"""The application factory: `create_app(settings)` builds the whole portal, no globals.

Everything long-lived (database engine, vault, templates, workers) is made in the lifespan
and hung on `app.state`, so two apps with two settings can live in one process (the tests
rely on it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from portal.auth import AuthMiddleware
from portal.db import create_engine, create_schema
from portal.http_errors import exception_handlers
from portal.metrics import MetricsMiddleware
from portal.playback import tune_allocator
from portal.routes import accounts, catalog, ops, pages, playback, uploads, videos
from portal.security import SecurityHeadersMiddleware
from portal.settings import Settings
from portal.vault import open_vault
from portal.worker import media_pipeline

log = logging.getLogger("megamovie")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
STATIC_DIR = PROJECT_ROOT / "static"

# Each feature module exposes `routes`; add a module here to mount it.
ROUTE_MODULES = [ops, accounts, catalog, pages, uploads, videos, playback]


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir private to this user (it holds keys and the database)."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)


def build_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for module in ROUTE_MODULES:
        routes.extend(module.routes)
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    return routes


def build_middleware(settings: Settings) -> list[Middleware]:
    # Outermost first: even a CSRF refusal from AuthMiddleware gets the security headers.
    return [
        Middleware(MetricsMiddleware),
        Middleware(SecurityHeadersMiddleware),
        Middleware(AuthMiddleware, settings=settings),
    ]


def create_app(settings: Settings) -> Starlette:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        prepare_data_dir(settings)
        tune_allocator()  # segment buffers reused, not page-faulted in per request
        engine = create_engine(settings.database_url)
        await create_schema(engine)
        app.state.engine = engine
        try:
            app.state.vault = await open_vault(settings, engine)
            try:
                # Upload/job/token services, in-process workers and the upload-expiry sweep.
                async with media_pipeline(app, settings):
                    yield
            finally:
                await app.state.vault.aclose()
        finally:
            await engine.dispose()

    app = Starlette(
        routes=build_routes(),
        middleware=build_middleware(settings),
        exception_handlers=exception_handlers(),  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.templates = templates
    return app
