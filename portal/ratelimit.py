"""Rate limits on the doors people knock on (sign-up, log-in, API tokens), kept in memory.

Two limits per action: one per client address (`MEGAMOVIE_RATE_LIMIT_PER_MINUTE`, a fixed
one-minute window, against password guessing and sign-up scripts) and one for everyone
together (`MEGAMOVIE_SIGNUP_RATE_PER_SECOND`, `MEGAMOVIE_LOGIN_RATE_PER_SECOND`, a token
bucket holding one second's worth, against a flood that would otherwise fill the hashing
pool). Both are per process: with N processes behind a proxy the site admits up to N times
these figures. They used to be a row per client in the database, which made every sign-up
and log-in one more write transaction; on SQLite writers queue for one lock, so the counter
cost more than the hashing it protected.

The per-client table holds the current minute only, so a flood from many addresses cannot
grow it past one minute's worth of distinct clients.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from portal.errors import RateLimited

WINDOW_SECONDS = 60


@dataclass
class TokenBucket:
    rate: float  # tokens a second; the bucket holds one second's worth
    tokens: float = field(init=False)
    updated: float | None = None

    def __post_init__(self) -> None:
        self.tokens = max(1.0, self.rate)

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is free."""
        capacity = max(1.0, self.rate)
        elapsed = 0.0 if self.updated is None else max(0.0, now - self.updated)
        self.tokens = min(capacity, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float(WINDOW_SECONDS)


class RateLimiter:
    def __init__(self, per_client_per_minute: int, global_per_second: dict[str, float]) -> None:
        self.per_client = per_client_per_minute
        self.buckets = {action: TokenBucket(rate) for action, rate in global_per_second.items()}
        self._window = 0
        self._hits: dict[tuple[str, str], int] = {}

    def hit(self, action: str, client: str, now: float | None = None) -> None:
        """Count one attempt at `action` from `client`; RateLimited when over either limit."""
        wall = time.time() if now is None else now
        window = int(wall // WINDOW_SECONDS) * WINDOW_SECONDS
        if window != self._window:
            self._window, self._hits = window, {}
        key = (action, client)
        hits = self._hits.get(key, 0) + 1
        self._hits[key] = hits
        if hits > self.per_client:
            wait = max(1, int(window + WINDOW_SECONDS - wall))
            raise RateLimited(
                f"Too many attempts from your address; wait {wait} seconds and try again.",
                retry_after=wait,
            )
        bucket = self.buckets.get(action)
        if bucket is not None:
            wait_s = bucket.take(time.monotonic() if now is None else now)
            if wait_s > 0:
                raise RateLimited(
                    "Too many people are trying this at once; try again in a moment.",
                    retry_after=max(1, math.ceil(wait_s)),
                )
