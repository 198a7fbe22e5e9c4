"""A real Chromium driven by Playwright, and the media the journey uploads.

Debian's Chromium plays H.264/AAC fMP4 through hls.js; the flags are the ones that work
headless as root on these machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import make_clip

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture
def browser() -> Iterator[object]:
    # Per test, not per session: Playwright's sync API keeps an event loop running in this
    # thread while it is open, and every anyio test that runs after it would then fail.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def film(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 s 640x360 H.264/AAC MP4: long enough to play past 3 s on 2 s segments, and tall
    enough for two rungs (240p, 360p), so the player has a quality menu to offer."""
    return make_clip(
        tmp_path_factory.mktemp("browser-media") / "journey.mp4", seconds=8, size="640x360"
    )
