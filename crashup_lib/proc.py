"""Run a helper program bounded in time and in output, and leave nothing behind.

Every command crashup runs on an operator's behalf (status/start/stop commands, password scripts, hooks, virsh, pcs)
goes through here. Each runs in a session of its own so that a timeout kills the whole process group: a hung shell
script's `sleep` must not outlive the monitor that started it, every 10 seconds on every node. Output beyond `limit`
bytes is read and dropped, so a program printing without end costs no memory.
"""
from __future__ import annotations

import collections
import os
import selectors
import shlex
import signal
import subprocess
import time

LIMIT = 64 * 1024                    # bytes kept of each of stdout and stderr unless the caller says otherwise


class ProcError(RuntimeError):
    """The program could not be run or did not finish; one line."""


class NotInstalled(ProcError):
    """The program does not exist or is not executable."""


class TimedOut(ProcError):
    """The program did not finish in time; its whole process group was killed."""


class Done(collections.namedtuple("Done", "returncode stdout stderr")):
    """How a program ended. A named tuple, not a dataclass: dataclasses costs every monitor ~5 ms of imports."""
    __slots__ = ()

    def last_line(self, width: int = 200) -> str:
        """The last non-empty line it said (stderr first), shortened: what an error message quotes."""
        lines = [ln.strip() for ln in (self.stderr or self.stdout).splitlines() if ln.strip()]
        return lines[-1][:width] if lines else ""


def split(command: str) -> list[str]:
    """An operator's command line as argv, split like a shell would (never run through one); ValueError naming why
    it cannot be."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ValueError(f"cannot split it like a shell would: {e}") from None
    if not argv:
        raise ValueError("expected a command (it is empty)")
    return argv


def run(argv: list[str], timeout: float, *, input: bytes | None = None, env: dict[str, str] | None = None,
        limit: int = LIMIT, cwd: str | None = None) -> Done:
    """Run argv (never through a shell) for at most `timeout` seconds. Raises NotInstalled or TimedOut."""
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                             start_new_session=True, close_fds=True)
    except (FileNotFoundError, NotADirectoryError):
        raise NotInstalled(f"{argv[0]} not found") from None
    except PermissionError:
        raise NotInstalled(f"{argv[0]} is not executable") from None
    except OSError as e:
        raise NotInstalled(f"{argv[0]} cannot be run: {e.strerror}") from None
    try:
        out, err = _communicate(p, input, time.monotonic() + max(timeout, 0.05), limit)
    except TimedOut:
        kill_group(p)
        raise TimedOut(f"{argv[0]} did not finish within {timeout:.3g}s (killed)") from None
    except BaseException:            # a deadline or SIGTERM in the caller: the program goes with it
        kill_group(p)
        raise
    return Done(p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _communicate(p: subprocess.Popen, input: bytes | None, until: float, limit: int) -> tuple[bytes, bytes]:
    kept = {p.stdout: bytearray(), p.stderr: bytearray()}
    with selectors.DefaultSelector() as sel:
        for pipe in kept:
            sel.register(pipe, selectors.EVENT_READ)
        if input is not None:
            os.set_blocking(p.stdin.fileno(), False)
            sel.register(p.stdin, selectors.EVENT_WRITE)
        pending = memoryview(input or b"")
        while sel.get_map():
            left = until - time.monotonic()
            if left <= 0:
                raise TimedOut()
            for key, _ in sel.select(left):
                if key.fileobj is p.stdin:
                    try:
                        pending = pending[os.write(p.stdin.fileno(), pending[:65536]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:          # it stopped reading: what it says still counts
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(p.stdin)
                        p.stdin.close()
                    continue
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = kept[key.fileobj]
                buf += chunk[:max(limit - len(buf), 0)]
    try:
        p.wait(max(until - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        raise TimedOut() from None
    for pipe in kept:
        pipe.close()
    return bytes(kept[p.stdout]), bytes(kept[p.stderr])


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (its own session), then reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass
    for pipe in (p.stdin, p.stdout, p.stderr):
        try:
            if pipe:
                pipe.close()
        except OSError:
            pass
    try:
        p.wait(2)
    except subprocess.TimeoutExpired:
        p.kill()
