"""The lab's real Pacemaker cluster: controller ``ctl1`` (corosync + pacemakerd on 127.0.0.1) and one
pacemaker-remoted per compute node, each in its own network namespace (see tests/lab/netns.py and topology.py).

No systemd here: the daemons are started by hand in their own sessions, recorded in RUN_DIR (pid + start time) and
stopped by those records only.  One cluster per network namespace (corosync's port 5405 and Pacemaker's IPC names
are per namespace): up_controller refuses only daemons running in its own.  With several controllers
(tests/lab/controllers.py: each in its own namespaces) the cluster's tools here (status, wait_for, fence_history,
push_config's CIB read and push) run inside a live controller (`tool`), a quorate one first, or
$CRASHUP_LAB_CONTROLLER.

    install()                          packages + pacemaker-remoted extracted to CACHE_DIR
    up_controller() -> timings         corosync + pacemakerd, until ctl1 is DC
    add_node(node) -> timings          netns + hostname + private /run + pacemaker-remoted listening on 3121
    push_config([[pcs args], ...])     pcs -f on a copy of the CIB, one cib-push --config
    status() / wait_for(pred, timeout) crm_mon + fencing history as dataclasses
    down() -> timings                  everything stopped and removed but LOG_DIR and CACHE_DIR

Files outside LAB_DIR: /etc/corosync/corosync.conf (marker line; Debian's untouched default is kept in CACHE_DIR and
put back by down()), /var/lib/pacemaker/cib/* (with a marker file), /etc/pacemaker/authkey (created only if missing,
as the pacemaker package would, and kept).  Logs: LOG_DIR/corosync.log, LOG_DIR/pcmk/*.log (daemons; pcmk/ is
writable by hacluster), LOG_DIR/agents-<node>.log (ocf_log of agents run on that node, via HA_LOGFILE).
"""
from __future__ import annotations

import dataclasses
import datetime
import grp
import hashlib
import logging
import os
import pathlib
import pwd
import shutil
import signal
import tempfile
import time
from typing import Callable, Sequence

from lxml import etree

from tests.lab import netns, topology
from tests.lab.netns import (BASE_ENV, LabError, alive, children_of, ensure_anchor, ensure_netns,
                             listening, nsenter_argv, pids_named, read_record, record_of, run, run_in_node, set_link,
                             signal_rec, spawn, stop_recs, teardown_network, wait_dead, write_record)
from tests.lab.topology import Node

__all__ = ["install", "up_controller", "add_node", "start_remoted", "kill_remoted", "stop_remoted", "link",
           "remoted_running", "run_in_node", "push_config", "status", "wait_for", "down", "Status", "NodeState",
           "ResourceState", "FenceEvent", "LabError", "LabTimeout", "LabBusy", "CACHE_DIR"]

log = logging.getLogger("crashup.lab")

PACKAGES = ["pacemaker", "pacemaker-cli-utils", "pcs", "corosync", "resource-agents", "fence-agents", "crmsh",
            "iproute2"]
#: survives down(): the extracted pacemaker-remoted (and Debian's corosync.conf while the lab replaces it)
CACHE_DIR = topology.LAB_DIR / "cache"
COROSYNC_CONF = pathlib.Path("/etc/corosync/corosync.conf")
COROSYNC_ORIG = CACHE_DIR / "corosync.conf.debian"
PCMK_DIR = pathlib.Path("/var/lib/pacemaker")
CIB_DIR = PCMK_DIR / "cib"
CIB_MARKER = CIB_DIR / ".crashup-lab"
AUTHKEY = pathlib.Path("/etc/pacemaker/authkey")
MARKER = "# crashup-lab: written by tests/lab/pacemaker.py; its down() removes it"
DAEMONS = ("corosync", "pacemakerd", "pacemaker-based", "pacemaker-fenced", "pacemaker-execd", "pacemaker-attrd",
           "pacemaker-schedulerd", "pacemaker-controld", "pacemaker-remoted")
SHUTDOWN_WAIT = 90        # pacemakerd --shutdown waits for in-flight operations (e.g. a remote reconnect's start)

