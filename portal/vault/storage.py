"""Where sealed objects rest: a local directory (here) or S3 (`portal.vault.s3`), chosen by
the storage URL. The interface both implement is `portal.vault.backend.Storage`.

The local backend's file work runs in worker threads (aiofiles and anyio's), off the event
loop, with two exceptions that only touch the page cache: segment reads try it on the loop
first (`read_cached`), and a lone upload's writes go into it from the loop (`LocalUpload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiofiles
import aiofiles.os
import anyio

from portal.vault.backend import Storage, Upload, put_stream
from portal.vault.config import StorageConfig
from portal.vault.errors import ObjectNotFound, StorageError, StorageFull
from portal.vault.names import validate_name, validate_prefix

__all__ = ["LocalStorage", "LocalUpload", "Storage", "Upload", "open_storage", "put_stream"]

# An unfinished write, beside the object it will become: `.tmp-<16 hex>-<its file name>`.
_TEMP = re.compile(r"^\.tmp-[0-9a-f]{16}-(?P<name>.+)$")
#: preadv2 flag: fail with EAGAIN instead of waiting for the disk (Linux 4.14+).
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _storage_error(action: str, name: str, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"cannot {action} {name}: the disk is full; nothing of it was kept. Try again "
            "once space is freed."
        )
    return StorageError(f"cannot {action} {name}: {exc.strerror or exc}")


@contextlib.contextmanager
def _vault_errors(action: str, name: str) -> Iterator[None]:
    """File errors as the vault's: a missing file is ObjectNotFound, the rest StorageError."""
    try:
        yield
    except FileNotFoundError:
        raise ObjectNotFound(f"no object {name}") from None
    except OSError as exc:
        raise _storage_error(action, name, exc) from None


def _uncancelled() -> anyio.CancelScope:
    """aiofiles runs each call in a thread, and a cancelled await abandons that thread: a
    file opened there would never be closed, or closed while another thread still reads it.
    File work runs shielded, so a cancellation lands once the work is done and the file is
    closed, as it did with anyio.to_thread (whose threads are never abandoned)."""
    return anyio.CancelScope(shield=True)


def _private(path: str, flags: int) -> int:
    """`opener` for aiofiles.open: new files are the owner's alone."""
    return os.open(path, flags, 0o600)


def _fsync_directory_sync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync = aiofiles.os.wrap(os.fsync)
_fsync_directory = aiofiles.os.wrap(_fsync_directory_sync)

#: Bytes of an object written between two background syncs of its file.
SYNC_EVERY = 32 * 1024 * 1024
#: An upload's writes up to this size go into the page cache from the event loop...
INLINE_WRITE_MAX = 2 * 1024 * 1024
#: ...until one of them takes longer than this (seconds); the rest of that upload's writes
#: then go through a worker thread. A megabyte normally takes a fraction of a millisecond.
INLINE_WRITE_LIMIT = 0.05
#: Local uploads with an open file in this process. Writing from the loop pays only while
#: the loop has time to spare: with two or more at once, each takes a worker thread.
_WRITING: weakref.WeakSet[LocalUpload] = weakref.WeakSet()
# Background syncs run on threads of their own, a few at once: a disk does not go faster
# with more, and a burst of uploads must not take the threads that reads and writes use.
_SYNCS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vault-sync")

#: (name, file, whether it is an unfinished write), sorted by name.
_Found = list[tuple[str, Path, bool]]


def _walk_sync(root: Path, prefix: str, with_temp: bool) -> _Found:
    """The files under `root` whose names start with `prefix`. An unfinished write is named
    for the object it would become, so a prefix finds it with the objects."""
    found: _Found = []
    # Walk only the deepest directory the prefix names whole.
    directory = root / prefix.rpartition("/")[0] if "/" in prefix else root
    if not directory.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root).as_posix()
        for filename in filenames:
            temp = _TEMP.match(filename)
            if filename.startswith(".") and not (temp and with_temp):
                continue
            shown = temp["name"] if temp else filename
            name = shown if rel == "." else f"{rel}/{shown}"
            if name.startswith(prefix):
                found.append((name, Path(dirpath) / filename, temp is not None))
    return sorted(found)


_walk = aiofiles.os.wrap(_walk_sync)


