"""Shedding load: admission budgets, the bounded hashing pool, and the in-memory rate limits.

Everything here is refused *at once*: the tests hold real requests in flight (a request
whose body has not arrived yet) or hold the hashing thread, and check what the next caller
sees, then that the process recovers by itself when the work drains.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from starlette.testclient import TestClient

from portal.admission import EXEMPT, NEW, ONGOING, request_class
from portal.app import create_app
from portal.errors import Overloaded, RateLimited
from portal.hashing import HashingPool
from portal.ratelimit import RateLimiter
from tests.helpers import PASSWORD, LiveServer, add_user, csrf_from, fast_settings


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/stream/tok/vid/720p/000001.m4s", ONGOING),
        ("GET", "/stream/tok/vid/720p/index.m3u8", ONGOING),
        ("GET", "/static/css/site.css", ONGOING),
        ("PATCH", "/api/uploads/abc", ONGOING),
        ("HEAD", "/api/uploads/abc", ONGOING),
        ("GET", "/api/events/videos", ONGOING),
        ("POST", "/api/uploads", NEW),
        ("DELETE", "/api/uploads/abc", NEW),
        ("POST", "/signup", NEW),
        ("POST", "/login", NEW),
        ("GET", "/search", NEW),
        ("GET", "/api/videos/abc/playback", NEW),
        ("GET", "/healthz", EXEMPT),
        ("GET", "/metrics", EXEMPT),
    ],
)
def test_viewers_and_uploads_in_progress_are_ongoing_work_the_rest_is_new(method, path, kind):
    assert request_class(method, path) == kind


def _hold_a_request(port: int) -> socket.socket:
    """A log-in whose body never finishes arriving: in flight until the socket closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nemail="
    )
    return sock


def _wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_new_work_past_its_budget_is_shed_at_once_and_viewers_still_get_in(tmp_path):
    import httpx

    server = LiveServer(fast_settings(tmp_path, max_in_flight=3, max_in_flight_new=2))
    server.start()
    admission = server.server.config.app.state.admission  # type: ignore[union-attr]
    held = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            held = [_hold_a_request(server.port) for _ in range(2)]
            _wait_for(lambda: admission.in_flight[NEW] == 2, "two requests in flight")
            shed = client.get("/signup")
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "1"
            assert shed.headers["content-security-policy"]  # still a page of ours
            api_shed = client.get("/api/videos")
            assert api_shed.status_code == 503
            assert api_shed.json()["error"] == "overloaded"
            # A viewer's segment request has room left: it reaches the token check (403).
            assert client.get("/stream/forged/abc/720p/000001.m4s").status_code == 403
            assert client.get("/healthz").status_code == 200
            # With the whole budget taken even viewers are told to come back.
            admission.max_in_flight = 2
            assert client.get("/stream/forged/abc/720p/000001.m4s").status_code == 503
            assert client.get("/healthz").status_code == 200
            for sock in held:
                sock.close()
            held = []
            _wait_for(lambda: admission.in_flight[NEW] + admission.in_flight[ONGOING] == 0,
                      "the held requests to end")  # fmt: skip
            assert client.get("/signup").status_code == 200  # recovered by itself
            assert admission.shed[NEW] == 2 and admission.shed[ONGOING] == 1
    finally:
        for sock in held:
            sock.close()
        server.stop()


@pytest.mark.anyio
async def test_a_full_hashing_pool_refuses_at_once_then_recovers():
    pool = HashingPool(threads=1, queue=1)
    release = threading.Event()
    try:
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, release.wait)  # running
            tg.start_soon(pool.run, release.wait)  # waiting
            while pool.in_use < 2:  # noqa: ASYNC110 - the pool has no event to wait on
                await anyio.sleep(0.01)
            with pytest.raises(Overloaded) as refused:
                await pool.run(sum, [1, 2])
            assert refused.value.retry_after == 1
            assert pool.refused == 1
            release.set()
        assert await pool.run(sum, [1, 2]) == 3
        assert pool.in_use == 0
    finally:
        release.set()
        pool.close()


def test_a_full_hashing_pool_answers_503_with_retry_after(tmp_path):
    settings = fast_settings(tmp_path, hash_threads=1, hash_queue=0)
    app = create_app(settings)
    release = threading.Event()
    with TestClient(app) as client:
        add_user(client, "h@example.org")
        pool = app.state.services.hashing
        held = client.portal.start_task_soon(pool.run, release.wait)  # type: ignore[union-attr]
        _wait_for(lambda: pool.in_use == 1, "the hashing thread to be busy")
        try:
            refused = client.post(
                "/api/tokens", json={"email": "h@example.org", "password": PASSWORD}
            )
            page = client.get("/login")
            form = {"csrf_token": csrf_from(page.text), "email": "h@example.org",
                    "password": PASSWORD}  # fmt: skip
            refused_form = client.post("/login", data=form, follow_redirects=False)
        finally:
            release.set()
            held.result(timeout=10)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "overloaded"
        assert refused_form.status_code == 503
        assert "try again in a moment" in refused_form.text
        again = client.post("/api/tokens", json={"email": "h@example.org", "password": PASSWORD})
        assert again.status_code == 200


def test_rate_limiter_counts_per_client_per_minute():
    limiter = RateLimiter(3, {})
    start = 1_800_000_000.0  # the start of a minute
    for second in range(3):
        limiter.hit("login", "10.0.0.1", now=start + second)
    with pytest.raises(RateLimited) as refused:
        limiter.hit("login", "10.0.0.1", now=start + 20)
    assert refused.value.retry_after == 40
    limiter.hit("login", "10.0.0.2", now=start + 21)  # another client
    limiter.hit("signup", "10.0.0.1", now=start + 22)  # another action
    limiter.hit("login", "10.0.0.1", now=start + 61)  # a new window


def test_rate_limiter_holds_everyone_together_to_the_global_rate():
    limiter = RateLimiter(1000, {"signup": 2.0})
    now = 1_800_000_000.0
    limiter.hit("signup", "a", now=now)
    limiter.hit("signup", "b", now=now)
    with pytest.raises(RateLimited) as refused:
        limiter.hit("signup", "c", now=now)
    assert refused.value.retry_after == 1
    limiter.hit("signup", "c", now=now + 0.5)  # a token came back
    limiter.hit("login", "c", now=now)  # no global limit on this action here


def test_global_signup_rate_answers_429_with_retry_after(tmp_path):
    with TestClient(create_app(fast_settings(tmp_path, signup_rate_per_second=0.01))) as client:
        answers = []
        for n in range(2):
            token = csrf_from(client.get("/signup").text)
            form = {"csrf_token": token, "email": f"g{n}@example.org", "password": PASSWORD,
                    "role": "viewer"}  # fmt: skip
            answers.append(client.post("/signup", data=form, follow_redirects=False))
            client.cookies.clear()
    assert answers[0].status_code == 303
    assert answers[1].status_code == 429
    assert int(answers[1].headers["retry-after"]) == 100
