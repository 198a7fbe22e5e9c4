"""The whole API journey against a real server: token, tus upload, processing, playback
through the decrypting stream (read by ffmpeg itself), refusals, and crypto-shredding."""

from __future__ import annotations

import sqlite3
import subprocess
import time

import httpx
import pytest

from tests.helpers import (
    PLAINTEXT_MARKERS,
    bearer,
    create_account,
    files_containing,
    pipeline_settings,
    tus_upload,
    wait_until_done,
)
from transcoder.playlists import parse_playlist


@pytest.fixture
def settings(tmp_path):
    return pipeline_settings(tmp_path, workers=1)


def decoded_seconds(url: str) -> float:
    """How much media ffmpeg decodes when it plays `url` as a player would."""
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-protocol_whitelist", "http,tcp,file",
         "-i", url, "-f", "null", "-progress", "pipe:1", "-"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    times = [int(line.split("=")[1]) for line in result.stdout.splitlines()
             if line.startswith("out_time_us=")]  # fmt: skip
    return times[-1] / 1e6


def test_upload_process_watch_and_delete_through_the_api(settings, live_server, clip, tmp_path):
    for email, role in [("maker@example.org", "creator"), ("rival@example.org", "creator"),
                        ("viewer@example.org", "viewer")]:  # fmt: skip
        create_account(settings, email, role)
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        maker = bearer(client, "maker@example.org")
        rival = bearer(client, "rival@example.org")
        viewer = bearer(client, "viewer@example.org")

        video_id = tus_upload(live_server.url, maker, clip, filename="clip.mp4", title="Journey")
        video = wait_until_done(client, video_id, maker)
        assert video["status"] == "ready", video["error"]
        assert video["title"] == "Journey"

        # Watch: grant, playlists, segments, then ffmpeg plays the whole film through us.
        grant = client.get(f"/api/videos/{video_id}/playback", headers=viewer).json()
        master_url = f"{live_server.url}{grant['url']}"
        master = parse_playlist(client.get(master_url).text)
        media_url = master_url.rsplit("/", 1)[0] + "/" + master.variants[0].uri
        media = parse_playlist(client.get(media_url).text)
        assert media.ended and media.segments
        folder = media_url.rsplit("/", 1)[0]
        init = client.get(f"{folder}/{media.init_uri}")
        first = client.get(f"{folder}/{media.segments[0][0]}")
        assert init.content[4:8] == b"ftyp" and first.content[4:8] == b"styp"
        assert decoded_seconds(master_url) == pytest.approx(video["duration"], abs=0.15)

        # Tokens: forged or expired is 403, the real one still works.
        token = grant["url"].split("/")[2]
        forged = grant["url"].replace(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
        assert client.get(forged).status_code == 403
        tokens = live_server.server.config.app.state.services.tokens
        stale, _ = tokens.issue(None, video_id, now=time.time() - settings.token_ttl_seconds - 1)
        assert client.get(grant["url"].replace(token, stale)).status_code == 403
        assert client.get(grant["url"]).status_code == 200

        # Others cannot touch the creator's work.
        assert client.delete(f"/api/videos/{video_id}", headers=viewer).status_code == 403
        assert client.delete(f"/api/videos/{video_id}", headers=rival).status_code == 403
        other = tus_upload(live_server.url, maker, clip, filename="second.mp4")
        wait_until_done(client, other, maker)

        # A file that is not a video ends failed, with a reason a person can act on.
        letter = tmp_path / "letter.mp4"
        letter.write_bytes(b"Dear diary, this is not a film.\n" * 100)
        bad = tus_upload(live_server.url, maker, letter, filename="letter.mp4")
        failed = wait_until_done(client, bad, maker)
        assert (failed["status"], failed["error"]) == (
            "failed",
            "This is not a video or audio file.",
        )

        # Nothing on disk is plaintext media; the scratch dir is empty.
        assert files_containing(settings.data_dir / "objects", PLAINTEXT_MARKERS) == []
        assert list(settings.scratch_dir.iterdir()) == []

        # Delete crypto-shreds: the data key and every object go.
        assert client.delete(f"/api/videos/{video_id}", headers=maker).status_code == 204
        assert client.get(f"/api/videos/{video_id}").status_code == 404
        assert client.get(master_url).status_code == 404
    db = sqlite3.connect(settings.data_dir / "megamovie.db")
    try:
        keys = db.execute("SELECT count(*) FROM data_keys WHERE owner = ?", (video_id,)).fetchone()
    finally:
        db.close()
    assert keys == (0,)
    assert not any(p.is_file() for p in (settings.data_dir / "objects" / video_id).rglob("*"))
