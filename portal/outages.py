"""When a part the portal depends on is down: a clear 503 naming it, never a 500 or a hang.

`outage_of` recognises the database driver's and the network's ways of saying "not there"
(refused, reset, timed out, restarting, a pooled connection that died with its server) and
turns them into `Unavailable(part="database")`; `portal.http_errors.UnexpectedErrorMiddleware`
answers such a failure, from a handler or from the auth middleware's session lookup, with
that 503 instead of a 500. Object-store failures are already typed by the vault
(`StorageError`, 503). The engine pings connections that sat idle and replaces dead ones
(portal.idle_ping), so service resumes by itself once the database is back.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from portal.errors import Unavailable

DATABASE_DOWN = "The database is not answering right now; try again in a few seconds."


#: How drivers word "the server is not there": refused, reset, closed, shutting down,
#: starting up, timed out, and SQLite's locked or unopenable file. An OperationalError
#: without these ("no such table") is a bug of ours and stays a 500.
_OUTAGE_WORDS = (
    "connect", "closed", "terminat", "shut", "timeout", "timed out", "starting up",
    "recovery", "reset by peer", "broken pipe", "locked", "unable to open", "disk i/o",
)  # fmt: skip
#: asyncpg's own errors for a server that is starting or shutting down, if they arrive raw.
_ASYNCPG_OUTAGES = frozenset(
    {"CannotConnectNowError", "ConnectionDoesNotExistError", "AdminShutdownError",
     "ConnectionFailureError", "ConnectionRejectionError"}
)  # fmt: skip


def outage_of(exc: BaseException) -> Unavailable | None:
    """The outage `exc` means, or None when it is an ordinary error (a bug stays a 500)."""
    down = Unavailable(DATABASE_DOWN, part="database")
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return down
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            words = f"{type(exc.orig).__name__} {exc.orig}".lower()
            if any(word in words for word in _OUTAGE_WORDS) or any(
                name.lower() in words for name in _ASYNCPG_OUTAGES
            ):
                return down
        return None
    if isinstance(exc, sa_exc.TimeoutError | ConnectionError | TimeoutError):
        return down  # no pooled connection in time; refused or reset while connecting
    if type(exc).__module__.startswith("asyncpg") and type(exc).__name__ in _ASYNCPG_OUTAGES:
        return down
    return None
