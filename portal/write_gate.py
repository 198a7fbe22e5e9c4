"""One SQLite writer at a time per process, queued on the event loop.

SQLite lets one connection write at a time. When two of our pooled connections want to write
at once, the loser waits in SQLite's busy handler, which *sleeps* 1, 2, 5, 10 ... 100 ms
between retries whatever the lock is doing: a lock held for half a millisecond costs the
waiters tens of milliseconds each, and under a burst of sign-ups (three short write
transactions each) the process sat idle at 0.67 of a core while requests took 0.5 s. The
gate makes writers queue on an `asyncio.Lock` instead, taken before a transaction's first
write statement and released when it commits or rolls back, so the next writer starts the
moment the lock is free. Readers never touch it (WAL lets them run beside a writer).

Other processes on the same file (a `megamovie worker` beside `serve`) still meet at SQLite's
own lock with its busy timeout; the gate only removes the contention inside a process.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

#: Statements that take SQLite's write lock (sqlite3 opens the transaction at the first one).
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "BEGIN IMMEDIATE")
#: How often a waiter checks whether the holder's task died without releasing the gate.
_HOLDER_CHECK_SECONDS = 1.0
#: Longest wait for the gate, as SQLite's own busy timeout (portal.db): a write nested inside
#: another write transaction of the same task would otherwise wait for itself forever.
_MAX_WAIT_SECONDS = 30.0
_INFO_KEY = "megamovie.write_gate"


class _Gate:
    """The lock of one event loop, with the task that holds it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.holder: asyncio.Task[Any] | None = None

    async def acquire(self) -> bool:
        """True once held; False after `_MAX_WAIT_SECONDS` (the caller then goes on to
        SQLite's own lock and busy timeout, as it would without the gate)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _MAX_WAIT_SECONDS
        while loop.time() < give_up:
            try:
                await asyncio.wait_for(self.lock.acquire(), _HOLDER_CHECK_SECONDS)
            except TimeoutError:
                # A task cancelled mid-transaction whose connection was abandoned never
                # commits or rolls back: take the gate back from it rather than wait forever.
                if self.holder is not None and self.holder.done() and self.lock.locked():
                    self.release()
                continue
            self.holder = asyncio.current_task()
            return True
        return False

    def release(self) -> None:
        self.holder = None
        if self.lock.locked():
            self.lock.release()


class WriteGate:
    """Installed on a SQLite engine by `install`; one `_Gate` per event loop using it."""

    def __init__(self) -> None:
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gate] = (
            weakref.WeakKeyDictionary()
        )

    def _gate(self) -> _Gate:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = _Gate()
        return gate

    def before_write(self, info: dict[str, Any], statement: str) -> None:
        if _INFO_KEY in info or not statement.lstrip()[:15].upper().startswith(_WRITES):
            return
        gate = self._gate()
        # Runs inside SQLAlchemy's greenlet bridge: await the lock from this sync hook.
        if await_only(gate.acquire()):
            info[_INFO_KEY] = gate

    @staticmethod
    def after_transaction(info: dict[str, Any]) -> None:
        gate: _Gate | None = info.pop(_INFO_KEY, None)
        if gate is not None:
            gate.release()

    @classmethod
    def install(cls, engine: AsyncEngine) -> WriteGate:
        gate = cls()
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "before_cursor_execute")
        def _before(conn: Connection, _c: object, statement: str, *_args: object) -> None:
            gate.before_write(conn.info, statement)

        @event.listens_for(sync_engine, "commit")
        @event.listens_for(sync_engine, "rollback")
        def _ended(conn: Connection) -> None:
            cls.after_transaction(conn.info)

        # A connection returned, closed or invalidated without commit or rollback.
        @event.listens_for(sync_engine, "checkin")
        @event.listens_for(sync_engine, "close")
        @event.listens_for(sync_engine, "invalidate")
        def _gone(_dbapi: object, record: Any, *_args: object) -> None:
            if record is not None:
                cls.after_transaction(record.info)

        return gate
