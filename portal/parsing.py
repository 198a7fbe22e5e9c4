"""Strict parsing of what clients send: one helper per kind of input, used by every route
(through `portal.web`'s body readers for bodies; nothing here knows HTTP).

Every client mistake must become a 4xx with a sentence, never a 500, so nothing a client sends
reaches the domain or the database unchecked:

- integers in headers and query strings: ASCII digits only (`str.isdigit` and `int` also take
  superscripts and other scripts' digits), at most 19 of them and within a signed 64-bit
  column;
- text (JSON strings, form fields, metadata values): no lone surrogates (they cannot be encoded
  as UTF-8, so the database driver or argon2 would fail on them) and no control characters
  (PostgreSQL refuses NUL in text);
- JSON: nested no deeper than `MAX_JSON_DEPTH` (the json module recurses, so depth is checked
  before it runs), numbers finite and integers within 64 bits, and only the expected shape
  accepted (`portal.web` reads bodies only up to each endpoint's cap);
- tus headers: `Upload-Metadata` and `Upload-Checksum`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from portal.errors import BadRequest, ValidationFailed

#: Enough for any byte count or offset a BIGINT column holds.
MAX_DIGITS = 19
INT64_MAX = 2**63 - 1
#: Our JSON bodies are flat objects; 32 levels leave room and keep the depth scan cheap.
MAX_JSON_DEPTH = 32

# Lone surrogates and the control characters nobody types (tab and line breaks are fine).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# tus: a metadata key is non-empty, without spaces or commas; we also keep it to visible ASCII.
_METADATA_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


# -- integers -------------------------------------------------------------------------------


def digits(text: str) -> int | None:
    """The non-negative integer written in `text` with ASCII digits only, or None.

    `"²"`, `"٣"`, `" 7"`, `"1_000"`, `"+5"` and anything past `MAX_DIGITS` digits or
    `INT64_MAX` are None: `int()` would take some of them, the database none."""
    if not 0 < len(text) <= MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= INT64_MAX else None


def header_int(headers: Mapping[str, str], name: str) -> int:
    """A required non-negative integer header (`Upload-Length`, `Upload-Offset`)."""
    raw = headers.get(name)
    if raw is None:
        raise BadRequest(f"Send the {name} header: a whole number, 0 or more.", name)
    value = digits(raw)
    if value is None:
        raise BadRequest(
            f"The {name} header must be a whole number, 0 or more, in ASCII digits "
            f"(at most {MAX_DIGITS} of them).",
            name,
        )
    return value


def optional_header_int(headers: Mapping[str, str], name: str) -> int | None:
    """Like `header_int`, but an absent header is None (`Content-Length`)."""
    return header_int(headers, name) if name in headers else None


def query_int(
    params: Mapping[str, str], name: str, *, default: int, minimum: int, maximum: int
) -> int:
    """A forgiving integer from the query string (`?page=`): anything that is not one is the
    default, and the value is clamped to [minimum, maximum] so it never overflows a query."""
    value = digits(params.get(name, ""))
    if value is None:
        return default
    return min(max(value, minimum), maximum)


def query_number(
    params: Mapping[str, str], name: str, *, default: int, minimum: int, maximum: int
) -> int:
    """A strict integer from the query string (`?days=`): absent is the default; anything but
    ASCII digits within [minimum, maximum] is BadRequest naming the parameter."""
    raw = params.get(name)
    if raw is None:
        return default
    value = digits(raw)
    if value is None or not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be a whole number from {minimum} to {maximum}.", name)
    return value


# -- text -----------------------------------------------------------------------------------


def is_text(value: str) -> bool:
    """Could a person have typed `value`: no control characters but tab and line breaks, and
    no lone surrogates?"""
    return _NOT_TEXT.search(value) is None


def clean_text(value: str, field: str, label: str | None = None) -> str:
    """`value` when it is text a person could have typed; BadRequest naming `field` (and
    `label` in the message, when given) otherwise."""
    if not is_text(value):
        raise BadRequest(
            f"The {label or field} contains characters that are not text (control characters or "
            "broken Unicode); remove them and try again.",
            field,
        )
    return value


def text_field(value: object, field: str, *, max_length: int) -> str:
    """A text field of a JSON body or form: a string, clean, at most `max_length` long."""
    if not isinstance(value, str):
        raise BadRequest(f"The {field} must be text.", field)
    if len(value) > max_length:
        raise ValidationFailed(f"The {field} is limited to {max_length:,} characters.")
    return clean_text(value, field)


# -- bodies ---------------------------------------------------------------------------------


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, nested at most `MAX_JSON_DEPTH` deep, finite numbers, keys and
    strings that are clean text."""
    not_json = BadRequest("The body is not valid JSON.", "body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise not_json from None
    if _nesting_depth(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested more than {MAX_JSON_DEPTH} levels deep.", "body")
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bigint
        )
    except ValueError:  # JSONDecodeError, NaN/Infinity, 1e999, integers past 64 bits
        raise not_json from None
    _check_strings(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError("number out of range")
    return value


def _bigint(text: str) -> int:
    # Past 64 bits no column holds it, and float() of it would overflow.
    if len(text) > MAX_DIGITS + 1 or abs(value := int(text)) > INT64_MAX:
        raise ValueError("integer out of range")
    return value


def _nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, ignoring brackets in strings.
    Stops counting once past the limit: a megabyte of `[` costs one pass, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def _check_strings(value: Any) -> None:
    # Depth is bounded already, so recursing here is safe.
    if isinstance(value, str):
        clean_text(value, "body")
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            clean_text(key, "body")
            _check_strings(item)


def exact_shape(
    body: Any, shape: Mapping[str, type | tuple[type, ...]], example: str
) -> dict[str, Any]:
    """`body` when it is an object with exactly the keys of `shape`, each of its type (a bool
    is not a number); ValidationFailed showing `example` otherwise."""
    wrong = ValidationFailed(f"Send JSON: {example}.")
    if not isinstance(body, dict) or set(body) != set(shape):
        raise wrong
    for key, kind in shape.items():
        value = body[key]
        if isinstance(value, bool) and bool not in _kinds(kind):
            raise wrong
        if not isinstance(value, kind):
            raise wrong
    return body


def _kinds(kind: type | tuple[type, ...]) -> Iterable[type]:
    return kind if isinstance(kind, tuple) else (kind,)


# -- tus headers ----------------------------------------------------------------------------


def upload_metadata(header: str | None, *, max_bytes: int) -> dict[str, str]:
    """tus `Upload-Metadata`: comma-separated `key base64(value)` pairs, unique non-empty
    keys without spaces or commas, values base64 of UTF-8 text. At most `max_bytes` long."""
    if not header:
        return {}
    if len(header) > max_bytes:
        raise BadRequest(
            f"Upload-Metadata is limited to {max_bytes:,} bytes; shorten the description.",
            "Upload-Metadata",
        )
    if not header.isascii():
        raise BadRequest(
            "Upload-Metadata must be ASCII: keys and base64 values.", "Upload-Metadata"
        )
    result: dict[str, str] = {}
    for pair in header.split(","):
        pair = pair.strip()
        key, _, encoded = pair.partition(" ")
        encoded = encoded.strip()
        if not _METADATA_KEY.fullmatch(key):
            raise BadRequest(
                f"Upload-Metadata has an empty or malformed key in {pair[:40]!r}.",
                "Upload-Metadata",
            )
        if key in result:
            raise BadRequest(f"Upload-Metadata names {key!r} twice.", "Upload-Metadata")
        result[key] = _metadata_value(key, encoded)
    return result


def _metadata_value(key: str, encoded: str) -> str:
    wrong = BadRequest(
        f"Upload-Metadata value for {key!r} is not base64 of UTF-8 text.", "Upload-Metadata"
    )
    if not _BASE64.fullmatch(encoded) or len(encoded) % 4:
        raise wrong
    try:
        value = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise wrong from None
    return clean_text(value, "Upload-Metadata", f"Upload-Metadata value for {key!r}")


def encode_upload_metadata(metadata: Mapping[str, str]) -> str:
    """The `Upload-Metadata` header for `metadata` (what HEAD answers)."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in metadata.items()
    )


def upload_checksum(header: str | None, algorithms: Iterable[str]) -> tuple[str, bytes] | None:
    """tus `Upload-Checksum: <algorithm> <base64 digest>` -> (algorithm, digest)."""
    if not header:
        return None
    allowed = tuple(algorithms)
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in allowed:
        raise BadRequest(
            f"Checksum algorithm {algorithm[:20]!r} is not supported; use "
            + " or ".join(allowed)
            + ".",
            "Upload-Checksum",
        )
    encoded = encoded.strip()
    size = hashlib.new(algorithm, usedforsecurity=False).digest_size
    try:
        if not encoded.isascii():
            raise ValueError(encoded)
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum is not base64.", "Upload-Checksum") from None
    if len(digest) != size:
        raise BadRequest(
            f"An {algorithm} digest is {size} bytes; this one is {len(digest)}.",
            "Upload-Checksum",
        )
    return algorithm, digest
