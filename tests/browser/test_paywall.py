"""The paywall in a real Chromium: a paid film's preview plays, the offers appear where it
ends, a top-up and a purchase happen in the page, and playback goes on past the preview
without a reload. An anonymous viewer is asked to log in to buy."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    PASSWORD,
    bearer,
    create_account,
    make_clip,
    pipeline_settings,
    tus_upload,
    wait_until_done,
)

pytestmark = pytest.mark.browser

PREVIEW_SECONDS = 1


@pytest.fixture
def settings(tmp_path):
    # 1 s segments: the preview is one segment, the film four.
    return pipeline_settings(tmp_path, workers=1, segment_seconds=1.0)


@pytest.fixture(scope="module")
def paid_film(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("paywall-media") / "paid.mp4", seconds=4)


def log_in(page, base: str, email: str, next_path: str) -> None:
    page.goto(f"{base}/login?next={next_path}")
    page.fill('input[name="email"]', email)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{base}{next_path}")


@pytest.fixture
def paid_video(settings, live_server, paid_film) -> str:
    """A ready film by a creator, sold with a 1 s preview (made before the browser starts:
    Playwright's sync API holds this thread's event loop while it is open)."""
    base = live_server.url
    create_account(settings, "maker@example.org", "creator")
    create_account(settings, "viewer@example.org", "viewer")
    with httpx.Client(base_url=base, timeout=30) as client:
        maker = bearer(client, "maker@example.org")
        video_id = tus_upload(base, maker, paid_film, filename="paid.mp4", title="Paid film")
        video = wait_until_done(client, video_id, maker)
        assert video["status"] == "ready", video["error"]
        offers = client.put(
            f"/api/videos/{video_id}/offers",
            headers=maker,
            json={
                "preview_seconds": PREVIEW_SECONDS,
                "offers": [
                    {"kind": "buy", "amount": 499, "currency": "EUR"},
                    {"kind": "rent", "amount": 199, "currency": "EUR"},
                    {"kind": "pass"},
                ],
            },
        )
        assert offers.status_code == 200, offers.text
    return video_id


def run_past_the_preview(route) -> None:
    """Serve a media playlist with one more segment than the grant allows, before ENDLIST."""
    response = route.fetch()
    text = response.text()
    last = re.findall(r"^(\d{6})\.m4s$", text, flags=re.MULTILINE)[-1]
    extra = f"#EXTINF:1.000000,\n{int(last) + 1:06d}.m4s\n"
    route.fulfill(response=response, body=text.replace("#EXT-X-ENDLIST", extra + "#EXT-X-ENDLIST"))


def test_preview_paywall_top_up_purchase_and_play_on(live_server, paid_video, browser, tmp_path):
    base = live_server.url
    video_id = paid_video
    watch = f"/watch/{video_id}"
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # Anonymous, with the preview's playlists made to run on past the preview (as a stale
    # or foreign playlist might): the next segment is refused with 402, and the player shows
    # the offers from that refusal where playback reaches it, then "Log in to buy".
    # At phone width, so the offers must fit a small player too.
    anonymous = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = anonymous.new_page()
    page.route("**/stream/**/index.m3u8", run_past_the_preview)
    page.goto(f"{base}{watch}")
    page.locator("#paywall").wait_for(state="visible", timeout=30_000)
    seen = page.evaluate(
        "() => ({reason: window.mmPlayer.paywallReason, errors: window.mmPlayer.errors,"
        " time: document.getElementById('video').currentTime})"
    )
    assert seen["reason"] == "402", seen
    assert seen["time"] >= PREVIEW_SECONDS - 0.3, seen
    login = page.locator("#paywall-login a", has_text="Log in to buy")
    assert login.is_visible()
    assert login.get_attribute("href") == f"/login?next={watch}"
    assert page.locator("#paywall .offer-button[disabled]").count() == 3
    page.screenshot(path=str(shots / "paywall-phone.png"), full_page=True)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 375, f"the paywall scrolls sideways on a phone ({width}px)"
    anonymous.close()

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    grants: list[str] = []
    page.on("request", lambda r: grants.append(r.url) if "/playback" in r.url else None)
    log_in(page, base, "viewer@example.org", watch)
    assert page.locator('.site-nav a[href="/library"]').is_visible()
    assert page.locator('.site-nav a[href="/wallet"]').is_visible()

    # The preview plays through hls.js and the offers appear where it ends.
    page.wait_for_function("() => window.mmPlayer && window.mmPlayer.engine === 'hls.js'")
    paywall = page.locator("#paywall")
    paywall.wait_for(state="visible", timeout=30_000)
    stopped = page.evaluate("() => document.getElementById('video').currentTime")
    assert stopped >= PREVIEW_SECONDS - 0.1, stopped
    assert page.evaluate("() => window.mmPlayer.licence.kind") == "preview"
    assert page.evaluate("() => window.mmPlayer.paywallReason") == "ended"
    buy = page.locator('#paywall .offer-button[data-kind="buy"]')
    assert "4.99 EUR" in buy.inner_text()
    rent = page.locator('#paywall .offer-button[data-kind="rent"]')
    assert "48 h" in rent.inner_text() and "1.99 EUR" in rent.inner_text()
    assert page.locator('#paywall .offer-button[data-kind="pass"]').count() == 1
    page.screenshot(path=str(shots / "paywall.png"))

    # Buying with an empty wallet: short, so a top-up is offered right there.
    buy.click()
    top_up = page.locator("#paywall-top-up")
    top_up.wait_for(state="visible", timeout=10_000)
    page.wait_for_function(
        "() => document.getElementById('paywall-provider').textContent.includes('no real money')"
    )
    assert "5.00 EUR" in top_up.inner_text()
    page.screenshot(path=str(shots / "paywall-top-up.png"))
    top_up.locator('[data-action="top-up"]').click()

    # The purchase goes through and playback carries on past the preview, same page.
    paywall.wait_for(state="hidden", timeout=15_000)
    page.wait_for_function(
        "p => window.mmPlayer.fatalError !== null"
        " || document.getElementById('video').currentTime > p + 1",
        arg=PREVIEW_SECONDS,
        timeout=20_000,
    )
    player = page.evaluate(
        "() => ({fatal: window.mmPlayer.fatalError, errors: window.mmPlayer.errors,"
        " time: document.getElementById('video').currentTime,"
        " licence: window.mmPlayer.licence, purchases: window.mmPlayer.purchases,"
        " resumedAt: window.mmPlayer.resumedAt, navigations: performance.getEntriesByType("
        "'navigation').length})"
    )
    assert player["fatal"] is None, player
    assert player["licence"]["kind"] == "full" and player["licence"]["source"] == "purchase"
    assert [p["kind"] for p in player["purchases"]] == ["buy"], player
    assert player["resumedAt"] >= PREVIEW_SECONDS - 0.1, player
    assert player["time"] > PREVIEW_SECONDS + 1, player
    # The first grant came with the page and opened a stream; every grant the player asked
    # for afterwards (where the preview ended, after the purchase) renewed that same stream.
    stream = page.evaluate("() => window.mmPlayer.stream")
    assert page.evaluate("() => window.mmPlayer.grantSource") == "page"
    assert len(grants) >= 2, grants
    assert all(url.endswith(f"?stream={stream}") for url in grants), grants
    page.screenshot(path=str(shots / "played-on.png"))

    # The wallet paid 4.99 of the 5.00, and the film is in the library.
    wallet = context.request.get(f"{base}/api/wallet").json()
    assert wallet["balance"] == {"amount": 1, "currency": "EUR"}, wallet
    page.goto(f"{base}/library")
    item = page.locator(f'.library-item[data-video-id="{video_id}"]')
    assert "bought" in item.inner_text().lower() and "4.99 EUR" in item.inner_text()
    page.goto(f"{base}/wallet")
    assert page.locator("#wallet-balance").inner_text() == "0.01 EUR"
    assert "no real money" in page.locator("#provider-label").inner_text()
    page.fill('#top-up-form input[name="amount"]', "2.50")
    page.click('#top-up-form button[type="submit"]')
    page.wait_for_function(
        "() => document.getElementById('wallet-balance').textContent === '2.51 EUR'"
    )
    context.close()

    # The creator sees the sale on the dashboard (90% of 4.99), the chart, and edits offers.
    creator = browser.new_context(viewport={"width": 1280, "height": 900})
    page = creator.new_page()
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    log_in(page, base, "maker@example.org", "/dashboard")
    item = page.locator(f'.dash-item[data-video-id="{video_id}"]')
    assert item.locator('[data-field="earned"]').inner_text() == "4.49 EUR"
    page.wait_for_function("() => document.querySelector('#chart canvas') !== null")
    assert page.locator("#dash-chart").get_attribute("data-series") == "1"
    item.locator("summary", has_text="Offers").click()
    form = item.locator(".offers-form")
    assert form.locator('input[name="buy_amount"]').input_value() == "4.99"
    form.locator('input[name="buy_amount"]').fill("5.99")
    form.locator('input[name="rent"]').uncheck()
    form.locator('button[type="submit"]').click()
    summary = item.locator('[data-field="offers-summary"]')
    page.wait_for_function(
        "el => el.textContent.includes('5.99 EUR')", arg=summary.element_handle()
    )
    assert summary.inner_text() == "buy 5.99 EUR · pass; preview 1 s"
    channel = page.locator("#channel-form")
    channel.locator('input[name="amount"]').fill("5")
    channel.locator('button[type="submit"]').click()
    channel.locator(".form-status", has_text="Saved: 5.00 EUR a month.").wait_for()
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    creator.close()
    print(f"screenshots in {shots}")
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
