from __future__ import annotations

import dataclasses

import pytest

from transcoder.ladder import (
    Rendition,
    audio_passthrough,
    build_ladder,
    output_fps,
    video_bitrate_for,
)
from transcoder.probe import MediaInfo

SOURCE = MediaInfo(
    format="mov",
    duration=60.0,
    has_video=True,
    has_audio=True,
    width=1920,
    height=1080,
    rotation=0,
    fps=30.0,
    video_bitrate=None,
    audio_bitrate=None,
    video_codec="h264",
    audio_codec="aac",
    audio_channels=2,
    size_bytes=1,
)


def source(**changes: object) -> MediaInfo:
    return dataclasses.replace(SOURCE, **changes)  # type: ignore[arg-type]


def sizes(ladder: list[Rendition]) -> list[tuple[int, int]]:
    return [(r.width, r.height) for r in ladder]


def test_1080p_source_gets_every_rung_up_to_1080() -> None:
    ladder = build_ladder(source())
    assert [r.name for r in ladder] == ["240p", "360p", "480p", "720p", "1080p"]
    assert sizes(ladder) == [(426, 240), (640, 360), (854, 480), (1280, 720), (1920, 1080)]


def test_4k_source_stops_at_max_height() -> None:
    assert build_ladder(source(width=3840, height=2160))[-1].name == "2160p"
    assert build_ladder(source(width=3840, height=2160), max_height=1080)[-1].name == "1080p"


def test_never_upscales_between_rungs() -> None:
    ladder = build_ladder(source(width=1000, height=562))
    assert ladder[-1].name == "480p"
    assert all(r.width <= 1000 and r.height <= 562 for r in ladder)


def test_portrait_source_is_laddered_by_its_short_side() -> None:
    ladder = build_ladder(source(width=1080, height=1920))
    assert [r.name for r in ladder][-1] == "1080p"
    assert sizes(ladder)[-2:] == [(720, 1280), (1080, 1920)]


def test_dimensions_are_even_and_keep_the_aspect_ratio() -> None:
    for width, height in [(427, 241), (1918, 1037), (721, 1283), (2400, 1000)]:
        for r in build_ladder(source(width=width, height=height)):
            assert r.width % 2 == 0 and r.height % 2 == 0
            assert r.width <= width and r.height <= height
            assert r.width / r.height == pytest.approx(width / height, rel=0.02)


def test_source_smaller_than_240p_gets_one_rendition_at_its_own_even_size() -> None:
    ladder = build_ladder(source(width=321, height=181))
    assert sizes(ladder) == [(320, 180)]
    assert ladder[0].name == "180p"


def test_frame_rate_is_capped_at_60_by_an_integer_divisor() -> None:
    assert output_fps(120) == 60
    assert output_fps(100) == 50
    assert output_fps(59.94) == 59.94
    assert output_fps(23.976) == 23.976
    assert output_fps(0) == 30  # unknown
    assert output_fps(0.5) == output_fps(0.001) == 1  # slideshows: frames repeated up to 1 fps
    assert {r.fps for r in build_ladder(source(fps=120.0))} == {60.0}


@pytest.mark.parametrize(
    ("width", "height", "fps", "expected"),
    [(1920, 1080, 30, 5_000_000), (1280, 720, 30, 2_800_000), (640, 360, 30, 800_000)],
)
def test_bitrates_sit_on_the_anchors(width: int, height: int, fps: float, expected: int) -> None:
    assert video_bitrate_for(width, height, fps) == pytest.approx(expected, rel=0.02)


def test_small_pictures_get_more_bits_per_pixel_and_60fps_costs_less_than_double() -> None:
    def bpp(w: int, h: int) -> float:
        return video_bitrate_for(w, h, 30) / (w * h * 30)

    assert bpp(640, 360) > bpp(1280, 720) > bpp(1920, 1080) > bpp(3840, 2160)
    ratio = video_bitrate_for(1920, 1080, 60) / video_bitrate_for(1920, 1080, 30)
    assert 1.3 < ratio < 1.7


def test_no_rung_asks_for_more_than_the_source_carries() -> None:
    ladder = build_ladder(source(video_bitrate=1_000_000))
    assert max(r.video_bitrate for r in ladder) <= 1_200_000
    assert ladder[0].video_bitrate == 400_000  # already below the ceiling: untouched


def test_bandwidth_declares_peak_and_average_with_audio() -> None:
    for r in build_ladder(source()):
        assert r.audio_bitrate == 128_000
        assert r.average_bandwidth > r.video_bitrate + r.audio_bitrate
        assert r.bandwidth > r.average_bandwidth
        assert r.codecs.startswith("avc1.6400") and r.codecs.endswith(",mp4a.40.2")


def test_codecs_carry_the_h264_level_the_picture_needs() -> None:
    at30 = {r.name: r.codecs.split(",")[0] for r in build_ladder(source(fps=30.0))}
    at60 = {r.name: r.codecs.split(",")[0] for r in build_ladder(source(fps=60.0))}
    assert (at30["360p"], at60["360p"]) == ("avc1.64001e", "avc1.64001f")  # 3.0, 3.1
    assert (at30["1080p"], at60["1080p"]) == ("avc1.640028", "avc1.64002a")  # 4.0, 4.2


def test_no_audio_gives_video_only_renditions() -> None:
    ladder = build_ladder(source(has_audio=False))
    assert all(r.audio_bitrate == 0 and "mp4a" not in r.codecs for r in ladder)


def test_audio_only_source_gives_one_audio_rendition() -> None:
    ladder = build_ladder(source(has_video=False, width=0, height=0, fps=0.0), audio_bitrate=96_000)
    assert len(ladder) == 1
    audio = ladder[0]
    assert (audio.name, audio.video_bitrate, audio.audio_bitrate) == ("audio", 0, 96_000)
    assert audio.codecs == "mp4a.40.2"
    assert not audio.has_video


AAC_LC: dict[str, object] = {
    "audio_codec": "aac",
    "audio_profile": "LC",
    "audio_channels": 2,
    "audio_sample_rate": 48_000,
    "audio_bitrate": 160_000,
}


def test_a_soundtrack_players_take_as_it_is_goes_out_at_its_own_rate() -> None:
    info = source(**AAC_LC)
    assert audio_passthrough(info)
    ladder = build_ladder(info)
    assert all(r.audio_bitrate == 160_000 for r in ladder)
    # BANDWIDTH carries the copied rate, not the encoder's 128 kb/s.
    assert ladder[0].average_bandwidth > build_ladder(source())[0].average_bandwidth


@pytest.mark.parametrize(
    "change",
    [
        {"audio_profile": "HE-AAC"},
        {"audio_profile": None},
        {"audio_channels": 6},
        {"audio_sample_rate": 32_000},
        {"audio_codec": "opus"},
        {"audio_bitrate": None},
        {"audio_bitrate": 320_000},
        {"has_audio": False},
    ],
)
def test_any_other_soundtrack_is_encoded(change: dict[str, object]) -> None:
    info = source(**{**AAC_LC, **change})
    assert not audio_passthrough(info)
    expected = 128_000 if info.has_audio else 0
    assert all(r.audio_bitrate == expected for r in build_ladder(info))
