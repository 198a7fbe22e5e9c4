"""Security headers on every response, rate limits, and templates the CSP can live with."""

from __future__ import annotations

import re

import pytest

from portal.security import CONTENT_SECURITY_POLICY
from portal.web import TEMPLATES_DIR
from tests.helpers import PASSWORD, add_user, csrf_from, fast_settings


@pytest.fixture
def settings(tmp_path):
    return fast_settings(tmp_path, rate_limit_per_minute=3)


@pytest.mark.parametrize("path", ["/", "/login", "/api/videos", "/static/css/site.css", "/nope"])
def test_every_response_carries_the_security_headers(client, path):
    response = client.get(path)
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert "camera=()" in response.headers["permissions-policy"]


def test_csp_lets_hls_js_play_but_forbids_inline_code_and_framing():
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["style-src"] == "'self'"
    assert "blob:" in directives["media-src"]  # MediaSource hands the video a blob: URL
    assert "blob:" in directives["worker-src"]  # hls.js transmuxes in a blob: worker
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"


def test_templates_have_no_inline_scripts_styles_or_handlers():
    for template in TEMPLATES_DIR.rglob("*.html"):
        html = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, f"inline <script> in {template.name}: the CSP would block it"
        assert "<style" not in html, template.name
        assert not re.search(r"\sstyle=", html), f"style attribute in {template.name}"
        assert not re.search(r"\son[a-z]+=", html), f"inline event handler in {template.name}"


def _login(client, password=PASSWORD):
    token = csrf_from(client.get("/login").text)
    return client.post(
        "/login",
        data={"csrf_token": token, "email": "r@example.org", "password": password},
        follow_redirects=False,
    )


def _signup(client):
    token = csrf_from(client.get("/signup").text)
    return client.post(
        "/signup",
        data={"csrf_token": token, "email": "x@", "password": "x", "role": "viewer"},
        follow_redirects=False,
    )


def _token(client):
    return client.post("/api/tokens", json={"email": "r@example.org", "password": "wrong!"})


@pytest.mark.parametrize("attempt", [_login, _signup, _token], ids=["login", "signup", "token"])
def test_too_many_attempts_answer_429_with_retry_after(client, attempt):
    add_user(client, "r@example.org")
    answers = [attempt(client) for _ in range(4)]
    assert all(a.status_code != 429 for a in answers[:3])
    blocked = answers[3]
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert "Too many attempts" in blocked.text


def test_rate_limit_counts_each_action_separately(client):
    add_user(client, "r@example.org")
    for _ in range(3):
        _token(client)
    assert _token(client).status_code == 429
    assert _login(client).status_code == 303  # log-in has its own budget
