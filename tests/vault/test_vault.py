"""The vault end to end, on the local backend and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from portal.db import new_id
from portal.vault import LocalStorage, Vault
from portal.vault.errors import (
    DataKeyExists,
    DataKeyMissing,
    ObjectNameInvalid,
    ObjectNotFound,
    VaultTampered,
)
from portal.vault.format import HEADER_SIZE, TAG_SIZE, sealed_size

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024


def every_file(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def stored(vault: Vault, owner: str, path: str) -> bytes:
    return await vault.storage.read(f"{owner}/{path}")


async def restore(vault: Vault, owner: str, path: str, blob: bytes) -> None:
    async def one() -> object:
        yield blob

    await vault.storage.put(f"{owner}/{path}", one())


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5_000_000])
async def test_objects_round_trip_at_every_size_edge(vault: Vault, owner: str, size: int) -> None:
    data = os.urandom(size)
    assert await vault.put(owner, "source/part-000001", data) == size
    assert await vault.size(owner, "source/part-000001") == size
    assert await vault.read(owner, "source/part-000001") == data
    # The stored size is the plaintext plus a fixed overhead: header, one tag a chunk.
    raw_size = await vault.storage.size(f"{owner}/source/part-000001")
    assert raw_size == sealed_size(size, vault.chunk_size)
    chunks = max(1, -(-size // vault.chunk_size))
    assert raw_size == HEADER_SIZE + size + chunks * TAG_SIZE


async def test_writer_streams_pieces_and_counts_them(vault: Vault, owner: str) -> None:
    pieces = [os.urandom(n) for n in (10, CHUNK, 3, 2 * CHUNK + 5, 0, 999)]
    async with vault.writer(owner, "hls/720p/000003.m4s") as writer:
        for piece in pieces:
            await writer.write(piece)
        assert writer.written == sum(map(len, pieces))
    assert await vault.read(owner, "hls/720p/000003.m4s") == b"".join(pieces)


async def test_writer_that_fails_stores_nothing(vault: Vault, owner: str) -> None:
    with pytest.raises(RuntimeError):
        async with vault.writer(owner, "hls/720p/000001.m4s") as writer:
            await writer.write(os.urandom(3 * 1024 * 1024))
            raise RuntimeError("ffmpeg died")
    assert not await vault.exists(owner, "hls/720p/000001.m4s")
    assert await vault.list(owner) == []


async def test_put_from_async_iterable_and_from_file(
    vault: Vault, owner: str, tmp_path: Path
) -> None:
    data = os.urandom(300_000)

    async def pieces() -> object:
        for i in range(0, len(data), 7000):
            yield data[i : i + 7000]

    assert await vault.put(owner, "a.bin", pieces()) == len(data)
    source = tmp_path / "source.mp4"
    source.write_bytes(data)
    assert await vault.put_file(owner, "source/part-000001", source) == len(data)
    dest = tmp_path / "out.mp4"
    assert await vault.read_to_file(owner, "source/part-000001", dest) == len(data)
    assert dest.read_bytes() == data == await vault.read(owner, "a.bin")
    assert dest.stat().st_mode & 0o777 == 0o600


async def test_iter_range_yields_large_pieces_for_a_segment(vault: Vault, owner: str) -> None:
    data = os.urandom(2_500_000)
    await vault.put(owner, "hls/1080p/000001.m4s", data)
    pieces = [p async for p in vault.iter_range(owner, "hls/1080p/000001.m4s")]
    assert len(pieces) == 1  # one storage read, one buffer
    assert bytes(pieces[0]) == data


async def test_ranges_open_only_the_covering_chunks(vault: Vault, owner: str) -> None:
    data = os.urandom(4 * CHUNK)
    await vault.put(owner, "poster.jpg", data)
    blob = bytearray(await stored(vault, owner, "poster.jpg"))
    # Corrupt chunk 3: ranges inside chunks 0-2 still read, anything touching chunk 3 fails.
    blob[HEADER_SIZE + 3 * (CHUNK + TAG_SIZE) + 10] ^= 1
    await restore(vault, owner, "poster.jpg", bytes(blob))
    assert await vault.read(owner, "poster.jpg", 5, 3 * CHUNK) == data[5 : 3 * CHUNK]
    with pytest.raises(VaultTampered):
        await vault.read(owner, "poster.jpg", 3 * CHUNK - 1, 3 * CHUNK + 1)


async def test_range_edges(vault: Vault, owner: str) -> None:
    data = os.urandom(CHUNK + 10)
    await vault.put(owner, "x", data)
    assert await vault.read(owner, "x", 0, 0) == b""
    assert await vault.read(owner, "x", CHUNK + 10) == b""
    assert await vault.read(owner, "x", CHUNK + 5, 10**9) == data[CHUNK + 5 :]
    assert await vault.read(owner, "x", 10**9) == b""
    with pytest.raises(ValueError, match="range"):
        await vault.read(owner, "x", 5, 4)


RANGE_DATA = os.urandom(3 * CHUNK + 1234)


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    start=st.integers(0, len(RANGE_DATA) + 10),
    length=st.one_of(st.none(), st.integers(0, 2 * CHUNK + 10)),
)
async def test_random_ranges_match_the_plaintext(
    vault: Vault, owner: str, start: int, length: int | None
) -> None:
    # The fixtures live for the whole test, so the object is written by the first example.
    if not await vault.exists(owner, "hls/360p/000001.m4s"):
        await vault.put(owner, "hls/360p/000001.m4s", RANGE_DATA)
    end = None if length is None else start + length
    got = await vault.read(owner, "hls/360p/000001.m4s", start, end)
    assert got == RANGE_DATA[start:end]


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    size=st.one_of(
        st.integers(0, 3 * CHUNK + 20), st.sampled_from([CHUNK - 1, CHUNK, 2 * CHUNK + 1])
    )
)
async def test_a_whole_object_read_is_every_byte_of_it_and_nothing_else(
    vault: Vault, owner: str, size: int
) -> None:
    """A whole read decrypts into a buffer that is not zero-filled first, and the memory it
    gets may have held another object's plaintext: every byte must be overwritten."""
    other = os.urandom(3 * CHUNK + 20)
    await vault.put(owner, "hls/1080p/000001.m4s", other)
    assert await vault.read(owner, "hls/1080p/000001.m4s") == other  # then freed, for reuse
    data = os.urandom(size)
    await vault.put(owner, "hls/360p/000002.m4s", data)
    assert await vault.read(owner, "hls/360p/000002.m4s") == data


