"""A throwaway RabbitMQ broker for the lab and for tests: Debian's rabbitmq-server, no systemd, nothing in /etc.

Standard library only (the health check speaks AMQP 0-9-1 itself).  Everything lives under one state directory: a
private HOME with its .erlang.cookie (mode 400, rabbitmqctl reads the same), rabbitmq.conf (mode 600: it holds the
first boot's default_pass), the mnesia database, pid files.  The broker is on loopback only: AMQP on
127.0.0.1:PORT, Erlang distribution on 127.0.0.1:DIST_PORT (`-kernel inet_dist_use_interface`), and an epmd of its
own on 127.0.0.1:EPMD_PORT, run in the foreground so its pid is known (`-start_epmd false`: the broker never
spawns a daemon epmd of its own).  rabbitmqctl's own node also listens on loopback only.

    broker = Broker(state_dir, port=5673)     # port 0 (the default): a free port, kept across restarts
    broker.start()                            # ready when `rabbitmqctl wait PIDFILE` says so and a login works
    broker.url()                              # amqp://crashup:<password>@127.0.0.1:5673/crashup  (do not print it)
    broker.freeze(); broker.thaw()            # SIGSTOP / SIGCONT the broker (connections hang, then resume)
    broker.kill(); broker.start()             # a crash (SIGKILL; clients see resets and refusals), a restart
    broker.stop()                             # graceful, bounded; SIGKILL after that; epmd too; no port left

Broker(None) makes a temporary state directory that stop() removes.  The password is random per state directory,
written to a file of mode 600 (never to a command line) and shown as *** by repr() and errors.  The vhost and user
are made by the first boot from rabbitmq.conf's default_vhost / default_user / default_pass (no `guest` user, no
`/` vhost).  A later Broker(state_dir) (another process) attaches to the same broker: ports and names are kept in
broker.json.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import string
import struct
import subprocess
import tempfile
import time
import urllib.parse

from tests.lab import procs

HOST = "127.0.0.1"
USER = "crashup"
VHOST = "crashup"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CTL_TIMEOUT = 30.0
EPMD = "/usr/bin/epmd"
#: Erlang argv for the server and for rabbitmqctl's node: distribution on loopback, no epmd of their own
ERL_LOOPBACK = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"


class BrokerError(RuntimeError):
    """One line: what failed and why."""


def sbin() -> pathlib.Path | None:
    """The folder of the server scripts (`rabbitmq-server` there runs as the caller; /usr/sbin's switches user)."""
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return pathlib.Path(found[-1]).parent if found else None


def available() -> str | None:
    """None when a broker can be started here, else why not (a skip reason)."""
    if sbin() is None:
        return "RabbitMQ not installed (Debian package rabbitmq-server)"
    if not os.access(EPMD, os.X_OK):
        return f"{EPMD} missing (Debian package erlang-base)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """Something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def epmd_answers(port: int, timeout: float = 0.5) -> bool:
    """An epmd on HOST:port answers a NAMES request (a bare connect would make it log a partial packet)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"\x00\x01n")                       # length 1, NAMES_REQ
            return len(s.recv(4)) == 4                     # its own port number, then the registered names
    except OSError:
        return False



def _state_letter(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "?"


def _cmdline(pid: int) -> bytes:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _has_threads(pid: int) -> bool:
    """pid still runs, or is a zombie some of whose threads still run (and hold its files)."""
    state = _state_letter(pid)
    if state == "?":
        return False
    if state != "Z":
        return True
    try:
        return any(_state_letter_task(pid, t.name) not in ("?", "Z", "X") for t in pathlib.Path(f"/proc/{pid}/task")
                   .iterdir())
    except OSError:
        return False


def _state_letter_task(pid: int, tid: str) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "?"


def _read_pid(path: pathlib.Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _write_private(path: pathlib.Path, text: str, mode: int = 0o600) -> None:
    """Write text to a file created with `mode` from the start (no window where another user could read it)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _wait_gone(pids: list[int], needles: list[bytes], timeout: float) -> bool:
    limit = time.monotonic() + timeout
    while any(procs.alive(p, n) for p, n in zip(pids, needles)):
        if time.monotonic() > limit:
            return False
        time.sleep(0.05)
    return True



class Broker:
    """One RabbitMQ node with a vhost and a user of its own, on loopback ports of its own."""

    def __init__(self, state_dir: str | os.PathLike | None = None, port: int = 0, *, dist_port: int = 0,
                 epmd_port: int = 0, nodename: str = "crashup-bus@localhost", vhost: str = VHOST, user: str = USER,
                 log_dir: str | os.PathLike | None = None, also_listen: tuple[str, ...] = ()):
        self._owned = state_dir is None
        self.state_dir = pathlib.Path(state_dir or tempfile.mkdtemp(prefix="crashup-rabbitmq-")).resolve()
        saved = self._saved()
        self.port = port or saved.get("port", 0)
        self.dist_port = dist_port or saved.get("dist_port", 0)
        self.epmd_port = epmd_port or saved.get("epmd_port", 0)
        self.nodename = saved.get("nodename", nodename)
        self.vhost = saved.get("vhost", vhost)
        self.user = saved.get("user", user)
        #: addresses AMQP listens on besides HOST, same port (the lab's bridge, for processes on compute nodes)
        self.also_listen = tuple(also_listen or saved.get("also_listen", ()))
        self.log_dir = pathlib.Path(log_dir) if log_dir else self.state_dir / "log"
        self.home = self.state_dir / "home"
        self.conf_file = self.state_dir / "rabbitmq.conf"
        self.password_file = self.state_dir / "password"
        self.pid_file = self.state_dir / "rabbit.pid"          # the Erlang VM's pid, written by RabbitMQ
        self.server_pid_file = self.state_dir / "server.pid"   # the rabbitmq-server script (its process group)
        self.epmd_pid_file = self.state_dir / "epmd.pid"
        self.start_seconds = 0.0
        self.stop_seconds = 0.0
        self._server_proc: subprocess.Popen | None = None     # our children, when this object started them
        self._epmd_proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return (f"Broker({self.nodename} on {HOST}:{self.port}, vhost={self.vhost}, user={self.user}, password=***, "
                f"state_dir={self.state_dir})")

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what it is ----------------------------------------------------------------------------------------------
    def _saved(self) -> dict:
        try:
            return json.loads((self.state_dir / "broker.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except OSError:
            raise BrokerError(f"no broker password in {self.password_file} (never started?)") from None

    def url(self, scheme: str = "amqp", host: str = HOST) -> str:
        """The broker's URL with the user's password: do not print it. A vhost's '/' is written %2F."""
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"{scheme}://{self.user}:{urllib.parse.quote(self.password, safe='')}@{host}:{self.port}/{vhost}"

    def transport_url(self) -> str:
        """The oslo.messaging transport URL (rabbit://...), as crashup's `transport_url_file` holds it."""
        return self.url("rabbit")

    def write_url_file(self, path: str | os.PathLike, scheme: str = "rabbit", host: str = HOST) -> pathlib.Path:
        """The URL in a file of mode 600 (e.g. crashup's transport_url_file)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(path, self.url(scheme, host) + "\n")
        return path

    @property
    def ports(self) -> dict[str, int]:
        return {"amqp": self.port, "dist": self.dist_port, "epmd": self.epmd_port}

    def pids(self) -> dict[str, int]:
        """The live processes: server (the script's shell), beam (the Erlang VM), epmd."""
        found = {"server": _read_pid(self.server_pid_file), "beam": _read_pid(self.pid_file),
                 "epmd": _read_pid(self.epmd_pid_file)}
        needles = {"server": b"rabbitmq-server", "beam": b"beam", "epmd": b"epmd"}
        return {k: p for k, p in found.items() if procs.alive(p, needles[k])}

    def state(self) -> str:
        """'running', 'frozen' (SIGSTOPped), 'starting' (no pid file yet) or 'stopped', as the processes are (see
        check() for AMQP's view)."""
        pids = self.pids()
        beam = pids.get("beam")
        if beam is None:
            return "starting" if "server" in pids else "stopped"
        return "frozen" if _state_letter(beam) in ("T", "t") else "running"

    def rss_bytes(self) -> int:
        """Resident memory of the broker's processes (the VM and what it started) and its epmd."""
        pids = set(self._processes()) | set(self.pids().values())
        return sum(procs.rss(p) for p in pids)

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        """The broker's and rabbitmqctl's environment: nothing inherited; every path under state_dir or log_dir."""
        s = self.state_dir
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_NODENAME": self.nodename, "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.conf_file), "RABBITMQ_CONF_ENV_FILE": str(s / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(s / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(s / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(s / "mnesia"), "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_LOG_BASE": str(self.log_dir), "RABBITMQ_LOGS": str(self.log_dir / "rabbit.log"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_LOOPBACK,
            # rabbitmqctl's own Erlang node: loopback, any free port (0..0: the kernel picks one)
            "RABBITMQ_CTL_ERL_ARGS": ERL_LOOPBACK, "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
        }
        if self.also_listen:                             # the configuration's listeners (prepare) rule then
            del env["RABBITMQ_NODE_IP_ADDRESS"], env["RABBITMQ_NODE_PORT"]
        return env

    def prepare(self) -> None:
        """The state directory, ports (free ones where 0), cookie, password and configuration; idempotent. start()
        does it; call it first to know url() before the broker runs."""
        for d in (self.state_dir, self.home, self.state_dir / "mnesia"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            d.chmod(0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("port", "dist_port", "epmd_port"):
            if not getattr(self, name):
                setattr(self, name, free_port())
        (self.state_dir / "broker.json").write_text(json.dumps(
            {"port": self.port, "dist_port": self.dist_port, "epmd_port": self.epmd_port,
             "nodename": self.nodename, "vhost": self.vhost, "user": self.user,
             **({"also_listen": list(self.also_listen)} if self.also_listen else {})}) + "\n")
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            _write_private(cookie, "".join(secrets.choice(string.ascii_uppercase) for _ in range(32)), 0o400)
        if not self.password_file.exists():
            _write_private(self.password_file, secrets.token_hex(16) + "\n")      # hex: nothing to escape
        password = self.password
        if any(c in self.vhost + self.user for c in "\n\r#") or not self.vhost or not self.user:
            raise BrokerError(f"bad vhost or user name: {self.vhost!r}, {self.user!r}")
        # default_* make the vhost and user on the first boot only (an empty database); later boots ignore them
        _write_private(self.conf_file, "\n".join([
            "# written by tests/lab/rabbitmq.py: a throwaway broker",
            f"default_vhost = {self.vhost}", f"default_user = {self.user}", f"default_pass = {password}",
            "default_permissions.configure = .*", "default_permissions.read = .*", "default_permissions.write = .*",
            "log.console = false", "log.file.level = info",
            # more than one address: listeners here (RABBITMQ_NODE_IP_ADDRESS, one address, is then left out)
            *(f"listeners.tcp.{i} = {a}:{self.port}" for i, a in enumerate((HOST, *self.also_listen), 1)
              if self.also_listen), ""]))
        (self.state_dir / "rabbitmq-env.conf").write_text("# empty: /etc/rabbitmq/rabbitmq-env.conf is not read\n")
        (self.state_dir / "enabled_plugins").write_text("[].\n")

    def _start_epmd(self, timeout: float = 5.0) -> None:
        if "epmd" in self.pids():
            return
        if port_in_use(self.epmd_port):
            raise BrokerError(f"port {self.epmd_port} (epmd) is already in use by something else")
        log = open(self.log_dir / "epmd.log", "ab")
        proc = subprocess.Popen([EPMD, "-port", str(self.epmd_port), "-address", HOST], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, env=self._env())
        log.close()
        self._epmd_proc = proc
        self.epmd_pid_file.write_text(f"{proc.pid}\n")
        limit = time.monotonic() + timeout
        while not epmd_answers(self.epmd_port):
            if proc.poll() is not None or time.monotonic() > limit:
                raise BrokerError(f"epmd did not listen on {HOST}:{self.epmd_port} within {timeout:g}s "
                                  f"(see {self.log_dir / 'epmd.log'})")
            time.sleep(0.02)

    def start(self, timeout: float = START_TIMEOUT) -> "Broker":
        """Start the broker (and its epmd) and wait until it is ready; a frozen one is thawed, a running one kept."""
        why = available()
        if why:
            raise BrokerError(why)
        state = self.state()
        if state == "starting":
            raise BrokerError(f"the broker is already starting (pid {self.pids()['server']})")
        if state == "frozen":
            self.thaw()
        if state != "stopped":
            return self
        t0 = time.monotonic()
        try:
            self.prepare()
            for name, port in (("AMQP", self.port), ("distribution", self.dist_port)):
                if port_in_use(port):
                    raise BrokerError(f"port {port} ({name}) is already in use: another broker? "
                                      f"(`ss -ltnp 'sport = :{port}'`)")
            self._start_epmd()
            self._launch(timeout)
        except BaseException:
            self.stop(keep_dir=True)
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _launch(self, timeout: float) -> None:
        self.pid_file.unlink(missing_ok=True)
        out = open(self.log_dir / "server.stdout", "ab")
        server = subprocess.Popen([str(sbin() / "rabbitmq-server")], cwd=self.state_dir, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=out, start_new_session=True, env=self._env())
        out.close()
        self._server_proc = server
        self.server_pid_file.write_text(f"{server.pid}\n")
        limit = time.monotonic() + timeout
        # `rabbitmqctl wait PIDFILE`: waits for the pid file, then for the node's boot to finish
        waiter = subprocess.Popen([str(sbin() / "rabbitmqctl"), "wait", "--timeout", str(int(timeout)),
                                   str(self.pid_file)], cwd=self.state_dir, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self._env())
        try:
            while waiter.poll() is None:
                if server.poll() is not None:
                    raise BrokerError(f"rabbitmq-server exited during start-up (exit {server.returncode}): "
                                      f"{self.log_tail()}")
                if time.monotonic() > limit:
                    raise BrokerError(f"RabbitMQ not ready after {timeout:g}s: {self.log_tail()}")
                time.sleep(0.05)
            if waiter.returncode != 0:
                said = (waiter.stdout.read().decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
                raise BrokerError(f"`rabbitmqctl wait` failed (exit {waiter.returncode}): {said}")
        finally:
            if waiter.poll() is None:
                waiter.kill()
            waiter.wait()
            waiter.stdout.close()
        why = self.check(timeout=max(1.0, min(10.0, limit - time.monotonic())))
        if why:
            raise BrokerError(f"RabbitMQ started but the {self.user} login fails: {why}")

    def log_tail(self, lines: int = 1) -> str:
        for path in (self.log_dir / "rabbit.log", self.log_dir / "server.stdout"):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            useful = [ln.strip() for ln in text if "[error]" in ln or "ERROR" in ln] or [ln.strip() for ln in text]
            if useful:
                return " | ".join(useful[-lines:])
        return "(no broker log)"

    def freeze(self) -> None:
        """SIGSTOP the Erlang VM: TCP connects still complete (the kernel's backlog), nothing answers."""
        beam = self.pids().get("beam")
        if beam is None:
            raise BrokerError("the broker is not running: nothing to freeze")
        os.kill(beam, signal.SIGSTOP)

    def thaw(self) -> None:
        beam = self.pids().get("beam")
        if beam is None:
            raise BrokerError("the broker is not running: nothing to thaw")
        os.kill(beam, signal.SIGCONT)

    def _processes(self) -> dict[int, bytes]:
        """The broker's live processes with their command lines: the script's shell, the VM and everything the VM
        started (erl_child_setup and its port programs run in sessions of their own, so they are found by parent)."""
        pids = self.pids()
        roots = [p for k, p in pids.items() if k != "epmd"]
        mine = b"\0-home\0" + str(self.home).encode() + b"\0"     # a VM of this state directory whose pid file is lost
        children: dict[int, list[int]] = {}
        for proc in pathlib.Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(pathlib.Path(proc, "stat").read_text().rsplit(")", 1)[-1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
                if int(proc.name) not in roots and mine in _cmdline(int(proc.name)) and \
                        _state_letter(int(proc.name)) != "Z":
                    roots.append(int(proc.name))
        found = {p: _cmdline(p) for p in roots}
        todo = list(roots)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found and _state_letter(child) != "Z":
                    found[child] = _cmdline(child)
                    todo.append(child)
        return found

    def _kill_all(self, processes: dict[int, bytes]) -> None:
        for pid, cmdline in processes.items():
            if _state_letter(pid) not in ("?", "Z") and _cmdline(pid) == cmdline:     # not a recycled pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _settle(self, processes: dict[int, bytes], timeout: float = 5.0) -> None:
        """Until those processes are gone (reaped, or zombies whose every thread ended) and the AMQP and distribution
        ports listen no more. A multi-threaded VM shows 'Z' while its other threads still hold its sockets."""
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            for proc in (self._server_proc, self._epmd_proc):
                if proc is not None:
                    proc.poll()                                  # reap our own children
            busy = [p for p in processes if _has_threads(p)]
            if not busy and not any(port_in_use(p) for p in (self.port, self.dist_port) if p):
                return
            time.sleep(0.02)
        raise BrokerError(f"the broker's processes or ports are still there {timeout:g}s after SIGKILL")

    def kill(self) -> None:
        """A crash: SIGKILL the VM and what it started (clients see resets, then refusals). epmd stays."""
        processes = self._processes()
        server = self.pids().get("server")
        self._kill_all({p: c for p, c in processes.items() if p != server})
        # the script's shell reaps the VM and ends by itself; a shell that does not is killed too
        if server and not _wait_gone([server], [b"rabbitmq-server"], 2.0):
            self._kill_all({server: processes[server]})
        self._settle(processes)
        self.pid_file.unlink(missing_ok=True)
        self.server_pid_file.unlink(missing_ok=True)
        self._server_proc = None

    def stop(self, timeout: float = STOP_TIMEOUT, keep_dir: bool = False) -> None:
        """Graceful stop (SIGTERM: the VM shuts RabbitMQ down), SIGKILL after `timeout`; then epmd; none of its
        processes or ports left. Safe to call twice, and on a broker never started. A temporary state directory
        (Broker(None)) is removed unless keep_dir."""
        t0 = time.monotonic()
        pids = self.pids()
        beam, server = pids.get("beam"), pids.get("server")
        processes = self._processes()                           # before the VM's children lose their parent
        for pid in (beam, server):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)                # a frozen VM handles SIGTERM only once it runs again
                    os.kill(pid, signal.SIGTERM)
                break
        waited = [(p, n) for p, n in ((server, b"rabbitmq-server"), (beam, b"beam")) if p]
        _wait_gone([p for p, _ in waited], [n for _, n in waited], timeout)
        self._kill_all(processes)                               # what did not end in time, and leftovers
        try:
            self._settle(processes)
        finally:
            self.pid_file.unlink(missing_ok=True)
            self.server_pid_file.unlink(missing_ok=True)
            self._server_proc = None
            self._stop_epmd()
        self.stop_seconds = time.monotonic() - t0
        if self._owned and not keep_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _stop_epmd(self) -> None:
        epmd = self.pids().get("epmd")
        if epmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(epmd, signal.SIGTERM)
            if not _wait_gone([epmd], [b"epmd"], 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(epmd, signal.SIGKILL)
        if self._epmd_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._epmd_proc.wait(5.0)
            self._epmd_proc = None
        self.epmd_pid_file.unlink(missing_ok=True)
        limit = time.monotonic() + 5.0
        while self.epmd_port and epmd_answers(self.epmd_port, 0.2) and time.monotonic() < limit:
            time.sleep(0.02)

    # -- use ---------------------------------------------------------------------------------------------------------
    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> subprocess.CompletedProcess:
        """rabbitmqctl against this node (its HOME and cookie, its epmd). Never pass a secret in args."""
        try:
            return subprocess.run([str(sbin() / "rabbitmqctl"), *args], cwd=self.state_dir, env=self._env(),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"rabbitmqctl {' '.join(args)} did not finish within {timeout:g}s") from None

    def check(self, timeout: float = 3.0, *, user: str | None = None, password: str | None = None,
              vhost: str | None = None) -> str | None:
        """A health check that publishes nothing: an AMQP 0-9-1 login and vhost open, then a clean close.
        None when it works, else why not in a few words ('connection refused', 'no answer within 3s',
        'ACCESS_REFUSED ...', 'NOT_ALLOWED ...')."""
        return amqp_login(HOST, self.port, user or self.user, self.password if password is None else password,
                          self.vhost if vhost is None else vhost, timeout)

    def status_line(self) -> str:
        state = self.state()
        line = f"{self.nodename} on {HOST}:{self.port} (dist {self.dist_port}, epmd {self.epmd_port}), " \
               f"vhost {self.vhost}: {state}"
        if state == "running":
            why = self.check(timeout=2.0)
            line += ", AMQP login ok" if why is None else f", AMQP login fails: {why}"
        return line


# --- a minimal AMQP 0-9-1 client: login and open a vhost, nothing else ------------------------------------------------

def _shortstr(text: str) -> bytes:
    data = text.encode()
    return struct.pack("B", len(data)) + data


def _longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _method(class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"


def _read_method(sock: socket.socket) -> tuple[int, int, bytes]:
    """The next method frame (heartbeats skipped): (class, method, arguments)."""
    while True:
        header = _recv_exact(sock, 7)
        kind, _channel, size = struct.unpack(">BHI", header)
        payload = _recv_exact(sock, size + 1)[:-1]
        if kind == 1:
            class_id, method_id = struct.unpack(">HH", payload[:4])
            return class_id, method_id, payload[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the broker closed the connection")
        data += chunk
    return data


def _close_reason(args: bytes) -> str:
    code = struct.unpack(">H", args[:2])[0]
    text = args[3:3 + args[2]].decode(errors="replace")
    return f"{code} {text}"


def amqp_login(host: str, port: int, user: str, password: str, vhost: str, timeout: float = 3.0) -> str | None:
    """Connection.Start/Start-Ok (PLAIN)/Tune/Tune-Ok/Open/Open-Ok/Close: None if all of it works within timeout."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            limit = time.monotonic() + timeout
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            cls, meth, _ = _read_method(sock)
            if (cls, meth) != (10, 10):
                return f"unexpected AMQP method {cls}.{meth} instead of Connection.Start"
            # capabilities: authentication_failure_close, so a bad password gets a Connection.Close 403 with a reason
            caps = _shortstr("authentication_failure_close") + b"t\x01"
            props = _shortstr("capabilities") + b"F" + _longstr(caps) + \
                _shortstr("product") + b"S" + _longstr(b"crashup-lab-probe")
            response = b"\x00" + user.encode() + b"\x00" + password.encode()
            sock.sendall(_method(10, 11, _longstr(props) + _shortstr("PLAIN") + _longstr(response)
                                 + _shortstr("en_US")))
            cls, meth, args = _read_method(sock)
            if (cls, meth) == (10, 50):
                return _close_reason(args)
            if (cls, meth) != (10, 30):
                return f"unexpected AMQP method {cls}.{meth} instead of Connection.Tune"
            channel_max, frame_max, _heartbeat = struct.unpack(">HIH", args[:8])
            sock.sendall(_method(10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
            sock.sendall(_method(10, 40, _shortstr(vhost) + _shortstr("") + b"\x00"))
            sock.settimeout(max(0.1, limit - time.monotonic()))
            cls, meth, args = _read_method(sock)
            if (cls, meth) == (10, 50):
                return _close_reason(args)
            if (cls, meth) != (10, 41):
                return f"unexpected AMQP method {cls}.{meth} instead of Connection.Open-Ok"
            sock.sendall(_method(10, 50, struct.pack(">H", 200) + _shortstr("bye") + struct.pack(">HH", 0, 0)))
            with contextlib.suppress(OSError):
                _read_method(sock)                       # Close-Ok
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except (socket.timeout, TimeoutError):
        return f"no answer within {timeout:g}s"
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def _main() -> int:
    """Smoke test: start a throwaway broker, log in, freeze/thaw, kill/start, stop (python -m tests.lab.rabbitmq)."""
    import sys
    try:
        broker = Broker()
        broker.start()
        try:
            print(f"{broker!r}: started in {broker.start_seconds:.2f}s, RSS {broker.rss_bytes() / 2**20:.0f} MiB, "
                  f"login: {broker.check() or 'ok'}")
            broker.freeze()
            print(f"frozen: login {broker.check(timeout=1) or 'ok'}")
            broker.thaw()
            print(f"thawed: login {broker.check() or 'ok'}")
            t0 = time.monotonic()
            broker.kill()
            print(f"killed in {time.monotonic() - t0:.2f}s: login {broker.check() or 'ok'}")
            broker.start()
            print(f"started again in {broker.start_seconds:.2f}s: login {broker.check() or 'ok'}")
        finally:
            broker.stop()
        print(f"stopped in {broker.stop_seconds:.2f}s")
    except BrokerError as e:
        print(f"rabbitmq: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
