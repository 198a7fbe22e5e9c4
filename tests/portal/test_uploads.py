"""The tus 1.0.0 server, through the real app (and a real server where sockets matter)."""

from __future__ import annotations

import base64
import hashlib
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from portal.db import jobs, uploads, videos
from tests.helpers import (
    TUS,
    add_user,
    bearer,
    count,
    create,
    create_account,
    patch,
    pipeline_settings,
    raw_patch_start,
)

# Plain text no film contains: if it is anywhere on disk, the upload was stored in the clear.
PATTERN = b"MEGAMOVIE-PLAINTEXT-CANARY-"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request, tmp_path):
    """Every tus test on SQLite and on PostgreSQL: the one-PATCH-at-a-time guarantee and the
    quota sums are the database's work."""
    marker = request.node.get_closest_marker("settings")
    base = pipeline_settings(tmp_path, quota_bytes=100_000, **(marker.kwargs if marker else {}))
    if request.param == "sqlite":
        return base
    return base.replace(database_url=request.getfixturevalue("sync_postgres_url"))


@pytest.fixture
def creator(settings):
    create_account(settings, "maker@example.org", "creator")
    return "maker@example.org"


def test_options_advertises_version_extensions_and_max_size(client, settings):
    response = client.options("/api/uploads")
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-extension"] == (
        "creation,creation-with-upload,termination,expiration,checksum,concatenation"
    )
    assert response.headers["tus-max-size"] == str(settings.max_upload_bytes)
    assert response.headers["tus-checksum-algorithm"] == "sha1,md5"


def test_an_upload_in_two_patches_queues_its_video(client, creator, settings):
    data = PATTERN * 100
    auth = bearer(client, creator)
    created = create(client, auth, len(data), filename="holiday.mp4", title="Holiday",
                     description="Sea and sand", tags="Beach, summer")  # fmt: skip
    assert created.status_code == 201, created.text
    assert created.headers["tus-resumable"] == "1.0.0"
    location = created.headers["location"]
    assert location.startswith("/api/uploads/")  # relative: never from the Host header
    expires = parsedate_to_datetime(created.headers["upload-expires"])
    assert expires.tzinfo is not None

    head = client.head(location, headers={**TUS, **auth})
    assert (head.status_code, head.headers["upload-offset"]) == (200, "0")
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"

    first = patch(client, location, auth, 0, data[:1000])
    assert (first.status_code, first.headers["upload-offset"]) == (204, "1000")
    last = patch(client, location, auth, 1000, data[1000:])
    assert (last.status_code, last.headers["upload-offset"]) == (204, str(len(data)))

    head = client.head(location, headers={**TUS, **auth})
    video_id = head.headers["video-id"]
    video = client.get(f"/api/videos/{video_id}", headers=auth).json()
    assert (video["status"], video["title"], video["description"]) == (
        "queued",
        "Holiday",
        "Sea and sand",
    )
    assert video["tags"] == ["beach", "summer"]
    assert count(client, jobs) == 1
    vault = client.app.state.services.vault
    stored = client.portal.call(vault.read, video_id, "source/part-000002")
    assert stored == data[1000:]
    # Encrypted as it arrived: the canary is nowhere in the data dir.
    leaks = [p for p in settings.data_dir.rglob("*") if p.is_file() and PATTERN in p.read_bytes()]
    assert leaks == []


def test_protocol_errors_have_their_tus_status_codes(client, creator):
    auth = bearer(client, creator)
    location = create(client, auth, 10).headers["location"]

    old = client.head(location, headers={"Tus-Resumable": "0.2.2", **auth})
    assert old.status_code == 412
    assert old.headers["tus-version"] == "1.0.0"
    assert old.headers["tus-resumable"] == "1.0.0"

    wrong_type = client.patch(location, content=b"12345", headers={
        **TUS, **auth, "Upload-Offset": "0", "Content-Type": "application/json"})  # fmt: skip
    assert wrong_type.status_code == 415

    assert patch(client, location, auth, 3, b"12345").status_code == 409
    too_long = patch(client, location, auth, 0, b"0123456789AB")
    assert too_long.status_code == 413
    assert too_long.headers["tus-resumable"] == "1.0.0"

    wrong = "sha1 " + base64.b64encode(b"x" * 20).decode()
    bad_sum = patch(client, location, auth, 0, b"12345", **{"Upload-Checksum": wrong})
    assert bad_sum.status_code == 460
    assert client.head(location, headers={**TUS, **auth}).headers["upload-offset"] == "0"
    good = base64.b64encode(hashlib.md5(b"12345").digest()).decode()  # noqa: S324
    ok = patch(client, location, auth, 0, b"12345", **{"Upload-Checksum": f"md5 {good}"})
    assert (ok.status_code, ok.headers["upload-offset"]) == (204, "5")
    unknown = patch(client, location, auth, 5, b"678", **{"Upload-Checksum": "crc32 AAAA"})
    assert unknown.status_code == 400


