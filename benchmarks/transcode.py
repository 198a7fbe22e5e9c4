"""Our HLS pipeline against the bare ffmpeg command for the same ladder, in the same run.

    .venv/bin/python benchmarks/transcode.py [--seconds 20] [--repeat 3] [--preset veryfast]

The peer is the very argument list `transcoder.hls.build_command` produces, run by
`subprocess.run` with its output thrown away: same encoder, same ladder, same filters. The
difference is what we add around it: probing, progress parsing, watching playlists and
handing every segment to a callback (which reads it, as an encrypting vault would, and
deletes it). Runs alternate so drift on the machine hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from transcoder.hls import HlsOptions, Segment, build_command, transcode
from transcoder.ladder import build_ladder
from transcoder.limits import MediaLimits
from transcoder.probe import probe


def make_source(folder: Path, seconds: float) -> Path:
    source = folder / "source.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "8M",
            "-c:a",
            "aac",
            "-b:a",
            "192k",
            str(source),
        ],
        check=True,
    )
    return source


def run_bare(source: Path, workdir: Path, options: HlsOptions) -> float:
    info = probe(source, MediaLimits())  # outside the timing: the peer does not probe
    args = build_command(source, info, build_ladder(info), workdir, options)
    at = args.index("-progress")
    del args[at : at + 2]
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    shutil.rmtree(workdir)
    return elapsed


def run_ours(source: Path, workdir: Path, options: HlsOptions) -> tuple[float, int]:
    handed = 0

    async def vault(segment: Segment) -> None:
        nonlocal handed
        segment.path.read_bytes()
        segment.path.unlink()
        handed += 1

    async def pipeline() -> None:
        info = await asyncio.to_thread(probe, source, MediaLimits())
        await transcode(
            source, info, build_ladder(info), workdir, options, vault, lambda progress: None
        )

    started = time.perf_counter()
    asyncio.run(pipeline())
    elapsed = time.perf_counter() - started
    shutil.rmtree(workdir, ignore_errors=True)
    return elapsed, handed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--preset", default="veryfast")
    ns = parser.parse_args()
    options = HlsOptions(preset=ns.preset)
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        folder = Path(tmp)
        source = make_source(folder, ns.seconds)
        info = probe(source, MediaLimits())
        ladder = build_ladder(info)
        print(
            f"source: {info.width}x{info.height} {info.fps:g} fps, {info.duration:g} s; "
            f"ladder: {', '.join(r.name for r in ladder)}; preset {ns.preset}; "
            f"{ns.repeat} alternating runs each"
        )
        bare, ours, handed = [], [], 0
        for i in range(ns.repeat):
            bare.append(run_bare(source, folder / f"bare{i}", options))
            seconds, handed = run_ours(source, folder / f"ours{i}", options)
            ours.append(seconds)
    rows = [("bare ffmpeg (same args)", bare), ("ours: probe + transcode + hand-over", ours)]
    base = statistics.median(bare)
    print(
        f"\n{'variant':<38} {'wall s (median)':>16} {'min..max':>14} {'x real time':>12} "
        f"{'ratio':>7}"
    )
    for name, times in rows:
        median = statistics.median(times)
        print(
            f"{name:<38} {median:>16.2f} {min(times):>6.2f}..{max(times):<6.2f} "
            f"{info.duration / median:>12.2f} {median / base:>7.3f}"
        )
    print(f"\nsegments handed to the callback per run: {handed}")


if __name__ == "__main__":
    main()
