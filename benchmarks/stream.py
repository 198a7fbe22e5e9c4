"""Segment delivery: our decrypting stream endpoint against nginx serving plaintext, same run.

    .venv/bin/python benchmarks/stream.py [--duration 10] [--connections 32] [--segments 16]

Synthesises ~2.5 MB segments (random bytes: their content does not matter to delivery),
stores them through the vault as a ready film, and serves them through the real portal
(`/stream/{token}/{video}/1080p/NNNNNN.m4s`: token check, vault size, decrypt, send) under
uvicorn and granian with 1 and 2 workers. nginx serves the same plaintext from a temp dir
(sendfile). wrk loads each with the same connections and duration on loopback, cycling over
all segments. Prints requests/s, MB/s, p99 latency, the ratio ours/nginx, and how many
concurrent 5 Mb/s viewers each could feed. Everything it starts, it stops. The portal tunes
glibc malloc itself at start-up (portal/playback.py); without that it reaches ~0.2-0.4x.

Compare ratios within one run, not absolute figures across runs (±20% on these machines).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal.db import create_engine, new_id, segments, users, utcnow, videos  # noqa: E402
from portal.migrations import upgrade  # noqa: E402
from portal.services import vault_config  # noqa: E402
from portal.settings import Settings  # noqa: E402
from portal.signing import load_secret_key  # noqa: E402
from portal.tokens import PlaybackTokens  # noqa: E402
from portal.vault import open_vault  # noqa: E402

SEGMENT_BYTES = 2_570_000
RENDITION = "1080p"
VIEWER_BITS_PER_SECOND = 5_000_000
BIN = Path(sys.executable).parent


@dataclass
class Result:
    name: str
    requests_per_second: float
    bytes_per_second: float
    p99_ms: float
    errors: int

    @property
    def viewers(self) -> int:
        return int(self.bytes_per_second * 8 / VIEWER_BITS_PER_SECOND)


def app_from_env():  # type: ignore[no-untyped-def]
    """ASGI factory for the servers we start (they run this module from its directory)."""
    from portal.app import create_app

    return create_app(Settings.from_env())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def prepare(settings: Settings, count: int, plain_dir: Path) -> tuple[str, str]:
    """A ready film of `count` random segments in the vault, and its plaintext for nginx.
    Returns (video id, playback token)."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    vault = await open_vault(vault_config(settings), engine)
    user_id, video_id, now = new_id(), new_id(), utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            users.insert().values(
                id=user_id,
                email="bench@example.org",
                display_name="bench",
                password_hash="!",  # noqa: S106 (matches no password)
                role="creator",
                created_at=now,
            )
        )
        await conn.execute(
            videos.insert().values(
                id=video_id,
                creator_id=user_id,
                title="bench",
                description="",
                tags="",
                status="ready",
                progress=1.0,
                playable=True,
                created_at=now,
                updated_at=now,
            )
        )
    await vault.create_key(video_id)
    folder = plain_dir / "seg"
    folder.mkdir(parents=True)
    for i in range(count):
        data = os.urandom(SEGMENT_BYTES)
        await vault.put(video_id, f"hls/{RENDITION}/{i:06d}.m4s", data)
        (folder / f"{i:06d}.m4s").write_bytes(data)
        async with engine.begin() as conn:
            await conn.execute(
                segments.insert().values(
                    video_id=video_id, rendition=RENDITION, idx=i, duration=4.0, size=SEGMENT_BYTES
                )
            )
    await vault.aclose()
    await engine.dispose()
    token, _ = PlaybackTokens(load_secret_key(settings), 24 * 3600).issue(None, video_id)
    return video_id, token


def wrk_script(path: Path, prefix: str, count: int) -> Path:
    """wrk cycles over every segment, as many viewers would."""
    path.write_text(
        f'local prefix = "{prefix}"\nlocal n = {count}\nlocal i = 0\n'
        "request = function()\n  i = (i + 1) % n\n"
        '  return wrk.format("GET", prefix .. string.format("%06d.m4s", i))\nend\n'
    )
    return path


