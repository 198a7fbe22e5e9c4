"""The job queue: background work (transcodes) kept in the database, claimed with a lease.

A worker claims a job by writing its name and a lease expiry on it, and keeps the lease alive
with heartbeats. A worker that dies stops heartbeating; once its lease expires any other
worker may claim the job again, so no job is lost with its worker. Claiming is serialised by
the database: `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL (workers never wait on each
other), an immediate (write-locking) transaction on SQLite (one process at a time anyway).

Every claim counts as an attempt. A failure that may pass (ffmpeg crashed, disk full) is
retried after an exponential backoff; after `max_attempts` the job and its video are failed
with the last reason, which the creator sees.

Idle workers poll, but need not wait for the next poll. Within one process, whoever commits
a new job calls `notify`, and the workers waiting in `wait_for_work` of the same queue claim
it at once (a finished upload starts transcoding within milliseconds, not up to a poll
interval later). Across processes and machines, on PostgreSQL, the transaction that queues a
job (or hands one back) also announces it on the `CHANNEL`, delivered when it commits, and
each worker process `listen`s there on one connection of its own and wakes its workers.
Polling stays underneath: it finds jobs whose backoff has passed, and jobs announced while a
listening connection was down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.abc
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from portal.db import begin_write, jobs, new_id, utcnow, videos

log = logging.getLogger(__name__)

TRANSCODE = "transcode"
#: The PostgreSQL channel on which new and handed-back jobs are announced (`listen`).
CHANNEL = "megamovie_jobs"
#: What a creator sees when every attempt died with its worker (killed, out of memory).
WORKER_LOST = "Processing stopped unexpectedly several times; please upload the file again."


class LeaseLost(Exception):
    """This worker no longer holds the job: its lease expired and another worker took it."""


@dataclass(frozen=True)
class Job:
    id: str
    video_id: str
    kind: str
    attempts: int
    max_attempts: int
    lease_owner: str
    lease_expires_at: datetime

    @property
    def last_attempt(self) -> bool:
        return self.attempts >= self.max_attempts


class JobQueue:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lease_seconds: float,
        max_attempts: int,
        backoff_seconds: float = 10.0,
        relisten_seconds: float = 5.0,
        listen_check_seconds: float = 30.0,
    ) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        #: After the listening connection is lost: the wait before opening another.
        self.relisten_seconds = relisten_seconds
        #: How often the listening connection is checked (a silent network loses no FIN).
        self.listen_check_seconds = listen_check_seconds
        self._postgres = engine.dialect.name == "postgresql"
        self._waiting: set[anyio.Event] = set()

    def notify(self) -> None:
        """A job was just committed: wake this process's workers waiting for work."""
        for event in self._waiting:
            event.set()

    async def wait_for_work(self, seconds: float, stop: anyio.Event | None = None) -> bool:
        """Until `notify` is called (True), `stop` is set or `seconds` have passed (False)."""
        wake = anyio.Event()
        self._waiting.add(wake)
        try:
            await _until_any(seconds, wake, *([stop] if stop is not None else []))
        finally:
            self._waiting.discard(wake)
        return wake.is_set()

    async def listen(
        self,
        stop: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until `stop` is set: wake this process's idle workers whenever any process
        announces a job (PostgreSQL LISTEN, on a connection taken from the pool for good and
        closed, never handed back, when done). A lost connection is replaced after
        `relisten_seconds`; meanwhile the workers poll. On SQLite, which one process uses,
        there is nothing to listen to. `task_status` is told once the first attempt to
        listen has succeeded or failed."""
        if not self._postgres:
            task_status.started()
            return
        told = False

        def tell() -> None:
            nonlocal told
            if not told:
                told = True
                task_status.started()

        while not stop.is_set():
            try:
                await self._listen_until_lost(stop, tell)
            except Exception as exc:  # refused, terminated, timed out: the same remedy
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = "its connection was closed"
            if not stop.is_set():
                log.warning("not listening for new jobs (%s); polling until listening again",
                            reason)  # fmt: skip
            tell()
            with anyio.move_on_after(self.relisten_seconds):
                await stop.wait()

    async def _listen_until_lost(self, stop: anyio.Event, listening: Callable[[], None]) -> None:
        async with self.engine.connect() as conn:
            try:
                driver: Any = (await conn.get_raw_connection()).driver_connection
                lost = anyio.Event()
                driver.add_termination_listener(lambda _conn: lost.set())
                await driver.add_listener(CHANNEL, lambda *_args: self.notify())
                # Jobs announced while nobody listened here: look now, not at the next poll.
                self.notify()
                listening()
                while not stop.is_set() and not lost.is_set():
                    await _until_any(self.listen_check_seconds, stop, lost)
                    if not stop.is_set() and not lost.is_set():
                        await driver.fetchval("SELECT 1", timeout=self.listen_check_seconds)
            finally:
                # A LISTENing connection must not go back to the pool: another user would
                # get its notifications' listener along with it.
                with anyio.CancelScope(shield=True):
                    await conn.invalidate()

    async def _announce(self, conn: AsyncConnection) -> None:
        """Tell listening worker processes, when `conn`'s transaction commits, that a job
        can be claimed (PostgreSQL delivers NOTIFY on commit, and never on rollback)."""
        if self._postgres:
            await conn.execute(select(func.pg_notify(CHANNEL, "")))

    async def enqueue(
        self, video_id: str, kind: str = TRANSCODE, *, conn: AsyncConnection | None = None
    ) -> str:
        """Queue a job; pass `conn` to make it part of the caller's transaction (and call
        `notify` once it is committed). Without `conn`, the job is committed here and this
        process's idle workers are woken."""
        now = utcnow()
        job_id = new_id()
        stmt = jobs.insert().values(
            id=job_id,
            video_id=video_id,
            kind=kind,
            state="queued",
            attempts=0,
            max_attempts=self.max_attempts,
            run_after=now,
            created_at=now,
            updated_at=now,
        )
        if conn is not None:
            await conn.execute(stmt)
            await self._announce(conn)
        else:
            async with self.engine.begin() as own:
                await own.execute(stmt)
                await self._announce(own)
            self.notify()
        return job_id

    async def claim(self, worker: str, kinds: tuple[str, ...] = (TRANSCODE,)) -> Job | None:
        """Take the oldest runnable job (queued and due, or running with an expired lease)."""
        now = utcnow()
        claimable = and_(
            jobs.c.kind.in_(kinds),
            or_(
                and_(jobs.c.state == "queued", jobs.c.run_after <= now),
                and_(jobs.c.state == "running", jobs.c.lease_expires_at < now),
            ),
        )
        query = select(jobs).where(claimable).order_by(jobs.c.run_after, jobs.c.created_at)
        while True:
            # BEGIN IMMEDIATE on SQLite: two workers cannot both read the same job as free.
            async with begin_write(self.engine) as conn:
                if self._postgres:
                    query = query.with_for_update(skip_locked=True)
                row = (await conn.execute(query.limit(1))).mappings().first()
                if row is None:
                    return None
                if row["state"] == "running" and row["attempts"] >= row["max_attempts"]:
                    # Its last attempt died with its worker: give up rather than loop forever.
                    await self._give_up(conn, row["id"], row["video_id"], WORKER_LOST, now)
                    continue
                expires = now + self.lease
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == row["id"])
                    .values(
                        state="running",
                        attempts=row["attempts"] + 1,
                        lease_owner=worker,
                        lease_expires_at=expires,
                        updated_at=now,
                    )
                )
                return Job(
                    id=row["id"],
                    video_id=row["video_id"],
                    kind=row["kind"],
                    attempts=row["attempts"] + 1,
                    max_attempts=row["max_attempts"],
                    lease_owner=worker,
                    lease_expires_at=expires,
                )

    async def heartbeat(self, job: Job) -> None:
        """Extend the lease; LeaseLost if another worker has taken the job over."""
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(jobs)
                .where(self._held(job))
                .values(lease_expires_at=now + self.lease, updated_at=now)
            )
        if result.rowcount != 1:
            raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")

    async def complete(self, job: Job) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(jobs)
                .where(self._held(job))
                .values(state="done", lease_owner=None, lease_expires_at=None, updated_at=utcnow())
            )
        if result.rowcount != 1:
            raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")

    async def release(self, job: Job) -> None:
        """Hand a job back untried (the worker is shutting down): it runs again at once,
        and this attempt does not count against it."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(videos)
                .where(videos.c.id == job.video_id)
                .values(status="queued", updated_at=utcnow())
            )
            await conn.execute(
                update(jobs)
                .where(self._held(job))
                .values(
                    state="queued",
                    attempts=job.attempts - 1,
                    run_after=utcnow(),
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=utcnow(),
                )
            )
            await self._announce(conn)

    async def fail(self, job: Job, reason: str, *, retry: bool = True) -> bool:
        """Record a failed attempt. Returns True when the job will run again; otherwise the
        job and its video are failed with `reason` (shown to the creator)."""
        now = utcnow()
        async with self.engine.begin() as conn:
            if retry and job.attempts < job.max_attempts:
                delay = self.backoff_seconds * 4 ** (job.attempts - 1)
                result = await conn.execute(
                    update(jobs)
                    .where(self._held(job))
                    .values(
                        state="queued",
                        run_after=now + timedelta(seconds=delay),
                        lease_owner=None,
                        lease_expires_at=None,
                        last_error=reason,
                        updated_at=now,
                    )
                )
                if result.rowcount != 1:
                    raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")
                await conn.execute(
                    update(videos)
                    .where(videos.c.id == job.video_id)
                    .values(status="queued", updated_at=now)
                )
                return True
            await self._give_up(conn, job.id, job.video_id, reason, now)
            return False

    async def counts(self) -> dict[str, int]:
        """Jobs by state, for /metrics."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
            return {state: count for state, count in rows.all()}

    async def backlog(self) -> tuple[int, float]:
        """Jobs due and waiting for a worker, and how long the oldest has waited (s)."""
        now = utcnow()
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(func.count(), func.min(jobs.c.run_after)).where(
                        jobs.c.state == "queued", jobs.c.run_after <= now
                    )
                )
            ).one()
        depth, oldest = int(row[0]), row[1]
        return depth, (now - oldest).total_seconds() if oldest is not None else 0.0

    async def _give_up(
        self, conn: AsyncConnection, job_id: str, video_id: str, reason: str, now: datetime
    ) -> None:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                state="failed",
                lease_owner=None,
                lease_expires_at=None,
                last_error=reason,
                updated_at=now,
            )
        )
        await conn.execute(
            update(videos)
            .where(videos.c.id == video_id)
            .values(status="failed", error=reason, playable=False, updated_at=now)
        )

    def _held(self, job: Job) -> ColumnElement[bool]:
        return and_(
            jobs.c.id == job.id, jobs.c.state == "running", jobs.c.lease_owner == job.lease_owner
        )


async def _until_any(seconds: float, *events: anyio.Event) -> None:
    """Until one of `events` is set or `seconds` have passed."""
    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            for event in events:
                tg.start_soon(until, event)