async def test_missing_objects_and_keys(vault: Vault, owner: str) -> None:
    with pytest.raises(ObjectNotFound):
        await vault.size(owner, "nope")
    with pytest.raises(ObjectNotFound):
        await vault.read(owner, "nope")
    assert not await vault.exists(owner, "nope")
    with pytest.raises(DataKeyMissing):
        await vault.put(new_id(), "x", b"data")
    with pytest.raises(DataKeyExists):
        await vault.create_key(owner)
    assert await vault.has_key(owner)
    assert not await vault.has_key(new_id())


async def test_list_and_delete(vault: Vault, owner: str) -> None:
    for path in ["hls/720p/init.mp4", "hls/720p/000001.m4s", "hls/360p/init.mp4", "poster.jpg"]:
        await vault.put(owner, path, path.encode())
    other = new_id()
    await vault.create_key(other)
    await vault.put(other, "poster.jpg", b"theirs")
    assert await vault.list(owner) == sorted(
        ["hls/360p/init.mp4", "hls/720p/000001.m4s", "hls/720p/init.mp4", "poster.jpg"]
    )
    assert await vault.list(owner, "hls/720p/") == ["hls/720p/000001.m4s", "hls/720p/init.mp4"]
    assert await vault.list(owner, "hls/7") == ["hls/720p/000001.m4s", "hls/720p/init.mp4"]
    await vault.delete(owner, "poster.jpg")
    await vault.delete(owner, "poster.jpg")  # deleting twice is fine
    assert "poster.jpg" not in await vault.list(owner)
    assert await vault.read(other, "poster.jpg") == b"theirs"


@pytest.mark.parametrize(
    "path", ["../x", "a/../b", "/etc/passwd", "a//b", ".hidden", "a/b/", "", "a\\b", "a b"]
)
async def test_bad_paths_are_refused(vault: Vault, owner: str, path: str) -> None:
    with pytest.raises(ObjectNameInvalid):
        await vault.put(owner, path, b"x")
    with pytest.raises(ObjectNameInvalid):
        await vault.read(owner, path)