def run_wrk(name: str, port: int, script: Path, connections: int, duration: int) -> Result:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[transfer.group(2)]  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, out)
        errors += int(found.group(1)) if found else 0
    return Result(name, rps, float(transfer.group(1)) * scale, p99_ms, errors)  # type: ignore[union-attr]


def start_nginx(tmp: Path, root: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ video/iso.segment m4s; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
""")
    proc = subprocess.Popen(
        ["/usr/sbin/nginx", "-c", str(conf), "-p", str(tmp)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return proc


def start_portal(
    server: str, workers: int, port: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    # Both servers take these flags with the same meaning.
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
              "--no-access-log", "--log-level", "warning"]  # fmt: skip
    if server == "uvicorn":
        app_dir = ["--app-dir", str(ROOT / "benchmarks")]
        args = [str(BIN / "uvicorn"), "--factory", *app_dir, *common, "stream:app_from_env"]
    else:
        options = ["--interface", "asgi", "--factory", "--working-dir", str(ROOT / "benchmarks")]
        args = [str(BIN / "granian"), *options, *common, "stream:app_from_env"]
    proc = subprocess.Popen(
        args,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_port(port, proc)
    return proc


def check_same_bytes(port: int, path: str, expected: bytes) -> None:
    """One request before loading: the endpoint must answer the plaintext, or the figures
    would measure error pages."""
    import httpx

    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
    if response.content != expected:
        raise RuntimeError(
            f"{path} on port {port} answered {response.status_code}, not the segment's plaintext"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--servers", default="uvicorn:1,uvicorn:2,granian:1,granian:2")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (make setup installs it)")

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-stream-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {
            "MEGAMOVIE_DATA_DIR": str(tmp / "data"),
            "MEGAMOVIE_WORKERS": "0",
            "MEGAMOVIE_LOG_LEVEL": "warning",
        }
        settings = Settings.from_env(env)
        plain = tmp / "plain"
        video_id, token = asyncio.run(prepare(settings, args.segments, plain))
        # nginx workers run as an unprivileged user: let them reach the plaintext copies only.
        tmp.chmod(0o711)
        for path in (plain, plain / "seg", *(plain / "seg").iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        sample = (plain / "seg" / "000000.m4s").read_bytes()
        print(
            f"{args.segments} segments of {SEGMENT_BYTES / 1e6:.2f} MB; wrk -c{args.connections} "
            f"-d{args.duration}s on 127.0.0.1; {os.cpu_count()} CPUs"
        )

        results: list[Result] = []
        port = free_port()
        nginx = start_nginx(tmp, plain, port)
        procs.append(nginx)
        check_same_bytes(port, "/seg/000000.m4s", sample)
        script = wrk_script(tmp / "nginx.lua", "/seg/", args.segments)
        results.append(
            run_wrk("nginx (plaintext, sendfile)", port, script, args.connections, args.duration)
        )
        stop(nginx)

        prefix = f"/stream/{token}/{video_id}/{RENDITION}/"
        script = wrk_script(tmp / "portal.lua", prefix, args.segments)
        for spec in args.servers.split(","):
            server, workers = spec.split(":")
            port = free_port()
            proc = start_portal(server, int(workers), port, env)
            procs.append(proc)
            try:
                check_same_bytes(port, prefix + "000000.m4s", sample)
                name = f"ours (decrypting): {server}, {workers} worker(s)"
                results.append(run_wrk(name, port, script, args.connections, args.duration))
            finally:
                stop(proc)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    peer = results[0]
    print(
        f"\n{'server':40} {'req/s':>8} {'MB/s':>8} {'p99 ms':>8} {'x nginx':>8} "
        f"{'5Mb/s viewers':>14} {'errors':>7}"
    )
    for r in results:
        print(
            f"{r.name:40} {r.requests_per_second:8.0f} {r.bytes_per_second / 1e6:8.0f} "
            f"{r.p99_ms:8.1f} {r.bytes_per_second / peer.bytes_per_second:8.2f} "
            f"{r.viewers:14,d} {r.errors:7d}"
        )


if __name__ == "__main__":
    main()
