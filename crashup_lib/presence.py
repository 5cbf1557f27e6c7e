"""A daemon's presence for the OCF agent that keeps it running: a pid file and a heartbeat file in a state folder.

The agent's monitor reads only these two (no import of the daemon's clients, no call to any service): the pid says
the process lives (checked against /proc/<pid>/cmdline for PID reuse), the heartbeat's age says it still makes
progress. Names per daemon: the recovery daemon keeps `daemon.pid`/`heartbeat`, the sweep `sweep.pid`/
`sweep.heartbeat`, the guest monitor `guests.pid`/`guests.heartbeat`, so they can share one state folder. The
agent's start and stop are here too (spawn, stop): they wait on these files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable

from crashup_lib import proc

STDERR = "daemon.stderr"        # what a daemon says before its logging is set up
POLL = 0.1                      # seconds between looks at the files while a daemon starts or stops


class DaemonFailed(RuntimeError):
    """The daemon did not start; one line."""


@dataclasses.dataclass(frozen=True)
class Presence:
    state_dir: pathlib.Path
    pid_name: str
    heartbeat_name: str

    @property
    def pid_file(self) -> pathlib.Path:
        return pathlib.Path(self.state_dir) / self.pid_name

    @property
    def heartbeat_file(self) -> pathlib.Path:
        return pathlib.Path(self.state_dir) / self.heartbeat_name

    def __enter__(self) -> "Presence":
        pathlib.Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{os.getpid()}\n")
        self.beat()
        return self

    def __exit__(self, *_exc) -> None:
        try:
            if self.pid_file.read_text().strip() == str(os.getpid()):     # never another daemon's file
                self.pid_file.unlink()
        except OSError:
            pass

    def beat(self) -> None:
        self.heartbeat_file.touch()

    def pid(self, marker: bytes) -> int | None:
        """The live daemon's pid: the file's, if that process runs crashup_lib.cli with `marker` as one of its
        arguments (PID reuse guard)."""
        try:
            pid = int(self.pid_file.read_text())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            return None
        args = cmdline.split(b"\0")
        return pid if b"crashup_lib.cli" in args and marker in args else None

    def heartbeat_age(self, now: float) -> float | None:
        try:
            return now - self.heartbeat_file.stat().st_mtime
        except OSError:
            return None

    def spawn(self, argv: list[str], env: dict[str, str], marker: bytes, remaining: Callable[[], float], *,
              name: str = "recovery", sleep: Callable[[float], None] = time.sleep,
              now: Callable[[], float] = time.time) -> int:
        """Start the daemon (`argv`, a session of its own, stdin closed, stdout and stderr to STDERR in the state
        folder) and wait until it runs and beats: its pid file names a live process (`marker`, as pid() checks)
        and its heartbeat is no older than the start. Its pid; DaemonFailed naming the last line it said (else that
        no heartbeat came) when it exits, or remaining() falls to 1 s, first. A start that gives up (that, the
        action's deadline, SIGTERM) kills what it began: a daemon left running would be unmanaged, and Pacemaker
        may start a second one on another controller."""
        pathlib.Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        started = now()
        said_file = pathlib.Path(self.state_dir) / STDERR
        with open(said_file, "w") as said:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=said, stderr=said,
                                       start_new_session=True, close_fds=True)
        try:
            while remaining() > 1:
                age, pid = self.heartbeat_age(now()), self.pid(marker)
                if pid and age is not None and now() - age >= started - 1:
                    return pid
                if process.poll() is not None:
                    break
                sleep(POLL)
            lines = [line.strip() for line in said_file.read_text(errors="replace").splitlines() if line.strip()]
            raise DaemonFailed(f"the {name} daemon did not start"
                               + (f": {lines[-1]}" if lines else " (no heartbeat before the start timeout)"))
        except BaseException:
            proc.kill_group(process)
            raise

    def stop(self, marker: bytes, remaining: Callable[[], float], *,
             sleep: Callable[[float], None] = time.sleep) -> bool:
        """SIGTERM the live daemon and wait until it is gone; SIGKILL it once remaining() falls to 2 s (a stop must
        succeed, or Pacemaker fences this controller). False when it had to be killed."""
        pid = self.pid(marker)
        if not pid:
            return True
        with contextlib.suppress(ProcessLookupError):        # gone meanwhile: stopped
            os.kill(pid, signal.SIGTERM)
        while remaining() > 2:
            if not self.pid(marker):
                return True
            sleep(POLL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return False


RECOVERY = ("daemon.pid", "heartbeat")
SWEEP = ("sweep.pid", "sweep.heartbeat")
GUESTS = ("guests.pid", "guests.heartbeat")       # the guest monitor, on compute nodes
ISOLATION = ("isolation.pid", "isolation.heartbeat")    # the isolation guard, on compute nodes
