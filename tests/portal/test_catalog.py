"""The catalog: search, sorting, paging and the pages built on it, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

import portal.catalog
from portal.catalog import PAGE_SIZE, list_videos
from portal.db import users, utcnow, videos
from portal.routes.catalog import page_links
from portal.web import format_duration
from tests.helpers import add_ready_video, add_user, add_video, insert_user

pytestmark = pytest.mark.anyio


async def rename(engine: AsyncEngine, user_id: str, name: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == user_id).values(display_name=name))


async def titles(engine: AsyncEngine, **kwargs: Any) -> list[str]:
    return [item.title for item in (await list_videos(engine, **kwargs)).items]


async def test_search_finds_by_title_description_tag_and_creator(engine):
    ann = await insert_user(engine)
    await rename(engine, ann, "Ann Lee")
    bob = await insert_user(engine)
    await rename(engine, bob, "Bob Stone")
    await add_video(engine, ann, title="Big Buck Bunny", tags="animation comedy")
    await add_video(engine, bob, title="Sunset Over Tallinn", description="A slow harbour film")
    await add_video(engine, bob, title="Mountain Rain", tags="nature timelapse")

    assert await titles(engine, q="bunny") == ["Big Buck Bunny"]
    assert await titles(engine, q="BIG buck") == ["Big Buck Bunny"]  # every word, any case
    assert await titles(engine, q="harbour") == ["Sunset Over Tallinn"]
    assert await titles(engine, q="timelapse") == ["Mountain Rain"]
    assert await titles(engine, q="mount") == ["Mountain Rain"]  # word prefixes match
    assert sorted(await titles(engine, q="stone")) == ["Mountain Rain", "Sunset Over Tallinn"]
    assert await titles(engine, q="bunny rain") == []
    assert await titles(engine, q="zebra") == []


async def test_search_ignores_query_syntax_and_punctuation(engine):
    ann = await insert_user(engine)
    await add_video(engine, ann, title="Rock & Roll: the film")
    for hostile in ['"', "' OR 1=1 --", "rock*)", "NEAR(rock roll)", "roll:*", "!!!", "a_b"]:
        result = await list_videos(engine, q=hostile)  # never a syntax error
        assert result.total in (0, 1)
    assert await titles(engine, q="rock & roll!") == ["Rock & Roll: the film"]
    assert len(await titles(engine, q="   ")) == 1  # nothing to search for: everything


async def test_only_ready_videos_are_listed(engine):
    ann = await insert_user(engine)
    for status in ("uploading", "queued", "processing", "failed"):
        await add_video(engine, ann, title=f"Film {status}", status=status, ready_at=None)
    await add_video(engine, ann, title="Film ready")
    assert await titles(engine) == ["Film ready"]
    assert await titles(engine, q="film") == ["Film ready"]


async def test_sort_by_newest_and_by_most_watched(engine):
    ann = await insert_user(engine)
    now = utcnow()
    await add_video(engine, ann, title="Old hit", views=900, ready_at=now - timedelta(days=9))
    await add_video(engine, ann, title="New", views=3, ready_at=now)
    await add_video(engine, ann, title="Middle", views=40, ready_at=now - timedelta(days=1))
    assert await titles(engine, sort="newest") == ["New", "Middle", "Old hit"]
    assert await titles(engine, sort="popular") == ["Old hit", "Middle", "New"]
    assert await titles(engine, sort="bogus") == ["New", "Middle", "Old hit"]


async def test_pages_hold_24_films_each(engine):
    ann = await insert_user(engine)
    now = utcnow()
    for n in range(PAGE_SIZE * 2 + 5):
        await add_video(engine, ann, title=f"Film {n:02d}", ready_at=now - timedelta(minutes=n))
    first = await list_videos(engine, page=1)
    third = await list_videos(engine, page=3)
    beyond = await list_videos(engine, page=99)
    assert (first.total, first.pages, len(first.items)) == (53, 3, 24)
    assert first.items[0].title == "Film 00"
    assert [i.title for i in third.items] == [f"Film {n}" for n in range(48, 53)]
    assert beyond.page == 3  # past the end shows the last page
    assert page_links(first) == [1, 2, 3]


async def test_search_follows_edits_and_deletes(engine):
    ann = await insert_user(engine)
    video_id = await add_video(engine, ann, title="Working title")
    async with engine.begin() as conn:
        await conn.execute(
            update(videos).where(videos.c.id == video_id).values(title="Final cut", tags="drama")
        )
    assert await titles(engine, q="working") == []
    assert await titles(engine, q="final drama") == ["Final cut"]
    await rename(engine, ann, "Zora Neale")
    assert await titles(engine, q="zora") == ["Final cut"]
    async with engine.begin() as conn:
        await conn.execute(videos.delete().where(videos.c.id == video_id))
    assert await titles(engine, q="final") == []


async def test_channel_lists_one_creators_films(engine):
    ann = await insert_user(engine)
    bob = await insert_user(engine)
    await add_video(engine, ann, title="Ann's film")
    await add_video(engine, bob, title="Bob's film")
    assert await titles(engine, creator_id=ann) == ["Ann's film"]


def test_duration_is_shown_as_minutes_and_seconds():
    assert format_duration(0) == "0:00"
    assert format_duration(7.9) == "0:07"
    assert format_duration(125) == "2:05"
    assert format_duration(3600 + 61) == "1:01:01"
    assert format_duration(None) == ""


def test_catalog_page_shows_posters_durations_creators_and_placeholders(client):
    creator = add_user(client, "ann@example.org", role="creator", name="Ann Lee")
    with_poster = add_ready_video(
        client, creator.id, title="Harbour Lights", duration=754.2, has_poster=True
    )
    add_ready_video(client, creator.id, title="No Poster Yet", duration=5.0)
    add_ready_video(client, creator.id, title="Still processing", status="processing")
    page = client.get("/")
    search = client.get("/", params={"q": "harbour"})
    api = client.get("/api/videos", params={"q": "harbour"})
    channel = client.get(f"/channel/{creator.id}")
    missing = client.get("/channel/nobody")
    assert page.status_code == 200
    assert "Harbour Lights" in page.text and "No Poster Yet" in page.text
    assert "Still processing" not in page.text
    assert f'src="/media/{with_poster}/poster.jpg"' in page.text
    assert 'class="placeholder"' in page.text
    assert "12:34" in page.text and "0:05" in page.text
    assert f'href="/channel/{creator.id}">Ann Lee</a>' in page.text
    assert "No Poster Yet" not in search.text and "Harbour Lights" in search.text
    body = api.json()
    assert [v["title"] for v in body["videos"]] == ["Harbour Lights"]
    assert body["videos"][0]["creator"] == {"id": creator.id, "name": "Ann Lee"}
    assert body["videos"][0]["poster_url"] == f"/media/{with_poster}/poster.jpg"
    assert (body["page"], body["pages"], body["total"], body["sort"]) == (1, 1, 1, "relevance")
    assert (body["total_capped"], body["next"]) == (False, None)
    assert "Ann Lee" in channel.text and "Harbour Lights" in channel.text
    assert missing.status_code == 404


def test_catalog_page_links_to_other_pages(client):
    creator = add_user(client, "ann@example.org", role="creator")
    for n in range(PAGE_SIZE + 1):
        add_ready_video(client, creator.id, title=f"Film {n}")
    first = client.get("/", params={"sort": "popular"})
    second = client.get("/", params={"sort": "popular", "page": "2"})
    junk = client.get("/", params={"page": "abc"})
    assert 'href="/?sort=popular&amp;page=2"' in first.text
    assert 'rel="prev"' in second.text
    assert junk.status_code == 200


async def test_a_search_ranks_title_words_first_and_sorts_on_request(engine):
    ann = await insert_user(engine)
    now = utcnow()
    await add_video(engine, ann, title="Harbour", views=1, ready_at=now - timedelta(days=3))
    await add_video(
        engine, ann, title="Night ferry", description="out of the harbour", views=50, ready_at=now
    )
    await add_video(
        engine, ann, title="Docks", tags="harbour", views=9, ready_at=now - timedelta(days=1)
    )
    assert await titles(engine, q="harbour") == ["Harbour", "Docks", "Night ferry"]
    assert (await list_videos(engine, q="harbour")).sort == "relevance"
    assert await titles(engine, q="harbour", sort="newest") == ["Night ferry", "Docks", "Harbour"]
    assert await titles(engine, q="harbour", sort="popular") == ["Night ferry", "Docks", "Harbour"]
    # Relevance needs something to be relevant to.
    assert (await list_videos(engine, sort="relevance")).sort == "newest"


async def test_search_words_may_be_spread_over_the_text_and_the_creators_name(engine):
    ann = await insert_user(engine)
    await rename(engine, ann, "Ann Lee")
    await add_video(engine, ann, title="Big Buck Bunny", tags="animation")
    assert await titles(engine, q="bunny lee") == ["Big Buck Bunny"]
    assert await titles(engine, q="animation ann") == ["Big Buck Bunny"]
    assert await titles(engine, q="bunny bob") == []


async def test_playable_films_still_processing_are_listed_and_searched(engine):
    ann = await insert_user(engine)
    await add_video(engine, ann, title="Early bird", status="processing", playable=True)
    await add_video(engine, ann, title="Early draft", status="processing", ready_at=None)
    await add_video(engine, ann, title="Early failure", status="failed")
    assert await titles(engine) == ["Early bird"]
    assert await titles(engine, q="early") == ["Early bird"]
    assert await titles(engine, sort="popular") == ["Early bird"]


@pytest.mark.parametrize("sort", ["newest", "popular"])
async def test_next_cursors_walk_every_film_once_in_order(engine, sort, monkeypatch):
    monkeypatch.setattr(portal.catalog, "COUNT_CAP", 7)
    ann = await insert_user(engine)
    now = utcnow()
    for n in range(23):
        # Ties in the sort keys too: the id breaks them, the cursor carries it.
        await add_video(
            engine, ann, title=f"Film {n:02d}", views=n % 4, ready_at=now - timedelta(hours=n // 2)
        )
    everything = await titles(engine, sort=sort, page_size=100)
    seen: list[str] = []
    result = await list_videos(engine, sort=sort, page_size=5)
    assert (result.total, result.total_capped, result.total_label) == (7, True, "7+")
    pages = [result.page]
    while True:
        seen += [item.title for item in result.items]
        if result.next_cursor is None:
            break
        result = await list_videos(engine, sort=sort, page_size=5, after=result.next_cursor)
        pages.append(result.page)
    assert seen == everything and len(seen) == 23
    assert pages == [1, 2, 3, 4, 5]
    # Numbered pages agree with the cursor's pages.
    third = await list_videos(engine, sort=sort, page=3, page_size=5)
    assert [item.title for item in third.items] == everything[10:15]


async def test_bad_cursors_start_from_the_first_page(engine):
    ann = await insert_user(engine)
    await add_video(engine, ann, title="Only film")
    newest = await list_videos(engine, page_size=1)
    for bad in ["", "x", "!!!", "e30", newest.next_cursor or "bm9uZQ"]:
        result = await list_videos(engine, after=bad, page_size=1)
        assert [item.title for item in result.items] == ["Only film"]
    # A cursor of one sort means nothing to another.
    await add_video(engine, ann, title="Second film")
    cursor = (await list_videos(engine, sort="newest", page_size=1)).next_cursor
    assert cursor is not None
    result = await list_videos(engine, sort="popular", page_size=1, after=cursor)
    assert result.page == 1


async def test_a_search_ranks_only_its_newest_matches_and_says_there_are_more(engine, monkeypatch):
    monkeypatch.setattr(portal.catalog, "SEARCH_CANDIDATES", 4)
    ann = await insert_user(engine)
    now = utcnow()
    for n in reversed(range(6)):  # published in order, "Comet 0" last
        await add_video(engine, ann, title=f"Comet {n}", ready_at=now - timedelta(hours=n))
    result = await list_videos(engine, q="comet", sort="newest")
    assert [item.title for item in result.items] == [f"Comet {n}" for n in range(4)]
    assert (result.total, result.total_capped, result.total_label) == (4, True, "4+")
    few = await list_videos(engine, q="comet 5")
    assert ([item.title for item in few.items], few.total_capped) == (["Comet 5"], False)


def test_catalog_page_links_the_next_page_by_cursor(client):
    creator = add_user(client, "ann@example.org", role="creator")
    for n in range(PAGE_SIZE + 1):
        add_ready_video(client, creator.id, title=f"Film {n}")
    first = client.get("/")
    api = client.get("/api/videos").json()
    second = client.get("/api/videos", params={"after": api["next"]}).json()
    assert 'rel="next" href="/?sort=newest&amp;after=' in first.text
    assert len(api["videos"]) == PAGE_SIZE and len(second["videos"]) == 1
    assert (second["page"], second["next"]) == (2, None)


async def test_a_search_finds_rare_words_outside_the_newest_films(engine, monkeypatch):
    # PostgreSQL looks among the newest films first (SEARCH_WINDOW), then everywhere.
    monkeypatch.setattr(portal.catalog, "SEARCH_WINDOW", 3)
    monkeypatch.setattr(portal.catalog, "SEARCH_CANDIDATES", 2)
    ann = await insert_user(engine)
    now = utcnow()
    await add_video(engine, ann, title="Old comet", ready_at=now - timedelta(days=30))
    for n in reversed(range(5)):  # published in order, "Planet 0" last
        await add_video(engine, ann, title=f"Planet {n}", ready_at=now - timedelta(hours=n))
    assert await titles(engine, q="comet") == ["Old comet"]
    await add_video(engine, ann, title="Comet again", ready_at=now - timedelta(days=20))
    result = await list_videos(engine, q="comet", sort="newest")
    assert [i.title for i in result.items] == ["Comet again", "Old comet"]
    assert result.total_capped  # as many as the candidates: there may be more
    assert await titles(engine, q="planet", sort="newest") == ["Planet 0", "Planet 1"]
