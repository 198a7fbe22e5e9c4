"""The watch, upload and dashboard pages, and saving the resume position."""

from __future__ import annotations

import json
import re
from html import unescape

from portal.app import STATIC_DIR
from tests.helpers import add_ready_video, add_user, csrf_from, log_in


def test_watch_page_configures_the_player_without_inline_script(client):
    creator = add_user(client, "c@example.org", role="creator", name="Cleo")
    video_id = add_ready_video(
        client, creator.id, title="Night Train", tags="travel rail", has_poster=True
    )
    page = client.get(f"/watch/{video_id}")
    hls = client.get("/static/vendor/hls.light.min.js")
    player = client.get("/static/js/player.js")
    assert page.status_code == 200
    assert "<h1>Night Train</h1>" in page.text
    assert f'data-playback-url="/api/videos/{video_id}/playback"' in page.text
    assert f'data-position-url="/api/videos/{video_id}/position"' in page.text
    assert f'poster="/media/{video_id}/poster.jpg"' in page.text
    assert 'data-logged-in="false"' in page.text
    assert '<script src="/static/vendor/hls.light.min.js" defer></script>' in page.text
    assert 'href="/?q=travel"' in page.text
    assert hls.status_code == player.status_code == 200
    assert "Hls.isSupported()" in player.text


def grant_of(page_html: str) -> dict | None:
    found = re.search(r'data-grant="([^"]*)"', page_html)
    assert found, "the player has a data-grant attribute"
    return json.loads(unescape(found.group(1))) if found.group(1) else None


def test_watch_page_hands_the_player_a_grant_issued_while_it_rendered(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id, title="Quick")
    page = client.get(f"/watch/{video_id}")
    grant = grant_of(page.text)
    assert grant is not None
    master = client.get(grant["url"])
    again = grant_of(client.get(f"/watch/{video_id}").text)
    # A browser's speculative prefetch, and a HEAD, get no grant: no view, no stream.
    prefetched = client.get(f"/watch/{video_id}", headers={"Sec-Purpose": "prefetch"})
    assert client.head(f"/watch/{video_id}").status_code == 200
    info = client.get(f"/api/videos/{video_id}").json()
    # A film its creator sees before it can play: the player asks the API (which says why).
    waiting = add_ready_video(
        client, creator.id, status="processing", ready_at=None, playable=False
    )
    log_in(client, "c@example.org")
    unplayable = client.get(f"/watch/{waiting}")
    assert page.headers["cache-control"] == "no-store"
    assert grant["url"] == f"/stream/{grant['url'].split('/')[2]}/{video_id}/master.m3u8"
    assert grant["stream"] and grant["renew_seconds"] > 0 and grant["expires_at"]
    assert grant["licence"]["kind"] == "full" and grant["licence"]["source"] == "free"
    assert master.status_code == 200
    preload = f'<link rel="preload" href="{grant["url"]}" as="fetch" crossorigin="anonymous">'
    assert preload in page.text
    assert 'rel="preload" href="/static/vendor/hls.light.min.js" as="script"' in page.text
    # A reload renews the stream the first page opened (a cookie scoped to the film's page),
    # and the viewer's view counted once.
    assert again is not None and again["stream"] == grant["stream"]
    assert info["views"] == 1, info
    assert grant_of(prefetched.text) is None
    assert 'as="fetch"' not in prefetched.text
    assert unplayable.status_code == 200 and grant_of(unplayable.text) is None


def test_reloading_the_watch_page_never_uses_up_the_viewers_screens(client, viewer_client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id, title="Reloaded")
    streams = {grant_of(viewer_client.get(f"/watch/{video_id}").text)["stream"]
               for _ in range(4)}  # fmt: skip
    assert len(streams) == 1
    # Another browser (no cookie) is another screen; a third one is refused by the API.
    client.cookies.clear()
    assert grant_of(viewer_client.get(f"/watch/{video_id}").text) is not None
    client.cookies.clear()
    assert grant_of(viewer_client.get(f"/watch/{video_id}").text) is None
    third = viewer_client.get(f"/api/videos/{video_id}/playback")
    assert third.status_code == 429 and third.json()["error"] == "too_many_streams"


def test_start_bandwidth_comes_from_the_cookie_within_bounds(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id)
    seen = {}
    for value in ("2500000", "12", "99999999999999", "-5", "lots"):
        client.cookies.set("mm_bw", value)
        page = client.get(f"/watch/{video_id}").text
        seen[value] = re.search(r'data-bandwidth="(\d+)"', page).group(1)  # type: ignore[union-attr]
    assert seen == {
        "2500000": "2500000",
        "12": "100000",
        "99999999999999": "1000000000",
        "-5": "5000000",
        "lots": "5000000",
    }


def test_unfinished_films_are_hidden_from_everyone_but_their_creator_and_admins(
    client, viewer_client, creator_client, admin_client
):
    video_id = add_ready_video(client, creator_client.user.id, status="processing", ready_at=None)
    assert client.get(f"/watch/{video_id}").status_code == 404
    assert viewer_client.get(f"/watch/{video_id}").status_code == 404
    assert creator_client.get(f"/watch/{video_id}").status_code == 200
    assert admin_client.get(f"/watch/{video_id}").status_code == 200
    assert creator_client.get("/watch/no-such-film").status_code == 404


