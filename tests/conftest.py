"""Fixtures shared by every test: settings on a private data dir, and real databases.

PostgreSQL is the real server on 127.0.0.1:5432 (started by .ci/services); each test that
asks for it gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from starlette.applications import Starlette
from starlette.testclient import TestClient

from portal.app import create_app
from portal.settings import Settings
from tests.helpers import POSTGRES_ADMIN_DSN, LiveServer

# Tests never assert on timings: hypothesis' per-example deadline is one (a loaded 2-core CI
# machine made a 75 ms example take 283 ms and fail), so it is off for every property test.
hypothesis_settings.register_profile("megamovie", deadline=None)
hypothesis_settings.load_profile("megamovie")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"MEGAMOVIE_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    import asyncpg

    name = "mm_test_" + secrets.token_hex(6)
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, settings: Settings) -> Iterator[str]:
    """The same test on SQLite and on PostgreSQL.

    Synchronous on purpose: an async fixture may not request another async fixture
    dynamically (anyio refuses to re-enter its runner)."""
    if request.param == "sqlite":
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        yield settings.database_url
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def app(settings: Settings) -> Starlette:
    """The whole portal, built by its factory from the test's settings (no lifespan yet)."""
    return create_app(settings)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    """A client of `app`, entered: the lifespan has opened the database, vault and workers,
    and closes them after the test."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def sample_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "samples"
    path.mkdir()
    yield path


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """A running portal on the test's own data dir; `live_server.url` is its base URL."""
    server = LiveServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A skipped test is a defect here (a missing tool must fail the run, not hide a test):
    every skip is reported as a failure that says where it came from."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, which this suite does not allow: {report.longrepr}"
