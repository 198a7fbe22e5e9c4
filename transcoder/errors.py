"""Typed errors, each carrying a sentence a creator can act on.

The portal maps these to a failed video state and shows `.reason` verbatim, so a reason
never contains a server path, a command line or ffmpeg jargon beyond a short quote.
"""

from __future__ import annotations


class MediaError(Exception):
    """Base of every error the transcoder raises on purpose."""

    default_reason = "The file could not be processed."

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        super().__init__(self.reason)


class MediaRejected(MediaError):
    """The upload itself is unacceptable; retrying the same file will not help."""

    default_reason = "This file cannot be accepted."


class NotMedia(MediaRejected):
    default_reason = "This is not a video or audio file."


class EmptyFile(MediaRejected):
    default_reason = "The file is empty."


class CorruptMedia(MediaRejected):
    default_reason = (
        "The file is damaged or incomplete: it may have been truncated during the upload "
        "or saved by a program that crashed. Export it again and re-upload it."
    )


class NoDecodableStream(MediaRejected):
    default_reason = "The file contains no picture or sound we can decode."


class TooLong(MediaRejected):
    default_reason = "The video is longer than the maximum allowed duration."


class TooLarge(MediaRejected):
    default_reason = "The picture is larger than the maximum allowed resolution."


class ImplausibleDuration(MediaRejected):
    """The file claims a duration its size cannot hold: stretched timestamps or edit lists."""

    default_reason = (
        "The file claims to last far longer than the data it contains: it may be damaged "
        "or made to look longer than it is. Export it again and re-upload it."
    )


class TooManyFrames(MediaRejected):
    default_reason = "The video has more frames than we can convert."


class TooManyStreams(MediaRejected):
    default_reason = "The file contains too many tracks."


class UnsupportedFormat(MediaRejected):
    default_reason = "This kind of file is not supported."


class HostileInput(MediaRejected):
    """Playlists, concat scripts and other files that make ffmpeg open other files."""

    default_reason = (
        "This file is a playlist or a script, not a video: please upload the video file itself."
    )


class SubtitleError(MediaRejected):
    default_reason = "The subtitle file could not be read: please upload SRT or WebVTT text."


class TranscodeFailed(MediaError):
    """The file looked fine but the conversion did not finish; a retry may help."""

    default_reason = "The video could not be converted."


class TranscodeTimeout(TranscodeFailed):
    default_reason = "The conversion took longer than allowed and was stopped."
