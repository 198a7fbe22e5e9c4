from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import anyio
import pytest
from sqlalchemy import event, select

from portal.db import jobs, segments, videos
from portal.jobs import JobQueue
from portal.layout import segment_path
from portal.processing import clean_scratch
from portal.services import open_services, vault_config
from portal.vault import open_vault
from portal.worker import Worker, worker_for
from tests.helpers import (
    PLAINTEXT_MARKERS,
    eventually,
    files_containing,
    insert_user,
    insert_video,
    live_processes_naming,
    make_clip,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(settings):
    return settings.replace(transcode_preset="ultrafast", segment_seconds=1.0)


@pytest.fixture
async def vault(settings, engine):
    vault = await open_vault(vault_config(settings), engine)
    yield vault
    await vault.aclose()


async def uploaded_video(engine, vault, source: bytes) -> str:
    """A queued video whose source sits in the vault in two parts, as two PATCHes leave it."""
    video_id = await insert_video(engine, await insert_user(engine), status="queued")
    await vault.create_key(video_id)
    half = len(source) // 2
    await vault.put(video_id, "source/part-000001", source[:half])
    await vault.put(video_id, "source/part-000002", source[half:])
    return video_id


async def video_row(engine, video_id):
    async with engine.connect() as conn:
        return (await conn.execute(select(videos).where(videos.c.id == video_id))).mappings().one()


async def test_a_dead_workers_clip_is_taken_over_and_becomes_an_encrypted_ladder(
    settings, engine, vault, clip
):
    video_id = await uploaded_video(engine, vault, clip.read_bytes())
    queue = JobQueue(engine, lease_seconds=0.3, max_attempts=3)
    await queue.enqueue(video_id)
    assert await queue.claim("killed-mid-job") is not None
    await anyio.sleep(0.4)

    worker = Worker(settings, engine, vault, queue, name="survivor")
    assert await worker.run_once() is True

    video = await video_row(engine, video_id)
    assert video["status"] == "ready", video["error"]
    assert video["progress"] == 1.0 and video["playable"] and video["has_poster"]
    assert video["duration"] == pytest.approx(2.0, abs=0.1)
    assert (video["width"], video["height"]) == (320, 180)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(segments).where(segments.c.video_id == video_id))).all()
        job = (await conn.execute(select(jobs))).mappings().one()
    assert (job["state"], job["attempts"], job["lease_owner"]) == ("done", 2, None)
    media = sorted(r.idx for r in rows if r.idx >= 0)
    assert media == list(range(len(media))) and len(media) >= 2
    assert sum(r.duration for r in rows) == pytest.approx(2.0, abs=0.1)

    stored = set(await vault.list(video_id))
    assert {"poster.jpg", "storyboard.jpg", "storyboard.vtt"} <= stored
    assert segment_path("180p", -1) in stored and segment_path("180p", media[-1]) in stored
    init = await vault.read(video_id, segment_path("180p", -1))
    first = await vault.read(video_id, segment_path("180p", 0))
    assert init[4:8] == b"ftyp"
    assert first[4:8] == b"styp" and b"moof" in first and b"mdat" in first
    assert (await vault.read(video_id, "storyboard.vtt")).startswith(b"WEBVTT")

    # What rests on disk is ciphertext only, and the private temp dir is gone.
    assert list(settings.scratch_dir.iterdir()) == []
    assert files_containing(settings.data_dir, PLAINTEXT_MARKERS) == []


async def test_a_file_that_is_not_a_video_fails_at_once_with_its_reason(settings, engine, vault):
    video_id = await uploaded_video(engine, vault, b"Dear diary, today I uploaded a letter.\n" * 50)
    queue = JobQueue(engine, lease_seconds=30, max_attempts=3)
    await queue.enqueue(video_id)

    assert await Worker(settings, engine, vault, queue).run_once() is True

    video = await video_row(engine, video_id)
    assert video["status"] == "failed"
    assert video["error"] == "This is not a video or audio file."
    async with engine.connect() as conn:
        job = (await conn.execute(select(jobs))).mappings().one()
    assert (job["state"], job["attempts"]) == ("failed", 1)  # not retried: it will not improve
    assert list(settings.scratch_dir.iterdir()) == []


