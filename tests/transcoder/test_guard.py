"""Nothing outlives a dead worker: not its ffmpeg, not its plaintext.

These tests start a real Python process, let it start real ffmpeg work, `kill -9` it, and look
at what is left on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import alive, eventually, live_processes_naming, run_ffmpeg
from transcoder.guard import Guard

ROOT = Path(__file__).resolve().parents[2]


def python(script: str, *args: str) -> subprocess.Popen[str]:
    """`script` in a fresh interpreter that imports this checkout's transcoder."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed and reaped whatever the test's outcome."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory, ffmpeg: str) -> Path:
    """30 s of 640x360: quick to make with ultrafast, a minute's work for veryslow."""
    out = tmp_path_factory.mktemp("long") / "long.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=24", "-f", "lavfi", "-i",
        "sine=frequency=440:sample_rate=48000", "-t", "30", "-c:v", "libx264", "-preset",
        "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out),
    )  # fmt: skip
    return out


TRANSCODE = """
import shutil, sys
from pathlib import Path
import anyio
from transcoder.guard import Guard
from transcoder.hls import HlsOptions, transcode
from transcoder.ladder import build_ladder
from transcoder.limits import MediaLimits
from transcoder.probe import probe

async def main(source: Path, scratch: Path) -> None:
    with Guard.start() as guard:
        scratch.mkdir(mode=0o700)
        guard.protect_path(scratch)
        plaintext = scratch / "source.mp4"  # as the portal decrypts an upload
        shutil.copyfile(source, plaintext)
        info = await probe(plaintext, MediaLimits(), guard=guard)

        async def keep(segment):  # plaintext segments stay in the scratch dir
            print(segment.kind, flush=True)

        options = HlsOptions(
            preset="veryslow", threads=1, segment_seconds=1.0
        )
        await transcode(plaintext, info, build_ladder(info), scratch / "hls", options, keep,
                        guard=guard)
        print("finished", flush=True)

anyio.run(main, Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_kill_9_mid_transcode_leaves_no_ffmpeg_and_no_plaintext(
    long_clip: Path, tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    scratch = tmp_path / "scratch-job"
    worker = python(TRANSCODE, str(long_clip), str(scratch))
    reap.append(worker)
    assert worker.stdout is not None
    # Wait until ffmpeg has handed over a media segment: encoding is under way, plaintext
    # (the source, segments) is on disk.
    assert worker.stdout.readline().strip() == "init"
    while (line := worker.stdout.readline().strip()) == "init":
        pass
    assert line == "media", "the worker ended before it was killed"
    assert live_processes_naming(str(scratch)), "no ffmpeg was running: nothing was tested"
    assert any(scratch.rglob("*.m4s"))

    worker.send_signal(signal.SIGKILL)
    worker.wait()

    assert eventually(lambda: live_processes_naming(str(scratch)) == []), "ffmpeg outlived us"
    assert eventually(lambda: not scratch.exists()), "plaintext outlived us"


def running(pid: int) -> str:
    """The name of the program `pid` runs now ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


SPAWN_AND_HANG = """
import sys
import anyio
from transcoder.process import spawn

async def main() -> None:
    args = ["ffmpeg", "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i",
            "testsrc2=size=320x180:rate=24", "-f", "null", "-"]
    async with spawn(args) as proc:  # no guard: only the parent-death signal is at work
        print(proc.pid, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


def test_ffmpeg_gets_a_death_signal_when_its_parent_dies_even_without_a_guard(
    reap: list[subprocess.Popen[str]],
) -> None:
    parent = python(SPAWN_AND_HANG)
    reap.append(parent)
    assert parent.stdout is not None
    ffmpeg_pid = int(parent.stdout.readline())
    # The pid is setpriv's until it has armed the signal and exec'd ffmpeg; a kill before
    # that is the window the Guard covers (the next tests), not what this one tests.
    assert eventually(lambda: running(ffmpeg_pid) == "ffmpeg")

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    assert eventually(lambda: not alive(ffmpeg_pid))


REGISTER_AND_HANG = """
import subprocess, sys, time
from transcoder.guard import Guard

guard = Guard.start()
guard.protect_path(sys.argv[1])
# A child without a death signal, in its own group: only the janitor can stop it.
child = subprocess.Popen(["sleep", "600"], start_new_session=True)
guard.protect_group(child.pid)
print(child.pid, guard.pid, flush=True)
time.sleep(600)
"""


def test_janitor_kills_registered_groups_and_removes_paths_when_its_parent_dies(
    tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    plaintext = tmp_path / "job" / "nested"
    plaintext.mkdir(parents=True)
    (plaintext / "film.mp4").write_bytes(b"plaintext")
    parent = python(REGISTER_AND_HANG, str(tmp_path / "job"))
    reap.append(parent)
    assert parent.stdout is not None
    child_pid, janitor_pid = map(int, parent.stdout.readline().split())

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    assert eventually(lambda: not alive(child_pid))
    assert eventually(lambda: not (tmp_path / "job").exists())
    assert eventually(lambda: not alive(janitor_pid)), "the janitor should exit when done"


def test_closing_the_guard_removes_what_is_still_registered_and_nothing_else(
    tmp_path: Path,
) -> None:
    kept, dropped, file = tmp_path / "kept", tmp_path / "dropped", tmp_path / "loose.bin"
    for folder in (kept, dropped):
        folder.mkdir()
        (folder / "x").write_bytes(b"x")
    file.write_bytes(b"y")
    with Guard.start() as guard:
        guard.protect_path(kept)
        guard.protect_path(dropped)
        guard.protect_path(file)
        guard.release_path(kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    with pytest.raises(RuntimeError, match="closed"):
        guard.protect_path(kept)
