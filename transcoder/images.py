"""Posters and storyboards (seek-preview sprite sheets) from a probed source."""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transcoder.errors import NoDecodableStream, TranscodeFailed
from transcoder.guard import Guard
from transcoder.probe import MediaInfo
from transcoder.process import compile_command, describe_failure, hardened_input, run
from transcoder.subtitles import vtt_timestamp

#: Candidate frames compared for the poster, spread over the first part of the film.
POSTER_CANDIDATES = 6
POSTER_MAX_WIDTH = 1280
_SAMPLE = (64, 36)  # tiny grey thumbnails are enough to judge how much a frame shows
#: A storyboard stays one image of sane size; long films get a coarser interval.
STORYBOARD_MAX_THUMBS = 100
_IMAGE_TIMEOUT = 300.0


@dataclass(frozen=True)
class Storyboard:
    sprite: Path
    #: WebVTT cues `sprite_uri#xywh=x,y,w,h`, one per interval.
    vtt: str
    columns: int
    rows: int
    interval: float
    tile_width: int
    tile_height: int


async def poster(
    source: Path,
    info: MediaInfo,
    out: Path,
    *,
    ffmpeg: str = "ffmpeg",
    guard: Guard | None = None,
) -> Path:
    """Write a representative frame to `out` (JPEG, or WebP if `out` ends in .webp).

    Films often open on black or a fade, and the middle of a frame-accurate "thumbnail" pick
    can still be dark; so we sample a few moments and keep the one with the most luma
    variance, which is the frame that shows the most.
    """
    if not info.has_video:
        raise NoDecodableStream("There is no picture in this file to make a poster from.")
    times = _poster_times(info)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".poster-") as tmp:
        folder = Path(tmp)
        args = poster_command(source, info, folder, out.suffix, ffmpeg=ffmpeg)
        result = await run(args, time_limit=_IMAGE_TIMEOUT, max_stdout=1 << 16, guard=guard)
        scores = {i: _variance(folder / f"{i}.gray") for i in range(len(times))}
        scored = {i: v for i, v in scores.items() if v is not None}
        if not scored:
            raise TranscodeFailed(
                describe_failure(
                    "The poster could not be made", _lines(result.stderr), _paths(source)
                )
            )
        best = max(scored, key=lambda i: scored[i])
        (folder / f"{best}{out.suffix}").replace(out)
    return out


def poster_command(
    source: Path, info: MediaInfo, folder: Path, suffix: str, *, ffmpeg: str = "ffmpeg"
) -> list[str]:
    """One ffmpeg run writing, for each candidate moment i, `i.gray` (a tiny grey sample to
    score) and `i<suffix>` (the full-size picture) into `folder`."""
    width = min(info.width, POSTER_MAX_WIDTH)
    height = max(2, round(width * info.height / info.width / 2) * 2)
    selector = info.video_map[2:]
    outputs = []
    for i, t in enumerate(_poster_times(info)):
        # Input seeking jumps to the keyframe before `t`: cheap even in a 4-hour film.
        picture = hardened_input(source, info.format, ss=f"{t:.3f}")[selector]
        outputs.append(
            picture.filter("scale", *_SAMPLE)
            .filter("format", "gray")
            .output(str(folder / f"{i}.gray"), f="rawvideo", **{"frames:v": 1})
        )
        outputs.append(
            picture.filter("scale", width, height)
            .filter("setsar", 1)
            .output(str(folder / f"{i}{suffix}"), **_image_codec(suffix), **{"frames:v": 1})
        )
    return compile_command(ffmpeg, *outputs)


