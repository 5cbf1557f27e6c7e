"""Start, stop and check a service on this machine: a systemd unit, or an operator's own commands; and libvirt.

The compute-node agent drives nova-compute through this. Commands are argv templates split like a shell would
(never run through one): `{host}` becomes the nova service host, `{node}` the Pacemaker node. Every call is bounded
and fails with one line (ServiceControlError); the status check is on every monitor's path, so it is one process.
"""
from __future__ import annotations

import os
import shlex
import string
import time
from collections.abc import Callable

from crashup_lib import proc

BACKENDS = ("systemd", "command")
PLACEHOLDERS = ("host", "node")
STATUS_TIMEOUT = 10.0           # seconds a status check (or libvirt's answer) may take at most
STOP_POLL = 0.2                 # seconds between status checks while a stopped service goes


def status_timeout(remaining: float) -> float:
    """How long a status check may take with `remaining` seconds left of the action: a second is kept to report."""
    return min(STATUS_TIMEOUT, max(remaining - 1, 0.5))


class ServiceControlError(RuntimeError):
    """A start/stop/status command could not run or did not finish; one line."""


class ServiceNotInstalled(ServiceControlError):
    """The command does not exist or cannot be executed: a configuration problem, not a failure of the service."""


class LocalService:
    def __init__(self, name: str, start: list[str], stop: list[str], status: list[str]):
        self.name = name
        self._argv = {"start": start, "stop": stop, "status": status}

    def running(self, timeout: float) -> bool:
        """The status command's verdict: exit 0 running, any other exit not running (systemctl is-active, LSB)."""
        return self._run("status", timeout).returncode == 0

    def check_installed(self) -> None:
        """Raise ServiceNotInstalled naming the first command whose program cannot be found or executed."""
        for what, argv in self._argv.items():
            if not installed(argv[0]):
                raise ServiceNotInstalled(f"{what} of {self.name}: {argv[0]} not found or not executable")

    def start(self, timeout: float) -> None:
        self._check("start", timeout)

    def stop(self, timeout: float) -> None:
        self._check("stop", timeout)

    def ensure_stopped(self, remaining: Callable[[], float], sleep: Callable[[float], None] = time.sleep) -> None:
        """Stop it if it runs, and wait until its status says stopped, within remaining() seconds (2 are kept to
        report): ServiceControlError (one line) when it still runs then."""
        if not self.running(status_timeout(remaining())):
            return
        self.stop(max(remaining() - 2, 1.0))
        while self.running(status_timeout(remaining())):
            if remaining() < 2:
                raise ServiceControlError(f"{self.name} still running after its stop command")
            sleep(STOP_POLL)

    def _check(self, what: str, timeout: float) -> None:
        done = self._run(what, timeout)
        if done.returncode != 0:
            said = done.last_line()
            raise ServiceControlError(f"{what} of {self.name} failed (exit {done.returncode})"
                                      + (f": {said}" if said else ""))

    def _run(self, what: str, timeout: float) -> proc.Done:
        try:
            return proc.run(self._argv[what], max(timeout, 0.1))
        except proc.NotInstalled as e:
            raise ServiceNotInstalled(f"{what} of {self.name}: {e}") from None
        except proc.ProcError as e:
            raise ServiceControlError(f"{what} of {self.name}: {e}") from None


def check_libvirt(uri: str, timeout: float) -> None:
    """Raise unless libvirt at `uri` answers `virsh version` within min(timeout, STATUS_TIMEOUT) seconds:
    ServiceNotInstalled without virsh, else ServiceControlError (one line)."""
    try:
        done = proc.run(["virsh", "--connect", uri, "version"], min(STATUS_TIMEOUT, timeout))
    except proc.NotInstalled:
        raise ServiceNotInstalled("virsh not installed (needed for libvirt_uri)") from None
    except proc.TimedOut:
        raise ServiceControlError(f"libvirt at {uri} did not answer within {STATUS_TIMEOUT:g}s") from None
    if done.returncode != 0:
        raise ServiceControlError(f"libvirt at {uri} not answering: "
                                  f"{done.last_line() or f'virsh exit {done.returncode}'}")


def installed(program: str) -> bool:
    """Whether `program` would run: an executable file, by path or found on PATH (as execvp finds it)."""
    if "/" in program:
        return os.path.isfile(program) and os.access(program, os.X_OK)
    return any(installed(os.path.join(d, program)) for d in os.environ.get("PATH", "/usr/bin").split(":") if d)


def check_template(template: str) -> None:
    """Raise ValueError (one line) unless `template` is a command whose placeholders are exactly {host}/{node}:
    no attribute, index, conversion or format spec ({host.x}, {0}, {host:>9999999999} would fail or explode late)."""
    words = proc.split(template)
    known = ", ".join("{" + k + "}" for k in PLACEHOLDERS)
    for word in words:
        try:
            fields = list(string.Formatter().parse(word))
        except ValueError as e:         # a lone { or }
            raise ValueError(f"{e} (write {{{{ or }}}} for a brace; placeholders: {known})") from None
        for _, field, spec, conversion in fields:
            if field is not None and (field not in PLACEHOLDERS or spec or conversion):
                shown = ascii(field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else ""))
                raise ValueError(f"placeholder {{{shown[1:-1][:40]}}} is not one of {known}")


def command_argv(template: str, **names: str) -> list[str]:
    """shlex-split `template`, then fill `{host}`/`{node}` in each word (so a name never splits a word)."""
    check_template(template)
    return [w.format(**names) for w in shlex.split(template)]


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
