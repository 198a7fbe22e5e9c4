"""Limits applied to every upload before any real work is done on it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_duration: float = 4 * 3600
    #: Display pixels (width x height) of the largest video stream.
    max_pixels: int = 3840 * 2160
    max_streams: int = 16
    #: Wall-time seconds for each ffprobe/ffmpeg run made while probing.
    probe_timeout: float = 30.0
    max_file_bytes: int | None = None