async def storyboard(
    source: Path,
    info: MediaInfo,
    outdir: Path,
    *,
    interval: float | None = None,
    tile_width: int = 160,
    sprite_uri: str = "storyboard.jpg",
    ffmpeg: str = "ffmpeg",
    guard: Guard | None = None,
) -> Storyboard:
    """One sprite sheet of thumbnails every `interval` seconds, and the WebVTT that maps
    each stretch of time to its tile (`#xywh=`), as players show on the seek bar."""
    if not info.has_video:
        raise NoDecodableStream("There is no picture in this file to make a storyboard from.")
    if interval is None:
        interval = max(1.0, math.ceil(info.duration / STORYBOARD_MAX_THUMBS))
    count = max(1, math.ceil(info.duration / interval - 1e-9))
    if count > STORYBOARD_MAX_THUMBS:
        count = STORYBOARD_MAX_THUMBS
        interval = info.duration / count
    columns = min(10, count)
    rows = math.ceil(count / columns)
    tile_width -= tile_width % 2
    tile_height = max(2, round(tile_width * info.height / info.width / 2) * 2)
    sprite = outdir / Path(sprite_uri).name
    for keyframes_only in (True, False):
        # Decoding only keyframes makes long films several times faster; a file with too few
        # keyframes yields too few frames that way, so we fall back to decoding everything.
        args = storyboard_command(
            source, info, sprite, interval, (tile_width, tile_height), (columns, rows),
            keyframes_only=keyframes_only, ffmpeg=ffmpeg,
        )  # fmt: skip
        result = await run(args, time_limit=_IMAGE_TIMEOUT, max_stdout=1 << 16, guard=guard)
        if result.returncode == 0 and sprite.is_file():
            break
        sprite.unlink(missing_ok=True)
    else:
        raise TranscodeFailed(
            describe_failure(
                "The storyboard could not be made", _lines(result.stderr), _paths(source)
            )
        )
    cues = ["WEBVTT", ""]
    for i in range(count):
        start, end = i * interval, min((i + 1) * interval, info.duration)
        x, y = (i % columns) * tile_width, (i // columns) * tile_height
        cues += [
            f"{vtt_timestamp(round(start * 1000))} --> {vtt_timestamp(round(end * 1000))}",
            f"{sprite_uri}#xywh={x},{y},{tile_width},{tile_height}",
            "",
        ]
    return Storyboard(sprite, "\n".join(cues), columns, rows, interval, tile_width, tile_height)


def storyboard_command(
    source: Path,
    info: MediaInfo,
    sprite: Path,
    interval: float,
    tile: tuple[int, int],
    grid: tuple[int, int],
    *,
    keyframes_only: bool,
    ffmpeg: str = "ffmpeg",
) -> list[str]:
    """One ffmpeg run writing the whole sprite sheet: a frame every `interval` seconds,
    scaled to `tile`, laid out `grid` (columns x rows)."""
    options = {"skip_frame": "nokey"} if keyframes_only else {}
    picture = hardened_input(source, info.format, **options)[info.video_map[2:]]
    sheet = (
        picture.filter("fps", f"1/{interval:g}", start_time=f"{info.start_time:.3f}")
        .filter("scale", *tile)
        .filter("setsar", 1)
        .filter("tile", f"{grid[0]}x{grid[1]}")
    )
    output = sheet.output(str(sprite), **_image_codec(sprite.suffix), **{"frames:v": 1})
    return compile_command(ffmpeg, output)


def _poster_times(info: MediaInfo) -> list[float]:
    # Between 5% and 50% of the film: past opening titles, before spoilers.
    start, end = info.duration * 0.05, info.duration * 0.5
    step = (end - start) / max(1, POSTER_CANDIDATES - 1)
    return [info.start_time + start + i * step for i in range(POSTER_CANDIDATES)]


def _image_codec(suffix: str) -> dict[str, str | int]:
    if suffix.lower() == ".webp":
        return {"c:v": "libwebp", "quality": 80, "f": "webp"}
    return {"c:v": "mjpeg", "q:v": 3, "pix_fmt": "yuvj420p", "f": "image2", "update": 1}


def _variance(path: Path) -> float | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return statistics.pvariance(data) if len(data) == _SAMPLE[0] * _SAMPLE[1] else None


def _lines(stderr: bytes) -> list[str]:
    return stderr.decode("utf-8", "replace").splitlines()


def _paths(source: Path) -> list[str]:
    return [str(source.resolve()), str(source)]
