"""Every client mistake is a 4xx with a sentence, never a 500: headers, metadata, JSON, text.

The helpers in `portal.parsing` are tested property-based (the input space is large), and each
class of mistake once more through the real app, where it used to be a 500.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from starlette.datastructures import Headers
from starlette.testclient import TestClient

from portal.accounts import create_user
from portal.errors import BadRequest, ValidationFailed
from portal.parsing import (
    INT64_MAX,
    MAX_JSON_DEPTH,
    digits,
    encode_upload_metadata,
    header_int,
    parse_json,
    upload_metadata,
)
from portal.security import CONTENT_SECURITY_POLICY
from tests.helpers import (
    PASSWORD,
    TUS,
    add_ready_video,
    add_user,
    bearer,
    csrf_from,
    log_in,
)

# Text as clients send it: any code point, lone surrogates and NUL included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()))
CLEAN_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), include_characters="\t\n\r"), max_size=50
)


@pytest.fixture
def creator(client):
    add_user(client, "maker@example.org", role="creator")
    return bearer(client, "maker@example.org")


# -- header integers ----------------------------------------------------------------------


@given(ANY_TEXT)
def test_digits_takes_only_ascii_digits_that_fit_a_bigint(raw):
    value = digits(raw)
    if value is None:
        assert not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= INT64_MAX)
    else:
        assert raw.isascii() and raw.isdigit() and value == int(raw) <= INT64_MAX


@given(st.integers(min_value=0, max_value=INT64_MAX))
def test_digits_reads_back_every_bigint(number):
    assert digits(str(number)) == number


@pytest.mark.parametrize("raw", ["²", "٣", "1" * 5000, "1_000", "-1", "+5", " 5", "", "0x10"])
def test_header_int_refuses_what_is_not_plain_ascii_digits(raw):
    with pytest.raises(BadRequest) as refused:
        # As a server sees them: the client's UTF-8 bytes, read as latin-1.
        header_int(Headers(raw=[(b"upload-length", raw.encode())]), "Upload-Length")
    assert refused.value.field == "Upload-Length"


@pytest.mark.parametrize("raw", ["²", "1" * 5000, str(2**63), "١٢"])
def test_a_strange_upload_length_or_offset_is_a_400(client, creator, raw):
    created = client.post(
        "/api/uploads", headers={**TUS, **creator, "Upload-Length": raw.encode("utf-8")}
    )
    assert created.status_code == 400, created.text
    assert created.json() | {"message": ""} == {
        "error": "bad_request",
        "message": "",
        "field": "Upload-Length",
    }
    location = client.post("/api/uploads", headers={**TUS, **creator, "Upload-Length": "5"})
    patched = client.patch(
        location.headers["location"],
        content=b"12345",
        headers={
            **TUS,
            **creator,
            "Upload-Offset": raw.encode("utf-8"),
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert (patched.status_code, patched.json()["field"]) == (400, "Upload-Offset")


# -- Upload-Metadata ------------------------------------------------------------------------


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.-]{0,15}", fullmatch=True), CLEAN_TEXT, max_size=6
    )
)
def test_upload_metadata_reads_back_what_a_client_encodes(metadata):
    assert upload_metadata(encode_upload_metadata(metadata), max_bytes=10**6) == metadata


@given(ANY_TEXT)
@settings(max_examples=300)
def test_upload_metadata_takes_anything_without_crashing(header):
    try:
        upload_metadata(header, max_bytes=1000)
    except BadRequest as refused:
        assert refused.field == "Upload-Metadata"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@pytest.mark.parametrize(
    "header",
    [
        "filename " + b64(b"a.mp4") + "\u00e9",  # a non-ASCII byte
        "filename not*base64",
        "filename YQ",  # padding missing
        "filename " + b64(b"\xff\xfe"),  # not UTF-8
        "filename " + b64(b"a\x00b"),  # NUL: PostgreSQL would refuse it
        "title " + b64(b"x" * 40_000),  # over MEGAMOVIE_MAX_UPLOAD_METADATA_BYTES
        "title " + b64(b"a") + ",title " + b64(b"b"),  # a key twice
        "title " + b64(b"a") + ", ,x",  # an empty key
    ],
)
def test_bad_upload_metadata_is_a_400_naming_the_header(client, creator, header):
    created = client.post(
        "/api/uploads",
        headers={
            **TUS,
            **creator,
            "Upload-Length": "5",
            "Upload-Metadata": header.encode("latin-1"),
        },
    )
    assert created.status_code == 400, created.text
    assert created.json()["field"] == "Upload-Metadata"
    assert created.headers["tus-resumable"] == "1.0.0"


@pytest.mark.parametrize("header", ["sha1 " + b64(b"x" * 19), "sha1 \u00e9\u00e9==", "md5 !!"])
def test_a_malformed_upload_checksum_is_a_400(client, creator, header):
    location = client.post(
        "/api/uploads", headers={**TUS, **creator, "Upload-Length": "5"}
    ).headers["location"]
    patched = client.patch(
        location,
        content=b"12345",
        headers={
            **TUS,
            **creator,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Upload-Checksum": header.encode("latin-1"),
        },
    )
    assert (patched.status_code, patched.json()["field"]) == (400, "Upload-Checksum")


# -- JSON bodies ----------------------------------------------------------------------------


@given(st.integers(min_value=MAX_JSON_DEPTH + 1, max_value=200_000), st.sampled_from("[{"))
@settings(max_examples=20)
def test_json_nested_past_the_limit_is_refused_without_recursing(depth, opener):
    closer = {"[": "]", "{": "}"}[opener]
    inner = (
        '{"a":' * depth + "1" + "}" * depth if opener == "{" else opener * depth + closer * depth
    )
    with pytest.raises(BadRequest, match="nested"):
        parse_json(inner.encode())


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-INT64_MAX, INT64_MAX) | CLEAN_TEXT,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(CLEAN_TEXT, kids, max_size=3),
        max_leaves=20,
    )
)
def test_parse_json_reads_back_any_json_of_clean_text(value):
    assert parse_json(json.dumps(value).encode()) == value


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_parse_json_answers_any_bytes_with_a_value_or_a_bad_request(raw):
    try:
        parse_json(raw)
    except BadRequest as refused:
        assert refused.field == "body"


def test_deeply_nested_json_on_the_token_and_position_endpoints_is_a_400(client):
    viewer = add_user(client, "v@example.org")
    video_id = add_ready_video(client, viewer.id)
    auth = bearer(client, "v@example.org")
    nested = b"[" * 100_000 + b"]" * 100_000
    token = client.post("/api/tokens", content=nested[:2000] + nested[-2000:])
    position = client.put(f"/api/videos/{video_id}/position", content=b"[" * 1000, headers=auth)
    assert (token.status_code, token.json()["error"]) == (400, "bad_request")
    assert (position.status_code, position.json()["error"]) == (400, "bad_request")
    assert "nested" in position.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"position": True},
        {"position": "12"},
        {"position": 12, "extra": 1},
        {},
        [12],
    ],
)
def test_the_position_endpoint_takes_only_its_shape(client, body):
    viewer = add_user(client, "v@example.org")
    video_id = add_ready_video(client, viewer.id)
    saved = client.put(
        f"/api/videos/{video_id}/position", json=body, headers=bearer(client, "v@example.org")
    )
    assert (saved.status_code, saved.json()["error"]) == (422, "validation_failed")


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"1e999", b"1" * 400, b"-" + b"9" * 20])
def test_numbers_json_does_not_have_are_a_400(client, number):
    viewer = add_user(client, "v@example.org")
    video_id = add_ready_video(client, viewer.id)
    saved = client.put(
        f"/api/videos/{video_id}/position",
        content=b'{"position": ' + number + b"}",
        headers=bearer(client, "v@example.org"),
    )
    assert saved.status_code == 400, saved.text


# -- text -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["email", "password"])
@pytest.mark.parametrize("bad", ["\ud800", "a\x00b", "\udfff@example.org"])
def test_broken_text_in_a_token_request_is_a_400_with_a_message(client, field, bad):
    add_user(client, "c@example.org")
    body = {"email": "c@example.org", "password": PASSWORD, field: bad}
    # json.dumps writes a lone surrogate as the escape \\ud800, as a hostile client would.
    answer = client.post("/api/tokens", content=json.dumps(body).encode())
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_request"
    assert "not text" in answer.json()["message"]


@pytest.mark.parametrize("field", ["email", "password", "display_name"])
def test_control_characters_in_the_signup_form_are_refused_on_the_form(client, field):
    token = csrf_from(client.get("/signup").text)
    values = {
        "email": "new@example.org",
        "password": PASSWORD,
        "display_name": "Ann",
        field: "a\x00",
    }
    answer = client.post("/signup", data={"csrf_token": token, "role": "viewer", **values})
    assert answer.status_code == 400
    assert "not text" in answer.text


@pytest.mark.anyio
@pytest.mark.parametrize("email", ["\ud800@example.org", "a\x00@example.org"])
async def test_accounts_refuse_broken_text_whatever_the_entry_point(engine, settings, email):
    with pytest.raises(ValidationFailed, match="not text"):
        await create_user(engine, settings, email=email, password=PASSWORD)
    with pytest.raises(ValidationFailed, match="not text"):
        await create_user(engine, settings, email="ok@example.org", password="\ud800" * 12)


def test_a_non_ascii_csrf_header_is_refused_not_a_crash(client):
    add_user(client, "c@example.org")
    log_in(client, "c@example.org")
    answer = client.put(
        "/api/videos/x/position", json={"position": 1}, headers={"X-CSRF-Token": "é".encode()}
    )
    assert (answer.status_code, answer.json()["error"]) == (403, "csrf_failed")


# -- the 500 --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/videos", "/"])
def test_an_unexpected_error_keeps_the_security_headers(app, path):
    with TestClient(app, raise_server_exceptions=False) as client:

        async def rename(old: str, new: str) -> None:
            async with app.state.services.engine.begin() as conn:
                await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))

        client.portal.call(rename, "videos", "videos_away")
        try:
            crashed = client.get(path)
        finally:
            client.portal.call(rename, "videos_away", "videos")
        metrics = app.state.services.metrics.render({})
    assert crashed.status_code == 500
    assert "reference" in crashed.text
    assert crashed.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert crashed.headers["x-content-type-options"] == "nosniff"
    assert crashed.headers["x-frame-options"] == "DENY"
    assert crashed.headers["cache-control"] == "no-store"
    assert 'megamovie_http_requests_total{method="GET",status="500"} 1' in metrics


CONTROL_CHARACTERS = [f"%{c:02X}" for c in (*range(0x20), 0x7F)]


def test_a_control_character_in_any_path_parameter_is_a_400(client):
    """Every route of the app, every method, every path parameter holding %00 (or another
    control character): a 400 naming the address, before any handler or database sees it."""
    from starlette.routing import Route

    from portal.app import build_routes

    templated = [r for r in build_routes() if isinstance(r, Route) and r.param_convertors]
    assert len(templated) > 10, "the route table was not read"
    for route in templated:
        for n, method in enumerate(sorted(route.methods or {"GET"})):
            char = CONTROL_CHARACTERS[n % len(CONTROL_CHARACTERS)]
            path = re.sub(r"\{[^}]+\}", f"Ab{char}cD", route.path)
            answer = client.request(method, path)
            assert answer.status_code == 400, (method, path, answer.status_code)
            if method != "HEAD":
                assert said_bad_path(answer), (method, path)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
    control=st.sampled_from(CONTROL_CHARACTERS),
    after=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
)
def test_no_path_with_a_control_character_reaches_the_app(client, before, control, after):
    # Not "//...": a client reads that as a host name, not a path.
    path = "/" + quote(before, safe="/").lstrip("/") + control + quote(after, safe="/")
    answer = client.get(path)
    assert answer.status_code == 400, path
    assert said_bad_path(answer), path


QUERY_CONTROL_CHARACTERS = [c for c in CONTROL_CHARACTERS if c not in ("%09", "%0A", "%0D")]


@pytest.mark.parametrize(
    "address",
    ["/api/videos?q=a{}b", "/api/videos?cursor={}", "/api/videos?sort=new{}", "/?q={}",
     "/?page=1{}", "/login?next=/{}", "/api/videos?{}=1", "/api/me?x={}"],
)  # fmt: skip
def test_a_control_character_in_a_query_is_a_400(client, address):
    for char in QUERY_CONTROL_CHARACTERS:
        answer = client.get(address.format(char))
        assert answer.status_code == 400, (address, char, answer.status_code)
        assert said_bad_query(answer), (address, char)


def test_tabs_and_line_breaks_in_a_search_are_fine(client):
    for char in ("%09", "%0A", "%0D", "+"):
        answer = client.get(f"/api/videos?q=night{char}train")
        assert answer.status_code == 200, (char, answer.text)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    control=st.sampled_from(QUERY_CONTROL_CHARACTERS),
    after=st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    name=st.sampled_from(["q", "sort", "cursor", "page", "after", "stream", "next"]),
)
def test_no_query_with_a_control_character_reaches_the_app(client, before, control, after, name):
    query = f"{name}={quote(before, safe='')}{control}{quote(after, safe='')}"
    for path in ("/api/videos", "/"):
        answer = client.get(f"{path}?{query}")
        assert answer.status_code == 400, query
        assert said_bad_query(answer), query


def said_bad_query(answer) -> bool:
    if answer.headers["content-type"].startswith("application/json"):
        return answer.json()["error"] == "bad_query"
    return "query" in answer.text and "control character" in answer.text


def said_bad_path(answer) -> bool:
    """The refusal, as JSON under /api/ and as a page elsewhere."""
    if answer.headers["content-type"].startswith("application/json"):
        return answer.json()["error"] == "bad_path"
    return "control character" in answer.text
