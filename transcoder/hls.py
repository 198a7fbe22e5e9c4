"""One ffmpeg process encodes every rendition into fMP4 HLS; finished segments go to a callback.

The caller (the portal's worker) encrypts and stores each segment and deletes the plaintext
while encoding goes on, so a film is watchable after its first segments and plaintext never
piles up on disk. How we know a segment is finished: ffmpeg's HLS muxer closes a segment and
only then rewrites that variant's playlist (atomically, through a temp file, because the
playlist type is EVENT). A segment listed in the playlist is therefore complete; the last ones
are listed when ffmpeg exits. ffmpeg's playlists are only this signal: the real ones are
rendered by `transcoder.playlists` from the durations returned here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import ffmpeg

from transcoder.errors import TranscodeFailed, TranscodeTimeout
from transcoder.guard import Guard
from transcoder.ladder import Rendition, audio_passthrough
from transcoder.mp4 import codecs_of
from transcoder.playlists import parse_playlist
from transcoder.probe import MediaInfo
from transcoder.process import (
    compile_command,
    describe_failure,
    first_error,
    hardened_input,
    spawn,
)

_PLAYLIST = "index.m3u8"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
#: How often the variant playlists are checked; a segment waits at most this long.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class HlsOptions:
    segment_seconds: float = 4.0
    #: The first segments are this short, then double up to segment_seconds (1, 1, 2, 4,
    #: 4...): a viewer can start about a second of video after the encode starts.
    first_segment_seconds: float = 1.0
    #: x264 preset of the top rung, whose quality is the film's best.
    preset: str = "veryfast"
    #: x264 preset of every rung below the top (never slower than `preset`); None: `preset`.
    #: The rungs below a 1080p top are 45% of the pixels; superfast keeps CABAC, B-frames
    #: and the deblocking filter, and brings a 5-rung 1080p30 ladder past real time on two
    #: cores (benchmarks/transcode.py).
    lower_preset: str | None = "superfast"
    #: x264 options added to the top rung's preset: a longer rate-control lookahead and
    #: trellis quantisation keep the top rung at or above the SSIM and PSNR it had with a
    #: 2-s-keyframe, one-preset ladder (trellis is most of their cost: without it PSNR
    #: drops 0.4 dB); diamond motion search instead of hexagon gives 3% of the ladder's
    #: CPU back at no measured loss (benchmarks/transcode.py, variants tuned/trellis/dia).
    top_x264_params: str = "rc-lookahead=20:trellis=1:me=dia"
    #: Wall-time limit in seconds for the whole encode; None for no limit.
    timeout: float | None = None
    ffmpeg: str = "ffmpeg"
    #: Encoder threads; 0 lets x264 choose.
    threads: int = 0


@dataclass(frozen=True)
class Segment:
    rendition: str
    #: Position in the rendition's playlist, from 0; -1 for the init segment.
    index: int
    #: Seconds of media; 0.0 for the init segment.
    duration: float
    path: Path
    kind: Literal["init", "media"]
    #: For an init segment, the RFC 6381 codecs of what was encoded ("avc1.42c01e,mp4a.40.2"),
    #: read from the segment itself; empty for media segments.
    codecs: str = ""


@dataclass(frozen=True)
class Progress:
    #: 0.0 to 1.0 of the source's duration.
    fraction: float
    #: Encoding speed as a multiple of real time, when ffmpeg knows it.
    speed: float | None
    #: Seconds of output written so far.
    out_time: float


@dataclass(frozen=True)
class HlsResult:
    #: The renditions asked for, each with `codecs` replaced by what was really encoded.
    renditions: list[Rendition]
    #: Media segments of each rendition, in playlist order, with their durations.
    segments: dict[str, list[Segment]]
    #: Init segment of each rendition.
    inits: dict[str, Segment]
    #: Seconds of output, the longest rendition's.
    duration: float


OnSegment = Callable[[Segment], Awaitable[None]]
OnProgress = Callable[[Progress], Awaitable[None] | None]


async def transcode(
    source: Path,
    info: MediaInfo,
    renditions: list[Rendition],
    workdir: Path,
    options: HlsOptions,
    on_segment: OnSegment,
    on_progress: OnProgress | None = None,
    *,
    guard: Guard | None = None,
) -> HlsResult:
    """Encode `source` into `renditions` under `workdir`, handing each segment to `on_segment`.

    Each segment (the init segment of a rendition first) is handed over exactly once, fully
    written; after `on_segment` returns the caller owns the file and may delete it. Whatever
    else ffmpeg wrote is removed on every exit path. Raises `TranscodeFailed` or
    `TranscodeTimeout`, or whatever a callback raised. To stop a transcode, cancel the
    enclosing cancel scope: ffmpeg's process group is killed and reaped and every file not
    handed over is removed before the cancellation propagates. `guard`, if given, is told
    about ffmpeg's process group while it runs.
    """
    job = _Job(source, info, renditions, workdir, options, on_segment, on_progress, guard)
    return await job.run()


def build_command(
    source: Path,
    info: MediaInfo,
    renditions: list[Rendition],
    workdir: Path,
    options: HlsOptions,
) -> list[str]:
    """The ffmpeg argument list (no shell) that writes all renditions under `workdir`.

    The graph is built with ffmpeg-python and compiled to a list; the hardening (forced
    demuxer, file protocol only, `file:` prefix, -nostdin) comes from `transcoder.process`.
    """
    if not renditions:
        raise ValueError("no renditions to encode")
    for r in renditions:
        if not _SAFE_NAME.match(r.name):
            raise ValueError(f"rendition name {r.name!r} is not a safe directory name")
    if options.first_segment_seconds <= 0 or options.segment_seconds <= 0:
        raise ValueError("segment lengths must be positive")
    videos = [r for r in renditions if r.has_video]
    if videos and not info.has_video:
        raise ValueError("video renditions requested for a source without video")
    source_node = hardened_input(source, info.format)
    sound = source_node[info.audio_map[2:]]  # "0:2" -> stream "2" of input 0
    pictures = _scaled(source_node, videos, info) if videos else []
    streams: list[Any] = []
    opts: dict[str, str | int | float] = {}
    stream_map: list[str] = []
    audio_index = 0
    copy_audio = audio_passthrough(info)
    presets = rung_presets(videos, options) if videos else []
    top = max(videos, key=lambda r: r.width * r.height) if videos else None
    for i, (r, picture, preset) in enumerate(zip(videos, pictures, presets, strict=True)):
        streams.append(picture)
        entry = f"v:{i}"
        if r.audio_bitrate and info.has_audio:
            streams.append(sound)
            if not copy_audio:
                opts[f"b:a:{audio_index}"] = r.audio_bitrate
            entry += f",a:{audio_index}"
            audio_index += 1
        opts |= {
            f"b:v:{i}": r.video_bitrate,
            f"maxrate:v:{i}": r.maxrate,
            f"bufsize:v:{i}": 2 * r.video_bitrate,
            f"level:v:{i}": r.level,
            # Twice the longest segment: x264 never adds a keyframe of its own, which the
            # muxer would take for a segment boundary (see segment_starts).
            f"g:v:{i}": 2 * math.ceil(options.segment_seconds * r.fps),
        }
        opts[f"preset:v:{i}"] = preset
        if r is top and options.top_x264_params:
            opts[f"x264-params:v:{i}"] = options.top_x264_params
        stream_map.append(f"{entry},name:{r.name}")
    for r in renditions:
        if not r.has_video:
            streams.append(sound)
            if not copy_audio:
                opts[f"b:a:{audio_index}"] = r.audio_bitrate
            stream_map.append(f"a:{audio_index},name:{r.name}")
            audio_index += 1
    if videos:
        opts |= {
            "c:v": "libx264",
            "profile:v": "high",
            # Keyframes at the segment boundaries, the same instants in every rendition, and
            # nowhere else: players switch rendition at any boundary.
            "force_key_frames": _keyframe_expression(options),
            "sc_threshold": 0,
            "threads": options.threads,
        }
    if audio_index:
        # A soundtrack players take as it is goes out as it came in (one copy per rendition,
        # no encoder per rung; MPEG-TS carries it in ADTS frames, which MP4 stores without
        # their headers); any other is encoded to AAC-LC stereo 48 kHz.
        copy = {"c:a": "copy", "bsf:a": "aac_adtstoasc"}
        opts |= copy if copy_audio else {"c:a": "aac", "ac": 2, "ar": 48000}
    out = workdir.resolve()
    opts |= {
        # Never more output than probe() accepted, whatever the timestamps do further on.
        "t": f"{info.duration + 1:.3f}",
        # Phone videos carry GPS positions and device names in their metadata.
        "map_metadata": -1,
        "map_chapters": -1,
        "max_muxing_queue_size": 4096,
        "hls_time": f"{_hls_time(options, bool(videos)):g}",
        "hls_list_size": 0,
        "hls_playlist_type": "event",
        "hls_segment_type": "fmp4",
        "hls_flags": "independent_segments+temp_file",
        "hls_fmp4_init_filename": "init.mp4",
        "hls_segment_filename": str(out / "%v" / "seg_%05d.m4s"),
        "var_stream_map": " ".join(stream_map),
    }
    output = ffmpeg.output(*streams, str(out / "%v" / _PLAYLIST), f="hls", **opts)
    return compile_command(options.ffmpeg, output, progress=True)


#: x264's presets, fastest first.
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow", "placebo",
)  # fmt: skip


def rung_presets(videos: list[Rendition], options: HlsOptions) -> list[str]:
    """The x264 preset of each video rendition: `preset` for the largest, `lower_preset`
    (or `preset` if that is faster) for the others."""
    for name in (options.preset, options.lower_preset):
        if name is not None and name not in X264_PRESETS:
            raise ValueError(f"unknown x264 preset {name!r}")
    lower = options.lower_preset or options.preset
    lower = min(lower, options.preset, key=X264_PRESETS.index)
    top = max(range(len(videos)), key=lambda i: videos[i].width * videos[i].height)
    return [options.preset if i == top else lower for i in range(len(videos))]


def segment_starts(options: HlsOptions, count: int) -> list[float]:
    """Where the first `count` video segments start: 0, then F, 2F, 4F... while at most
    segment_seconds S, then every S (F=1, S=4: 0, 1, 2, 4, 8, 12: segments 1, 1, 2, 4, 4)."""
    first, length = options.first_segment_seconds, options.segment_seconds
    starts = [0.0]
    boundary = first
    while boundary <= length and boundary > starts[-1] and len(starts) < count:
        starts.append(boundary)
        boundary *= 2
    while len(starts) < count:
        starts.append(starts[-1] + length)
    return starts


def _ramp(options: HlsOptions) -> list[float]:
    """The boundaries of the short opening segments (without 0)."""
    starts = segment_starts(options, 64)
    return [t for t in starts[1:] if t <= options.segment_seconds and t < starts[-1]]


def _keyframe_expression(options: HlsOptions) -> str:
    """x264 keyframe n (n_forced) goes on the first frame at or after segment_starts()[n].

    ffmpeg 5.1's `-hls_init_time` would be the obvious tool, but with an unbounded playlist
    (which EVENT playlists are) it makes every segment that short. So the muxer is told to
    cut often (`_hls_time`) and we decide where it can: it cuts at the first keyframe after
    each multiple of hls_time, and we place keyframes only at the boundaries we want.
    """
    ramp = _ramp(options)
    last = ramp[-1] if ramp else 0.0
    # Grid after the ramp: last + (n - len(ramp)) * S; nested ifs for the ramp itself.
    expression = f"{last:g}+(n_forced-{len(ramp)})*{options.segment_seconds:g}"
    for n, t in reversed(list(enumerate(ramp, start=1))):
        expression = f"if(lte(n_forced,{n}),{t:g},{expression})"
    expression = f"if(eq(n_forced,0),0,{expression})"
    # A millisecond of slack: t is a double, and 30 * (1/30) may come out just under 1.
    return f"expr:gte(t+0.001,{expression})"


def _hls_time(options: HlsOptions, video: bool) -> float:
    """The muxer ends segment n at the first keyframe at or after (n + 1) * hls_time. With
    keyframes only at our boundaries, any hls_time below every boundary's n-th multiple cuts
    at each of them; 0.9 x the first length leaves room for timestamps that arrive a frame
    early. Audio-only output has no keyframes to steer by: every packet is one, so it gets
    plain segment_seconds segments."""
    if not video or options.first_segment_seconds >= options.segment_seconds:
        return options.segment_seconds
    return 0.9 * options.first_segment_seconds


def _scaled(source: Any, videos: list[Rendition], info: MediaInfo) -> list[Any]:
    """One filtered picture stream per video rendition, in `videos` order."""
    picture = source[info.video_map[2:]]
    if info.interlaced:
        # Scaling interlaced fields smears them into combs; deinterlace first, only the
        # frames flagged as interlaced.
        picture = picture.filter("bwdif", mode="send_frame", deint="interlaced")
    # One constant output rate (variable-rate phone clips included) keeps keyframes aligned;
    # when every rung shares it, convert once before splitting.
    shared = len({r.fps for r in videos}) == 1
    top = max(videos, key=lambda r: r.width * r.height)
    if not shared:
        branches = picture.split()
        return [
            _finish(_scale(branches[i].filter("fps", _rate(r.fps)), r, top))
            for i, r in enumerate(videos)
        ]
    picture = picture.filter("fps", _rate(videos[0].fps))
    # A cascade: the top rung and the next one from the source, each smaller rung from the
    # one above it (1080p -> 720p -> 480p -> 360p -> 240p), so every area scaler reads a
    # picture at most about twice its output. Scaling each rung from the source cost a 1080p
    # ladder 15% more in scaling (3% of the whole encode); the lower rungs lose about 0.002
    # SSIM before encoding against a Lanczos scale of the source (docs/transcoder.md).
    order = sorted(videos, key=lambda r: r.width * r.height, reverse=True)
    made: dict[int, Any] = {}
    feeds = picture.split() if len(order) > 1 else [picture]
    above = None
    for n, r in enumerate(order):
        scaled = _scale(feeds[n] if n < 2 else above, r, top)
        if n == 0 or n == len(order) - 1:  # the top; the smallest (nothing below)
            made[id(r)] = _finish(scaled)
        else:
            branches = scaled.split()
            made[id(r)], above = _finish(branches[0]), branches[1]
    return [made[id(r)] for r in videos]


def _scale(picture: Any, r: Rendition, top: Rendition) -> Any:
    # Below the top, area averaging: a proper downscaling filter at half bicubic's cost.
    # The top rung keeps swscale's default (and is not scaled at all when it is the source's
    # own size).
    flags = {} if r is top else {"flags": "area"}
    return picture.filter("scale", r.width, r.height, **flags)


def _finish(picture: Any) -> Any:
    return picture.filter("setsar", 1).filter("format", "yuv420p")


def _rate(fps: float) -> str:
    # 29.97 must be 30000/1001 exactly, or timestamps drift against the audio.
    frac = Fraction(fps).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


@dataclass
class _Job:
    source: Path
    info: MediaInfo
    renditions: list[Rendition]
    workdir: Path
    options: HlsOptions
    on_segment: OnSegment
    on_progress: OnProgress | None
    guard: Guard | None
    segments: dict[str, list[Segment]] = field(default_factory=dict)
    inits: dict[str, Segment] = field(default_factory=dict)
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    async def run(self) -> HlsResult:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        args = build_command(self.source, self.info, self.renditions, self.workdir, self.options)
        timeout = math.inf if self.options.timeout is None else self.options.timeout
        try:
            async with spawn(args, guard=self.guard) as proc:
                with anyio.move_on_after(timeout) as deadline:
                    await self._follow(proc)
                if deadline.cancelled_caught:
                    raise TranscodeTimeout()
                returncode = await proc.wait()
            if returncode != 0:
                raise TranscodeFailed(self._failure_reason(returncode))
            await self._hand_over()
            unfinished = [r.name for r in self.renditions if not self._ended(r.name)]
            if unfinished:
                raise TranscodeFailed("The conversion stopped before the end of the video.")
        finally:
            # Runs after `spawn` has killed and reaped ffmpeg, so nothing writes any more.
            self._remove_leftovers()
        durations = [sum(s.duration for s in segs) for segs in self.segments.values()]
        encoded = [
            dataclasses.replace(r, codecs=self.inits[r.name].codecs) for r in self.renditions
        ]
        return HlsResult(encoded, self.segments, self.inits, max(durations, default=0.0))

    async def _follow(self, proc: anyio.abc.Process) -> None:
        """Hand over segments while ffmpeg runs; return once it exited and its pipes drained."""
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with anyio.create_task_group() as tg:
                # Both pipes are drained all the time, or ffmpeg would block writing to one.
                tg.start_soon(self._read_progress, proc.stdout)
                tg.start_soon(self._read_stderr, proc.stderr)
                while True:
                    with anyio.move_on_after(POLL_SECONDS):
                        await proc.wait()
                    if proc.returncode is not None:
                        break
                    await self._hand_over()
        except BaseExceptionGroup as group:
            # One failure (a callback's, usually) is the story; the task group's wrapping is
            # not something callers should have to unpack.
            raise first_error(group) from None

    async def _hand_over(self) -> None:
        """Give the caller every segment that ffmpeg has listed and we have not yet given."""
        for r in self.renditions:
            # A cancelled caller gets nothing more, even from a callback that never yields.
            await anyio.lowlevel.checkpoint_if_cancelled()
            playlist = self.workdir / r.name / _PLAYLIST
            try:
                parsed = parse_playlist(playlist.read_text())
            except (FileNotFoundError, ValueError):
                continue  # not written yet, or caught mid-rename: next poll will see it
            folder = playlist.parent
            if r.name not in self.inits and parsed.init_uri:
                path = folder / parsed.init_uri
                init = Segment(r.name, -1, 0.0, path, "init", _encoded_codecs(path))
                await self.on_segment(init)
                self.inits[r.name] = init
            done = self.segments.setdefault(r.name, [])
            for index in range(len(done), len(parsed.segments)):
                uri, duration = parsed.segments[index]
                segment = Segment(r.name, index, duration, folder / uri, "media")
                await anyio.lowlevel.checkpoint_if_cancelled()
                await self.on_segment(segment)
                done.append(segment)

    def _ended(self, name: str) -> bool:
        try:
            return parse_playlist((self.workdir / name / _PLAYLIST).read_text()).ended
        except (FileNotFoundError, ValueError):
            return False

    async def _read_progress(self, stream: anyio.abc.ByteReceiveStream) -> None:
        values: dict[str, str] = {}
        lines = _LineSplitter()
        async for chunk in stream:
            for line in lines.feed(chunk):
                key, _, value = line.strip().partition("=")
                values[key] = value
                if key != "progress" or self.on_progress is None:
                    continue
                out_time = max(0.0, _number(values.get("out_time_us")) / 1e6)
                speed = _number(values.get("speed", "").rstrip("x")) or None
                duration = self.info.duration or 1.0
                fraction = 1.0 if value == "end" else min(out_time / duration, 1.0)
                result = self.on_progress(Progress(fraction, speed, out_time))
                if inspect.isawaitable(result):
                    await result

    async def _read_stderr(self, stream: anyio.abc.ByteReceiveStream) -> None:
        lines = _LineSplitter()
        async for chunk in stream:
            self.stderr_tail.extend(lines.feed(chunk))
        self.stderr_tail.extend(lines.feed(b"\n"))

    def _failure_reason(self, returncode: int) -> str:
        hide = [
            str(self.source.resolve()),
            str(self.source),
            str(self.workdir.resolve()),
            str(self.workdir),
        ]
        reason = describe_failure("The video could not be converted", self.stderr_tail, hide)
        return reason if "ffmpeg:" in reason else f"{reason[:-1]} (exit {returncode})."

    def _remove_leftovers(self) -> None:
        """Delete what ffmpeg wrote that is not the caller's: playlists, temp files, stale
        files of an earlier attempt, and after a failure the segments never handed over.
        Rendition folders go too once the caller has taken everything out of them."""
        handed = {s.path for segs in self.segments.values() for s in segs}
        handed |= {s.path for s in self.inits.values()}
        for r in self.renditions:
            folder = self.workdir / r.name
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                ours = path.name.startswith((_PLAYLIST, "seg_", "init")) or path.suffix == ".tmp"
                if ours and path not in handed:
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()


def _encoded_codecs(init: Path) -> str:
    try:
        return codecs_of(init.read_bytes())
    except ValueError as exc:
        # ffmpeg wrote it moments ago; if we cannot read it, nothing downstream could.
        raise TranscodeFailed(f"The conversion wrote an unreadable stream ({exc}).") from None


class _LineSplitter:
    """Bytes in, complete lines out; a line that never ends is cut, not hoarded."""

    MAX_LINE = 1 << 16

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        self._pending = self._pending[-self.MAX_LINE :]
        return [line.decode("utf-8", "replace") for line in lines]


def _number(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0
