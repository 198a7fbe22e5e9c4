"""The encrypted object format: a versioned header, then AES-256-GCM chunks (STREAM).

Pure functions and small classes, no I/O; docs/vault-format.md is the specification and its
test vectors are checked against this module. In short:

    object  = header || chunk_0 || ... || chunk_n        (n >= 0; an empty object has one chunk)
    header  = "MMVF" || version u8 || chunk_size u32be || salt[32] || nonce_prefix[7]
    key     = HKDF-SHA256(ikm=data_key, salt=salt, info=INFO || lp(owner) || lp(path))
    chunk_i = AES-256-GCM(key, nonce=nonce_prefix || i u32be || last u8, ad=header || lp(owner)
              || lp(path)), each chunk_size bytes of plaintext (the last one 0..chunk_size)

Every chunk carries a 16-byte tag, so the plaintext size follows from the stored size alone.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portal.vault.errors import VaultError, VaultTampered

MAGIC = b"MMVF"
VERSION = 1
HEADER = struct.Struct(">4sBI32s7s")
HEADER_SIZE = HEADER.size  # 48
TAG_SIZE = 16
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_CHUNKS = 2**32  # the chunk index is a u32 in the nonce
OBJECT_KEY_INFO = b"megamovie-vault-v1 object-key\x00"
_COUNTER = struct.Struct(">IB")


def length_prefixed(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


@dataclass(frozen=True)
class Header:
    chunk_size: int
    salt: bytes
    nonce_prefix: bytes

    @classmethod
    def new(cls, chunk_size: int) -> Header:
        return cls(chunk_size, os.urandom(SALT_SIZE), os.urandom(NONCE_PREFIX_SIZE))

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.chunk_size, self.salt, self.nonce_prefix)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> Header:
        if len(raw) < HEADER_SIZE:
            raise VaultTampered("the object is shorter than its header: truncated or not ours")
        magic, version, chunk_size, salt, prefix = HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise VaultTampered("the object does not start with the vault's magic bytes")
        if version != VERSION:
            raise VaultTampered(f"the object claims format version {version}; we know only 1")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise VaultTampered("the object's header names an impossible chunk size")
        return cls(chunk_size, salt, prefix)


def sealed_size(plaintext_size: int, chunk_size: int) -> int:
    """Stored size of an object holding `plaintext_size` bytes."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER_SIZE + plaintext_size + chunks * TAG_SIZE


def chunk_count(stored_size: int, chunk_size: int) -> int:
    """How many chunks an object of `stored_size` bytes has; refuses impossible sizes."""
    body = stored_size - HEADER_SIZE
    if body < TAG_SIZE:
        raise VaultTampered("the object is too short to hold even one chunk: truncated")
    full, rest = divmod(body, chunk_size + TAG_SIZE)
    if rest and rest < TAG_SIZE:
        raise VaultTampered("the object ends inside a chunk's tag: truncated")
    if rest == TAG_SIZE and full:
        # An empty last chunk after full ones is never written (a full chunk is the last).
        raise VaultTampered("the object ends in an empty chunk no writer makes: tampered")
    return full + (1 if rest else 0)


def plaintext_size(stored_size: int, chunk_size: int) -> int:
    """Plaintext size of an object of `stored_size` bytes, without decrypting anything."""
    return stored_size - HEADER_SIZE - chunk_count(stored_size, chunk_size) * TAG_SIZE


def _uninitialised_bytearray() -> Callable[[int], bytearray]:
    """`bytearray(n)` without zero-filling it, where the interpreter allows: a buffer that is
    overwritten whole before anyone reads it need not be cleared first (2.6 MB of memset per
    segment was 5% of the server's CPU per segment, benchmarks/stream.py)."""
    if sys.implementation.name != "cpython":
        return bytearray
    make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    make.restype = ctypes.py_object
    return lambda size: make(None, size)


#: A new bytearray of `size` bytes whose contents are undefined until written.
uninitialised = _uninitialised_bytearray()


