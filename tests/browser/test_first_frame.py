"""The watch page's fast start in a real Chromium: the grant comes with the page (no grant
request before the film plays), the first fetches are preloaded and used by hls.js, playback
starts on the rendition the server chose from the bandwidth cookie, and renewals still ask
the API on the same stream."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    bearer,
    create_account,
    make_clip,
    pipeline_settings,
    tus_upload,
    wait_until_done,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(tmp_path):
    # A stream idle for 15 s is over, so the player renews every 5 s: a renewal shows up
    # within the test.
    return pipeline_settings(tmp_path, workers=1, segment_seconds=1.0, stream_idle_seconds=15.0)


@pytest.fixture(scope="module")
def two_rung_film(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 360 lines: two rungs (240p, 360p), so the start rendition is a real choice.
    return make_clip(
        tmp_path_factory.mktemp("first-frame-media") / "ff.mp4", seconds=8, size="640x360"
    )


@pytest.fixture
def film(settings, live_server, two_rung_film) -> str:
    """A ready free film (made before the browser starts: Playwright's sync API holds this
    thread's event loop while it is open)."""
    base = live_server.url
    create_account(settings, "maker@example.org", "creator")
    with httpx.Client(base_url=base, timeout=30) as client:
        maker = bearer(client, "maker@example.org")
        video_id = tus_upload(base, maker, two_rung_film, filename="ff.mp4", title="Fast start")
        video = wait_until_done(client, video_id, maker)
        assert video["status"] == "ready", video["error"]
    return video_id


def test_the_page_carries_a_grant_that_plays_and_renewals_still_fetch(live_server, film, browser):
    base = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    # A slow line measured last time: the server starts this viewer on the lowest rung.
    context.add_cookies([{"name": "mm_bw", "value": "100000", "url": base}])
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{base}/watch/{film}")

    player = page.locator("#player")
    grant_url = player.evaluate("el => JSON.parse(el.dataset.grant).url")
    assert grant_url.startswith("/stream/") and grant_url.endswith(f"/{film}/master.m3u8")
    assert player.get_attribute("data-start-rendition") == "240p"
    preloads = page.eval_on_selector_all(
        'link[rel="preload"][as="fetch"]', "links => links.map(l => l.getAttribute('href'))"
    )
    base_path = grant_url.rsplit("/", 1)[0]
    assert preloads == [
        grant_url,
        f"{base_path}/240p/index.m3u8",
        f"{base_path}/240p/init.mp4",
        f"{base_path}/240p/000000.m4s",
    ], preloads

    page.wait_for_function(
        "() => window.mmPlayer.fatalError !== null"
        " || document.getElementById('video').currentTime > 1.5",
        timeout=30_000,
    )
    seen = page.evaluate(
        "() => ({fatal: window.mmPlayer.fatalError, engine: window.mmPlayer.engine,"
        " source: window.mmPlayer.grantSource, stream: window.mmPlayer.stream,"
        " url: window.mmPlayer.hls.url, first: window.mmPlayer.hls.levels.map(l => l.height),"
        " preloaded: window.mmPlayer.preloadBandwidth})"
    )
    assert seen["fatal"] is None, seen
    assert seen["engine"] == "hls.js" and seen["source"] == "page", seen
    assert seen["url"] == base + grant_url, seen
    # hls.js got the first segment from the preload; the line's speed is what the preload took.
    assert seen["preloaded"] > 0, seen
    # No grant request to start: the page's grant played.
    assert not [u for u in requests if "/playback" in u], requests
    # hls.js asked for the preloaded rung first, and each preloaded URL once (the preload was
    # used, not fetched again beside it).
    stream_requests = [u.removeprefix(base) for u in requests if "/stream/" in u]
    playlists = [u for u in stream_requests if u.endswith("/index.m3u8")]
    assert playlists[0] == f"{base_path}/240p/index.m3u8", stream_requests
    for url in preloads:
        assert stream_requests.count(url) == 1, (url, stream_requests)

    # Renewals still ask the API, on the stream the page's grant opened.
    with page.expect_request(lambda r: "/playback" in r.url, timeout=15_000) as renewal:
        pass
    assert renewal.value.url.endswith(f"/api/videos/{film}/playback?stream={seen['stream']}")
    page.wait_for_function(f"() => window.mmPlayer.stream === {seen['stream']!r}")

    # The player kept what it measured for the next page: a loopback line starts on top.
    page.wait_for_function("() => /(^|; )mm_bw=\\d+/.test(document.cookie)")
    page.reload()
    assert page.locator("#player").get_attribute("data-start-rendition") == "360p"
    context.close()
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