#: phase -> seconds of the last up_controller / add_node / down (also logged)
timings: dict[str, float] = {}


class LabTimeout(LabError):
    """A wait ran out; the message carries the last crm_mon summary."""


class LabBusy(LabError):
    """up_controller refused: daemons already run, or corosync.conf/CIB are not the lab's.  Nothing was touched."""


class _Clock:
    def __init__(self, prefix: str):
        self.prefix, self.t0, self.phases = prefix, time.monotonic(), {}

    def mark(self, phase: str) -> None:
        self.phases[phase] = round(time.monotonic() - self.t0, 3)
        timings[f"{self.prefix}.{phase}"] = self.phases[phase]
        log.info("lab %s: %s at +%.2fs", self.prefix, phase, self.phases[phase])


def _poll(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05, detail=None):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise LabTimeout(f"timed out after {timeout}s waiting for {what}" + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)


def _tail(path: pathlib.Path, n: int = 15) -> str:
    try:
        return f"--- last lines of {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


# ------------------------------------------------------------------------------------------------------------ install

def _pcmk_version() -> str:
    return run(["dpkg-query", "-W", "-f=${Version}", "pacemaker"]).stdout.strip()


def remoted_path() -> pathlib.Path:
    """The extracted pacemaker-remoted matching the installed pacemaker version."""
    return CACHE_DIR / f"pacemaker-remote_{_pcmk_version()}" / "usr/sbin/pacemaker-remoted"


def install() -> pathlib.Path:
    """Install the missing Debian packages, extract pacemaker-remoted (from the pacemaker-remote .deb, which
    Conflicts with pacemaker and so is never installed) into CACHE_DIR, make sure the remote authkey exists.
    Idempotent; ~0.1 s when everything is there.  Returns the pacemaker-remoted path."""
    clock = _Clock("install")
    cp = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *PACKAGES], check=False)
    have = {line.split()[0] for line in cp.stdout.splitlines() if line.split()[1:2] == ["ii"]}
    missing = [p for p in PACKAGES if p not in have]
    if missing:
        if os.geteuid() != 0:
            raise LabError(f"packages missing and not root: {' '.join(missing)}")
        env = dict(BASE_ENV, DEBIAN_FRONTEND="noninteractive")
        argv = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if run(argv, check=False, env=env, timeout=900).returncode != 0:
            run(["apt-get", "update"], env=env, timeout=600)
            run(argv, env=env, timeout=900)
        clock.mark("apt")
    remoted = remoted_path()
    if not remoted.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        version = _pcmk_version()
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
            run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", f"pacemaker-remote={version}"],
                cwd=tmp, timeout=300)
            deb = next(pathlib.Path(tmp).glob("pacemaker-remote_*.deb"))
            run(["dpkg-deb", "-x", str(deb), f"{tmp}/root"])
            run([f"{tmp}/root/usr/sbin/pacemaker-remoted", "--version"])   # runs with the installed libraries
            os.replace(f"{tmp}/root", remoted.parents[2])
        clock.mark("remoted_extracted")
    if not AUTHKEY.exists():                   # what pacemaker's postinst does; the shared TLS-PSK key
        AUTHKEY.parent.mkdir(parents=True, exist_ok=True)
        AUTHKEY.write_bytes(os.urandom(4096))
        os.chown(AUTHKEY, 0, grp.getgrnam("haclient").gr_gid)
        AUTHKEY.chmod(0o640)
    clock.mark("done")
    return remoted


# --------------------------------------------------------------------------------------------------------- controller

COROSYNC_CONF_TEXT = """{marker}
# One-node corosync 3 (knet) cluster on loopback for the crashup lab.
totem {{
    version: 2
    cluster_name: {cluster}
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 3000
}}
nodelist {{
    node {{
        name: {controller}
        nodeid: 1
        ring0_addr: 127.0.0.1
    }}
}}
quorum {{
    provider: corosync_votequorum
}}
logging {{
    to_stderr: no
    to_logfile: yes
    logfile: {logfile}
    to_syslog: no
    timestamp: on
    fileline: off
    debug: off
}}
"""