# Tampering ------------------------------------------------------------------------------


async def sealed_three_chunks(vault: Vault, owner: str) -> tuple[bytes, bytes]:
    data = os.urandom(2 * CHUNK + 100)
    await vault.put(owner, "hls/720p/000001.m4s", data)
    return data, await stored(vault, owner, "hls/720p/000001.m4s")


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    stride = CHUNK + TAG_SIZE
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i : i + stride] for i in range(0, len(body), stride)]


async def assert_tampered(vault: Vault, owner: str, blob: bytes) -> None:
    await restore(vault, owner, "hls/720p/000001.m4s", blob)
    received: list[bytes] = []
    with pytest.raises(VaultTampered):
        async for piece in vault.iter_range(owner, "hls/720p/000001.m4s"):
            received.append(bytes(piece))
    assert received == []  # not one byte of plaintext from a bad object
    with pytest.raises(VaultTampered):  # the whole-object read (a segment's plain GET) too
        await vault.read(owner, "hls/720p/000001.m4s")


async def test_flipping_any_bit_is_detected(vault: Vault, owner: str, backend: str) -> None:
    _, blob = await sealed_three_chunks(vault, owner)
    # Every header byte, and bytes spread over every chunk, tags included.
    positions = list(range(HEADER_SIZE)) + list(range(HEADER_SIZE, len(blob), 4099))
    positions += [len(blob) - 1, HEADER_SIZE + CHUNK + TAG_SIZE - 1]
    if backend == "s3":
        positions = positions[::8] + positions[-2:]
    for position in positions:
        flipped = bytearray(blob)
        flipped[position] ^= 0x10
        await assert_tampered(vault, owner, bytes(flipped))


async def test_dropped_duplicated_reordered_chunks_are_detected(vault: Vault, owner: str) -> None:
    _, blob = await sealed_three_chunks(vault, owner)
    header, (c0, c1, c2) = chunks_of(blob)
    for body in [c0 + c2, c1 + c2, c0 + c0 + c1 + c2, c1 + c0 + c2, c0 + c1 + c1 + c2]:
        await assert_tampered(vault, owner, header + body)


async def test_truncation_is_detected_even_at_a_chunk_boundary(vault: Vault, owner: str) -> None:
    _, blob = await sealed_three_chunks(vault, owner)
    header, (c0, c1, _c2) = chunks_of(blob)
    for cut in [header + c0 + c1, header + c0, header, header[:10], b"", blob[:-1], blob[:-17]]:
        await assert_tampered(vault, owner, cut)


async def test_appended_bytes_are_detected(vault: Vault, owner: str) -> None:
    _, blob = await sealed_three_chunks(vault, owner)
    await assert_tampered(vault, owner, blob + b"\x00" * TAG_SIZE)
    await assert_tampered(vault, owner, blob + blob[HEADER_SIZE:])


async def test_an_object_copied_to_another_path_or_video_does_not_open(
    vault: Vault, owner: str
) -> None:
    data = os.urandom(1000)
    await vault.put(owner, "hls/720p/000001.m4s", data)
    blob = await stored(vault, owner, "hls/720p/000001.m4s")
    await restore(vault, owner, "hls/720p/000002.m4s", blob)
    with pytest.raises(VaultTampered):
        await vault.read(owner, "hls/720p/000002.m4s")
    other = new_id()
    await vault.create_key(other)
    await restore(vault, other, "hls/720p/000001.m4s", blob)
    with pytest.raises(VaultTampered):
        await vault.read(other, "hls/720p/000001.m4s")
    # The original is untouched by all this.
    assert await vault.read(owner, "hls/720p/000001.m4s") == data


async def test_a_splice_of_two_objects_of_one_video_does_not_open(vault: Vault, owner: str) -> None:
    await vault.put(owner, "a", os.urandom(2 * CHUNK + 1))
    await vault.put(owner, "b", os.urandom(2 * CHUNK + 1))
    header_a, chunks_a = chunks_of(await stored(vault, owner, "a"))
    _, chunks_b = chunks_of(await stored(vault, owner, "b"))
    await restore(vault, owner, "a", header_a + chunks_a[0] + chunks_b[1] + chunks_a[2])
    with pytest.raises(VaultTampered):
        await vault.read(owner, "a")


