"""The media pipeline's commands, through click's CliRunner on a real data dir."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from portal.cli import main
from portal.demo import DEMO_EMAIL, seed_demo
from portal.services import open_services
from tests.helpers import create_account, pipeline_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path):
    return pipeline_settings(tmp_path)


@pytest.fixture
def env(settings):
    create_account(settings, "maker@example.org", "creator")
    return {
        "MEGAMOVIE_DATA_DIR": str(settings.data_dir),
        "MEGAMOVIE_TRANSCODE_PRESET": "ultrafast",
        "MEGAMOVIE_SEGMENT_SECONDS": "1",
    }


def query(settings, sql: str, *args: object) -> list[tuple]:
    db = sqlite3.connect(settings.data_dir / "megamovie.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_import_wait_processes_the_file_and_videos_delete_shreds_it(settings, env, clip):
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["import", str(clip), "--title", "From the shell", "--creator", "maker@example.org",
         "--tags", "cli", "--wait"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    video_id = result.stdout.splitlines()[0]
    assert f"{video_id} is ready" in result.stderr
    assert query(settings, "SELECT status, title, tags FROM videos WHERE id = ?", video_id) == [
        ("ready", "From the shell", "cli")
    ]
    assert list(settings.scratch_dir.iterdir()) == []

    deleted = runner.invoke(main, ["videos", "delete", video_id], env=env)
    assert deleted.exit_code == 0, deleted.output
    assert query(settings, "SELECT count(*) FROM videos") == [(0,)]
    assert query(settings, "SELECT count(*) FROM data_keys WHERE owner = ?", video_id) == [(0,)]
    again = runner.invoke(main, ["videos", "delete", video_id], env=env)
    assert again.exit_code == 1
    assert "There is no video" in again.output


def test_import_wait_exits_non_zero_with_the_reason_for_a_bad_file(settings, env, tmp_path):
    letter = tmp_path / "letter.mov"
    letter.write_text("Not a film at all.\n" * 40)
    result = CliRunner().invoke(
        main, ["import", str(letter), "--title", "Oops", "--creator", "maker@example.org",
               "--wait"], env=env,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "This is not a video or audio file." in result.output


def test_import_needs_a_creator_account(settings, env, clip):
    result = CliRunner().invoke(
        main, ["import", str(clip), "--title", "T", "--creator", "nobody@example.org"], env=env
    )
    assert result.exit_code == 1
    assert "There is no creator account 'nobody@example.org'" in result.output


def test_the_demo_fills_only_an_empty_catalog(settings):
    async def seed_twice() -> tuple[list[str], list[str]]:
        async with open_services(settings) as services:
            first = await seed_demo(services, seconds=1, count=2)
            second = await seed_demo(services, seconds=1, count=2)
            return first, second

    first, second = anyio.run(seed_twice)
    assert len(first) == 2 and second == []
    rows = query(settings, "SELECT v.status, u.email FROM videos v JOIN users u "
                 "ON u.id = v.creator_id")  # fmt: skip
    assert rows == [("queued", DEMO_EMAIL), ("queued", DEMO_EMAIL)]
    assert query(settings, "SELECT count(*) FROM jobs WHERE state = 'queued'") == [(2,)]


WAIT_ON_A_DONE_FILM = """
import asyncio, sys
from pathlib import Path
from portal.cli import _with_services
from portal.services import open_services
from portal.worker import wait_for_video
from tests.helpers import insert_user, insert_video, pipeline_settings

settings = pipeline_settings(Path(sys.argv[1]))

async def ready_film():
    async with open_services(settings) as services:
        return await insert_video(services.engine, await insert_user(services.engine), "ready")

film = asyncio.run(ready_film())
for _ in range(20):  # each run ends while its worker, just started, is claiming
    print(*_with_services(settings, wait_for_video, film, lambda progress: None), flush=True)
"""


def test_import_wait_returns_when_the_film_is_done_while_its_worker_queries(tmp_path):
    """`import --wait` stopped its worker by cancelling it, mid-query as often as not, and
    `asyncio.run` then hung for good at exit on the half-closed SQLite connection. A fresh
    interpreter, so a hang is a failed test rather than a stuck suite."""
    done = subprocess.run(
        [sys.executable, "-c", WAIT_ON_A_DONE_FILM, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ready None"] * 20
