"""Segment delivery: server CPU per segment and per GB, ours against nginx, same run.

    .venv/bin/python benchmarks/stream.py [--rounds 3] [--duration 5] [--connections 32]
        [--segments 16] [--servers uvicorn:1,granian:1,uvicorn:2,granian:2]

Synthesises ~2.57 MB segments (random bytes: their content does not matter to delivery),
stores them through the vault as a ready film, and serves them through the real portal
(`/stream/{token}/{video}/1080p/NNNNNN.m4s`: token check, vault read, decrypt, send) under
each server in `--servers`. nginx serves the same plaintext from a temp dir (sendfile). wrk
loads each with the same connections and duration on loopback, cycling over all segments.

On a 2-core machine wrk itself takes most of the CPU, so requests/s mostly measures wrk. The
headline is therefore the server's own CPU: utime+stime from /proc/PID/stat of every process
in the server's session (master and workers), read before and after each wrk run, divided by
the requests and the bytes wrk received. Every server is started once and kept running; the
wrk runs are interleaved (nginx, then each of ours, `--rounds` times) so drift on the machine
hits all alike, and the table shows medians over the rounds. "CPU/GB x nginx" is the median
of the per-round ratios, ours over nginx's (lower is better; 1.0 would be nginx's cost).
MB/s and p99 are shown beside it: inline work can trade latency for CPU. "others" is the CPU
the rest of the machine used during the runs (neither the server nor wrk), in cores: how
loaded the machine was.

The portal tunes glibc malloc itself at start-up (portal/playback.py). Compare ratios within
one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout whose portal runs: this one, or MM_BENCH_ROOT (how --baseline runs another).
ROOT = Path(os.environ.get("MM_BENCH_ROOT") or HERE.parent).resolve()
sys.path.insert(0, str(ROOT))
# Process helpers shared by every benchmark (stack.py imports nothing of the portal).
sys.path.insert(1, str(HERE))

from stack import free_port, stop, wait_for_port  # noqa: E402

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
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NGINX = "nginx (plaintext, sendfile)"


@dataclass
class Run:
    """One wrk run against one server."""

    name: str
    requests: int
    seconds: float
    bytes_read: int
    p99_ms: float
    errors: int
    server_cpu: float  # seconds, every process of the server
    wrk_cpu: float
    others_cpu: float  # seconds of CPU the rest of the machine used meanwhile

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_read / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu * 1000 / max(1, self.requests)

    @property
    def cpu_s_per_gb(self) -> float:
        return self.server_cpu / max(1, self.bytes_read) * 1e9


def app_from_env():  # type: ignore[no-untyped-def]
    """ASGI factory for the servers we start (they run this module from its directory)."""
    from portal.app import create_app

    return create_app(Settings.from_env())


def session_cpu(session: int) -> float:
    """CPU seconds (user + system, all threads) of every live process in `session`: a server
    started with `start_new_session` is its master and all its workers."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # exited meanwhile
        # Fields after "(comm)": state ppid pgrp session ... utime(14) stime(15).
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    # A grant id, as the playback grant gives: the segment endpoint meters what it sends.
    token, _ = PlaybackTokens(load_secret_key(settings), 24 * 3600).issue(
        None, video_id, grant=new_id()
    )
    return video_id, token


def wrk_script(path: Path, prefix: str, count: int) -> Path:
    """wrk cycles over every segment, as many viewers would."""
    path.write_text(
        f'local prefix = "{prefix}"\nlocal n = {count}\nlocal i = 0\n'
        "request = function()\n  i = (i + 1) % n\n"
        '  return wrk.format("GET", prefix .. string.format("%06d.m4s", i))\nend\n'
    )
    return path


