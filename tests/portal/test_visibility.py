"""One visibility rule, every entry point: a table of viewer states against video states.

Public films (ready, or processing with its first segments in) are seen by everyone and
listed; anything else is seen by its creator and admins only and is a 404 to everyone else;
a deleted film is a 404 to everybody. Every entry point must agree with that, and with each
other.
"""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from portal.db import videos
from tests.helpers import add_user, bearer, pipeline_settings, upload_and_wait

VIEWERS = ("anonymous", "viewer", "other_creator", "owner", "admin")
STATES = {
    "queued": {"status": "queued", "playable": False},
    "processing": {"status": "processing", "playable": False},
    "playable": {"status": "processing", "playable": True},
    "ready": {"status": "ready", "playable": True},
    "failed": {"status": "failed", "playable": False, "error": "It broke."},
    # Failed after it had become playable: jobs.py clears `playable`, but even a row that
    # still says playable must not make a failed film public.
    "failed_after_playable": {"status": "failed", "playable": True, "error": "It broke."},
}


@pytest.fixture
def settings(tmp_path):
    return pipeline_settings(tmp_path, workers=1)


@pytest.fixture
def world(client, clip):
    roles = {"viewer": "viewer", "other_creator": "creator", "owner": "creator",
             "admin": "admin"}  # fmt: skip
    for name, role in roles.items():
        add_user(client, f"{name}@example.org", role)
    auth = {name: bearer(client, f"{name}@example.org") for name in roles}
    auth["anonymous"] = {}
    video_id = upload_and_wait(client, auth["owner"], clip.read_bytes())
    return client, auth, video_id


def set_state(client: TestClient, video_id: str, values: dict[str, object]) -> None:
    async def change() -> None:
        async with client.app.state.services.engine.begin() as conn:
            await conn.execute(update(videos).where(videos.c.id == video_id).values(**values))

    client.portal.call(change)


def observe(client: TestClient, headers: dict[str, str], video_id: str) -> dict[str, object]:
    """What every entry point shows this viewer of this film (its title is "Harbour")."""
    found = client.get("/api/videos", params={"q": "harbour"}, headers=headers).json()
    listed = [v["id"] for v in client.get("/api/videos", headers=headers).json()["videos"]]
    # The watch page issues a grant itself (data-grant) and opens a stream; the API's grant
    # then renews that stream, as the player's renewals do, instead of opening another.
    watch = client.get(f"/watch/{video_id}", headers=headers)
    page_grant = re.search(r'data-grant="([^"]+)"', watch.text)
    params = {}
    if page_grant:
        params["stream"] = json.loads(unescape(page_grant.group(1)))["stream"]
    grant = client.get(f"/api/videos/{video_id}/playback", headers=headers, params=params)
    storyboard = None
    if grant.status_code == 200 and grant.json()["storyboard_url"]:
        storyboard = client.get(grant.json()["storyboard_url"]).status_code
    catalog_page = client.get("/", headers=headers).text
    return {
        "watch": watch.status_code,
        "api": client.get(f"/api/videos/{video_id}", headers=headers).status_code,
        "poster": client.get(f"/media/{video_id}/poster.jpg", headers=headers).status_code,
        "grant": grant.status_code,
        "storyboard": storyboard,
        "listed": video_id in listed,
        "searched": video_id in [v["id"] for v in found["videos"]],
        "catalog_page": f"/watch/{video_id}" in catalog_page,
    }


def test_every_entry_point_agrees_for_every_viewer_and_video_state(world):
    client, auth, video_id = world
    channel = None
    for state, values in STATES.items():
        set_state(client, video_id, {**values, "title": "Harbour"})
        public = state in ("playable", "ready")
        for viewer in VIEWERS:
            seen = observe(client, auth[viewer], video_id)
            visible = public or viewer in ("owner", "admin")
            expected = {
                "watch": 200 if visible else 404,
                "api": 200 if visible else 404,
                "poster": 200 if visible else 404,
                # Visible but without segments to play: a conflict that says why.
                "grant": (200 if public else 409) if visible else 404,
                "storyboard": 200 if public else None,
                # Listings show what is public, to everyone alike.
                "listed": public,
                "searched": public,
                "catalog_page": public,
            }
            assert seen == expected, (state, viewer)
        if channel is None:
            owner = client.get(f"/api/videos/{video_id}", headers=auth["owner"]).json()
            channel = f"/channel/{owner['creator']['id']}"
        assert (f"/watch/{video_id}" in client.get(channel).text) is public, state

    # Position writes follow the same rule: nobody else may write to a failed film.
    set_state(client, video_id, STATES["failed_after_playable"])
    position = f"/api/videos/{video_id}/position"
    assert client.put(position, headers=auth["viewer"], json={"position": 3}).status_code == 404
    assert client.put(position, headers=auth["owner"], json={"position": 1}).status_code == 204

    set_state(client, video_id, STATES["ready"])
    assert client.delete(f"/api/videos/{video_id}", headers=auth["owner"]).status_code == 204
    for viewer in VIEWERS:
        seen = observe(client, auth[viewer], video_id)
        assert seen == {"watch": 404, "api": 404, "poster": 404, "grant": 404,
                        "storyboard": None, "listed": False, "searched": False,
                        "catalog_page": False}, ("deleted", viewer)  # fmt: skip
