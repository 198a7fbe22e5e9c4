"""Upload ingest: one large tus PATCH into the portal against nginx storing a PUT, same run.

    .venv/bin/python benchmarks/ingest.py [--size-mib 1024] [--rounds 3] [--workers 1]

Writes a file of random bytes, then sends it with the same client (curl, streaming the file)
to both servers on loopback, alternating, `--rounds` times:

- nginx: `PUT` to its WebDAV module, which writes the body to a temp file and renames it
  into place (`client_body_in_file_only`; no fsync);
- ours: `POST /api/uploads` (tus creation), then one `PATCH` of the whole file, which the
  portal seals chunk by chunk into a vault object and makes durable (fsync, rename, fsync of
  the directory) before it answers with the new offset.

nginx does not fsync, so the run also times `fsync` of nginx's stored file right after its
PUT: "nginx + fsync" is the same durability as ours. For each it prints MB/s (wall time from
the first byte sent to the answer), the server's CPU per GiB (utime+stime of every server
process, /proc/PID/stat), and how far the server's resident memory rose above its idle size
(sampled every 50 ms). Ratios are ours over nginx's. Everything it starts, it stops; the
stored copies are deleted after each run.

The CPU columns are not quite like for like: the portal fdatasyncs a large object in the
background as it arrives (`portal.vault.storage.LocalUpload`), so the kernel's work of
sending those pages to the disk is charged to the portal's threads, while nginx's pages
are sent by the kernel's flusher threads (and by this script's fsync), charged to neither.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# stream.py puts the checkout under test (this one, or MM_BENCH_ROOT) first on the path.
from stream import ROOT, free_port, session_cpu, start_portal, stop, wait_for_port  # noqa: E402

from portal.accounts import User  # noqa: E402
from portal.auth import issue_api_token  # noqa: E402
from portal.db import create_engine, new_id, users, utcnow  # noqa: E402
from portal.migrations import upgrade  # noqa: E402
from portal.settings import Settings  # noqa: E402

MIB = 1024 * 1024
SETTLE_SECONDS = 2.0
TUS = ["-H", "Tus-Resumable: 1.0.0"]


@dataclass
class Run:
    name: str
    seconds: float
    cpu: float
    rss_rise: int
    size: int
    fsync_seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.size / (1024 * MIB))


class RssSampler:
    """The largest resident set of a process group's processes, sampled while running."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
                if int(stat[stat.rindex(b")") + 2 :].split()[3]) != self.session:
                    continue
                for line in Path(f"/proc/{entry.name}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (OSError, ValueError):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.base = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.base)


def make_source(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(8 * MIB, left))
            handle.write(piece)
            left -= len(piece)


def curl(*args: str) -> str:
    """curl's response headers; the body is shown only when the answer is an error."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "-D", "/dev/stderr", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    status = out.stdout.rstrip().rpartition("\n")[2]
    if out.returncode or not status.startswith("2"):
        raise RuntimeError(f"curl {' '.join(args[:3])}... answered {status}:\n{out.stdout}")
    return out.stderr


def start_nginx(tmp: Path, root: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx-ingest.conf"
    conf.write_text(f"""
daemon off;
worker_processes auto;
pid {tmp}/nginx-ingest.pid;
error_log {tmp}/nginx-ingest-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_max_body_size 0;
    client_body_temp_path {root}/.body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /put/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_body_in_file_only on;
        }}
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


async def make_creator(settings: Settings) -> str:
    """A creator and an API token for it, straight into a fresh database."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    now = utcnow()
    row = {
        "id": new_id(),
        "email": "bench@example.org",
        "display_name": "bench",
        "password_hash": "!",
        "role": "creator",
        "created_at": now,
    }
    async with engine.begin() as conn:
        await conn.execute(users.insert().values(**row))
    user = User(row["id"], row["email"], row["display_name"], row["role"], now)
    token, _ = await issue_api_token(engine, settings, user)
    await engine.dispose()
    return token


def settle() -> None:
    """Before each contestant: the previous one's writes and deletions flushed to disk, and
    a moment of quiet, so nobody pays for another's writeback."""
    os.sync()
    time.sleep(SETTLE_SECONDS)


def run_nginx(proc: subprocess.Popen[bytes], port: int, source: Path, store: Path) -> Run:
    settle()
    size = source.stat().st_size
    target = store / "put" / "film.bin"
    cpu0 = session_cpu(proc.pid)
    with RssSampler(proc.pid) as rss:
        started = time.perf_counter()
        curl("-T", str(source), f"http://127.0.0.1:{port}/put/film.bin")
        seconds = time.perf_counter() - started
    cpu = session_cpu(proc.pid) - cpu0
    synced = time.perf_counter()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_seconds = time.perf_counter() - synced
    if target.stat().st_size != size:
        raise RuntimeError("nginx stored something else than the file")
    target.unlink()
    return Run("nginx PUT", seconds, cpu, rss.rise, size, fsync_seconds)


