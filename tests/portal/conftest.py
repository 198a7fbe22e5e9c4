"""Fixtures for the portal tests, in the Flask tutorial's shape: `settings` (a private data
dir, cheap password hashing), `app` and `client` (from tests/conftest.py), a signed-in client
per role, and the media and databases below the HTTP layer.

Clips are made once per session with the real ffmpeg (tiny: 320x180, 2 s, ultrafast), so
every test that needs media runs the same code paths as production on a real file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.testclient import TestClient

from portal.db import create_engine
from portal.migrations import upgrade
from portal.services import prepare_data_dir
from portal.settings import Settings
from tests.helpers import SignedIn, add_user, fast_settings, make_clip, postgres_database


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """argon2 at its cheapest keeps the suite fast (test_accounts checks the real cost).
    A test may change any setting: `@pytest.mark.settings(secure_cookies=True)`."""
    marker = request.node.get_closest_marker("settings")
    return fast_settings(tmp_path, **(marker.kwargs if marker else {}))


@pytest.fixture
def viewer_client(client: TestClient) -> SignedIn:
    """`client`, signed in as viewer@example.org (a viewer)."""
    return SignedIn(client, add_user(client, "viewer@example.org", "viewer", "Vera Viewer"))


@pytest.fixture
def creator_client(client: TestClient) -> SignedIn:
    """`client`, signed in as creator@example.org (a creator)."""
    return SignedIn(client, add_user(client, "creator@example.org", "creator", "Cleo Creator"))


@pytest.fixture
def admin_client(client: TestClient) -> SignedIn:
    """`client`, signed in as admin@example.org (an admin)."""
    return SignedIn(client, add_user(client, "admin@example.org", "admin", "Ada Admin"))


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s 320x180 H.264/AAC MP4."""
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4")


@pytest.fixture
async def engine(settings: Settings, database_url: str) -> AsyncIterator[AsyncEngine]:
    """A real database (SQLite and PostgreSQL) with the whole schema."""
    prepare_data_dir(settings)
    engine = create_engine(database_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sync_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for synchronous tests (TestClient, live_server), which
    cannot ask for the async `postgres_url` fixture."""
    with postgres_database() as url:
        yield url
