from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ffprobe_json
from transcoder.errors import NoDecodableStream
from transcoder.images import pictures, poster, storyboard
from transcoder.limits import MediaLimits
from transcoder.probe import probe

pytestmark = pytest.mark.anyio


def luma(image: Path, *, seek: float | None = None) -> bytes:
    """The picture as 64x36 grey bytes (for a video, the frame at `seek`)."""
    before = ["-ss", str(seek)] if seek is not None else []
    return subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            *before,
            "-i",
            str(image),
            "-frames:v",
            "1",
            "-vf",
            "scale=64:36,format=gray",
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


async def test_poster_skips_a_black_opening(clips: dict[str, Path], tmp_path: Path) -> None:
    source = clips["dark_opening.mp4"]
    info = await probe(source, MediaLimits())
    # The control: where a naive "frame at 5%" poster would land, the picture is black.
    assert statistics.pvariance(luma(source, seek=info.duration * 0.05)) < 10
    out = await poster(source, info, tmp_path / "poster.jpg")
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"
    assert statistics.pvariance(luma(out)) > 500
    stream = ffprobe_json(out, "-show_streams")["streams"][0]
    assert (stream["width"], stream["height"]) == (320, 180)
    assert os.listdir(tmp_path) == ["poster.jpg"]


async def test_poster_of_a_rotated_video_is_upright(clips: dict[str, Path], tmp_path: Path) -> None:
    source = clips["rotated.mp4"]
    out = await poster(source, await probe(source, MediaLimits()), tmp_path / "poster.jpg")
    stream = ffprobe_json(out, "-show_streams")["streams"][0]
    assert (stream["width"], stream["height"]) == (180, 320)


async def test_poster_can_be_webp(clips: dict[str, Path], tmp_path: Path) -> None:
    source = clips["landscape.mp4"]
    out = await poster(source, await probe(source, MediaLimits()), tmp_path / "poster.webp")
    data = out.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"


async def test_audio_has_no_poster(clips: dict[str, Path], tmp_path: Path) -> None:
    source = clips["audio_only.mp3"]
    with pytest.raises(NoDecodableStream):
        await poster(source, await probe(source, MediaLimits()), tmp_path / "poster.jpg")


async def test_storyboard_sprite_and_cues_match(clips: dict[str, Path], tmp_path: Path) -> None:
    source = clips["segmented.mp4"]  # 9 s
    board = await storyboard(
        source,
        await probe(source, MediaLimits()),
        tmp_path,
        interval=2.0,
        tile_width=160,
        sprite_uri="thumbs.jpg",
    )
    assert (board.columns, board.rows, board.interval) == (5, 1, 2.0)
    assert (board.tile_width, board.tile_height) == (160, 90)
    stream = ffprobe_json(board.sprite, "-show_streams")["streams"][0]
    assert (stream["width"], stream["height"]) == (5 * 160, 90)
    lines = board.vtt.splitlines()
    assert lines[0] == "WEBVTT"
    cues = [line for line in lines if "#xywh=" in line]
    assert cues == [f"thumbs.jpg#xywh={x},0,160,90" for x in range(0, 800, 160)]
    assert "00:00:08.000 --> 00:00:09.000" in lines  # the last cue ends with the film
    assert board.sprite == tmp_path / "thumbs.jpg"


async def test_storyboard_default_interval_wraps_rows(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = clips["segmented.mp4"]
    info = await probe(source, MediaLimits())
    board = await storyboard(source, info, tmp_path, interval=0.5)
    assert (board.columns, board.rows) == (10, 2)
    stream = ffprobe_json(board.sprite, "-show_streams")["streams"][0]
    assert (stream["width"], stream["height"]) == (1600, 180)
    assert (await storyboard(source, info, tmp_path / "..", tile_width=120)).interval == 1.0


@pytest.mark.parametrize("name", ["dark_opening.mp4", "dark_opening_one_keyframe.mp4"])
async def test_pictures_make_the_poster_and_storyboard_in_one_pass(
    clips: dict[str, Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    """From keyframes when they serve (x264 put one where the picture starts), from the
    frame-accurate poster when they cannot (one keyframe, on the black)."""
    source = clips[name]
    info = await probe(source, MediaLimits())
    made = await pictures(source, info, tmp_path)
    assert made.poster == tmp_path / "poster.jpg"
    assert made.poster.read_bytes()[:3] == b"\xff\xd8\xff"
    assert statistics.pvariance(luma(made.poster)) > 500  # not the black opening
    apart = await storyboard(source, info, tmp_path_factory.mktemp("apart"))
    assert made.storyboard.vtt == apart.vtt
    assert (made.storyboard.columns, made.storyboard.rows) == (apart.columns, apart.rows)
    sheet = ffprobe_json(made.storyboard.sprite, "-show_streams")["streams"][0]
    assert (sheet["width"], sheet["height"]) == (apart.columns * 160, apart.rows * 90)
    assert sorted(os.listdir(tmp_path)) == ["poster.jpg", "storyboard.jpg"]


async def test_pictures_of_a_sound_only_file_are_refused(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = clips["audio_only.mp3"]
    with pytest.raises(NoDecodableStream):
        await pictures(source, await probe(source, MediaLimits()), tmp_path)