class LocalStorage:
    """Objects as files under `root`. Writes go to a temp file in the same directory, are
    fsynced, then renamed over the target, so a reader sees the old object or the new one,
    never half of one, even after a crash. Every directory below the root is 0700."""

    def __init__(
        self,
        root: Path,
        *,
        sync_every: int = SYNC_EVERY,
        inline_write_limit: float = INLINE_WRITE_LIMIT,
    ) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sync_every = sync_every
        self.inline_write_limit = inline_write_limit

    def path_of(self, name: str) -> Path:
        path = self.root / validate_name(name)
        # Defence in depth behind the name check: the path must stay inside the root.
        if not path.is_relative_to(self.root):
            raise StorageError(f"{name} resolves outside the storage directory")
        return path

    async def put(self, name: str, stream: AsyncIterable[bytes | bytearray | memoryview]) -> int:
        return await put_stream(self, name, stream)

    def upload(self, name: str) -> LocalUpload:
        return LocalUpload(self, name, self.path_of(name))

    async def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        path = self.path_of(name)
        data = b""
        with _vault_errors("read", name), _uncancelled():
            async with aiofiles.open(path, "rb", buffering=0) as handle:
                # Clamped to the size: asking for more than the file holds makes the read
                # allocate (and fault in) the whole oversized buffer.
                size = os.fstat(handle.fileno()).st_size
                stop = size if end is None else min(end, size)
                if stop > start:
                    if start:
                        await handle.seek(start)
                    data = await handle.read(stop - start)
        return data

    def read_cached(self, name: str, limit: int) -> memoryview | None:
        """The whole object, read on the calling thread, but only when it is no larger than
        `limit` and every byte of it is in the page cache already: this never waits for the
        disk (preadv2 with RWF_NOWAIT), so the event loop may call it. None means "use
        `read`" (not cached, too large, or no RWF_NOWAIT here); ObjectNotFound as `read`.

        The bytes land in a buffer this thread reuses, so no fresh multi-megabyte buffer is
        zero-filled and faulted in per call; the view is valid only until this thread's next
        `read_cached`, so the caller must be done with it before it awaits anything."""
        if _RWF_NOWAIT is None:
            return None
        path = self.path_of(name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {name}") from None
        except OSError:
            return None  # let `read` raise the error the vault's way
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                return None
            view = memoryview(_scratch(size))[:size]
            try:
                got = os.preadv(fd, [view], 0, _RWF_NOWAIT) if size else 0
            except OSError:
                return None  # EAGAIN: some of it is on disk only; EOPNOTSUPP: no NOWAIT here
            return view if got == size else None
        finally:
            os.close(fd)

    async def size(self, name: str) -> int:
        path = self.path_of(name)
        with _vault_errors("stat", name):
            return (await aiofiles.os.stat(path)).st_size

    async def delete(self, name: str) -> None:
        path = self.path_of(name)
        with _vault_errors("delete", name), _uncancelled():
            await self._remove(path)

    async def delete_prefix(self, prefix: str) -> int:
        # Unfinished writes too: a process killed mid-write leaves its temp file, and
        # crypto-shredding a video must leave nothing of it behind.
        found = await self._scan(prefix, with_temp=True)
        for name, path, _temp in found:
            with _vault_errors("delete", name), _uncancelled():
                await self._remove(path)
        return sum(1 for _name, _path, temp in found if not temp)

    async def list(self, prefix: str = "") -> list[str]:
        return [name for name, _path, _temp in await self._scan(prefix, with_temp=False)]

    async def _scan(self, prefix: str, *, with_temp: bool) -> _Found:
        validate_prefix(prefix)
        with _vault_errors("list", prefix):
            return await _walk(self.root, prefix, with_temp)

    async def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(path)
        # Drop directories left empty, up to the root, so deleted videos leave no trace.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                await aiofiles.os.rmdir(parent)
            except OSError:
                break
            parent = parent.parent

    async def make_directories(self, directory: Path) -> None:
        """`directory` and its missing parents below the root, each made 0700 (mkdir with
        parents=True makes the intermediate ones 0755: listable by every local user)."""
        if await aiofiles.os.path.isdir(directory):
            return
        missing: list[Path] = []
        while directory != self.root and not await aiofiles.os.path.isdir(directory):
            missing.append(directory)
            directory = directory.parent
        for each in reversed(missing):
            with contextlib.suppress(FileExistsError):
                await aiofiles.os.mkdir(each, mode=0o700)

    async def ping(self) -> None:
        try:
            usable = await aiofiles.os.access(self.root, os.R_OK | os.W_OK | os.X_OK)
        except OSError as exc:
            raise _storage_error("reach", str(self.root), exc) from None
        if not usable:
            raise StorageError(f"cannot reach {self.root}: not readable and writable")

    async def aclose(self) -> None:
        return None


_local = threading.local()


def _scratch(size: int) -> bytearray:
    """This thread's reusable read buffer, grown to at least `size` bytes."""
    buffer: bytearray | None = getattr(_local, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(max(size, 4 * 1024 * 1024))
        _local.buffer = buffer
    return buffer


class LocalUpload:
    """One object being written to a temp file beside its final name, renamed into place on
    commit.

    While it is the only upload being written in the process, its writes go into the page
    cache from the event loop itself: the bytes were sealed on this thread a moment ago and
    are still in its CPU cache, where a worker thread would fetch them from another core's
    (benchmarks/ingest.py, 1 GiB tus PATCH, same runs: 469-525 -> 563-672 MB/s, 1.87-2.11
    -> 1.48-1.81 CPU s/GiB). With two or more at once, the loop is busy receiving and
    sealing for all of them, and each writes from a worker thread, so the other core
    copies (8 uploads of 128 MiB at once, all from the loop: 404-425 MB/s against 495-558).
    Writing from the loop is safe only while the kernel takes the bytes without waiting, so
    two things keep the loop from waiting on the disk:

    - every `sync_every` bytes (`SYNC_EVERY`), an fdatasync of what is written so far starts
      on a thread of its own, and when the next one is due before it has finished, the
      upload waits for it (off the loop). The disk works while the rest arrives, instead of
      all at once in `commit`'s fsync, and an upload never holds more than two `sync_every`
      of dirty pages, so the kernel has no reason to throttle its writes;
    - a write that still takes longer than `inline_write_limit` (memory reclaim, a journal
      commit, a slow device) sends the rest of the upload's writes to a worker thread."""

    def __init__(self, storage: LocalStorage, name: str, path: Path) -> None:
        self._storage = storage
        self._name = name
        self._path = path
        self._tmp = path.with_name(f".tmp-{secrets.token_hex(8)}-{path.name}")
        self._fd: int | None = None
        self._size = 0
        self._synced_at = 0  # bytes written when the last background sync started
        self._syncing: asyncio.Future[None] | None = None
        self._inline = True  # until a write on the loop is slow
        self.background_syncs = 0  # started so far
        self.inline_writes = 0
        self.thread_writes = 0

    async def _open(self) -> int:
        if self._fd is None:
            await self._storage.make_directories(self._path.parent)
            self._fd = await anyio.to_thread.run_sync(
                _private, str(self._tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            )
            _WRITING.add(self)
        return self._fd

    def _forget_fd(self) -> int | None:
        fd, self._fd = self._fd, None
        _WRITING.discard(self)
        return fd

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            with _uncancelled():
                fd = await self._open()
                if self._inline and len(_WRITING) == 1 and len(data) <= INLINE_WRITE_MAX:
                    started = time.perf_counter()
                    _write_all(fd, data)
                    self.inline_writes += 1
                    if time.perf_counter() - started > self._storage.inline_write_limit:
                        self._inline = False
                else:
                    await anyio.to_thread.run_sync(_write_all, fd, data)
                    self.thread_writes += 1
                self._size += len(data)
                if self._size - self._synced_at >= self._storage.sync_every:
                    await self._sync_in_background(fd)
        except OSError as exc:
            await self.abort()
            raise _storage_error("write", self._name, exc) from None

    async def _sync_in_background(self, fd: int) -> None:
        # If the last sync is still running, the disk is behind and the upload waits for it;
        # settling also raises what it met (EIO, ENOSPC).
        await self._settle()
        self._synced_at = self._size
        self._syncing = asyncio.get_running_loop().run_in_executor(_SYNCS, os.fdatasync, fd)
        self.background_syncs += 1

    async def _settle(self) -> None:
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            await syncing

    async def commit(self) -> int:
        try:
            with _uncancelled():
                fd = await self._open()
                await self._settle()
                await _fsync(fd)
                self._forget_fd()
                await anyio.to_thread.run_sync(os.close, fd)
                await aiofiles.os.replace(self._tmp, self._path)
                await _fsync_directory(self._path.parent)
        except OSError as exc:
            await self.abort()
            raise _storage_error("store", self._name, exc) from None
        return self._size

    async def abort(self) -> None:
        with _uncancelled():
            # The file stays open until its background sync is done with it.
            with contextlib.suppress(OSError):
                await self._settle()
            fd = self._forget_fd()
            if fd is not None:
                with contextlib.suppress(OSError):
                    await anyio.to_thread.run_sync(os.close, fd)
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(self._tmp)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def open_storage(config: StorageConfig) -> Storage:
    """The backend `config.url` names: `file:///dir` or `s3://bucket/prefix`."""
    url = config.url
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"MEGAMOVIE_STORAGE_URL {url!r}: file URLs name a local path")
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        # Imported here: aiobotocore is heavy, and a local store never needs it.
        from portal.vault.s3 import S3Storage

        return await S3Storage.open(config)
    raise StorageError(
        f"MEGAMOVIE_STORAGE_URL {url!r} is not supported: use file:///path or s3://bucket/prefix"
    )
