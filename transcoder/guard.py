"""A janitor process that cleans up after us when we die without cleaning up ourselves.

`kill -9`, the OOM killer or a crash skip every `finally:`. Two things must not outlive the
process that made them: ffmpeg children (they would go on decoding someone's film and writing
plaintext) and scratch directories holding plaintext. Every ffmpeg child is started with a
parent-death signal (see `transcoder.process`), which kills it; this module covers the rest.

`Guard.start()` launches a small janitor (this file, run by the same Python with `-I -S`, so it
imports nothing of ours and starts in milliseconds) in its own session, and keeps the write
end of a pipe to its stdin. We tell it, one JSON line at a time, which paths to remove and
which process groups to kill. The kernel closes the pipe when we die, however we die, so the
janitor reads EOF, SIGKILLs every group still registered, waits until they are gone (a dying
ffmpeg might still create a file), and removes every path still registered. Closing the guard
on purpose does the same for whatever is still registered, and the janitor exits.

What it cannot cover: a service manager that SIGKILLs the whole cgroup takes the janitor too;
the portal's start-up sweep of the scratch dir covers that. A fork without exec in this
process would inherit the pipe and delay the EOF until that child exits as well.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

#: How long the janitor waits for killed groups to disappear before removing paths anyway.
_GROUP_EXIT_SECONDS = 5.0
#: A path may be refilled by a process that was still inside a write() when it was killed;
#: removal is retried for this long.
_REMOVE_RETRY_SECONDS = 2.0


class Guard:
    """Paths to remove and process groups to kill if this process dies before it does so.

    Methods are synchronous and cheap (a short write to a pipe the janitor drains); they may
    be called from async code. Registration is idempotent per path or group.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._closed = False

    @classmethod
    def start(cls, *, python: str = sys.executable) -> Guard:
        proc = subprocess.Popen(
            # -I -S: no site-packages, no PYTHONPATH, no user site; the janitor needs only
            # the standard library and must not run anything a directory could plant.
            [python, "-I", "-S", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a signal to our process group (Ctrl-C, a supervisor killing the
            # group) must not take the janitor along with us.
            start_new_session=True,
            # Not the job's dir: a janitor sitting in a directory would keep it busy.
            cwd="/",
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def protect_path(self, path: Path) -> None:
        """Remove `path` (a file or a whole tree) if we die first."""
        self._send("add_path", str(Path(path).resolve()))

    def release_path(self, path: Path) -> None:
        self._send("drop_path", str(Path(path).resolve()))

    def protect_group(self, pgid: int) -> None:
        """SIGKILL process group `pgid` if we die first."""
        self._send("add_group", int(pgid))

    def release_group(self, pgid: int) -> None:
        self._send("drop_group", int(pgid))

    def close(self, timeout: float = 30.0) -> None:
        """Clean up whatever is still registered, now, and stop the janitor."""
        if self._closed:
            return
        self._closed = True
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    async def aclose(self) -> None:
        import anyio

        # Shielded: a cancelled job must still wait for its plaintext to be removed.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _send(self, op: str, value: str | int) -> None:
        if self._closed:
            raise RuntimeError("the guard is closed")
        assert self._proc.stdin is not None
        # One line per message; json escapes newlines inside paths. An unbuffered pipe write
        # of a short line is atomic and the janitor drains the pipe, so this never blocks.
        self._proc.stdin.write(json.dumps([op, value]).encode() + b"\n")
        self._proc.stdin.flush()


# The janitor: runs as a script (`python -I -S guard.py`), standard library only below.


def _janitor() -> None:
    # Only EOF on stdin ends the janitor; the signals a terminal or a supervisor sends to a
    # whole group or session must not make it leave before its parent.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    paths: dict[str, None] = {}
    groups: dict[int, None] = {}
    for raw in sys.stdin.buffer:
        try:
            op, value = json.loads(raw)
        except ValueError:
            continue  # a line cut short by our parent's death
        # Absolute paths only, and never the root: a bug upstream must not become rm -rf /.
        if op == "add_path" and isinstance(value, str) and os.path.isabs(value) and value != "/":
            paths[value] = None
        elif op == "drop_path":
            paths.pop(value, None)
        elif op == "add_group" and isinstance(value, int) and value > 1:
            groups[value] = None
        elif op == "drop_group":
            groups.pop(value, None)
    # EOF: our parent closed the guard or died. Kill first, then remove: a live ffmpeg would
    # recreate files in a directory we are emptying.
    for pgid in groups:
        _kill_group(pgid)
    deadline = time.monotonic() + _GROUP_EXIT_SECONDS
    while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.02)
    deadline = time.monotonic() + _REMOVE_RETRY_SECONDS
    for path in paths:
        while _remove(path) and time.monotonic() < deadline:
            time.sleep(0.05)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: they can no longer
    write, and their reaper (init, now that their parent is dead) may be slow."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields follow the last ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _remove(path: str) -> bool:
    """Remove `path`; True if something is still there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            return True
    return os.path.lexists(path)


if __name__ == "__main__":
    _janitor()
