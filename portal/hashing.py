"""Password hashing off the event loop, on a fixed pool of low-priority threads.

argon2id costs ~18 ms of CPU and 19 MiB of memory a hash by design. Run on the event loop it
would stall every viewer; run on the default thread pool (40 threads) a sign-up burst starts
dozens at once, which share the cores with the event loop and all finish late. Here a fixed
number of threads hash (`MEGAMOVIE_HASH_THREADS`, default one per core), at a lower CPU
priority than the event loop, so segment requests keep their core while sign-ups use what is
left. At most `MEGAMOVIE_HASH_QUEUE` more wait; past that a hash is refused at once with
`Overloaded` (503 + Retry-After) instead of queueing for seconds.

argon2-cffi releases the GIL while it hashes, so the threads run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from portal.errors import Overloaded

T = TypeVar("T")


class PoolWatcher(Protocol):
    """Told what the pool does (portal.metrics.Metrics is one), for live gauges."""

    def hashing_capacity(self, change: int) -> None: ...
    def hashing_in_use(self, change: int) -> None: ...
    def hashing_refused(self) -> None: ...


#: Niceness of the hashing threads: the event loop (nice 0) wins the CPU when it needs it.
HASH_NICENESS = 10


def _lower_priority() -> None:
    # On Linux a thread id names one thread for setpriority; elsewhere this may not apply.
    # Relative to the process's own niceness: a portal run at -5 hashes at +5, not at +10.
    with contextlib.suppress(OSError, AttributeError):
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + HASH_NICENESS
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness))


class HashingPool:
    """Runs hash and verify calls on `threads` threads, with at most `queue` waiting."""

    def __init__(
        self, threads: int = 0, queue: int = 16, watcher: PoolWatcher | None = None
    ) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.capacity = self.threads + queue
        self.in_use = 0  # running + waiting; touched only from the event loop
        self.refused = 0
        self.watcher = watcher
        if watcher is not None:
            watcher.hashing_capacity(self.capacity)
        self._executor = ThreadPoolExecutor(
            self.threads, thread_name_prefix="argon2", initializer=_lower_priority
        )

    async def run(self, work: Callable[..., T], *args: object) -> T:
        if self.in_use >= self.capacity:
            self.refused += 1
            if self.watcher is not None:
                self.watcher.hashing_refused()
            raise Overloaded(
                "Too many people are signing up or logging in right now; try again in a moment.",
                retry_after=1,
            )
        self.in_use += 1
        if self.watcher is not None:
            self.watcher.hashing_in_use(1)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        finally:
            self.in_use -= 1
            if self.watcher is not None:
                self.watcher.hashing_in_use(-1)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.watcher is not None:
            self.watcher.hashing_capacity(-self.capacity)
