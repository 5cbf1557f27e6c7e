"""A daemon's presence for the OCF agent that keeps it running: a pid file and a heartbeat file in a state folder.

The agent's monitor reads only these two (no import of the daemon's clients, no call to any service): the pid says
the process lives (checked against /proc/<pid>/cmdline for PID reuse), the heartbeat's age says it still makes
progress. Names per daemon: the recovery daemon keeps `daemon.pid`/`heartbeat`, the sweep `sweep.pid`/
`sweep.heartbeat`, so both can share one state folder.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib


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


RECOVERY = ("daemon.pid", "heartbeat")
SWEEP = ("sweep.pid", "sweep.heartbeat")
