"""Defensive probing: what is in an upload, and is it safe and sane to transcode?

Order matters. Cheap checks first (size, magic numbers), then ffprobe with the demuxer we
detected forced on it, then a decode of the first frame and of the last seconds, which is
what tells a complete file from one cut short by a failed upload.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio

from transcoder.errors import (
    CorruptMedia,
    EmptyFile,
    ImplausibleDuration,
    NoDecodableStream,
    TooLarge,
    TooLong,
    TooManyFrames,
    TooManyStreams,
)
from transcoder.formats import sniff_format
from transcoder.guard import Guard
from transcoder.ladder import output_fps
from transcoder.limits import MediaLimits
from transcoder.process import first_error, input_args, run

_AUDIO_ONLY_DEMUXERS = frozenset({"mp3", "aac", "wav", "flac"})


@dataclass(frozen=True)
class MediaInfo:
    #: The demuxer we detected and force on every later ffmpeg run.
    format: str
    duration: float
    has_video: bool
    has_audio: bool
    #: Display dimensions: after rotation and non-square pixels are applied.
    width: int
    height: int
    #: Display rotation stored in the file (0, 90, 180 or 270); ffmpeg applies it when decoding.
    rotation: int
    fps: float
    video_bitrate: int | None
    audio_bitrate: int | None
    video_codec: str | None
    audio_codec: str | None
    audio_channels: int | None
    size_bytes: int
    #: Timestamp of the first frame; MPEG-TS files rarely start at zero.
    start_time: float = 0.0
    #: Container indexes of the chosen streams (the default-flagged ones when there are
    #: several), so every later run maps the same picture and the same soundtrack.
    video_index: int | None = None
    audio_index: int | None = None
    #: Interlaced fields (DV, broadcast captures): must be deinterlaced before scaling.
    interlaced: bool = False
    #: The soundtrack's codec profile as ffprobe names it ("LC", "HE-AAC", ...) and its
    #: sample rate: with the codec and channels, whether it can go out as it came in.
    audio_profile: str | None = None
    audio_sample_rate: int | None = None

    @property
    def video_map(self) -> str:
        return f"0:{self.video_index}" if self.video_index is not None else "0:v:0"

    @property
    def audio_map(self) -> str:
        return f"0:{self.audio_index}" if self.audio_index is not None else "0:a:0"


async def probe(
    path: Path, limits: MediaLimits, *, ffprobe: str = "ffprobe", guard: Guard | None = None
) -> MediaInfo:
    """Inspect `path` or raise a `MediaRejected` subclass saying what is wrong with it.

    `guard`, if given, is told about every ffprobe process group while it runs.
    """
    size = (await anyio.Path(path).stat()).st_size
    if size == 0:
        raise EmptyFile()
    if limits.max_file_bytes is not None and size > limits.max_file_bytes:
        raise TooLarge("The file is larger than the maximum upload size.")
    demuxer = sniff_format(path)
    data = await _ffprobe_json(
        [
            ffprobe,
            "-v",
            "error",
            "-hide_banner",
            "-show_format",
            "-show_streams",
            "-of",
            "json",
            *input_args(path, demuxer),
        ],
        limits,
        guard,
    )
    info, main_end = _media_info(data, demuxer, size, limits)
    await _check_decodes(path, info, main_end, limits, ffprobe, guard)
    return info


async def _ffprobe_json(
    args: list[str], limits: MediaLimits, guard: Guard | None
) -> dict[str, Any]:
    result = await run(args, time_limit=limits.probe_timeout, max_stdout=4 << 20, guard=guard)
    if result.timed_out:
        raise CorruptMedia("The file could not be read in a reasonable time; it may be damaged.")
    if result.overflowed:
        raise CorruptMedia("The file carries an unreasonable amount of metadata.")
    if result.returncode != 0:
        raise CorruptMedia()
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise CorruptMedia() from None
    if not isinstance(data, dict):
        raise CorruptMedia()
    return data


def _media_info(
    data: dict[str, Any], demuxer: str, size: int, limits: MediaLimits
) -> tuple[MediaInfo, float]:
    """The facts, and where the main stream (video, else audio) should end."""
    streams: list[dict[str, Any]] = data.get("streams") or []
    fmt: dict[str, Any] = data.get("format") or {}
    if len(streams) > limits.max_streams:
        raise TooManyStreams(
            f"The file contains {len(streams)} tracks; at most {limits.max_streams} are allowed."
        )
    # Cover art in MP3/MP4 is a "video" stream of one still picture: not a video.
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    video = _pick(v for v in videos if _decodable(v) and _int(v.get("width")) > 0)
    audio = _pick(a for a in audios if _decodable(a))
    if demuxer in _AUDIO_ONLY_DEMUXERS:
        video = None
    if video is None and audio is None:
        raise NoDecodableStream()

    start = _float(fmt.get("start_time")) or 0.0
    duration = _float(fmt.get("duration")) or max(
        (_float(s.get("duration")) or 0.0 for s in (video, audio) if s), default=0.0
    )
    if not duration or duration <= 0 or not math.isfinite(duration):
        raise CorruptMedia("The file does not say how long it is; it may be damaged.")
    if duration > limits.max_duration:
        raise TooLong(
            f"The video lasts {_hms(duration)}; the maximum is {_hms(limits.max_duration)}."
        )
    if size < duration * limits.min_bytes_per_second:
        # Checked before anything is decoded: the claim alone decides what the job would cost.
        raise ImplausibleDuration(
            f"The file holds {_amount(size)} but claims to last {_hms(duration)}: far too "
            f"little data for that long (a real recording has at least "
            f"{limits.min_bytes_per_second:g} bytes for every second). It may be damaged or "
            "made to look longer than it is; export it again and re-upload it."
        )

    width = height = rotation = 0
    fps = 0.0
    if video is not None:
        _check_pixels(video, limits)
        width, height, rotation = _display_size(video)
        if width * height > limits.max_pixels:
            raise TooLarge(
                f"The picture is shown at {width}x{height}; the maximum is "
                f"{limits.max_pixels:,} pixels (for example 3840x2160)."
            )
        fps = _frame_rate(video)
        frames = math.ceil(duration * output_fps(fps))
        if frames > limits.max_output_frames:
            raise TooManyFrames(
                f"The video would become {frames:,} frames ({_hms(duration)} at "
                f"{output_fps(fps):g} frames per second); the most we convert is "
                f"{limits.max_output_frames:,}. Upload a shorter video or a lower frame rate."
            )

    audio_bitrate = _int(audio.get("bit_rate")) or None if audio else None
    video_bitrate = _int(video.get("bit_rate")) or None if video else None
    if video is not None and video_bitrate is None and len(videos) == 1:
        # Matroska and MPEG-TS rarely state per-stream rates; the overall rate minus the
        # sound is a fair estimate and is only used as a ceiling for the ladder.
        total = _int(fmt.get("bit_rate")) or int(size * 8 / duration)
        video_bitrate = max(total - (audio_bitrate or 0), 0) or None
    main = video if video is not None else audio
    assert main is not None
    # A stream may legitimately end before the container (a short picture track under a
    # longer soundtrack); its own duration, when the container states one, is the promise.
    main_end = start + (_float(main.get("duration")) or duration)
    return MediaInfo(
        format=demuxer,
        duration=duration,
        has_video=video is not None,
        has_audio=audio is not None,
        width=width,
        height=height,
        rotation=rotation,
        fps=fps,
        video_bitrate=video_bitrate,
        audio_bitrate=audio_bitrate,
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        audio_channels=_int(audio.get("channels")) or None if audio else None,
        size_bytes=size,
        start_time=start,
        video_index=_int(video.get("index")) if video else None,
        audio_index=_int(audio.get("index")) if audio else None,
        interlaced=video is not None and video.get("field_order") in ("tt", "bb", "tb", "bt"),
        audio_profile=audio.get("profile") if audio else None,
        audio_sample_rate=_int(audio.get("sample_rate")) or None if audio else None,
    ), main_end


async def _check_decodes(
    path: Path,
    info: MediaInfo,
    main_end: float,
    limits: MediaLimits,
    ffprobe: str,
    guard: Guard | None,
) -> None:
    """Decode the first frames, and read the packets of the last seconds, of the main stream;
    decode the first frames of the soundtrack beside a picture too.

    Headers can promise a full film while the data stops half-way (an MP4 with its index at
    the front, cut short); only reading the end proves the data is there. The end is checked
    with packets, not frames: after a seek into an unindexed stream (MPEG-TS) the decoder has
    no keyframe to start from, yet the packets are there. A soundtrack whose header says
    AAC-LC while its packets are noise would otherwise be copied into every rendition as it
    came (`ladder.audio_passthrough`), sent to players as noise.
    """
    selector = "v:0" if info.has_video else "a:0"
    sound = str(info.audio_index) if info.audio_index is not None else "a:0"
    # The last frame starts one frame before the end: seconds before it in a slideshow.
    frame = 1 / info.fps if info.has_video and info.fps > 0 else 0.0
    tail_start = max(main_end - 1.5 - frame, info.start_time)
    # Two runs, side by side: frames (decoding) only at the start; at the end packets alone,
    # which costs no decoding at all and stays cheap for a 4K film with 10-second GOPs.
    results: dict[str, dict[str, Any]] = {}

    async def check(name: str, stream: str, interval: str, entries: str) -> None:
        args = [
            ffprobe, "-v", "error", "-hide_banner", "-select_streams", stream,
            "-read_intervals", interval, "-show_entries", entries, "-of", "json",
            *input_args(path, info.format),
        ]  # fmt: skip
        results[name] = await _ffprobe_json(args, limits, guard)

    frames_entry = "frame=best_effort_timestamp_time"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(check, "head", selector, "%+#2", frames_entry)
            tg.start_soon(check, "tail", selector, f"{tail_start:.3f}%", "packet=pts_time")
            if info.has_video and info.has_audio:
                tg.start_soon(check, "sound", sound, "%+#4", frames_entry)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    head, tail = results["head"], results["tail"]
    if "sound" in results and not results["sound"].get("frames"):
        raise NoDecodableStream(
            "The sound in this file cannot be decoded: it may be damaged. Export the film "
            "again, or without its sound track."
        )
    frames = head.get("frames") or []
    packet_times = [
        t for t in (_float(p.get("pts_time")) for p in tail.get("packets") or []) if t is not None
    ]
    if not frames:
        raise NoDecodableStream(
            "The picture or sound in this file cannot be decoded; it may be damaged "
            "or use a format we do not support."
        )
    # The last packet starts one frame before the end; allow for long audio frames and
    # imprecise container durations, but not for missing seconds.
    last = max(packet_times, default=info.start_time)
    if last < main_end - max(1.0, 0.01 * info.duration) - frame:
        raise CorruptMedia(
            f"The file stops at {_hms(last - info.start_time)} although it claims to "
            f"last {_hms(info.duration)}: it was probably cut short during the upload."
        )


def _pick(candidates: Any) -> dict[str, Any] | None:
    items = list(candidates)
    defaults = [s for s in items if (s.get("disposition") or {}).get("default")]
    return (defaults or items or [None])[0]


def _decodable(stream: dict[str, Any]) -> bool:
    # ffprobe names a codec it has a decoder for; unknown ones come out missing or "none".
    return stream.get("codec_name") not in (None, "", "none", "unknown")


def _check_pixels(video: dict[str, Any], limits: MediaLimits) -> None:
    """The stored frame, not the displayed one, is what the decoder works on.

    A 16384x1024 frame flagged with 1:4 pixels displays as 4096x1024 yet costs sixteen
    megapixels to decode, and the display size ignores aspect ratios we find absurd. So the
    limit applies to the coded size (which codecs may pad to whole macroblocks) and the
    stored size too.
    """
    stored = (_int(video.get("width")), _int(video.get("height")))
    coded = (_int(video.get("coded_width")), _int(video.get("coded_height")))
    width, height = max((stored, coded), key=lambda size: size[0] * size[1])
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"The picture is stored as {width}x{height} pixels; the maximum is "
            f"{limits.max_pixels:,} pixels (for example 3840x2160)."
        )


def _display_size(video: dict[str, Any]) -> tuple[int, int, int]:
    width, height = _int(video.get("width")), _int(video.get("height"))
    sar = _ratio(video.get("sample_aspect_ratio"))
    if sar and sar != 1 and Fraction(1, 4) <= sar <= 4:
        width = round(width * sar)
    rotation = _rotation(video)
    if rotation in (90, 270):
        width, height = height, width
    return width, height, rotation


def _rotation(video: dict[str, Any]) -> int:
    degrees: float | None = None
    for side in video.get("side_data_list") or []:
        if side.get("side_data_type") == "Display Matrix" and "rotation" in side:
            degrees = _float(side.get("rotation"))
    if degrees is None:
        degrees = _float((video.get("tags") or {}).get("rotate"))
    if degrees is None:
        return 0
    return (round(degrees / 90) * 90) % 360


def _frame_rate(video: dict[str, Any]) -> float:
    """Frames per second as the file states it, slow ones included (a slideshow at one
    picture every ten seconds is 0.1); 0.0 when unknown. Above 1000 is a time base that
    leaked into the rate field, not a frame rate."""
    for key in ("avg_frame_rate", "r_frame_rate"):
        rate = _ratio(video.get(key))
        if rate and rate <= 1000:
            return float(rate)
    return 0.0


def _ratio(value: Any) -> Fraction | None:
    try:
        num, _, den = str(value).partition(":" if ":" in str(value) else "/")
        result = Fraction(int(num), int(den or 1))
    except (ValueError, ZeroDivisionError):
        return None
    return result if result > 0 else None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _amount(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    value = size / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
