"""A real cinder for the lab: cinder-api, cinder-scheduler and cinder-volume (cinder 29 from PyPI, in the nova venv),
each its own process in its own session, on the lab's RabbitMQ, with a sqlite database made by cinder's own db sync
and the lab's file volume driver (tests/lab/cinderbox/labdriver.py: a volume is the file `volume-<id>` in
`volume_dir`, as on an NFS share).

Standard library only: this runs under crashup's venv; the services run under the nova venv's python.

    c = Cinder(state_dir, bind="127.0.0.1", port=8776, log_dir=...)
    c.prepare(broker)            # db sync, vhost+user of its own on the broker, cinder.conf (0600), api-paste.ini
    c.start()                    # the three services; ready when the scheduler knows the lab backend's pool
    c.kill_service("volume")     # a crash (SIGKILL to its process group); c.start_service("volume") brings it back
    c.stop()                     # volume, scheduler, api: SIGTERM, SIGKILL after a bound; nothing left running

Cinder gets a vhost and a user of its own on the broker (not crashup's): its RPC queues and exchanges stay apart
from crashup's bus, crashup's user needs no right on them, and cinder's cannot read crashup's events.
`python -m tests.lab.cinder` runs a smoke test on a throwaway broker (no lab needed).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pathlib
import secrets
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tests.lab import procs, topology

BOX_DIR = pathlib.Path(__file__).resolve().parent / "cinderbox"
CONF_TEMPLATE = BOX_DIR / "cinder.conf.in"
SERVICES = ("api", "scheduler", "volume")            # start order; stop() goes the other way (volume first)
BACKEND = "lab"
VHOST = "cinder"
BUS_USER = "cinder"
TOKEN = "admin:admin"                                # noauth: "<user>:<project>", user admin is admin
PROJECT = "admin"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0                                   # then SIGKILL: with the broker gone they ignore SIGTERM > 15 s


class CinderError(RuntimeError):
    """One line: what failed and why."""



def _group(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group pgid."""
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = proc.joinpath("stat").read_text().rsplit(")", 1)[-1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(proc.name))
    return found



