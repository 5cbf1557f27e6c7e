"""Three (1-5) full Pacemaker controllers on one machine: `python -m tests.lab.controllers up|down|status|fail|crm`.

Each controller ctlN is a network namespace (`crlab-ctlN`, a veth on a bridge) and an *anchor* process holding a
private mount and UTS namespace in it: its own /run and /dev/shm (libqb's ring buffers) and its own
/var/lib/pacemaker, /var/lib/corosync and /etc/corosync (folders under RUN_DIR/ctl/ctlN, bind-mounted), so corosync
and pacemakerd run there as on a machine of their own (notes/controllers.md). The anchor outlives the node's daemons:
`power_off` kills everything in the namespace but the anchor (what a BMC's power-off does), `boot` gives it a fresh
/run and /dev/shm and starts corosync and pacemakerd again from the CIB it left.

Each controller has a BMC simulator (tests/lab/bmc.py) on the host's bridge address, whose power hooks are
`power_off`/`boot` (`python -m tests.lab.controllers hook off|on ctlN`): fence_crashup_ipmi fences a controller as it
fences a compute node, and a controller cut off from the bridge cannot reach its peers' BMCs. The host's loopback
services (RabbitMQ, the compute nodes' BMCs) reach the controllers through tests/lab/ctlfwd.py.

Tools run against one controller: `argv(ctl, [...])` (nsenter into its namespaces; `-n` alone is not enough, the
ring buffers are in its /dev/shm), `run(ctl, [...])`, and `tools_prefix()` (a live controller, a quorate one first)
that tests/lab/pacemaker.py's status and waits use while STATE exists.
"""
from __future__ import annotations

import dataclasses
import grp
import json
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import sys
import time

from tests.lab import netns, topology
from tests.lab.netns import BASE_ENV, LabError, alive, proc_name, read_record, spawn, stop_recs, wait_dead

STATE = topology.RUN_DIR / "controllers.json"
CTL_DIR = topology.RUN_DIR / "ctl"
BMC_BASE_PORT = 6290                      # ctlN's BMC: the bridge's host address, port BMC_BASE_PORT + N
BOOT_SECONDS = 3.0                        # a "reboot" by the BMC: down this long before the node boots again
TOKEN_MS = 1000
#: the lab inventory's controller_fence_delay: a cut-off controller has lost quorum (~4 s with TOKEN_MS) and stopped
#: crashup's daemon (up to ~5.5 s more: the bus's outbox gives up on a broker it cannot reach) by then
LAB_FENCE_DELAY = 10
CIB_SEED = """<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration><crm_config><cluster_property_set id="cib-bootstrap-options">
    <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="2s"/>
    <nvpair id="cib-bootstrap-options-cluster-recheck-interval" name="cluster-recheck-interval" value="1min"/>
  </cluster_property_set></crm_config><nodes/><resources/><constraints/></configuration><status/>
</cib>
"""


@dataclasses.dataclass(frozen=True)
class Net:
    """Where the controllers sit: `bridge` with `host` (the host's address on it); ctlN at `prefix`.(base + N)."""
    bridge: str
    host: str
    prefix: str
    base: int
    own_bridge: bool                      # made and removed here (else the lab's, made by netns.ensure_bridge)


#: alone (the standalone proof; apart from the lab's crlab0 / 10.200.0.0/24), and inside the lab
STANDALONE = Net("crlabc0", "10.201.0.254", "10.201.0", 0, True)
LAB = Net(topology.BRIDGE, topology.BRIDGE_ADDR, topology.BRIDGE_ADDR.rsplit(".", 1)[0], 1, False)


@dataclasses.dataclass(frozen=True)
class Controller:
    index: int
    net: Net = LAB

    @property
    def name(self) -> str:
        return f"ctl{self.index}"

    @property
    def netns(self) -> str:
        return f"crlab-ctl{self.index}"

    @property
    def veth_host(self) -> str:
        return f"crlabc{self.index}h"

    @property
    def veth_node(self) -> str:
        return f"crlabc{self.index}n"

    @property
    def address(self) -> str:
        return f"{self.net.prefix}.{self.net.base + self.index}"

    @property
    def bmc_port(self) -> int:
        return BMC_BASE_PORT + self.index

    @property
    def dir(self) -> pathlib.Path:
        return CTL_DIR / self.name


