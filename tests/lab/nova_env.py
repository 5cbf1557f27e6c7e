"""The nova box's virtualenv and process: install it, start it, stop it, drive its control API.

Standard library only: this runs under crashup's venv or a plain python3.  The box itself
(tests/lab/novabox/server.py) runs under the nova venv's python, in its own session, and is driven over HTTP.

    python -m tests.lab.nova_env            # create/refresh the venv (a no-op in ~0 s when up to date)
    python -m tests.lab.nova_env --force    # reinstall even if the stamp matches
    python -m tests.lab.nova_env --run [--bind 127.0.0.1 --port 8774 --placement-port 8778 --hosts compute1,...]
                                            # start a box in the foreground until Ctrl-C (manual poking)
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterable, Sequence

from tests.lab import topology, venvs

NOVABOX_DIR = pathlib.Path(__file__).resolve().parent / "novabox"
SERVER = NOVABOX_DIR / "server.py"
REQUIREMENTS = NOVABOX_DIR / "requirements.txt"
CONSTRAINTS = NOVABOX_DIR / "constraints.txt"
#: cinder's pins beyond nova's: the schemas venv's, so both venvs run the same cinder
CINDER_CONSTRAINTS = NOVABOX_DIR.parent / "schemabox" / "constraints.txt"
STAMP_NAME = ".crashup-novabox-stamp"
PID_FILE = "novabox.pid"
STATE_FILE = "state.json"
READY_PREFIX = "NOVABOX READY "

#: in nova's GlanceFixture / NeutronFixture (what a server boots from / attaches to)
IMAGE_ID = "155d900f-4e14-4e4c-a73d-069cbf4541e6"
NETWORK_ID = "3cb9bc59-5699-4588-a4b1-b87f96708bc6"
#: the no-keystone box accepts "X-Auth-Token: <user>:<project>"; user admin gets the admin role
ADMIN_TOKEN = "admin:admin"


class NovaEnvError(RuntimeError):
    pass


class NovaBoxError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"nova_env: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# the venv
# ----------------------------------------------------------------------------------------------------------------------
VENV_SPEC = venvs.PinnedVenv(
    "nova venv", topology.NOVA_VENV, REQUIREMENTS, (CONSTRAINTS, CINDER_CONSTRAINTS), STAMP_NAME,
    # the harness imports that fail here would fail later inside the box with a longer story
    checks=("import nova.tests.functional.integrated_helpers, placement.deploy, sqlalchemy; "
            "assert sqlalchemy.__version__.startswith('2.0.'), sqlalchemy.__version__",
            "import cinder.cmd.volume, cinder.objects; cinder.objects.register_all(); import cinder.volume.driver"),
    check_env=(("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1"),))


def venv_python(venv: os.PathLike | str | None = None) -> pathlib.Path:
    return VENV_SPEC.python(venv)


def venv_is_current(venv: os.PathLike | str | None = None) -> bool:
    return VENV_SPEC.is_current(venv)


def ensure_nova_venv(venv: os.PathLike | str | None = None, *, force: bool = False, quiet: bool = False) -> pathlib.Path:
    """Create or refresh the nova venv (tests/lab/venvs.py); returns its path."""
    try:
        return VENV_SPEC.ensure(venv, force=force, quiet=quiet, say=_log)
    except venvs.VenvError as e:
        raise NovaEnvError(str(e)) from None


# ----------------------------------------------------------------------------------------------------------------------
# the box process
# ----------------------------------------------------------------------------------------------------------------------
def _tail(path: os.PathLike | str | None, lines: int = 30) -> str:
    if not path:
        return "(no log file)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(log {path} unreadable: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:       # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_novabox(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"novabox/server.py" in f.read()
    except OSError:
        return False


class NovaBox:
    """One nova box process.  `start()` launches server.py under the nova venv and waits for it to be ready;
    `stop()` ends it by PID.  `NovaBox.attach(state_dir)` gives a handle on a box started by another process
    (the lab's `up` and `down` run in different processes).

    Everything under `state_dir`: the sqlite files (wiped at each start), state.json (written when ready),
    novabox.pid.  The log (nova's log plus the process's stdout/stderr) goes to `log_file`."""

    def __init__(self, venv: os.PathLike | str | None = None):
        self.venv = pathlib.Path(venv or topology.NOVA_VENV)
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.state_dir: pathlib.Path | None = None
        self.log_file: pathlib.Path | None = None
        self.state: dict[str, Any] = {}
        self.url = ""                # compute API endpoint, http://addr:port/v2.1
        self.control_url = ""        # http://addr:port/novabox
        self.placement_url = ""

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, bind_addr: str = topology.BRIDGE_ADDR, port: int = topology.NOVA_API_PORT,
              placement_port: int = topology.PLACEMENT_PORT, hosts: Iterable[str] | None = None,
              state_dir: os.PathLike | str = topology.RUN_DIR / "nova",
              log_file: os.PathLike | str = topology.LOG_DIR / "nova.log", *,
              timeout: float = 90.0, report_interval: int = 2, service_down_time: int = 6,
              exit_with_parent: bool = False, extra_args: Sequence[str] = ()) -> dict[str, Any]:
        """Start the box and wait until it serves (the READY state file); returns the state dict.
        Raises NovaBoxError quoting the log tail when the process exits or is not ready within `timeout`.
        placement_port=0: placement is not served over HTTP.  The box runs in its own session and outlives
        this process (lab up / lab down), unless exit_with_parent (tests): then it exits once this process is
        gone.  report_interval / service_down_time: nova's heartbeat and "down" threshold, seconds."""
        if self.proc is not None and self.proc.poll() is None:
            raise NovaBoxError(f"this NovaBox already runs (pid {self.proc.pid})")
        hosts = list(hosts) if hosts is not None else [n.nova_host for n in topology.nodes()]
        if not hosts:
            raise NovaBoxError("no compute hosts given")
        py = venv_python(self.venv)
        if not os.access(py, os.X_OK):
            raise NovaBoxError(f"no nova venv at {self.venv}: run ensure_nova_venv() (python -m tests.lab.nova_env)")
        self.state_dir = pathlib.Path(state_dir)
        self.log_file = pathlib.Path(log_file)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        old = _read_pid(self.state_dir)
        if old and _pid_alive(old) and _is_novabox(old):
            raise NovaBoxError(f"a nova box already runs from {self.state_dir} (pid {old}); stop it first")
        state_file = self.state_dir / STATE_FILE
        state_file.unlink(missing_ok=True)
        cmd = [str(py), str(SERVER), "--bind", bind_addr, "--port", str(port),
               "--placement-port", str(placement_port), "--hosts", ",".join(hosts),
               "--state-dir", str(self.state_dir), "--state-file", str(state_file), "--log-file", str(self.log_file),
               "--report-interval", str(report_interval), "--service-down-time", str(service_down_time),
               *(["--exit-with-pid", str(os.getpid())] if exit_with_parent else []), *extra_args]
        env = dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING="1", PYTHONUNBUFFERED="1")
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):   # crashup's venv must not leak into nova's
            env.pop(var, None)
        t0 = time.monotonic()
        with open(self.log_file, "ab") as log:
            log.write(f"\n==== nova box start {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=str(self.state_dir), start_new_session=True)
        self.pid = self.proc.pid
        (self.state_dir / PID_FILE).write_text(f"{self.pid}\n")
        deadline = t0 + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self._forget()
                raise NovaBoxError(f"nova box exited with {rc} during start-up; log {self.log_file}:\n"
                                   f"{_tail(self.log_file)}")
            state = _read_json(state_file)
            if state and state.get("pid") == self.pid:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise NovaBoxError(f"nova box not ready after {timeout:.0f} s; log {self.log_file}:\n"
                                   f"{_tail(self.log_file)}")
            time.sleep(0.1)
        self._set_state(state)
        self.state["start_wait_seconds"] = round(time.monotonic() - t0, 2)
        return self.state

    @classmethod
    def attach(cls, state_dir: os.PathLike | str = topology.RUN_DIR / "nova",
               venv: os.PathLike | str | None = None) -> "NovaBox":
        """A handle on a box another process started from `state_dir` (for stop() and the control helpers)."""
        box = cls(venv)
        box.state_dir = pathlib.Path(state_dir)
        box.pid = _read_pid(box.state_dir)
        state = _read_json(box.state_dir / STATE_FILE)
        if state:
            box._set_state(state)
            box.pid = box.pid or state.get("pid")
        return box

    def running(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        # a zombie leader counts as gone: its other threads may still be exiting (then waitpid says "running")
        return bool(self.pid) and _pid_alive(self.pid) and _is_novabox(self.pid)

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM by PID, SIGKILL after `timeout`; True if a process was ended.  The box exits within ~3 s."""
        pid = self.pid
        ended = False
        if pid and self.running():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self._wait_gone(pid, timeout):
                _log(f"nova box pid {pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._wait_gone(pid, 5)
            ended = True
        self._forget()
        return ended

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=0.05)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not _pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def _forget(self) -> None:
        if self.state_dir is not None:
            if _read_pid(self.state_dir) == self.pid:
                (self.state_dir / PID_FILE).unlink(missing_ok=True)
            st = _read_json(self.state_dir / STATE_FILE)
            if st and st.get("pid") == self.pid:
                (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        self.proc = None

    def _set_state(self, state: dict[str, Any]) -> None:
        self.state = state
        self.url = state["compute_url"]
        self.control_url = state["control_url"]
        self.placement_url = state.get("placement_url") or ""

    def __enter__(self) -> "NovaBox":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- control API (http://addr:port/novabox/...) ----------------------------------------------------------------
    def control(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """One control-API call; returns the decoded JSON; NovaBoxError on an HTTP error."""
        if not self.control_url:
            raise NovaBoxError("nova box not started (no control URL)")
        data = json.dumps(body).encode() if body is not None else (b"{}" if method in ("POST", "PUT") else None)
        req = urllib.request.Request(self.control_url + "/" + path.lstrip("/"), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise NovaBoxError(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None

    def get_state(self) -> dict[str, Any]:
        return self.control("GET", "state")

    def stop_compute(self, host: str, power_off: bool = False) -> dict:
        """Crash nova-compute on `host`: no more heartbeats or RPC.  power_off=True: the hypervisor loses its
        guests too (a fenced/powered-off host); else they keep "running" there."""
        return self.control("POST", f"computes/{host}/stop", {"power_off": power_off})

    def start_compute(self, host: str) -> dict:
        """(Re)start nova-compute on `host` on the same fake hypervisor (init_host runs as at a real boot)."""
        return self.control("POST", f"computes/{host}/start", {})

    def hang_compute(self, host: str) -> dict:
        """nova-compute on `host` hangs: its process still runs, its heartbeats stop (a stuck service)."""
        return self.control("POST", f"computes/{host}/hang", {})

    def guests(self, host: str | None = None) -> list[str] | dict[str, list[str]]:
        """Instance UUIDs the fake hypervisor of `host` holds; host=None: {host: [uuids]} for all hosts."""
        if host is None:
            return self.control("GET", "guests")["guests"]
        return self.control("GET", f"computes/{host}/guests")["guests"]

    def set_instance_db(self, uuid: str, **columns: Any) -> int:
        """Write columns (task_state, vm_state, power_state, updated_at, host, node, launched_at) of an instance
        in the cell DB; returns the row count."""
        return self.control("POST", f"instances/{uuid}/db", columns)["rows"]

    def add_fault(self, match: str, status: int | None = 500, delay: float = 0.0, count: int = 1,
                  body_match: str | None = None) -> dict:
        """The next `count` (-1: all, until clear_faults) compute-API requests whose "METHOD PATH[?QUERY]" matches
        the regex `match` (re.search; and whose body matches `body_match`, if given) wait `delay` s, then get
        HTTP `status` (None: then go to nova as usual, i.e. a slow API)."""
        body: dict[str, Any] = {"match": match, "status": status, "delay": delay, "count": count}
        if body_match is not None:
            body["body_match"] = body_match
        return self.control("POST", "faults", body)

    def faults(self) -> list[dict]:
        return self.control("GET", "faults")["faults"]

    def clear_faults(self) -> int:
        return self.control("DELETE", "faults")["cleared"]


def _read_pid(state_dir: pathlib.Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab.nova_env", description=__doc__.split("\n")[0])
    p.add_argument("--venv", default=str(topology.NOVA_VENV))
    p.add_argument("--force", action="store_true", help="reinstall even if the stamp matches")
    p.add_argument("--run", action="store_true", help="then start a box in the foreground until Ctrl-C")
    p.add_argument("--bind", default=topology.BRIDGE_ADDR)
    p.add_argument("--port", type=int, default=topology.NOVA_API_PORT)
    p.add_argument("--placement-port", type=int, default=topology.PLACEMENT_PORT)
    p.add_argument("--hosts", default=",".join(n.nova_host for n in topology.nodes()))
    p.add_argument("--state-dir", default=str(topology.RUN_DIR / "nova"))
    p.add_argument("--log-file", default=str(topology.LOG_DIR / "nova.log"))
    a = p.parse_args(argv)
    try:
        ensure_nova_venv(a.venv, force=a.force)
    except NovaEnvError as e:
        print(e, file=sys.stderr)
        return 1
    if not a.run:
        return 0
    box = NovaBox(a.venv)
    try:
        st = box.start(a.bind, a.port, a.placement_port, [h for h in a.hosts.split(",") if h], a.state_dir,
                       a.log_file)
    except NovaBoxError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"nova box pid {box.pid} ready in {st['start_wait_seconds']} s: {box.url} (control {box.control_url}, "
          f"log {a.log_file}); Ctrl-C stops it", flush=True)
    try:
        while box.running():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
