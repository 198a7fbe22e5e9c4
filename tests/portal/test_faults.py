"""The faults a launch brings, done to real servers: PostgreSQL restarted, S3 gone for a
while, the disk full. Each request fails with a clear 503 (507 for a full disk) naming what
is down, never a 500 or a hang; /healthz says which part; nothing half-written is left; and
service resumes by itself, without restarting the portal.

PostgreSQL and SeaweedFS here are private to each test (benchmarks/stack.py starts them), so
stopping them disturbs nobody else. The disk-full tests mount a small tmpfs, which needs
root (as in CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.stack import PostgresCluster, SeaweedFS
from portal.catalog import list_videos
from portal.db import create_engine, jobs, segments, videos
from portal.jobs import JobQueue
from portal.layout import segment_path
from portal.migrations import upgrade
from portal.outages import outage_of
from portal.services import open_services
from portal.settings import Settings
from portal.worker import Worker
from tests.helpers import (
    PASSWORD,
    TUS,
    LiveServer,
    add_video,
    bearer,
    create_account,
    insert_user,
    pipeline_settings,
)

# Each check is bounded: a hang fails the test instead of stalling the suite.
CLIENT_TIMEOUT = 30.0


def _signup(client: httpx.Client, email: str) -> httpx.Response:
    page = client.get("/signup")
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    form = {"csrf_token": token.group(1), "email": email, "password": PASSWORD, "role": "viewer"}
    return client.post("/signup", data=form)


def _until_healthy(client: httpx.Client, deadline: float = 60.0) -> dict[str, str]:
    stop = time.monotonic() + deadline
    while True:
        answer = client.get("/healthz")
        if answer.status_code == 200 or time.monotonic() > stop:
            return answer.json()
        time.sleep(0.2)


@pytest.mark.postgres
def test_postgres_restart_answers_503_then_service_resumes_by_itself(tmp_path):
    cluster = PostgresCluster().start()
    server = LiveServer(pipeline_settings(tmp_path, database_url=cluster.url))
    server.start()
    running = True
    try:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
            assert client.get("/api/videos").status_code == 200
            assert _signup(client, "before@example.org").status_code == 303

            cluster.stop()
            running = False
            down = client.get("/api/videos")  # a logged-in client: its session is looked up
            assert down.status_code == 503
            assert down.json()["error"] == "unavailable"
            assert "database" in down.json()["message"]
            assert int(down.headers["retry-after"]) >= 1
            page = client.get("/")
            assert page.status_code == 503 and "try again" in page.text
            health = client.get("/healthz")
            assert health.status_code == 503
            assert health.json() == {"status": "unhealthy", "database": "down", "storage": "up"}
            with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as stranger:
                assert _signup(stranger, "during@example.org").status_code == 503

            cluster.start()
            running = True
            assert _until_healthy(client) == {"status": "ok", "database": "up", "storage": "up"}
            assert client.get("/api/videos").status_code == 200
            with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as stranger:
                # Nothing of the refused sign-up was kept: the address is still free.
                assert _signup(stranger, "during@example.org").status_code == 303
    finally:
        server.stop()
        if running:
            cluster.stop()
        cluster.remove()


async def _pooled_connections(engine: AsyncEngine, count: int) -> set[int]:
    """Puts `count` connections in the engine's pool, just used; their server pids."""
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(engine.connect()) for _ in range(count)]
        return {
            (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() for conn in conns
        }


async def _terminate(database_url: str, pids: set[int]) -> None:
    """Kills those backends server-side and waits until the server has let them go."""
    admin = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(pids)
        )
        for _ in range(100):
            alive = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)
            )
            if not alive:
                return
            await anyio.sleep(0.05)
        raise AssertionError(f"backends {pids} were not terminated")
    finally:
        await admin.close()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_catalog_reads_survive_connections_killed_while_idle_in_the_pool(postgres_url):
    engine = create_engine(postgres_url)
    try:
        await upgrade(engine)
        creator = await insert_user(engine)
        await add_video(engine, creator, title="Still Here")
        pids = await _pooled_connections(engine, 2)
        await _terminate(postgres_url, pids)

        # Both pooled connections are dead and were used a moment ago, so they are handed
        # out unpinged: the read finds its connection dead and reads again on a fresh one.
        assert [item.title for item in (await list_videos(engine)).items] == ["Still Here"]
        assert [item.title for item in (await list_videos(engine)).items] == ["Still Here"]
        # The other dead connection was pinged and replaced, not handed to this statement.
        assert await _pooled_connections(engine, 2) & pids == set()
    finally:
        await engine.dispose()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_a_connection_killed_in_the_pool_fails_at_most_one_statement_with_503(
    postgres_url,
):
    engine = create_engine(postgres_url)
    try:
        await upgrade(engine)
        pids = await _pooled_connections(engine, 1)
        await _terminate(postgres_url, pids)

        try:  # pinged first when it sat idle; otherwise the statement meets the dead link
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            assert outage_of(exc) is not None  # a 503 naming the database, not a 500
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def _ready_film(settings: Settings, data: bytes) -> str:
    """A creator and a ready film whose one segment is `data`, stored through the vault."""
    from tests.helpers import insert_video

    async with open_services(settings) as services:
        creator = await insert_user(services.engine)
        video_id = await insert_video(services.engine, creator, status="ready")
        await services.vault.create_key(video_id)
        await services.vault.put(video_id, segment_path("180p", 0), data)
        async with services.engine.begin() as conn:
            await conn.execute(videos.update().values(playable=True))
            await conn.execute(
                segments.insert().values(
                    video_id=video_id, rendition="180p", idx=0, duration=4.0, size=len(data)
                )
            )
    return video_id


