"""Watch page: navigation start -> first video frame in Chromium, against a bare peer, same run.

    .venv/bin/python benchmarks/first_frame.py [--loads 10] [--seconds 20] [--size 1280x720]
        [--compare /path/to/other/checkout] [--warm] [--portal URL --video ID]

Makes a demo-like film with ffmpeg (testsrc2 + a sine tone, H.264/AAC), imports it with
`megamovie import --wait` into a temp data dir, starts `megamovie serve` on it, and loads
`/watch/{id}` in a headless Chromium (Playwright, Debian's chromium, the flags of
tests/browser/conftest.py) `--loads` times, anonymously, each in a fresh browser context
(a first visit: nothing cached, no cookies; `--warm` keeps one context, so hls.js and the CSS
come from the cache as on a second visit).

The peer, loaded interleaved with ours in the same run: a bare page (served from another port
by this script) that plays the same stream with Chromium's own HLS (`video.src = master URL`,
the grant fetched beforehand, outside the timing). `--compare DIR` adds a third contestant: the
portal from another checkout (e.g. main), with the same film imported by that checkout into
its own data dir (checkouts may differ in schema), so "before" and "after" are measured side
by side.

First frame: the first `requestVideoFrameCallback` (a decoded frame handed to the compositor),
in `performance.now()` time, whose origin is the navigation start; the first `playing` and
the first `timeupdate` past 0 are printed beside it. Prints min/median/max per contestant,
the ratio of medians to the peer, and when each request of our page started and finished
(medians: the waterfall), so a regression shows where it is. `--portal URL --video ID`
measures a portal already running (and `--compare URL` another one on the same data).

Compare ratios within one run, not absolute figures across runs: the 2-core machines are
shared and noisy.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from stack import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM = next(
    (p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()),
    "/usr/lib/chromium/chromium",
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
CREATOR = "bench-creator@example.org"
PASSWORD = "a long enough benchmark password"  # noqa: S105 (a throwaway account)

#: Runs before any script of the page: records when the first frame, `playing` and a moving
#: `timeupdate` happen. Media events do not bubble, but a capturing listener on the document
#: sees them all, whichever script made the element play.
PROBE = """
(() => {
  const ff = (window.__firstFrame = {});
  const frame = (video) => {
    if (ff.armed && ff.armed.has(video)) return;
    (ff.armed = ff.armed || new Set()).add(video);
    if (!video.requestVideoFrameCallback) return;
    video.requestVideoFrameCallback((now, meta) => {
      if (ff.frame === undefined) { ff.frame = now; ff.mediaTime = meta.mediaTime; }
    });
  };
  document.addEventListener('loadstart', (e) => frame(e.target), true);
  document.addEventListener('playing', () => {
    if (ff.playing === undefined) ff.playing = performance.now();
  }, true);
  document.addEventListener('timeupdate', (e) => {
    if (ff.time === undefined && e.target.currentTime > 0) ff.time = performance.now();
  }, true);
})();
"""

#: The peer: Chromium's own HLS on the master URL given in the query string.
REFERENCE_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>native HLS</title></head>
<body><video id="v" playsinline></video>
<script>
const v = document.getElementById('v');
v.src = new URLSearchParams(location.search).get('src');
v.play().catch(() => {});
</script></body></html>
"""

READ_FIGURES = """
() => {
  const ff = window.__firstFrame || {};
  const resources = performance.getEntriesByType('resource').map(
    (r) => [r.name, r.startTime, r.responseEnd]);
  const nav = performance.getEntriesByType('navigation')[0];
  if (nav) {
    resources.push(['(page) html', nav.requestStart, nav.responseEnd]);
    resources.push(['(page) DOMContentLoaded', nav.domContentLoadedEventStart,
                    nav.domContentLoadedEventEnd]);
  }
  return {frame: ff.frame, playing: ff.playing, time: ff.time, mediaTime: ff.mediaTime,
          engine: window.mmPlayer ? window.mmPlayer.engine : null, resources: resources};
}
"""


