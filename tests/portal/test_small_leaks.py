"""Small leaks: an upload's Location must not follow the Host header, unexpected hosts are
refused, and playback tokens decode strictly (only the one encoding the portal wrote)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from portal.errors import TokenInvalid
from portal.security import CONTENT_SECURITY_POLICY
from portal.settings import SettingsError
from portal.tokens import PlaybackTokens
from tests.helpers import TUS, add_user, bearer, fast_settings

KEY = b"k" * 32
IDS = st.from_regex(r"[A-Za-z0-9]{1,32}", fullmatch=True)


def create_upload(client: TestClient, auth: dict[str, str], **headers: str):
    return client.post("/api/uploads", headers={**TUS, **auth, "Upload-Length": "10", **headers})


# -- Location and Host ----------------------------------------------------------------------


def test_the_location_of_a_new_upload_does_not_follow_the_host_header(client):
    add_user(client, "maker@example.org", role="creator")
    auth = bearer(client, "maker@example.org")
    created = create_upload(client, auth, Host="evil.example")
    assert created.status_code == 201
    location = created.headers["location"]
    assert location.startswith("/api/uploads/")  # relative: resolved against where it was sent
    assert "evil" not in location


@pytest.mark.settings(base_url="https://films.example.org/")
def test_the_location_of_a_new_upload_is_under_the_configured_base_url(client):
    add_user(client, "maker@example.org", role="creator")
    auth = bearer(client, "maker@example.org")
    created = create_upload(client, auth, Host="evil.example")
    assert created.headers["location"].startswith("https://films.example.org/api/uploads/")


@pytest.mark.parametrize("base_url", ["films.example.org", "ftp://x", "https://x/?a=1"])
def test_a_base_url_that_is_not_one_stops_start_up(tmp_path, base_url):
    with pytest.raises(SettingsError, match="MEGAMOVIE_BASE_URL"):
        fast_settings(tmp_path, base_url=base_url)


STRICT_HOSTS = pytest.mark.settings(allowed_hosts="films.example.org, *.cdn.example.org")


@pytest.mark.parametrize(
    "host", ["evil.example", "films.example.org.evil.example", "cdn.example.org", "", "x:films"]
)
@pytest.mark.parametrize("path", ["/api/videos", "/"])
@STRICT_HOSTS
def test_an_unexpected_host_is_a_400(client, host, path):
    answer = client.get(path, headers={"Host": host})
    assert answer.status_code == 400
    assert "host name" in answer.text
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    if path.startswith("/api/"):
        assert answer.json()["error"] == "host_not_allowed"


@pytest.mark.parametrize(
    "host", ["films.example.org", "FILMS.example.org:8443", "eu.cdn.example.org"]
)
@STRICT_HOSTS
def test_the_allowed_hosts_are_served(client, host):
    assert client.get("/api/videos", headers={"Host": host}).status_code == 200


# -- strict playback tokens -----------------------------------------------------------------


@given(viewer=st.none() | IDS, video=IDS, now=st.integers(0, 2**40))
def test_an_issued_token_verifies_for_its_video_until_it_expires(viewer, video, now):
    tokens = PlaybackTokens(KEY, ttl_seconds=60)
    token, expires_at = tokens.issue(viewer, video, now=now)
    claims = tokens.verify(token, video, now=now + 59)
    assert (claims.viewer, claims.video, claims.expires_at) == (viewer or "-", video, expires_at)


@given(
    video=IDS,
    position=st.integers(min_value=0),
    junk=st.text(min_size=1, max_size=3),
    action=st.sampled_from(["insert", "replace", "append"]),
)
def test_only_the_exact_issued_token_verifies(video, position, junk, action):
    """Any other string is refused: characters outside the alphabet, padding, whitespace,
    another spelling of the same bytes."""
    tokens = PlaybackTokens(KEY, ttl_seconds=60)
    token, _ = tokens.issue("viewer", video, now=1000)
    at = position % (len(token) + 1)
    if action == "insert":
        changed = token[:at] + junk + token[at:]
    elif action == "replace":
        changed = token[:at] + junk + token[at + len(junk) :]
    else:
        changed = token + junk
    if changed == token:
        return
    with pytest.raises(TokenInvalid):
        tokens.verify(changed, video, now=1001)


@pytest.mark.parametrize("junk", ["=", "==", "!", " ", "\n", "+", "/", "é", "*=="])
def test_padded_or_junked_tokens_are_refused(junk):
    """The decoder used to drop characters outside the alphabet, so these verified."""
    tokens = PlaybackTokens(KEY, ttl_seconds=60)
    token, _ = tokens.issue("viewer", "video", now=1000)
    payload, _, mac = token.partition(".")
    for changed in (payload + junk + "." + mac, token + junk, junk + token):
        with pytest.raises(TokenInvalid):
            tokens.verify(changed, "video", now=1001)


def test_another_spelling_of_the_same_bytes_is_refused():
    """The last character of an unpadded base64 string has spare bits; decoders ignore them,
    so several spellings decode to the same MAC. Only the canonical one is accepted."""
    tokens = PlaybackTokens(KEY, ttl_seconds=60)
    token, _ = tokens.issue("viewer", "video", now=1000)
    payload, _, mac = token.partition(".")
    assert len(mac) % 4 == 3  # 32 bytes -> 43 characters: 2 spare bits in the last one
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spellings = [
        mac[:-1] + c
        for c in alphabet
        if base64.urlsafe_b64decode(mac[:-1] + c + "=") == base64.urlsafe_b64decode(mac + "=")
    ]
    assert len(spellings) == 4
    for spelling in spellings:
        if spelling != mac:
            with pytest.raises(TokenInvalid):
                tokens.verify(f"{payload}.{spelling}", "video", now=1001)
