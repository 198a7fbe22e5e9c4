"""Where sealed objects rest: one small async interface, a local directory or S3.

Backends store opaque bytes under validated names (`owner/path`, see `names`). They never see
plaintext or keys. Writes are all-or-nothing: an upload becomes visible only on `commit`, and
an aborted one leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from portal.errors import ObjectNotFound, StorageError, StorageFull
from portal.settings import Settings
from portal.vault.names import validate_name, validate_prefix

T = TypeVar("T")


class Upload(Protocol):
    """An object being written: `write` pieces, then `commit` (atomic) or `abort`."""

    async def write(self, data: bytes | bytearray | memoryview) -> None: ...
    async def commit(self) -> int: ...
    async def abort(self) -> None: ...


class Storage(Protocol):
    async def put(self, name: str, stream: AsyncIterable[bytes | bytearray | memoryview]) -> int:
        """Store a stream under `name`, replacing any old object atomically; returns its size."""
        ...

    def upload(self, name: str) -> Upload:
        """Start writing `name` piece by piece (what `put` does with a stream)."""
        ...

    async def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) (end clamped to the size; b"" past the end)."""
        ...

    async def size(self, name: str) -> int: ...
    async def delete(self, name: str) -> None:
        """Delete one object; deleting a missing object is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose name starts with `prefix`; returns how many."""
        ...

    async def list(self, prefix: str = "") -> list[str]:
        """Names starting with `prefix`, sorted."""
        ...

    async def ping(self) -> None:
        """Raise StorageError unless the store answers now (for /healthz)."""
        ...

    async def aclose(self) -> None: ...


async def put_stream(
    storage: Storage, name: str, stream: AsyncIterable[bytes | bytearray | memoryview]
) -> int:
    """`Storage.put` in terms of `Storage.upload`, shared by the backends."""
    upload = storage.upload(name)
    try:
        async for piece in stream:
            await upload.write(piece)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await upload.abort()
        raise
    return await upload.commit()


def _storage_error(action: str, name: str, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"cannot {action} {name}: the disk is full; nothing of it was kept. Try again "
            "once space is freed."
        )
    return StorageError(f"cannot {action} {name}: {exc.strerror or exc}")


class LocalStorage:
    """Objects as files under `root`. Writes go to a temp file in the same directory, are
    fsynced, then renamed over the target, so a reader sees the old object or the new one,
    never half of one, even after a crash."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

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

        def read() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                # Clamped to the size: asking pread for more than the file holds makes it
                # allocate (and fault in) the whole oversized buffer.
                size = os.fstat(fd).st_size
                stop = size if end is None else min(end, size)
                if stop <= start:
                    return b""
                return os.pread(fd, stop - start, start)
            finally:
                os.close(fd)

        return await self._in_thread("read", name, read)

    async def size(self, name: str) -> int:
        path = self.path_of(name)
        return (await self._in_thread("stat", name, path.stat)).st_size

    async def delete(self, name: str) -> None:
        path = self.path_of(name)
        await self._in_thread("delete", name, lambda: self._unlink(path))

    async def _in_thread(self, action: str, name: str, work: Callable[[], T]) -> T:
        """Blocking file work off the event loop, its errors as the vault's."""
        try:
            return await anyio.to_thread.run_sync(work)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {name}") from None
        except OSError as exc:
            raise _storage_error(action, name, exc) from None

    def _unlink(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Drop directories left empty, up to the root, so deleted videos leave no trace.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def delete_prefix(self, prefix: str) -> int:
        names = await self.list(prefix)
        for name in names:
            await self.delete(name)
        return len(names)

    async def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names whole.
        directory = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root

        def walk() -> list[str]:
            found: list[str] = []
            if not directory.is_dir():
                return found
            for dirpath, dirnames, filenames in os.walk(directory):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for filename in filenames:
                    if filename.startswith("."):
                        continue  # temp files of uploads in progress
                    name = filename if rel == "." else f"{rel}/{filename}"
                    if name.startswith(prefix):
                        found.append(name)
            return sorted(found)

        return await self._in_thread("list", prefix, walk)

    async def ping(self) -> None:
        def check() -> None:
            if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not readable and writable", str(self.root))

        await self._in_thread("reach", str(self.root), check)

    async def aclose(self) -> None:
        return None


class LocalUpload:
    def __init__(self, storage: LocalStorage, name: str, path: Path) -> None:
        self._storage = storage
        self._name = name
        self._path = path
        self._tmp = path.with_name(f".tmp-{secrets.token_hex(8)}-{path.name}")
        self._file: object = None
        self._size = 0

    def _open(self) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        def write() -> None:
            if self._file is None:
                self._open()
            self._file.write(data)  # type: ignore[attr-defined]

        try:
            await anyio.to_thread.run_sync(write)
        except OSError as exc:
            await self.abort()
            raise _storage_error("write", self._name, exc) from None
        self._size += len(data)

    async def commit(self) -> int:
        def commit() -> None:
            if self._file is None:
                self._open()
            handle = self._file
            handle.flush()  # type: ignore[attr-defined]
            os.fsync(handle.fileno())  # type: ignore[attr-defined]
            handle.close()  # type: ignore[attr-defined]
            self._file = None
            os.replace(self._tmp, self._path)
            fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            await anyio.to_thread.run_sync(commit)
        except OSError as exc:
            await self.abort()
            raise _storage_error("store", self._name, exc) from None
        return self._size

    async def abort(self) -> None:
        def abort() -> None:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()  # type: ignore[attr-defined]
                self._file = None
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()

        await anyio.to_thread.run_sync(abort)


async def open_storage(settings: Settings) -> Storage:
    """The backend `settings.storage_url` names: `file:///dir` or `s3://bucket/prefix`."""
    url = settings.storage_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"MEGAMOVIE_STORAGE_URL {url!r}: file URLs name a local path")
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        from portal.vault.s3 import S3Storage

        return await S3Storage.open(settings)
    raise StorageError(
        f"MEGAMOVIE_STORAGE_URL {url!r} is not supported: use file:///path or s3://bucket/prefix"
    )
