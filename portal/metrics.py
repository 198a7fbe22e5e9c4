"""Prometheus metrics in text format, kept in memory per process (scrape every process).

Counters only go up; job counts are read from the database when scraped, so they are true
across every worker process. No label takes a value from the request path: a scraper must
not be able to grow our memory by asking for random URLs. The web layer counts responses
into these with `portal.web.MetricsMiddleware`; workers count transcodes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

JOB_STATES = ("queued", "running", "done", "failed")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass
class Metrics:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    segments_served: int = 0
    segment_bytes: int = 0
    transcodes: int = 0
    transcode_seconds: float = 0.0

    def count_request(self, method: str, status: int) -> None:
        self.requests[(method if method in _METHODS else "OTHER", status)] += 1

    def count_segment(self, nbytes: int) -> None:
        self.segments_served += 1
        self.segment_bytes += nbytes

    def count_transcode(self, seconds: float) -> None:
        self.transcodes += 1
        self.transcode_seconds += seconds

    def render(self, job_counts: dict[str, int]) -> str:
        lines = [
            "# HELP megamovie_http_requests_total HTTP requests answered, by method and status.",
            "# TYPE megamovie_http_requests_total counter",
        ]
        for (method, status), count in sorted(self.requests.items()):
            lines.append(
                f'megamovie_http_requests_total{{method="{method}",status="{status}"}} {count}'
            )
        lines += [
            "# HELP megamovie_segments_served_total Media segments sent (decrypted) to players.",
            "# TYPE megamovie_segments_served_total counter",
            f"megamovie_segments_served_total {self.segments_served}",
            "# HELP megamovie_segment_bytes_total Bytes of decrypted media sent to players.",
            "# TYPE megamovie_segment_bytes_total counter",
            f"megamovie_segment_bytes_total {self.segment_bytes}",
            "# HELP megamovie_jobs Background jobs by state (all processes).",
            "# TYPE megamovie_jobs gauge",
        ]
        for state in sorted({*JOB_STATES, *job_counts}):
            lines.append(f'megamovie_jobs{{state="{state}"}} {job_counts.get(state, 0)}')
        lines += [
            "# HELP megamovie_transcode_seconds Wall time of finished transcodes.",
            "# TYPE megamovie_transcode_seconds summary",
            f"megamovie_transcode_seconds_sum {self.transcode_seconds:.3f}",
            f"megamovie_transcode_seconds_count {self.transcodes}",
        ]
        return "\n".join(lines) + "\n"
