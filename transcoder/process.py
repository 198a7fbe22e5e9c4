"""Running ffmpeg/ffprobe on untrusted files: argument lists, limits, whole-group kills.

Every child runs in its own session (process group) so a kill reaches anything it spawned,
with stdin closed so it can never wait for a keyboard.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transcoder.errors import HostileInput
from transcoder.formats import ALLOWED_DEMUXERS

#: Reading user files through any other protocol (http, tcp, data, subfile, crypto...) is how
#: a crafted file turns into a server-side request or a local-file read.
PROTOCOL_WHITELIST = ["-protocol_whitelist", "file"]


def input_args(path: Path, demuxer: str) -> list[str]:
    """The options that must precede every user file given to ffmpeg or ffprobe."""
    if demuxer not in ALLOWED_DEMUXERS:
        # A MediaInfo built by hand (or from an old database row) must not smuggle in `hls`.
        raise HostileInput(f"The {demuxer!r} format is not accepted.")
    # `file:` stops a name such as `concat:a|b` or `subfile:...` being read as a protocol.
    return [*PROTOCOL_WHITELIST, "-f", demuxer, "-i", f"file:{path.resolve()}"]


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    overflowed: bool


def run(args: Sequence[str], *, timeout: float, max_stdout: int = 8 << 20) -> Completed:
    """Run to completion, killing the process group on timeout or when stdout is too big."""
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    timed_out = overflowed = False
    assert proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        try:
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf: bytearray = key.data
                    buf += chunk
                    if buf is err and len(err) > 1 << 20:
                        del err[: len(err) - (1 << 19)]  # keep the tail, that is the error
                if len(out) > max_stdout:
                    overflowed = True
                    break
        finally:
            kill_group(proc)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    return Completed(proc.returncode, bytes(out), bytes(err), timed_out, overflowed)


def kill_group(proc: subprocess.Popen[bytes] | int) -> None:
    """SIGKILL the whole process group; harmless if it already exited."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def summarise_stderr(lines: Iterable[str], hide: Iterable[str] = (), keep: int = 3) -> str:
    """The last meaningful stderr lines, with paths replaced, for a human-readable reason."""
    hidden = sorted({h for h in hide if h}, key=len, reverse=True)
    useful: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(("frame=", "size=", "Press [q]")):
            continue
        for secret in hidden:
            line = line.replace(secret, "<file>")
        useful.append(line[:200])
    # Deduplicate while keeping order: ffmpeg repeats the same complaint per packet.
    tail = list(dict.fromkeys(useful[-20:]))[-keep:]
    return "; ".join(tail)


def describe_failure(what: str, stderr_lines: Iterable[str], hide: Iterable[str] = ()) -> str:
    """`what`, plus ffmpeg's own last words with paths hidden: a reason for a person."""
    detail = summarise_stderr(stderr_lines, hide)
    return f"{what} (ffmpeg: {detail})." if detail else f"{what}."
