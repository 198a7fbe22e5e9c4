"""deploy/ for real: nginx with deploy/nginx/megamovie.conf (TLS with a throwaway certificate,
HTTP/2) in front of two portals sharing one PostgreSQL database and one data dir, and the API
journey through it: token, a tus upload whose chunks land on both portals, processing,
playback grant, playlists and a segment."""

from __future__ import annotations

import base64
import socket
import ssl
import time

import httpx
import pytest

from benchmarks.stack import Nginx, free_port, render_site, self_signed_certificate
from tests.helpers import TUS, LiveServer, bearer, create_account, pipeline_settings
from transcoder.playlists import parse_playlist

pytestmark = pytest.mark.postgres


def negotiated_protocol(port: int, cafile: str) -> str | None:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.selected_alpn_protocol()


def test_api_journey_through_nginx_with_tls_in_front_of_two_portals(
    tmp_path, sync_postgres_url, clip
):
    port = free_port()
    base = f"https://localhost:{port}"
    settings = pipeline_settings(
        tmp_path,
        database_url=sync_postgres_url,
        forwarded_allow_ips="127.0.0.1",
        secure_cookies=True,
        base_url=base,
        allowed_hosts="localhost",
    )
    create_account(settings, "maker@example.org")
    portals = [LiveServer(settings.replace(workers=1)), LiveServer(settings)]
    for portal in portals:
        portal.start()
    cert, key = self_signed_certificate(tmp_path)
    site = render_site([p.port for p in portals], port, (cert, key))
    nginx = Nginx(tmp_path / "nginx", site, port)
    nginx.start()
    try:
        assert negotiated_protocol(port, str(cert)) == "h2"
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=base, verify=trust, timeout=30) as client:
            auth = bearer(client, "maker@example.org")
            assert client.get("/healthz").json()["status"] == "ok"
            # nginx overwrites X-Forwarded-For: a forged one never reaches the portal, which
            # sees the proxy's own loopback address and so serves /metrics.
            forged = {"X-Forwarded-For": "203.0.113.9"}
            assert client.get("/metrics", headers=forged).status_code == 200

            body = clip.read_bytes()
            title = base64.b64encode(b"Through the proxy").decode()
            created = client.post(
                "/api/uploads",
                headers={**auth, **TUS, "Upload-Length": str(len(body)),
                         "Upload-Metadata": f"title {title}"},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            location = created.headers["location"]
            assert location.startswith(f"{base}/api/uploads/")  # under MEGAMOVIE_BASE_URL
            video_id = created.headers["video-id"]
            half = len(body) // 2
            for offset, chunk in ((0, body[:half]), (half, body[half:])):
                sent = client.patch(
                    location, content=chunk,
                    headers={**auth, **TUS, "Upload-Offset": str(offset),
                             "Content-Type": "application/offset+octet-stream"},
                )  # fmt: skip
                assert sent.status_code == 204, sent.text

            deadline = time.monotonic() + 120
            while (video := client.get(f"/api/videos/{video_id}", headers=auth).json())[
                "status"
            ] not in ("ready", "failed"):
                assert time.monotonic() < deadline, f"still {video['status']}"
                time.sleep(0.3)
            assert video["status"] == "ready", video["error"]

            grant = client.get(f"/api/videos/{video_id}/playback", headers=auth).json()
            master = parse_playlist(client.get(grant["url"]).text)
            media_url = grant["url"].rsplit("/", 1)[0] + "/" + master.variants[0].uri
            media = parse_playlist(client.get(media_url).text)
            first = client.get(media_url.rsplit("/", 1)[0] + "/" + media.segments[0][0])
            assert first.status_code == 200
            assert first.headers["content-type"] == "video/iso.segment"
            assert b"moof" in first.content and b"mdat" in first.content
            assert first.headers["strict-transport-security"] == "max-age=31536000"
            assert first.headers["x-content-type-options"] == "nosniff"  # the portal's own
    finally:
        nginx.stop()
        for portal in portals:
            portal.stop()
