"""Storage backends: the same behaviour from a local directory and from a real S3 server."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from portal.errors import ObjectNameInvalid, ObjectNotFound, StorageError
from portal.services import vault_config
from portal.settings import Settings
from portal.vault import LocalStorage, Storage, open_storage
from portal.vault.s3 import PART_SIZE
from portal.vault.storage import _SYNCS, INLINE_WRITE_MAX

from .conftest import S3Server

pytestmark = pytest.mark.anyio
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
async def storage(vault_settings: Settings) -> AsyncIterator[Storage]:
    opened = await open_storage(vault_config(vault_settings).storage)
    try:
        yield opened
    finally:
        await opened.aclose()


async def stream(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def failing_stream(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
    raise OSError("the client went away")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_put_read_size_and_ranges(storage: Storage) -> None:
    data = os.urandom(100_000)
    assert await storage.put("vid1/hls/720p/000001.m4s", stream(data[:7], data[7:])) == len(data)
    assert await storage.size("vid1/hls/720p/000001.m4s") == len(data)
    assert await storage.read("vid1/hls/720p/000001.m4s") == data
    assert await storage.read("vid1/hls/720p/000001.m4s", 10, 20) == data[10:20]
    assert await storage.read("vid1/hls/720p/000001.m4s", 99_990) == data[99_990:]
    assert await storage.read("vid1/hls/720p/000001.m4s", 99_990, 10**9) == data[99_990:]
    assert await storage.read("vid1/hls/720p/000001.m4s", 10**6) == b""
    with pytest.raises(ObjectNotFound):
        await storage.read("vid1/missing")
    with pytest.raises(ObjectNotFound):
        await storage.size("vid1/missing")


async def test_put_replaces_whole_and_a_failed_put_leaves_the_old_object(
    storage: Storage,
) -> None:
    await storage.put("vid1/poster.jpg", stream(b"old poster"))
    await storage.put("vid1/poster.jpg", stream(b"new poster"))
    with pytest.raises(OSError, match="went away"):
        await storage.put("vid1/poster.jpg", failing_stream(b"half a poster"))
    with pytest.raises(OSError, match="went away"):
        await storage.put("vid1/other.jpg", failing_stream(b"x" * 100))
    assert await storage.read("vid1/poster.jpg") == b"new poster"
    assert await storage.list("vid1/") == ["vid1/poster.jpg"]
    if isinstance(storage, LocalStorage):
        assert files_under(storage.root) == ["vid1/poster.jpg"]  # no temp files left


async def test_list_and_delete_prefix_respect_owner_boundaries(storage: Storage) -> None:
    for name in ["abc/a", "abc/hls/1", "abc/hls/2", "abcd/a", "ab/a"]:
        await storage.put(name, stream(name.encode()))
    assert await storage.list("abc/") == ["abc/a", "abc/hls/1", "abc/hls/2"]
    assert await storage.list("abc/hl") == ["abc/hls/1", "abc/hls/2"]
    assert await storage.list("abc") == ["abc/a", "abc/hls/1", "abc/hls/2", "abcd/a"]
    assert await storage.delete_prefix("abc/") == 3
    assert await storage.list("") == ["ab/a", "abcd/a"]
    await storage.delete("ab/a")
    await storage.delete("ab/a")
    assert await storage.list("") == ["abcd/a"]
    if isinstance(storage, LocalStorage):
        # Deleting leaves no empty directories behind.
        assert sorted(p.name for p in storage.root.iterdir()) == ["abcd"]


@pytest.mark.parametrize(
    "name",
    [
        "../secret",
        "../../secret",
        "../../etc/passwd",
        "vid1/../../secret",
        "vid1/..",
        "/etc/passwd",
        "vid1//x",
        "vid1/x/",
        "vid1",
        "",
        "vid1/.tmp-1234-x",
        "vid1/x\x00y",
        "vid1/a b",
        "vid1/a\\..\\b",
        "vid1/\u00fc",
        "vid1/%2e%2e/x",
        "v.d/x",
    ],
)
async def test_names_that_could_escape_or_hide_are_refused(
    storage: Storage, name: str, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("do not read")
    with pytest.raises(ObjectNameInvalid):
        await storage.read(name)
    with pytest.raises(ObjectNameInvalid):
        await storage.size(name)
    with pytest.raises(ObjectNameInvalid):
        await storage.put(name, stream(b"x"))
    with pytest.raises(ObjectNameInvalid):
        await storage.delete(name)
    assert (tmp_path / "secret").read_text() == "do not read"


@pytest.mark.parametrize("prefix", ["..", "../", "a/../", "/abs", "a//", ".tmp"])
async def test_prefixes_that_could_escape_are_refused(storage: Storage, prefix: str) -> None:
    with pytest.raises(ObjectNameInvalid):
        await storage.list(prefix)
    with pytest.raises(ObjectNameInvalid):
        await storage.delete_prefix(prefix)


async def test_local_files_are_private(settings: Settings) -> None:
    storage = await open_storage(vault_config(settings).storage)
    assert isinstance(storage, LocalStorage)
    await storage.put("vid1/a/b", stream(b"x"))
    await storage.put("vid2/hls/720p/000001.m4s", stream(b"y"))
    assert (storage.root / "vid1/a/b").stat().st_mode & 0o777 == 0o600
    assert (storage.root / "vid2/hls/720p/000001.m4s").stat().st_mode & 0o777 == 0o600
    # Every directory a write makes, the intermediate ones too, is the owner's alone.
    for directory in ("vid1", "vid1/a", "vid2", "vid2/hls", "vid2/hls/720p"):
        assert (storage.root / directory).stat().st_mode & 0o777 == 0o700, directory


KILLED_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from portal.vault.storage import LocalStorage

async def main():
    root = Path(sys.argv[1])
    upload = LocalStorage(root).upload("vid1/source/part-000002")
    await upload.write(b"half of a PATCH")
    # Writes are pipelined (write() may return before the file exists): be killed only once
    # the half-written temp file is on disk, as a crash mid-PATCH would leave it.
    for _ in range(500):
        if any(p.name.startswith(".tmp-") for p in (root / "vid1/source").iterdir()):
            break
        await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)  # no abort, no commit: what a crash leaves

asyncio.run(main())
"""


