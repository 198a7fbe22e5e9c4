"""`ObjectCipher.open_bytes`, the serving path's decryption: any plaintext range of whole
chunks comes back exact, and nothing comes back unless every chunk authenticates."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.errors import VaultTampered
from portal.vault.format import HEADER_SIZE, TAG_SIZE, Header, ObjectCipher, seal_object

CHUNK = 100
KEY = os.urandom(32)
DATA = os.urandom(950)  # ten chunks, the last one short
BLOB = seal_object(KEY, "o", "p", DATA, CHUNK)
CIPHER = ObjectCipher(KEY, Header.unpack(BLOB), "o", "p")
STRIDE = CHUNK + TAG_SIZE


def _chunks(first: int, last: int) -> memoryview:
    return memoryview(BLOB)[HEADER_SIZE + first * STRIDE : HEADER_SIZE + (last + 1) * STRIDE]


@given(st.integers(0, len(DATA)), st.integers(0, len(DATA)))
def test_any_range_opens_to_exactly_those_plaintext_bytes(start: int, stop: int) -> None:
    start, stop = min(start, stop), max(start, stop)
    if stop == start:
        stop = min(start + 1, len(DATA))
        start = stop - 1
    first, last = start // CHUNK, (stop - 1) // CHUNK
    plain = CIPHER.open_bytes(_chunks(first, last), first, 9, start - first * CHUNK, stop - start)
    assert type(plain) is bytes
    assert plain == DATA[start:stop]


def test_a_whole_object_opens_to_its_plaintext() -> None:
    assert CIPHER.open_bytes(_chunks(0, 9), 0, 9, 0, len(DATA)) == DATA


def test_a_flipped_bit_in_any_chunk_returns_nothing() -> None:
    tampered = bytearray(_chunks(0, 9))
    tampered[5 * STRIDE + 3] ^= 1
    with pytest.raises(VaultTampered, match="chunk 5 failed authentication"):
        CIPHER.open_bytes(tampered, 0, 9, 0, len(DATA))


def test_a_chunk_opened_at_the_wrong_position_or_as_not_final_fails() -> None:
    with pytest.raises(VaultTampered, match="failed authentication"):
        CIPHER.open_bytes(_chunks(1, 1), 2, 9, 0, CHUNK)
    with pytest.raises(VaultTampered, match="failed authentication"):
        CIPHER.open_bytes(_chunks(9, 9), 9, 10, 0, 50)


def test_a_chunk_cut_shorter_than_its_tag_is_refused_as_tampering() -> None:
    with pytest.raises(VaultTampered):
        CIPHER.open_bytes(_chunks(0, 0)[:10], 0, 9, 0, 10)
