"""The vault: encrypted objects per owner (video), on any storage backend.

`open_vault` loads the keyring (creating the key file on first run), proves the keys are the
right ones, and opens the storage. Everything a video stores goes through `Vault`: sealed on
the way in, authenticated on the way out, and crypto-shredded on `destroy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from types import TracebackType

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.vault.backend import Storage, Upload
from portal.vault.config import VaultConfig
from portal.vault.errors import KeyringError, ObjectNotFound, VaultTampered
from portal.vault.format import (
    HEADER_SIZE,
    TAG_SIZE,
    Header,
    ObjectCipher,
    Sealer,
    chunk_count,
    covering_chunks,
    plaintext_size,
    sealed_size,
)
from portal.vault.keyring import Keyring, keyring_configured, load_keyring
from portal.vault.keystore import KeyStatus, KeyStore, RotationReport, known_key_ids
from portal.vault.names import object_name, validate_owner, validate_prefix
from portal.vault.storage import LocalStorage, open_storage

# Ciphertext read from storage in one call; a 2.5 MB segment is one read and one buffer.
READ_WINDOW = 8 * 1024 * 1024
# Sealed bytes gathered before each storage write, so writes are few and large.
WRITE_BUFFER = 1024 * 1024
FILE_PIECE = 1024 * 1024
# Object ciphers kept per vault: deriving one (HKDF and the AES key schedule) costs ~25 us,
# a tenth of decrypting a whole segment, and a player asks for the same objects again.
CIPHER_CACHE = 1024


class ObjectWriter:
    """Streams one object into the vault: `async with vault.writer(o, p) as w: await w.write(b)`.

    Chunks are sealed straight into a write buffer of about `WRITE_BUFFER` bytes. When it
    is full it goes to storage in a task of its own while sealing goes on into a second one;
    the next full buffer waits for that write first. So S3 sends a part while the loop
    seals and receives the next, at most one write is in flight, and memory stays at about
    two buffers and a chunk. (The local store copies a buffer into the page cache from the
    loop: see `LocalUpload`.) On normal exit the last chunk is sealed and the object stored
    atomically; on an exception nothing is stored."""

    def __init__(self, vault: Vault, owner: str, path: str) -> None:
        self._vault = vault
        self._owner = owner
        self._path = path
        self._name = object_name(owner, path)
        self._sealer: Sealer | None = None
        self._upload: Upload | None = None
        self._buffer = bytearray()
        self._spare = bytearray()
        self._filled = 0
        self._pending: asyncio.Task[None] | None = None

    @property
    def written(self) -> int:
        return self._sealer.written if self._sealer else 0

    async def __aenter__(self) -> ObjectWriter:
        data_key = await self._vault.keystore.load(self._owner)
        header = Header.new(self._vault.chunk_size)
        self._sealer = Sealer(ObjectCipher(data_key, header, self._owner, self._path))
        # Room for whole sealed chunks, and for the last one with the header.
        stride = self._sealer.stride
        self._buffer = bytearray(max(1, WRITE_BUFFER // stride) * stride + HEADER_SIZE)
        self._spare = bytearray(len(self._buffer))
        head = self._sealer.header()
        self._buffer[: len(head)] = head
        self._filled = len(head)
        self._upload = self._vault.storage.upload(self._name)
        return self

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._sealer is None or self._upload is None:
            raise RuntimeError("use the writer as `async with vault.writer(owner, path) as w`")
        view = memoryview(data)
        while True:
            used, produced = self._sealer.feed_into(view, memoryview(self._buffer)[self._filled :])
            self._filled += produced
            view = view[used:]
            if len(self._buffer) - self._filled < self._sealer.stride:
                await self._flush()
            if not view:
                return

    async def _flush(self) -> None:
        assert self._upload is not None
        await self._settle()
        full = memoryview(self._buffer)[: self._filled]
        self._pending = asyncio.ensure_future(self._upload.write(full))
        self._buffer, self._spare = self._spare, self._buffer
        self._filled = 0

    async def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def _discard(self) -> None:
        """Store nothing: let the write in flight finish (its failure no longer matters),
        then drop what storage holds of the object. Shielded, so a cancellation cannot leave
        a temp file behind."""
        assert self._upload is not None
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._settle()
            await self._upload.abort()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._sealer is not None and self._upload is not None
        if exc_type is not None:
            await self._discard()
            return
        try:
            if len(self._buffer) - self._filled < self._sealer.stride:
                await self._flush()
            self._filled += self._sealer.finish_into(memoryview(self._buffer)[self._filled :])
            await self._settle()
            await self._upload.write(memoryview(self._buffer)[: self._filled])
            await self._upload.commit()
        except BaseException:
            await self._discard()
            raise
        finally:
            self._buffer = self._spare = bytearray()


class Vault:
    def __init__(self, keystore: KeyStore, storage: Storage, chunk_size: int) -> None:
        self.keystore = keystore
        self.storage = storage
        self.chunk_size = chunk_size
        # Keyed by the data key too: a cipher is only ever used with the data key the
        # keystore answered for this request, so a destroyed key cannot live on here.
        self._ciphers: OrderedDict[tuple[bytes, bytes, str, str], ObjectCipher] = OrderedDict()

    def _cipher(self, data_key: bytes, header: Header, owner: str, path: str) -> ObjectCipher:
        key = (data_key, header.pack(), owner, path)
        cipher = self._ciphers.get(key)
        if cipher is None:
            cipher = ObjectCipher(data_key, header, owner, path)
            self._ciphers[key] = cipher
            if len(self._ciphers) > CIPHER_CACHE:
                self._ciphers.popitem(last=False)
        else:
            self._ciphers.move_to_end(key)
        return cipher

    def _forget_ciphers(self, owner: str) -> None:
        for key in [key for key in self._ciphers if key[2] == owner]:
            del self._ciphers[key]

    @property
    def keyring(self) -> Keyring:
        return self.keystore.keyring

    # Data keys -------------------------------------------------------------------------

    async def create_key(self, owner: str) -> None:
        """A new random data key for `owner`; DataKeyExists if it has one."""
        await self.keystore.create(validate_owner(owner))

    async def has_key(self, owner: str) -> bool:
        return await self.keystore.exists(validate_owner(owner))

    async def destroy(self, owner: str) -> None:
        """Crypto-shred: the data key goes first, so whatever copies of the objects survive
        (backups, a failed delete, S3 versions) are ciphertext nobody can open."""
        validate_owner(owner)
        self._forget_ciphers(owner)
        await self.keystore.destroy(owner)
        await self.storage.delete_prefix(f"{owner}/")

    async def rotate(self) -> RotationReport:
        """Re-wrap every data key under the newest master key; objects are not touched."""
        return await self.keystore.rewrap_all()

    async def key_status(self) -> list[KeyStatus]:
        return await self.keystore.status()

    # Writing ---------------------------------------------------------------------------

    def writer(self, owner: str, path: str) -> ObjectWriter:
        return ObjectWriter(self, owner, path)

    async def put(
        self, owner: str, path: str, data: bytes | bytearray | memoryview | AsyncIterable[bytes]
    ) -> int:
        async with self.writer(owner, path) as writer:
            if isinstance(data, bytes | bytearray | memoryview):
                view = memoryview(data)
                for offset in range(0, len(view), WRITE_BUFFER):
                    await writer.write(view[offset : offset + WRITE_BUFFER])
            else:
                async for piece in data:
                    await writer.write(piece)
        return writer.written

    async def put_file(self, owner: str, path: str, file: Path) -> int:
        """Encrypt a file from disk, streaming it in pieces."""
        async with self.writer(owner, path) as writer:
            async with await anyio.open_file(file, "rb") as handle:
                while piece := await handle.read(FILE_PIECE):
                    await writer.write(piece)
        return writer.written

    # Reading ---------------------------------------------------------------------------

    async def size(self, owner: str, path: str) -> int:
        """Plaintext size from the stored size and the header; nothing is decrypted."""
        name = object_name(owner, path)
        stored = await self.storage.size(name)
        header = Header.unpack(await self.storage.read(name, 0, HEADER_SIZE))
        return plaintext_size(stored, header.chunk_size)

    async def exists(self, owner: str, path: str) -> bool:
        try:
            await self.storage.size(object_name(owner, path))
        except ObjectNotFound:
            return False
        return True

    async def iter_range(
        self, owner: str, path: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes | memoryview]:
        """Decrypted bytes [start, end) of an object, in large pieces (one per storage read).

        Only the chunks covering the range are read and opened. A piece is yielded only once
        every chunk it came from has authenticated; each piece is a fresh buffer the caller
        may keep."""
        name = object_name(owner, path)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range {start}-{end}")
        data_key = await self.keystore.load(owner)
        # One call for small objects read from the start (the segment endpoint's case): the
        # header and every chunk arrive together, and a short read tells us the size.
        first_read = HEADER_SIZE
        if start == 0:
            wanted = READ_WINDOW if end is None else sealed_size(end, self.chunk_size)
            first_read = HEADER_SIZE + min(READ_WINDOW, wanted)
        head = await self.storage.read(name, 0, first_read)
        header = Header.unpack(head)
        stored = len(head) if len(head) < first_read else await self.storage.size(name)
        span = covering_chunks(stored, header.chunk_size, start, end)
        if span is None:
            return
        cipher = self._cipher(data_key, header, owner, path)
        size = header.chunk_size
        stride = size + TAG_SIZE
        per_window = max(1, READ_WINDOW // stride)
        wanted_end = start + span.length
        for first in range(span.first, span.last + 1, per_window):
            last = min(first + per_window - 1, span.last)
            lo = HEADER_SIZE + first * stride
            hi = min(HEADER_SIZE + (last + 1) * stride, span.stored_end)
            if hi <= len(head):
                ciphertext: bytes | memoryview = memoryview(head)[lo:hi]
            else:
                ciphertext = await self.storage.read(name, lo, hi)
                if len(ciphertext) != hi - lo:
                    raise VaultTampered(f"{name} became shorter while being read: truncated")
            plain = cipher.open_chunks(ciphertext, first, span.final)
            base = first * size
            a = max(start, base) - base
            b = min(wanted_end, base + len(plain)) - base
            if b > a:
                yield memoryview(plain)[a:b]

    async def read(
        self, owner: str, path: str, start: int = 0, end: int | None = None
    ) -> bytes | bytearray:
        """Decrypted bytes [start, end) of an object, every byte authenticated.

        A whole object (the segment endpoint's plain GET) is decrypted straight into one
        buffer of exactly its size: no joining copy. On local storage, when the object is in
        the page cache, its ciphertext is read on the calling thread (the event loop) into a
        reused buffer instead of a worker thread's fresh one; the loop still never waits for
        the disk (see `LocalStorage.read_cached`)."""
        if start == 0 and end is None:
            whole = await self._read_whole(owner, path)
            if whole is not None:
                return whole
        pieces = [piece async for piece in self.iter_range(owner, path, start, end)]
        return b"".join(pieces)

    async def _read_whole(self, owner: str, path: str) -> bytearray | None:
        """A whole object of at most READ_WINDOW bytes, or None when it is larger."""
        name = object_name(owner, path)
        data_key = await self.keystore.load(owner)
        limit = sealed_size(READ_WINDOW, self.chunk_size)
        blob: bytes | memoryview | None = None
        if isinstance(self.storage, LocalStorage):
            blob = self.storage.read_cached(name, limit)
        if blob is None:
            blob = await self.storage.read(name, 0, limit + 1)
            if len(blob) > limit:
                return None
        # No await from here on: `blob` may be the event loop thread's reused buffer.
        header = Header.unpack(blob)
        final = chunk_count(len(blob), header.chunk_size) - 1
        cipher = self._cipher(data_key, header, owner, path)
        # A buffer of exactly the plaintext's size, not zero-filled first (see open_chunks).
        return cipher.open_chunks(memoryview(blob)[HEADER_SIZE:], 0, final)

    async def read_to_file(self, owner: str, path: str, dest: Path) -> int:
        """Decrypt a whole object into `dest` (mode 0600). On any failure `dest` is removed,
        so no unauthenticated or partial plaintext is left behind."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        written = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                async for piece in self.iter_range(owner, path):
                    await anyio.to_thread.run_sync(handle.write, piece)
                    written += len(piece)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            raise
        return written

    # Housekeeping ----------------------------------------------------------------------

    async def delete(self, owner: str, path: str) -> None:
        await self.storage.delete(object_name(owner, path))

    async def list(self, owner: str, prefix: str = "") -> list[str]:
        """Paths under `owner` starting with `prefix`, relative to the owner."""
        validate_owner(owner)
        validate_prefix(prefix)
        names = await self.storage.list(f"{owner}/{prefix}")
        return [name[len(owner) + 1 :] for name in names]

    async def aclose(self) -> None:
        await self.storage.aclose()


async def open_keystore(config: VaultConfig, engine: AsyncEngine) -> KeyStore:
    """Load the keyring (making the key file on first run) and verify every key against the
    database. A missing or wrong key is a KeyringError here, at start-up, never garbage later."""
    known = await known_key_ids(engine)
    if known and not keyring_configured(config):
        raise KeyringError(
            f"the database holds data keys for master key(s) {', '.join(sorted(known))}, but "
            f"MEGAMOVIE_MASTER_KEYS is unset and there is no key file at {config.key_file}; "
            "restore the key file from your backup (a new one would open nothing)"
        )
    keyring = load_keyring(config, create=True)

    def reload() -> Keyring:
        return load_keyring(config, create=False)

    keystore = KeyStore(engine, keyring, reload=reload)
    await keystore.verify()
    return keystore


async def open_vault(config: VaultConfig, engine: AsyncEngine) -> Vault:
    """The keystore (see `open_keystore`) and the storage `config.storage` names."""
    keystore = await open_keystore(config, engine)
    storage = await open_storage(config.storage)
    return Vault(keystore, storage, config.chunk_size)