CIB_SEED = """<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="cib-bootstrap-options-cluster-recheck-interval" name="cluster-recheck-interval" value="1min"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""


def _debian_default_conf() -> bool:
    """Is /etc/corosync/corosync.conf the package's untouched default (md5 as recorded by dpkg)?"""
    cp = run(["dpkg-query", "-W", "-f=${Conffiles}", "corosync"], check=False)
    for line in cp.stdout.splitlines():
        parts = line.split()
        if parts[:1] == [str(COROSYNC_CONF)]:
            return hashlib.md5(COROSYNC_CONF.read_bytes()).hexdigest() == parts[1]
    return False


def _lab_wrote_conf() -> bool:
    try:
        return COROSYNC_CONF.read_text().startswith(MARKER)
    except FileNotFoundError:
        return False


def _daemon_env(node: str, logname: str) -> dict:
    return dict(BASE_ENV,
                PCMK_logfile=str(topology.LOG_DIR / "pcmk" / logname), PCMK_logfacility="none", PCMK_debug="no",
                HA_LOGFILE=str(topology.LOG_DIR / f"agents-{node}.log"),
                HA_DEBUGLOG=str(topology.LOG_DIR / f"agents-{node}.log"), HA_debug="0")


def _prepare_logs(node: str) -> None:
    """LOG_DIR/pcmk writable by the hacluster daemons; agents' log writable by root and haclient."""
    pcmk = topology.LOG_DIR / "pcmk"
    pcmk.mkdir(parents=True, exist_ok=True)
    uid, gid = pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid
    os.chown(pcmk, uid, gid)
    pcmk.chmod(0o2770)
    agents = topology.LOG_DIR / f"agents-{node}.log"
    agents.touch()
    os.chown(agents, 0, gid)
    agents.chmod(0o664)


def up_controller(timeout: float = 60, keep_cib: bool = False) -> dict[str, float]:
    """Start corosync and pacemakerd as cluster node ctl1 and wait until it is DC.  Refuses (LabError) if any
    corosync/pacemaker daemon runs or if corosync.conf or the CIB are someone else's (LabBusy, nothing touched).
    keep_cib: start from the lab's CIB as it was left (the second half of restart()), instead of a fresh seed.
    On any later failure the started parts stay up for inspection: call down().  Returns phase timings (s)."""
    clock = _Clock("controller")
    running = _here(pids_named(DAEMONS))
    if keep_cib:                       # a restart: the compute nodes' remoteds keep running, the cluster reconnects
        running.pop("pacemaker-remoted", None)
    if running:
        names = ", ".join(f"{n} (pid {' '.join(map(str, p))})" for n, p in sorted(running.items()))
        raise LabBusy(f"refusing to start: already running: {names}; a new pacemakerd would adopt stale daemons"
                       " (lab leftovers: call down())")
    if COROSYNC_CONF.exists() and not _lab_wrote_conf():
        if not _debian_default_conf():
            raise LabBusy(f"refusing to start: {COROSYNC_CONF} exists and was not written by the lab")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy2(COROSYNC_CONF, COROSYNC_ORIG)       # Debian's default: down() puts it back
    foreign = [p.name for p in CIB_DIR.glob("cib*")] if not CIB_MARKER.exists() else []
    if foreign:
        raise LabBusy(f"refusing to start: {CIB_DIR} holds a CIB the lab did not write: {' '.join(sorted(foreign))}")
    remoted = remoted_path()
    if not remoted.exists():
        raise LabError(f"{remoted} missing: call install() first")

    topology.RUN_DIR.mkdir(parents=True, exist_ok=True)
    _prepare_logs(topology.CONTROLLER)
    COROSYNC_CONF.parent.mkdir(parents=True, exist_ok=True)
    COROSYNC_CONF.write_text(COROSYNC_CONF_TEXT.format(
        marker=MARKER, cluster=topology.CLUSTER_NAME, controller=topology.CONTROLLER,
        logfile=topology.LOG_DIR / "corosync.log"))
    if not (keep_cib and CIB_MARKER.exists()):
        CIB_MARKER.write_text("the CIB files here are the crashup lab's; its down() removes them\n")
        for f in CIB_DIR.glob("cib*"):
            f.unlink()
        seed = CIB_DIR / "cib.xml"
        seed.write_text(CIB_SEED)
        hacluster, haclient = pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid
        os.chown(seed, hacluster, haclient)
        seed.chmod(0o600)
    clock.mark("files")

    coro = spawn("corosync", ["corosync", "-f"], env=BASE_ENV, log_path=topology.LOG_DIR / "corosync.stdout")

    def quorate():
        if not alive(coro):
            raise LabError("corosync exited\n" + _tail(topology.LOG_DIR / "corosync.log") + "\n"
                           + _tail(topology.LOG_DIR / "corosync.stdout"))
        return run(["corosync-quorumtool", "-s"], check=False, timeout=10).returncode == 0
    _poll(quorate, 20, "corosync to be quorate")
    clock.mark("corosync_quorate")

    pm = spawn("pacemakerd", ["pacemakerd"], env=_daemon_env(topology.CONTROLLER, "pacemaker.log"),
               log_path=topology.LOG_DIR / "pacemakerd.stdout")

    def is_dc():
        if not alive(pm):
            raise LabError("pacemakerd exited\n" + _tail(topology.LOG_DIR / "pcmk" / "pacemaker.log"))
        _record_children(pm)                      # as early as possible: down() must find them even if we fail
        try:
            st = status(fencing=False)
        except LabError:
            return False
        node = st.nodes.get(topology.CONTROLLER)
        return st.dc == topology.CONTROLLER and node is not None and node.online
    _poll(is_dc, timeout, f"{topology.CONTROLLER} to become DC", interval=0.2, detail=crm_mon_text)
    _record_children(pm)
    clock.mark("dc")
    return clock.phases


