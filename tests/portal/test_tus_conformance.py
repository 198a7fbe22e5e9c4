"""tus 1.0.0 conformance beyond the basics: HEAD answers Upload-Metadata, X-HTTP-Method-Override,
creation-with-upload and concatenation; checked with the real clients (tus-js-client under
Node, tuspy) against a live portal, and protocol details with the test client."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from tusclient import client as tus_client

from portal.db import uploads, videos
from tests.helpers import TUS, bearer, count, create, create_account, meta, patch, pipeline_settings

NODE_MODULES = Path("/work/main/node_modules")
ROOT = Path(__file__).resolve().parents[2]
OCTETS = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request, tmp_path):
    marker = request.node.get_closest_marker("settings")
    base = pipeline_settings(
        tmp_path, **{"quota_bytes": 1_000_000, **(marker.kwargs if marker else {})}
    )
    if request.param == "sqlite":
        return base
    return base.replace(database_url=request.getfixturevalue("sync_postgres_url"))


@pytest.fixture
def creator(settings):
    create_account(settings, "maker@example.org", "creator")
    return "maker@example.org"


@pytest.fixture
def client(client, creator):
    """The shared client, once the creator's account exists."""
    return client


def source_of(client, video_id: str) -> bytes:
    """The film's stored source, decrypted: its parts in order."""
    vault = client.app.state.services.vault
    parts = sorted(client.portal.call(vault.list, video_id, "source/"))
    return b"".join(client.portal.call(vault.read, video_id, part) for part in parts)


def films(client) -> list[tuple[str, str]]:
    async def query():
        async with client.app.state.services.engine.connect() as conn:
            return (await conn.execute(select(videos.c.title, videos.c.status))).all()

    return [tuple(row) for row in client.portal.call(query)]


# -- HEAD and metadata ----------------------------------------------------------------------


def test_head_answers_the_upload_metadata_it_was_given(client, creator):
    auth = bearer(client, creator)
    sent = meta(filename="Reise nach Köln.mp4", title="Reise", tags="köln rhein")
    created = client.post(
        "/api/uploads",
        headers={**TUS, **auth, "Upload-Length": "4", "Upload-Metadata": sent},
    )
    head = client.head(created.headers["location"], headers={**TUS, **auth})
    assert head.headers["upload-metadata"] == sent
    assert "upload-concat" not in head.headers


# -- X-HTTP-Method-Override -----------------------------------------------------------------


