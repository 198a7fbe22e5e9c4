"""Launch day, replayed: sign-ups, log-ins, browsing and real-time viewers, with Locust.

    .venv/bin/python benchmarks/launch.py [--shape embedded|scaleout] [--viewers 40]
        [--signups 8] [--logins 4] [--browsers 4] [--phase 20]

Starts the site (benchmarks/stack.py: one `megamovie serve`, or PostgreSQL + SeaweedFS + two
`serve` behind nginx + a worker), stores a ready 1080p film of random ~2.5 MB segments, and
runs Locust headless on 127.0.0.1 through four phases of `--phase` seconds each:

  peer      the viewers alone, against nginx serving the same bytes as plaintext files
  before    the viewers alone, against the portal
  overload  the viewers, plus sign-ups through the real form (GET /signup for the CSRF
            token, POST), log-ins, catalog pages, searches and playback grants, all as fast
            as the site answers (a client told 429/503 waits its Retry-After)
  recovery  the viewers alone again

A viewer asks for a playback grant, loads the master and media playlists and the init
segment, fetches a start-up burst of 3 segments, then one 4 s segment every 4 s, as hls.js
does. Each segment is due 4 s after it was asked for (the burst: 4 s after the start); a
viewer is *on time* in a phase when every segment it asked for there arrived, whole and
before it was due. Prints, per phase and kind of request: rate, p50/p99, errors and refusals
(429/503), and the viewers on time; the headline is viewers on time in the overload phase
against the nginx peer. Compare ratios within one run: other work on the machine moves the
absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SEGMENT_BYTES = 2_570_000  # 4 s of 1080p at ~5 Mb/s
SEGMENT_SECONDS = 4.0
BURST = 3
RENDITION = "1080p"
PASSWORD = "correct horse battery staple"  # noqa: S105 - the replay's own accounts
WORDS = "night train river city storm garden winter harbour desert mountain echo signal".split()
PHASES = ("peer", "before", "overload", "recovery")


# -- preparing the site's data (plain asyncio, in a child process without gevent) ------------


async def prepare(out: Path, segments: int, accounts: int) -> dict[str, object]:
    """A creator, a ready free film of `segments` random segments (its plaintext copied for
    nginx under `out`), a small catalog to browse and `accounts` viewers who can log in."""
    from sqlalchemy import insert

    from portal.accounts import create_user, password_hasher
    from portal.db import new_id, renditions, users, utcnow, videos
    from portal.db import segments as segments_table
    from portal.layout import segment_path
    from portal.services import open_services
    from portal.settings import Settings

    settings = Settings.from_env()
    async with open_services(settings) as services:
        engine, vault = services.engine, services.vault
        creator = await create_user(
            engine, settings, email="studio@example.org", password=PASSWORD, role="creator"
        )
        now = utcnow()
        film = new_id()
        async with engine.begin() as conn:
            for n in range(24):
                video_id = film if n == 0 else new_id()
                title = f"{WORDS[n % len(WORDS)].title()} {WORDS[(n * 5 + 3) % len(WORDS)]} {n}"
                await conn.execute(
                    videos.insert().values(
                        id=video_id,
                        creator_id=creator.id,
                        title=title,
                        description="",
                        tags=WORDS[n % len(WORDS)],
                        status="ready",
                        progress=1.0,
                        playable=True,
                        duration=segments * SEGMENT_SECONDS,
                        width=1920,
                        height=1080,
                        created_at=now,
                        updated_at=now,
                        ready_at=now,
                    )
                )
            await conn.execute(
                renditions.insert().values(
                    video_id=film,
                    name=RENDITION,
                    width=1920,
                    height=1080,
                    fps=24.0,
                    bandwidth=5_200_000,
                    average_bandwidth=5_140_000,
                    codecs="avc1.640028,mp4a.40.2",
                    position=0,
                )
            )
        await vault.create_key(film)
        folder = out / RENDITION
        folder.mkdir(parents=True)
        rows = []
        for index in range(-1, segments):
            data = os.urandom(2_000 if index < 0 else SEGMENT_BYTES)
            await vault.put(film, segment_path(RENDITION, index), data)
            name = "init.mp4" if index < 0 else f"{index:06d}.m4s"
            (folder / name).write_bytes(data)
            duration = 0.0 if index < 0 else SEGMENT_SECONDS
            rows.append(
                {
                    "video_id": film,
                    "rendition": RENDITION,
                    "idx": index,
                    "duration": duration,
                    "size": len(data),
                }
            )
        async with engine.begin() as conn:
            await conn.execute(insert(segments_table), rows)
        # Viewers who log in during the launch: hashed at the site's own cost, in one go.
        hashed = password_hasher(settings).hash(PASSWORD)
        emails = [f"viewer{n}@example.org" for n in range(accounts)]
        async with engine.begin() as conn:
            await conn.execute(
                insert(users),
                [
                    {
                        "id": new_id(),
                        "email": e,
                        "display_name": e.split("@")[0],
                        "password_hash": hashed,
                        "role": "viewer",
                        "created_at": now,
                    }
                    for e in emails
                ],
            )
    return {"film": film, "segments": segments, "logins": emails}


# -- the load (Locust, in a child process: gevent patches everything it imports) ------------


def run_load(config: dict[str, object]) -> dict[str, object]:
    import random
    import re

    import gevent
    from locust import FastHttpUser, constant, events, task
    from locust.env import Environment

    film = str(config["film"])
    segments = int(config["segments"])  # type: ignore[call-overload]
    phase_seconds = float(config["phase"])  # type: ignore[arg-type]
    counts = config["counts"]
    assert isinstance(counts, dict)
    logins = list(config["logins"])  # type: ignore[call-overload]
    started = time.monotonic()
    print("START", flush=True)  # the parent samples CPU by phase from here

    def phase_now() -> str:
        index = int((time.monotonic() - started) // phase_seconds)
        return PHASES[min(index, len(PHASES) - 1)]

    # (phase, kind) -> latencies (ms), errors, refusals; viewer -> phase -> late?
    latencies: dict[str, dict[str, list[float]]] = {p: {} for p in PHASES}
    errors: dict[str, dict[str, int]] = {p: {} for p in PHASES}
    refused: dict[str, dict[str, int]] = {p: {} for p in PHASES}
    viewers: dict[str, dict[str, bool]] = {}

    @events.request.add_listener
    def _record(
        name: str, response_time: float, exception: object, response: object, **_: object
    ) -> None:
        phase = phase_now()
        status = getattr(response, "status_code", 0) or 0
        if status in (429, 503):
            refused[phase][name] = refused[phase].get(name, 0) + 1
        elif exception is not None or not 200 <= status < 400:
            errors[phase][name] = errors[phase].get(name, 0) + 1
        else:
            latencies[phase].setdefault(name, []).append(response_time)

    def back_off(response: object) -> None:
        """A polite client: told 429/503, it waits Retry-After before trying again."""
        if getattr(response, "status_code", 0) in (429, 503):
            headers = getattr(response, "headers", {}) or {}
            gevent.sleep(min(10.0, float(headers.get("retry-after", "1") or 1)))

    class Viewer(FastHttpUser):
        abstract = True
        wait_time = constant(0)
        peer = False

        def _mark(self, phase: str, late: bool) -> None:
            # A viewer counts only in its own server's phases, also for a request that was
            # in flight when the phase ended.
            if self.peer or phase == "peer":
                phase = "peer" if self.peer else "before"
            marks = viewers.setdefault(self.key, {})
            marks[phase] = marks.get(phase, False) or late

        @task
        def watch(self) -> None:
            self.key = getattr(self, "key", f"{type(self).__name__}-{id(self)}")
            if self.peer:
                base = f"/plain/{film}"
            else:
                grant = self.client.get(f"/api/videos/{film}/playback", name="grant (viewer)")
                if grant.status_code != 200:
                    self._mark(phase_now(), True)
                    back_off(grant)
                    return
                base = grant.json()["url"].rsplit("/", 1)[0]
            for path, name in (
                (f"{base}/master.m3u8", "playlist"),
                (f"{base}/{RENDITION}/index.m3u8", "playlist"),
                (f"{base}/{RENDITION}/init.mp4", "segment"),
            ):
                if self.client.get(path, name=name).status_code != 200:
                    self._mark(phase_now(), True)
                    return
            start = time.monotonic()
            index = random.randrange(segments)
            for n in range(10**6):
                scheduled = start + (0 if n < BURST else SEGMENT_SECONDS * (n - BURST + 1))
                due = start + SEGMENT_SECONDS if n < BURST else scheduled + SEGMENT_SECONDS
                gevent.sleep(max(0.0, scheduled - time.monotonic()))
                phase = phase_now()
                path = f"{base}/{RENDITION}/{(index + n) % segments:06d}.m4s"
                response = self.client.get(path, name="segment")
                whole = (
                    response.status_code == 200 and len(response.content or b"") == SEGMENT_BYTES
                )
                self._mark(phase, not whole or time.monotonic() > due)

    class PeerViewer(Viewer):
        peer = True
        fixed_count = int(counts["viewers"])

    class PortalViewer(Viewer):
        fixed_count = int(counts["viewers"])

    class SignUp(FastHttpUser):
        wait_time = constant(0)
        fixed_count = int(counts["signups"])

        @task
        def sign_up(self) -> None:
            self.client.cookiejar.clear()
            page = self.client.get("/signup", name="signup page")
            found = re.search(r'name="csrf_token" value="([^"]+)"', page.text or "")
            if page.status_code != 200 or not found:
                back_off(page)
                return
            email = f"fan-{os.getpid()}-{random.getrandbits(48):x}@example.org"
            form = {
                "csrf_token": found.group(1),
                "email": email,
                "password": PASSWORD,
                "role": "viewer",
                "display_name": "",
            }
            back_off(self.client.post("/signup", data=form, name="signup", allow_redirects=False))

    class LogIn(FastHttpUser):
        wait_time = constant(0)
        fixed_count = int(counts["logins"])

        @task
        def log_in(self) -> None:
            self.client.cookiejar.clear()
            page = self.client.get("/login", name="login page")
            found = re.search(r'name="csrf_token" value="([^"]+)"', page.text or "")
            if page.status_code != 200 or not found:
                back_off(page)
                return
            form = {
                "csrf_token": found.group(1),
                "email": random.choice(logins),
                "password": PASSWORD,
            }
            back_off(self.client.post("/login", data=form, name="login", allow_redirects=False))

    class Browser(FastHttpUser):
        wait_time = constant(0.2)
        fixed_count = int(counts["browsers"])

        @task(3)
        def catalog(self) -> None:
            back_off(self.client.get("/", name="catalog"))

        @task(3)
        def search(self) -> None:
            back_off(self.client.get(f"/?q={random.choice(WORDS)}", name="search"))

        @task(2)
        def watch_page(self) -> None:
            back_off(self.client.get(f"/watch/{film}", name="watch page"))
            back_off(self.client.get(f"/api/videos/{film}/playback", name="grant"))

    host = str(config["url"])
    PeerViewer.host = str(config["peer_url"])
    for cls in (PortalViewer, SignUp, LogIn, Browser):
        cls.host = host
    spread = max(1.0, int(counts["viewers"]) / SEGMENT_SECONDS)  # arrivals over one cycle
    viewers_count = int(counts["viewers"])
    launch = [SignUp, LogIn, Browser]
    busy = sum(int(counts[k]) for k in ("signups", "logins", "browsers"))

    def runner_for(classes: list[type]):  # type: ignore[no-untyped-def]
        return Environment(user_classes=classes, events=events).create_local_runner()

    # Phases by the clock: the peer's viewers, then the portal's viewers through three
    # phases, with the launch crowd beside them in the second.
    peer = runner_for([PeerViewer])
    peer.start(viewers_count, spread)
    gevent.sleep(max(0.0, started + phase_seconds - time.monotonic()))
    peer.quit()
    watching = runner_for([PortalViewer])
    watching.start(viewers_count, spread)
    gevent.sleep(max(0.0, started + 2 * phase_seconds - time.monotonic()))
    crowd = runner_for(launch)
    if busy:
        crowd.start(busy, busy)
    gevent.sleep(max(0.0, started + 3 * phase_seconds - time.monotonic()))
    crowd.quit()
    gevent.sleep(max(0.0, started + 4 * phase_seconds - time.monotonic()))
    watching.quit()

    def summary(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        if not values:
            return {"count": 0, "p50": 0.0, "p99": 0.0}
        return {
            "count": len(values),
            "p50": values[len(values) // 2],
            "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
        }

    result: dict[str, object] = {}
    for phase in PHASES:
        kinds = sorted({*latencies[phase], *errors[phase], *refused[phase]})
        marks = [m[phase] for m in viewers.values() if phase in m]
        result[phase] = {
            "kinds": {
                k: {
                    **summary(latencies[phase].get(k, [])),
                    "errors": errors[phase].get(k, 0),
                    "refused": refused[phase].get(k, 0),
                }
                for k in kinds
            },
            "viewers": len(marks),
            "on_time": sum(1 for late in marks if not late),
        }
    return result


def argon2_ceiling(seconds: float) -> float:
    """Hashes a second that argon2id at the site's cost does alone on one thread per core:
    the ceiling for sign-ups, measured beside the load to compare against."""
    from concurrent.futures import ThreadPoolExecutor

    from portal.accounts import password_hasher
    from portal.settings import Settings

    hasher = password_hasher(Settings.from_env())
    threads = os.cpu_count() or 1
    done = 0
    deadline = time.monotonic() + seconds

    def hash_until_deadline(_: int) -> int:
        count = 0
        while time.monotonic() < deadline:
            hasher.hash(PASSWORD)
            count += 1
        return count

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(hash_until_deadline, range(threads)))
    return done / (time.monotonic() - started)


# -- the run ----------------------------------------------------------------------------------


def report(
    result: dict[str, dict[str, object]], phase_seconds: float, counts: dict[str, int], shape: str
) -> None:
    print(
        f"\nshape {shape}: {counts['viewers']} viewers (1080p, a 4 s segment every 4 s); "
        f"overload adds {counts['signups']} sign-up, {counts['logins']} log-in and "
        f"{counts['browsers']} browsing clients; {phase_seconds:.0f} s a phase; "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'phase':9} {'kind':14} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7} "
        f"{'429/503':>8}"
    )
    for phase in PHASES:
        data = result[phase]
        kinds = data["kinds"]
        assert isinstance(kinds, dict)
        for kind, s in kinds.items():
            rate = (s["count"] + s["refused"]) / phase_seconds
            print(
                f"{phase:9} {kind:14} {rate:7.1f} {s['p50']:7.0f} {s['p99']:7.0f} "
                f"{s['errors']:7d} {s['refused']:8d}"
            )
        print(f"{phase:9} {'viewers':14} on time {data['on_time']} of {data['viewers']}")
        cpu = result["cpu"][phase]  # type: ignore[index]
        print(f"{phase:9} {'cpu (cores)':14} portal {cpu['portal']:.2f}, "
              f"load generator {cpu['load']:.2f}")  # fmt: skip
    peer = result["peer"]["on_time"] or 1  # type: ignore[index]
    signups = result["overload"]["kinds"].get("signup", {"count": 0})  # type: ignore[index,union-attr]
    seg = result["overload"]["kinds"].get("segment", {"p99": 0})  # type: ignore[index,union-attr]
    print(
        f"\nheadline: viewers on time during the launch {result['overload']['on_time']} "  # type: ignore[index]
        f"vs nginx {result['peer']['on_time']}: x{result['overload']['on_time'] / peer:.2f}; "  # type: ignore[index]
        f"segment p99 {seg['p99']:.0f} ms; sign-ups {signups['count'] / phase_seconds:.1f}/s "
        f"completed, argon2id alone {result['argon2']:.1f}/s on {os.cpu_count()} threads "
        f"(x{signups['count'] / phase_seconds / result['argon2']:.2f})"  # type: ignore[operator]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["embedded", "scaleout"], default="embedded")
    parser.add_argument("--viewers", type=int, default=40)
    parser.add_argument("--signups", type=int, default=8, help="sign-up clients")
    parser.add_argument("--logins", type=int, default=4, help="log-in clients")
    parser.add_argument("--browsers", type=int, default=4, help="browsing clients")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1, help="transcode workers (scale-out)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the site")
    parser.add_argument("_child", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("_file", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child == "prepare":
        import asyncio

        spec = json.loads(Path(args._file).read_text())
        made = asyncio.run(prepare(Path(spec["out"]), spec["segments"], spec["accounts"]))
        Path(args._file).write_text(json.dumps(made))
        return
    if args._child == "argon2":
        print(f"{argon2_ceiling(float(args._file)):.1f}")
        return
    if args._child == "load":
        spec = json.loads(Path(args._file).read_text())
        Path(args._file).write_text(json.dumps(run_load(spec)))
        return

    from stack import Nginx, Stack, free_port

    counts = {
        "viewers": args.viewers,
        "signups": args.signups,
        "logins": args.logins,
        "browsers": args.browsers,
    }
    tmp = Path(tempfile.mkdtemp(prefix="mm-launch-"))
    tmp.chmod(0o755)
    site_env = {
        # One machine plays every client from 127.0.0.1: the per-address limit would stop
        # the replay after 30 sign-ups; the global limits and the hashing pool stay on.
        "MEGAMOVIE_RATE_LIMIT_PER_MINUTE": "1000000",
        **dict(item.split("=", 1) for item in args.env),
    }
    try:
        with Stack(args.shape, tmp).running(site_env, workers=args.workers) as site:
            spec_file = tmp / "spec.json"
            plain = tmp / "plain"
            spec_file.write_text(
                json.dumps(
                    {
                        "out": str(plain / "plain" / "FILM"),
                        "segments": args.segments,
                        "accounts": 200,
                    }
                )
            )
            child = [sys.executable, __file__]
            env = {**os.environ, **site.env, "PYTHONPATH": str(ROOT)}
            subprocess.run([*child, "prepare", str(spec_file)], env=env, check=True)
            made = json.loads(spec_file.read_text())
            (plain / "plain" / "FILM").rename(plain / "plain" / made["film"])
            with site.start_servers(args.workers):
                save_playlists(site.url, made["film"], plain / "plain" / made["film"])
                for path in plain.rglob("*"):
                    path.chmod(0o755 if path.is_dir() else 0o644)
                plain.chmod(0o755)
                port = free_port()
                peer_site = (
                    f"server {{\n    listen 127.0.0.1:{port};\n    root {plain};\n"
                    "    location / { }\n}\n"
                )
                nginx = Nginx(tmp / "nginx-peer", peer_site, port).start()
                try:
                    load = {
                        **made,
                        "url": site.url,
                        "peer_url": f"http://127.0.0.1:{port}",
                        "phase": args.phase,
                        "counts": counts,
                    }
                    spec_file.write_text(json.dumps(load))
                    print(
                        f"running {len(PHASES)} phases of {args.phase:.0f} s against "
                        f"{site.url} ({args.shape}) and nginx on :{port}",
                        flush=True,
                    )
                    ceiling = [ceiling_now(child, env)]
                    pids = [p.proc.pid for p in site.portals if p.proc is not None]
                    cpu = run_load_child([*child, "load", str(spec_file)], env, args.phase, pids)
                    result = json.loads(spec_file.read_text())
                    result["cpu"] = cpu
                    ceiling.append(ceiling_now(child, env))
                    result["argon2"] = sum(ceiling) / len(ceiling)
                finally:
                    nginx.stop()
        report(result, args.phase, counts, args.shape)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load_child(
    command: list[str], env: dict[str, str], phase: float, portals: list[int]
) -> dict[str, dict[str, float]]:
    """Run the Locust child; returns, per phase, the cores busy in the portal processes
    (together) and in the load generator, sampled at the phase boundaries."""
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        while child.stdout.readline().strip() != "START":
            if child.poll() is not None:
                raise RuntimeError("the load generator exited before starting")
        began = time.monotonic()
        samples = []
        for boundary in range(len(PHASES) + 1):
            time.sleep(max(0.0, began + boundary * phase - time.monotonic()))
            samples.append(
                (sum(cpu_seconds(pid) for pid in portals), cpu_seconds(child.pid), time.monotonic())
            )
        child.wait(timeout=phase + 120)
    finally:
        if child.poll() is None:
            child.kill()
    if child.returncode != 0:
        raise RuntimeError(f"the load generator failed ({child.returncode})")
    usage = {}
    for name, before, after in zip(PHASES, samples, samples[1:], strict=False):
        wall = after[2] - before[2]
        usage[name] = {
            "portal": (after[0] - before[0]) / wall,
            "load": (after[1] - before[1]) / wall,
        }
    return usage


def ceiling_now(child: list[str], env: dict[str, str]) -> float:
    out = subprocess.run([*child, "argon2", "5"], env=env, check=True, capture_output=True)
    return float(out.stdout)


def save_playlists(url: str, film: str, folder: Path) -> None:
    """nginx serves the portal's own playlists for this film, byte for byte."""
    import httpx

    grant = httpx.get(f"{url}/api/videos/{film}/playback", timeout=30).json()
    base = url + grant["url"].rsplit("/", 1)[0]
    (folder / "master.m3u8").write_bytes(httpx.get(f"{base}/master.m3u8", timeout=30).content)
    media = httpx.get(f"{base}/{RENDITION}/index.m3u8", timeout=30).content
    (folder / RENDITION / "index.m3u8").write_bytes(media)


if __name__ == "__main__":
    main()
