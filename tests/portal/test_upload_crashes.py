"""A portal killed with SIGKILL in the middle of a PATCH: the restarted portal lets the upload
resume at once. The write lease belonged to the dead process, not to the clock.

Real `megamovie serve` processes, a real SIGKILL, on SQLite (flock) and PostgreSQL
(advisory locks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    TUS,
    bearer,
    create,
    create_account,
    patch,
    pipeline_settings,
    raw_patch_start,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request, tmp_path):
    base = pipeline_settings(tmp_path)
    if request.param == "sqlite":
        return base
    return base.replace(database_url=request.getfixturevalue("sync_postgres_url"))


class Portal:
    """`megamovie serve` in a process of its own, on a free port."""

    def __init__(self, settings, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MEGAMOVIE_DATA_DIR": str(settings.data_dir),
            "MEGAMOVIE_DATABASE_URL": settings.database_url,
            "MEGAMOVIE_PORT": str(self.port),
            "MEGAMOVIE_WORKERS": "0",
            "MEGAMOVIE_LOG_LEVEL": "warning",
        }
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from portal.cli import main; main()", "serve"],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the portal did not start; see {log}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def portals(tmp_path) -> Iterator[list[Portal]]:
    started: list[Portal] = []
    yield started
    for portal in started:
        portal.stop()


def test_a_patch_cut_by_sigkill_resumes_at_once_after_a_restart(settings, tmp_path, portals):
    create_account(settings, "maker@example.org", "creator")
    data = os.urandom(60_000)
    first = Portal(settings, tmp_path / "portal.log")
    portals.append(first)
    with httpx.Client(base_url=first.url) as client:
        auth = bearer(client, "maker@example.org")
        location = create(client, auth, len(data)).headers["location"]
        # A PATCH that announces every byte, sends a third, and holds the lease.
        writing = raw_patch_start(first, location, auth, 0, len(data), data[:20_000])
        time.sleep(0.5)
        head = client.head(location, headers={**TUS, **auth})
        assert head.status_code == 200
        assert patch(client, location, auth, 0, data).status_code == 409  # the lease holds

    first.kill()
    writing.close()

    second = Portal(settings, tmp_path / "portal.log")
    portals.append(second)
    with httpx.Client(base_url=second.url) as client:
        head = client.head(location, headers={**TUS, **auth})
        offset = int(head.headers["upload-offset"])
        started = time.monotonic()
        resumed = patch(client, location, auth, offset, data[offset:])
        elapsed = time.monotonic() - started
        assert (resumed.status_code, resumed.headers.get("upload-offset")) == (204, str(len(data)))
        assert elapsed < 5  # at once: no lease left to wait out
        video_id = client.head(location, headers={**TUS, **auth}).headers["video-id"]
        video = client.get(f"/api/videos/{video_id}", headers=auth).json()
    assert video["status"] == "queued"
