"""The object format against docs/vault-format.md: its test vectors, re-derived by a small
independent implementation of the page, and its size arithmetic."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from portal.errors import VaultTampered
from portal.vault.format import (
    HEADER_SIZE,
    TAG_SIZE,
    Header,
    ObjectCipher,
    Sealer,
    covering_chunks,
    open_object,
    plaintext_size,
    seal_object,
    sealed_size,
)
from portal.vault.keyring import MasterKey
from portal.vault.keystore import key_check_value, key_matches, unwrap_data_key, wrap_data_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "vault-format.md"


def doc_vectors() -> tuple[dict[str, bytes], dict[str, str]]:
    """The vector block of the doc: hex values, and quoted strings."""
    block = re.search(r"```vector\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/vault-format.md lost its test vectors"
    hexes: dict[str, bytes] = {}
    texts: dict[str, str] = {}
    for line in block.group(1).splitlines():
        name, _, raw = line.partition(": ")
        if raw.startswith('"'):
            texts[name] = raw[1:-1].replace("\\n", "\n")
        elif name != "chunk_size":
            hexes[name] = bytes.fromhex(raw)
        else:
            texts[name] = raw
    return hexes, texts


V, T = doc_vectors()
CHUNK_SIZE = int(T["chunk_size"])


def lp(text: str) -> bytes:
    return struct.pack(">H", len(text.encode())) + text.encode()


def reference_seal(
    data_key: bytes, owner: str, path: str, plaintext: bytes, size: int, salt: bytes, prefix: bytes
) -> bytes:
    """The format as the doc describes it, written without looking at portal.vault.format."""
    header = b"MMVF" + bytes([1]) + struct.pack(">I", size) + salt + prefix
    info = b"megamovie-vault-v1 object-key" + b"\x00" + lp(owner) + lp(path)
    key = HKDF(hashes.SHA256(), 32, salt, info).derive(data_key)
    pieces = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
    out = header
    for index, piece in enumerate(pieces):
        nonce = prefix + struct.pack(">I", index) + bytes([index == len(pieces) - 1])
        out += AESGCM(key).encrypt(nonce, piece, header + lp(owner) + lp(path))
    return out


def test_vectors_match_the_code_and_the_documented_construction() -> None:
    owner, path = T["owner"], T["path"]
    cases = [(T["plaintext"].encode(), V["object"]), (b"", V["empty_object"])]
    for plaintext, expected in cases:
        ours = seal_object(
            V["data_key"], owner, path, plaintext, CHUNK_SIZE,
            salt=V["salt"], nonce_prefix=V["nonce_prefix"],
        )  # fmt: skip
        reference = reference_seal(
            V["data_key"], owner, path, plaintext, CHUNK_SIZE, V["salt"], V["nonce_prefix"]
        )
        assert ours == reference == expected
        assert open_object(V["data_key"], owner, path, expected) == plaintext
    header = Header.unpack(V["object"])
    assert (header.chunk_size, header.salt, header.nonce_prefix) == (
        CHUNK_SIZE,
        V["salt"],
        V["nonce_prefix"],
    )
    info = b"megamovie-vault-v1 object-key\x00" + lp(owner) + lp(path)
    assert HKDF(hashes.SHA256(), 32, V["salt"], info).derive(V["data_key"]) == V["object_key"]


def test_wrapping_and_check_vectors() -> None:
    kek = MasterKey(T["key_id"], V["kek"])
    wrapped = wrap_data_key(kek, T["owner"], V["data_key"], nonce=V["wrap_nonce"])
    assert wrapped == V["wrapped_data_key"]
    assert unwrap_data_key(kek, T["owner"], wrapped) == V["data_key"]
    with pytest.raises(VaultTampered):
        unwrap_data_key(kek, "another-video", wrapped)
    with pytest.raises(VaultTampered):
        unwrap_data_key(MasterKey("k2", V["kek"]), T["owner"], wrapped)
    check = key_check_value(kek, nonce=V["check_nonce"])
    assert check == V["check_value"]
    assert key_matches(kek, check)
    assert not key_matches(MasterKey(T["key_id"], bytes(32)), check)


@given(size=st.integers(0, 5000), chunk=st.sampled_from([16, 17, 100, 1024, 4096]))
def test_plaintext_size_follows_from_stored_size(size: int, chunk: int) -> None:
    assert plaintext_size(sealed_size(size, chunk), chunk) == size


@given(stored=st.integers(0, 2000))
def test_every_stored_size_is_either_exact_or_refused(stored: int) -> None:
    try:
        size = plaintext_size(stored, 100)
    except VaultTampered:
        return
    assert sealed_size(size, 100) == stored


@given(data=st.data())
def test_covering_chunks_cover_exactly_the_range(data: st.DataObject) -> None:
    chunk = 100
    size = data.draw(st.integers(0, 1000))
    start = data.draw(st.integers(0, size + 5))
    end = data.draw(st.one_of(st.none(), st.integers(start, size + 300)))
    span = covering_chunks(sealed_size(size, chunk), chunk, start, end)
    stop = size if end is None else min(end, size)
    if span is None:
        assert start >= stop and (size > 0 or start > 0)
        return
    assert span.first * chunk <= start and span.length == max(0, stop - start)
    assert span.last * chunk < max(stop, 1) <= (span.last + 1) * chunk or size == 0
    assert span.stored_start == HEADER_SIZE + span.first * (chunk + 16)


def test_chunks_open_only_at_their_own_position() -> None:
    key = os.urandom(32)
    blob = seal_object(key, "o", "p", os.urandom(300), 100)
    cipher = ObjectCipher(key, Header.unpack(blob), "o", "p")
    second = blob[HEADER_SIZE + 116 : HEADER_SIZE + 232]
    assert len(cipher.open_chunks(second, 1, 2)) == 100
    for index, final in [(0, 2), (2, 2), (1, 1)]:
        with pytest.raises(VaultTampered, match="failed authentication"):
            cipher.open_chunks(second, index, final)


def test_a_preallocated_output_buffer_is_filled_in_place() -> None:
    key = os.urandom(32)
    data = os.urandom(1000)
    blob = seal_object(key, "o", "p", data, 100)
    cipher = ObjectCipher(key, Header.unpack(blob), "o", "p")
    buffer = bytearray(2000)
    view = cipher.open_chunks(memoryview(blob)[HEADER_SIZE:], 0, 9, out=buffer)
    assert bytes(view) == data == bytes(buffer[:1000])


@given(data=st.data())
def test_sealing_in_pieces_into_small_buffers_makes_the_same_object(data: st.DataObject) -> None:
    """`Sealer.feed_into` (the vault writer's way: pieces of any size, an output buffer that
    fills up) seals exactly what sealing the whole plaintext at once does."""
    key = bytes(range(32))
    chunk = data.draw(st.sampled_from([16, 17, 100, 1024]))
    plaintext = data.draw(st.binary(max_size=5000))
    header = Header.new(chunk)
    expected = seal_object(
        key, "video1", "source/part-000001", plaintext, chunk,
        salt=header.salt, nonce_prefix=header.nonce_prefix,
    )  # fmt: skip
    sealer = Sealer(ObjectCipher(key, header, "video1", "source/part-000001"))
    room = data.draw(st.integers(1, 4)) * (chunk + TAG_SIZE)
    stored = bytearray(sealer.header())
    offset = 0
    while offset < len(plaintext):
        piece = memoryview(plaintext)[offset : offset + data.draw(st.integers(1, 3 * chunk))]
        offset += len(piece)
        while piece:
            out = bytearray(room)
            used, produced = sealer.feed_into(piece, memoryview(out))
            stored += out[:produced]
            piece = piece[used:]
    final = bytearray(chunk + TAG_SIZE)
    stored += final[: sealer.finish_into(memoryview(final))]
    assert sealer.written == len(plaintext)
    assert bytes(stored) == expected
