"""A licence: what a viewer may watch of a film, now. Decided by the `viewer_licence` hook.

`full` plays the whole film; `preview` plays the first `preview_seconds` and then shows the
offers. `expires_at` bounds the licence (a rental's end, a subscription period's end); the
playback token never outlives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from portal.licensing.offers import Offer

FULL = "full"
PREVIEW = "preview"


@dataclass(frozen=True)
class Licence:
    kind: str  # full | preview
    source: str  # free, owner, admin, purchase, rental, channel, pass, preview, or a plugin's
    preview_seconds: int | None = None
    expires_at: datetime | None = None
    offers: tuple[Offer, ...] = field(default=())
    #: Set when this grant starts a rental's 48 hours (the first play).
    starts_rental: str | None = None

    @property
    def full(self) -> bool:
        return self.kind == FULL

    @classmethod
    def whole(cls, source: str, expires_at: datetime | None = None) -> Licence:
        return cls(FULL, source, expires_at=expires_at)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "preview_seconds": self.preview_seconds,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "offers": [offer.as_json() for offer in self.offers],
        }
