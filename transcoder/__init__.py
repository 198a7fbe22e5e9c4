"""Media library for Mega Movie: probe uploads, plan a ladder, encode HLS, make images.

Pure: it never imports the portal, reads no environment and keeps no globals.
"""

from transcoder.errors import (
    CorruptMedia,
    EmptyFile,
    HostileInput,
    ImplausibleDuration,
    MediaError,
    MediaRejected,
    NoDecodableStream,
    NotMedia,
    SubtitleError,
    TooLarge,
    TooLong,
    TooManyFrames,
    TooManyStreams,
    TranscodeFailed,
    TranscodeTimeout,
    UnsupportedFormat,
)
from transcoder.guard import Guard
from transcoder.hls import HlsOptions, HlsResult, Progress, Segment, transcode
from transcoder.ladder import Rendition, build_ladder
from transcoder.limits import MediaLimits
from transcoder.playlists import master_playlist, media_playlist, parse_playlist
from transcoder.probe import MediaInfo, probe

__all__ = [
    "CorruptMedia",
    "EmptyFile",
    "Guard",
    "HlsOptions",
    "HlsResult",
    "HostileInput",
    "ImplausibleDuration",
    "MediaError",
    "MediaInfo",
    "MediaLimits",
    "MediaRejected",
    "NoDecodableStream",
    "NotMedia",
    "Progress",
    "Rendition",
    "Segment",
    "SubtitleError",
    "TooLarge",
    "TooLong",
    "TooManyFrames",
    "TooManyStreams",
    "TranscodeFailed",
    "TranscodeTimeout",
    "UnsupportedFormat",
    "build_ladder",
    "master_playlist",
    "media_playlist",
    "parse_playlist",
    "probe",
    "transcode",
]
