"""Workers that claim transcode jobs and run them; and the media pipeline's lifespan.

`Worker.run` loops: claim a job, keep its lease alive with heartbeats while `Processor` runs
it, then complete or fail it. A rejected file (`MediaRejected`) fails at once with the
transcoder's reason; a failed conversion is retried with backoff. A worker asked to stop
hands its job back untried; a worker killed outright loses its lease and another one takes
the job over.

`media_pipeline` is what the app's lifespan enters with the services `portal.services` built:
it empties the scratch dir, and runs `settings.workers` workers and the upload-expiry sweep
in-process until the app stops.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.accounts import get_user_by_email, sweep_expired_logins
from portal.db import new_id, videos
from portal.errors import NotFound
from portal.jobs import Job, JobQueue, LeaseLost
from portal.licensing.streams import close_idle_streams
from portal.metrics import Metrics
from portal.processing import Processor, clean_scratch
from portal.services import Services, run_metering
from portal.settings import Settings
from portal.vault import Vault
from portal.videos import delete_video
from transcoder.errors import MediaError, MediaRejected

log = logging.getLogger("megamovie.worker")

#: What a creator sees when the failure was ours (storage, database), not their file's.
INTERNAL_FAILURE = "Processing failed on our side; it will be tried again automatically."
SWEEP_SECONDS = 300.0
SHUTDOWN_GRACE_SECONDS = 3.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        vault: Vault,
        queue: JobQueue,
        *,
        metrics: Metrics | None = None,
        poll_seconds: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.processor = Processor(
            settings,
            engine,
            vault,
            on_transcoded=metrics.count_transcode if metrics is not None else None,
        )
        self.poll_seconds = poll_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{new_id(6)}"
        self.heartbeat_seconds = max(0.05, settings.job_lease_seconds / 3)

    async def run(self, *, stop: anyio.Event | None = None) -> None:
        """Process jobs until cancelled (or `stop` is set), polling when the queue is empty."""
        while stop is None or not stop.is_set():
            try:
                worked = await self.run_once()
            except Exception:
                # The database went away, say: keep the worker alive and try again shortly.
                log.exception("worker %s could not claim a job", self.name)
                worked = False
            if not worked:
                await self.queue.wait_for_work(self.poll_seconds, stop)

    async def run_once(self) -> bool:
        """Claim and run one job; False when there was none."""
        job = await self.queue.claim(self.name)
        if job is None:
            return False
        log.info("worker %s runs job %s (video %s, attempt %d of %d)", self.name, job.id,
                 job.video_id, job.attempts, job.max_attempts)  # fmt: skip
        try:
            await self._run_leased(job)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.queue.release(job)
            raise
        except LeaseLost:
            log.warning("worker %s lost job %s to another worker", self.name, job.id)
        except MediaRejected as exc:
            log.info("video %s rejected: %s", job.video_id, exc.reason)
            await self.queue.fail(job, exc.reason, retry=False)
        except MediaError as exc:
            log.warning("video %s failed (attempt %d): %s", job.video_id, job.attempts, exc.reason)
            await self.queue.fail(job, exc.reason)
        except Exception:
            log.exception("job %s for video %s failed", job.id, job.video_id)
            await self.queue.fail(job, INTERNAL_FAILURE)
        else:
            await self.queue.complete(job)
        return True

    async def _run_leased(self, job: Job) -> None:
        lost = False

        async def keep_lease(scope: anyio.CancelScope) -> None:
            nonlocal lost
            while True:
                await anyio.sleep(self.heartbeat_seconds)
                try:
                    # Shielded: the job ending cancels this task, and a query cancelled
                    # midway leaves an aiosqlite connection half-closed (see wait_for_video).
                    with anyio.CancelScope(shield=True):
                        await self.queue.heartbeat(job)
                except LeaseLost:
                    lost = True
                    scope.cancel()  # someone else runs it now: stop wasting work
                    return

        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_lease, tg.cancel_scope)
            try:
                await self.processor.process(job.video_id)
            except Exception as exc:
                # Raised out of the task group it would arrive wrapped in an ExceptionGroup.
                error = exc
            tg.cancel_scope.cancel()
        if lost:
            raise LeaseLost(job.id)
        if error is not None:
            raise error


async def run_workers(services: Services, count: int) -> None:
    """`megamovie worker`: run `count` workers until SIGINT or SIGTERM, then stop them the
    way the app does (ask, then cancel after a grace period; unfinished jobs are handed
    back)."""
    removed = clean_scratch(services.settings)
    if removed:
        log.info("removed %d temp dirs left by an earlier run", removed)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(services.jobs.listen, stop)  # jobs queued by other processes
        for _ in range(count):
            tg.start_soon(functools.partial(worker_for(services).run, stop=stop))
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: stopping the workers", signal.Signals(signum).name)
                break
        stop.set()
        tg.cancel_scope.deadline = anyio.current_time() + SHUTDOWN_GRACE_SECONDS


async def sweep(services: Services, stop: anyio.Event, every: float = SWEEP_SECONDS) -> None:
    """Expired uploads, sessions and API tokens, and streams nobody renews any more, every
    `every` seconds."""
    while not stop.is_set():
        try:
            await services.uploads.sweep_expired()
            await sweep_expired_logins(services.engine)
            await close_idle_streams(services.engine, services.settings.stream_idle_seconds)
        except Exception:
            log.exception("the sweep failed; trying again later")
        with anyio.move_on_after(every):
            await stop.wait()


def worker_for(services: Services, **options: Any) -> Worker:
    return Worker(
        services.settings,
        services.engine,
        services.vault,
        services.jobs,
        metrics=services.metrics,
        **options,
    )


@asynccontextmanager
async def media_pipeline(services: Services) -> AsyncIterator[None]:
    """In-process workers (`settings.workers` of them), the upload sweep and the watch-time
    meter's flushes, while open."""
    settings = services.settings
    removed = clean_scratch(settings)
    if removed:
        log.info("removed %d temp dirs left by an earlier run", removed)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        if settings.workers:
            tg.start_soon(services.jobs.listen, stop)  # jobs queued by other processes
        for _ in range(settings.workers):
            tg.start_soon(functools.partial(worker_for(services).run, stop=stop))
        tg.start_soon(sweep, services, stop)
        tg.start_soon(run_metering, services, stop)
        try:
            yield
        finally:
            # Ask first, cancel later: idle workers and the sweep finish their database call
            # and leave. Cancelling one mid-query makes SQLAlchemy abandon its aiosqlite
            # connection half-closed, and the event loop then hangs at exit. A job still
            # running when the grace period ends is cancelled and handed back to the queue.
            stop.set()
            tg.cancel_scope.deadline = anyio.current_time() + SHUTDOWN_GRACE_SECONDS


