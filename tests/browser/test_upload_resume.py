"""A creator's upload survives a page reload: tus-js-client keeps the upload's URL under the
file's fingerprint, and choosing the same file again carries on from the server's offset
instead of starting over."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import fast_settings, sign_up_creator

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(tmp_path):
    return fast_settings(tmp_path, workers=1, transcode_preset="ultrafast", segment_seconds=2.0)


#: Slow enough that a 2 MB file is still in flight a second after it started.
UPLOAD_BYTES_PER_SECOND = 256 * 1024


@pytest.fixture(scope="module")
def big_film(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small picture encoded losslessly: ~2 MB of real, playable H.264/AAC."""
    out = tmp_path_factory.mktemp("resume-media") / "resume_me.mp4"
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=24",
            "-f", "lavfi", "-i", "sine=frequency=440",
            "-t", "10", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    assert out.stat().st_size > 1_500_000, "the clip must be big enough to interrupt"
    return out


def throttle(cdp, bytes_per_second: int) -> None:
    """Chromium's own network emulation; -1 lifts the limit."""
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_second,
        },
    )


def server_state(context, url: str) -> tuple[int, int]:
    """The server's offset and length, asked with HEAD on the browser's own session."""
    response = context.request.head(url, headers={"Tus-Resumable": "1.0.0"})
    assert response.status == 200, (response.status, response.headers)
    return int(response.headers["upload-offset"]), int(response.headers["upload-length"])


def test_an_upload_interrupted_by_a_reload_resumes_from_the_server_offset(
    live_server, browser, big_film, tmp_path
):
    base = live_server.url
    size = big_film.stat().st_size
    title = f"Resumed {secrets.token_hex(3)}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    tus_requests: list[tuple[str, str, str | None]] = []
    page.on(
        "request",
        lambda r: (
            tus_requests.append((r.method, r.url, r.headers.get("upload-offset")))
            if "/api/uploads" in r.url and r.method in ("POST", "PATCH")
            else None
        ),
    )

    sign_up_creator(page, base, "resume@example.org", "Re Sume")

    # Start slowly, and reload while the first PATCH is still sending.
    throttle(cdp, UPLOAD_BYTES_PER_SECOND)
    page.set_input_files("#file-input", str(big_film))
    item = page.locator(".upload-item").first
    item.locator('input[name="title"]').fill(title)
    item.locator('[data-action="start"]').click()
    page.wait_for_function(
        "() => window.mmUploads.length && window.mmUploads[0].bar.value >= 15", timeout=15_000
    )
    patches = [r for r in tus_requests if r[0] == "PATCH"]
    assert patches, tus_requests
    upload_url = patches[0][1]
    page.reload()
    page.wait_for_selector("#uploader")

    # What arrived before the reload is kept: the server is part way, neither 0 nor done.
    deadline = time.monotonic() + 10
    offset, length = server_state(context, upload_url)
    while offset == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        offset, length = server_state(context, upload_url)
    assert length == size
    assert 0 < offset < length, (offset, length)

    # The page says what is unfinished; the same file carries on from the server's offset.
    page.wait_for_selector("#uploader .alert", timeout=5_000)
    assert big_film.name in page.locator("#uploader .alert").text_content()
    throttle(cdp, -1)
    sent_before_reload = len(tus_requests)
    page.set_input_files("#file-input", str(big_film))
    page.locator(".upload-item").first.locator('[data-action="start"]').click()
    page.wait_for_selector(".upload-item.done", timeout=20_000)

    after = tus_requests[sent_before_reload:]
    assert [m for m, _, _ in after if m == "POST"] == [], "resuming must not create a new upload"
    resumed = [(url, int(o)) for m, url, o in after if m == "PATCH" and o is not None]
    assert resumed, tus_requests
    assert resumed[0] == (upload_url, offset), (resumed, offset)
    assert all(o >= offset for _, o in resumed), resumed
    assert server_state(context, upload_url) == (size, size)

    # One film, under the first title, on the dashboard.
    page.goto(f"{base}/dashboard")
    assert page.locator(".dash-item", has_text=title).count() == 1
    assert page.locator(".dash-item").count() == 1
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    context.close()
