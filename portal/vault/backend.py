"""The interface every storage backend implements, and what the backends share.

Backends store opaque bytes under validated names (`owner/path`, see `names`). They never see
plaintext or keys. Writes are all-or-nothing: an upload becomes visible only on `commit`, and
an aborted one leaves nothing behind. (Its own module, so the backends in `storage` and `s3`
depend on it and never on each other.)
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

import anyio


class Upload(Protocol):
    """An object being written: `write` pieces, then `commit` (atomic) or `abort`.

    `write` is done with the bytes it was given when it returns: the caller may reuse them."""

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
        """Delete every object whose name starts with `prefix`, and what unfinished writes
        under it left behind; returns how many objects."""
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
