"""Segments and HTTP conditions: Range (RFC 9110 14), If-Match, If-None-Match, If-Range.

A real encrypted object in the vault, fetched through the real stream endpoint with a real
grant; no transcode is needed for what is only HTTP.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from portal.app import create_app
from portal.layout import segment_path
from tests.helpers import add_ready_video, add_user, fast_settings

PLAIN = os.urandom(3000)


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
    """(client, url of a 3000-byte segment) for a ready film."""
    settings = fast_settings(tmp_path_factory.mktemp("segments"))
    with TestClient(create_app(settings)) as client:
        maker = add_user(client, "maker@example.org", role="creator")
        video_id = add_ready_video(client, maker.id)
        vault = client.app.state.services.vault
        client.portal.call(vault.create_key, video_id)
        client.portal.call(vault.put, video_id, segment_path("180p", 0), PLAIN)
        grant = client.get(f"/api/videos/{video_id}/playback").json()
        base = grant["url"].removesuffix("/master.m3u8")
        yield client, f"{base}/180p/000000.m4s"


def get(segment, **headers: str):
    client, url = segment
    return client.get(url, headers=headers)


def test_a_plain_get_sends_the_whole_segment_with_its_etag(segment):
    whole = get(segment)
    assert (whole.status_code, whole.content) == (200, PLAIN)
    assert whole.headers["etag"].startswith('"')
    assert whole.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("header", ["items=0-10", "bytes 0-10", "Bytes=x-y", "bytes=5-3", "bytes="])
def test_an_unknown_range_unit_or_a_malformed_range_is_ignored(segment, header):
    """RFC 9110 14.2: a server MAY ignore Range; an unknown unit MUST be ignored."""
    answer = get(segment, Range=header)
    assert (answer.status_code, answer.content) == (200, PLAIN)
    assert "content-range" not in answer.headers


def test_if_none_match_star_is_304(segment):
    answer = get(segment, **{"If-None-Match": "*"})
    assert (answer.status_code, answer.content) == (304, b"")


def test_if_none_match_takes_weak_tags_and_lists(segment):
    etag = get(segment).headers["etag"]
    assert get(segment, **{"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert get(segment, **{"If-None-Match": '"other"'}).status_code == 200


def test_if_match_mismatch_is_412(segment):
    etag = get(segment).headers["etag"]
    assert get(segment, **{"If-Match": '"other"'}).status_code == 412
    assert get(segment, **{"If-Match": f"W/{etag}"}).status_code == 412  # strong comparison
    assert get(segment, **{"If-Match": etag}).status_code == 200
    assert get(segment, **{"If-Match": "*"}).status_code == 200
    # If-Match is decided before Range.
    assert get(segment, **{"If-Match": '"other"', "Range": "bytes=0-9"}).status_code == 412


def test_if_range_with_another_etag_sends_the_whole_segment(segment):
    answer = get(segment, Range="bytes=0-9", **{"If-Range": '"stale"'})
    assert (answer.status_code, answer.content) == (200, PLAIN)


def expected(first: int | None, last: int | None, size: int) -> tuple[int, bytes]:
    """What RFC 9110 asks for `bytes=first-last` (`bytes=-last` when first is None)."""
    if first is None:
        assert last is not None
        if last == 0:
            return 416, b""
        return 206, PLAIN[max(0, size - last) :]
    if last is not None and last < first:
        return 200, PLAIN  # invalid: ignored
    if first >= size:
        return 416, b""
    return 206, PLAIN[first : size if last is None else last + 1]


@given(first=st.none() | st.integers(0, 4000), last=st.none() | st.integers(0, 4000))
@settings(max_examples=150)
def test_any_byte_range_is_answered_as_rfc_9110_says(segment, first, last):
    if first is None and last is None:
        last = 0
    spec = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    answer = get(segment, Range=spec)
    status, body = expected(first, last, len(PLAIN))
    assert answer.status_code == status, spec
    if status == 206:
        assert answer.content == body
        start = len(PLAIN) - len(body) if first is None else first
        assert answer.headers["content-range"] == (
            f"bytes {start}-{start + len(body) - 1}/{len(PLAIN)}"
        )
    elif status == 416:
        assert answer.headers["content-range"] == f"bytes */{len(PLAIN)}"
    else:
        assert answer.content == PLAIN


@given(st.text(max_size=30))
@settings(max_examples=150)
def test_any_range_header_is_a_slice_a_416_or_the_whole_segment(segment, header):
    answer = get(segment, Range=header.encode("utf-8"))
    assert answer.status_code in (200, 206, 416)
    if answer.status_code == 200:
        assert answer.content == PLAIN