def run_portal(
    name: str, proc: subprocess.Popen[bytes], port: int, source: Path, token: str, data: Path
) -> Run:
    settle()
    size = source.stat().st_size
    base = f"http://127.0.0.1:{port}"
    auth = ["-H", f"Authorization: Bearer {token}"]
    created = curl("-X", "POST", *TUS, *auth, "-H", f"Upload-Length: {size}", f"{base}/api/uploads")
    location = next(
        line.split(":", 1)[1].strip()
        for line in created.splitlines()
        if line.lower().startswith("location:")
    )
    url = location if location.startswith("http") else base + location
    cpu0 = session_cpu(proc.pid)
    with RssSampler(proc.pid) as rss:
        started = time.perf_counter()
        answer = curl(
            "-X", "PATCH", "-T", str(source), *TUS, *auth,
            "-H", "Upload-Offset: 0", "-H", "Content-Type: application/offset+octet-stream",
            url,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    cpu = session_cpu(proc.pid) - cpu0
    if f"upload-offset: {size}" not in answer.lower():
        raise RuntimeError(f"the portal did not take the whole file:\n{answer}")
    # The stored parts go (not the storage root), so the disk holds one run's copies at a time.
    for stored in (data / "objects").iterdir():
        shutil.rmtree(stored, ignore_errors=True)
    return Run(name, seconds, cpu, rss.rise, size)


def settings_env(data: Path) -> dict[str, str]:
    return {
        "MEGAMOVIE_DATA_DIR": str(data),
        "MEGAMOVIE_WORKERS": "0",  # the finished upload is queued, not transcoded
        "MEGAMOVIE_LOG_LEVEL": "warning",
        "MEGAMOVIE_QUOTA_BYTES": str(1 << 50),
        "MEGAMOVIE_MAX_UPLOAD_BYTES": str(1 << 50),
    }


def creator_elsewhere(root: Path, data: Path) -> str:
    """`make_creator` run by checkout `root`'s own code (its schema), in a subprocess."""
    out = subprocess.run(
        [sys.executable, str(HERE / "ingest.py"), "--make-creator", str(data)],
        env={**os.environ, "PYTHONPATH": str(root), "MM_BENCH_ROOT": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


def main() -> None:
    if sys.argv[1:2] == ["--make-creator"]:  # creator_elsewhere's subprocess
        print(asyncio.run(make_creator(Settings.from_env(settings_env(Path(sys.argv[2]))))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="uvicorn:1")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (say, a worktree of main) served the same way beside this one",
    )
    args = parser.parse_args()
    for tool in ("curl", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-ingest-", dir=os.environ.get("TMPDIR")))
    procs: list[subprocess.Popen[bytes]] = []
    runs: list[Run] = []
    try:
        trees = []  # (label, checkout, data dir, env, token)
        for label, root in [("", ROOT), (" [baseline]", args.baseline)]:
            if root is None:
                continue
            data = tmp / f"data{len(trees)}"
            env = settings_env(data)
            if root == ROOT:
                token = asyncio.run(make_creator(Settings.from_env(env)))
            else:
                token = creator_elsewhere(root.resolve(), data)
            trees.append((label, root.resolve(), data, env, token))
        source = tmp / "source.bin"
        make_source(source, args.size_mib * MIB)
        store = tmp / "nginx"
        (store / ".body").mkdir(parents=True)
        # nginx workers run as an unprivileged user: let them write their store only.
        tmp.chmod(0o711)
        for folder in (store, store / ".body"):
            folder.chmod(0o777)
        source.chmod(0o644)
        print(
            f"{args.size_mib} MiB of random bytes, one request each, curl on 127.0.0.1; "
            f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs; "
            f"load average {os.getloadavg()[0]:.2f} at the start"
        )
        nginx_port = free_port()
        nginx = start_nginx(tmp, store, nginx_port)
        procs.append(nginx)
        portals = []
        for spec in args.servers.split(","):
            server, workers = spec.split(":")
            for label, root, data, env, token in trees:
                port = free_port()
                proc = start_portal(server, int(workers), port, env, root)
                procs.append(proc)
                name = f"ours: {server}, {workers} worker(s){label}"
                portals.append((name, proc, port, token, data))
        time.sleep(1)
        for round_no in range(args.rounds):
            run = run_nginx(nginx, nginx_port, source, store)
            runs.append(run)
            print(
                f"round {round_no + 1}: {run.name:40} {run.mb_per_s:7.0f} MB/s "
                f"(+ fsync {run.fsync_seconds:.2f} s)",
                flush=True,
            )
            for name, proc, port, token, data in portals:
                run = run_portal(name, proc, port, source, token, data)
                runs.append(run)
                print(f"round {round_no + 1}: {run.name:40} {run.mb_per_s:7.0f} MB/s", flush=True)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    median = statistics.median
    peers = [r for r in runs if r.name == "nginx PUT"]
    synced = [
        Run("nginx PUT + fsync", r.seconds + r.fsync_seconds, r.cpu, r.rss_rise, r.size)
        for r in peers
    ]
    ours = dict.fromkeys(r.name for r in runs if r not in peers)
    names = ["nginx PUT", "nginx PUT + fsync", *ours]
    groups = {"nginx PUT": peers, "nginx PUT + fsync": synced}
    for name in names[2:]:
        groups[name] = [r for r in runs if r.name == name]
    print(
        f"\n{'server (median of ' + str(len(peers)) + ' rounds)':40} {'MB/s':>6} "
        f"{'x nginx':>8} {'x nginx+fsync':>14} {'CPU s/GiB':>10} {'RSS rise MB':>12}"
    )
    for name in names:
        rows = groups[name]
        rate = median(r.mb_per_s for r in rows)
        ratio = median(r.mb_per_s / p.mb_per_s for r, p in zip(rows, peers, strict=True))
        ratio_sync = median(r.mb_per_s / p.mb_per_s for r, p in zip(rows, synced, strict=True))
        print(
            f"{name:40} {rate:6.0f} {ratio:8.2f} {ratio_sync:14.2f} "
            f"{median(r.cpu_per_gib for r in rows):10.2f} "
            f"{max(r.rss_rise for r in rows) / 1e6:12.0f}"
        )
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
