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
async def database_url(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[str]:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield settings.database_url
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def sample_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "samples"
    path.mkdir()
    yield path