def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)), salt 4 bytes."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def bus_definitions(vhost: str, user: str, password: str) -> dict:
    """The broker definitions (rabbitmqctl import_definitions) of a vhost, a user with rights on it only."""
    return {"users": [{"name": user, "password_hash": password_hash(password),
                       "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}],
            "vhosts": [{"name": vhost}],
            "permissions": [{"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}]}


def render_conf(template: str, **values: Any) -> str:
    """cinder.conf from its template: {name} placeholders, every one given (a missing one is a KeyError)."""
    return template.format(**values)


def paste_ini(original: str) -> str:
    """cinder's api-paste.ini with the lab's service-token filter (cinderbox/labauth.py) before noauth."""
    old = " noauth_include_project_id apiv3"
    if original.count(old) != 1:
        raise CinderError("cinder's api-paste.ini has no single noauth_include_project_id pipeline to extend")
    return original.replace(old, " labauth" + old) + \
        "\n[filter:labauth]\npaste.filter_factory = labauth:filter_factory\n"


class Cinder:
    """The lab's three cinder services under `state_dir` (config, sqlite, volume files, pid files); logs in log_dir."""

    def __init__(self, state_dir: os.PathLike | str, *, bind: str = topology.BRIDGE_ADDR,
                 port: int = topology.CINDER_API_PORT, log_dir: os.PathLike | str | None = None,
                 venv: os.PathLike | str | None = None, host: str = topology.CONTROLLER,
                 report_interval: int = 2, service_down_time: int = 6):
        self.state_dir = pathlib.Path(state_dir).resolve()
        self.log_dir = pathlib.Path(log_dir) if log_dir else self.state_dir / "log"
        self.venv = pathlib.Path(venv or topology.NOVA_VENV)
        self.bind, self.port, self.host = bind, port, host
        self.report_interval, self.service_down_time = report_interval, service_down_time
        self.conf_file = self.state_dir / "cinder.conf"
        self.paste_file = self.state_dir / "api-paste.ini"
        self.db_file = self.state_dir / "cinder.sqlite"
        self.volume_dir = self.state_dir / "volumes"
        self.bus_password_file = self.state_dir / "bus-password"
        self.start_seconds = 0.0
        self.sync_seconds = 0.0
        self._procs: dict[str, Any] = {}             # subprocess.Popen of the services this object launched

    def __repr__(self) -> str:
        return f"Cinder({self.url}, state_dir={self.state_dir})"

    # -- what it is -----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The block-storage v3 endpoint (no project in the path: cinder >= 3.67 takes either)."""
        return f"http://{self.bind}:{self.port}/v3"

    @property
    def backend_host(self) -> str:
        """cinder-volume's service host (host@backend), as in os-services and a volume's os-vol-host-attr:host."""
        return f"{self.host}@{BACKEND}"

    def db_url(self) -> str:
        return f"sqlite:///{self.db_file}"

    def volume_path(self, volume_id: str) -> pathlib.Path:
        """The file that is the volume on the lab backend (cinder's volume_name_template, volume-%s)."""
        return self.volume_dir / f"volume-{volume_id}"

    def _pid_file(self, service: str) -> pathlib.Path:
        return self.state_dir / f"cinder-{service}.pid"

    def pid(self, service: str) -> int | None:
        try:
            pid = int(self._pid_file(service).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if procs.alive(pid, f"cinder-{service}".encode()) else None

    def pids(self) -> dict[str, int]:
        return {s: p for s in SERVICES if (p := self.pid(s))}

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory per service, its workers included (cinder-api and cinder-volume fork one)."""
        return {s: sum(procs.rss(p) for p in _group(pgid)) for s, pgid in self.pids().items()}

    # -- set-up ---------------------------------------------------------------------------------------------------
    def prepare(self, broker) -> None:
        """Database (cinder's own db sync), the broker's vhost and user for cinder, cinder.conf and api-paste.ini.
        The broker must run (its definitions are imported through rabbitmqctl); the db sync does not need it:
        sync_db() can run first, while the broker starts."""
        if not self.db_file.exists():
            self.sync_db()
        self.add_bus_user(broker)
        self.write_conf(self.transport_url(broker))

    def sync_db(self) -> None:
        """A fresh sqlite database migrated by cinder's own db sync (tests/lab/schemas.py's, under the nova venv)."""
        from tests.lab import schemas
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for suffix in ("", "-wal", "-shm", "-journal"):
            pathlib.Path(f"{self.db_file}{suffix}").unlink(missing_ok=True)
        try:
            schemas.make_schema("cinder", self.db_url(), venv=self.venv)
        except schemas.SchemaError as e:
            raise CinderError(str(e)) from None
        import sqlite3
        with sqlite3.connect(self.db_file) as db:      # three processes write it: WAL lets readers go on meanwhile
            db.execute("PRAGMA journal_mode=WAL")
        self.sync_seconds = time.monotonic() - t0

    def bus_password(self) -> str:
        if not self.bus_password_file.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.bus_password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(16) + "\n")
        return self.bus_password_file.read_text().strip()

    def add_bus_user(self, broker) -> None:
        """Cinder's vhost and user on the broker, in one rabbitmqctl call (import_definitions): the password only as
        a salted hash, in a file of mode 0600, never on a command line."""
        defs = self.state_dir / "bus-definitions.json"
        defs.unlink(missing_ok=True)
        fd = os.open(defs, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(bus_definitions(VHOST, BUS_USER, self.bus_password()), f)
        try:
            done = broker.ctl("import_definitions", str(defs))
        finally:
            defs.unlink(missing_ok=True)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
            raise CinderError(f"rabbitmqctl import_definitions (cinder's vhost and user) failed: {said[-1]}")
        why = broker.check(user=BUS_USER, password=self.bus_password(), vhost=VHOST)
        if why:
            raise CinderError(f"cinder's broker login fails: {why}")

    def transport_url(self, broker) -> str:
        """rabbit://cinder:<password>@127.0.0.1:<port>/cinder: do not print it."""
        return f"rabbit://{BUS_USER}:{urllib.parse.quote(self.bus_password(), safe='')}@127.0.0.1:{broker.port}/" \
               f"{urllib.parse.quote(VHOST, safe='')}"

    def write_conf(self, transport_url: str) -> None:
        for d in (self.volume_dir, self.state_dir / "lock", self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        text = render_conf(CONF_TEMPLATE.read_text(), host=self.host, state_dir=self.state_dir, log_dir=self.log_dir,
                           transport_url=transport_url, paste_file=self.paste_file, bind=self.bind, port=self.port,
                           db_file=self.db_file, volume_dir=self.volume_dir, report_interval=self.report_interval,
                           service_down_time=self.service_down_time, venv=self.venv)
        self.conf_file.unlink(missing_ok=True)
        fd = os.open(self.conf_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        original = self.venv / "etc" / "cinder" / "api-paste.ini"
        try:
            self.paste_file.write_text(paste_ini(original.read_text()))
        except OSError as e:
            raise CinderError(f"cinder's api-paste.ini: {e} (is cinder in {self.venv}?)") from None

    # -- processes ------------------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = str(BOX_DIR)              # labdriver, labauth
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def launch(self, service: str) -> int:
        """Start one service (not waiting for it); its pid. A running one is kept."""
        import subprocess
        if service not in SERVICES:
            raise CinderError(f"unknown cinder service {service!r}: one of {', '.join(SERVICES)}")
        if (pid := self.pid(service)) is not None:
            return pid
        if not os.access(self.venv / "bin" / f"cinder-{service}", os.X_OK):
            raise CinderError(f"cinder is not installed in {self.venv} (python -m tests.lab.nova_env)")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(self.venv / "bin" / "python"), str(BOX_DIR / "run.py"), f"cinder-{service}",
                "--config-file", str(self.conf_file), "--log-file", str(self.log_dir / f"cinder-{service}.log")]
        with open(self.log_dir / f"cinder-{service}.stdout", "ab") as out:
            proc = subprocess.Popen(argv, cwd=self.state_dir,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self._env(),
                                    start_new_session=True)
        self._procs[service] = proc
        self._pid_file(service).write_text(f"{proc.pid}\n")
        return proc.pid

    def start(self, timeout: float = START_TIMEOUT) -> "Cinder":
        """The three services, ready: the API answers and the scheduler knows the lab backend's pool (a volume can
        be created). On failure everything started is stopped again.

        The scheduler starts once cinder-volume's RPC server runs (its first heartbeat is after it): a starting
        scheduler asks the volume services for their capabilities once, and one not listening yet answers only at
        its next periodic report, a minute later (seen in the lab: the first volume then fails, no valid backend)."""
        t0 = time.monotonic()
        limit = t0 + timeout
        try:
            self.launch("api")
            self.launch("volume")
            self._wait_heartbeat("volume", limit)
            self.launch("scheduler")
            self.wait_ready(limit)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def start_service(self, service: str, timeout: float = 30.0) -> float:
        """(Re)start one service and wait until cinder says it is up; seconds it took."""
        t0 = time.monotonic()
        self.launch(service)
        if service == "api":
            self.wait_ready(t0 + timeout)
        else:
            self.wait_service(service, True, timeout)
        return time.monotonic() - t0

    def wait_ready(self, limit: float) -> None:
        while True:
            self._check_running()
            try:
                pools = self.api("GET", f"/{PROJECT}/scheduler-stats/get_pools", timeout=2)["pools"]
                if any(p["name"].startswith(self.backend_host) for p in pools):
                    return
            except (CinderError, OSError, KeyError, ValueError):
                pass
            if time.monotonic() > limit:
                raise CinderError(f"cinder not ready (no {self.backend_host} pool in the scheduler) within the "
                                  f"start timeout; logs in {self.log_dir}")
            time.sleep(0.1)

    def _wait_heartbeat(self, service: str, limit: float) -> None:
        """Until os-services shows a heartbeat of cinder-<service> (a fresh database: its first one)."""
        while True:
            self._check_running()
            with contextlib.suppress(CinderError, OSError, KeyError, ValueError):
                if any(s["binary"] == f"cinder-{service}" and s.get("updated_at") for s in self.services()):
                    return
            if time.monotonic() > limit:
                raise CinderError(f"no heartbeat of cinder-{service} within the start timeout; logs in "
                                  f"{self.log_dir}")
            time.sleep(0.1)

    def _check_running(self) -> None:
        for service in SERVICES:
            proc = self._procs.get(service)
            if proc is not None and proc.poll() is not None:
                raise CinderError(f"cinder-{service} exited during start-up (status {proc.returncode}): "
                                  f"{_tail(self.log_dir / f'cinder-{service}.stdout')}")

    def services(self) -> list[dict]:
        """os-services: binary, host, state (up/down, by heartbeat), status (enabled/disabled), updated_at.
        Microversion 3.0: from 3.49 on, cinder-api asks the scheduler for each backend's state (an RPC call that
        waits a minute while no scheduler runs)."""
        return self.api("GET", f"/{PROJECT}/os-services", microversion="3.0", timeout=5)["services"]

    def wait_service(self, service: str, up: bool, timeout: float = 30.0) -> None:
        """Until os-services shows cinder-<service> up (or down: its heartbeat older than service_down_time)."""
        limit = time.monotonic() + timeout
        want = "up" if up else "down"
        state = None
        while time.monotonic() < limit:
            with contextlib.suppress(CinderError, OSError):
                states = [s["state"] for s in self.services() if s["binary"] == f"cinder-{service}"]
                state = states[0] if states else None
                if state == want:
                    return
            time.sleep(0.2)
        raise CinderError(f"cinder-{service} not {want} within {timeout:g}s (os-services says {state})")

    def kill_service(self, service: str) -> bool:
        """A crash: SIGKILL the service's whole process group (its workers too); False if it was not running."""
        pid = self.pid(service)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self._wait_group(pid, 5.0)
        self._pid_file(service).unlink(missing_ok=True)
        return True

    def stop_service(self, service: str, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to the process group, SIGKILL what is left after `timeout`."""
        self._stop({service}, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """cinder-volume (with the API) first: a scheduler stopped before it makes its stop take > 10 s."""
        self._stop({"volume", "api"}, timeout)
        self._stop({"scheduler"}, timeout)

    def _stop(self, services: set[str], timeout: float) -> None:
        groups = {s: p for s in services if (p := self.pid(s)) is not None}
        for pgid in groups.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        limit = time.monotonic() + timeout
        stuck = []
        for service, pgid in groups.items():
            if not self._wait_group(pgid, max(0.0, limit - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                if not self._wait_group(pgid, 5.0):
                    stuck.append(f"cinder-{service} (process group {pgid}) still there after SIGKILL")
        for service in services:
            self._pid_file(service).unlink(missing_ok=True)
        if stuck:
            raise CinderError("; ".join(stuck))

    @staticmethod
    def _wait_group(pgid: int, timeout: float) -> bool:
        limit = time.monotonic() + timeout
        while _group(pgid):
            if time.monotonic() > limit:
                return False
            time.sleep(0.05)
        with contextlib.suppress(ChildProcessError, OSError):      # reap our own children (the leader)
            while os.waitpid(-pgid, os.WNOHANG)[0]:
                pass
        return True

    def status_line(self) -> str:
        pids = self.pids()
        parts = [f"cinder-{s} {'pid ' + str(pids[s]) if s in pids else 'stopped'}" for s in SERVICES]
        line = f"cinder {self.url}: " + ", ".join(parts)
        if "api" in pids:
            try:
                states = {s["binary"]: s["state"] for s in self.services()}
                line += "; os-services: " + ", ".join(f"{b} {st}" for b, st in sorted(states.items()))
            except (CinderError, OSError) as e:
                line += f"; API: {e}"
        return line

    # -- the API (admin, over HTTP) -------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, *, microversion: str = "3.67", timeout: float = 30.0,
            headers: dict[str, str] | None = None) -> Any:
        """One block-storage API call as the admin; the decoded JSON (None for an empty body). CinderError on an
        HTTP error, with cinder's message."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "X-Auth-Token": TOKEN, "Content-Type": "application/json", "Accept": "application/json",
            "OpenStack-API-Version": f"volume {microversion}", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise CinderError(f"cinder {method} {path}: HTTP {e.code}: {api_message(e.read())}") from None
        return json.loads(raw) if raw else None


def api_message(raw: bytes) -> str:
    """The message of an OpenStack API error body ({"badRequest": {"message": ...}}), else the raw text; one line."""
    try:
        body = json.loads(raw)
        inner = next(iter(body.values())) if isinstance(body, dict) and body else body
        return str(inner.get("message", inner) if isinstance(inner, dict) else inner)[:300]
    except (ValueError, StopIteration, AttributeError):
        return raw.decode(errors="replace").strip()[:300]


def _tail(path: pathlib.Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(log empty)"


def _main() -> int:
    """Smoke test on a throwaway broker: start, create a volume, kill/start cinder-volume, stop (timings, RSS)."""
    import shutil
    import sys
    import tempfile

    from tests.lab import rabbitmq
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="crashup-cinder-"))
    broker = rabbitmq.Broker(None)
    cinder = Cinder(tmp / "cinder", bind="127.0.0.1", port=rabbitmq.free_port())
    try:
        t0 = time.monotonic()
        cinder.sync_db()
        broker.start()
        print(f"db sync {cinder.sync_seconds:.2f}s, broker {broker.start_seconds:.2f}s")
        t1 = time.monotonic()
        cinder.prepare(broker)
        print(f"vhost/user and config {time.monotonic() - t1:.2f}s")
        cinder.start()
        print(f"cinder ready in {cinder.start_seconds:.2f}s (whole {time.monotonic() - t0:.2f}s); RSS "
              + ", ".join(f"{s} {b / 2**20:.0f} MiB" for s, b in cinder.rss_bytes().items()))
        t1 = time.monotonic()
        vol = cinder.api("POST", "/admin/volumes", {"volume": {"size": 1, "name": "smoke"}})["volume"]
        while (st := cinder.api("GET", f"/admin/volumes/{vol['id']}")["volume"]["status"]) == "creating":
            time.sleep(0.05)
        print(f"volume {vol['id']} {st} in {time.monotonic() - t1:.2f}s, file {cinder.volume_path(vol['id']).exists()}")
        t1 = time.monotonic()
        cinder.kill_service("volume")
        cinder.wait_service("volume", False)
        print(f"cinder-volume killed, down in {time.monotonic() - t1:.2f}s")
        print(f"cinder-volume back up in {cinder.start_service('volume'):.2f}s")
        t1 = time.monotonic()
        cinder.stop()
        print(f"cinder stopped in {time.monotonic() - t1:.2f}s")
    except (CinderError, rabbitmq.BrokerError) as e:
        print(f"cinder: {e}", file=sys.stderr)
        return 1
    finally:
        cinder.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
