"""Posters and storyboards (seek-preview sprite sheets) from a probed source."""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
STORYBOARD_TILE_WIDTH = 160
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
    selector = info.video_map[2:]
    outputs = []
    for i, t in enumerate(_poster_times(info)):
        # Input seeking jumps to the keyframe before `t`: cheap even in a 4-hour film.
        picture = hardened_input(source, info.format, ss=f"{t:.3f}")[selector]
        outputs += _candidate(picture, picture, info, folder / str(i), suffix)
    return compile_command(ffmpeg, *outputs)


def _candidate(to_sample: Any, to_keep: Any, info: MediaInfo, stem: Path, suffix: str) -> list[Any]:
    """A poster candidate's two outputs: `stem.gray`, the tiny grey sample that scores it,
    and `stem<suffix>`, the picture at most POSTER_MAX_WIDTH wide."""
    width = min(info.width, POSTER_MAX_WIDTH)
    height = max(2, round(width * info.height / info.width / 2) * 2)
    sample = to_sample.filter("scale", *_SAMPLE).filter("format", "gray")
    picture = to_keep.filter("scale", width, height).filter("setsar", 1)
    return [
        sample.output(f"{stem}.gray", f="rawvideo", **{"frames:v": 1}),
        picture.output(f"{stem}{suffix}", **_image_codec(suffix), **{"frames:v": 1}),
    ]


