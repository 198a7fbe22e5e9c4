"""Media and database fixtures shared by the portal tests.

Clips are made once per session with the real ffmpeg (tiny: 320x180, 2 s, ultrafast), so
every test that needs media runs the same code paths as production on a real file.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import create_engine, new_id, users, utcnow, videos
from portal.migrations import upgrade
from portal.services import prepare_data_dir
from portal.settings import Settings


def make_clip(out: Path, *, seconds: float = 2, size: str = "320x180") -> Path:
    """A real H.264/AAC MP4 made by ffmpeg from its test sources."""
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=24",
            "-f", "lavfi", "-i", "sine=frequency=440",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(out),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return out


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


async def insert_user(engine: AsyncEngine, role: str = "creator") -> str:
    """A user row straight into the table, for tests below the accounts layer."""
    user_id = new_id()
    async with engine.begin() as conn:
        await conn.execute(
            users.insert().values(
                id=user_id,
                email=f"{user_id}@example.test",
                display_name="Test " + role,
                password_hash="!",  # matches no password: this user cannot log in
                role=role,
                created_at=utcnow(),
            )
        )
    return user_id


async def insert_video(engine: AsyncEngine, creator_id: str, status: str = "queued") -> str:
    video_id = new_id()
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            videos.insert().values(
                id=video_id,
                creator_id=creator_id,
                title="A test film",
                description="",
                tags="",
                status=status,
                progress=0.0,
                created_at=now,
                updated_at=now,
            )
        )
    return video_id


PASSWORD = "correct horse battery"
TUS = {"Tus-Resumable": "1.0.0"}


def pipeline_settings(tmp_path: Path, **changes: object) -> Settings:
    """Settings for media tests: cheap password hashing, the fastest x264 preset, no
    in-process workers unless a test asks for them."""
    return Settings.from_env(
        {"MEGAMOVIE_DATA_DIR": str(tmp_path / "data")},
        **{
            "argon2_time_cost": 1,
            "argon2_memory_kib": 1024,
            "transcode_preset": "ultrafast",
            "segment_seconds": 1.0,
            "workers": 0,
            **changes,
        },
    )


def create_account(settings: Settings, email: str, role: str = "creator") -> str:
    """A real account in the settings' database (made before or beside a running app);
    returns the user id."""
    from portal.accounts import create_user

    async def create() -> str:
        prepare_data_dir(settings)
        engine = create_engine(settings.database_url)
        try:
            await upgrade(engine)
            user = await create_user(engine, settings, email=email, password=PASSWORD, role=role)
            return user.id
        finally:
            await engine.dispose()

    return anyio.run(create)


def bearer(client: Any, email: str) -> dict[str, str]:
    """Authorization header from `POST /api/tokens` (client: TestClient or httpx.Client)."""
    response = client.post("/api/tokens", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture
def sync_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for synchronous tests (TestClient, live_server), which
    cannot ask for the async `postgres_url` fixture."""
    import asyncpg

    from tests.conftest import POSTGRES_ADMIN_DSN

    name = "mm_test_" + secrets.token_hex(6)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(admin, f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    anyio.run(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
