"""Where a video's objects live in the vault: one module for the names, so the processing
side that writes them and the stream that reads them can never disagree.

    source/part-000000 ...      the upload, one part per PATCH
    hls/<rendition>/init.mp4    a rendition's init segment
    hls/<rendition>/000000.m4s  its media segments
    poster.jpg, storyboard.jpg, storyboard.vtt
"""

from __future__ import annotations

import re

SOURCE_PREFIX = "source/"
HLS_PREFIX = "hls/"
POSTER = "poster.jpg"
STORYBOARD_IMAGE = "storyboard.jpg"
STORYBOARD_VTT = "storyboard.vtt"
INIT_SEGMENT = "init.mp4"
#: Index of a rendition's init segment in the `segments` table.
INIT_INDEX = -1

_RENDITION = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_MEDIA_SEGMENT = re.compile(r"^([0-9]{6})\.m4s$")


def source_part_path(number: int) -> str:
    """Vault path of the `number`-th part of an upload (one per PATCH)."""
    return f"{SOURCE_PREFIX}part-{number:06d}"


def segment_name(index: int) -> str:
    """A segment's file name inside its rendition (what playlists link to)."""
    return INIT_SEGMENT if index == INIT_INDEX else f"{index:06d}.m4s"


def segment_path(rendition: str, index: int) -> str:
    """Vault path of a segment; index -1 (INIT_INDEX) is the rendition's init segment."""
    return f"{HLS_PREFIX}{rendition}/{segment_name(max(index, INIT_INDEX))}"


def valid_rendition(name: str) -> bool:
    return bool(_RENDITION.match(name))


def segment_index(name: str) -> int | None:
    """The index a segment file name stands for (INIT_INDEX for the init segment), or None
    when the name is not one this layout ever writes."""
    if name == INIT_SEGMENT:
        return INIT_INDEX
    match = _MEDIA_SEGMENT.match(name)
    return int(match.group(1)) if match else None
