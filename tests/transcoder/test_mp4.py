from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_ffmpeg
from transcoder.mp4 import _esds, codecs_of


def init_segment(folder: Path, *encoding: str) -> bytes:
    """The init segment ffmpeg's HLS muxer writes for a 1 s clip encoded with `encoding`."""
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=24", "-f", "lavfi", "-i", "sine",
        "-t", "1", *encoding, "-f", "hls", "-hls_segment_type", "fmp4",
        "-hls_fmp4_init_filename", "init.mp4", "-hls_segment_filename",
        str(folder / "s%d.m4s"), str(folder / "index.m3u8"),
    )  # fmt: skip
    return (folder / "init.mp4").read_bytes()


def test_main_profile_at_level_2_1_with_aac_lc(tmp_path: Path) -> None:
    init = init_segment(
        tmp_path, "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-level:v",
        "2.1", "-c:a", "aac",
    )  # fmt: skip
    # x264 flags Main streams constraint_set1 ("also decodable as Main"): 0x40, not 0x00.
    assert codecs_of(init) == "avc1.4d4015,mp4a.40.2"


def test_video_only_has_no_audio_codec(tmp_path: Path) -> None:
    init = init_segment(tmp_path, "-map", "0:v", "-c:v", "libx264", "-preset", "ultrafast")
    assert codecs_of(init).startswith("avc1.42c0")
    assert "," not in codecs_of(init)


def test_escaped_audio_object_types_are_decoded() -> None:
    # ES descriptor > decoder config (MPEG-4 audio) > AudioSpecificConfig whose 5-bit object
    # type is the escape value 31, followed by 6 bits: 32 + 10 = 42 (USAC).
    specific = bytes([0x05, 2, 0b11111_001, 0b010_00000])
    config = bytes([0x04, 13 + len(specific), 0x40, 0x15]) + bytes(11) + specific
    es = bytes([0x03, 3 + len(config), 0, 1, 0]) + config
    assert _esds(es) == "mp4a.40.42"


def test_a_cut_init_segment_is_an_error_not_a_guess(tmp_path: Path) -> None:
    init = init_segment(tmp_path, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac")
    with pytest.raises(ValueError, match="runs past the end"):
        codecs_of(init[: len(init) // 2])
