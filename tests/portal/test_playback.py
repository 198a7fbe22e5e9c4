"""Playback grants, tokens, per-request playlists and the decrypting segment endpoint."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from portal.errors import TokenInvalid
from portal.tokens import PlaybackTokens
from tests.helpers import (
    add_user,
    bearer,
    pipeline_settings,
    set_video,
    upload_and_wait,
)
from transcoder.playlists import parse_playlist

KEY = b"k" * 32


def test_a_token_is_bound_to_its_video_and_expires():
    tokens = PlaybackTokens(KEY, ttl_seconds=60)
    token, expires_at = tokens.issue("viewer-1", "video-1", now=1000)
    assert expires_at == 1060
    claims = tokens.verify(token, "video-1", now=1059)
    assert (claims.viewer, claims.video, claims.expires_at) == ("viewer-1", "video-1", 1060)
    with pytest.raises(TokenInvalid):
        tokens.verify(token, "video-2", now=1001)
    with pytest.raises(TokenInvalid):
        tokens.verify(token, "video-1", now=1060)
    with pytest.raises(TokenInvalid):
        PlaybackTokens(b"other key 123456", 60).verify(token, "video-1", now=1001)
    payload, _, mac = token.partition(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + mac
    for bad in (forged, payload, "", "..", "not base64!.x", token + "x"):
        with pytest.raises(TokenInvalid):
            tokens.verify(bad, "video-1", now=1001)


@pytest.fixture
def settings(tmp_path):
    return pipeline_settings(tmp_path, workers=1)


@pytest.fixture
def ready(app, clip):
    # On loopback, like a local Prometheus: /metrics answers nobody else without a token.
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        add_user(client, "maker@example.org", "creator")
        auth = bearer(client, "maker@example.org")
        video_id = upload_and_wait(client, auth, clip.read_bytes())
        yield client, auth, video_id


def test_playlists_are_rendered_per_request_with_tokenised_relative_urls(ready):
    client, _auth, video_id = ready
    grant = client.get(f"/api/videos/{video_id}/playback")  # anonymous: free films
    assert grant.status_code == 200
    assert grant.headers["cache-control"] == "no-store"
    body = grant.json()
    assert body["url"].startswith("/stream/") and body["url"].endswith(f"/{video_id}/master.m3u8")
    assert body["storyboard_url"].endswith("/storyboard.vtt")
    assert client.get(f"/api/videos/{video_id}").json()["views"] == 1

    master = client.get(body["url"])
    assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
    variants = parse_playlist(master.text).variants
    assert [v.uri for v in variants] == ["180p/index.m3u8"]
    assert variants[0].attributes["RESOLUTION"] == "320x180"

    base = body["url"].rsplit("/", 1)[0]
    vod = parse_playlist(client.get(f"{base}/180p/index.m3u8").text)
    assert (vod.playlist_type, vod.ended, vod.init_uri) == ("VOD", True, "init.mp4")
    assert [uri for uri, _ in vod.segments][:2] == ["000000.m4s", "000001.m4s"]
    assert sum(d for _, d in vod.segments) == pytest.approx(2.0, abs=0.1)

    set_video(client, video_id, status="processing", playable=True)
    event = parse_playlist(client.get(f"{base}/180p/index.m3u8").text)
    assert (event.playlist_type, event.ended) == ("EVENT", False)

    board = client.get(body["storyboard_url"])
    assert board.headers["content-type"] == "text/vtt; charset=utf-8"
    assert "storyboard.jpg#xywh=" in board.text
    assert client.get(f"{base}/storyboard.jpg").content[:2] == b"\xff\xd8"


def test_segments_are_decrypted_with_ranges_etags_and_private_caching(ready):
    client, _auth, video_id = ready
    base = client.get(f"/api/videos/{video_id}/playback").json()["url"].rsplit("/", 1)[0]
    vault = client.app.state.services.vault
    plain = client.portal.call(vault.read, video_id, "hls/180p/000000.m4s")

    whole = client.get(f"{base}/180p/000000.m4s")
    assert whole.status_code == 200
    assert whole.content == plain
    assert whole.headers["content-type"] == "video/iso.segment"
    assert whole.headers["content-length"] == str(len(plain))
    assert whole.headers["cache-control"] == "private"
    init = client.get(f"{base}/180p/init.mp4")
    assert (init.headers["content-type"], init.content[4:8]) == ("video/mp4", b"ftyp")

    part = client.get(f"{base}/180p/000000.m4s", headers={"Range": "bytes=100-299"})
    assert part.status_code == 206
    assert part.content == plain[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(plain)}"
    tail = client.get(f"{base}/180p/000000.m4s", headers={"Range": "bytes=-10"})
    assert tail.content == plain[-10:]
    beyond = client.get(f"{base}/180p/000000.m4s", headers={"Range": f"bytes={len(plain)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(plain)}"

    etag = whole.headers["etag"]
    again = client.get(f"{base}/180p/000000.m4s", headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    assert client.get(f"{base}/180p/999999.m4s").status_code == 404
    assert client.get(f"{base}/180p/../../x.m4s").status_code == 404


def test_forged_expired_and_foreign_tokens_are_refused(ready, settings):
    client, _auth, video_id = ready
    url = client.get(f"/api/videos/{video_id}/playback").json()["url"]
    _, _, token, _, _ = url.split("/")
    payload, _, mac = token.partition(".")
    forged = f"{payload}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}"
    tokens = client.app.state.services.tokens
    expired, _ = tokens.issue(None, video_id, now=time.time() - settings.token_ttl_seconds - 1)
    other, _ = tokens.issue(None, "some-other-video")
    for bad in (forged, expired, other):
        for path in ("master.m3u8", "180p/index.m3u8", "180p/000000.m4s"):
            response = client.get(f"/stream/{bad}/{video_id}/{path}")
            assert response.status_code == 403, (bad, path)
            assert response.json()["error"] == "token_invalid"


def test_a_tampered_segment_is_a_logged_5xx_never_garbage(ready, settings, caplog):
    client, _auth, video_id = ready
    base = client.get(f"/api/videos/{video_id}/playback").json()["url"].rsplit("/", 1)[0]
    stored = settings.data_dir / "objects" / video_id / "hls" / "180p" / "000001.m4s"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))

    response = client.get(f"{base}/180p/000001.m4s")
    assert response.status_code == 500
    assert response.json()["error"] == "vault_tampered"
    assert response.headers["content-type"] == "application/json"
    assert any("vault failure" in r.message for r in caplog.records)


def test_posters_are_public_only_for_ready_videos(ready):
    client, _auth, video_id = ready
    info = client.get(f"/api/videos/{video_id}").json()
    assert info["poster_url"] == f"/media/{video_id}/poster.jpg"
    poster = client.get(info["poster_url"])
    assert (poster.status_code, poster.headers["content-type"]) == (200, "image/jpeg")
    assert poster.content[:2] == b"\xff\xd8"
    set_video(client, video_id, status="processing", playable=False)
    assert client.get(f"/media/{video_id}/poster.jpg").status_code == 404
    assert client.get(f"/api/videos/{video_id}/playback").status_code == 404


def test_metrics_count_requests_segment_bytes_jobs_and_transcodes(ready):
    client, _auth, video_id = ready
    base = client.get(f"/api/videos/{video_id}/playback").json()["url"].rsplit("/", 1)[0]
    size = len(client.get(f"{base}/180p/000000.m4s").content)

    def scrape() -> dict[str, float]:
        response = client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        values = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    # The video turns ready inside the job; the worker marks the job done just after.
    deadline = time.monotonic() + 30
    while (values := scrape()).get('megamovie_jobs{state="done"}') != 1:
        assert time.monotonic() < deadline, values
        time.sleep(0.05)
    assert values["megamovie_segment_bytes_total"] == size
    assert values["megamovie_segments_served_total"] == 1
    assert values['megamovie_jobs{state="done"}'] == 1
    assert values['megamovie_jobs{state="queued"}'] == 0
    assert values["megamovie_transcode_seconds_count"] == 1
    assert values["megamovie_transcode_seconds_sum"] > 0
    assert values['megamovie_http_requests_total{method="GET",status="200"}'] >= 3