async def storyboard(
    source: Path,
    info: MediaInfo,
    outdir: Path,
    *,
    interval: float | None = None,
    tile_width: int = STORYBOARD_TILE_WIDTH,
    sprite_uri: str = "storyboard.jpg",
    ffmpeg: str = "ffmpeg",
    guard: Guard | None = None,
) -> Storyboard:
    """One sprite sheet of thumbnails every `interval` seconds, and the WebVTT that maps
    each stretch of time to its tile (`#xywh=`), as players show on the seek bar."""
    if not info.has_video:
        raise NoDecodableStream("There is no picture in this file to make a storyboard from.")
    board = storyboard_layout(info, interval, tile_width)
    sprite = outdir / Path(sprite_uri).name
    for keyframes_only in (True, False):
        # Decoding only keyframes makes long films several times faster; a file with too few
        # keyframes yields too few frames that way, so we fall back to decoding everything.
        args = storyboard_command(
            source, info, sprite, board.interval, board.tile, board.grid,
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
    return _storyboard(sprite, sprite_uri, info, board)


@dataclass(frozen=True)
class StoryboardLayout:
    """A storyboard's layout: `count` tiles, one every `interval` seconds."""

    interval: float
    count: int
    tile: tuple[int, int]
    grid: tuple[int, int]


def storyboard_layout(info: MediaInfo, interval: float | None, tile_width: int) -> StoryboardLayout:
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
    return StoryboardLayout(interval, count, (tile_width, tile_height), (columns, rows))


def _storyboard(
    sprite: Path, sprite_uri: str, info: MediaInfo, board: StoryboardLayout
) -> Storyboard:
    """The WebVTT cues of a made sprite sheet."""
    (tile_width, tile_height), (columns, rows) = board.tile, board.grid
    cues = ["WEBVTT", ""]
    for i in range(board.count):
        start, end = i * board.interval, min((i + 1) * board.interval, info.duration)
        x, y = (i % columns) * tile_width, (i // columns) * tile_height
        cues += [
            f"{vtt_timestamp(round(start * 1000))} --> {vtt_timestamp(round(end * 1000))}",
            f"{sprite_uri}#xywh={x},{y},{tile_width},{tile_height}",
            "",
        ]
    return Storyboard(
        sprite, "\n".join(cues), columns, rows, board.interval, tile_width, tile_height
    )


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
    board = StoryboardLayout(interval, grid[0] * grid[1], tile, grid)
    return compile_command(ffmpeg, _sheet(picture, info, sprite, board))


def _sheet(picture: Any, info: MediaInfo, sprite: Path, board: StoryboardLayout) -> Any:
    """The ffmpeg-python output writing the sprite sheet from the `picture` stream."""
    sheet = (
        picture.filter("fps", f"1/{board.interval:g}", start_time=f"{info.start_time:.3f}")
        .filter("scale", *board.tile)
        .filter("setsar", 1)
        .filter("tile", f"{board.grid[0]}x{board.grid[1]}")
    )
    return sheet.output(str(sprite), **_image_codec(sprite.suffix), **{"frames:v": 1})


@dataclass(frozen=True)
class Pictures:
    poster: Path
    storyboard: Storyboard


async def pictures(
    source: Path,
    info: MediaInfo,
    outdir: Path,
    *,
    poster_name: str = "poster.jpg",
    sprite_uri: str = "storyboard.jpg",
    ffmpeg: str = "ffmpeg",
    guard: Guard | None = None,
) -> Pictures:
    """The poster and the storyboard from one pass over the film's keyframes.

    `poster()` and `storyboard()` each read the film; made apart, the poster's frame-accurate
    candidates cost a 1080p film about four CPU seconds, most of a storyboard's. Here one
    ffmpeg run decodes keyframes only, tiles them into the sprite sheet, and takes as poster
    candidates the first keyframe at or after each of `poster()`'s moments, scored the same
    way. A file whose keyframes cannot serve (too few to tell the moments apart, or none
    where the sheet needs them) gets `poster()` or `storyboard()` after all, as before.
    """
    if not info.has_video:
        raise NoDecodableStream("There is no picture in this file to make a poster from.")
    times = _poster_times(info)
    board = storyboard_layout(info, None, STORYBOARD_TILE_WIDTH)
    sprite = outdir / Path(sprite_uri).name
    poster_out = outdir / poster_name
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".pictures-") as tmp:
        folder = Path(tmp)
        args = pictures_command(
            source, info, folder, sprite, board, Path(poster_name).suffix, ffmpeg=ffmpeg
        )
        result = await run(args, time_limit=_IMAGE_TIMEOUT, max_stdout=1 << 16, guard=guard)
        samples = {i: _sample(folder / f"{i}.gray") for i in range(len(times))}
        found = {i: sample for i, sample in samples.items() if sample is not None}
        if result.returncode == 0 and len(set(found.values())) > 1:
            best = max(found, key=lambda i: statistics.pvariance(found[i]))
            (folder / f"{best}{poster_out.suffix}").replace(poster_out)
    if not poster_out.is_file():
        await poster(source, info, poster_out, ffmpeg=ffmpeg, guard=guard)
    if result.returncode == 0 and sprite.is_file():
        made = _storyboard(sprite, sprite_uri, info, board)
    else:
        sprite.unlink(missing_ok=True)
        made = await storyboard(
            source, info, outdir, sprite_uri=sprite_uri, ffmpeg=ffmpeg, guard=guard
        )
    return Pictures(poster_out, made)


def pictures_command(
    source: Path,
    info: MediaInfo,
    folder: Path,
    sprite: Path,
    board: StoryboardLayout,
    suffix: str,
    *,
    ffmpeg: str = "ffmpeg",
) -> list[str]:
    """One ffmpeg run over the keyframes: the sprite sheet (as `storyboard_command`), and
    for each poster moment i, `i.gray` and `i<suffix>` in `folder` from the first keyframe
    at or after it."""
    picture = hardened_input(source, info.format, skip_frame="nokey")[info.video_map[2:]]
    outputs = [_sheet(picture, info, sprite, board)]
    for i, t in enumerate(_poster_times(info)):
        # Frame times start at 0 (ffmpeg takes the file's start time off); trim ends the
        # branch after its one frame, so no later keyframe is scaled for it.
        moment = f"gte(t,{max(0.0, t - info.start_time):.3f})"
        chosen = picture.filter("select", moment).filter("trim", end_frame=1).split()
        outputs += _candidate(chosen[0], chosen[1], info, folder / str(i), suffix)
    return compile_command(ffmpeg, *outputs)


def _poster_times(info: MediaInfo) -> list[float]:
    # Between 5% and 50% of the film: past opening titles, before spoilers.
    start, end = info.duration * 0.05, info.duration * 0.5
    step = (end - start) / max(1, POSTER_CANDIDATES - 1)
    return [info.start_time + start + i * step for i in range(POSTER_CANDIDATES)]


def _image_codec(suffix: str) -> dict[str, str | int]:
    if suffix.lower() == ".webp":
        return {"c:v": "libwebp", "quality": 80, "f": "webp"}
    return {"c:v": "mjpeg", "q:v": 3, "pix_fmt": "yuvj420p", "f": "image2", "update": 1}


def _sample(path: Path) -> bytes | None:
    """A candidate's grey thumbnail, if ffmpeg wrote a whole one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if len(data) == _SAMPLE[0] * _SAMPLE[1] else None


def _variance(path: Path) -> float | None:
    sample = _sample(path)
    return statistics.pvariance(sample) if sample is not None else None


def _lines(stderr: bytes) -> list[str]:
    return stderr.decode("utf-8", "replace").splitlines()


def _paths(source: Path) -> list[str]:
    return [str(source.resolve()), str(source)]
