"""The whole journey in a real Chromium: sign up as a creator, upload through the tus page,
watch the dashboard turn ready, find the film by searching, and play it with hls.js."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from tests.helpers import fast_settings, sign_up_creator

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(tmp_path):
    return fast_settings(tmp_path, workers=1, transcode_preset="ultrafast", segment_seconds=2.0)


def wait_for_ready(page, title: str, timeout: float = 180) -> None:
    """The dashboard row turns ready through server-sent events; reload now and then too, so
    a slow pipeline shows its state in the failure message."""
    row = page.locator(".dash-item", has_text=title)
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = row.get_attribute("data-status", timeout=10_000) or ""
        if status == "ready":
            return
        if status == "failed":
            reason = row.locator('[data-field="error"]').text_content()
            raise AssertionError(f"processing failed: {reason}")
        page.wait_for_timeout(1000)
    raise AssertionError(f"not ready after {timeout} s; the dashboard says {status!r}")


def test_creator_uploads_and_a_viewer_watches_with_hls_js(live_server, browser, film, tmp_path):
    base = live_server.url
    title = f"Journey {secrets.token_hex(3)}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    sign_up_creator(page, base, "journey@example.org", "Jo Journey")

    # Upload through tus-js-client.
    page.set_input_files("#file-input", str(film))
    item = page.locator(".upload-item").first
    item.locator('input[name="title"]').fill(title)
    item.locator('input[name="tags"]').fill("journey test")
    item.locator('[data-action="start"]').click()
    page.wait_for_selector(".upload-item.done", timeout=60_000)
    page.screenshot(path=str(shots / "upload.png"), full_page=True)

    # The dashboard follows processing live.
    page.goto(f"{base}/dashboard")
    wait_for_ready(page, title)
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

    # Find it in the catalog by its title, and open it.
    page.goto(f"{base}/?q={title.split()[1]}")
    link = page.locator(".tile a.title", has_text=title)
    assert link.count() == 1
    page.screenshot(path=str(shots / "catalog.png"), full_page=True)
    link.click()
    page.wait_for_url(f"{base}/watch/*")

    # It plays through hls.js, past 3 s, with no fatal error.
    page.wait_for_function(
        "() => window.mmPlayer && window.mmPlayer.engine !== null", timeout=20_000
    )
    assert page.evaluate("() => window.mmPlayer.engine") == "hls.js"
    page.wait_for_function(
        "() => window.mmPlayer.fatalError !== null"
        " || document.getElementById('video').currentTime > 3",
        timeout=30_000,
    )
    player = page.evaluate(
        "() => ({fatal: window.mmPlayer.fatalError, errors: window.mmPlayer.errors,"
        " time: document.getElementById('video').currentTime,"
        " levels: window.mmPlayer.hls.levels.map(l => l.height),"
        " storyboard: window.mmPlayer.storyboard.length})"
    )
    assert player["fatal"] is None, player
    assert player["time"] > 3, player
    assert player["levels"], player
    page.screenshot(path=str(shots / "watch.png"))

    # The quality menu offers Auto and every rendition the API reports, highest first.
    video_id = page.url.rsplit("/", 1)[-1]
    api = context.request.get(f"{base}/api/videos/{video_id}")
    assert api.ok, api.status
    heights = sorted((r["height"] for r in api.json()["renditions"] if r["height"]), reverse=True)
    assert len(heights) >= 2, f"the journey film should have two rungs, the API says {heights}"
    page.click('#player [data-action="quality"]')
    menu = page.locator("#quality-menu")
    menu.wait_for(state="visible")
    labels = [t.strip() for t in menu.locator("button").all_text_contents()]
    assert labels == ["Auto"] + [f"{h}p" for h in heights], labels

    # Choosing a height pins hls.js to that level and turns Auto off.
    lowest = heights[-1]
    menu.locator("button", has_text=f"{lowest}p").click()
    page.wait_for_function(
        "h => { const hls = window.mmPlayer.hls;"
        " const i = hls.levels.findIndex(l => l.height === h);"
        " return !hls.autoLevelEnabled && (hls.currentLevel === i || hls.nextLevel === i); }",
        arg=lowest,
        timeout=10_000,
    )
    assert menu.is_hidden()
    checked = page.locator('#quality-menu button[aria-checked="true"]').all_text_contents()
    assert checked == [f"{lowest}p"], checked

    # Hovering the seek bar shows a storyboard frame for that moment.
    page.wait_for_function("() => window.mmPlayer.storyboard.length > 0", timeout=10_000)
    bar = page.locator("#progress").bounding_box()
    assert bar, "the seek bar is on screen"
    page.mouse.move(bar["x"] + bar["width"] * 0.6, bar["y"] + bar["height"] / 2)
    page.locator("#scrub-preview").wait_for(state="visible", timeout=5_000)
    background = page.eval_on_selector(
        "#scrub-preview .scrub-image", "el => getComputedStyle(el).backgroundImage"
    )
    assert background.startswith('url("') and "/stream/" in background, background
    page.screenshot(path=str(shots / "watch-scrub.png"))

    # The same pages at phone width.
    phone = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    mobile = phone.new_page()
    mobile.goto(f"{base}/")
    mobile.screenshot(path=str(shots / "catalog-phone.png"), full_page=True)
    mobile.goto(page.url)
    mobile.wait_for_function("() => window.mmPlayer && window.mmPlayer.engine !== null")
    mobile.screenshot(path=str(shots / "watch-phone.png"), full_page=True)
    width = mobile.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 375, f"the watch page scrolls sideways on a phone ({width}px)"
    phone.close()
    context.close()
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
    print(f"screenshots in {shots}")
    assert all(p.stat().st_size > 0 for p in Path(shots).iterdir())
