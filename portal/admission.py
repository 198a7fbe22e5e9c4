"""Admission control: a process sheds what it cannot finish in time, at once, with a 503.

Every HTTP request is counted while it is in flight (from arrival until its last byte is
sent). Two budgets decide who gets in:

- *Ongoing* work: segments, playlists and storyboards under /stream/ (viewers already
  watching on a grant), static files, the PATCH/HEAD of an upload already started, and the
  dashboard's event stream (open for as long as the page is, so it must not hold a slot of
  the budget for new work). They
  are admitted while the process has fewer than `MEGAMOVIE_MAX_IN_FLIGHT` requests in flight.
- *New* work: everything else (pages, sign-ups, log-ins, searches, playback grants, new
  uploads). It is admitted only while fewer than `MEGAMOVIE_MAX_IN_FLIGHT_NEW` new requests
  are in flight, and the total is under the first limit.

So the difference between the two limits is held for viewers: a burst of sign-ups and
searches fills its own budget and is told to come back (503, `Retry-After`), while the
people already watching keep getting their segments. Nothing waits in a queue here; a
request is answered or refused the moment it arrives, so an overloaded process answers
quickly instead of timing out. `/healthz` and `/metrics` are never refused: the load
balancer and the operator must see the process even when it is full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from portal.errors import Overloaded
from portal.http_errors import portal_error
from portal.metrics import Metrics

ONGOING = "ongoing"
NEW = "new"
EXEMPT = "exempt"
_ONGOING_PREFIXES = ("/stream/", "/static/", "/api/events/")
_EXEMPT_PATHS = frozenset({"/healthz", "/metrics"})


def request_class(method: str, path: str) -> str:
    """ONGOING, NEW or EXEMPT (see the module docstring)."""
    if path in _EXEMPT_PATHS:
        return EXEMPT
    if path.startswith(_ONGOING_PREFIXES):
        return ONGOING
    if path.startswith("/api/uploads/") and method in ("PATCH", "HEAD"):
        return ONGOING
    return NEW


@dataclass
class Admission:
    """The budgets and what is in flight now, for one process (shared with /metrics)."""

    max_in_flight: int
    max_new: int
    in_flight: dict[str, int] = field(default_factory=lambda: {ONGOING: 0, NEW: 0, EXEMPT: 0})
    shed: dict[str, int] = field(default_factory=lambda: {ONGOING: 0, NEW: 0})

    def admit(self, kind: str) -> bool:
        if kind != EXEMPT:
            total = self.in_flight[ONGOING] + self.in_flight[NEW]
            if total >= self.max_in_flight or (kind == NEW and self.in_flight[NEW] >= self.max_new):
                self.shed[kind] += 1
                return False
        self.in_flight[kind] += 1
        return True

    def done(self, kind: str) -> None:
        self.in_flight[kind] -= 1


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = request_class(scope["method"], scope["path"])
        services = getattr(scope["app"].state, "services", None)
        metrics: Metrics | None = services.metrics if services is not None else None
        if not self.admission.admit(kind):
            if metrics is not None:
                metrics.shed.labels(kind).inc()
            refusal = Overloaded(
                "The site is very busy right now; try again in a moment.", retry_after=1
            )
            response = await portal_error(Request(scope), refusal)
            await response(scope, receive, send)
            return
        if metrics is not None:
            metrics.in_flight.labels(kind).inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.done(kind)
            if metrics is not None:
                metrics.in_flight.labels(kind).dec()
