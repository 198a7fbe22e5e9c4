"""Running ffmpeg/ffprobe on untrusted files: argument lists, limits, whole-group kills, and
children that die with us.

Every child runs in its own session (process group) so a kill reaches anything it spawned,
with stdin closed so it can never wait for a keyboard. Every child also gets a parent-death
signal: it is started through `setpriv --pdeathsig KILL`, which sets PR_SET_PDEATHSIG and then
execs ffmpeg, so the kernel SIGKILLs ffmpeg when we die, `kill -9` included. The signal fires
when the *thread* that forked the child ends, not the process: children are started by
`anyio.open_process` from the event loop's thread, which outlives every child it waits for.
(`open_process` takes no `preexec_fn`, and one in a threaded program is unsafe anyway.) The
`Guard` (transcoder.guard) is the second line: it kills registered groups and removes plaintext
when we are gone, and covers the microseconds between fork and prctl.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import ffmpeg

from transcoder.errors import HostileInput
from transcoder.formats import ALLOWED_DEMUXERS
from transcoder.guard import Guard

#: Reading user files through any other protocol (http, tcp, data, subfile, crypto...) is how
#: a crafted file turns into a server-side request or a local-file read.
PROTOCOL_WHITELIST = ["-protocol_whitelist", "file"]

#: Prefix of every command: the child gets SIGKILL from the kernel when its parent dies.
#: setpriv is part of util-linux, present on every Debian system.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


def input_args(path: Path, demuxer: str) -> list[str]:
    """The options that must precede every user file given to ffmpeg or ffprobe."""
    check_demuxer(demuxer)
    # `file:` stops a name such as `concat:a|b` or `subfile:...` being read as a protocol.
    return [*PROTOCOL_WHITELIST, "-f", demuxer, "-i", f"file:{path.resolve()}"]


#: Leads every ffmpeg command: never read the terminal, and say only what went wrong.
GLOBAL_ARGS = ["-nostdin", "-hide_banner", "-v", "error"]


def hardened_input(path: Path, demuxer: str, **options: str | int) -> Any:
    """An ffmpeg-python input node for a user file, hardened exactly as `input_args()`:
    the demuxer forced from the allowlist, the file protocol only, the `file:` prefix."""
    check_demuxer(demuxer)
    return ffmpeg.input(f"file:{path.resolve()}", f=demuxer, protocol_whitelist="file", **options)


def compile_command(executable: str, *outputs: Any, progress: bool = False) -> list[str]:
    """The argument list for an ffmpeg-python graph: our global options first (ffmpeg-python
    would append its own global arguments after the outputs), then inputs, the filter graph
    and outputs as ffmpeg-python lays them out."""
    graph = outputs[0] if len(outputs) == 1 else ffmpeg.merge_outputs(*outputs)
    extra = ["-nostats", "-progress", "pipe:1"] if progress else []
    return [executable, *GLOBAL_ARGS, *extra, *graph.get_args()]


def check_demuxer(demuxer: str) -> None:
    if demuxer not in ALLOWED_DEMUXERS:
        # A MediaInfo built by hand (or from an old database row) must not smuggle in `hls`.
        raise HostileInput(f"The {demuxer!r} format is not accepted.")


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    overflowed: bool


@asynccontextmanager
async def spawn(
    args: Sequence[str], *, guard: Guard | None = None
) -> AsyncIterator[anyio.abc.Process]:
    """Start `args` (stdout and stderr piped) and kill its whole group when the block ends,
    however it ends: normally, by an exception, or cancelled by the caller's scope."""
    proc = await anyio.open_process(
        [*DIE_WITH_PARENT, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if guard is not None:
            guard.protect_group(proc.pid)
        yield proc
    finally:
        # Shielded: a cancelled caller must not leave before ffmpeg is dead and reaped, or
        # the caller's cleanup would race a process still writing plaintext.
        with anyio.CancelScope(shield=True):
            kill_group(proc.pid)
            await proc.aclose()
            if guard is not None:
                guard.release_group(proc.pid)


async def run(
    args: Sequence[str],
    *,
    time_limit: float,
    max_stdout: int = 8 << 20,
    guard: Guard | None = None,
) -> Completed:
    """Run to completion, killing the process group after `time_limit` wall seconds or when
    stdout is too big. (A limit of our own, not the caller's cancel scope: running out of time
    is an answer about the file, reported in `timed_out`.)"""
    out = bytearray()
    err: deque[bytes] = deque()
    err_size = 0
    overflowed = False
    async with spawn(args, guard=guard) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout, proc.stderr

        async def read_stdout(scope: anyio.CancelScope) -> None:
            nonlocal overflowed
            async for chunk in stdout:
                out.extend(chunk)
                if len(out) > max_stdout:
                    overflowed = True
                    scope.cancel()

        async def read_stderr() -> None:
            nonlocal err_size
            async for chunk in stderr:
                err.append(chunk)
                err_size += len(chunk)
                while err_size > 1 << 20 and len(err) > 1:  # keep the tail: that is the error
                    err_size -= len(err.popleft())

        with anyio.move_on_after(time_limit) as deadline:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_stdout, tg.cancel_scope)
                tg.start_soon(read_stderr)
            if not overflowed:
                await proc.wait()
    assert proc.returncode is not None
    timed_out = deadline.cancelled_caught and not overflowed
    return Completed(proc.returncode, bytes(out), b"".join(err), timed_out, overflowed)


def kill_group(pid: int) -> None:
    """SIGKILL the whole process group; harmless if it already exited."""
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


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first failure inside a task group's exception group (groups nest): the one
    callers should see, typed as it was raised, not wrapped."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first