def test_a_post_with_x_http_method_override_is_the_method_it_names(client, creator):
    auth = bearer(client, creator)
    location = create(client, auth, 10).headers["location"]
    as_patch = client.post(
        location,
        content=b"01234",
        headers={**TUS, **auth, **OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert (as_patch.status_code, as_patch.headers["upload-offset"]) == (204, "5")
    plain = client.post(location, content=b"56789", headers={**TUS, **auth, **OCTETS})
    assert (plain.status_code, plain.json()["field"]) == (400, "X-HTTP-Method-Override")
    unknown = client.post(location, headers={**TUS, **auth, "X-HTTP-Method-Override": "GET"})
    assert unknown.status_code == 400
    as_delete = client.post(location, headers={**TUS, **auth, "X-HTTP-Method-Override": "delete"})
    assert as_delete.status_code == 204
    assert client.head(location, headers={**TUS, **auth}).status_code == 404


# -- creation-with-upload -------------------------------------------------------------------


def test_creation_with_upload_stores_the_post_body_as_the_first_chunk(client, creator):
    auth = bearer(client, creator)
    data = os.urandom(3000)
    created = client.post(
        "/api/uploads",
        content=data[:1000],
        headers={**TUS, **auth, **OCTETS, "Upload-Length": str(len(data))},
    )
    assert (created.status_code, created.headers["upload-offset"]) == (201, "1000")
    location, video_id = created.headers["location"], created.headers["video-id"]
    assert patch(client, location, auth, 1000, data[1000:]).status_code == 204
    assert source_of(client, video_id) == data


def test_creation_with_the_whole_file_queues_the_film_at_once(client, creator):
    auth = bearer(client, creator)
    digest = base64.b64encode(hashlib.sha1(b"whole film").digest()).decode()  # noqa: S324
    created = client.post(
        "/api/uploads",
        content=b"whole film",
        headers={
            **TUS,
            **auth,
            **OCTETS,
            "Upload-Length": "10",
            "Upload-Checksum": f"sha1 {digest}",
        },
    )
    assert (created.status_code, created.headers["upload-offset"]) == (201, "10")
    assert films(client) == [("Untitled", "queued")]


def test_a_refused_first_chunk_leaves_no_upload_behind(client, creator):
    auth = bearer(client, creator)
    wrong = base64.b64encode(b"x" * 20).decode()
    refused = client.post(
        "/api/uploads",
        content=b"0123456789",
        headers={
            **TUS,
            **auth,
            **OCTETS,
            "Upload-Length": "20",
            "Upload-Checksum": f"sha1 {wrong}",
        },
    )
    assert refused.status_code == 460
    too_long = client.post(
        "/api/uploads",
        content=b"0123456789",
        headers={**TUS, **auth, **OCTETS, "Upload-Length": "5"},
    )
    assert too_long.status_code == 413
    not_octets = client.post(
        "/api/uploads", content=b"{}", headers={**TUS, **auth, "Upload-Length": "5",
                                                "Content-Type": "application/json"},
    )  # fmt: skip
    assert not_octets.status_code == 415
    assert count(client, uploads) == 0
    assert films(client) == []


# -- concatenation --------------------------------------------------------------------------


def test_partial_uploads_concatenate_into_one_film_in_order(client, creator):
    auth = bearer(client, creator)
    pieces = [os.urandom(1000), os.urandom(1), os.urandom(2500)]
    locations = []
    for piece in pieces:
        created = client.post(
            "/api/uploads",
            headers={**TUS, **auth, "Upload-Length": str(len(piece)), "Upload-Concat": "partial"},
        )
        assert created.status_code == 201
        assert created.headers["upload-concat"] == "partial"
        assert "video-id" not in created.headers  # a partial upload is not a film
        assert patch(client, created.headers["location"], auth, 0, piece).status_code == 204
        locations.append(created.headers["location"])
    assert films(client) == []
    # Absolute or relative URLs, as clients send them.
    named = [f"http://testserver{locations[0]}", *locations[1:]]
    final = client.post(
        "/api/uploads",
        headers={**TUS, **auth, "Upload-Concat": "final;" + " ".join(named),
                 "Upload-Metadata": meta(filename="holiday.mp4", title="Holiday")},
    )  # fmt: skip
    assert final.status_code == 201, final.text
    assert final.headers["upload-offset"] == final.headers["upload-length"] == "3501"
    assert films(client) == [("Holiday", "queued")]
    assert source_of(client, final.headers["video-id"]) == b"".join(pieces)

    head = client.head(final.headers["location"], headers={**TUS, **auth})
    assert head.headers["upload-concat"] == "final;" + " ".join(locations)
    # tus: a final upload takes no PATCH.
    assert patch(client, final.headers["location"], auth, 3501, b"x").status_code == 403
    # The partials are gone, their keys with them (crypto-shredded).
    vault = client.app.state.services.vault
    for location in locations:
        assert client.head(location, headers={**TUS, **auth}).status_code == 404
        assert not client.portal.call(vault.has_key, location.rsplit("/", 1)[1])


def test_a_final_upload_needs_finished_partials_of_ones_own(client, creator, settings):
    create_account(settings, "rival@example.org", "creator")
    auth, rival = bearer(client, creator), bearer(client, "rival@example.org")

    def partial(headers, data: bytes, sent: bytes) -> str:
        created = client.post(
            "/api/uploads",
            headers={**TUS, **headers, "Upload-Length": str(len(data)), "Upload-Concat": "partial"},
        )
        if sent:
            patch(client, created.headers["location"], headers, 0, sent)
        return created.headers["location"]

    def final(headers, *locations: str, **extra: str):
        return client.post(
            "/api/uploads",
            headers={**TUS, **headers, "Upload-Concat": "final;" + " ".join(locations), **extra},
        )

    done = partial(auth, b"abc", b"abc")
    unfinished = partial(auth, b"abcdef", b"abc")
    theirs = partial(rival, b"xyz", b"xyz")
    plain = create(client, auth, 3).headers["location"]
    before = films(client)  # the plain upload's film, still uploading
    assert final(auth, done, unfinished).status_code == 422
    assert final(auth, done, theirs).status_code == 404
    assert final(auth, done, plain).status_code == 422
    assert final(auth, done, done).status_code == 422
    assert final(auth, done, "/elsewhere/x").status_code == 400
    assert final(auth, done, **{"Upload-Length": "3"}).status_code == 400
    assert final(auth).status_code == 422
    assert films(client) == before
    assert final(auth, done).status_code == 201
    assert final(auth, done).status_code == 404  # used up


@pytest.mark.settings(quota_bytes=100, max_open_uploads=2)
def test_partial_uploads_count_towards_quota_and_the_open_uploads_cap(client):
    auth = bearer(client, "maker@example.org")
    first = client.post(
        "/api/uploads",
        headers={**TUS, **auth, "Upload-Length": "60", "Upload-Concat": "partial"},
    )
    patch(client, first.headers["location"], auth, 0, b"x" * 60)  # finished, still held
    too_big = client.post(
        "/api/uploads",
        headers={**TUS, **auth, "Upload-Length": "60", "Upload-Concat": "partial"},
    )
    assert too_big.status_code == 413
    second = create(client, auth, 10)
    assert second.status_code == 201
    assert create(client, auth, 10).status_code == 429


# -- real clients ---------------------------------------------------------------------------

TUS_JS = """
const fs = require("fs");
const tus = require(process.env.TUS_JS);
const options = JSON.parse(process.env.OPTIONS);
const data = fs.readFileSync(process.env.FILE);
const upload = new tus.Upload(data, {
  endpoint: process.env.ENDPOINT,
  headers: { Authorization: process.env.AUTH },
  metadata: { filename: "parallel.mp4", title: "Parallel" },
  retryDelays: null,
  ...options,
  onError: (error) => { console.error(String(error)); process.exit(1); },
  onSuccess: () => { console.log(upload.url); },
});
upload.start();
"""


@pytest.mark.parametrize(
    "options",
    [
        {"parallelUploads": 3},
        {"uploadDataDuringCreation": True, "chunkSize": 7000},
        {"overridePatchMethod": True, "chunkSize": 9000},
        {"parallelUploads": 2, "uploadDataDuringCreation": True},
    ],
    ids=["parallel", "data-during-creation", "method-override", "parallel-with-data"],
)
def test_tus_js_client_makes_one_film_of_its_file(
    settings, creator, live_server, app, tmp_path, options
):
    data = os.urandom(25_000)
    path = tmp_path / "film.bin"
    path.write_bytes(data)
    with httpx.Client(base_url=live_server.url) as client:
        auth = bearer(client, creator)
        run = subprocess.run(
            ["node", "-e", TUS_JS],
            env={
                **os.environ,
                "TUS_JS": str(NODE_MODULES / "tus-js-client"),
                "OPTIONS": json.dumps(options),
                "FILE": str(path),
                "ENDPOINT": f"{live_server.url}/api/uploads",
                "AUTH": auth["Authorization"],
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        head = client.head(run.stdout.strip(), headers={**TUS, **auth})
        video_id = head.headers["video-id"]
        assert client.get(f"/api/videos/{video_id}", headers=auth).json()["title"] == "Parallel"

    with TestClient(app) as local:
        assert films(local) == [("Parallel", "queued")]
        assert source_of(local, video_id) == data
        assert count(local, uploads) == 1  # the final upload; its partials are gone


def test_tuspy_uploads_in_chunks_with_checksums(settings, creator, live_server, tmp_path):
    data = os.urandom(20_000)
    path = tmp_path / "film.bin"
    path.write_bytes(data)
    with httpx.Client(base_url=live_server.url) as client:
        auth = bearer(client, creator)
    tus = tus_client.TusClient(f"{live_server.url}/api/uploads", headers=auth)
    with path.open("rb") as stream:
        uploader = tus.uploader(
            file_stream=stream,
            chunk_size=6000,
            metadata={"filename": "tuspy.mp4", "title": "From tuspy"},
            upload_checksum=True,
        )
        uploader.upload()
    with httpx.Client(base_url=live_server.url) as client:
        head = client.head(uploader.url, headers={**TUS, **auth})
        assert head.headers["upload-offset"] == str(len(data))
        assert head.headers["upload-metadata"] == meta(filename="tuspy.mp4", title="From tuspy")
