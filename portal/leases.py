"""Write leases that belong to a live process, not to the clock.

Two PATCHes on one upload must never both write. The lease that guarantees it used to be a
timestamp in the upload's row, renewed while bytes flowed; a `kill -9` mid-PATCH left it
standing, and every resume after the restart got 409 until it ran out a minute later. Here a
lease is held by something the operating system or the database takes away the moment its
holder dies:

- PostgreSQL: a session advisory lock, taken on one connection this process keeps for its
  leases. When the process dies its connection closes and PostgreSQL drops the locks at once,
  on whichever machine the next PATCH arrives.
- SQLite (one machine by nature): an exclusive `flock` on a file per upload in the data dir.
  The kernel releases it when the holder's descriptor closes, also on `kill -9`; it works
  between processes (several server workers) and within one.

A lease is only ever *tried*: a PATCH that finds the upload busy answers 409 at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import anyio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portal.errors import Conflict
from portal.settings import Settings

#: The first key of our two-key advisory locks ("MMUL"): keeps them apart from other users.
_ADVISORY_CLASS = 0x4D4D554C


class Leases(Protocol):
    async def try_acquire(self, name: str) -> bool:
        """Take the lease on `name` if nobody (in any process) holds it."""

    async def release(self, name: str) -> None: ...

    async def aclose(self) -> None:
        """Give up every lease this process holds."""


@contextlib.asynccontextmanager
async def lease(leases: Leases, name: str, busy: str) -> AsyncIterator[None]:
    """Hold the lease on `name` for the block; Conflict with the message `busy` if taken."""
    if not await leases.try_acquire(name):
        raise Conflict(busy)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await leases.release(name)


def leases_for(settings: Settings, engine: AsyncEngine) -> Leases:
    if engine.dialect.name == "postgresql":
        return AdvisoryLeases(engine)
    return FileLeases(settings.data_dir / "leases")


class AdvisoryLeases:
    """PostgreSQL session advisory locks on one connection kept for them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._conn: AsyncConnection | None = None
        self._held: set[str] = set()
        # One statement at a time on the shared connection.
        self._lock = anyio.Lock()

    async def try_acquire(self, name: str) -> bool:
        # Advisory locks are re-entrant within a session, and all of this process's leases
        # share one: requests in this process are told apart here.
        if name in self._held:
            return False
        self._held.add(name)
        taken = False
        try:
            taken = bool(await self._call("SELECT pg_try_advisory_lock(:c, :k)", name))
        finally:
            if not taken:
                self._held.discard(name)
        return taken

    async def release(self, name: str) -> None:
        if name not in self._held:
            return
        try:
            await self._call("SELECT pg_advisory_unlock(:c, :k)", name)
        finally:
            self._held.discard(name)

    async def _call(self, sql: str, name: str) -> object:
        params = {"c": _ADVISORY_CLASS, "k": _key(name)}
        async with self._lock:
            if self._conn is None:
                conn = await self.engine.connect()
                # No transaction: the locks are the session's, and an idle transaction
                # held for the process's lifetime would hold back vacuum.
                self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                return await self._conn.scalar(text(sql), params)
            except DBAPIError:
                # The connection broke, and its locks went with it; the next call opens a
                # new one. Offsets are still compare-and-set, so a lost lock costs no data.
                await self._drop()
                raise

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def _key(name: str) -> int:
    """A signed 32-bit key for `name` (advisory locks take two int4 keys)."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=4).digest(), "big", signed=True
    )


class FileLeases:
    """`flock` on `<directory>/<name>`; the kernel releases it when its holder dies."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[str, int] = {}

    async def try_acquire(self, name: str) -> bool:
        if not name.isascii() or not name.isalnum():
            raise ValueError(f"lease names are letters and digits, not {name!r}")
        if name in self._held:
            return False
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / name
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The holder before us removes the file when it lets go; if it did so after we
            # opened it, our lock is on a file nobody else will ever open: start again.
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                self._held[name] = fd
                return True
            os.close(fd)

    async def release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is None:
            return
        # Remove the file while still holding the lock, so the directory does not fill up.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / name)
        os.close(fd)

    async def aclose(self) -> None:
        for name in list(self._held):
            await self.release(name)
