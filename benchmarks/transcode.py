"""Our HLS pipeline against the bare ffmpeg command for the same ladder, in the same run, and
what the viewer gets: time to first playable, and the top rung's quality against the source.

    .venv/bin/python benchmarks/transcode.py [--seconds 10] [--repeat 1]
        [--variants before,uniform,tuned] [--preset veryfast] [--source grain|testsrc2]
        [--first-segment 1.0]

(default variants: before,tuned)

Variants (encoder settings), each measured as the bare command and as our pipeline:

- `before`: the command as it was before per-rung settings and short first segments: one
  preset for every rung, bicubic scaling, keyframes every 2 s, 4-s segments from the start.
  Rebuilt here by editing today's command, so the rest of the pipeline is the same.
- `uniform`: today's segmenting (1, 1, 2, then 4-s segments), one preset for every rung,
  no `top_x264_params`.
- `tuned`: today's defaults (HlsOptions()): `lower_preset` and area scaling below the top
  rung, `top_x264_params` on it.
- `plain`, `lookahead`, `trellis`, `hex`: today's defaults with other `top_x264_params`
  (none; `rc-lookahead=20`; `trellis=1`; both, with x264's hexagon motion search), to see
  what each option costs and gives.

The peer is the very argument list `transcoder.hls.build_command` produces (edited for
`before`), run by `subprocess.run` with its output thrown away. "ours" adds probing, progress
parsing, watching playlists and handing every segment to a callback that reads and deletes it,
as the encrypting vault does. Columns: wall seconds (median), times real time, ours over bare,
CPU seconds of the children (user+sys, less sensitive than wall time to other load on a
shared machine), seconds until every rendition had its first segment (ours: the moment the
portal marks a film playable), and SSIM (All) and PSNR (average, dB) of the top rung against
the source, measured by ffmpeg's ssim and psnr filters on the frames we wrote.

Runs alternate bare/ours so drift on the machine hits both alike. Keep runs short (10-20 s
clips): a variant takes about four times the clip's length on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio

from transcoder.hls import HlsOptions, Segment, build_command, transcode
from transcoder.ladder import build_ladder
from transcoder.limits import MediaLimits
from transcoder.playlists import parse_playlist
from transcoder.probe import MediaInfo, probe

SOURCES = {
    # Light temporal grain: x264 works on it roughly as on filmed footage, unlike the flat
    # synthetic pattern alone, which compresses to almost nothing.
    "grain": ["-vf", "noise=alls=6:allf=t"],
    "testsrc2": [],
}


def make_source(folder: Path, seconds: float, kind: str) -> Path:
    source = folder / "source.mp4"
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds), *SOURCES[kind],
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-b:v", "8M",
            "-c:a", "aac", "-b:a", "192k", str(source),
        ],
        check=True,
    )  # fmt: skip
    return source


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    options: HlsOptions
    before: bool = False

    def command(self, source: Path, info: MediaInfo, workdir: Path) -> list[str]:
        args = build_command(source, info, build_ladder(info), workdir, self.options)
        return _as_before(args, self.options) if self.before else args


def _as_before(args: list[str], options: HlsOptions) -> list[str]:
    """Today's command edited back into the one used before: 2-s keyframes within 4-s
    segments from the first one, one preset, swscale's default scaler everywhere. (The
    variant's options carry no top_x264_params, as there were none.)"""
    args = list(args)
    at = args.index("-filter_complex") + 1
    args[at] = args[at].replace(":flags=area", "")
    at = args.index("-force_key_frames") + 1
    args[at] = "expr:gte(t,n_forced*2)"
    at = args.index("-hls_time") + 1
    args[at] = f"{options.segment_seconds:g}"
    for i, arg in enumerate(args):
        if arg.startswith("-preset:v:"):
            args[i + 1] = options.preset
        if arg.startswith("-g:v:"):
            # 2 s at 30 fps as before; keyint_min (also 60 then) only acts on scene cuts, off.
            args[i + 1] = "60"
    return args


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class Run:
    wall: float
    cpu: float
    #: Seconds until every rendition had a finished media segment.
    first_playable: float


def run_bare(args: list[str], workdir: Path, names: list[str], keep: Path) -> Run:
    """The command alone. Its playlists are glanced at every 50 ms to see when every
    rendition lists a segment; the top rung (last name) is joined into `keep` at the end."""
    args = list(args)
    at = args.index("-progress")
    del args[at : at + 2]
    cpu, started = cpu_seconds(), time.perf_counter()
    first: dict[str, float] = {}
    with subprocess.Popen(args, stdout=subprocess.DEVNULL) as proc:
        while proc.poll() is None:
            for name in set(names) - set(first):
                playlist = workdir / name / "index.m3u8"
                if playlist.exists() and "seg_" in playlist.read_text():
                    first[name] = time.perf_counter() - started
            time.sleep(0.05)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0
    top = workdir / names[-1]
    playlist = parse_playlist((top / "index.m3u8").read_text())
    parts = [playlist.init_uri or "init.mp4", *(uri for uri, _ in playlist.segments)]
    keep.write_bytes(b"".join((top / uri).read_bytes() for uri in parts))
    shutil.rmtree(workdir)
    return Run(elapsed, cpu_seconds() - cpu, max(first.values(), default=elapsed))


