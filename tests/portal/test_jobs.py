from __future__ import annotations

import anyio
import pytest
from sqlalchemy import select

from portal.db import jobs, videos
from portal.jobs import WORKER_LOST, JobQueue, LeaseLost
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