def test_scratch_dirs_of_dead_processes_are_removed_at_start_up(settings):
    settings.scratch_dir.mkdir(parents=True)
    dead = settings.scratch_dir / "job-4194305-abc"  # above any pid_max: no such process
    (dead / "hls").mkdir(parents=True)
    (dead / "source").write_bytes(b"plaintext of someone's film")
    stray = settings.scratch_dir / "stray-file"
    stray.write_bytes(b"x")
    live = settings.scratch_dir / f"job-{os.getpid()}-def"
    live.mkdir()

    assert clean_scratch(settings) == 2
    assert list(settings.scratch_dir.iterdir()) == [live]


async def test_a_worker_stopped_mid_job_hands_the_job_back_and_leaves_no_plaintext(
    settings, engine, vault, clip
):
    video_id = await uploaded_video(engine, vault, clip.read_bytes())
    queue = JobQueue(engine, lease_seconds=30, max_attempts=3)
    job_id = await queue.enqueue(video_id)

    async def processing_started() -> None:
        # Polling the row is the point: the worker runs in its own task, as in production.
        while True:
            if (await video_row(engine, video_id))["status"] == "processing":
                return
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(Worker(settings, engine, vault, queue).run_once)
        await processing_started()
        tg.cancel_scope.cancel()  # what the app's shutdown does after its grace period

    async with engine.connect() as conn:
        job = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()
    assert (job["state"], job["attempts"], job["lease_owner"]) == ("queued", 0, None)
    assert (await video_row(engine, video_id))["status"] == "queued"
    assert list(settings.scratch_dir.iterdir()) == []


async def test_master_playlist_bandwidths_are_measured_from_the_stored_segments(
    settings, engine, vault, clip
):
    from portal.db import renditions

    video_id = await uploaded_video(engine, vault, clip.read_bytes())
    queue = JobQueue(engine, lease_seconds=30, max_attempts=1)
    await queue.enqueue(video_id)
    assert await Worker(settings, engine, vault, queue).run_once() is True

    async with engine.connect() as conn:
        rendition = (await conn.execute(select(renditions))).mappings().one()
        rows = (
            await conn.execute(
                select(segments).where(segments.c.video_id == video_id, segments.c.idx >= 0)
            )
        ).all()
    # CODECS as encoded: the portal's preset (ultrafast) writes Constrained Baseline.
    assert rendition["codecs"] == "avc1.42c01e,mp4a.40.2"
    peak = max(r.size * 8 / r.duration for r in rows)
    average = sum(r.size for r in rows) * 8 / sum(r.duration for r in rows)
    assert rendition["bandwidth"] == pytest.approx(peak, abs=1)
    assert rendition["average_bandwidth"] == pytest.approx(average, abs=1)
    assert rendition["bandwidth"] >= rendition["average_bandwidth"]


ROOT = str(Path(__file__).resolve().parents[2])
WORKER = """
import sys
import anyio
from portal.db import create_engine
from portal.processing import Processor
from portal.services import vault_config
from portal.settings import Settings
from portal.vault import open_vault

async def main(data_dir: str, database_url: str, video_id: str) -> None:
    settings = Settings.from_env(
        {"MEGAMOVIE_DATA_DIR": data_dir}, database_url=database_url,
        transcode_preset="veryslow", segment_seconds=1.0,
    )
    engine = create_engine(database_url)
    vault = await open_vault(vault_config(settings), engine)
    await Processor(settings, engine, vault).process(video_id)
    print("finished", flush=True)

anyio.run(main, *sys.argv[1:])
"""


