"""Real clips made once per session with real ffmpeg; no mocks anywhere in these tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import X264, run_ffmpeg

LAVFI_VIDEO = "testsrc2=size={size}:rate={rate}"
SINE = "sine=frequency=440:sample_rate=48000"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        # The transcoder is nothing without ffmpeg: a missing binary is a failure, never a skip.
        pytest.fail(f"{tool} is not installed; install the Debian ffmpeg package")
    return path


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return _require("ffmpeg")


@pytest.fixture(scope="session")
def ffprobe() -> str:
    return _require("ffprobe")


def _video(size: str = "320x180", rate: int = 24, seconds: float = 2) -> list[str]:
    return ["-f", "lavfi", "-i", LAVFI_VIDEO.format(size=size, rate=rate), "-t", str(seconds)]


def _audio(seconds: float = 2) -> list[str]:
    return ["-f", "lavfi", "-i", SINE, "-t", str(seconds)]


AAC = ["-c:a", "aac", "-b:a", "96k"]

#: name -> ffmpeg arguments (inputs and encoding) before the output path.
CLIPS: dict[str, list[str]] = {
    "landscape.mp4": [*_video(), *_audio(), *X264, *AAC, "-movflags", "+faststart"],
    # ffmpeg's default: the moov index written last, after the media data.
    "moov_at_end.mp4": [*_video(), *_audio(), *X264, *AAC],
    "portrait.mp4": [*_video("180x320"), *_audio(), *X264, *AAC],
    "tall_portrait.mp4": [*_video("360x640"), *_audio(), *X264, *AAC],
    # 4:4:4 lets x264 store odd dimensions, as some screen recorders do.
    "odd.mp4": [*_video(), "-vf", "format=yuv444p,scale=321:181,setsar=1", *X264[:-1], "yuv444p"],
    "no_audio.mp4": [*_video(), *X264],
    "audio_only.mp3": [*_audio(), "-c:a", "libmp3lame", "-b:a", "96k"],
    "segmented.mp4": [*_video("640x360", seconds=9), *_audio(9), *X264, *AAC],
    "variable_rate.mkv": [
        *_video(seconds=3),
        "-vf",
        "setpts='if(lt(N,24),N/24,1+(N-24)/12)/TB'",
        "-fps_mode",
        "vfr",
        *X264,
    ],
    "webm.webm": [
        *_video(),
        *_audio(),
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "300k",
        "-c:a",
        "libopus",
    ],
    "mpegts.ts": [*_video(), *_audio(), *X264, *AAC],
    "hd.mp4": [*_video("1920x1080", 30), *_audio(), *X264, *AAC],
    # First second black: a naive first-frame poster would be black.
    "dark_opening.mp4": [
        *_video(seconds=4),
        "-vf",
        "drawbox=c=black:t=fill:enable='lt(t,1)'",
        *X264,
    ],
    # The same with its one keyframe on the black (no scene-cut keyframe where the picture
    # starts), as some screen recorders write: every keyframe shows nothing.
    "dark_opening_one_keyframe.mp4": [
        *_video(seconds=4),
        "-vf",
        "drawbox=c=black:t=fill:enable='lt(t,1)'",
        *X264,
        "-g",
        "1000",
        "-sc_threshold",
        "0",
    ],
    "subtitles_only.mkv": ["-i", "{srt}", "-c:s", "copy"],
    "interlaced.mp4": [*_video(rate=25), *X264, "-flags", "+ilme+ildct", "-top", "1"],
    # Two soundtracks, the second flagged default (a dubbed film with the dub preferred).
    "two_soundtracks.mkv": [
        *_video(),
        *_audio(),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=880",
        "-t",
        "2",
        "-map",
        "0",
        "-map",
        "1",
        "-map",
        "2",
        *X264,
        *AAC,
        "-disposition:a:0",
        "0",
        "-disposition:a:1",
        "default",
    ],
}


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory, ffmpeg: str, ffprobe: str) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    srt = folder / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    made: dict[str, Path] = {}
    for name, args in CLIPS.items():
        out = folder / name
        run_ffmpeg(*(a.replace("{srt}", str(srt)) for a in args), str(out))
        made[name] = out
    rotated = folder / "rotated.mp4"
    # Phones store portrait video as landscape pixels plus a display matrix.
    run_ffmpeg(
        "-i", str(made["landscape.mp4"]), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated)
    )
    made["rotated.mp4"] = rotated
    return made


@pytest.fixture
def clip(clips: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """A private copy, so a test may damage or delete it."""

    def copy(name: str) -> Path:
        target = tmp_path / "upload" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(clips[name], target)
        return target

    return copy