# Crypto-shredding and what reaches storage ------------------------------------------------


async def test_destroy_shreds_the_key_first_so_restored_copies_stay_sealed(
    vault: Vault, owner: str
) -> None:
    data = os.urandom(100_000)
    await vault.put(owner, "hls/720p/000001.m4s", data)
    await vault.put(owner, "poster.jpg", b"poster")
    kept = await stored(vault, owner, "hls/720p/000001.m4s")
    await vault.destroy(owner)
    assert not await vault.has_key(owner)
    assert await vault.list(owner) == []
    # An attacker restores the ciphertext from a backup: nothing opens it any more.
    await restore(vault, owner, "hls/720p/000001.m4s", kept)
    with pytest.raises(DataKeyMissing):
        await vault.read(owner, "hls/720p/000001.m4s")
    # Not even a new key made under the same video id.
    await vault.create_key(owner)
    with pytest.raises(VaultTampered):
        await vault.read(owner, "hls/720p/000001.m4s")


async def test_no_plaintext_reaches_storage(
    vault: Vault, owner: str, backend: str, request: pytest.FixtureRequest
) -> None:
    marker = b"MEGAMOVIE-PLAINTEXT-MARKER-" * 4
    data = marker * 40_000 + os.urandom(100) + marker
    await vault.put(owner, "source/part-000001", data)
    async with vault.writer(owner, "hls/720p/000001.m4s") as writer:
        for _ in range(50):
            await writer.write(marker * 1000)
    probe = marker[:16]
    blobs: dict[str, bytes] = {}
    if backend == "local":
        blobs = every_file(Path(vault.storage.root))  # type: ignore[attr-defined]
    else:
        server = request.getfixturevalue("s3_server")
        client = server.client()
        prefix = vault.storage.prefix  # type: ignore[attr-defined]
        listing = client.list_objects_v2(Bucket=server.bucket, Prefix=prefix)
        for item in listing.get("Contents", []):
            body = client.get_object(Bucket=server.bucket, Key=item["Key"])["Body"].read()
            blobs[item["Key"]] = body
    assert len(blobs) == 2
    for name, blob in blobs.items():
        assert probe not in blob, f"plaintext found in {name}"
    assert await vault.read(owner, "source/part-000001") == data


async def test_whole_reads_from_the_page_cache_and_from_a_worker_thread_agree(
    vault: Vault, owner: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {"hls/720p/000001.m4s": 2_570_000, "poster.jpg": 1000, "storyboard.vtt": 0}
    data = {path: os.urandom(size) for path, size in sizes.items()}
    for path, plain in data.items():
        await vault.put(owner, path, plain)
    for path, plain in data.items():
        assert await vault.read(owner, path) == plain
    if backend == "local":
        # Nothing in the page cache (or no RWF_NOWAIT): the read goes to a worker thread.
        assert isinstance(vault.storage, LocalStorage)
        monkeypatch.setattr(vault.storage, "read_cached", lambda name, limit: None)
        for path, plain in data.items():
            assert await vault.read(owner, path) == plain
    # Larger than one read window: read in windows, as before.
    monkeypatch.setattr("portal.vault.vault.READ_WINDOW", 1_000_000)
    assert await vault.read(owner, "hls/720p/000001.m4s") == data["hls/720p/000001.m4s"]


# Page-cache reads are the local backend's: run on that backend only (never skipped).
@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_local_cached_reads_refuse_what_they_cannot_do_without_waiting(
    vault: Vault, owner: str
) -> None:
    assert isinstance(vault.storage, LocalStorage)
    await vault.put(owner, "poster.jpg", os.urandom(5000))
    name = f"{owner}/poster.jpg"
    size = await vault.storage.size(name)
    view = vault.storage.read_cached(name, size)
    if view is not None:  # None: this kernel or file system has no RWF_NOWAIT
        assert bytes(view) == await vault.storage.read(name)
    assert vault.storage.read_cached(name, size - 1) is None  # larger than the limit
    with pytest.raises(ObjectNotFound):
        vault.storage.read_cached(f"{owner}/missing.jpg", size)
