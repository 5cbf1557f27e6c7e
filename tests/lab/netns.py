"""Lab plumbing below Pacemaker: process records and the compute nodes' namespaces.

A compute node is a network namespace (``crlab-computeN``) joined to the host bridge ``crlab0`` by a veth pair, plus
an *anchor* process: ``sleep infinity`` started through ``ip netns exec NS unshare --uts`` after it set the node's
hostname and mounted a private tmpfs on ``/run``.  The anchor holds the node's mount and UTS namespaces, so the node
keeps its hostname and its ``/run`` while its pacemaker-remoted is killed and restarted, and commands can run inside
the node (``nsenter -t ANCHOR -n -m -u``) even when no remoted is running.  ``/run`` is private because agents keep
state files there (``/run/resource-agents``): with a shared ``/run`` every node would report every resource running.
Everything else (``/etc``, ``/var/lib``, ``/tmp``) is the host's.

Processes the lab starts are recorded in RUN_DIR as JSON (pid + kernel start time + program name), and are only
signalled while /proc still shows that same start time, so a reused PID is never hit.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import time
from typing import Iterable, Sequence

from tests.lab import topology
from tests.lab.topology import Node

log = logging.getLogger("crashup.lab")

#: environment of everything the lab starts (not the caller's venv PATH, PYTHONPATH, ...)
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
NETNS_RE = re.compile(r"^crlab-compute\d+$")
VETH_RE = re.compile(r"^crlab\d+h$")


class LabError(RuntimeError):
    """A lab step failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------------------- processes

def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured; on failure raise LabError naming the command and its stderr."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        cp = subprocess.run(list(argv), timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and cp.returncode != 0:
        err = (cp.stderr or cp.stdout or "").strip()
        raise LabError(f"failed (exit {cp.returncode}): {' '.join(argv)}: {err}")
    return cp


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) from /proc/PID/stat, or None if there is no such process."""
    try:
        raw = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def proc_name(pid: int) -> str:
    """Basename of the program (from /proc/PID/exe; comm is cut at 15 characters)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        try:
            return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""