def _here(found: dict[str, list[int]]) -> dict[str, list[int]]:
    """Only the processes in this network namespace: a corosync or Pacemaker in another one (a container, the
    three-controller lab's controllers) has its own port 5405 and IPC names and is no cluster of ours."""
    mine = os.readlink("/proc/self/ns/net")

    def here(pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/net") == mine
        except OSError:
            return False
    return {name: kept for name, pids in found.items() if (kept := [p for p in pids if here(p)])}


def _record_children(pm: dict) -> None:
    old = read_record("pacemaker-children") or []
    known = {r["pid"] for r in old}
    new = [r for r in (record_of(p) for p in children_of(pm["pid"]) if p not in known) if r]
    if new:
        write_record("pacemaker-children", old + new)


# ------------------------------------------------------------------------------------------------------------- nodes

def _remoted_rec(node: Node) -> str:
    return f"remoted-{node.name}"


def add_node(node: Node, timeout: float = 15) -> dict[str, float]:
    """Bridge (once), the node's netns + veth + address + default route, its hostname and private /run, and its
    pacemaker-remoted listening on 3121.  The Pacemaker side (the ocf:pacemaker:remote resource) is push_config's."""
    clock = _Clock(node.name)
    ensure_netns(node)
    ensure_anchor(node)
    clock.mark("netns")
    start_remoted(node, timeout=timeout)
    clock.mark("remoted_listening")
    return clock.phases


def start_remoted(node: Node, fresh_run: bool = False, timeout: float = 15) -> None:
    """Start the node's pacemaker-remoted (no-op if it runs) and wait until it listens.  fresh_run=True first gives
    the node an empty /run, as a reboot would."""
    rec = read_record(_remoted_rec(node))
    if alive(rec):
        return
    if fresh_run:
        netns.fresh_run(node)
    _prepare_logs(node.name)
    remoted = remoted_path()
    rec = spawn(_remoted_rec(node), nsenter_argv(node, [str(remoted)]),
                env=_daemon_env(node.name, f"remoted-{node.name}.log"),
                log_path=topology.LOG_DIR / f"remoted-{node.name}.stdout")

    def up():
        if not alive(rec):
            raise LabError(f"{node.name}: pacemaker-remoted exited\n"
                           + _tail(topology.LOG_DIR / "pcmk" / f"remoted-{node.name}.log"))
        return listening(rec["pid"], topology.REMOTE_PORT)
    _poll(up, timeout, f"{node.name}'s pacemaker-remoted to listen on {topology.REMOTE_PORT}")


def kill_remoted(node: Node) -> bool:
    """SIGKILL the node's pacemaker-remoted (a crash: no goodbye to the cluster).  False if it was not running."""
    rec = read_record(_remoted_rec(node))
    if not signal_rec(rec, signal.SIGKILL):
        return False
    if not wait_dead([rec], 10):
        raise LabError(f"{node.name}: pacemaker-remoted pid {rec['pid']} survived SIGKILL")
    return True


def stop_remoted(node: Node, timeout: float = 60) -> None:
    """SIGTERM the node's pacemaker-remoted (SIGKILL after timeout).  remoted asks the cluster to shut it down, but
    Pacemaker 2.1.5 still takes the lost connection as a failure and fences the node (seen here); to take a node out
    without fencing, disable its connection resource first (push_config([["resource", "disable", NAME]]))."""
    stop_recs([read_record(_remoted_rec(node))], timeout)


def remoted_running(node: Node) -> bool:
    return alive(read_record(_remoted_rec(node)))


def link(node: Node, up: bool) -> None:
    """Cut (up=False) or restore the node's network: its veth end goes down inside its namespace, silently."""
    set_link(node, up)


# ------------------------------------------------------------------------------------------------------------ config

def push_config(pcs_commands: Sequence[Sequence[str]]) -> None:
    """Apply pcs commands (arguments after `pcs`; a leading "pcs" is accepted) as `crashup pcs apply` does: each on
    a copy of the live CIB with `pcs -f`, then one `pcs cluster cib-push --config`."""
    from crashup_lib import proc
    from crashup_lib.cli import apply_pcs
    commands = [list(cmd[1:] if cmd and cmd[0] == "pcs" else cmd) for cmd in pcs_commands]

    def inside(argv):                     # several controllers: the CIB is read and pushed inside a live one
        local = argv[:2] == ["pcs", "-f"]        # (pcs -f on a file is slow inside a controller: ~10 s a call)
        cp = (run if local else tool)(argv, check=False, timeout=120)
        return proc.Done(cp.returncode, cp.stdout, cp.stderr)
    several = (topology.RUN_DIR / "controllers.json").exists()
    if apply_pcs(commands, run=inside if several else None) != 0:
        raise LabError("push_config: crashup's pcs apply failed (its stderr above names the command)")


# ------------------------------------------------------------------------------------------------------------ status

@dataclasses.dataclass
class NodeState:
    name: str
    type: str               # "member" (ctl1) or "remote"
    online: bool            # usable: see Status
    crm_online: bool        # crm_mon's raw online flag
    unclean: bool
    shutdown: bool
    standby: bool
    maintenance: bool


@dataclasses.dataclass
class ResourceState:
    id: str
    agent: str              # "ocf:pacemaker:remote", "stonith:fence_dummy"; "clone"/"group"/"bundle" for containers
    role: str               # Started, Stopped, Promoted, Unpromoted, ... (an active instance's, for clones)
    active: bool
    nodes: list[str]        # where it is (instances') active
    failed: bool
    managed: bool
    blocked: bool
    pending: str | None     # task of an operation in flight ("start", "stop", ...), from crm_mon's node history
    parent: str | None      # the group/clone/bundle holding it


@dataclasses.dataclass
class FenceEvent:
    target: str
    action: str             # reboot, off, on
    state: str              # success, failed, pending
    completed: float | None # epoch seconds (whole seconds), None while pending
    delegate: str | None    # node that ran the device
    origin: str | None      # node that asked


@dataclasses.dataclass
class Status:
    """One snapshot of the cluster.

    ``online`` of a node: for ctl1 crm_mon's flag; for a remote node crm_mon's flag *and* its connection resource
    Started, not failed, with no operation in flight, the node not unclean, *and* the controller holding the
    connection (CIB node_state in_ccm="true").  crm_mon's flag alone (kept as ``crm_online``) is also true while a
    reconnect's start is still in flight (seen: "Started" for 10 s of a start that then timed out), i.e. before
    remoted answered.  A silently cut node still counts as online until the connection's monitor times out (~20 s)."""
    dc: str | None
    quorate: bool
    nodes: dict[str, NodeState]
    resources: dict[str, ResourceState]
    fencing: list[FenceEvent]
    xml: bytes = dataclasses.field(repr=False, default=b"")

    def fenced(self, target: str, since: float = 0.0) -> list[FenceEvent]:
        """Successful fencing actions against target completed at or after since (epoch seconds; the history has
        whole seconds, so since is rounded down)."""
        return [e for e in self.fencing
                if e.target == target and e.state == "success" and (e.completed or 0) >= int(since)]


def _b(el, attr: str) -> bool:
    return el.get(attr) == "true"


def _parse_resources(root) -> dict[str, ResourceState]:
    out: dict[str, ResourceState] = {}

    def leaf(el, parent):
        rid = el.get("id")
        nodes = [n.get("name") for n in el.findall("node")]
        new = ResourceState(id=rid, agent=el.get("resource_agent", ""), role=el.get("role", ""),
                            active=_b(el, "active"), nodes=nodes, failed=_b(el, "failed"),
                            managed=el.get("managed", "true") == "true", blocked=_b(el, "blocked"),
                            pending=None, parent=parent)
        old = out.get(rid)
        if old is None:
            out[rid] = new
            return new
        if new.active and not old.active:                 # another instance of a clone: merge
            old.role = new.role
        old.active |= new.active
        old.nodes += [n for n in nodes if n not in old.nodes]
        old.failed |= new.failed
        old.blocked |= new.blocked
        old.pending = old.pending or new.pending
        return old

    def walk(el, parent) -> list[ResourceState]:
        got = []
        for child in el:
            if child.tag == "resource":
                got.append(leaf(child, parent))
            elif child.tag in ("group", "clone", "bundle", "replica"):
                cid = child.get("id") if child.tag != "replica" else parent
                kids = walk(child, cid)
                got += kids
                if child.tag != "replica":
                    out[cid] = ResourceState(
                        id=cid, agent=child.tag, role=next((k.role for k in kids if k.active), "Stopped"),
                        active=any(k.active for k in kids),
                        nodes=sorted({n for k in kids for n in k.nodes}), failed=any(k.failed for k in kids),
                        managed=child.get("managed", "true") == "true", blocked=any(k.blocked for k in kids),
                        pending=next((k.pending for k in kids if k.pending), None), parent=parent)
        return got

    res = root.find("resources")
    if res is not None:
        walk(res, None)
    return out


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M:%S %z", "%a %b %d %H:%M:%S %Y"):   # 2.1.5: "... 15:20:50Z"
        try:
            return datetime.datetime.strptime(text.strip(), fmt).timestamp()
        except ValueError:
            pass
    return None


def tool(argv: Sequence[str], **kw):
    """A cluster tool (crm_mon, cibadmin, stonith_admin...) run where the cluster is: here in the one-controller lab
    (ctl1 is the host), inside a live controller when the lab has several (tests/lab/controllers.py: its STATE)."""
    if (topology.RUN_DIR / "controllers.json").exists():
        from tests.lab import controllers
        argv = [*controllers.tools_prefix(), *argv]
        kw.setdefault("env", dict(BASE_ENV))
    return run(argv, **kw)


def fence_history() -> list[FenceEvent]:
    # --verbose: without it stonith_admin lists only the latest successful action (one event in all)
    cp = tool(["stonith_admin", "--history", "*", "--verbose", "--output-as=xml"], check=False, timeout=30)
    try:
        root = etree.fromstring(cp.stdout.encode())
    except etree.XMLSyntaxError as exc:
        raise LabError(f"stonith_admin --history: no XML (exit {cp.returncode}): {cp.stderr.strip()}") from exc
    return [FenceEvent(target=e.get("target"), action=e.get("action"), state=e.get("status"),
                       completed=_parse_time(e.get("completed")), delegate=e.get("delegate"), origin=e.get("origin"))
            for e in root.iter("fence_event")]


def _pending_ops(root) -> dict[str, str]:
    """resource id -> task of an operation still in flight (crm_mon lists it with rc 193)."""
    out = {}
    for h in root.iterfind("node_history/node/resource_history"):
        for op in h.iterfind("operation_history"):
            if op.get("rc") == "193":
                out[h.get("id")] = op.get("task")
    return out


def _connected_remotes() -> set[str] | None:
    """Remote nodes whose connection the controller has established (CIB node_state in_ccm="true")."""
    cp = tool(["cibadmin", "-Q", "--scope", "status"], check=False, timeout=30)
    try:
        root = etree.fromstring(cp.stdout.encode())
    except etree.XMLSyntaxError:
        return None
    return {n.get("uname") for n in root.iterfind("node_state[@remote_node='true']") if n.get("in_ccm") == "true"}


def status(fencing: bool = True) -> Status:
    """crm_mon --output-as=xml, the CIB's node states and stonith_admin --history as a Status.  LabError if the
    cluster does not answer."""
    cp = tool(["crm_mon", "-1", "--inactive", "--output-as=xml"], check=False, timeout=30)
    try:
        root = etree.fromstring(cp.stdout.encode())
    except etree.XMLSyntaxError as exc:
        raise LabError(f"crm_mon gave no XML (exit {cp.returncode}): {cp.stderr.strip()}") from exc
    if root.find("summary") is None:
        msg = root.find("status")
        raise LabError(f"crm_mon: {msg.get('message') if msg is not None else cp.stderr.strip()}")
    dc_el = root.find("summary/current_dc")
    dc = dc_el.get("name") if dc_el is not None and _b(dc_el, "present") else None
    resources = _parse_resources(root)
    for rid, task in _pending_ops(root).items():
        res = resources.get(rid.split(":")[0])            # clone instances are "id:N" in the history
        while res is not None:
            res.pending = res.pending or task
            res = resources.get(res.parent) if res.parent else None
    connected = _connected_remotes() if root.find("nodes/node[@type='remote']") is not None else set()
    nodes = {}
    for n in root.iterfind("nodes/node"):
        name, crm_online = n.get("name"), _b(n, "online")
        online = crm_online and not _b(n, "unclean")
        if n.get("type") == "remote":
            conn = resources.get(n.get("id_as_resource") or name)
            online = online and conn is not None and conn.active and conn.role == "Started" \
                and not conn.failed and conn.pending not in ("start", "stop", "migrate_to", "migrate_from") \
                and (connected is None or name in connected)
        nodes[name] = NodeState(name=name, type=n.get("type", ""), online=online, crm_online=crm_online,
                                unclean=_b(n, "unclean"), shutdown=_b(n, "shutdown"), standby=_b(n, "standby"),
                                maintenance=_b(n, "maintenance"))
    return Status(dc=dc, quorate=dc_el is not None and _b(dc_el, "with_quorum"), nodes=nodes, resources=resources,
                  fencing=fence_history() if fencing else [], xml=cp.stdout.encode())


def crm_mon_text() -> str:
    cp = tool(["crm_mon", "-1", "--inactive", "--fence-history=1"], check=False, timeout=30)
    return "--- crm_mon:\n" + (cp.stdout or cp.stderr).strip()


def wait_for(predicate: Callable[[Status], object], timeout: float, what: str = "", interval: float = 0.25,
             fencing: bool = True) -> Status:
    """Poll status() until predicate(status) is truthy (exceptions in it count as false); return that Status.
    LabTimeout after timeout seconds, with the last crm_mon summary."""
    last_err: list[str] = []

    def check():
        try:
            st = status(fencing=fencing)
        except LabError as exc:
            last_err[:] = [str(exc)]
            return None
        try:
            return st if predicate(st) else None
        except (KeyError, AttributeError, IndexError, TypeError):
            return None
    label = what or getattr(predicate, "__name__", "condition")
    return _poll(check, timeout, label, interval=interval,
                 detail=lambda: "\n".join(last_err + [crm_mon_text()]))


# -------------------------------------------------------------------------------------------------------------- down

def _remoted_records() -> list[dict]:
    return [read_record(p.stem) for p in topology.RUN_DIR.glob("remoted-*.json")] if topology.RUN_DIR.exists() else []


def _stop_pacemaker(shutdown_wait: float) -> None:
    """A clean pacemakerd shutdown (it stops the resources and the remote connections), bounded, by record."""
    pm = read_record("pacemakerd")
    kids = list(read_record("pacemaker-children") or [])
    if alive(pm):
        kids += [r for r in (record_of(p) for p in children_of(pm["pid"])) if r]
        if run(["pacemakerd", "--shutdown"], check=False, timeout=30).returncode != 0:
            signal_rec(pm, signal.SIGTERM)
        if not wait_dead([pm], shutdown_wait):
            log.warning("pacemakerd still up %ss after --shutdown: SIGKILL", shutdown_wait)
            signal_rec(pm, signal.SIGKILL)
            wait_dead([pm], 5)
    stop_recs(kids, 5)


def _stop_corosync() -> None:
    coro = read_record("corosync")
    if alive(coro):
        run(["corosync-cfgtool", "-H", "--force"], check=False, timeout=15)
        if not wait_dead([coro], 15):
            stop_recs([coro], 5)


def restart(timeout: float = 60, shutdown_wait: float = SHUTDOWN_WAIT) -> dict[str, float]:
    """A full cluster restart: pacemakerd and corosync stop cleanly (the lab has one cluster node) and start again
    from the CIB they left. The compute nodes keep running; Pacemaker reconnects them."""
    _stop_pacemaker(shutdown_wait)
    _stop_corosync()
    return up_controller(timeout, keep_cib=True)


def down(shutdown_wait: float = SHUTDOWN_WAIT) -> dict[str, float]:
    """Stop and remove everything the lab started or wrote, by its records only, whatever state it is in (also after
    a failed up, and when nothing runs).  Keeps LOG_DIR and CACHE_DIR.  Returns phase timings (s)."""
    clock = _Clock("down")
    for ns in netns.netns_list():         # cut links would make stopping their connections wait for timeouts
        if netns.NETNS_RE.match(ns):
            node = Node(int(ns[len("crlab-compute"):]))
            netns.run(["ip", "-n", ns, "link", "set", "dev", node.veth_node, "up"], check=False)
    # 1. pacemaker: a clean shutdown stops the resources on the remote nodes and the remote connections
    _stop_pacemaker(shutdown_wait)
    clock.mark("pacemaker")
    # 2. the nodes: remoteds, then whatever else runs in their namespaces, then the network
    stop_recs(_remoted_records(), 10)
    teardown_network()
    if topology.RUN_DIR.exists():
        stop_recs([read_record(p.stem) for p in topology.RUN_DIR.glob("anchor-*.json")], 3)
    clock.mark("nodes")
    # 3. corosync
    _stop_corosync()
    clock.mark("corosync")
    # 4. files
    if _lab_wrote_conf():
        COROSYNC_CONF.unlink()
        if COROSYNC_ORIG.exists():
            shutil.copy2(COROSYNC_ORIG, COROSYNC_CONF)
            COROSYNC_ORIG.unlink()
    if CIB_MARKER.exists():
        since = CIB_MARKER.stat().st_mtime - 1
        for f in CIB_DIR.glob("cib*"):
            f.unlink()
        for sub in ("pengine", "blackbox", "cores"):      # the scheduler inputs etc. of the lab's run
            for f in (PCMK_DIR / sub).glob("*"):
                if f.is_file() and f.stat().st_mtime >= since:
                    f.unlink()
        CIB_MARKER.unlink()
    shutil.rmtree(topology.RUN_DIR, ignore_errors=True)
    clock.mark("total")
    return clock.phases


if __name__ == "__main__":                 # python -m tests.lab.pacemaker {install,down,status}
    import sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cmd = sys.argv[1] if len(sys.argv) > 1 else "status"
    if cmd == "install":
        print(install())
    elif cmd == "down":
        print(down())
    elif cmd == "status":
        print(crm_mon_text())
    else:
        sys.exit("usage: python -m tests.lab.pacemaker {install,down,status}")