def run_ours(source: Path, workdir: Path, options: HlsOptions) -> Run:
    first: dict[str, float] = {}
    began = time.perf_counter()

    async def vault(segment: Segment) -> None:
        segment.path.read_bytes()  # as the vault reads it to encrypt it
        segment.path.unlink()
        if segment.kind == "media":
            first.setdefault(segment.rendition, time.perf_counter() - began)

    async def pipeline() -> None:
        info = await probe(source, MediaLimits())
        await transcode(source, info, build_ladder(info), workdir, options, vault, lambda p: None)

    cpu = cpu_seconds()
    anyio.run(pipeline)
    elapsed = time.perf_counter() - began
    shutil.rmtree(workdir, ignore_errors=True)
    return Run(elapsed, cpu_seconds() - cpu, max(first.values()))


def quality(encoded: Path, source: Path) -> tuple[float, float]:
    """SSIM (All) and PSNR (average) of `encoded` against `source`, frame by frame."""
    graph = (
        "[0:v]setpts=PTS-STARTPTS,split[e0][e1];[1:v]setpts=PTS-STARTPTS,split[s0][s1];"
        "[e0][s0]ssim[o0];[e1][s1]psnr[o1]"
    )
    result = subprocess.run(
        [
            "ffmpeg", "-nostdin", "-hide_banner", "-i", str(encoded), "-i", str(source),
            "-filter_complex", graph, "-map", "[o0]", "-f", "null", "-", "-map", "[o1]",
            "-f", "null", "-",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ssim = re.search(r"SSIM .* All:([\d.]+)", result.stderr)
    psnr = re.search(r"PSNR .* average:([\d.]+|inf)", result.stderr)
    assert ssim and psnr, result.stderr[-2000:]
    return float(ssim.group(1)), float(psnr.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--variants", default="before,tuned")
    parser.add_argument("--source", choices=sorted(SOURCES), default="grain")
    parser.add_argument("--first-segment", type=float, default=HlsOptions.first_segment_seconds)
    ns = parser.parse_args()
    defaults = HlsOptions(preset=ns.preset, first_segment_seconds=ns.first_segment)
    variants = {
        "before": Variant(
            "before", dataclasses.replace(defaults, lower_preset=None, top_x264_params=""), True
        ),
        "uniform": Variant(
            "uniform", dataclasses.replace(defaults, lower_preset=None, top_x264_params="")
        ),
        "tuned": Variant("tuned", defaults),
        # The top rung's x264 options, one at a time, against `tuned`:
        **{
            name: Variant(name, dataclasses.replace(defaults, top_x264_params=params))
            for name, params in [
                ("plain", ""),
                ("lookahead", "rc-lookahead=20"),
                ("trellis", "trellis=1"),
                ("hex", "rc-lookahead=20:trellis=1"),
            ]
        },
    }
    chosen = [variants[name] for name in ns.variants.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        folder = Path(tmp)
        source = make_source(folder, ns.seconds, ns.source)
        info = anyio.run(probe, source, MediaLimits())
        ladder = build_ladder(info)
        print(
            f"source: {ns.source} {info.width}x{info.height} {info.fps:g} fps, "
            f"{info.duration:g} s; ladder: {', '.join(r.name for r in ladder)}; top preset "
            f"{ns.preset}; {ns.repeat} alternating runs per variant"
        )
        bare: dict[str, list[Run]] = {v.name: [] for v in chosen}
        ours: dict[str, list[Run]] = {v.name: [] for v in chosen}
        # Variants interleaved, bare and ours alternating: drift on the machine hits all alike.
        for i in range(ns.repeat):
            for variant in chosen:
                workdir = folder / f"bare-{variant.name}-{i}"
                command = variant.command(source, info, workdir)
                top = folder / f"top-{variant.name}.mp4"
                bare[variant.name].append(run_bare(command, workdir, [r.name for r in ladder], top))
                if not variant.before:  # transcode() builds its own command: today's
                    workdir = folder / f"ours-{variant.name}-{i}"
                    ours[variant.name].append(run_ours(source, workdir, variant.options))
        for variant in chosen:
            top = folder / f"top-{variant.name}.mp4"
            ssim, psnr = quality(top, source)
            rows.append(
                (variant.name, bare[variant.name], ours[variant.name], ssim, psnr,
                 top.stat().st_size)
            )  # fmt: skip
    print(
        f"\n{'variant':<9} {'bare s':>7} {'x real':>7} {'CPU s':>6} {'playable s':>10} "
        f"{'ours s':>7} {'ours/bare':>9} {'playable s':>10} {'top SSIM':>9} {'PSNR dB':>8} "
        f"{'top kb/s':>9}"
    )
    for name, bare, ours, ssim, psnr, size in rows:
        bare_s = statistics.median(b.wall for b in bare)
        line = (
            f"{name:<9} {bare_s:>7.2f} {info.duration / bare_s:>7.2f} "
            f"{statistics.median(b.cpu for b in bare):>6.1f} "
            f"{statistics.median(b.first_playable for b in bare):>10.2f} "
        )
        if ours:
            ours_s = statistics.median(o.wall for o in ours)
            line += (
                f"{ours_s:>7.2f} {ours_s / bare_s:>9.3f} "
                f"{statistics.median(o.first_playable for o in ours):>10.2f} "
            )
        else:
            line += f"{'-':>7} {'-':>9} {'-':>10} "
        line += f"{ssim:>9.4f} {psnr:>8.2f} {size * 8 / info.duration / 1000:>9.0f}"
        print(line)
    print(
        "\nbare: the command alone (x real: source seconds per wall second); ours: probe + "
        "transcode + hand-over of every segment; playable: seconds until every rendition had "
        "a segment; SSIM/PSNR: top rung against the source."
    )


if __name__ == "__main__":
    main()
