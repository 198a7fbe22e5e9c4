"""The rendition ladder: a pure function from a probed source to what we encode.

Rungs are named by the picture's short side, so a portrait phone video gets the same rungs as
a landscape one. We never upscale, keep the aspect ratio, use even dimensions (4:2:0 chroma
needs them) and cap the frame rate at 60.

Bitrates follow a bits-per-pixel curve anchored on common practice for H.264 at 30 fps
(1080p ~5 Mb/s, 720p ~2.8, 360p ~0.8): small pictures need more bits per pixel than large
ones, and doubling the frame rate costs about 1.5x, not 2x, because consecutive frames are
alike. No rung asks for more than the source carries plus a margin: encoding a 1 Mb/s phone
clip at 5 Mb/s adds bytes, not quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: probe uses output_fps() to bound a job before it is accepted.
    from transcoder.probe import MediaInfo

RUNGS = (240, 360, 480, 720, 1080, 1440, 2160)
MAX_FPS = 60.0
#: Slower sources (slideshows, a podcast's still picture) are sped up to this by repeating
#: frames, so every keyframe interval and every segment holds pictures.
MIN_FPS = 1.0
#: When the file states no rate at all.
DEFAULT_FPS = 30.0

#: 30 fps bitrates for 16:9 pictures of each height; other sizes interpolate by pixel count.
_ANCHORS_30FPS = (
    (240, 400_000),
    (360, 800_000),
    (480, 1_400_000),
    (720, 2_800_000),
    (1080, 5_000_000),
    (1440, 8_000_000),
    (2160, 14_000_000),
)
_FPS_EXPONENT = 0.6
#: How far above the source's own bitrate a rung may go (re-encoding loses some efficiency).
SOURCE_MARGIN = 1.2
MIN_VIDEO_BITRATE = 100_000
#: Peak over average, enforced by the encoder's VBV (maxrate) and declared as BANDWIDTH.
PEAK_RATIO = 1.5
#: fMP4 boxes and per-sample headers on top of the elementary streams.
CONTAINER_OVERHEAD = 1.03
AUDIO_CODEC = "mp4a.40.2"  # AAC-LC


@dataclass(frozen=True)
class Rendition:
    #: "720p" (short side) for video renditions, "audio" for an audio-only stream.
    name: str
    width: int
    height: int
    fps: float
    #: Target average in bits/s; 0 for audio-only.
    video_bitrate: int
    audio_bitrate: int
    #: Peak bits/s including audio and container, for EXT-X-STREAM-INF BANDWIDTH.
    bandwidth: int
    average_bandwidth: int
    #: RFC 6381 codecs. Here, what we ask for (High profile at the rung's level); the
    #: encoder may write less (x264's ultrafast writes Constrained Baseline), so transcode()
    #: returns renditions carrying what its init segments really declare.
    codecs: str
    #: H.264 level as x264 wants it ("3.1"); empty for audio-only.
    level: str = ""

    @property
    def has_video(self) -> bool:
        return self.video_bitrate > 0

    @property
    def maxrate(self) -> int:
        return int(self.video_bitrate * PEAK_RATIO)


#: The most a soundtrack may carry to go out as it came in (see `audio_passthrough`).
PASSTHROUGH_MAX_AUDIO_BITRATE = 256_000


def audio_passthrough(info: MediaInfo) -> bool:
    """Whether the soundtrack is copied into every rendition instead of encoded once per
    rendition: AAC-LC, mono or stereo, 44.1 or 48 kHz, at a stated rate of at most 256 kb/s,
    which is what HLS players take and what phones and editors write. Encoding it again would
    cost CPU (one AAC encoder per rung, about a tenth of a 1080p ladder's) and lose quality."""
    return (
        info.has_audio
        and info.audio_codec == "aac"
        and info.audio_profile == "LC"
        and info.audio_channels in (1, 2)
        and info.audio_sample_rate in (44_100, 48_000)
        and info.audio_bitrate is not None
        and 0 < info.audio_bitrate <= PASSTHROUGH_MAX_AUDIO_BITRATE
    )


def build_ladder(
    info: MediaInfo, *, max_height: int = 2160, audio_bitrate: int = 128_000
) -> list[Rendition]:
    """Renditions for `info`, smallest first. `audio_bitrate` is what an encoded soundtrack
    gets; a copied one (`audio_passthrough`) keeps its own."""
    if audio_passthrough(info):
        assert info.audio_bitrate is not None
        audio_bitrate = info.audio_bitrate
    audio = audio_bitrate if info.has_audio else 0
    if not info.has_video:
        return [_audio_only(audio or audio_bitrate)]
    short, long_ = sorted((info.width, info.height))
    fps = output_fps(info.fps)
    rungs = [r for r in RUNGS if r <= min(short, max_height)]
    if not rungs:
        # Smaller than our smallest rung: one rendition at the source's own (even) size.
        width, height = _even_floor(info.width), _even_floor(info.height)
        return [_video(f"{min(width, height)}p", width, height, fps, info, audio)]
    ladder = []
    for rung in rungs:
        other = min(_even_round(rung * long_ / short), _even_floor(long_))
        width, height = (other, rung) if info.width >= info.height else (rung, other)
        ladder.append(_video(f"{rung}p", width, height, fps, info, audio))
    return ladder


def output_fps(source_fps: float) -> float:
    """The source rate; an integer fraction of it at or below 60 (120 -> 60, 100 -> 50);
    at least 1 fps (a 0.5 fps slideshow becomes 1 fps, never the 30 it once became)."""
    if source_fps <= 0:
        return DEFAULT_FPS
    divisor = max(1, math.ceil(source_fps / MAX_FPS - 1e-9))
    return max(MIN_FPS, round(source_fps / divisor, 3))


def video_bitrate_for(width: int, height: int, fps: float) -> int:
    """Model bitrate in bits/s for an H.264 picture of this size and rate."""
    pixels = width * height
    points = [(_pixels_16x9(h), rate) for h, rate in _ANCHORS_30FPS]
    if pixels <= points[0][0]:
        (p0, r0), (p1, r1) = points[0], points[1]
    elif pixels >= points[-1][0]:
        (p0, r0), (p1, r1) = points[-2], points[-1]
    else:
        i = next(i for i, (p, _) in enumerate(points) if p >= pixels)
        (p0, r0), (p1, r1) = points[i - 1], points[i]
    # Straight line in log-log space between the two nearest anchors.
    slope = math.log(r1 / r0) / math.log(p1 / p0)
    rate30 = r0 * (pixels / p0) ** slope
    return int(round(rate30 * (fps / 30) ** _FPS_EXPONENT, -3))


def h264_level(width: int, height: int, fps: float, maxrate: int) -> str:
    """Lowest H.264 level whose macroblock rate, frame size and bitrate fit (High profile)."""
    mbs = math.ceil(width / 16) * math.ceil(height / 16)
    for level, max_mbps, max_fs, max_kbps in _LEVELS:
        if mbs <= max_fs and mbs * fps <= max_mbps and maxrate <= max_kbps * 1250:
            return level
    return "5.2"


# (level, max macroblocks/s, max frame size in macroblocks, max Baseline kb/s); High = x1.25.
_LEVELS = (
    ("3.0", 40_500, 1_620, 10_000),
    ("3.1", 108_000, 3_600, 14_000),
    ("3.2", 216_000, 5_120, 20_000),
    ("4.0", 245_760, 8_192, 20_000),
    ("4.1", 245_760, 8_192, 50_000),
    ("4.2", 522_240, 8_704, 50_000),
    ("5.0", 589_824, 22_080, 135_000),
    ("5.1", 983_040, 36_864, 240_000),
    ("5.2", 2_073_600, 36_864, 240_000),
)


def _video(
    name: str, width: int, height: int, fps: float, info: MediaInfo, audio: int
) -> Rendition:
    rate = video_bitrate_for(width, height, fps)
    if info.video_bitrate:
        rate = min(rate, max(int(info.video_bitrate * SOURCE_MARGIN), MIN_VIDEO_BITRATE))
    level = h264_level(width, height, fps, int(rate * PEAK_RATIO))
    major, minor = level.split(".")
    codecs = f"avc1.6400{int(major) * 10 + int(minor):02x}"
    if audio:
        codecs += f",{AUDIO_CODEC}"
    return Rendition(
        name=name,
        width=width,
        height=height,
        fps=fps,
        video_bitrate=rate,
        audio_bitrate=audio,
        bandwidth=int((rate * PEAK_RATIO + audio) * CONTAINER_OVERHEAD),
        average_bandwidth=int((rate + audio) * CONTAINER_OVERHEAD),
        codecs=codecs,
        level=level,
    )


def _audio_only(audio: int) -> Rendition:
    total = int(audio * CONTAINER_OVERHEAD)
    return Rendition(
        name="audio",
        width=0,
        height=0,
        fps=0.0,
        video_bitrate=0,
        audio_bitrate=audio,
        bandwidth=total,
        average_bandwidth=total,
        codecs=AUDIO_CODEC,
    )


def _pixels_16x9(height: int) -> int:
    return _even_round(height * 16 / 9) * height


def _even_round(value: float) -> int:
    return max(2, 2 * round(value / 2))


def _even_floor(value: int) -> int:
    return max(2, value - value % 2)
