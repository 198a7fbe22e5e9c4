"""Prometheus metrics through prometheus-client, one scrape for every process of a machine.

`megamovie serve` and `megamovie worker` point prometheus-client's multiprocess mode at
`MEGAMOVIE_METRICS_DIR` (portal.cli) before anything imports it: each process
writes its counters, gauges and histograms to small mmap files there, and `GET /metrics` on
any portal of the machine reads them all, so one scrape sees both portals and the workers
beside them. Without a metrics dir (tests, an app built in-process) every app keeps its own
registry in memory.

Job counts, queue depth and the age of the oldest waiting job are read from the database when
scraped, so they are true across machines. No label takes a value from the request path: a
scraper must not be able to grow our memory by asking for random URLs. The web layer counts
responses and times segments with `portal.web.MetricsMiddleware`; workers count transcodes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

JOB_STATES = ("queued", "running", "done", "failed")
ADMISSION_CLASSES = ("ongoing", "new", "exempt")  # portal.admission
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Segment latency buckets around the 200 ms a viewer's player can hide and the 4 s it cannot.
SEGMENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# `_created` series double every counter's lines and no dashboard here uses them.
prometheus_client.disable_created_metrics()


def multiprocess_mode() -> bool:
    """Did prometheus-client start in multiprocess mode (decided when it was imported)?"""
    return values.ValueClass is not values.MutexValue


def prune_metrics_dir(path: Path) -> None:
    """Remove the files of processes that are gone, so counters of dead processes do not pile
    up (Prometheus sees a counter reset, which `rate()` handles)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for file in path.glob("*.db"):
        pid = file.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """This process's metrics. Each instance has its own registry (two apps in one process,
    as in the tests, do not count into each other) unless in multiprocess mode, where the
    files are shared by design."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "megamovie_http_requests",
            "HTTP responses sent, by method and status.",
            ["method", "status"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "megamovie_requests_in_flight",
            "Requests being handled now, by admission class (ongoing, new, exempt).",
            ["kind"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "megamovie_requests_shed",
            "Requests refused at once by admission control (503), by class.",
            ["kind"],
            registry=registry,
        )
        self.hashing_in_use_gauge = Gauge(
            "megamovie_hashing_in_use",
            "Password hashes running or waiting for a hashing thread.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.hashing_capacity_gauge = Gauge(
            "megamovie_hashing_capacity",
            "Password hashes that may run or wait at once (threads + queue).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.hashing_refused_total = Counter(
            "megamovie_hashing_refused",
            "Password hashes refused because the hashing pool was full (503).",
            registry=registry,
        )
        self.segment_seconds = Histogram(
            "megamovie_segment_seconds",
            "Time to answer a media segment request under /stream/, to its last byte.",
            buckets=SEGMENT_BUCKETS,
            registry=registry,
        )
        self.segments_served = Counter(
            "megamovie_segments_served",
            "Media segments and images sent (decrypted) from /stream/ and /media/.",
            registry=registry,
        )
        self.segment_bytes = Counter(
            "megamovie_segment_bytes",
            "Bytes of decrypted media sent to players.",
            registry=registry,
        )
        self.transcode_seconds = Summary(
            "megamovie_transcode_seconds",
            "Wall time of finished transcodes.",
            registry=registry,
        )

        for kind in ADMISSION_CLASSES:  # every series present from the first scrape
            self.in_flight.labels(kind)
            if kind != "exempt":
                self.shed.labels(kind)

    # What the hashing pool tells us (portal.hashing.PoolWatcher).
    def hashing_capacity(self, change: int) -> None:
        self.hashing_capacity_gauge.inc(change)

    def hashing_in_use(self, change: int) -> None:
        self.hashing_in_use_gauge.inc(change)

    def hashing_refused(self) -> None:
        self.hashing_refused_total.inc()

    def count_request(self, method: str, status: int) -> None:
        self.requests.labels(method if method in _METHODS else "OTHER", str(status)).inc()

    def answered(self, method: str, status: int) -> float:
        """Responses this process counted with `method` and `status` (for tests and tools)."""
        value = self.registry.get_sample_value(
            "megamovie_http_requests_total", {"method": method, "status": str(status)}
        )
        return value or 0.0

    def count_segment(self, nbytes: int) -> None:
        self.segments_served.inc()
        self.segment_bytes.inc(nbytes)

    def count_transcode(self, seconds: float) -> None:
        self.transcode_seconds.observe(seconds)

    def close(self) -> None:
        """This process is going away: its live gauges stop counting in the sums."""
        if multiprocess_mode():
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(os.getpid())

    def render(
        self, job_counts: dict[str, int], queue_depth: int = 0, queue_age: float = 0.0
    ) -> str:
        """The text exposition of every process's metrics plus the database's job figures."""
        if multiprocess_mode():
            processes = CollectorRegistry()
            multiprocess.MultiProcessCollector(processes)
            text = generate_latest(processes)
        else:
            text = generate_latest(self.registry)
        jobs = CollectorRegistry()
        jobs.register(_JobFigures(job_counts, queue_depth, queue_age))
        return (text + generate_latest(jobs)).decode()


class _JobFigures:
    """Read from the database at scrape time: the same on every portal of the site."""

    def __init__(self, counts: dict[str, int], depth: int, age: float) -> None:
        self.counts, self.depth, self.age = counts, depth, age

    def collect(self):
        by_state = GaugeMetricFamily(
            "megamovie_jobs", "Background jobs by state (all processes).", labels=["state"]
        )
        for state in sorted({*JOB_STATES, *self.counts}):
            by_state.add_metric([state], self.counts.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "megamovie_job_queue_depth", "Jobs due to run and waiting for a worker.", self.depth
        )
        yield GaugeMetricFamily(
            "megamovie_job_queue_age_seconds",
            "How long the oldest due job has waited for a worker (0: none waits).",
            self.age,
        )
