"""A video as JSON, who may see and delete it, and the live event stream."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.helpers import TUS, bearer, create_account, pipeline_settings, set_video, upload_and_wait


@pytest.fixture
def settings(tmp_path):
    return pipeline_settings(tmp_path, workers=1)


@pytest.fixture
def accounts(settings):
    create_account(settings, "maker@example.org", "creator")
    create_account(settings, "viewer@example.org", "viewer")
    create_account(settings, "boss@example.org", "admin")


def test_a_ready_video_as_json_and_its_crypto_shredding_delete(client, settings, accounts, clip):
    maker = bearer(client, "maker@example.org")
    viewer = bearer(client, "viewer@example.org")
    video_id = upload_and_wait(client, maker, clip.read_bytes())

    body = client.get(f"/api/videos/{video_id}").json()  # public once ready
    assert body["id"] == video_id and body["status"] == "ready"
    assert body["creator"]["display_name"] == "maker"
    assert body["duration"] == pytest.approx(2.0, abs=0.1)
    assert body["renditions"] == [
        {
            "name": "180p",
            "height": 180,
            "width": 320,
            "bandwidth": body["renditions"][0]["bandwidth"],
        }
    ]
    assert body["progress"] == 1.0 and body["error"] is None and body["playable"]
    assert body["poster_url"] == f"/media/{video_id}/poster.jpg"
    assert body["created_at"].endswith("+00:00")

    refused = client.delete(f"/api/videos/{video_id}", headers=viewer)
    assert refused.status_code == 403
    assert client.delete(f"/api/videos/{video_id}").status_code == 401

    vault = client.app.state.services.vault
    assert client.portal.call(vault.list, video_id)
    assert client.delete(f"/api/videos/{video_id}", headers=maker).status_code == 204
    assert client.get(f"/api/videos/{video_id}").status_code == 404
    assert not client.portal.call(vault.has_key, video_id)
    assert client.portal.call(vault.list, video_id) == []
    leftovers = (settings.data_dir / "objects" / video_id).rglob("*")
    assert not any(path.is_file() for path in leftovers)


def test_an_unfinished_video_is_seen_only_by_its_creator_and_admins(client, accounts, clip):
    maker = bearer(client, "maker@example.org")
    video_id = upload_and_wait(client, maker, clip.read_bytes())
    set_video(client, video_id, status="failed", error="This is not a video or audio file.")

    assert client.get(f"/api/videos/{video_id}").status_code == 404
    viewer = bearer(client, "viewer@example.org")
    assert client.get(f"/api/videos/{video_id}", headers=viewer).status_code == 404
    assert client.delete(f"/api/videos/{video_id}", headers=viewer).status_code == 404
    mine = client.get(f"/api/videos/{video_id}", headers=maker).json()
    assert (mine["status"], mine["error"]) == ("failed", "This is not a video or audio file.")
    # The poster follows the film's visibility: its creator sees it, nobody else does.
    assert mine["poster_url"] == f"/media/{video_id}/poster.jpg"
    assert client.get(mine["poster_url"], headers=maker).status_code == 200
    assert client.get(mine["poster_url"], headers=viewer).status_code == 404
    assert client.get(mine["poster_url"]).status_code == 404

    boss = bearer(client, "boss@example.org")
    assert client.get(f"/api/videos/{video_id}", headers=boss).status_code == 200
    assert client.delete(f"/api/videos/{video_id}", headers=boss).status_code == 204


def test_the_event_stream_follows_a_video_from_upload_to_ready(
    settings, accounts, clip, live_server
):
    data = clip.read_bytes()
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        maker = bearer(client, "maker@example.org")
        assert (
            client.get(
                "/api/events/videos", headers=bearer(client, "viewer@example.org")
            ).status_code
            == 403
        )
        with client.stream("GET", "/api/events/videos", headers=maker) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            created = client.post(
                "/api/uploads", headers={**TUS, **maker, "Upload-Length": str(len(data))}
            )
            video_id = created.headers["video-id"]
            client.patch(created.headers["location"], content=data, headers={
                **TUS, **maker, "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream"})  # fmt: skip
            seen = []
            deadline = time.monotonic() + 60
            for line in events.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    assert event["id"] == video_id
                    seen.append(event)
                    if event["status"] in ("ready", "failed") or time.monotonic() > deadline:
                        break
    statuses = [e["status"] for e in seen]
    assert statuses[-1] == "ready"
    assert seen[-1] == {"id": video_id, "status": "ready", "progress": 1.0, "error": None,
                        "playable": True}  # fmt: skip
    assert statuses.index("ready") > 0  # it was seen before it was ready