async def import_video(
    services: Services, path: Path, creator_email: str, metadata: dict[str, str]
) -> str:
    """`megamovie import`: a local file into the pipeline as a creator's upload."""

    creator = await get_user_by_email(services.engine, creator_email)
    if creator is None or not creator.is_creator:
        raise NotFound(
            f"There is no creator account {creator_email!r}; make one with "
            "`megamovie users create EMAIL --role creator`."
        )
    return await services.uploads.import_file(creator.id, path, metadata)


async def wait_for_video(
    services: Services, video_id: str, on_progress: Callable[[float], None]
) -> tuple[str, str | None]:
    """Run a worker here until `video_id` is ready or failed; returns (status, error).

    The worker is asked to stop, not cancelled: cancelled mid-query, SQLAlchemy abandons its
    aiosqlite connection half-closed, and `asyncio.run` then hangs at exit for good (the
    CLI's `import --wait` did, whenever the film was done while the worker was claiming)."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(worker_for(services, poll_seconds=0.2).run, stop=stop))
        try:
            while True:
                async with services.engine.connect() as conn:
                    row = (
                        await conn.execute(
                            select(videos.c.status, videos.c.progress, videos.c.error).where(
                                videos.c.id == video_id
                            )
                        )
                    ).first()
                if row is None:
                    return "deleted", "the video was deleted while it was processed"
                on_progress(row.progress)
                if row.status in ("ready", "failed"):
                    return row.status, row.error
                await anyio.sleep(0.2)
        finally:
            # The worker ends its current query and leaves; one busy with another film's
            # job is cancelled after the grace period and hands that job back.
            stop.set()
            tg.cancel_scope.deadline = anyio.current_time() + SHUTDOWN_GRACE_SECONDS
    raise AssertionError("unreachable")  # the loop only leaves by returning


async def remove_video(services: Services, video_id: str) -> None:
    """`megamovie videos delete`: crypto-shred a video and forget it."""
    async with services.engine.connect() as conn:
        found = await conn.scalar(select(videos.c.id).where(videos.c.id == video_id))
    if found is None:
        raise NotFound(f"There is no video {video_id!r}.")
    await delete_video(services.engine, services.vault, video_id)
    await services.plugins.notify("video_deleted", portal=services, video_id=video_id)
