"""The whole HTTP API, fuzzed: no client mistake is a 500, and every answer keeps the security
headers (and `Tus-Resumable` under /api/uploads).

The fuzzer reads the route table of the real app, so a new route is fuzzed the day it is added;
`test_the_fuzzer_knows_every_path_parameter` fails when a route brings a path parameter the
fuzzer has no values for. Requests go to a real app on a real database (SQLite and
PostgreSQL: only PostgreSQL refuses NUL in text) holding real objects to hit: films in every
state with encrypted segments, uploads open, partial and finished, a playback token, users of
every role. Callers are anonymous, bearer tokens of each role, a cookie session with and
without its CSRF header, and a forged token. The example counts are bounded so the run takes
seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from starlette.testclient import TestClient

from portal.app import create_app
from portal.layout import POSTER, segment_path
from portal.security import CONTENT_SECURITY_POLICY
from tests.helpers import (
    TUS,
    add_ready_video,
    add_user,
    bearer,
    csrf_from,
    fast_settings,
    log_in,
    postgres_database,
)

#: Examples per database: enough to reach every route with many shapes, in seconds.
EXAMPLES = {"sqlite": 600, "postgres": 600}
#: Never fuzzed as a caller who may open it: it streams until the client leaves.
ENDLESS = {"/api/events/videos"}
#: HTML forms: half the time the caller holds the CSRF cookie its form token needs.
FORMS = {"/login", "/signup", "/logout"}

# -- values -----------------------------------------------------------------------------------

# Anything a client can put in a URL, a header or a JSON string: lone surrogates, NUL, other
# scripts' digits, very long strings.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
DIGITS = st.sampled_from(["0", "1", "5", "19", "²", "١٢", "-1", "1" * 25, " 3", "0x10", "1e3"])
HEADER_TEXT = st.one_of(ANY_TEXT, DIGITS, st.text(string.printable, max_size=40)).map(
    lambda value: value.replace("\r", "").replace("\n", "").replace("\x00", "")
)


def b64(value: str) -> str:
    import base64

    return base64.b64encode(value.encode("utf-8", "surrogatepass")).decode()


METADATA = st.one_of(
    HEADER_TEXT,
    st.dictionaries(
        st.sampled_from(["filename", "title", "description", "tags", "x y", "", "é"]),
        ANY_TEXT,
        max_size=4,
    ).map(lambda d: ",".join(f"{k} {b64(v)}" for k, v in d.items())),
)

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(ANY_TEXT, kids, max_size=3),
    max_leaves=10,
)
JSON_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "email": st.one_of(ANY_TEXT, st.just("maker@example.org"), JSON_VALUE),
        "password": st.one_of(ANY_TEXT, st.just("correct horse battery"), JSON_VALUE),
        "position": st.one_of(st.floats(), st.integers(), JSON_VALUE),
        "preview_seconds": st.one_of(st.integers(), st.floats(), JSON_VALUE),
        "offers": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "kind": st.sampled_from(["free", "rent", "buy", "subscribe", "x"]),
                        "amount": st.one_of(st.integers(), JSON_VALUE),
                        "currency": st.one_of(st.sampled_from(["EUR", "USD", "JPY"]), ANY_TEXT),
                        "hours": st.one_of(st.integers(), JSON_VALUE),
                    },
                ),
                max_size=3,
            ),
            JSON_VALUE,
        ),
        "amount": st.one_of(st.integers(), JSON_VALUE),
        "currency": st.one_of(st.sampled_from(["EUR", "USD"]), ANY_TEXT),
        "offer_id": st.one_of(ANY_TEXT, JSON_VALUE),
        "plan": st.one_of(st.sampled_from(["pass", "channel"]), JSON_VALUE),
        "creator_id": st.one_of(ANY_TEXT, JSON_VALUE),
    },
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


FORM_FIELDS = ["email", "password", "display_name", "role", "next", "csrf_token", "x", "é"]


def forms(csrf_tokens: list[str]) -> st.SearchStrategy[bytes]:
    """URL-encoded forms with our fields, often with a CSRF token that matches."""
    value = st.one_of(
        ANY_TEXT,
        st.sampled_from(
            ["maker@example.org", "viewer@example.org", "correct horse battery", "creator", "/"]
        ),
    )
    fields = st.fixed_dictionaries(
        {"csrf_token": st.sampled_from(csrf_tokens * 3) | ANY_TEXT},
        optional={name: value for name in FORM_FIELDS if name != "csrf_token"},
    )
    return fields.map(
        lambda d: urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in d.items()}).encode()
    )


def bodies(csrf_tokens: list[str]) -> st.SearchStrategy[tuple[bytes | None, str | None]]:
    """(body, the Content-Type that usually goes with it)."""
    return st.one_of(
        st.just((None, None)),
        st.binary(max_size=200).map(lambda b: (b, "application/offset+octet-stream")),
        JSON_VALUE.map(lambda v: (json.dumps(v).encode(), "application/json")),
        JSON_SHAPED.map(lambda v: (json.dumps(v).encode(), "application/json")),
        st.integers(30, 600).map(lambda n: (nested(n), "application/json")),
        forms(csrf_tokens).map(lambda b: (b, "application/x-www-form-urlencoded")),
        st.binary(max_size=200).map(lambda b: (b, None)),
    )


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "application/offset+octet-stream",
        "text/plain; charset=nope",
        "application/json; charset=latin-1",
    ]
)

HEADERS = st.fixed_dictionaries(
    {"Tus-Resumable": st.sampled_from(["1.0.0"] * 8 + ["0.2.2", ""]) | HEADER_TEXT},
    optional={
        "Upload-Length": DIGITS | HEADER_TEXT,
        "Upload-Offset": DIGITS | HEADER_TEXT,
        "Upload-Metadata": METADATA,
        "Upload-Checksum": st.sampled_from(["sha1 AAAA", "md5 1B2M2Y8AsgTpgAmY7PhCfg==", "crc32 x"])
        | HEADER_TEXT,
        "Upload-Concat": st.sampled_from(["partial", "final;", "final;/api/uploads/x"])
        | HEADER_TEXT,
        "Upload-Defer-Length": st.just("1"),
        "X-HTTP-Method-Override": st.sampled_from(["PATCH", "DELETE", "GET", "HEAD"]) | HEADER_TEXT,
        "Content-Type": CONTENT_TYPES | HEADER_TEXT,
        "Range": st.sampled_from(["bytes=0-10", "bytes=-5", "bytes=5-", "items=1-2"]) | HEADER_TEXT,
        "If-None-Match": st.sampled_from(["*", '"x"', "W/*"]) | HEADER_TEXT,
        "If-Match": st.sampled_from(["*", '"x"']) | HEADER_TEXT,
        "If-Range": HEADER_TEXT,
        "Accept": st.sampled_from(["application/json", "text/html", "*/*"]),
        "Cookie": HEADER_TEXT,
        "Idempotency-Key": HEADER_TEXT,
        "Stripe-Signature": HEADER_TEXT,
    },
)


@dataclass
class World:
    """What exists on the server, for the fuzzer to aim at."""

    client: TestClient
    callers: dict[str, dict[str, str]]
    params: dict[str, list[str]] = field(default_factory=dict)
    csrf_tokens: list[str] = field(default_factory=list)


def build_world(client: TestClient) -> World:
    maker = add_user(client, "maker@example.org", role="creator")
    add_user(client, "viewer@example.org")
    add_user(client, "boss@example.org", role="admin")
    callers = {
        "anonymous": {},
        "creator": bearer(client, "maker@example.org"),
        "viewer": bearer(client, "viewer@example.org"),
        "admin": bearer(client, "boss@example.org"),
        "forged": {"Authorization": "Bearer mmt_forged"},
    }
    # Cookies sent by hand, so that the client's cookie jar stays empty between examples: an
    # anonymous visitor's CSRF cookie (for the sign-up and log-in forms) and a session.
    anonymous_csrf = csrf_from(client.get("/login").text)
    callers["anonymous+csrf"] = {"Cookie": f"mm_csrf={client.cookies.get('mm_csrf')}"}
    client.cookies.clear()
    log_in(client, "viewer@example.org")
    session = client.cookies.get("mm_session")
    csrf = csrf_from(client.get("/").text)
    client.cookies.clear()
    callers["session"] = {"Cookie": f"mm_session={session}"}
    callers["session+csrf"] = {"Cookie": f"mm_session={session}", "X-CSRF-Token": csrf}

    vault = client.app.state.services.vault
    videos = {
        "ready": add_ready_video(client, maker.id, has_poster=True, has_storyboard=True),
        "playable": add_ready_video(client, maker.id, status="processing", playable=True),
        "failed": add_ready_video(client, maker.id, status="failed", error="broken"),
        "queued": add_ready_video(client, maker.id, status="queued"),
    }
    for video_id in videos.values():
        client.portal.call(vault.create_key, video_id)
        client.portal.call(vault.put, video_id, segment_path("180p", 0), b"segment" * 100)
        client.portal.call(vault.put, video_id, segment_path("180p", -1), b"init" * 10)
        client.portal.call(vault.put, video_id, POSTER, b"\xff\xd8poster")
    creator = callers["creator"]
    open_upload = client.post("/api/uploads", headers={**TUS, **creator, "Upload-Length": "100"})
    partial = client.post(
        "/api/uploads",
        headers={**TUS, **creator, "Upload-Length": "3", "Upload-Concat": "partial"},
    )
    client.patch(
        partial.headers["location"],
        content=b"abc",
        headers={
            **TUS,
            **creator,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    token = client.get(f"/api/videos/{videos['ready']}/playback").json()["url"].split("/")[2]
    junk_ids = ["x", "0", "-", "..", "%00", "a" * 40]
    world = World(client, callers, csrf_tokens=[anonymous_csrf, csrf])
    world.params = {
        "video_id": [*videos.values(), *junk_ids],
        "upload_id": [
            open_upload.headers["location"].rsplit("/", 1)[1],
            partial.headers["location"].rsplit("/", 1)[1],
            *junk_ids,
        ],
        "user_id": [maker.id, *junk_ids],
        "creator_id": [maker.id, *junk_ids],
        "token": [token, token + "=", token[:-1], "x.y", "..", *junk_ids],
        "rendition": ["180p", "720p", "..", "a b", *junk_ids],
        "name": ["000000.m4s", "init.mp4", "storyboard.vtt", "storyboard.jpg", "..", *junk_ids],
        "statement_id": junk_ids,
        "top_up_id": junk_ids,
    }
    return world


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(request, tmp_path_factory) -> Iterator[tuple[str, World]]:
    settings = fast_settings(tmp_path_factory.mktemp("fuzz"), rate_limit_per_minute=10**6)
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            settings = settings.replace(database_url=stack.enter_context(postgres_database()))
        client = stack.enter_context(
            TestClient(create_app(settings), raise_server_exceptions=False)
        )
        yield request.param, build_world(client)


def routes() -> list[Route]:
    from portal.app import build_routes

    return [route for route in build_routes() if isinstance(route, Route)]


def test_the_fuzzer_knows_every_path_parameter(world):
    _, known = world
    missing = {
        f"{route.path}: {name}"
        for route in routes()
        for name in route.param_convertors
        if name not in known.params
    }
    assert missing == set()


@st.composite
def requests(draw: st.DrawFn, world: World) -> dict[str, Any]:
    route = draw(st.sampled_from(routes()))
    method = draw(st.sampled_from(sorted(route.methods or {"GET"})))
    caller = draw(st.sampled_from(sorted(world.callers)))
    if route.path in FORMS and draw(st.booleans()):
        caller = draw(st.sampled_from(["anonymous+csrf", "session+csrf"]))  # past the CSRF check
    if route.path in ENDLESS and caller in ("creator", "admin"):
        caller = "viewer"
    values = {
        name: draw(st.sampled_from(world.params[name]) | ANY_TEXT)
        for name in route.param_convertors
    }
    path = re.sub(
        r"\{(\w+)(:\w+)?\}",
        lambda m: quote(values[m.group(1)].encode("utf-8", "surrogatepass"), safe=""),
        route.path,
    )
    query = draw(
        st.dictionaries(
            st.sampled_from(["q", "sort", "page", "after", "next", "stream", "days", "currency"]),
            ANY_TEXT | DIGITS,
            max_size=3,
        )
    )
    if query:
        path += "?" + urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    content, content_type = draw(bodies(world.csrf_tokens))
    headers = {**draw(HEADERS), **world.callers[caller]}
    if route.path in FORMS and draw(st.booleans()):
        content, content_type = draw(forms(world.csrf_tokens)), "application/x-www-form-urlencoded"
        headers["Content-Type"] = content_type
    if content_type is not None:
        headers.setdefault("Content-Type", content_type)
    return {
        "method": method,
        "url": path,
        "headers": {k: v.encode("utf-8", "surrogatepass") for k, v in headers.items()},
        "content": content,
        "follow_redirects": False,
    }


def test_no_request_is_a_500_and_every_answer_keeps_its_headers(world):
    database, known = world

    @given(request=requests(known))
    @settings(
        max_examples=EXAMPLES[database],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def probe(request: dict[str, Any]) -> None:
        known.client.cookies.clear()
        answer = known.client.request(**request)
        described = f"{request['method']} {request['url']}"
        assert answer.status_code < 500, f"{described}: {answer.status_code} {answer.text[:300]}"
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, described
        assert answer.headers["x-content-type-options"] == "nosniff", described
        if answer.request.url.path.startswith("/api/uploads"):  # after dot segments went
            assert answer.headers["tus-resumable"] == "1.0.0", described
        if (
            answer.status_code >= 400
            and request["method"] != "HEAD"
            and answer.headers.get("content-type", "").startswith("application/json")
        ):
            body = answer.json()
            assert {"error", "message"} <= set(body), described

    probe()
