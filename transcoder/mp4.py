"""What an fMP4 init segment says was encoded, as an RFC 6381 codecs string.

A player picks a variant by its CODECS attribute and may refuse one it believes it cannot
decode, so CODECS must describe the stream as written, not as requested: asked for High
profile, x264's `ultrafast` preset writes Constrained Baseline (no CABAC, no B-frames), and
the level is whatever the encoder settled on. The answer is in the init segment: the
`avcC` box carries the profile, the constraint flags and the level exactly as the SPS has
them (`avc1.PPCCLL`), and the `esds` box the AAC object type (`mp4a.40.2` for AAC-LC).
"""

from __future__ import annotations

from collections.abc import Iterator

#: Boxes that hold other boxes on the way from `moov` to the sample entries.
_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})
#: Bytes between a sample entry's header and its child boxes (ISO/IEC 14496-12).
_VISUAL_ENTRY_FIELDS = 78
_AUDIO_ENTRY_FIELDS = 28


def codecs_of(init: bytes) -> str:
    """`avc1.PPCCLL` and/or `mp4a.OO.A`, video first, for the tracks of an init segment.

    Raises ValueError if the segment holds no track we know how to name.
    """
    found: list[str] = []
    for kind, entry in _sample_entries(init):
        if kind in (b"avc1", b"avc3"):
            found.append(_avc(kind, entry[_VISUAL_ENTRY_FIELDS:]))
        elif kind == b"mp4a":
            found.append(_mp4a(entry[_AUDIO_ENTRY_FIELDS:]))
        else:
            raise ValueError(f"unexpected sample entry {kind!r}")
    if not found:
        raise ValueError("no track in the init segment")
    return ",".join(sorted(found, key=lambda codec: not codec.startswith("avc")))


def boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of each box in `data`, in order."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        header = 8
        if size == 1:  # 64-bit size follows the type
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
            header = 16
        elif size == 0:  # to the end of the file
            size = len(data) - offset
        if size < header or offset + size > len(data):
            raise ValueError(f"box {kind!r} at {offset} runs past the end")
        yield kind, data[offset + header : offset + size]
        offset += size


def _sample_entries(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    for kind, payload in boxes(data):
        if kind in _CONTAINERS:
            yield from _sample_entries(payload)
        elif kind == b"stsd":
            # FullBox (version, flags), then a 32-bit entry count, then the entries.
            yield from boxes(payload[8:])


def _avc(kind: bytes, children: bytes) -> str:
    for child, payload in boxes(children):
        if child == b"avcC" and len(payload) >= 4:
            # configurationVersion, AVCProfileIndication, profile_compatibility (the
            # constraint_set flags), AVCLevelIndication: the three bytes RFC 6381 wants.
            profile, constraints, level = payload[1], payload[2], payload[3]
            return f"{kind.decode()}.{profile:02x}{constraints:02x}{level:02x}"
    raise ValueError("H.264 track without an avcC box")


def _mp4a(children: bytes) -> str:
    for child, payload in boxes(children):
        if child == b"esds":
            return _esds(payload[4:])  # skip the FullBox version and flags
    raise ValueError("audio track without an esds box")


def _esds(data: bytes) -> str:
    """Walk ES_Descriptor > DecoderConfigDescriptor > DecoderSpecificInfo (ISO/IEC 14496-1)."""
    tag, body = _descriptor(data)
    if tag != 0x03 or len(body) < 3:
        raise ValueError("esds without an ES descriptor")
    flags = body[2]
    offset = 3
    if flags & 0x80:  # streamDependenceFlag: a 16-bit ES id follows
        offset += 2
    if flags & 0x40:  # URL_Flag: a length-prefixed URL follows
        offset += 1 + body[offset]
    if flags & 0x20:  # OCRstreamFlag
        offset += 2
    tag, config = _descriptor(body[offset:])
    if tag != 0x04 or len(config) < 13:
        raise ValueError("esds without a decoder config")
    object_type = config[0]
    if object_type != 0x40:  # MPEG-4 audio; anything else has no audio object type
        return f"mp4a.{object_type:02x}"
    tag, specific = _descriptor(config[13:])
    if tag != 0x05 or not specific:
        raise ValueError("AAC track without an AudioSpecificConfig")
    audio_object_type = specific[0] >> 3
    if audio_object_type == 31 and len(specific) >= 2:  # escape: six more bits, plus 32
        audio_object_type = 32 + (((specific[0] & 0x07) << 3) | (specific[1] >> 5))
    return f"mp4a.40.{audio_object_type}"


def _descriptor(data: bytes) -> tuple[int, bytes]:
    """(tag, body) of an MPEG-4 descriptor: a tag byte, then a size in 7-bit groups."""
    if not data:
        raise ValueError("descriptor missing")
    size = 0
    offset = 1
    for offset in range(1, min(5, len(data))):
        size = (size << 7) | (data[offset] & 0x7F)
        if not data[offset] & 0x80:
            break
    start = offset + 1
    return data[0], data[start : start + size]
