"""Container detection by magic numbers, done by us before ffmpeg sees the file.

ffmpeg's own format probing is the attack surface: given a text file that starts with
`#EXTM3U` it happily picks the HLS demuxer, whatever the file is called, and then opens every
file the playlist names. So we read the first bytes ourselves, map them to one demuxer from an
allowlist, and pass that demuxer with `-f` to every ffprobe/ffmpeg run on user data. Anything
we cannot name is refused; nothing is ever auto-detected.
"""

from __future__ import annotations

from pathlib import Path

from transcoder.errors import EmptyFile, HostileInput, NotMedia

#: Bytes read for sniffing: enough for three MPEG-TS packets plus an M2TS prefix.
SNIFF_BYTES = 4096

#: Demuxers we hand user files to. No hls, concat, image2, sdp, rtp or anything that
#: reads other files or URLs named inside the input.
ALLOWED_DEMUXERS = frozenset(
    {"mov", "matroska", "avi", "mpegts", "flv", "ogg", "mp3", "aac", "wav", "flac", "mpeg", "asf"}
)

# Text formats that make ffmpeg open other files; named so the creator gets a precise reason.
_PLAYLIST_MARKERS = (b"#EXTM3U", b"#EXT", b"ffconcat", b"[playlist]", b"<?xml", b"<smil", b"v=0")

# ISO-BMFF/QuickTime top-level boxes that may come first (old QuickTime files start with
# moov/mdat/wide/free rather than ftyp).
_MOV_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})

_ASF_GUID = bytes.fromhex("3026B2758E66CF11A6D900AA0062CE6C")


def sniff_format(path: Path) -> str:
    """Return the demuxer name for `path`, or raise a typed `MediaRejected`."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head:
        raise EmptyFile()
    demuxer = detect_demuxer(head)
    if demuxer is not None:
        return demuxer
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if any(stripped.startswith(marker) for marker in _PLAYLIST_MARKERS):
        raise HostileInput()
    raise NotMedia()


def detect_demuxer(head: bytes) -> str | None:
    """Map the first bytes of a file to an allowed demuxer, or None."""
    if len(head) >= 12 and head[4:8] in _MOV_FIRST_BOXES:
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # also WebM, which is a Matroska profile
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if _is_mpegts(head):
        return "mpegts"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"  # MPEG program stream (VOB, .mpg)
    if head.startswith(_ASF_GUID):
        return "asf"
    if head.startswith(b"ID3") and len(head) >= 10:
        # Skip the ID3v2 tag (syncsafe size) to see which audio frames follow.
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        frame = head[10 + size : 10 + size + 2]
        return "aac" if _is_adts(frame) else "mp3"
    if _is_adts(head):
        return "aac"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3"
    return None


def _is_mpegts(head: bytes) -> bool:
    # A sync byte every 188 bytes (TS) or every 192 bytes after a 4-byte prefix (M2TS/AVCHD).
    for start, step in ((0, 188), (4, 192)):
        offsets = range(start, min(len(head), start + 3 * step), step)
        if len(offsets) >= 2 and all(head[i] == 0x47 for i in offsets):
            return True
    return False


def _is_adts(head: bytes) -> bool:
    # 12-bit sync, then layer bits 00: distinguishes AAC ADTS from MPEG audio frames.
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0
