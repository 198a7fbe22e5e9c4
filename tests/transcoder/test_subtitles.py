from __future__ import annotations

import os

import pytest

from transcoder.errors import SubtitleError
from transcoder.subtitles import to_webvtt

SRT = (
    b"1\r\n00:00:01,500 --> 00:00:03,000\r\nHello <b>world</b>\r\n\r\n"
    b'2\r\n00:00:04,000 --> 00:00:05,250\r\n{\\an8}<font color="red">Top</font> line\r\n'
    b"second line\r\n"
)


def test_srt_becomes_webvtt_with_dotted_timestamps() -> None:
    assert to_webvtt(SRT) == (
        "WEBVTT\n\n"
        "00:00:01.500 --> 00:00:03.000\nHello <b>world</b>\n\n"
        "00:00:04.000 --> 00:00:05.250\nTop line\nsecond line\n"
    )


def test_webvtt_is_kept_with_its_safe_cue_tags_and_settings() -> None:
    vtt = (
        b"WEBVTT - my film\n\nNOTE made by hand\n\nintro\n00:01.000 --> 00:02.000 "
        b"align:start position:10% onload:x\n<v Bob>Hi <c.yellow>there</c> <i>you</i>\n"
    )
    assert to_webvtt(vtt) == (
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.000 align:start position:10%\n"
        "<v Bob>Hi <c.yellow>there</c> <i>you</i>\n"
    )


def test_script_and_html_are_removed_and_text_is_escaped() -> None:
    srt = (
        b"1\n00:00:01,000 --> 00:00:02,000\n<script>alert(document.cookie)</script>"
        b"<img src=x onerror=alert(1)>Tom & Jerry <3 --> fun\n"
    )
    out = to_webvtt(srt)
    assert "script" not in out and "alert" not in out and "<img" not in out
    assert "Tom &amp; Jerry &lt;3 &#45;&#45;&gt; fun" in out


def test_style_blocks_are_dropped() -> None:
    vtt = (
        b"WEBVTT\n\nSTYLE\n::cue { background-image: url(https://evil.example/x) }\n\n"
        b"00:00.000 --> 00:01.000\nok\n"
    )
    out = to_webvtt(vtt)
    assert "evil" not in out and "STYLE" not in out


def test_cues_are_sorted_and_impossible_ones_dropped() -> None:
    srt = (
        b"1\n00:00:05,000 --> 00:00:06,000\nsecond\n\n"
        b"2\n00:00:01,000 --> 00:00:02,000\nfirst\n\n"
        b"3\n00:00:03,000 --> 00:00:03,000\nzero length\n"
    )
    out = to_webvtt(srt)
    assert out.index("first") < out.index("second")
    assert "zero length" not in out


def test_windows_encoded_srt_is_read() -> None:
    srt = "1\n00:00:01,000 --> 00:00:02,000\nCafé\n".encode("cp1252")
    assert "Café" in to_webvtt(srt)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n",
        os.urandom(2048),
        b"\x00\x00\x01\xba" + bytes(100),
        b"Just some notes about my film, with no timings at all.\n",
        b"1\n00:00:01,000 --> soon\nbroken\n",
        b"1\n00:99:01,000 --> 00:99:02,000\nbad minutes\n",
    ],
)
def test_garbage_is_refused_with_a_subtitle_error(data: bytes) -> None:
    with pytest.raises(SubtitleError) as caught:
        to_webvtt(data)
    assert caught.value.reason
