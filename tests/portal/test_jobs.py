from __future__ import annotations

import anyio
import asyncpg
import pytest
from sqlalchemy import select

from portal.db import create_engine, jobs, videos
from portal.jobs import WORKER_LOST, JobQueue, LeaseLost
from portal.migrations import upgrade
from tests.helpers import insert_user, insert_video

pytestmark = pytest.mark.anyio


async def queued_video(engine) -> str:
    return await insert_video(engine, await insert_user(engine))


async def video_row(engine, video_id):
    async with engine.connect() as conn:
        return (await conn.execute(select(videos).where(videos.c.id == video_id))).mappings().one()


async def job_row(engine, job_id):
    async with engine.connect() as conn:
        return (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()


async def test_a_queued_job_is_claimed_once(engine):
    queue = JobQueue(engine, lease_seconds=60, max_attempts=3)
    video_id = await queued_video(engine)
    job_id = await queue.enqueue(video_id)

    job = await queue.claim("worker-a")
    assert job is not None and job.id == job_id and job.video_id == video_id
    assert job.attempts == 1
    assert await queue.claim("worker-b") is None
    await queue.heartbeat(job)
    await queue.complete(job)
    assert (await job_row(engine, job_id))["state"] == "done"
    assert await queue.counts() == {"done": 1}


async def test_concurrent_workers_never_claim_the_same_job(engine):
    queue = JobQueue(engine, lease_seconds=60, max_attempts=3)
    video_id = await queued_video(engine)
    for _ in range(5):
        await queue.enqueue(video_id)
    claimed: list[str] = []

    async def work(name: str) -> None:
        while (job := await queue.claim(name)) is not None:
            claimed.append(job.id)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(work, f"worker-{n}")
    assert len(claimed) == 5
    assert len(set(claimed)) == 5


async def test_a_dead_workers_job_is_taken_over_after_its_lease_expires(engine):
    short = JobQueue(engine, lease_seconds=0.2, max_attempts=3)
    video_id = await queued_video(engine)
    await short.enqueue(video_id)
    dead = await short.claim("dies-mid-job")
    assert dead is not None
    assert await short.claim("survivor") is None  # the lease still holds

    await anyio.sleep(0.3)
    taken = await short.claim("survivor")
    assert taken is not None and taken.id == dead.id
    assert taken.attempts == 2
    with pytest.raises(LeaseLost):
        await short.heartbeat(dead)
    with pytest.raises(LeaseLost):
        await short.complete(dead)
    await short.complete(taken)


async def test_a_failed_attempt_is_retried_after_a_backoff_then_given_up(engine):
    queue = JobQueue(engine, lease_seconds=60, max_attempts=2, backoff_seconds=0.2)
    video_id = await queued_video(engine)
    job_id = await queue.enqueue(video_id)

    first = await queue.claim("w")
    assert await queue.fail(first, "ffmpeg crashed") is True
    assert await queue.claim("w") is None  # backing off
    assert (await video_row(engine, video_id))["status"] == "queued"

    await anyio.sleep(0.3)
    second = await queue.claim("w")
    assert second is not None and second.attempts == 2 and second.last_attempt
    assert await queue.fail(second, "The video could not be converted.") is False
    row = await job_row(engine, job_id)
    assert row["state"] == "failed" and row["last_error"] == "The video could not be converted."
    video = await video_row(engine, video_id)
    assert video["status"] == "failed"
    assert video["error"] == "The video could not be converted."


async def test_a_rejected_file_fails_at_once_without_retry(engine):
    queue = JobQueue(engine, lease_seconds=60, max_attempts=3)
    video_id = await queued_video(engine)
    await queue.enqueue(video_id)
    job = await queue.claim("w")
    assert await queue.fail(job, "This is not a video or audio file.", retry=False) is False
    video = await video_row(engine, video_id)
    assert (video["status"], video["error"]) == ("failed", "This is not a video or audio file.")
    assert await queue.claim("w") is None


async def test_a_job_whose_last_attempt_died_is_failed_not_looped(engine):
    queue = JobQueue(engine, lease_seconds=0.1, max_attempts=1)
    video_id = await queued_video(engine)
    await queue.enqueue(video_id)
    assert await queue.claim("dies") is not None
    await anyio.sleep(0.2)
    assert await queue.claim("next") is None
    video = await video_row(engine, video_id)
    assert (video["status"], video["error"]) == ("failed", WORKER_LOST)


async def _listening_pids(postgres_url: str) -> set[int]:
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        )
        return {row["pid"] for row in rows}
    finally:
        await admin.close()


