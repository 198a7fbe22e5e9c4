"""HLS playlist text: rendered by us, never copied from ffmpeg.

The portal renders playlists per request with signed, per-viewer URLs, so these are pure
functions of the stored facts (renditions, segment durations) and a URI callback. The small
parser serves the transcoder (to follow ffmpeg's progress) and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from transcoder.ladder import Rendition

HLS_VERSION = 7  # fMP4 segments with EXT-X-MAP need version 6+; 7 for EXT-X-INDEPENDENT...


def master_playlist(renditions: list[Rendition], uri_for: Callable[[Rendition], str]) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    # Highest first: players that ignore bandwidth start with the first variant listed;
    # hls.js and Safari choose by bandwidth regardless.
    for r in sorted(renditions, key=lambda r: r.bandwidth, reverse=True):
        attrs = [f"BANDWIDTH={r.bandwidth}", f"AVERAGE-BANDWIDTH={r.average_bandwidth}"]
        if r.has_video:
            attrs += [f"RESOLUTION={r.width}x{r.height}", f"FRAME-RATE={r.fps:.3f}"]
        attrs.append(f'CODECS="{r.codecs}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), _uri(uri_for(r))]
    return "\n".join(lines) + "\n"


def media_playlist(
    segments: list[tuple[int, float]],
    *,
    init_uri: str,
    uri_for: Callable[[int], str],
    target_duration: int | None = None,
    ended: bool,
) -> str:
    """A media playlist; EVENT while the transcode still grows it, VOD once `ended`."""
    if target_duration is None:
        # The spec requires every EXTINF, rounded to the nearest integer, to be <= this.
        target_duration = max([1, *(math.floor(d + 0.5) for _, d in segments)])
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{target_duration}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{_uri(init_uri)}"',
    ]
    for index, duration in segments:
        lines += [f"#EXTINF:{duration:.6f},", _uri(uri_for(index))]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Variant:
    uri: str
    attributes: dict[str, str]


@dataclass
class ParsedPlaylist:
    """What a playlist says; only the tags we write and ffmpeg writes are understood."""

    version: int | None = None
    target_duration: int | None = None
    playlist_type: str | None = None
    init_uri: str | None = None
    #: (uri, duration) of each media segment, in order.
    segments: list[tuple[str, float]] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    ended: bool = False
    independent_segments: bool = False


def parse_playlist(text: str) -> ParsedPlaylist:
    """Parse a master or media playlist.

    A line is only trusted once the newline after it is there: ffmpeg may be rewriting the
    file as we read it, and a half-written segment name must not be taken for a finished one.
    """
    if not text.startswith("#EXTM3U"):
        raise ValueError("not an HLS playlist")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    result = ParsedPlaylist()
    pending_duration: float | None = None
    pending_variant: dict[str, str] | None = None
    for line in complete.splitlines():
        line = line.strip()
        if not line:
            continue
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-VERSION":
            result.version = int(value)
        elif tag == "#EXT-X-TARGETDURATION":
            result.target_duration = int(value)
        elif tag == "#EXT-X-PLAYLIST-TYPE":
            result.playlist_type = value
        elif tag == "#EXT-X-MAP":
            result.init_uri = parse_attributes(value).get("URI")
        elif tag == "#EXTINF":
            pending_duration = float(value.split(",", 1)[0])
        elif tag == "#EXT-X-STREAM-INF":
            pending_variant = parse_attributes(value)
        elif tag == "#EXT-X-ENDLIST":
            result.ended = True
        elif tag == "#EXT-X-INDEPENDENT-SEGMENTS":
            result.independent_segments = True
        elif not line.startswith("#"):
            if pending_variant is not None:
                result.variants.append(Variant(line, pending_variant))
            elif pending_duration is not None:
                result.segments.append((line, pending_duration))
            pending_duration, pending_variant = None, None
    return result


def parse_attributes(value: str) -> dict[str, str]:
    """`A=1,B="x,y"` -> {"A": "1", "B": "x,y"} (quoted values may hold commas)."""
    attrs: dict[str, str] = {}
    i = 0
    while i < len(value):
        key_end = value.find("=", i)
        if key_end < 0:
            break
        key = value[i:key_end].strip()
        i = key_end + 1
        if i < len(value) and value[i] == '"':
            end = value.find('"', i + 1)
            end = len(value) if end < 0 else end
            attrs[key] = value[i + 1 : end]
            i = end + 2
        else:
            end = value.find(",", i)
            end = len(value) if end < 0 else end
            attrs[key] = value[i:end]
            i = end + 1
    return attrs


def _uri(uri: str) -> str:
    # A URI containing a newline would inject playlist tags.
    if "\n" in uri or "\r" in uri or '"' in uri:
        raise ValueError(f"unsafe URI in playlist: {uri!r}")
    return uri
