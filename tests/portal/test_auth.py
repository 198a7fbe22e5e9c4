"""Sessions, bearer tokens and CSRF, through the real app."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from portal.app import create_app
from portal.db import api_tokens, utcnow
from portal.settings import Secret
from portal.signing import load_secret_key
from tests.helpers import PASSWORD, add_ready_video, add_user, csrf_from, log_in


def bearer_token(client: TestClient, email: str) -> str:
    response = client.post("/api/tokens", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()["token"]


def test_api_token_authenticates_bearer_requests_without_a_csrf_header(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id)
    token = bearer_token(client, "c@example.org")
    assert client.cookies.get("mm_session") is None
    response = client.put(
        f"/api/videos/{video_id}/position",
        json={"position": 12.5},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 204


def test_api_token_is_refused_once_expired(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id)
    token = bearer_token(client, "c@example.org")

    async def expire() -> None:
        async with client.app.state.services.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(
                update(api_tokens).values(expires_at=utcnow() - timedelta(seconds=1))
            )

    client.portal.call(expire)  # type: ignore[union-attr]
    response = client.put(
        f"/api/videos/{video_id}/position",
        json={"position": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401
    assert "expired or is not valid" in response.json()["message"]


@pytest.mark.settings(token_ttl_seconds=120)
def test_api_token_lifetime_follows_the_setting(client):
    add_user(client, "c@example.org")
    before = utcnow()
    response = client.post("/api/tokens", json={"email": "c@example.org", "password": PASSWORD})
    from datetime import datetime

    expires = datetime.fromisoformat(response.json()["expires_at"])
    assert timedelta(seconds=115) < expires - before < timedelta(seconds=125)


def test_token_endpoint_refuses_wrong_passwords_and_bad_json(client):
    add_user(client, "c@example.org")
    wrong = client.post("/api/tokens", json={"email": "c@example.org", "password": "x" * 12})
    shape = client.post("/api/tokens", json=["c@example.org"])
    garbage = client.post("/api/tokens", content=b"{not json")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_credentials"
    assert (shape.status_code, shape.json()["error"]) == (422, "validation_failed")
    # Not JSON at all is a malformed request, not a wrong shape.
    assert (garbage.status_code, garbage.json()["error"]) == (400, "bad_request")


def test_form_without_csrf_token_is_refused(client):
    add_user(client, "c@example.org")
    client.get("/login")  # has the anonymous CSRF cookie, but the form lacks the token
    response = client.post(
        "/login",
        data={"email": "c@example.org", "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert "reload the page" in response.text.lower()
    log_in(client, "c@example.org")
    logout = client.post("/logout", data={"csrf_token": "forged"}, follow_redirects=False)
    assert logout.status_code == 403
    assert client.get("/").text.count("Log out") == 1  # still logged in


def test_anonymous_csrf_token_only_works_with_its_own_cookie(client):
    add_user(client, "c@example.org")
    token = csrf_from(client.get("/login").text)
    client.cookies.clear()  # another browser: the attacker's page has no victim cookie
    response = client.post(
        "/login",
        data={"csrf_token": token, "email": "c@example.org", "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 403


def test_cookie_api_request_needs_the_csrf_header(client):
    creator = add_user(client, "c@example.org", role="creator")
    video_id = add_ready_video(client, creator.id)
    log_in(client, "c@example.org")
    url = f"/api/videos/{video_id}/position"
    refused = client.put(url, json={"position": 3})
    wrong = client.put(url, json={"position": 3}, headers={"X-CSRF-Token": "nope"})
    token = csrf_from(client.get(f"/watch/{video_id}").text)
    accepted = client.put(url, json={"position": 3}, headers={"X-CSRF-Token": token})
    assert refused.status_code == wrong.status_code == 403
    assert refused.json()["error"] == "csrf_failed"
    assert "X-CSRF-Token" in refused.json()["message"]
    assert refused.headers["x-frame-options"] == "DENY"  # refusals are hardened too
    assert accepted.status_code == 204


def test_session_cookie_is_signed_httponly_and_lax(client):
    add_user(client, "c@example.org")
    response = log_in(client, "c@example.org")
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("mm_session="))
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Secure" not in cookie


@pytest.mark.settings(secure_cookies=True)
def test_session_cookie_is_secure_when_configured(app):
    with TestClient(app, base_url="https://testserver") as client:
        add_user(client, "c@example.org")
        response = log_in(client, "c@example.org")
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("mm_session="))
    assert "Secure" in cookie


def test_forged_session_cookie_is_ignored(client):
    add_user(client, "c@example.org", role="creator")
    log_in(client, "c@example.org")
    value = client.cookies.get("mm_session")
    raw, _, signature = value.rpartition(".")
    client.cookies.clear()
    client.cookies.set("mm_session", raw + "." + signature[::-1])
    assert client.get("/dashboard").status_code == 401
    client.cookies.clear()
    client.cookies.set("mm_session", "just-a-guess")
    assert client.get("/dashboard").status_code == 401


def test_login_refuses_to_redirect_off_site(client):
    add_user(client, "c@example.org")
    response = log_in(client, "c@example.org", next_url="//evil.example/")
    assert response.headers["location"] == "/"


def test_sessions_survive_a_restart_with_the_generated_secret_key(app, settings):
    with TestClient(app) as client:
        add_user(client, "c@example.org", role="creator")
        log_in(client, "c@example.org")
        cookie = client.cookies.get("mm_session")
    key_file = settings.secret_key_file
    assert key_file.stat().st_mode & 0o777 == 0o600
    # The restart: a new app from the same settings, after the first one has stopped.
    with TestClient(create_app(settings)) as client:
        client.cookies.set("mm_session", cookie)
        assert client.get("/dashboard").status_code == 200


def test_secret_key_comes_from_the_setting_when_given(settings):
    configured = settings.replace(secret_key=Secret("s" * 40))
    assert load_secret_key(configured) == b"s" * 40
    assert not configured.secret_key_file.exists()
    made = load_secret_key(settings)
    assert len(made) == 32
    assert load_secret_key(settings) == made
    assert oct(os.stat(settings.secret_key_file).st_mode & 0o777) == "0o600"


def test_roles_decide_who_opens_creator_pages(client):
    add_user(client, "v@example.org", role="viewer")
    add_user(client, "c@example.org", role="creator")
    anonymous = client.get("/dashboard")
    log_in(client, "v@example.org")
    viewer = client.get("/dashboard")
    client.cookies.clear()
    log_in(client, "c@example.org")
    creator = client.get("/dashboard")
    assert anonymous.status_code == 401
    assert 'href="/login?next=/dashboard"' in anonymous.text
    assert viewer.status_code == 403
    assert creator.status_code == 200