class ObjectCipher:
    """The AEAD of one object: its key is derived from the data key, the header's salt and the
    object's identity, so a copy under another owner or path cannot be opened."""

    __slots__ = ("_ad", "_aead", "_prefix", "chunk_size", "header")

    def __init__(self, data_key: bytes, header: Header, owner: str, path: str) -> None:
        identity = length_prefixed(owner) + length_prefixed(path)
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=header.salt, info=OBJECT_KEY_INFO + identity
        ).derive(data_key)
        self._aead = AESGCM(key)
        # The whole header is associated data of every chunk: a flipped header bit fails.
        self._ad = header.pack() + identity
        self._prefix = header.nonce_prefix
        self.header = header
        self.chunk_size = header.chunk_size

    def nonce(self, index: int, last: bool) -> bytes:
        return self._prefix + _COUNTER.pack(index, last)

    def seal_into(
        self, index: int, last: bool, plaintext: bytes | bytearray | memoryview, out: memoryview
    ) -> None:
        if index >= MAX_CHUNKS:
            raise VaultError("the object is too large for the vault format (2**32 chunks)")
        self._aead.encrypt_into(self.nonce(index, last), plaintext, self._ad, out)

    @overload
    def open_chunks(
        self, ciphertext: bytes | bytearray | memoryview, first: int, final: int
    ) -> bytearray: ...

    @overload
    def open_chunks(
        self,
        ciphertext: bytes | bytearray | memoryview,
        first: int,
        final: int,
        out: bytearray | memoryview,
    ) -> bytearray | memoryview: ...

    def open_chunks(
        self,
        ciphertext: bytes | bytearray | memoryview,
        first: int,
        final: int,
        out: bytearray | memoryview | None = None,
    ) -> bytearray | memoryview:
        """Decrypt consecutive whole chunks; `ciphertext` starts at chunk `first`, and `final` is
        the index of the object's last chunk. Nothing is returned unless every chunk verifies.

        Without `out`, the plaintext comes in a new bytearray of exactly its size. `out`, if
        given, must hold at least the plaintext; callers that own a reusable buffer pass it to
        skip an allocation (a fresh multi-megabyte buffer costs page faults)."""
        view = memoryview(ciphertext)
        stride = self.chunk_size + TAG_SIZE
        count = -(-len(view) // stride)
        size = len(view) - count * TAG_SIZE
        if out is None:
            # Every byte is written below before the buffer is returned; on a failure it is
            # dropped unread.
            out = uninitialised(size)
        elif len(out) < size:
            raise ValueError("the output buffer is smaller than the plaintext")
        target = memoryview(out)
        decrypt_into = self._aead.decrypt_into
        ad = self._ad
        # One nonce buffer, rewritten in place per chunk: the loop is per-chunk overhead on
        # the hot path, so it does as little as possible besides the AES-GCM call.
        nonce = bytearray(self._prefix + bytes(5))
        pack_into = _COUNTER.pack_into
        total = len(view)
        index = first
        plain_at = 0
        for offset in range(0, total, stride):
            stop = min(offset + stride, total)
            plain = target[plain_at : plain_at + stop - offset - TAG_SIZE]
            pack_into(nonce, NONCE_PREFIX_SIZE, index, index == final)
            try:
                decrypt_into(nonce, view[offset:stop], ad, plain)
            except InvalidTag:
                # Never let unauthenticated bytes linger in a buffer someone might reuse.
                plain[:] = bytes(len(plain))
                raise VaultTampered(
                    f"chunk {index} failed authentication: the object was modified, truncated, "
                    "reordered, moved from another name, or the wrong key was used"
                ) from None
            except ValueError:
                raise VaultTampered(f"chunk {index} is malformed: truncated") from None
            plain_at += stop - offset - TAG_SIZE
            index += 1
        return out if len(out) == size else target[:size]


class Sealer:
    """Streams plaintext into sealed chunks. Holds at most one chunk of plaintext: a chunk is
    sealed only once more data proves it is not the last."""

    def __init__(self, cipher: ObjectCipher) -> None:
        self._cipher = cipher
        self._pending = bytearray()
        self._index = 0
        self.written = 0
        self.stride = cipher.chunk_size + TAG_SIZE  # a sealed chunk's size

    def header(self) -> bytes:
        return self._cipher.header.pack()

    def feed(self, data: bytes | bytearray | memoryview) -> bytearray:
        """Add plaintext; return the chunks that could be sealed (possibly none)."""
        view = memoryview(data)
        out = bytearray(((len(self._pending) + len(view)) // self._cipher.chunk_size) * self.stride)
        used, produced = self.feed_into(view, memoryview(out))
        assert used == len(view)
        del out[produced:]
        return out

    def feed_into(self, data: memoryview, out: memoryview) -> tuple[int, int]:
        """Add plaintext from `data`, sealing every chunk that more data follows straight into
        `out`, as far as it has room; returns (bytes of `data` taken, bytes of `out` written).
        Whole chunks are sealed from `data` itself: only a chunk's worth of tail is copied
        aside. Less than all of `data` is taken only when `out` is full."""
        size, stride = self._cipher.chunk_size, self.stride
        seal = self._cipher.seal_into
        total = len(data)
        used = produced = 0
        if self._pending:
            used = min(size - len(self._pending), total)
            self._pending += data[:used]
            if len(self._pending) < size or used == total:
                self.written += used
                return used, 0  # not full yet, or nothing after it yet: it may be the last
            if len(out) < stride:
                self.written += used
                return used, 0
            seal(self._index, False, self._pending, out[:stride])
            self._index += 1
            self._pending.clear()
            produced = stride
        while total - used > size and len(out) - produced >= stride:
            seal(self._index, False, data[used : used + size], out[produced : produced + stride])
            self._index += 1
            used += size
            produced += stride
        if total - used <= size:
            self._pending += data[used:]  # the tail (1..size bytes): it may be the last chunk
            used = total
        self.written += used
        return used, produced

    def finish(self) -> bytearray:
        """Seal the last chunk (empty when the object is empty) with the last-chunk flag."""
        out = bytearray(len(self._pending) + TAG_SIZE)
        self.finish_into(memoryview(out))
        return out

    def finish_into(self, out: memoryview) -> int:
        """`finish` into `out` (room for the pending bytes and a tag); returns bytes written."""
        length = len(self._pending) + TAG_SIZE
        self._cipher.seal_into(self._index, True, bytes(self._pending), out[:length])
        self._pending.clear()
        self._index += 1
        return length


@dataclass(frozen=True)
class ChunkSpan:
    """Which chunks cover a plaintext range, and where they lie in the stored object."""

    first: int
    last: int
    final: int  # the object's last chunk
    stored_start: int
    stored_end: int
    skip: int  # plaintext bytes to drop from the first chunk
    length: int  # plaintext bytes wanted


def covering_chunks(
    stored_size: int, chunk_size: int, start: int, end: int | None
) -> ChunkSpan | None:
    """The chunks covering plaintext [start, end) (end clamped to the size), or None when the
    range is empty. Reading an empty object still opens its one chunk, so tampering shows."""
    total = plaintext_size(stored_size, chunk_size)
    final = chunk_count(stored_size, chunk_size) - 1
    end = total if end is None else min(end, total)
    if start < 0 or end < 0:
        raise ValueError("byte ranges start at 0")
    if total == 0 and start == 0:
        return ChunkSpan(0, 0, 0, HEADER_SIZE, stored_size, 0, 0)
    if start >= end:
        return None
    stride = chunk_size + TAG_SIZE
    first, last = start // chunk_size, (end - 1) // chunk_size
    return ChunkSpan(
        first=first,
        last=last,
        final=final,
        stored_start=HEADER_SIZE + first * stride,
        stored_end=min(HEADER_SIZE + (last + 1) * stride, stored_size),
        skip=start - first * chunk_size,
        length=end - start,
    )


def seal_object(
    data_key: bytes,
    owner: str,
    path: str,
    plaintext: bytes,
    chunk_size: int,
    *,
    salt: bytes | None = None,
    nonce_prefix: bytes | None = None,
) -> bytes:
    """A whole object in memory; fixed salt and prefix are for test vectors only."""
    header = Header.new(chunk_size)
    if salt is not None or nonce_prefix is not None:
        header = Header(chunk_size, salt or header.salt, nonce_prefix or header.nonce_prefix)
    sealer = Sealer(ObjectCipher(data_key, header, owner, path))
    return sealer.header() + sealer.feed(plaintext) + sealer.finish()


def open_object(
    data_key: bytes, owner: str, path: str, blob: bytes | memoryview
) -> bytearray | memoryview:
    """Decrypt and verify a whole object held in memory."""
    header = Header.unpack(blob)
    cipher = ObjectCipher(data_key, header, owner, path)
    final = chunk_count(len(blob), header.chunk_size) - 1
    return cipher.open_chunks(memoryview(blob)[HEADER_SIZE:], 0, final)