def read_state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def controllers() -> list[Controller]:
    state = read_state()
    if not state:
        raise LabError(f"no controllers up (no {STATE})")
    net = Net(**state["net"])
    return [Controller(i, net) for i in range(1, state["count"] + 1)]


def controller(name: str) -> Controller:
    for c in controllers():
        if c.name == name:
            return c
    raise LabError(f"no controller {name!r} (controllers: {', '.join(c.name for c in controllers())})")


# --- files -----------------------------------------------------------------------------------------------------------

COROSYNC_CONF = """# crashup lab controller {name}: written by tests/lab/controllers.py
totem {{
    version: 2
    cluster_name: {cluster}
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: {token}
}}
nodelist {{
{nodes}
}}
quorum {{
    provider: corosync_votequorum
}}
logging {{
    to_stderr: no
    to_logfile: yes
    logfile: {log}
    to_syslog: no
    timestamp: on
}}
"""


def _write_files(ctls: list[Controller]) -> None:
    hacluster, haclient = pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid
    nodes = "\n".join(f"    node {{\n        name: {c.name}\n        nodeid: {c.index}\n        ring0_addr: {c.address}\n"
                      "    }" for c in ctls)
    for c in ctls:
        for sub in ("etc-corosync", "lib-corosync", "lib-pacemaker"):
            (c.dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("cib", "pengine", "blackbox", "cores"):
            d = c.dir / "lib-pacemaker" / sub
            d.mkdir(exist_ok=True)
            os.chown(d, hacluster, haclient)
            d.chmod(0o750)
        (c.dir / "etc-corosync" / "corosync.conf").write_text(COROSYNC_CONF.format(
            name=c.name, cluster=topology.CLUSTER_NAME, token=TOKEN_MS, nodes=nodes,
            log=topology.LOG_DIR / f"corosync-{c.name}.log"))
        seed = c.dir / "lib-pacemaker" / "cib" / "cib.xml"
        seed.write_text(CIB_SEED)
        os.chown(seed, hacluster, haclient)
        seed.chmod(0o600)


# --- namespaces ------------------------------------------------------------------------------------------------------

def _anchor_rec(c: Controller) -> str:
    return f"anchor-{c.name}"


def _network(c: Controller) -> None:
    links = netns._links()
    if c.net.bridge not in links:
        netns.run(["ip", "link", "add", c.net.bridge, "type", "bridge"])
        netns.run(["ip", "addr", "add", f"{c.net.host}/24", "dev", c.net.bridge])
    netns.run(["ip", "link", "set", c.net.bridge, "up"])
    if c.netns not in netns.netns_list():
        netns.run(["ip", "netns", "add", c.netns])
    if c.veth_host not in links:
        netns.run(["ip", "link", "add", c.veth_host, "type", "veth", "peer", "name", c.veth_node, "netns", c.netns])
    netns.run(["ip", "link", "set", c.veth_host, "master", c.net.bridge, "up"])
    netns.run(["ip", "-n", c.netns, "addr", "replace", f"{c.address}/24", "dev", c.veth_node])
    netns.run(["ip", "-n", c.netns, "link", "set", "lo", "up"])
    set_link(c, True)


def set_link(c: Controller, up: bool) -> None:
    """The controller's end of its veth: down = cut off silently (corosync, the bridge, its BMC forwarding)."""
    netns.run(["ip", "-n", c.netns, "link", "set", "dev", c.veth_node, "up" if up else "down"])
    if up:
        netns.run(["ip", "-n", c.netns, "route", "replace", "default", "via", c.net.host, "dev", c.veth_node])


_RUN = ("mount -t tmpfs -o mode=755 crlab-run /run && mkdir -p /run/resource-agents /run/crm /run/lock "
        "/run/pacemaker /run/crashup && chown hacluster:haclient /run/crm && chmod 750 /run/crm "
        "&& mount -t tmpfs -o mode=1777 crlab-shm /dev/shm")


def _anchor(c: Controller) -> dict:
    rec = read_record(_anchor_rec(c))
    if alive(rec):
        return rec
    d = c.dir
    setup = (f"hostname {c.name} && {_RUN} && mount --bind {d}/lib-pacemaker /var/lib/pacemaker"
             f" && mount --bind {d}/lib-corosync /var/lib/corosync && mount --bind {d}/etc-corosync /etc/corosync"
             " && exec sleep infinity")
    rec = spawn(_anchor_rec(c), ["ip", "netns", "exec", c.netns, "unshare", "--mount", "--uts", "--propagation",
                                 "private", "sh", "-ec", setup],
                env=BASE_ENV, log_path=topology.LOG_DIR / f"anchor-{c.name}.log")
    limit = time.monotonic() + 10
    while proc_name(rec["pid"]) != "sleep":        # ip, unshare and sh all exec: the pid becomes the sleep
        if not alive(rec) or time.monotonic() > limit:
            raise LabError(f"{c.name}: namespace set-up failed, see {topology.LOG_DIR}/anchor-{c.name}.log")
        time.sleep(0.01)
    return rec


def argv(c: Controller, command: list[str]) -> list[str]:
    """command run inside controller c (its network, mount and UTS namespaces)."""
    rec = read_record(_anchor_rec(c))
    if not alive(rec):
        raise LabError(f"{c.name} has no namespaces (is the lab up with controllers?)")
    return ["nsenter", "-t", str(rec["pid"]), "-n", "-m", "-u", "--", *command]


def run(c: Controller, command: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    kw.setdefault("env", dict(BASE_ENV))
    return subprocess.run(argv(c, command), **kw)


def pids(c: Controller) -> list[int]:
    """Every process in c's network namespace but its anchor."""
    anchor = (read_record(_anchor_rec(c)) or {}).get("pid")
    cp = netns.run(["ip", "netns", "pids", c.netns], check=False)
    return [int(p) for p in cp.stdout.split() if p.isdigit() and int(p) != anchor]


# --- power -----------------------------------------------------------------------------------------------------------

def running(c: Controller) -> bool:
    return alive(read_record(f"{c.name}-corosync")) or alive(read_record(f"{c.name}-pacemakerd"))


def boot(c: Controller, timeout: float = 20) -> dict[str, float]:
    """Start c as a machine boots: link up, fresh /run and /dev/shm, corosync, then pacemakerd (from the CIB it
    left). No-op if its corosync runs. Returns phase timings (s)."""
    t0, phases = time.monotonic(), {}
    if alive(read_record(f"{c.name}-corosync")):
        return phases
    from tests.lab import pacemaker
    left = [p for p in pids(c) if proc_name(p) in pacemaker.DAEMONS]
    if left:                              # a new pacemakerd would adopt them
        raise LabError(f"{c.name}: cluster daemons left in its namespace ({left}): power it off first")
    set_link(c, True)
    netns.run(argv(c, ["sh", "-ec", f"umount -l /dev/shm; umount -l /run; {_RUN}"]))
    pacemaker._prepare_logs(c.name)
    coro = spawn(f"{c.name}-corosync", argv(c, ["corosync", "-f"]), env=BASE_ENV,
                 log_path=topology.LOG_DIR / f"corosync-{c.name}.stdout")
    limit = time.monotonic() + timeout
    while run(c, ["corosync-cmapctl", "-g", "runtime.votequorum.this_node_id"], timeout=5).returncode != 0:
        if not alive(coro) or time.monotonic() > limit:
            raise LabError(f"{c.name}: corosync did not start, see {topology.LOG_DIR}/corosync-{c.name}.log")
        time.sleep(0.05)
    phases["corosync"] = round(time.monotonic() - t0, 2)
    spawn(f"{c.name}-pacemakerd", argv(c, ["pacemakerd"]), env=pacemaker._daemon_env(c.name, f"{c.name}.log"),
          log_path=topology.LOG_DIR / f"pacemakerd-{c.name}.stdout")
    phases["pacemakerd"] = round(time.monotonic() - t0, 2)
    return phases


def power_off(c: Controller, timeout: float = 10) -> int:
    """The power goes: SIGKILL to everything in c's namespace but the anchor (corosync, every Pacemaker daemon,
    every resource's process). Returns how many processes were killed."""
    victims = pids(c)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    limit = time.monotonic() + timeout
    while any(netns._stat(p) and netns._stat(p)[0] not in "ZX" for p in victims):
        if time.monotonic() > limit:
            raise LabError(f"{c.name}: processes survived SIGKILL: {victims}")
        time.sleep(0.02)
    for p in victims:
        netns._reap(p)
    return len(victims)


def shutdown(c: Controller, timeout: float = 90) -> None:
    """A clean stop (what a rolling restart does): pacemakerd --shutdown (resources move away first), then corosync."""
    pm, coro = read_record(f"{c.name}-pacemakerd"), read_record(f"{c.name}-corosync")
    if alive(pm):
        run(c, ["pacemakerd", "--shutdown"], timeout=30)      # returns at once in 2.1.5: wait for the pid
        if not wait_dead([pm], timeout):
            power_off(c)
            return
    if alive(coro):
        run(c, ["corosync-cfgtool", "-H", "--force"], timeout=15)
        if not wait_dead([coro], 15):
            power_off(c)
    stop_recs([r for r in (read_record(f"{c.name}-{n}") for n in ("corosync", "pacemakerd")) if r], 1)
    left = pids(c)
    if left:                              # agents' leftovers: a machine that halts has none
        power_off(c)


# --- BMCs --------------------------------------------------------------------------------------------------------------

def _start_bmc(c: Controller, password_file: pathlib.Path, timeout: float = 10) -> None:
    state = topology.RUN_DIR / "bmc" / c.name
    state.mkdir(parents=True, exist_ok=True)
    hook = f"{sys.executable} -m tests.lab.controllers hook"
    command = [sys.executable, "-m", "tests.lab.bmc", "--name", c.name, "--address", c.net.host, "--port",
               str(c.bmc_port), "--user", topology.BMC_USER, "--password-file", str(password_file),
               "--state-dir", str(state), "--on-power-off", f"{hook} off {c.name}",
               "--on-power-on", f"{hook} on {c.name}"]
    with open(topology.LOG_DIR / f"bmc-{c.name}.stdout", "ab") as out:
        subprocess.Popen(command, cwd=topology.REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         start_new_session=True, env=dict(os.environ, CRASHUP_LAB_DIR=str(topology.LAB_DIR)))
    limit = time.monotonic() + timeout
    while not (state / "ready").exists():
        if time.monotonic() > limit:
            raise LabError(f"BMC simulator of {c.name} not ready after {timeout:g}s (see {state / 'bmc.log'})")
        time.sleep(0.02)


def _stop_bmcs(ctls: list[Controller]) -> None:
    recs = []
    for c in ctls:
        try:
            pid = int((topology.RUN_DIR / "bmc" / c.name / "bmc.pid").read_text())
        except (OSError, ValueError):
            continue
        rec = netns.record_of(pid)
        if rec and b"tests.lab.bmc" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
            recs.append(rec)
    stop_recs(recs, 2)


def _start_forwarder(ctls: list[Controller]) -> None:
    spec, ready = topology.RUN_DIR / "ctlfwd-spec.json", topology.RUN_DIR / "ctlfwd.ready"
    ready.unlink(missing_ok=True)
    spec.write_text(json.dumps({"ready": str(ready),
        "controllers": [{"netns": f"/run/netns/{c.netns}", "veth": c.veth_host} for c in ctls],
        "tcp": [topology.BUS_PORT], "udp": [topology.BMC_BASE_PORT + i for i in range(1, topology.MAX_NODES + 1)]}))
    rec = spawn("ctlfwd", [sys.executable, "-m", "tests.lab.ctlfwd", str(spec)],
                env=dict(BASE_ENV, PYTHONPATH=str(topology.REPO)),
                log_path=topology.LOG_DIR / "ctlfwd.log")
    limit = time.monotonic() + 10
    while not ready.exists():
        if not alive(rec) or time.monotonic() > limit:
            raise LabError(f"the controllers' loopback forwarder did not start (see {topology.LOG_DIR}/ctlfwd.log)")
        time.sleep(0.02)


# --- the cluster -------------------------------------------------------------------------------------------------------

def quorate(c: Controller) -> bool | None:
    """c's own view: True/False, None if its cluster does not answer."""
    cp = run(c, ["crm_node", "--quorum"], timeout=10)     # prints 1 or 0 (and exits 3 when it prints 0)
    answer = cp.stdout.strip()
    return answer == "1" if answer in ("0", "1") else None


def tools_prefix(preferred: str | None = None) -> list[str]:
    """The nsenter prefix of the controller the lab's cluster tools ask: `preferred` (or $CRASHUP_LAB_CONTROLLER)
    if it runs, else the first running one that is quorate, else the first running one."""
    ctls = [c for c in controllers() if running(c)]
    if not ctls:
        raise LabError("no controller is running")
    wanted = preferred or os.environ.get("CRASHUP_LAB_CONTROLLER")
    chosen = next((c for c in ctls if c.name == wanted), None)
    if chosen is None:
        chosen = next((c for c in ctls if quorate(c)), ctls[0])
    return argv(chosen, [])


def up(count: int = 3, net: Net = STANDALONE, password_file: pathlib.Path | None = None,
       timeout: float = 60) -> dict[str, float]:
    """Namespaces, files, BMCs and the forwarder, then every controller booted, until one is DC with all online and
    quorate. Refuses next to another lab (its state, or our namespaces); corosyncs elsewhere do not matter."""
    from tests.lab import lab, pacemaker
    t0, phases = time.monotonic(), {}
    if read_state():
        raise LabError(f"controllers already up ({STATE}): `python -m tests.lab.controllers down` first")
    ctls = [Controller(i, net) for i in range(1, count + 1)]
    taken = [c.netns for c in ctls if c.netns in netns.netns_list()]
    if taken or (net.own_bridge and net.bridge in netns._links()):
        raise LabError(f"refusing to start: {', '.join(taken) or net.bridge} exists (another lab?)")
    pacemaker.install()
    topology.RUN_DIR.mkdir(parents=True, exist_ok=True)
    topology.LOG_DIR.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps({"count": count, "net": dataclasses.asdict(net)}))
    _write_files(ctls)
    for c in ctls:
        _network(c)
        _anchor(c)
    phases["namespaces"] = round(time.monotonic() - t0, 2)
    for c in ctls:
        boot(c)
    password_file = password_file or lab.bmc_password_file()
    for c in ctls:
        _start_bmc(c, password_file)
    _start_forwarder(ctls)
    phases["booted"] = round(time.monotonic() - t0, 2)
    names = [c.name for c in ctls]
    pacemaker.wait_for(lambda st: st.dc and st.quorate and all(st.nodes[n].online for n in names), timeout,
                       "every controller online, a quorate DC", fencing=False)
    phases["dc"] = round(time.monotonic() - t0, 2)
    return phases


def down() -> dict[str, float]:
    """Everything up() made, stopped and removed (safe after a partial up and when nothing runs)."""
    t0 = time.monotonic()
    state = read_state()
    ctls = controllers() if state else []
    _stop_bmcs(ctls)
    stop_recs([read_record("ctlfwd")], 3)
    for c in ctls:
        power_off(c)
        stop_recs([read_record(_anchor_rec(c))], 3)
        netns.run(["ip", "netns", "del", c.netns], check=False)
        netns.run(["ip", "link", "del", c.veth_host], check=False)
    if state and state["net"]["own_bridge"]:
        netns.run(["ip", "link", "del", state["net"]["bridge"]], check=False)
    shutil.rmtree(CTL_DIR, ignore_errors=True)
    for c in ctls:
        shutil.rmtree(topology.RUN_DIR / "bmc" / c.name, ignore_errors=True)
        for rec in (_anchor_rec(c), f"{c.name}-corosync", f"{c.name}-pacemakerd"):
            (topology.RUN_DIR / f"{rec}.json").unlink(missing_ok=True)
    for name in ("ctlfwd.json", "ctlfwd-spec.json", "ctlfwd.ready"):
        (topology.RUN_DIR / name).unlink(missing_ok=True)
    STATE.unlink(missing_ok=True)
    return {"down": round(time.monotonic() - t0, 2)}


# --- what tests and benches ask -----------------------------------------------------------------------------------------

def recovery_request(n):
    """A node's recovery request, read inside a live controller (tests/lab/lab.py's recovery_request routes here)."""
    from crashup_lib import pacemaker as cluster
    from tests.lab import pacemaker
    cp = pacemaker.tool(["crm_attribute", "--type", "nodes", "--node", n.name, "--name", cluster.REQUEST_ATTRIBUTE,
                          "--query", "--quiet"], check=False, timeout=30)
    value = cp.stdout.strip()
    return cluster.RecoveryRequest.from_value(n.name, value) if cp.returncode == 0 and value else None


def daemon_at(st=None) -> str | None:
    """The controller where Pacemaker runs crashup's recovery daemon (None: stopped or moving)."""
    from tests.lab import pacemaker
    st = st or pacemaker.status(fencing=False)
    r = st.resources.get("crashup")
    return r.nodes[0] if r is not None and r.active and len(r.nodes) == 1 and not r.pending else None


def daemon_pid(c: Controller) -> int | None:
    """The recovery daemon's pid on controller c (from its own /run/crashup), if it runs there."""
    cp = run(c, ["cat", "/run/crashup/daemon.pid"], timeout=10)
    try:
        pid = int(cp.stdout.strip())
    except ValueError:
        return None
    return pid if pid in pids(c) else None


FAILURES = ("crash", "net", "boot", "stop", "heal")


def fail(c: Controller, how: str) -> str:
    """crash: powered off without a word (its BMC still says on); net: its link cut (it runs on, alone);
    stop: a clean shutdown; boot: started again (after crash or stop); heal: its link back."""
    if how == "crash":
        return f"{c.name}: crashed ({power_off(c)} processes killed)"
    if how == "net":
        set_link(c, False)
        return f"{c.name}: cut off"
    if how == "heal":
        set_link(c, True)
        return f"{c.name}: link back"
    if how == "stop":
        shutdown(c)
        return f"{c.name}: stopped cleanly"
    if how == "boot":
        return f"{c.name}: booted {boot(c)}"
    raise LabError(f"unknown controller failure {how!r}: one of {', '.join(FAILURES)}")


def main(args: list[str]) -> int:
    from tests.lab import pacemaker
    usage = ("usage: python -m tests.lab.controllers up [COUNT] | down | status [CTL] | fail CTL --how "
             f"{'|'.join(FAILURES)} | crm CTL -- COMMAND... | hook on|off CTL")
    try:
        if args[:1] == ["up"]:
            print(up(int(args[1]) if len(args) > 1 else 3))
        elif args[:1] == ["down"]:
            print(down())
        elif args[:1] == ["status"]:
            if len(args) > 1:
                os.environ["CRASHUP_LAB_CONTROLLER"] = args[1]
            print(pacemaker.crm_mon_text())
        elif args[:1] == ["fail"] and len(args) == 4 and args[2] == "--how":
            print(fail(controller(args[1]), args[3]))
        elif args[:1] == ["crm"] and len(args) > 3 and args[2] == "--":
            return subprocess.run(argv(controller(args[1]), args[3:]), env=dict(BASE_ENV)).returncode
        elif args[:1] == ["hook"] and len(args) == 3 and args[1] in ("on", "off"):
            c = controller(args[2])
            if args[1] == "off":
                power_off(c)
            else:
                time.sleep(BOOT_SECONDS)     # no machine is back the instant its power is
                boot(c)
        else:
            print(usage, file=sys.stderr)
            return 2
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