def megamovie(env: dict[str, str], *args: str, stdin: str | None = None, tree: Path = ROOT) -> str:
    """Run the CLI of a checkout (this one by default); its stdout."""
    env = {**env, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", "from portal.cli import main; main()", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"megamovie {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def import_film(env: dict[str, str], film: Path, tree: Path) -> str:
    """A creator and the film, imported and transcoded by `tree`'s CLI; the video id."""
    megamovie(env, "users", "create", CREATOR, "--role", "creator", stdin=PASSWORD + "\n",
              tree=tree)  # fmt: skip
    out = megamovie(env, "import", str(film), "--title", "Bench film", "--creator", CREATOR,
                    "--wait", tree=tree)  # fmt: skip
    return out.split()[0]


def make_film(path: Path, seconds: float, size: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=660",
         "-t", f"{seconds:g}", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=300,
    )  # fmt: skip
    return path


def start_portal(env: dict[str, str], tree: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**env, "MEGAMOVIE_PORT": str(port), "MEGAMOVIE_WORKERS": "0", "PYTHONPATH": str(tree)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from portal.cli import main; main()", "serve"],
            env=env,
            cwd=tree,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for_port(port, proc)
    return proc


class ReferencePage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(REFERENCE_PAGE)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(REFERENCE_PAGE)

    def log_message(self, *args: Any) -> None:
        pass


def label_of(url: str) -> str | None:
    """A short name for the requests worth showing in the waterfall."""
    if url.startswith("(page) "):
        return url[len("(page) ") :]
    path = url.split("?", 1)[0]
    if "/vendor/hls" in path:
        return "hls.js"
    if path.endswith("/js/player.js"):
        return "player.js"
    if path.endswith("/playback"):
        return "grant"
    if path.endswith("/master.m3u8"):
        return "master"
    if path.endswith("/index.m3u8"):
        return path.rsplit("/", 2)[-2] + " playlist"
    if path.endswith("/init.mp4"):
        return path.rsplit("/", 2)[-2] + " init"
    if path.endswith("/000000.m4s"):
        return path.rsplit("/", 2)[-2] + " segment 0"
    return None


def summary(values: list[float]) -> str:
    if not values:
        return "no figures"
    return (
        f"{min(values):6.0f} / {statistics.median(values):6.0f} / {max(values):6.0f} ms"
        f"  (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=10, help="loads per contestant")
    parser.add_argument("--seconds", type=float, default=20, help="length of the film")
    parser.add_argument("--size", default="1280x720", help="picture size of the film")
    parser.add_argument(
        "--compare",
        help="another checkout to measure beside ours on the same film (or, with --portal, "
        "the base URL of one already running on the same data)",
    )
    parser.add_argument("--warm", action="store_true", help="one browser context: a cached visit")
    parser.add_argument("--no-reference", action="store_true", help="skip the native HLS peer")
    parser.add_argument(
        "--portal", help="measure this running portal (base URL) instead of starting one"
    )
    parser.add_argument("--video", help="with --portal: the film to load")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="mm-first-frame-"))
    procs: list[subprocess.Popen[bytes]] = []
    reference: http.server.ThreadingHTTPServer | None = None
    try:
        env = {
            **os.environ,
            "MEGAMOVIE_DATA_DIR": str(tmp / "data"),
            "MEGAMOVIE_LOG_LEVEL": "warning",
            "MEGAMOVIE_RATE_LIMIT_PER_MINUTE": "100000",
            "PYTHONPATH": str(ROOT),
        }
        if args.portal:
            ours, video_id = args.portal.rstrip("/"), args.video
        else:
            print(f"making a {args.seconds:g} s {args.size} film and importing it ...", flush=True)
            film = make_film(tmp / "film.mp4", args.seconds, args.size)
            video_id = import_film(env, film, ROOT)
            port = free_port()
            procs.append(start_portal(env, ROOT, port, tmp / "portal.log"))
            ours = f"http://127.0.0.1:{port}"
        contestants: list[tuple[str, str]] = []  # (name, base URL)
        paths: dict[str, str] = {}  # name -> watch page path, when not our film's
        contestants.append(("ours", ours))
        if args.compare and args.compare.startswith("http"):
            contestants.append((f"compare ({args.compare})", args.compare.rstrip("/")))
        elif args.compare:
            # Its own data dir and import of the same file: checkouts may differ in schema.
            tree = Path(args.compare).resolve()
            other_env = {**env, "MEGAMOVIE_DATA_DIR": str(tmp / "compare-data")}
            if args.portal:
                raise SystemExit("--compare DIR needs the film made here: leave out --portal")
            compare_id = import_film(other_env, film, tree)
            other = free_port()
            procs.append(start_portal(other_env, tree, other, tmp / "compare.log"))
            contestants.append((f"compare ({tree.name})", f"http://127.0.0.1:{other}"))
            paths[contestants[-1][0]] = f"/watch/{compare_id}"
        if not args.no_reference:
            ref_port = free_port()
            reference = http.server.ThreadingHTTPServer(("127.0.0.1", ref_port), ReferencePage)
            threading.Thread(target=reference.serve_forever, daemon=True).start()
            contestants.append(("native HLS (peer)", f"http://127.0.0.1:{ref_port}"))

        def target(name: str, base: str) -> str:
            if not name.startswith("native"):
                return base + paths.get(name, f"/watch/{video_id}")
            # The peer gets its grant beforehand, outside the timing.
            grant = httpx.get(f"{ours}/api/videos/{video_id}/playback", timeout=30)
            grant.raise_for_status()
            return f"{base}/?src={quote(ours + grant.json()['url'], safe='')}"

        figures: dict[str, dict[str, list[float]]] = {
            name: {"frame": [], "playing": [], "time": []} for name, _ in contestants
        }
        waterfall: dict[str, list[tuple[float, float]]] = {}
        failures: dict[str, int] = {name: 0 for name, _ in contestants}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            shared = browser.new_context(viewport={"width": 1280, "height": 800})
            shared.add_init_script(PROBE)

            def load(name: str, base: str, record: bool) -> None:
                context = shared
                if not args.warm:
                    context = browser.new_context(viewport={"width": 1280, "height": 800})
                    context.add_init_script(PROBE)
                page = context.new_page()
                try:
                    page.goto(target(name, base), wait_until="commit")
                    page.wait_for_function(
                        "() => window.__firstFrame && window.__firstFrame.frame !== undefined"
                        " && window.__firstFrame.time !== undefined",
                        timeout=20_000,
                    )
                    seen = page.evaluate(READ_FIGURES)
                except Exception as exc:  # a failed load is counted, not fatal
                    failures[name] += 1
                    print(f"  {name}: load failed: {str(exc).splitlines()[0]}", flush=True)
                    return
                finally:
                    page.close()
                    if context is not shared:
                        context.close()
                if name != "native HLS (peer)" and seen.get("engine") != "hls.js":
                    # Our player falls back to native HLS when hls.js is missing (a 404 from
                    # static/vendor, say): that would measure the wrong player.
                    raise RuntimeError(f"{name} played with {seen.get('engine')!r}, not hls.js")
                if not record:
                    return
                for key in ("frame", "playing", "time"):
                    if seen.get(key) is not None:
                        figures[name][key].append(seen[key])
                if name == "ours":
                    for url, begin, end in seen["resources"]:
                        label = label_of(url)
                        if label:
                            waterfall.setdefault(label, []).append((begin, end))

            # One unrecorded load each first: the portal's first requests warm its caches.
            for name, base in contestants:
                load(name, base, record=False)
            for i in range(args.loads):
                # Rotate who goes first, so no contestant always follows the same one.
                shift = i % len(contestants)
                for name, base in contestants[shift:] + contestants[:shift]:
                    load(name, base, record=True)
                print(f"  round {i + 1}/{args.loads}", flush=True)
            shared.close()
            browser.close()

        print(f"\nnavigation start -> first frame, {args.loads} loads each, "
              f"{'warm' if args.warm else 'cold'} cache, min / median / max:")  # fmt: skip
        for name, _ in contestants:
            f = figures[name]
            print(f"  {name:28s} first frame {summary(f['frame'])}")
            print(f"  {'':28s} playing     {summary(f['playing'])}")
            print(f"  {'':28s} timeupdate  {summary(f['time'])}")
            if failures[name]:
                print(f"  {'':28s} failed loads: {failures[name]}")
        peer = next((n for n, _ in contestants if n.startswith("native")), None)
        if peer and figures[peer]["frame"]:
            base_median = statistics.median(figures[peer]["frame"])
            for name, _ in contestants:
                if name != peer and figures[name]["frame"]:
                    ratio = statistics.median(figures[name]["frame"]) / base_median
                    print(f"  ratio {name} / {peer}: {ratio:.2f}x (first frame, medians)")
        if waterfall:
            print("\nour page, median start and end of each request (ms after navigation start):")
            rows = [
                (
                    label,
                    statistics.median(b for b, _ in times),
                    statistics.median(e for _, e in times),
                    len(times),
                )
                for label, times in waterfall.items()
            ]
            for label, begin, end, count in sorted(rows, key=lambda row: row[2]):
                print(f"  {label:24s} {begin:6.0f} -> {end:6.0f}  (n={count})")
    finally:
        if reference is not None:
            reference.shutdown()
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
