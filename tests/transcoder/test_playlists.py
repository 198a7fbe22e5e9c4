from __future__ import annotations

import pytest

from transcoder.ladder import Rendition
from transcoder.playlists import master_playlist, media_playlist, parse_playlist

RENDITIONS = [
    Rendition(
        "360p",
        640,
        360,
        23.976,
        800_000,
        128_000,
        1_400_000,
        950_000,
        "avc1.64001e,mp4a.40.2",
        "3.0",
    ),
    Rendition(
        "720p",
        1280,
        720,
        23.976,
        2_800_000,
        128_000,
        4_500_000,
        3_000_000,
        "avc1.64001f,mp4a.40.2",
        "3.1",
    ),
]


def test_master_playlist_lists_every_variant_with_its_attributes() -> None:
    text = master_playlist(RENDITIONS, lambda r: f"{r.name}/index.m3u8?token=abc")
    assert text.startswith("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n")
    parsed = parse_playlist(text)
    assert [v.uri for v in parsed.variants] == [
        "720p/index.m3u8?token=abc",
        "360p/index.m3u8?token=abc",
    ]
    top = parsed.variants[0].attributes
    assert top == {
        "BANDWIDTH": "4500000",
        "AVERAGE-BANDWIDTH": "3000000",
        "RESOLUTION": "1280x720",
        "FRAME-RATE": "23.976",
        "CODECS": "avc1.64001f,mp4a.40.2",
    }


def test_audio_only_variant_has_no_resolution() -> None:
    audio = Rendition("audio", 0, 0, 0.0, 0, 128_000, 131_000, 131_000, "mp4a.40.2")
    attrs = parse_playlist(master_playlist([audio], lambda r: "a.m3u8")).variants[0].attributes
    assert "RESOLUTION" not in attrs and "FRAME-RATE" not in attrs
    assert attrs["CODECS"] == "mp4a.40.2"


def test_growing_media_playlist_is_an_event_without_endlist() -> None:
    text = media_playlist(
        [(0, 4.0), (1, 4.0)], init_uri="init.mp4", uri_for=lambda i: f"seg/{i}", ended=False
    )
    assert "#EXT-X-PLAYLIST-TYPE:EVENT\n" in text
    assert "#EXT-X-ENDLIST" not in text
    assert '#EXT-X-MAP:URI="init.mp4"\n' in text


def test_finished_media_playlist_is_vod_with_endlist_and_round_trips() -> None:
    text = media_playlist(
        [(0, 4.0), (1, 4.0), (2, 1.5)],
        init_uri="init.mp4",
        uri_for=lambda i: f"seg/{i}?t=x",
        ended=True,
    )
    parsed = parse_playlist(text)
    assert parsed.ended and parsed.playlist_type == "VOD" and parsed.version == 7
    assert parsed.init_uri == "init.mp4"
    assert parsed.segments == [("seg/0?t=x", 4.0), ("seg/1?t=x", 4.0), ("seg/2?t=x", 1.5)]
    assert parsed.target_duration == 4


def test_target_duration_covers_the_longest_segment_rounded() -> None:
    text = media_playlist([(0, 4.0), (1, 4.6)], init_uri="i", uri_for=str, ended=True)
    assert parse_playlist(text).target_duration == 5
    fixed = media_playlist([(0, 4.0)], init_uri="i", uri_for=str, target_duration=6, ended=True)
    assert "#EXT-X-TARGETDURATION:6\n" in fixed


def test_uri_with_a_newline_cannot_inject_tags() -> None:
    with pytest.raises(ValueError):
        media_playlist([(0, 4.0)], init_uri="i", uri_for=lambda i: "a\n#EXT-X-ENDLIST", ended=False)


def test_parser_ignores_a_half_written_last_line() -> None:
    parsed = parse_playlist("#EXTM3U\n#EXTINF:4.0,\nseg_00000.m4s\n#EXTINF:4.0,\nseg_000")
    assert parsed.segments == [("seg_00000.m4s", 4.0)]