async def kill_a_writer(root: Path) -> int:
    """Run a process that starts writing an object under `root` and is killed; its status."""
    killed = await anyio.run_process(
        [sys.executable, "-c", KILLED_WRITER, str(root)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        check=False,
    )
    return killed.returncode


async def test_a_write_killed_midway_is_deleted_with_its_prefix(settings: Settings) -> None:
    storage = await open_storage(vault_config(settings).storage)
    assert isinstance(storage, LocalStorage)
    await storage.put("vid1/source/part-000001", stream(b"whole"))
    assert await kill_a_writer(storage.root) == -signal.SIGKILL
    leftovers = [p.name for p in (storage.root / "vid1/source").iterdir()]
    assert len(leftovers) == 2 and any(n.startswith(".tmp-") for n in leftovers)
    # Listing shows only finished objects; deleting by prefix (crypto-shredding, DELETE of an
    # upload) removes the unfinished write as well, whichever prefix names it.
    assert await storage.list("vid1/") == ["vid1/source/part-000001"]
    assert await storage.delete_prefix("vid1/source/part-000002") == 0
    assert sorted(p.name for p in (storage.root / "vid1/source").iterdir()) == ["part-000001"]
    assert await kill_a_writer(storage.root) == -signal.SIGKILL
    assert await storage.delete_prefix("vid1/") == 1
    assert list(storage.root.iterdir()) == []


async def test_unknown_storage_url_is_a_clear_error(settings: Settings) -> None:
    config = vault_config(settings)
    with pytest.raises(StorageError, match="not supported"):
        await open_storage(replace(config.storage, url="ftp://example.org/x"))


@pytest.mark.s3
async def test_large_objects_go_up_in_parts_and_read_back_across_them(
    s3_server: S3Server, settings: Settings
) -> None:
    bucket = f"t-{secrets.token_hex(6)}"
    storage = await open_storage(vault_config(s3_server.settings_for(settings, bucket)).storage)
    try:
        data = os.urandom(2 * PART_SIZE + 12345)
        pieces = [data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000)]
        assert await storage.put("vid1/source/part-000001", stream(*pieces)) == len(data)
        key = storage.key_of("vid1/source/part-000001")  # type: ignore[attr-defined]
        head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=key)
        assert head["ETag"].strip('"').endswith("-3")  # a three-part multipart upload
        assert await storage.size("vid1/source/part-000001") == len(data)
        across = (PART_SIZE - 100, PART_SIZE + 100)
        assert await storage.read("vid1/source/part-000001", *across) == data[slice(*across)]
        assert await storage.read("vid1/source/part-000001") == data
        # A failed large upload is aborted: no object, no dangling multipart upload.
        with pytest.raises(OSError, match="went away"):
            await storage.put("vid1/source/part-000002", failing_stream(data))
        assert await storage.list("vid1/") == ["vid1/source/part-000001"]
        pending = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket)
        assert [u for u in pending.get("Uploads", []) if u["Key"].endswith("part-000002")] == []
    finally:
        await storage.aclose()


