"""Bounds on what one client may hold: request heads in time and size, idle connections,
bodies of JSON and form endpoints, unfinished uploads and their metadata."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from portal.server import MAX_HEAD_BYTES
from tests.helpers import (
    TUS,
    LiveServer,
    add_ready_video,
    add_user,
    bearer,
    csrf_from,
    fast_settings,
)

HEADER_TIMEOUT = 1.0


@pytest.fixture
def server(tmp_path) -> Iterator[LiveServer]:
    """A live portal (the configuration `megamovie serve` runs) with one-second limits."""
    live = LiveServer(
        fast_settings(tmp_path, header_timeout_seconds=HEADER_TIMEOUT, keepalive_timeout_seconds=1)
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()


def seconds_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[float, bytes]:
    """How long until the server closes `sock`, and what it said before that."""
    start = time.monotonic()
    sock.settimeout(limit)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - start, received
        received += chunk


def test_a_partial_request_line_is_closed_within_the_header_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HT")
        elapsed, said = seconds_until_closed(sock)
    assert HEADER_TIMEOUT * 0.8 < elapsed < HEADER_TIMEOUT + 1.5
    assert said == b""


def test_headers_trickled_a_byte_at_a_time_are_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        while time.monotonic() - start < 10:
            try:
                sock.sendall(b"X")
                time.sleep(0.1)
                if sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    break  # closed by the server
            except BlockingIOError:
                continue  # still open, nothing said
            except OSError:
                break  # reset by the server
    assert time.monotonic() - start < HEADER_TIMEOUT + 1.5


def test_a_connection_that_sends_nothing_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        elapsed, said = seconds_until_closed(sock)
    assert elapsed < HEADER_TIMEOUT + 1.5
    assert said == b""


def test_an_idle_connection_after_a_response_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        elapsed, said = seconds_until_closed(sock)
    assert said.startswith(b"HTTP/1.1 200")
    assert elapsed < 1 + 1.5


def test_a_request_head_sent_in_pieces_within_the_timeout_is_served(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(HEADER_TIMEOUT / 3)
        sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        _, said = seconds_until_closed(sock)
    assert said.startswith(b"HTTP/1.1 200")


def test_a_request_head_over_the_limit_is_refused(server):
    padding = b"".join(
        b"X-Padding-%d: %s\r\n" % (n, b"a" * 1000) for n in range(MAX_HEAD_BYTES // 1000 + 2)
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + padding + b"\r\n")
        _, said = seconds_until_closed(sock)
    assert said.startswith(b"HTTP/1.1 400")


# -- bodies of JSON and form endpoints ------------------------------------------------------


def test_a_json_body_over_the_cap_is_refused_from_its_content_length(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # Announces 150 MB and sends none of it: refused without reading a byte of the body.
        sock.sendall(
            b"POST /api/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 150000000\r\n\r\n"
        )
        _, said = seconds_until_closed(sock)
    assert said.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in said
    assert b"connection: close" in said.lower()


def test_a_chunked_body_over_the_cap_is_refused_while_it_arrives(server):
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while sent < 50_000_000:
            sent += 64 * 1024
            yield b"[" * (64 * 1024)

    with httpx.Client(base_url=server.url) as client:
        try:
            answer = client.post("/api/tokens", content=endless())
        except httpx.HTTPError:
            answer = None  # the server may hang up before httpx reads the answer
    if answer is not None:
        assert answer.status_code == 413
    assert sent < 50_000_000


@pytest.mark.parametrize("path", ["/login", "/signup"])
def test_a_form_over_the_cap_is_refused(client, path):
    token = csrf_from(client.get(path).text)
    answer = client.post(path, data={"csrf_token": token, "email": "a" * 100_000})
    assert answer.status_code == 413
    assert "limited to" in answer.text
    assert answer.headers["connection"] == "close"


def test_the_position_endpoint_caps_its_body(client):
    viewer = add_user(client, "v@example.org")
    video_id = add_ready_video(client, viewer.id)
    answer = client.put(
        f"/api/videos/{video_id}/position",
        content=b'{"position": 1' + b" " * 2000 + b"}",
        headers=bearer(client, "v@example.org"),
    )
    assert (answer.status_code, answer.json()["error"]) == (413, "payload_too_large")


# -- unfinished uploads ---------------------------------------------------------------------


@pytest.mark.settings(max_open_uploads=2)
def test_a_creator_may_keep_only_so_many_unfinished_uploads(client):
    add_user(client, "maker@example.org", role="creator")
    add_user(client, "other@example.org", role="creator")
    auth = bearer(client, "maker@example.org")

    def create() -> httpx.Response:
        return client.post("/api/uploads", headers={**TUS, **auth, "Upload-Length": "10"})

    first, second, third = create(), create(), create()
    assert (first.status_code, second.status_code) == (201, 201)
    assert (third.status_code, third.json()["error"]) == (429, "too_many_uploads")
    assert "unfinished uploads" in third.json()["message"]
    # Another creator has a budget of their own.
    other = bearer(client, "other@example.org")
    assert (
        client.post("/api/uploads", headers={**TUS, **other, "Upload-Length": "1"}).status_code
        == 201
    )
    # Finishing one frees a place.
    done = client.patch(
        first.headers["location"],
        content=b"0123456789",
        headers={
            **TUS,
            **auth,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert done.status_code == 204
    assert create().status_code == 201


@pytest.mark.settings(max_upload_metadata_bytes=100)
def test_upload_metadata_is_capped_by_its_setting(client):
    add_user(client, "maker@example.org", role="creator")
    auth = bearer(client, "maker@example.org")

    def create(description: str) -> httpx.Response:
        metadata = "description " + base64.b64encode(description.encode()).decode()
        return client.post(
            "/api/uploads",
            headers={**TUS, **auth, "Upload-Length": "10", "Upload-Metadata": metadata},
        )

    assert create("x" * 60).status_code == 201
    refused = create("x" * 100)
    assert (refused.status_code, refused.json()["field"]) == (400, "Upload-Metadata")
    assert "limited to 100 bytes" in refused.json()["message"]
