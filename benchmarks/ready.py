"""Upload end -> playable and -> ready through a running portal, against the bare ladder
command in the same run.

    .venv/bin/python benchmarks/ready.py [--seconds 60] [--rounds 2] [--source grain]
        [--file FILM] [--baseline /path/to/other/checkout]

What a creator feels after the last byte of an upload: a fresh `megamovie serve` (embedded
default: SQLite, local encrypted storage, one in-process worker) takes the film by tus
(curl, one PATCH), and from the moment that PATCH is answered this script reads the film's
row every 20 ms and notes when the film became playable (every rendition has a sealed
segment: a viewer can start), when its poster appeared, and when it was ready.
Everything the portal does is inside those figures: picking the job up, decrypting the
source, probing, the posters and storyboard, the ladder, encrypting every segment, the
measured bit rates.

The peer, run alternately with the portal so drift on the machine hits both alike: the very
ffmpeg command the transcoder builds for this source (`transcoder.hls.build_command`), alone,
with its output thrown away: its wall time to the first segment of every rung, and to the
end. So "portal / bare" is what our pipeline costs on top of the encode itself, and
"x real" (film seconds per wall second to ready) is what the issue asks to be >= 1.

`--baseline DIR` adds a third contestant: the portal of another checkout (say, a worktree of
main), served the same way, so before and after are measured side by side. `--file` uses an
existing film instead of making one (making a 60 s 1080p source takes about two minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from ingest import TUS, creator_elsewhere, curl, make_creator
from stack import ROOT, Portal
from transcode import SOURCES, make_source, run_bare

from portal.settings import Settings
from transcoder.hls import HlsOptions, build_command
from transcoder.ladder import build_ladder
from transcoder.limits import MediaLimits
from transcoder.probe import probe

POLL_SECONDS = 0.02


@dataclass
class Timing:
    playable: float
    poster: float
    ready: float


def portal_env(data: Path) -> dict[str, str]:
    return {
        "MEGAMOVIE_DATA_DIR": str(data),
        "MEGAMOVIE_WORKERS": "1",
        "MEGAMOVIE_LOG_LEVEL": "warning",
        "MEGAMOVIE_QUOTA_BYTES": str(1 << 50),
        "MEGAMOVIE_MAX_UPLOAD_BYTES": str(1 << 50),
    }


def upload(base: str, token: str, film: Path) -> tuple[str, float]:
    """The film by tus in one PATCH; (video id, perf_counter when the PATCH was answered)."""
    size = film.stat().st_size
    auth = ["-H", f"Authorization: Bearer {token}"]
    created = curl(
        "-X", "POST", *TUS, *auth, "-H", f"Upload-Length: {size}",
        "-H", "Upload-Metadata: filename ZmlsbS5tcDQ=,title UmVhZHkgYmVuY2g=",
        f"{base}/api/uploads",
    )  # fmt: skip
    location = next(
        line.split(":", 1)[1].strip()
        for line in created.splitlines()
        if line.lower().startswith("location:")
    )
    url = location if location.startswith("http") else base + location
    answer = curl(
        "-X", "PATCH", "-T", str(film), *TUS, *auth,
        "-H", "Upload-Offset: 0", "-H", "Content-Type: application/offset+octet-stream", url,
    )  # fmt: skip
    ended = time.perf_counter()
    if f"upload-offset: {size}" not in answer.lower():
        raise RuntimeError(f"the portal did not take the whole film:\n{answer}")
    headers = curl("-I", *TUS, *auth, url).splitlines()
    video_id = next(
        line.split(":", 1)[1].strip() for line in headers if line.lower().startswith("video-id:")
    )
    return video_id, ended


def watch(database: Path, video_id: str, ended: float, limit: float) -> Timing:
    """Reads the film's row straight from the portal's SQLite file (read-only) every 20 ms:
    what `GET /api/videos/{id}` would say, without making the portal answer 50 requests a
    second while it transcodes (that would cost it CPU the encode needs)."""
    seen: dict[str, float] = {}
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    query = "SELECT status, playable, has_poster, error FROM videos WHERE id = ?"
    try:
        while time.perf_counter() - ended < limit:
            status, playable, has_poster, error = db.execute(query, (video_id,)).fetchone()
            now = time.perf_counter() - ended
            if status == "failed":
                raise RuntimeError(f"the portal failed the film: {error}")
            if playable:
                seen.setdefault("playable", now)
            if has_poster:
                seen.setdefault("poster", now)
            if status == "ready":
                seen.setdefault("ready", now)
                return Timing(**{k: seen.get(k, now) for k in ("playable", "poster", "ready")})
            time.sleep(POLL_SECONDS)
    finally:
        db.close()
    raise RuntimeError(f"the film was not ready {limit:.0f} s after the upload")


def run_portal(root: Path, film: Path, tmp: Path, limit: float) -> Timing:
    data = tmp / f"data-{time.monotonic_ns()}"
    env = portal_env(data)
    if root == ROOT:
        token = asyncio.run(make_creator(Settings.from_env(env)))
    else:
        token = creator_elsewhere(root, data)
    portal = Portal(env, tmp / "serve.log", root=root).start()
    try:
        video_id, ended = upload(portal.url, token, film)
        return watch(data / "megamovie.db", video_id, ended, limit)
    finally:
        portal.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--source", choices=sorted(SOURCES), default="grain")
    parser.add_argument("--file", type=Path, help="an existing film instead of a made one")
    parser.add_argument("--baseline", type=Path, help="another checkout, served the same way")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-ready-", dir=os.environ.get("TMPDIR")))
    try:
        film = args.file or make_source(tmp, args.seconds, args.source)
        info = anyio.run(probe, film, MediaLimits())
        ladder = build_ladder(info)
        names = [r.name for r in ladder]
        limit = max(600.0, info.duration * 10)
        contestants = [("portal", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
        print(
            f"film: {info.width}x{info.height} {info.fps:g} fps, {info.duration:g} s, "
            f"{film.stat().st_size / 1e6:.1f} MB; ladder: {', '.join(names)}; "
            f"{args.rounds} rounds, bare and portal alternating"
        )
        bare: list[tuple[float, float]] = []
        runs: dict[str, list[Timing]] = {name: [] for name, _ in contestants}
        for _ in range(args.rounds):
            workdir = tmp / "bare"
            command = build_command(film, info, ladder, workdir, HlsOptions())
            run = run_bare(command, workdir, names, tmp / "top.mp4")
            bare.append((run.first_playable, run.wall))
            print(f"  bare: first segments {run.first_playable:.2f} s, done {run.wall:.2f} s")
            for name, root in contestants:
                timing = run_portal(root, film, tmp, limit)
                runs[name].append(timing)
                print(
                    f"  {name}: playable {timing.playable:.2f} s, poster {timing.poster:.2f} s, "
                    f"ready {timing.ready:.2f} s"
                )
        bare_first = statistics.median(b[0] for b in bare)
        bare_done = statistics.median(b[1] for b in bare)
        print(
            f"\n{'':<10} {'playable s':>10} {'/ bare':>7} {'poster s':>9} {'ready s':>8} "
            f"{'/ bare':>7} {'x real':>7}"
        )
        print(
            f"{'bare':<10} {bare_first:>10.2f} {1:>7.2f} {'-':>9} {bare_done:>8.2f} {1:>7.2f} "
            f"{info.duration / bare_done:>7.2f}"
        )
        for name, timings in runs.items():
            playable = statistics.median(t.playable for t in timings)
            poster = statistics.median(t.poster for t in timings)
            ready = statistics.median(t.ready for t in timings)
            print(
                f"{name:<10} {playable:>10.2f} {playable / bare_first:>7.2f} {poster:>9.2f} "
                f"{ready:>8.2f} {ready / bare_done:>7.2f} {info.duration / ready:>7.2f}"
            )
        print(
            "\nmedians; seconds from the end of the upload (portal) or the start of the "
            "command (bare); playable: every rung has a segment; x real: film seconds per "
            "wall second until ready."
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
