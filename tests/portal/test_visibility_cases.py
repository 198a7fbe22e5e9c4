"""The visibility cases the outside probe found, pinned at every entry point they touched:
the watch page, the playback grant, the streams and position writes."""

from __future__ import annotations

import pytest

from tests.helpers import add_ready_video, set_video


@pytest.fixture
def people(creator_client, viewer_client, admin_client):
    """Bearer headers of the film's creator, another viewer and an admin; and the creator."""
    auth = {"maker": creator_client.auth, "other": viewer_client.auth, "boss": admin_client.auth}
    return creator_client.user.id, auth


def position(client, video_id, auth) -> int:
    return client.put(f"/api/videos/{video_id}/position", json={"position": 5}, headers=auth)


def test_a_film_that_failed_after_becoming_playable_is_gone_for_everyone_else(client, people):
    maker, people = people
    video_id = add_ready_video(client, maker, status="processing", playable=True, ready_at=None)
    # While playable it was public, and a player got a grant.
    grant = client.get(f"/api/videos/{video_id}/playback")
    assert grant.status_code == 200
    stream = grant.json()["url"]
    assert client.get(stream).status_code == 200

    # Failing clears nothing by itself here: even with `playable` still set, failed is private.
    set_video(client, video_id, status="failed", error="The encoder gave up.")
    for auth in ({}, people["other"]):
        assert client.get(f"/watch/{video_id}", headers=auth).status_code == 404
        assert client.get(f"/api/videos/{video_id}", headers=auth).status_code == 404
        assert client.get(f"/api/videos/{video_id}/playback", headers=auth).status_code == 404
    assert position(client, video_id, people["other"]).status_code == 404
    # The grant given while it was playable no longer opens the stream.
    assert client.get(stream).status_code == 404

    # Its creator and admins still see it, with the reason, but cannot play it.
    for auth in (people["maker"], people["boss"]):
        assert client.get(f"/watch/{video_id}", headers=auth).status_code == 200
        refused = client.get(f"/api/videos/{video_id}/playback", headers=auth)
        assert refused.status_code == 409
        assert "The encoder gave up." in refused.json()["message"]
    assert position(client, video_id, people["maker"]).status_code == 204


@pytest.mark.parametrize(
    ("status", "playable", "public"),
    [
        ("processing", True, True),
        ("ready", True, True),
        ("processing", False, False),
        ("queued", False, False),
        ("uploading", False, False),
        ("failed", False, False),
    ],
)
def test_the_watch_page_and_the_grant_agree(client, people, status, playable, public):
    maker, people = people
    video_id = add_ready_video(client, maker, status=status, playable=playable)
    for auth in ({}, people["other"]):
        page = client.get(f"/watch/{video_id}", headers=auth).status_code
        grant = client.get(f"/api/videos/{video_id}/playback", headers=auth).status_code
        saved = position(client, video_id, auth).status_code if auth else None
        if public:
            assert (page, grant) == (200, 200)
            assert saved in (None, 204)
        else:
            assert (page, grant) == (404, 404)
            assert saved in (None, 404)