async def test_a_worker_killed_mid_transcode_leaves_no_ffmpeg_and_no_plaintext(
    settings, engine, vault, database_url, tmp_path
):
    long_clip = make_clip(tmp_path / "long.mp4", seconds=30, size="640x360")
    video_id = await uploaded_video(engine, vault, long_clip.read_bytes())
    worker = await anyio.open_process(
        [sys.executable, "-c", WORKER, str(settings.data_dir), database_url, video_id],
        stdin=None, stdout=None, stderr=None, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    try:
        scratch = str(settings.scratch_dir)

        def transcoding() -> bool:
            # ffmpeg encoding into the job's hls/ dir, with segments already handed over.
            return any(
                b"/hls/" in Path(f"/proc/{pid}/cmdline").read_bytes()
                for pid in live_processes_naming(scratch)
            ) and bool(list(settings.scratch_dir.glob("job-*/hls/*")))

        assert await anyio.to_thread.run_sync(lambda: eventually(transcoding, 60))
        worker.kill()  # SIGKILL: no finally, no shutdown handler runs
        await worker.wait()

        gone = await anyio.to_thread.run_sync(
            lambda: eventually(lambda: live_processes_naming(scratch) == [])
        )
        assert gone, "ffmpeg outlived the worker"
        emptied = await anyio.to_thread.run_sync(
            lambda: eventually(lambda: list(settings.scratch_dir.iterdir()) == [])
        )
        assert emptied, "plaintext outlived the worker"
    finally:
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        await worker.wait()


async def test_a_film_is_published_before_its_poster_and_storyboard_are_made(
    settings, engine, vault, clip
):
    """A viewer waits for the first segments of every rung, never for pictures: the video
    row turns playable before the poster and storyboard are stored."""
    video_id = await uploaded_video(engine, vault, clip.read_bytes())
    order: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many):
        if statement.startswith("UPDATE videos SET"):
            for column in ("playable", "has_poster"):
                if f" {column}=" in statement and column not in order:
                    order.append(column)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        queue = JobQueue(engine, lease_seconds=30, max_attempts=1)
        await queue.enqueue(video_id)
        assert await Worker(settings, engine, vault, queue).run_once() is True
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    video = await video_row(engine, video_id)
    assert video["status"] == "ready", video["error"]
    assert video["has_poster"] and video["has_storyboard"]
    # The first update naming `playable` is the one that publishes it (`_reset` sets it False
    # with the rest of its columns before anything, so it is skipped by looking for "SET").
    assert order == ["playable", "has_poster"]


async def test_an_idle_worker_takes_an_upload_finished_in_its_process_at_once(settings, clip):
    """No poll interval between the end of an upload and its transcode: the queue wakes
    this process's idle workers."""
    async with open_services(settings) as services:
        await _transcoded_at_once(services, services, clip)


@pytest.mark.postgres
async def test_an_idle_worker_in_another_process_takes_an_upload_at_once(
    settings, clip, postgres_url
):
    """On PostgreSQL the queue wakes idle workers of other processes (other machines) too:
    the upload ends in one `Services`, with its own engine and queue, and a worker of
    another one hears of it and transcodes it."""
    settings = settings.replace(database_url=postgres_url)
    async with open_services(settings) as uploading, open_services(settings) as working:
        assert uploading.jobs is not working.jobs and uploading.engine is not working.engine
        await _transcoded_at_once(uploading, working, clip)


async def _transcoded_at_once(uploading, working, clip) -> None:
    """An upload finished through `uploading` is transcoded by an idle worker of `working`
    (the same services, or another process's), which would otherwise sleep for an hour."""
    creator = await insert_user(uploading.engine, role="creator")
    worker = worker_for(working, poll_seconds=3600)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(working.jobs.listen, stop)  # nothing to listen to on SQLite
        tg.start_soon(functools.partial(worker.run, stop=stop))
        await anyio.sleep(0.2)  # the worker found the queue empty and waits
        video_id = await uploading.uploads.import_file(creator, clip, {"title": "Now"})
        with anyio.fail_after(120):
            # The worker task writes the row; the test reads the database, as a page would.
            while (await video_row(uploading.engine, video_id))["status"] != "ready":  # noqa: ASYNC110
                await anyio.sleep(0.05)
        stop.set()
