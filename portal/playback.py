"""Process-level tuning for the segment hot path.

Serving a segment allocates a few fresh multi-megabyte buffers (ciphertext read, plaintext,
the response body). glibc serves allocations above its mmap threshold with a fresh `mmap`
each time and unmaps them on free, so every request page-faults its buffers in again: that,
not AES-GCM, is what limits an untuned server (benchmarks/stream.py: ~0.40x nginx untuned,
~0.8-0.94x tuned with granian). Raising the threshold lets freed buffers be reused from the
heap; a large trim threshold keeps the heap from being returned and re-faulted between
requests. The cost is up to a few hundred MB of heap kept warm per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("megamovie.playback")

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 16 * 1024 * 1024  # above any segment; glibc's ceiling is 32 MiB on 64-bit
TRIM_THRESHOLD = 256 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the settings above to glibc malloc in this process; False when the C library is
    not glibc (musl, macOS), where there is nothing to tune this way."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    if not ok:
        log.warning("could not tune malloc for segment serving; streaming will be slower")
    return ok