def test_resume_position_is_saved_and_offered_on_the_next_visit(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id, duration=600.0)
    log_in(client, "c@example.org")
    page = client.get(f"/watch/{video_id}")
    assert 'data-resume="0.0"' in page.text
    headers = {"X-CSRF-Token": csrf_from(page.text)}
    url = f"/api/videos/{video_id}/position"
    assert client.put(url, json={"position": 93.5}, headers=headers).status_code == 204
    assert client.put(url, json={"position": 125.0}, headers=headers).status_code == 204
    assert 'data-resume="125.0"' in client.get(f"/watch/{video_id}").text
    # Watched to the end: next time starts from the beginning.
    assert client.put(url, json={"position": 9999}, headers=headers).status_code == 204
    assert 'data-resume="0.0"' in client.get(f"/watch/{video_id}").text
    bad = client.put(url, json={"position": "soon"}, headers=headers)
    negative = client.put(url, json={"position": -3}, headers=headers)
    missing = client.put("/api/videos/nope/position", json={"position": 1}, headers=headers)
    assert bad.status_code == negative.status_code == 422
    assert missing.status_code == 404


def test_saving_a_position_needs_a_login(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id)
    response = client.put(f"/api/videos/{video_id}/position", json={"position": 1})
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_required"


def test_dashboard_lists_only_my_films_in_every_status_with_reasons(client):
    me = add_user(client, "me@example.org", role="creator")
    other = add_user(client, "other@example.org", role="creator")
    add_ready_video(client, me.id, title="Finished film", source_size=12_345_678)
    add_ready_video(client, me.id, title="Half way", status="processing", progress=0.42)
    add_ready_video(
        client,
        me.id,
        title="Broken upload",
        status="failed",
        error="This file has no video or audio stream we can read.",
    )
    add_ready_video(client, other.id, title="Someone else's")
    log_in(client, "me@example.org")
    page = client.get("/dashboard")
    assert page.status_code == 200
    for title in ("Finished film", "Half way", "Broken upload"):
        assert title in page.text
    assert "Someone else's" not in page.text
    assert "This file has no video or audio stream we can read." in page.text
    assert 'value="42"' in page.text
    assert "12.3 MB" in page.text
    assert 'data-events-url="/api/events/videos"' in page.text


def test_upload_page_points_tus_at_the_upload_endpoint(creator_client):
    page = creator_client.get("/upload")
    assert page.status_code == 200
    assert 'data-endpoint="/api/uploads"' in page.text
    assert 'type="file"' in page.text and "multiple" in page.text
    assert '<script src="/static/vendor/tus.min.js" defer></script>' in page.text
    script = (STATIC_DIR / "js" / "upload.js").read_text()
    for needed in ("findPreviousUploads", "retryDelays", "X-CSRF-Token", "filename"):
        assert needed in script


def test_every_page_carries_the_csrf_meta_tag_and_mobile_viewport(client):
    add_user(client, "c@example.org", role="creator")
    anonymous = [client.get(p).text for p in ("/", "/login", "/signup", "/nope")]
    log_in(client, "c@example.org")
    mine = [client.get(p).text for p in ("/", "/upload", "/dashboard")]
    for html in anonymous + mine:
        assert re.search(r'<meta name="csrf-token" content="[^"]+">', html)
        assert 'name="viewport" content="width=device-width, initial-scale=1"' in html


# A path written into a template: href="/...", src="/...", action="/...", data-x-url="/...".
HARD_CODED_URL = re.compile(r"""(?:href|src|action|poster|data-[a-z-]+)\s*=\s*["']/""")


def test_templates_and_scripts_build_urls_from_route_names():
    from portal.web import TEMPLATES_DIR

    for template in sorted(TEMPLATES_DIR.glob("*.html")):
        found = HARD_CODED_URL.findall(template.read_text())
        assert not found, f"{template.name} hard-codes {found}: use url_for or poster_path"
    for script in sorted((STATIC_DIR / "js").glob("*.js")):
        text = script.read_text()
        for path in ("/media/", "/login", "/dashboard", "/api/"):
            assert f'"{path}' not in text, f"{script.name} hard-codes {path}: use a data- URL"


def test_every_route_has_a_name_of_its_own_and_posters_use_the_poster_route(app):
    from starlette.routing import Route

    from portal.videos import poster_path

    names = [route.name for route in app.routes if isinstance(route, Route)]
    assert all(names) and len(names) == len(set(names)), names
    assert app.url_path_for("poster", video_id="abc123") == poster_path("abc123")


def test_the_dashboard_script_gets_each_poster_url_from_the_page(client, creator_client):
    video_id = add_ready_video(client, creator_client.user.id, status="processing", progress=0.5)
    page = creator_client.get("/dashboard")
    assert f'data-poster-url="/media/{video_id}/poster.jpg"' in page.text
    assert "item.dataset.posterUrl" in (STATIC_DIR / "js" / "dashboard.js").read_text()