def _until_served(client: httpx.Client, path: str, deadline: float = 60.0) -> list[httpx.Response]:
    answers = []
    stop = time.monotonic() + deadline
    while True:
        answers.append(client.get(path))
        if answers[-1].status_code == 200 or time.monotonic() > stop:
            return answers
        time.sleep(0.2)


@pytest.mark.s3
def test_s3_unreachable_answers_503_then_service_resumes_by_itself(tmp_path):
    s3 = SeaweedFS(tmp_path / "seaweedfs").start()
    try:
        settings = pipeline_settings(tmp_path).replace(**_s3_settings(s3))
        data = os.urandom(300_000)
        video_id = anyio.run(_ready_film, settings, data)
        server = LiveServer(settings)
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
                url = client.get(f"/api/videos/{video_id}/playback").json()["url"]
                segment = url.rsplit("/", 1)[0] + "/180p/000000.m4s"
                assert client.get(segment).content == data

                s3.stop()
                down = client.get(segment)
                assert down.status_code == 503
                assert down.json()["error"] == "storage_error"
                assert down.headers["retry-after"]
                health = client.get("/healthz")
                assert health.status_code == 503
                assert health.json() == {"status": "unhealthy", "database": "up",
                                         "storage": "down"}  # fmt: skip

                s3.start()
                assert _until_healthy(client)["storage"] == "up"
                # SeaweedFS answers for its bucket before its volumes are back: until they
                # are, a read is a 503 too, never a 500 or garbage.
                answers = _until_served(client, segment)
                assert {a.status_code for a in answers[:-1]} <= {503}
                assert answers[-1].content == data
        finally:
            server.stop()
    finally:
        s3.stop()


def _s3_settings(s3: SeaweedFS) -> dict[str, object]:
    from portal.settings import Secret

    return {
        "storage_url": f"s3://{s3.bucket}/faults",
        "s3_endpoint_url": s3.endpoint,
        "s3_access_key_id": s3.access_key,
        "s3_secret_access_key": Secret(s3.secret),
        "s3_timeout_seconds": 2.0,
    }


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """mount(path, size) a tmpfs of `size` bytes on `path`; resize(path, size); all
    unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path, size: int, remount: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"{'remount,' if remount else ''}size={size},mode=0700"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        if not remount:
            mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_during_an_upload_fails_cleanly_and_the_upload_resumes(tmp_path, small_disk):
    from starlette.testclient import TestClient

    from portal.app import create_app

    settings = pipeline_settings(tmp_path)
    objects = small_disk(settings.data_dir / "objects", 1024 * 1024)
    create_account(settings, "full@example.org")
    body = os.urandom(3_000_000)
    with TestClient(create_app(settings)) as client:
        auth = {**bearer(client, "full@example.org"), **TUS}
        created = client.post("/api/uploads", headers={**auth, "Upload-Length": str(len(body))})
        assert created.status_code == 201
        location = created.headers["location"]
        patch = {**auth, "Upload-Offset": "0",
                 "Content-Type": "application/offset+octet-stream"}  # fmt: skip
        full = client.patch(location, content=body, headers=patch)
        assert full.status_code == 507
        assert full.json()["error"] == "insufficient_storage"
        assert "disk is full" in full.json()["message"]
        assert full.headers["tus-resumable"] == "1.0.0"
        # The partial object is gone and the upload did not move on.
        assert [p for p in objects.rglob("*") if p.is_file()] == []
        assert client.head(location, headers=auth).headers["upload-offset"] == "0"

        small_disk(objects, 16 * 1024 * 1024, remount=True)  # the operator frees space
        done = client.patch(location, content=body, headers=patch)
        assert done.status_code == 204, done.text
        assert done.headers["upload-offset"] == str(len(body))


@pytest.mark.anyio
async def test_disk_full_during_a_transcode_fails_the_attempt_and_it_runs_again(
    tmp_path, small_disk, clip
):
    from tests.helpers import insert_video

    settings = pipeline_settings(tmp_path)
    scratch = small_disk(settings.scratch_dir, 16 * 1024)  # less than the decrypted source
    async with open_services(settings) as services:
        engine, vault = services.engine, services.vault
        video_id = await insert_video(engine, await insert_user(engine), status="queued")
        await vault.create_key(video_id)
        await vault.put(video_id, "source/part-000001", clip.read_bytes())
        queue = JobQueue(engine, lease_seconds=30, max_attempts=3, backoff_seconds=0)
        await queue.enqueue(video_id)
        worker = Worker(settings, engine, vault, queue)

        assert await worker.run_once() is True
        async with engine.connect() as conn:
            job = (await conn.execute(select(jobs))).mappings().one()
            video = (await conn.execute(select(videos))).mappings().one()
        assert (job["state"], job["attempts"]) == ("queued", 1)  # to be tried again
        assert video["status"] == "queued" and not video["playable"]
        assert list(scratch.iterdir()) == []  # no half-written plaintext left behind
        assert await vault.list(video_id, "hls/") == []

        small_disk(scratch, 64 * 1024 * 1024, remount=True)
        assert await worker.run_once() is True
        async with engine.connect() as conn:
            job = (await conn.execute(select(jobs))).mappings().one()
            video = (await conn.execute(select(videos))).mappings().one()
        assert (job["state"], job["attempts"]) == ("done", 2)
        assert video["status"] == "ready", video["error"]
        assert list(scratch.iterdir()) == []
