"""Fixtures shared by every test: settings on a private data dir, and real databases.

PostgreSQL is the real server on 127.0.0.1:5432 (started by .ci/services); each test that
asks for it gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from portal.settings import Settings

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


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
def sample_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "samples"
    path.mkdir()
    yield path


class LiveServer:
    """The real portal under uvicorn on a free loopback port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import socket
        import threading

        import uvicorn

        from portal.app import create_app
        from portal.server import server_config

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.settings = settings.replace(host="127.0.0.1", port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        # The configuration `megamovie serve` runs, time limits included.
        config = server_config(create_app(self.settings), self.settings, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the portal did not start within 30 s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """A running portal on the test's own data dir; `live_server.url` is its base URL."""
    server = LiveServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()
