"""Short-lived playback tokens: proof that a viewer may fetch one video's streams.

A token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))` where the payload is
`v2 NUL viewer NUL video NUL expiry NUL grant NUL limit NUL licence`: `grant` names the stream
the grant opened (metering, concurrent streams), `licence` the licence's source (metering:
pass fees follow pass viewing) and `limit` is the last segment index a preview licence allows
(empty: the whole film). The licence decision rides inside the token, so the segment
endpoint enforces it without a database query. The key is derived from the portal's secret
key with a purpose label, so a session cookie signature can never be replayed as a playback
token (or the other way round). Tokens live in the URL *path*, which keeps relative URLs in
playlists working and survives players that drop query strings. Checking one costs an HMAC
and no database query: the segment endpoint is the hot path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from portal.errors import TokenInvalid

_PURPOSE = b"megamovie playback token v1"
_VERSION = "v2"
ANONYMOUS = "-"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class PlaybackClaims:
    viewer: str  # a user id, or ANONYMOUS
    video: str
    expires_at: int  # unix seconds
    grant: str = ""
    limit_index: int | None = None  # the last segment a preview allows; None: no limit
    licence: str = ""  # the licence's source (free, purchase, pass, ...), for metering

    def allows(self, index: int) -> bool:
        return self.limit_index is None or index <= self.limit_index


class PlaybackTokens:
    """Signs and checks playback tokens with a key derived from `secret_key`."""

    def __init__(self, secret_key: bytes, ttl_seconds: int) -> None:
        if len(secret_key) < 16:
            raise ValueError("the secret key must be at least 16 bytes")
        self._key = hmac.new(secret_key, _PURPOSE, hashlib.sha256).digest()
        self.ttl_seconds = ttl_seconds

    def issue(
        self,
        viewer: str | None,
        video: str,
        *,
        grant: str = "",
        limit_index: int | None = None,
        licence: str = "",
        not_after: float | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """A token for `viewer` (None: anonymous) on `video`, and its expiry (unix seconds):
        the TTL from now, or `not_after` (a rental's end) if that comes first."""
        expires_at = int(now if now is not None else time.time()) + self.ttl_seconds
        if not_after is not None:
            expires_at = min(expires_at, int(not_after))
        limit = "" if limit_index is None else str(limit_index)
        fields = [_VERSION, viewer or ANONYMOUS, video, str(expires_at), grant, limit, licence]
        payload = "\0".join(fields).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}", expires_at

    def verify(self, token: str, video: str, *, now: float | None = None) -> PlaybackClaims:
        """The claims of a valid token for `video`; TokenInvalid when forged, expired or not
        for this video. The message does not say which, so it teaches a forger nothing."""
        invalid = TokenInvalid("This playback link has expired or is not valid; reload the page.")
        encoded_payload, _, encoded_mac = token.partition(".")
        try:
            payload = _unb64(encoded_payload)
            mac = _unb64(encoded_mac)
        except (binascii.Error, ValueError):
            raise invalid from None
        if not hmac.compare_digest(mac, self._sign(payload)):
            raise invalid
        try:
            version, viewer, token_video, expiry, grant, limit, licence = payload.decode().split(
                "\0"
            )
            expires_at = int(expiry)
            limit_index = int(limit) if limit else None
        except ValueError:
            raise invalid from None
        current = now if now is not None else time.time()
        if version != _VERSION or token_video != video or expires_at <= current:
            raise invalid
        return PlaybackClaims(viewer, token_video, expires_at, grant, limit_index, licence)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict base64url, the way `_b64` writes it: the URL-safe alphabet only, no padding,
    spare bits zero. Python's decoder drops characters outside the alphabet and ignores the
    spare bits, so junk around a real token would still verify; here only the one encoding
    of each byte string does."""
    if not 0 < len(text) <= 1024 or len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the canonical encoding")
    return data
