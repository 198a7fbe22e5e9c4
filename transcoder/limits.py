"""Limits applied to every upload before any real work is done on it.

Together they bound what one job may cost: the picture size (per frame), the duration, and
the frames we would write, and all of it against what was actually uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_duration: float = 4 * 3600
    #: Pixels of the largest picture: the stored (coded) frame, before non-square pixels are
    #: applied, and the displayed one. Decoding cost follows the stored frame.
    max_pixels: int = 3840 * 2160
    max_streams: int = 16
    #: Wall-time seconds for each ffprobe/ffmpeg run made while probing.
    probe_timeout: float = 30.0
    max_file_bytes: int | None = None
    #: A file must hold at least this many bytes for each second it claims to last. Real
    #: recordings never come close: silent Opus at 6 kb/s is ~400 B/s, a black 720p H.264
    #: video ~1,300 B/s at 25 fps and ~55 B/s at 1 fps. A few KB claiming hours is a file
    #: made to make us work (timestamps or edit lists stretched), not a film.
    min_bytes_per_second: float = 32.0
    #: Frames of output per rendition (duration x output frame rate). The default is what
    #: max_duration allows at our 60 fps cap; lower it to bound the cost of a job further.
    max_output_frames: int = 4 * 3600 * 60
