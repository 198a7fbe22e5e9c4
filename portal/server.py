"""The HTTP server `megamovie serve` runs: uvicorn, with the limits it lacks on request heads.

What uvicorn offers, and what it does not:

- `timeout_keep_alive` closes a connection that stays idle *after a response*
  (`MEGAMOVIE_KEEPALIVE_TIMEOUT_SECONDS`). It is never armed before the first request, nor
  while a request head is arriving: a client that sends half a request line, or trickles its
  headers a byte at a time, holds the connection for as long as it likes (slowloris).
- `h11_max_incomplete_event_size` bounds a request head, but only for the h11 parser; we run
  httptools (llhttp), which has no such limit, and uvicorn has no header timeout at all.
- `limit_concurrency` answers 503 past a number of connections: a blunt tool that slowloris
  connections would fill first, so we do not rely on it.

`HeadLimitProtocol` adds the two missing limits to uvicorn's httptools protocol: the request
head (request line and headers) must be complete within `MEGAMOVIE_HEADER_TIMEOUT_SECONDS` of
its first byte (or of the connection opening, for a client that sends nothing), and may not
pass `MAX_HEAD_BYTES`. A connection that breaks either is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from portal.settings import Settings

#: The longest request head accepted: room for a 32 KiB Upload-Metadata and cookies.
MAX_HEAD_BYTES = 64 * 1024


class HeadLimitProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request head."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()  # a client that connects and sends nothing is timed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_deadline is None:
            self._start_head_clock()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        super().on_headers_complete()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            # httptools turns a callback's exception into a parser error, which uvicorn
            # answers with 400 and closes the connection.
            raise ValueError(f"request head over {MAX_HEAD_BYTES} bytes")

    def _start_head_clock(self) -> None:
        self._stop_head_clock()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request head took too long")
            self.transport.close()


def protocol_for(settings: Settings) -> type[HeadLimitProtocol]:
    """The protocol class with this configuration's header timeout (uvicorn makes one
    instance per connection from the class alone)."""
    return type(
        "HeadLimitProtocol",
        (HeadLimitProtocol,),
        {"header_timeout": settings.header_timeout_seconds},
    )


def server_config(app: Any, settings: Settings, *, log_level: str | None = None) -> uvicorn.Config:
    """The uvicorn configuration of `megamovie serve` (and of the tests' live servers)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level or settings.log_level,
        # X-Forwarded-For/-Proto are believed only from the reverse proxy's addresses
        # (MEGAMOVIE_FORWARDED_ALLOW_IPS); with none set, from nobody: a client that reaches
        # the portal directly cannot claim another address, whatever headers it sends.
        proxy_headers=bool(settings.forwarded_allow_ips.strip()),
        forwarded_allow_ips=settings.forwarded_allow_ips.strip() or None,
        server_header=False,
        http=protocol_for(settings),
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        lifespan="on",
    )
