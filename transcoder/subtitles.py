"""Creator subtitles (SRT or WebVTT) turned into clean WebVTT.

Subtitles are rendered by the viewer's browser, so they are untrusted markup: we rebuild every
cue from parsed parts rather than pass text through. Only WebVTT's own cue tags survive;
HTML such as <script> or <font> is removed, STYLE and REGION blocks (CSS) are dropped, and
timestamps are rewritten in one canonical form.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from transcoder.errors import SubtitleError

MAX_BYTES = 5 << 20
MAX_CUES = 50_000
MAX_CUE_CHARS = 2_000

_TIME = r"(?:(\d{1,3}):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(.*)$")
_DROPPED_BLOCKS = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|$)", re.IGNORECASE | re.DOTALL)
_ASS_OVERRIDES = re.compile(r"\{\\[^}]*\}")  # {\an8}, {\i1}: SSA tags common in SRT files
# Like HTML, a tag opens with a letter or "/" (or is a cue timestamp); "<3" is just text.
_TAG = re.compile(r"<(/?[A-Za-z][^<>]*|[\d:.]+)>")
_ALLOWED_TAG = re.compile(
    r"^(?:/?(?:b|i|u|ruby|rt)|/?c(?:\.[A-Za-z0-9_-]+)*|/c|/v|/lang"
    r"|v(?:\.[A-Za-z0-9_-]+)*(?:\s+[^<>&]*)?|lang\s+[A-Za-z0-9-]+"
    r"|(?:\d{1,3}:)?\d{2}:\d{2}\.\d{3})$"
)
_SETTING = re.compile(
    r"^(?:vertical:(?:rl|lr)|line:-?\d+(?:\.\d+)?%?(?:,(?:start|center|end))?"
    r"|position:\d+(?:\.\d+)?%(?:,(?:line-left|center|line-right|auto))?"
    r"|size:\d+(?:\.\d+)?%|align:(?:start|center|end|left|right))$"
)


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str
    settings: str = ""


def to_webvtt(data: bytes) -> str:
    """Validate SRT or WebVTT bytes and return clean WebVTT text, or raise SubtitleError."""
    return render_webvtt(parse_cues(data))


def parse_cues(data: bytes) -> list[Cue]:
    text = _decode(data)
    is_vtt = text.lstrip("\ufeff").startswith("WEBVTT")
    cues: list[Cue] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = block.strip("\n").split("\n")
        timing_at = next((i for i, line in enumerate(lines[:3]) if "-->" in line), None)
        if timing_at is None:
            continue  # header, NOTE, STYLE, REGION, SRT junk between cues
        match = _TIMING.match(lines[timing_at])
        if match is None:
            raise SubtitleError(
                f"A subtitle timing line could not be read: {lines[timing_at][:80]!r}."
            )
        start, end = _ms(*match.group(1, 2, 3, 4)), _ms(*match.group(5, 6, 7, 8))
        body = _clean_text("\n".join(lines[timing_at + 1 :]))
        if end <= start or not body:
            continue  # a cue that can never show is dropped, not fatal
        settings = _clean_settings(match.group(9)) if is_vtt else ""
        cues.append(Cue(start, end, body, settings))
        if len(cues) > MAX_CUES:
            raise SubtitleError(f"The subtitle file has more than {MAX_CUES:,} lines of dialogue.")
    if not cues:
        raise SubtitleError(
            "No subtitles were found in this file: please upload SRT or WebVTT text."
        )
    cues.sort(key=lambda c: (c.start_ms, c.end_ms))
    return cues


def render_webvtt(cues: list[Cue]) -> str:
    out = ["WEBVTT", ""]
    for cue in cues:
        timing = f"{vtt_timestamp(cue.start_ms)} --> {vtt_timestamp(cue.end_ms)}"
        out += [f"{timing} {cue.settings}".rstrip(), cue.text, ""]
    return "\n".join(out)


def _decode(data: bytes) -> str:
    if not data.strip():
        raise SubtitleError("The subtitle file is empty.")
    if len(data) > MAX_BYTES:
        raise SubtitleError("The subtitle file is too large.")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise SubtitleError() from None
    if b"\x00" in data:
        raise SubtitleError("This is not a subtitle file: it contains binary data.")
    for encoding in ("utf-8-sig", "cp1252"):  # cp1252: older SRT files from Windows tools
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if sum(not (c.isprintable() or c in "\n\r\t") for c in text) > len(text) // 100:
            raise SubtitleError("This is not a subtitle file: it contains binary data.")
        return text
    raise SubtitleError("The subtitle file is not in a text encoding we can read (use UTF-8).")


def _clean_text(text: str) -> str:
    text = _DROPPED_BLOCKS.sub("", text)
    text = _ASS_OVERRIDES.sub("", text)
    parts: list[str] = []
    position = 0
    for match in _TAG.finditer(text):
        parts.append(_escape(text[position : match.start()]))
        tag = match.group(1).strip()
        if _ALLOWED_TAG.match(tag):
            parts.append(f"<{_escape(tag)}>" if tag.startswith("v ") else f"<{tag}>")
        position = match.end()
    parts.append(_escape(text[position:]))
    lines = [line.strip() for line in "".join(parts).split("\n")]
    return "\n".join(line for line in lines if line)[:MAX_CUE_CHARS]


def _escape(text: str) -> str:
    # Unescape first so "&amp;" stays "&amp;" rather than becoming "&amp;amp;"; "-->" inside
    # text would end the cue early in some parsers.
    return html.escape(html.unescape(text), quote=False).replace("--&gt;", "&#45;&#45;&gt;")


def _clean_settings(raw: str) -> str:
    return " ".join(token for token in raw.split() if _SETTING.match(token))


def _ms(hours: str | None, minutes: str, seconds: str, fraction: str | None) -> int:
    if int(minutes) > 59 or int(seconds) > 59:
        raise SubtitleError(f"A subtitle timestamp is invalid: {minutes}:{seconds}.")
    millis = int((fraction or "0").ljust(3, "0"))
    return ((int(hours or 0) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + millis


def vtt_timestamp(ms: int) -> str:
    """WebVTT's canonical HH:MM:SS.mmm."""
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
