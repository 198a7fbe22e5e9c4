"""A view counts at most once per viewer, per video, per day, decided by the server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.db import utcnow, videos, views
from portal.videos import Viewer
from portal.views import count_view
from tests.helpers import (
    add_ready_video,
    add_user,
    insert_user,
    insert_video,
    log_in,
)


async def view_count(engine, video_id: str) -> int:
    async with engine.connect() as conn:
        return (
            await conn.execute(select(videos.c.views).where(videos.c.id == video_id))
        ).scalar_one()


@pytest.mark.anyio
async def test_a_view_counts_once_a_day_per_viewer_on_both_databases(engine):
    video_id = await insert_video(engine, await insert_user(engine), status="ready")
    start = utcnow()

    assert await count_view(engine, "u:ann", video_id, now=start) is True
    # A renewed grant, a reload: the same viewer within the day.
    assert await count_view(engine, "u:ann", video_id, now=start + timedelta(minutes=50)) is False
    assert await count_view(engine, "u:ann", video_id, now=start + timedelta(hours=23)) is False
    assert await view_count(engine, video_id) == 1

    assert await count_view(engine, "u:bob", video_id, now=start + timedelta(minutes=1)) is True
    assert await view_count(engine, video_id) == 2

    # A day after the last *counted* view, not after the last grant, it counts again.
    assert await count_view(engine, "u:ann", video_id, now=start + timedelta(hours=24)) is True
    assert await count_view(engine, "u:ann", video_id, now=start + timedelta(hours=25)) is False
    assert await view_count(engine, video_id) == 3


@pytest.mark.anyio
async def test_a_viewers_views_of_two_videos_count_apart(engine):
    creator = await insert_user(engine)
    first = await insert_video(engine, creator, status="ready")
    second = await insert_video(engine, creator, status="ready")
    assert await count_view(engine, "u:ann", first) is True
    assert await count_view(engine, "u:ann", second) is True
    assert (await view_count(engine, first), await view_count(engine, second)) == (1, 1)


def test_anonymous_viewers_are_told_apart_by_a_keyed_hash_of_their_address():
    key, other_key = b"k" * 32, b"o" * 32
    home = Viewer.anonymous(key, "203.0.113.7").key

    assert home == Viewer.anonymous(key, "203.0.113.7").key
    assert home != Viewer.anonymous(key, "203.0.113.8").key
    assert "203.0.113" not in home and home.startswith("a:")
    # Keyed with the portal's secret: another portal's key for the same address differs, so
    # nobody without the key can map the stored value back to an address.
    assert home != Viewer.anonymous(other_key, "203.0.113.7").key


def test_renewing_the_grant_or_reloading_counts_one_view(client):
    creator = add_user(client, "maker@example.org", role="creator")
    add_user(client, "fan@example.org")
    video_id = add_ready_video(client, creator.id)
    url = f"/api/videos/{video_id}/playback"

    for _ in range(3):  # the player renewing before expiry, or the page reloaded
        assert client.get(url).status_code == 200
    anonymous_views = client.get(f"/api/videos/{video_id}").json()["views"]

    log_in(client, "fan@example.org")
    for _ in range(2):
        assert client.get(url).status_code == 200
    after_login = client.get(f"/api/videos/{video_id}").json()["views"]

    async def rows() -> list[str]:
        async with client.app.state.services.engine.connect() as conn:
            return list((await conn.execute(select(views.c.viewer_key))).scalars())

    keys = client.portal.call(rows)
    assert anonymous_views == 1
    assert after_login == 2  # another viewer counts
    assert sorted(k[:2] for k in keys) == ["a:", "u:"]
    assert not any("testclient" in k for k in keys)  # the client address is never stored
