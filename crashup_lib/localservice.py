"""Start, stop and check a service on this machine: a systemd unit, or an operator's own commands.

The compute-node agent drives nova-compute through this. Commands are argv templates split like a shell would
(never run through one): `{host}` becomes the nova service host, `{node}` the Pacemaker node. Every call is bounded
and fails with one line (ServiceControlError); the status check is on every monitor's path, so it is one process.
"""
from __future__ import annotations

import shlex
import subprocess

BACKENDS = ("systemd", "command")


class ServiceControlError(RuntimeError):
    """A start/stop/status command could not run or did not finish; one line."""


class LocalService:
    def __init__(self, name: str, start: list[str], stop: list[str], status: list[str]):
        self.name = name
        self._argv = {"start": start, "stop": stop, "status": status}

    def running(self, timeout: float) -> bool:
        """The status command's verdict: exit 0 running, any other exit not running (systemctl is-active, LSB)."""
        return self._run("status", timeout).returncode == 0

    def start(self, timeout: float) -> None:
        self._check("start", timeout)

    def stop(self, timeout: float) -> None:
        self._check("stop", timeout)

    def _check(self, what: str, timeout: float) -> None:
        done = self._run(what, timeout)
        if done.returncode != 0:
            said = (done.stderr or done.stdout or "").strip().splitlines()
            raise ServiceControlError(f"{what} of {self.name} failed (exit {done.returncode})"
                                      + (f": {said[-1][:200]}" if said else ""))

    def _run(self, what: str, timeout: float) -> subprocess.CompletedProcess:
        argv = self._argv[what]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=max(timeout, 0.1))
        except FileNotFoundError:
            raise ServiceControlError(f"{what} of {self.name}: {argv[0]} not found") from None
        except PermissionError:
            raise ServiceControlError(f"{what} of {self.name}: {argv[0]} is not executable") from None
        except subprocess.TimeoutExpired:
            raise ServiceControlError(f"{what} of {self.name}: {shlex.join(argv[:2])} did not finish within "
                                      f"{timeout:.0f}s") from None


def command_argv(template: str, **names: str) -> list[str]:
    """shlex-split `template`, then fill `{host}`/`{node}` in each word (so a name never splits a word)."""
    try:
        words = shlex.split(template)
    except ValueError as e:
        raise ValueError(f"cannot split {template!r}: {e}") from None
    if not words:
        raise ValueError("empty command")
    try:
        return [w.format(**names) for w in words]
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{template!r}: unknown placeholder {e} (known: "
                         + ", ".join("{" + k + "}" for k in names) + ")") from None


def systemd(unit: str) -> LocalService:
    return LocalService(unit, ["systemctl", "start", unit], ["systemctl", "stop", unit],
                        ["systemctl", "is-active", "--quiet", unit])


def commands(name: str, start: str, stop: str, status: str, **names: str) -> LocalService:
    missing = [k for k, v in (("start_command", start), ("stop_command", stop), ("status_command", status))
               if not v.strip()]
    if missing:
        raise ValueError(f"backend command needs {', '.join(missing)}")
    return LocalService(name, command_argv(start, **names), command_argv(stop, **names),
                        command_argv(status, **names))