async def _woken_by_a_job(listener: JobQueue, queuer: JobQueue, video_id: str) -> bool:
    """Whether `listener`'s idle worker wakes when `queuer`, on another engine (as in
    another process), queues a job; waits up to a minute, never the poll's hour."""
    woken: list[bool] = []
    async with anyio.create_task_group() as tg:

        async def idle_worker() -> None:
            woken.append(await listener.wait_for_work(3600))

        tg.start_soon(idle_worker)
        await anyio.wait_all_tasks_blocked()
        await queuer.enqueue(video_id)
        with anyio.move_on_after(60):
            while not woken:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    return woken == [True]


@pytest.mark.postgres
async def test_workers_elsewhere_hear_of_new_jobs_and_listen_again_when_cut_off(
    postgres_url, caplog
):
    here, elsewhere = create_engine(postgres_url), create_engine(postgres_url)
    try:
        await upgrade(here)
        queuer = JobQueue(here, lease_seconds=30, max_attempts=1)
        listener = JobQueue(elsewhere, lease_seconds=30, max_attempts=1, relisten_seconds=0.05)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(listener.listen, stop)
            assert await _woken_by_a_job(listener, queuer, await queued_video(here))

            # The listening connection dies (database restarted, network cut): the queue
            # opens another and hears again; meanwhile its workers would have polled.
            (old,) = await _listening_pids(postgres_url)
            admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
            await admin.execute("SELECT pg_terminate_backend($1)", old)
            await admin.close()
            with anyio.fail_after(60):
                while (await _listening_pids(postgres_url)) in (set(), {old}):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await listener.wait_for_work(0.5)  # the wake-up a new listener gives itself
            assert await _woken_by_a_job(listener, queuer, await queued_video(here))
            assert "not listening for new jobs (its connection was closed)" in caplog.text
            stop.set()
    finally:
        await here.dispose()
        await elsewhere.dispose()


@pytest.mark.postgres
async def test_a_job_rolled_back_is_never_announced(postgres_url):
    here, elsewhere = create_engine(postgres_url), create_engine(postgres_url)
    try:
        await upgrade(here)
        queuer = JobQueue(here, lease_seconds=30, max_attempts=1)
        listener = JobQueue(elsewhere, lease_seconds=30, max_attempts=1)
        video_id = await queued_video(here)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(listener.listen, stop)
            woken: list[bool] = []

            async def idle_worker() -> None:
                woken.append(await listener.wait_for_work(2))

            tg.start_soon(idle_worker)
            await anyio.wait_all_tasks_blocked()
            async with here.connect() as conn:
                transaction = await conn.begin()
                await queuer.enqueue(video_id, conn=conn)
                await transaction.rollback()
            with anyio.fail_after(60):
                while not woken:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert woken == [False]  # the wait ran out: nothing was announced
            assert await queuer.claim("w") is None
            stop.set()
    finally:
        await here.dispose()
        await elsewhere.dispose()


async def test_on_sqlite_there_is_nothing_to_listen_to(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    try:
        queue = JobQueue(engine, lease_seconds=30, max_attempts=1)
        with anyio.fail_after(5):
            await queue.listen(anyio.Event())  # returns at once, though never told to stop
    finally:
        await engine.dispose()