def children_of(ppid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st and st[1] == ppid:
                out.append(int(d))
    return out


def pids_named(names: Iterable[str]) -> dict[str, list[int]]:
    """Running (non-zombie) processes whose program is one of names."""
    names = set(names)
    found: dict[str, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        name = proc_name(int(d))
        st = _stat(int(d))
        if name in names and st and st[0] not in "ZX":
            found.setdefault(name, []).append(int(d))
    return found


_popen: dict[int, subprocess.Popen] = {}      # our own children, so they can be reaped


def spawn(record: str, argv: Sequence[str], *, env: dict, log_path: pathlib.Path) -> dict:
    """Start argv in a new session (like setsid), stdout/stderr appended to log_path; record it as RUN_DIR/<record>.json."""
    topology.RUN_DIR.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True, close_fds=True)
    _popen[p.pid] = p
    st = _stat(p.pid)
    rec = {"pid": p.pid, "start": st[2] if st else None, "argv": list(argv)}
    write_record(record, rec)
    return rec


def record_of(pid: int) -> dict | None:
    st = _stat(pid)
    return {"pid": pid, "start": st[2], "name": proc_name(pid)} if st else None


def write_record(name: str, rec: dict | list) -> None:
    topology.RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = topology.RUN_DIR / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(path)


def read_record(name: str):
    try:
        return json.loads((topology.RUN_DIR / f"{name}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def alive(rec: dict | None) -> bool:
    """True if the recorded process still runs (same pid *and* start time; zombies count as dead)."""
    if not rec or not rec.get("pid"):
        return False
    pid = rec["pid"]
    p = _popen.get(pid)
    if p is not None and p.poll() is not None:
        _popen.pop(pid, None)
        return False
    st = _stat(pid)
    if st is None or (rec.get("start") is not None and st[2] != rec["start"]):
        return False
    if st[0] in "ZX":
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    p = _popen.pop(pid, None)
    try:
        if p is not None:
            p.poll()
        else:
            os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def signal_rec(rec: dict | None, sig: int) -> bool:
    """Send sig to the recorded process if it is still that process; True if sent."""
    if not alive(rec):
        return False
    try:
        os.kill(rec["pid"], sig)
        return True
    except ProcessLookupError:
        return False


def wait_dead(recs: Iterable[dict | None], timeout: float) -> bool:
    recs = [r for r in recs if r]
    deadline = time.monotonic() + timeout
    while True:
        if not any(alive(r) for r in recs):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_recs(recs: Iterable[dict | None], timeout: float, sig: int = signal.SIGTERM) -> None:
    """sig, wait up to timeout, then SIGKILL what is left (and reap it)."""
    recs = [r for r in recs if alive(r)]
    for r in recs:
        signal_rec(r, sig)
    if not wait_dead(recs, timeout):
        for r in recs:
            if signal_rec(r, signal.SIGKILL):
                log.warning("SIGKILL %s (pid %s): did not stop within %ss", r.get("name") or r.get("argv"),
                            r["pid"], timeout)
        wait_dead(recs, 5)
    for r in recs:
        _reap(r["pid"])


# -------------------------------------------------------------------------------------------------------- the network

def _links() -> set[str]:
    cp = run(["ip", "-o", "link", "show"], check=False)
    return {line.split(":")[1].strip().split("@")[0] for line in cp.stdout.splitlines() if ":" in line}


def netns_list() -> list[str]:
    cp = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def ensure_bridge() -> None:
    if topology.BRIDGE not in _links():
        run(["ip", "link", "add", topology.BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{topology.BRIDGE_ADDR}/{topology.PREFIX}", "dev", topology.BRIDGE])
    run(["ip", "link", "set", topology.BRIDGE, "up"])


def ensure_netns(node: Node) -> None:
    """Namespace, veth pair on the bridge, address, default route (each step skipped when already done)."""
    ensure_bridge()
    if node.netns not in netns_list():
        run(["ip", "netns", "add", node.netns])
    links = _links()
    if node.veth_host not in links:
        run(["ip", "link", "add", node.veth_host, "type", "veth", "peer", "name", node.veth_node,
             "netns", node.netns])
    run(["ip", "link", "set", node.veth_host, "master", topology.BRIDGE, "up"])
    ns = ["ip", "-n", node.netns]
    addr = f"{node.address}/{topology.PREFIX}"
    if addr not in run(ns + ["-o", "addr", "show", "dev", node.veth_node]).stdout:
        run(ns + ["addr", "add", addr, "dev", node.veth_node])
    run(ns + ["link", "set", "lo", "up"])
    set_link(node, True)


def set_link(node: Node, up: bool) -> None:
    """The node's own end of its veth, inside its namespace: down = its network silently gone (no RST, no FIN).
    Taking a link down drops its routes, so up re-adds the default route."""
    ns = ["ip", "-n", node.netns]
    run(ns + ["link", "set", "dev", node.veth_node, "up" if up else "down"])
    if up:
        run(ns + ["route", "replace", "default", "via", topology.BRIDGE_ADDR, "dev", node.veth_node])


def link_is_up(node: Node) -> bool:
    cp = run(["ip", "-n", node.netns, "-o", "link", "show", "dev", node.veth_node], check=False)
    return cp.returncode == 0 and ",UP" in cp.stdout.split(">")[0]


def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on port in the network namespace of pid (read from /proc/PID/net)."""
    hexport = f":{port:04X}"
    for f in ("tcp", "tcp6"):
        try:
            lines = pathlib.Path(f"/proc/{pid}/net/{f}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[1].endswith(hexport) and parts[3] == "0A":
                return True
    return False


# --------------------------------------------------------------------------------------------------------- the shell

def anchor_record(node: Node) -> str:
    return f"anchor-{node.name}"


def ensure_anchor(node: Node) -> dict:
    """The process holding the node's UTS (hostname) and mount (private /run) namespaces; started once."""
    rec = read_record(anchor_record(node))
    if alive(rec):
        return rec
    setup = (f"hostname {node.name} && mount -t tmpfs -o mode=755 crlab-run /run && {_RUN_LAYOUT}"
             " && exec sleep infinity")
    rec = spawn(anchor_record(node), ["ip", "netns", "exec", node.netns, "unshare", "--uts", "sh", "-ec", setup],
                env=BASE_ENV, log_path=topology.LOG_DIR / f"anchor-{node.name}.log")
    deadline = time.monotonic() + 10
    while True:                            # ready when the anchor has become `sleep` (setup done)
        if not alive(rec):
            raise LabError(f"{node.name}: namespace setup failed, see {topology.LOG_DIR}/anchor-{node.name}.log")
        if proc_name(rec["pid"]) == "sleep":
            return rec
        if time.monotonic() > deadline:
            raise LabError(f"{node.name}: namespace setup did not finish in 10s")
        time.sleep(0.01)


#: what a booted node's /run holds that pacemaker-remoted and the agents expect
_RUN_LAYOUT = ("mkdir -p /run/resource-agents /run/crm /run/lock /run/pacemaker"
               " && chown hacluster:haclient /run/crm && chmod 750 /run/crm")


def fresh_run(node: Node) -> None:
    """Replace the node's /run by an empty tmpfs (what a reboot does)."""
    run(nsenter_argv(node, ["sh", "-ec", f"umount -l /run; mount -t tmpfs -o mode=755 crlab-run /run && {_RUN_LAYOUT}"]))


def kill_in_node(node: Node, marker: bytes) -> list[int]:
    """SIGKILL the processes inside the node (its network namespace) whose command line holds `marker`: what a
    crash does to the daemons Pacemaker's agents started there (they run in sessions of their own: killing
    pacemaker-remoted leaves them running). The pids killed."""
    rec = read_record(anchor_record(node))
    if not alive(rec):
        return []
    try:
        netns = os.readlink(f"/proc/{rec['pid']}/ns/net")
    except OSError:
        return []
    killed = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == rec["pid"]:
            continue
        try:
            if (os.readlink(f"/proc/{d}/ns/net") != netns
                    or marker not in pathlib.Path(f"/proc/{d}/cmdline").read_bytes()):
                continue
            os.kill(int(d), signal.SIGKILL)
            killed.append(int(d))
        except OSError:
            continue
    return killed


def nsenter_argv(node: Node, argv: Sequence[str]) -> list[str]:
    rec = read_record(anchor_record(node))
    if not alive(rec):
        raise LabError(f"{node.name} is not set up (no namespace anchor): call add_node first")
    return ["nsenter", "-t", str(rec["pid"]), "-n", "-m", "-u", "--", *argv]


def run_in_node(node: Node, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    """Run argv inside the node (its netns, hostname and /run). subprocess.run keywords pass through; defaults:
    capture_output=True, text=True, timeout=60, check=False, env = the lab's clean environment."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    kw.setdefault("env", dict(BASE_ENV))
    return subprocess.run(nsenter_argv(node, argv), **kw)


# ----------------------------------------------------------------------------------------------------------- cleanup

def teardown_network() -> None:
    """Kill every process inside the lab's namespaces, then delete namespaces, veths and the bridge."""
    spaces = [ns for ns in netns_list() if NETNS_RE.match(ns)]
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        pids = set()
        for ns in spaces:                  # everything in a lab namespace is the lab's by construction
            cp = run(["ip", "netns", "pids", ns], check=False)
            pids |= {int(p) for p in cp.stdout.split() if p.isdigit()}
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        recs = [record_of(p) for p in pids]
        wait_dead(recs, grace)
        for pid in pids:
            _reap(pid)
    for ns in spaces:
        run(["ip", "netns", "del", ns], check=False)
    for link in _links():
        if VETH_RE.match(link) or link == topology.BRIDGE:
            run(["ip", "link", "del", link], check=False)