def test_only_creators_may_upload_and_nobody_sees_anothers_upload(client, creator):
    add_user(client, "viewer@example.org", "viewer")
    add_user(client, "rival@example.org", "creator")
    anonymous = create(client, {}, 10)
    assert anonymous.status_code == 401
    assert anonymous.headers["tus-resumable"] == "1.0.0"
    assert create(client, bearer(client, "viewer@example.org"), 10).status_code == 403

    location = create(client, bearer(client, creator), 10).headers["location"]
    rival = bearer(client, "rival@example.org")
    assert client.head(location, headers={**TUS, **rival}).status_code == 404
    assert patch(client, location, rival, 0, b"0123456789").status_code == 404
    assert client.delete(location, headers={**TUS, **rival}).status_code == 404
    assert client.head(location, headers={**TUS, **bearer(client, creator)}).status_code == 200


def test_an_upload_over_quota_is_refused_before_any_byte(client, settings, creator):
    auth = bearer(client, creator)
    too_big = create(client, auth, settings.quota_bytes + 1)
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "quota_exceeded"
    # Unfinished uploads reserve their declared length.
    assert create(client, auth, 60_000).status_code == 201
    second = create(client, auth, 60_000)
    assert second.status_code == 413
    assert "40,000" in second.json()["message"]
    assert count(client, videos) == 1
    assert create(client, auth, 40_000).status_code == 201


def test_termination_deletes_the_upload_its_video_and_its_key(client, creator):
    auth = bearer(client, creator)
    created = create(client, auth, 100)
    location, video_id = created.headers["location"], created.headers["video-id"]
    assert patch(client, location, auth, 0, b"x" * 50).status_code == 204
    vault = client.app.state.services.vault
    assert client.portal.call(vault.has_key, video_id)

    gone = client.delete(location, headers={**TUS, **auth})
    assert (gone.status_code, gone.headers["tus-resumable"]) == (204, "1.0.0")
    assert client.head(location, headers={**TUS, **auth}).status_code == 404
    assert not client.portal.call(vault.has_key, video_id)
    assert client.portal.call(vault.list, video_id) == []
    assert count(client, videos) == 0


@pytest.mark.settings(upload_expiry_seconds=1)
def test_an_expired_upload_is_gone_then_swept_away(client, creator):
    auth = bearer(client, creator)
    created = create(client, auth, 100)
    location, video_id = created.headers["location"], created.headers["video-id"]
    time.sleep(1.1)
    assert client.head(location, headers={**TUS, **auth}).status_code == 410
    assert patch(client, location, auth, 0, b"late").status_code == 410

    assert client.portal.call(client.app.state.services.uploads.sweep_expired) == 1
    assert client.head(location, headers={**TUS, **auth}).status_code == 404
    assert not client.portal.call(client.app.state.services.vault.has_key, video_id)
    assert count(client, uploads) == 0


def wait_for_offset(client, location, auth, expected: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        head = client.head(location, headers={**TUS, **auth})
        if head.headers.get("upload-offset") == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"offset never reached {expected}: {head.headers}")


def test_an_interrupted_upload_keeps_what_arrived_and_resumes(settings, creator, live_server):
    data = PATTERN * 2000  # 54 kB
    with httpx.Client(base_url=live_server.url) as client:
        auth = bearer(client, creator)
        location = create(client, auth, len(data)).headers["location"]
        path = httpx.URL(location).path

        sock = raw_patch_start(live_server, path, auth, 0, len(data), data[:20_000])
        time.sleep(0.3)
        sock.close()  # the connection drops mid-body
        wait_for_offset(client, location, auth, "20000")

        done = patch(client, location, auth, 20_000, data[20_000:])
        assert (done.status_code, done.headers["upload-offset"]) == (204, str(len(data)))
        video_id = client.head(location, headers={**TUS, **auth}).headers["video-id"]
        assert client.get(f"/api/videos/{video_id}", headers=auth).json()["status"] == "queued"


def test_two_patches_at_once_cannot_both_succeed(settings, creator, live_server):
    data = b"y" * 30_000
    with httpx.Client(base_url=live_server.url) as client:
        auth = bearer(client, creator)
        location = create(client, auth, len(data)).headers["location"]
        path = httpx.URL(location).path

        slow = raw_patch_start(live_server, path, auth, 0, len(data), data[:10_000])
        time.sleep(0.3)  # it holds the upload while its body trickles in
        racing = patch(client, location, auth, 0, data)
        assert racing.status_code == 409
        slow.sendall(data[10_000:])
        reply = slow.recv(4096).decode()
        slow.close()
        assert reply.startswith("HTTP/1.1 204")
        assert f"upload-offset: {len(data)}" in reply.lower()