@pytest.mark.s3
async def test_s3_refuses_wrong_credentials_and_missing_buckets_at_open(
    s3_server: S3Server, settings: Settings
) -> None:
    good = vault_config(s3_server.settings_for(settings, "x")).storage
    with pytest.raises(StorageError, match="cannot use the S3 bucket"):
        await open_storage(replace(good, s3_secret_access_key="wrong"))
    with pytest.raises(StorageError, match="does not exist"):
        await open_storage(replace(good, url="s3://no-such-bucket-here/x"))


# The local backend's own writes: run on that backend only (never skipped).
@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_local_upload_aborted_after_writes_leaves_nothing(
    vault_settings: Settings,
) -> None:
    storage = LocalStorage(vault_settings.data_dir / "objects")
    upload = storage.upload("owner1/source/part-000001")
    for _ in range(8):
        await upload.write(os.urandom(1024 * 1024))
    await upload.abort()
    assert files_under(storage.root) == []
    upload = storage.upload("owner1/source/part-000002")
    pieces = [os.urandom(300_000) for _ in range(5)]
    for piece in pieces:
        await upload.write(piece)
    assert await upload.commit() == 1_500_000
    assert await storage.read("owner1/source/part-000002") == b"".join(pieces)


def _open_under(root: Path) -> list[str]:
    """The files under `root` this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(root)):
                held.append(target)
    return held


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_large_local_upload_goes_to_disk_while_it_is_written(
    vault_settings: Settings,
) -> None:
    storage = LocalStorage(vault_settings.data_dir / "objects", sync_every=256 * 1024)
    small = storage.upload("owner1/hls/720p/000001.m4s")
    await small.write(os.urandom(200_000))
    assert small.background_syncs == 0  # a segment is only fsynced by its commit
    await small.commit()

    upload = storage.upload("owner1/source/part-000001")
    pieces = [os.urandom(100_000) for _ in range(40)]
    for piece in pieces:
        await upload.write(piece)
    assert upload.background_syncs >= 1
    assert await upload.commit() == 4_000_000
    assert await storage.read("owner1/source/part-000001") == b"".join(pieces)
    assert _open_under(storage.root) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_local_upload_writes_from_the_loop_until_a_write_is_slow(
    vault_settings: Settings,
) -> None:
    root = vault_settings.data_dir / "objects"
    pieces = [os.urandom(300_000) for _ in range(5)]

    async def store(storage: LocalStorage, name: str) -> tuple[int, int]:
        upload = storage.upload(f"owner1/source/{name}")
        for piece in pieces:
            await upload.write(piece)
        assert await upload.commit() == 1_500_000
        assert await storage.read(f"owner1/source/{name}") == b"".join(pieces)
        return upload.inline_writes, upload.thread_writes

    # A limit no write can stay under: the first write is on the loop, the rest go to a thread.
    assert await store(LocalStorage(root, inline_write_limit=0.0), "part-000001") == (1, 4)
    # The default: a write the kernel takes into its cache stays on the loop. (One can
    # still be slow on a loaded machine, so only the first is certain.)
    inline, threaded = await store(LocalStorage(root), "part-000002")
    assert inline >= 1 and inline + threaded == 5

    # Too large to hold the loop for: straight to a thread.
    big = LocalStorage(root).upload("owner1/source/part-000003")
    await big.write(os.urandom(INLINE_WRITE_MAX + 1))
    assert (big.inline_writes, big.thread_writes) == (0, 1)
    await big.abort()
    assert _open_under(root) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_local_uploads_written_at_once_each_take_a_thread(vault_settings: Settings) -> None:
    """With two or more at once the loop has no time to spare: each writes from a thread."""
    storage = LocalStorage(vault_settings.data_dir / "objects")
    first = storage.upload("owner1/source/part-000001")
    second = storage.upload("owner2/source/part-000001")
    await first.write(b"a" * 1000)  # alone so far: from the loop
    await second.write(b"b" * 1000)
    await first.write(b"c" * 1000)
    assert (first.inline_writes, first.thread_writes) == (1, 1)
    assert (second.inline_writes, second.thread_writes) == (0, 1)
    await first.commit()
    await second.write(b"d" * 1000)  # alone again
    assert (second.inline_writes, second.thread_writes) == (1, 1)
    await second.abort()
    assert await storage.read("owner1/source/part-000001") == b"a" * 1000 + b"c" * 1000


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_local_upload_waits_for_a_background_sync_the_disk_has_not_finished(
    vault_settings: Settings,
) -> None:
    """When the next sync is due before the last one is done, the disk is behind: the upload
    waits for it rather than pile up dirty pages the kernel would throttle on the loop."""
    storage = LocalStorage(vault_settings.data_dir / "objects", sync_every=64 * 1024)
    upload = storage.upload("owner1/source/part-000001")
    release = threading.Event()
    # Every sync thread busy: the upload's sync is queued behind them, as behind a slow disk.
    blockers = [_SYNCS.submit(release.wait) for _ in range(_SYNCS._max_workers)]
    try:
        first = os.urandom(100_000)
        await upload.write(first)  # starts a sync, which cannot run yet
        assert upload.background_syncs == 1
        second = anyio.Event()

        async def write_more() -> None:
            await upload.write(os.urandom(100_000))  # the next sync is due: wait for the last
            second.set()

        async with anyio.create_task_group() as group:
            group.start_soon(write_more)
            with anyio.move_on_after(0.5):
                await second.wait()
            assert not second.is_set()
            release.set()
        assert upload.background_syncs == 2
    finally:
        release.set()
        for blocker in blockers:
            blocker.result()
    assert await upload.commit() == 200_000


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_local_upload_aborted_while_its_background_sync_runs_leaves_nothing(
    vault_settings: Settings,
) -> None:
    storage = LocalStorage(vault_settings.data_dir / "objects", sync_every=64 * 1024)
    for attempt in range(20):
        upload = storage.upload(f"owner1/source/part-{attempt + 1:06d}")
        await upload.write(os.urandom(100_000))
        assert upload.background_syncs == 1
        await upload.abort()  # at once: the sync may still be running on the open file
        assert files_under(storage.root) == []
        assert _open_under(storage.root) == []
