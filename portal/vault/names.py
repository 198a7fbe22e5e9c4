"""Validation of owners and object paths: the only names that ever reach a storage backend.

Security: paths come, indirectly, from requests. Every segment is checked against a small
charset and may not start with a dot, so `..`, hidden files, absolute paths, backslashes, NUL
bytes and empty segments never reach the filesystem or an S3 key. Names starting with a dot are
reserved for the local backend's temporary files.
"""

from __future__ import annotations

import re

from portal.vault.errors import ObjectNameInvalid

_OWNER = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
# Partial last segment of a listing prefix: may be empty, never a dot first.
_PARTIAL = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127})?")
MAX_NAME_LENGTH = 512


def validate_owner(owner: str) -> str:
    if not isinstance(owner, str) or not _OWNER.fullmatch(owner):
        raise ObjectNameInvalid(
            "owner ids are 1-64 characters of A-Z, a-z, 0-9, '_' and '-' (a video id)"
        )
    return owner


def validate_path(path: str) -> str:
    """An object path such as `hls/720p/000003.m4s`: `/`-separated segments of
    `[A-Za-z0-9._-]`, none empty, none starting with a dot."""
    if not isinstance(path, str) or not path or len(path) > MAX_NAME_LENGTH:
        raise ObjectNameInvalid(f"object paths are 1-{MAX_NAME_LENGTH} characters long")
    for segment in path.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise ObjectNameInvalid(
                f"object path {path!r} is not allowed: use '/'-separated segments of "
                "A-Z, a-z, 0-9, '.', '_' and '-', not empty and not starting with '.'"
            )
    return path


def validate_name(name: str) -> str:
    """A full storage name, `owner/path`; what backends accept."""
    if not isinstance(name, str) or "/" not in name:
        raise ObjectNameInvalid("storage names are 'owner/path'")
    owner, _, path = name.partition("/")
    validate_owner(owner)
    validate_path(path)
    return name


def validate_prefix(prefix: str) -> str:
    """A listing prefix: whole segments, then optionally a partial one (`hls/720p/00`).
    The empty prefix means everything."""
    if not isinstance(prefix, str) or len(prefix) > MAX_NAME_LENGTH:
        raise ObjectNameInvalid(f"prefixes are at most {MAX_NAME_LENGTH} characters long")
    if prefix == "":
        return prefix
    *whole, last = prefix.split("/")
    for segment in whole:
        if not _SEGMENT.fullmatch(segment):
            raise ObjectNameInvalid(f"prefix {prefix!r} has an invalid segment")
    if not _PARTIAL.fullmatch(last):
        raise ObjectNameInvalid(f"prefix {prefix!r} has an invalid segment")
    return prefix


def object_name(owner: str, path: str) -> str:
    return f"{validate_owner(owner)}/{validate_path(path)}"
