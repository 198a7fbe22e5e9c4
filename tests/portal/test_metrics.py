"""What /metrics tells an operator on launch day, from one process and from several."""

from __future__ import annotations

import httpx
from starlette.testclient import TestClient

from benchmarks.stack import Portal
from portal.app import create_app
from portal.settings import Secret
from tests.helpers import pipeline_settings

SCRAPER = {"Authorization": "Bearer scraper"}


def scrape(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_show_in_flight_hashing_segments_and_the_job_queue(tmp_path):
    settings = pipeline_settings(tmp_path, metrics_token=Secret("scraper"))
    app = create_app(settings)
    with TestClient(app) as client:
        values = scrape(client.get("/metrics", headers=SCRAPER).text)
        capacity = app.state.services.hashing.capacity
    assert values['megamovie_requests_in_flight{kind="exempt"}'] == 1
    assert values['megamovie_requests_in_flight{kind="new"}'] == 0
    assert values['megamovie_requests_shed_total{kind="new"}'] == 0
    assert values["megamovie_hashing_capacity"] == capacity
    assert values["megamovie_hashing_in_use"] == 0
    assert values["megamovie_hashing_refused_total"] == 0
    assert values["megamovie_job_queue_depth"] == 0
    assert values["megamovie_job_queue_age_seconds"] == 0
    assert values['megamovie_jobs{state="queued"}'] == 0
    assert values["megamovie_segment_seconds_count"] == 0
    assert 'megamovie_segment_seconds_bucket{le="0.2"}' in values


def test_one_scrape_sees_every_process_sharing_the_metrics_dir(tmp_path):
    env = {
        "MEGAMOVIE_DATA_DIR": str(tmp_path / "data"),
        "MEGAMOVIE_METRICS_DIR": str(tmp_path / "metrics"),
        "MEGAMOVIE_WORKERS": "0",
        "MEGAMOVIE_HASH_THREADS": "1",
        "MEGAMOVIE_HASH_QUEUE": "3",
        "MEGAMOVIE_LOG_LEVEL": "warning",
    }
    first = Portal(env, tmp_path / "first.log").start()
    second = None
    try:
        second = Portal(env, tmp_path / "second.log").start()
        with httpx.Client(timeout=30) as client:
            for _ in range(7):
                assert client.get(f"{second.url}/api/videos").status_code == 200
            values = scrape(client.get(f"{first.url}/metrics").text)
            # The second process's requests, read from the first: one scrape, every process.
            assert values['megamovie_http_requests_total{method="GET",status="200"}'] >= 7
            assert values["megamovie_hashing_capacity"] == 2 * (1 + 3)
            second.stop()
            second = None
            after = scrape(client.get(f"{first.url}/metrics").text)
            assert after["megamovie_hashing_capacity"] == 1 + 3  # a stopped process leaves
            assert after['megamovie_http_requests_total{method="GET",status="200"}'] >= 7
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_the_grafana_dashboard_only_uses_metrics_the_portal_serves(tmp_path):
    import json
    import re
    from pathlib import Path

    dashboard = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "megamovie.json"
    panels = json.loads(dashboard.read_text())["panels"]
    used = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"megamovie_[a-z_]+", target["expr"])
    }
    settings = pipeline_settings(tmp_path, metrics_token=Secret("scraper"))
    with TestClient(create_app(settings)) as client:
        served = {line.split()[2] for line in client.get("/metrics", headers=SCRAPER).text
                  .splitlines() if line.startswith("# TYPE")}  # fmt: skip
    suffixes = ("_bucket", "_sum", "_count", "_total")
    bases = {n for n in used if n in served or n.endswith(suffixes)}
    missing = sorted(n for n in used if n not in served and not any(
        n.endswith(s) and n[: -len(s)] in served for s in suffixes))  # fmt: skip
    assert missing == [] and bases
    assert {"megamovie_requests_in_flight", "megamovie_requests_shed_total",
            "megamovie_segment_seconds_bucket", "megamovie_job_queue_depth"} <= used  # fmt: skip