_SCALE = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def run_wrk(
    name: str, server: subprocess.Popen[bytes], port: int, script: Path, args: argparse.Namespace
) -> Run:
    command = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
               "-s", str(script), f"http://127.0.0.1:{port}/"]  # fmt: skip
    cpu0, wrk0, busy0 = session_cpu(server.pid), children_cpu(), machine_busy()
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, check=True
    ).stdout
    cpu, wrk_cpu = session_cpu(server.pid) - cpu0, children_cpu() - wrk0
    busy = machine_busy() - busy0
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)([KMGT]?B) read", out)
    if done is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    seconds = float(done.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[done.group(3)]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, out)
        errors += int(found.group(1)) if found else 0
    return Run(
        name=name,
        requests=int(done.group(1)),
        seconds=seconds,
        bytes_read=int(float(done.group(4)) * _SCALE[done.group(5)]),
        p99_ms=p99_ms,
        errors=errors,
        server_cpu=cpu,
        wrk_cpu=wrk_cpu,
        others_cpu=max(0.0, busy - cpu - wrk_cpu),
    )


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
    server: str, workers: int, port: int, env: dict[str, str], root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """The portal of checkout `root` under `server`, its app made by `app_from_env` here."""
    # Both servers take these flags with the same meaning.
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
              "--no-access-log", "--log-level", "warning"]  # fmt: skip
    if server == "uvicorn":
        app_dir = ["--app-dir", str(HERE)]
        args = [str(BIN / "uvicorn"), "--factory", *app_dir, *common, "stream:app_from_env"]
    else:
        options = ["--interface", "asgi", "--factory", "--working-dir", str(HERE)]
        args = [str(BIN / "granian"), *options, *common, "stream:app_from_env"]
    proc = subprocess.Popen(
        args,
        env={**os.environ, **env, "PYTHONPATH": str(root), "MM_BENCH_ROOT": str(root)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


def report(runs: list[Run], names: list[str]) -> None:
    by_name = {name: [r for r in runs if r.name == name] for name in names}
    peers = by_name[NGINX]
    median = statistics.median
    print(
        f"\n{'server (median of ' + str(len(peers)) + ' rounds)':48} {'req/s':>6} {'MB/s':>6} "
        f"{'p99 ms':>7} {'CPU ms/req':>10} {'CPU s/GB':>8} {'CPU/GB x nginx':>14} "
        f"{'5Mb/s viewers':>13} {'errors':>6}"
    )
    for name, rows in by_name.items():
        ratio = median(r.cpu_s_per_gb / p.cpu_s_per_gb for r, p in zip(rows, peers, strict=True))
        rate = median(r.bytes_per_second for r in rows)
        cpu_ms = median(r.cpu_ms_per_request for r in rows)
        print(
            f"{name:48} {median(r.requests / r.seconds for r in rows):6.0f} {rate / 1e6:6.0f} "
            f"{median(r.p99_ms for r in rows):7.1f} {cpu_ms:10.2f} "
            f"{median(r.cpu_s_per_gb for r in rows):8.3f} {ratio:14.2f} "
            f"{int(rate * 8 / VIEWER_BITS_PER_SECOND):13,d} {sum(r.errors for r in rows):6d}"
        )
    wrk = median(r.wrk_cpu / r.seconds for r in runs)
    others = [r.others_cpu / r.seconds for r in runs]
    print(
        f"\nwrk used {wrk:.2f} cores (median); the rest of the machine used "
        f"{median(others):.2f} cores (median, max {max(others):.2f}) during the runs; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the end."
    )


def prepare_elsewhere(root: Path, data: Path, plain: Path, count: int) -> tuple[str, str]:
    """`prepare` run by checkout `root`'s own code (its schema, its vault), in a subprocess."""
    out = subprocess.run(
        [sys.executable, str(HERE / "stream.py"), "--prepare", str(data), str(plain), str(count)],
        env={**os.environ, "PYTHONPATH": str(root), "MM_BENCH_ROOT": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    video_id, token = json.loads(out.strip().splitlines()[-1])
    return video_id, token


def main() -> None:
    if sys.argv[1:2] == ["--prepare"]:  # prepare_elsewhere's subprocess
        data, plain, count = sys.argv[2:5]
        env = {"MEGAMOVIE_DATA_DIR": data, "MEGAMOVIE_LOG_LEVEL": "warning"}
        print(json.dumps(asyncio.run(prepare(Settings.from_env(env), int(count), Path(plain)))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats (median)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--servers", default="uvicorn:1,granian:1,uvicorn:2,granian:2")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (say, a worktree of main) served the same way beside this one",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (make setup installs it)")

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-stream-"))
    procs: list[subprocess.Popen[bytes]] = []
    runs: list[Run] = []
    try:
        # (label, checkout, env, video id, token, sample segment)
        trees = []
        for label, root in [("", ROOT), (" [baseline]", args.baseline)]:
            if root is None:
                continue
            data, plain = tmp / f"data{len(trees)}", tmp / f"plain{len(trees)}"
            env = {
                "MEGAMOVIE_DATA_DIR": str(data),
                "MEGAMOVIE_WORKERS": "0",
                "MEGAMOVIE_LOG_LEVEL": "warning",
            }
            if root == ROOT:
                prepared = asyncio.run(prepare(Settings.from_env(env), args.segments, plain))
            else:
                prepared = prepare_elsewhere(root.resolve(), data, plain, args.segments)
            sample = (plain / "seg" / "000000.m4s").read_bytes()
            trees.append((label, root.resolve(), env, *prepared, sample))
        plain = tmp / "plain0"
        # nginx workers run as an unprivileged user: let them reach the plaintext copies only.
        tmp.chmod(0o711)
        for path in (plain, plain / "seg", *(plain / "seg").iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        print(
            f"{args.segments} segments of {SEGMENT_BYTES / 1e6:.2f} MB; wrk -c{args.connections} "
            f"-d{args.duration}s on 127.0.0.1, {args.rounds} interleaved rounds; "
            f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start"
        )

        # (name, process, port, wrk script), all started up front and kept running.
        targets: list[tuple[str, subprocess.Popen[bytes], int, Path]] = []
        port = free_port()
        nginx = start_nginx(tmp, plain, port)
        procs.append(nginx)
        check_same_bytes(port, "/seg/000000.m4s", trees[0][-1])
        targets.append((NGINX, nginx, port, wrk_script(tmp / "nginx.lua", "/seg/", args.segments)))
        for spec in args.servers.split(","):
            server, workers = spec.split(":")
            for n, (label, root, env, video_id, token, sample) in enumerate(trees):
                prefix = f"/stream/{token}/{video_id}/{RENDITION}/"
                script = wrk_script(tmp / f"portal{n}.lua", prefix, args.segments)
                port = free_port()
                proc = start_portal(server, int(workers), port, env, root)
                procs.append(proc)
                check_same_bytes(port, prefix + "000000.m4s", sample)
                name = f"ours: {server}, {workers} worker(s){label}"
                targets.append((name, proc, port, script))
        time.sleep(1)  # let every server settle (workers finish starting) before measuring
        for round_no in range(args.rounds):
            for name, proc, port, target_script in targets:
                run = run_wrk(name, proc, port, target_script, args)
                runs.append(run)
                print(
                    f"round {round_no + 1}: {name:48} {run.cpu_ms_per_request:6.2f} ms CPU/req "
                    f"{run.bytes_per_second / 1e6:6.0f} MB/s p99 {run.p99_ms:6.1f} ms",
                    flush=True,
                )
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    report(runs, [name for name, *_ in targets])


if __name__ == "__main__":
    main()
