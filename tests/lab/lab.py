"""The whole lab in one place: a Pacemaker controller and remote compute nodes, real nova, one BMC per node.

The pieces live in their own modules (pacemaker.py + netns.py, novabox/ + nova_env.py, bmc.py, rabbitmq.py,
cinder.py + cinderbox/); this joins them: crashup's agents installed where Pacemaker looks for them, one
fence_crashup_ipmi device and fencing level per node against that node's BMC, BMC power hooks that really take a node
down (hooks.py), a clouds.yaml for the clients, a RabbitMQ broker for the notification bus (loopback, its transport URL
in a file), a real cinder on that broker (a vhost of its own) that nova uses, failure injection, and a teardown that
leaves nothing behind but logs and the install caches. With `up(guests=True)` a libvirtd per compute node
(libvirtd.py) runs real qemu guests (guests.py, guestimage.py) for servers of flavors with lab:guest=qemu.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time

from tests.lab import controllers as ctl_cluster
from tests.lab import libvirtd, netns, nova_env, pacemaker, rabbitmq, topology
from tests.lab.cinder import SERVICES as CINDER_SERVICES, Cinder, CinderError
from tests.lab.netns import LabError
from tests.lab.topology import LAB_DIR, LOG_DIR, REPO, RUN_DIR, SECRETS_DIR, Node

STATE_FILE = RUN_DIR / "lab.json"
CLOUDS_YAML = RUN_DIR / "clouds.yaml"
CRASHUP_CONF = RUN_DIR / "crashup.conf"
JOURNAL = RUN_DIR / "events.jsonl"
INVENTORY = RUN_DIR / "inventory.yaml"          # the lab as an operator describes a cluster (crashup pcs render)
DAEMON_DIR = pathlib.Path("/run/crashup")     # per host, as in production: nodes have their own /run
CLOUD = "crashup-lab"
#: the lab's init system for nova-compute (the box runs every compute; this drives one through its control API)
COMPUTE_CTL = REPO / "tests" / "lab" / "crlab-compute"
NOVA_COMPUTE = "nova-compute"                  # the clone's primitive; the clone is NOVA_COMPUTE + "-clone"
#: what a node's crashup daemons (the guest monitor) have in their command line: a crash of the node kills them
CRASHUP_DAEMON = b"crashup_lib.cli"
GUEST_MONITOR = "crashup-guests"               # the guest monitor's primitive (`crashup pcs render`, guest_monitor)
BMC_DIR = RUN_DIR / "bmc"
NOVA_STATE = RUN_DIR / "nova"
BUS_DIR = RUN_DIR / "bus"                     # the broker's state: mnesia, cookie, password (0600), pid files
TRANSPORT_URL_FILE = BUS_DIR / "transport_url"  # rabbit://crashup:<password>@127.0.0.1:5673/crashup, mode 0600
OUTBOX_DIR = RUN_DIR / "outbox"               # crashup's bus outbox (events not yet accepted by the broker)
CINDER_STATE = RUN_DIR / "cinder"             # cinder.conf (0600), sqlite, volume files (volumes/volume-<id>), pids
OCF_DIR = pathlib.Path("/usr/lib/ocf/resource.d/crashup")
SBIN_DIR = pathlib.Path("/usr/sbin")
MARKER = "# installed by the crashup lab; removed by `lab down`"


class Timeline:
    """Phase timings of a lab operation, printed as they happen."""

    def __init__(self, quiet: bool = False):
        self.start = self.last = time.monotonic()
        self.phases: list[tuple[str, float]] = []
        self.quiet = quiet

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.phases.append((phase, now - self.last))
        self.last = now
        if not self.quiet:
            print(f"  [{now - self.start:6.2f}s] {phase} (+{self.phases[-1][1]:.2f}s)", flush=True)

    @property
    def total(self) -> float:
        return self.last - self.start


def nodes(count: int | None = None) -> list[Node]:
    if count is None:
        count = read_state().get("nodes", topology.DEFAULT_NODES)
    return topology.nodes(count)


def node(name: str) -> Node:
    for n in nodes():
        if n.name == name:
            return n
    raise LabError(f"no lab node {name!r} (nodes: {', '.join(n.name for n in nodes())})")


def read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


# --- crashup's agents where Pacemaker looks for them ----------------------------------------------------------------

def _agent_sources() -> list[tuple[pathlib.Path, pathlib.Path]]:
    pairs = [(p, OCF_DIR / p.name) for p in sorted((REPO / "agents").glob("*")) if p.is_file()]
    pairs += [(p, SBIN_DIR / p.name) for p in sorted((REPO / "fence").glob("fence_*")) if p.is_file()]
    return pairs


def _ours(path: pathlib.Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return MARKER in f.read(512)
    except OSError:
        return False


def install_agents() -> list[pathlib.Path]:
    """Copy agents and fence agents in, with this checkout's venv interpreter as shebang (Pacemaker runs them by
    path with its own PATH). An existing file the lab did not write (an operator's install) is never replaced."""
    python = pathlib.Path(sys.executable)
    installed = []
    for source, target in _agent_sources():
        if target.exists() and not _ours(target):
            raise LabError(f"{target} exists and was not installed by the lab; remove it or run the lab elsewhere")
        lines = source.read_text().splitlines(keepends=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"#!{python}\n{MARKER}\n" + "".join(lines[1:]))
        target.chmod(0o755)
        installed.append(target)
    return installed


def remove_agents() -> None:
    for _, target in _agent_sources():
        if _ours(target):
            target.unlink()
    for folder in (OCF_DIR,):
        with contextlib.suppress(OSError):
            folder.rmdir()


# --- BMC simulators ---------------------------------------------------------------------------------------------------

def bmc_password_file() -> pathlib.Path:
    path = SECRETS_DIR / "bmc-password"
    if not path.exists():
        SECRETS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(12) + "\n")
    return path


def bmc_dir(n: Node) -> pathlib.Path:
    return BMC_DIR / n.name


def start_bmc(n: Node, timeout: float = 10) -> None:
    state = bmc_dir(n)
    state.mkdir(parents=True, exist_ok=True)
    hook = f"{sys.executable} -m tests.lab.hooks"
    argv = [sys.executable, "-m", "tests.lab.bmc", "--name", n.name, "--address", topology.BMC_ADDR,
            "--port", str(n.bmc_port), "--user", topology.BMC_USER, "--password-file", str(bmc_password_file()),
            "--state-dir", str(state), "--on-power-off", f"{hook} off {n.name}",
            "--on-power-on", f"{hook} on {n.name}"]
    log = open(LOG_DIR / f"bmc-{n.name}.stdout", "ab")
    subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                     env=dict(os.environ, CRASHUP_LAB_DIR=str(LAB_DIR)))
    log.close()
    limit = time.monotonic() + timeout
    while not (state / "ready").exists():
        if time.monotonic() > limit:
            raise LabError(f"BMC simulator of {n.name} not ready after {timeout:g}s (see {state / 'bmc.log'})")
        time.sleep(0.02)


def _bmc_pid(state: pathlib.Path) -> int | None:
    try:
        pid = int((state / "bmc.pid").read_text())
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"tests.lab.bmc" in cmdline else None      # guard against PID reuse


def stop_bmcs(timeout: float = 5) -> None:
    pids = [p for p in (_bmc_pid(d) for d in BMC_DIR.glob("*")) if p] if BMC_DIR.exists() else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    limit = time.monotonic() + timeout
    for pid in pids:
        while pathlib.Path(f"/proc/{pid}").exists() and time.monotonic() < limit:
            if pathlib.Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            if pathlib.Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


def _kill_orphan_daemon() -> None:
    """Pacemaker stops the recovery daemon with its resource; one left by a killed cluster is ended here."""
    try:
        pid = int((DAEMON_DIR / "daemon.pid").read_text())
        if b"crashup_lib.cli" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def bmc_fault(n: Node, text: str) -> None:
    (bmc_dir(n) / "fault").write_text(text)


def power_log(n: Node) -> list[dict]:
    path = bmc_dir(n) / "power.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def bmc(n: Node):
    """A crashup_lib.ipmi session to the node's BMC (the lab's own IPMI client, same as the fence agent's)."""
    from crashup_lib import ipmi
    password = bmc_password_file().read_text().strip()
    return ipmi.Bmc(topology.BMC_ADDR, topology.BMC_USER, password, port=n.bmc_port)


# --- the notification bus -----------------------------------------------------------------------------------------------

def broker(also_listen: tuple[str, ...] = ()) -> rabbitmq.Broker:
    """The lab's RabbitMQ (running or not: a Broker attaches to its state directory; its logs in LOG_DIR/rabbitmq).
    also_listen: addresses besides loopback (a lab with real guests: the bridge, for the nodes' guest monitors);
    kept in the state directory, so a restart (`fail bus --how start`) listens where the first start did."""
    return rabbitmq.Broker(BUS_DIR, topology.BUS_PORT, dist_port=topology.BUS_DIST_PORT,
                           epmd_port=topology.BUS_EPMD_PORT, nodename=topology.BUS_NODENAME, vhost=topology.BUS_VHOST,
                           user=topology.BUS_USER, log_dir=LOG_DIR / "rabbitmq", also_listen=also_listen)


def bus_options() -> dict[str, str]:
    """crashup.conf's [events] options for the bus, those this crashup knows (the bus sink may not be there yet):
    the transport URL's file, and the outbox in the lab's run state (removed by `lab down`, like the journal)."""
    from crashup_lib import config
    wanted = {"transport_url_file": str(TRANSPORT_URL_FILE), "outbox_dir": str(OUTBOX_DIR)}
    return {k: v for k, v in wanted.items() if k in config.BY_NAME} if "transport_url_file" in config.BY_NAME else {}


BUS_FAILURES = ("stop", "freeze", "start")


def fail_bus(how: str) -> str:
    """stop: the broker crashes (SIGKILL: connections reset, then refused; its epmd stays); freeze: SIGSTOP (connects
    still complete, nothing answers); start: SIGCONT a frozen broker, start a stopped one (same data, user, URL)."""
    if not (BUS_DIR / "broker.json").exists():
        raise LabError("no lab broker (is the lab up?)")
    b = broker()
    try:
        if how == "stop":
            b.kill()
            return "bus: broker killed"
        if how == "freeze":
            b.freeze()
            return "bus: broker frozen (SIGSTOP)"
        if how == "start":
            was = b.state()
            b.start()
            return "bus: broker thawed (SIGCONT)" if was == "frozen" else \
                "bus: broker already running" if was == "running" else f"bus: broker started in {b.start_seconds:.1f}s"
    except rabbitmq.BrokerError as e:
        raise LabError(f"bus: {e}") from None
    raise LabError(f"unknown bus failure {how!r}: one of {', '.join(BUS_FAILURES)}")


# --- cinder -------------------------------------------------------------------------------------------------------------

def cinder() -> Cinder:
    """The lab's cinder (running or not: its pid files and configuration are in CINDER_STATE)."""
    return Cinder(CINDER_STATE, bind=topology.BRIDGE_ADDR, port=topology.CINDER_API_PORT, log_dir=LOG_DIR / "cinder")


def cinder_db_url() -> str:
    """The sweep's cinder_connection: cinder's own sqlite database."""
    return cinder().db_url()


CINDER_FAILURES = ("kill", "start")


def fail_cinder(service: str, how: str) -> str:
    """kill: the service crashes (SIGKILL to its processes; its heartbeat stops, cinder marks it down within
    service_down_time); start: start it again (same configuration, database and volume files)."""
    name = service.removeprefix("cinder-")
    if name not in CINDER_SERVICES:
        raise LabError(f"no cinder service {service!r}: one of {', '.join('cinder-' + s for s in CINDER_SERVICES)}")
    c = cinder()
    if not c.conf_file.exists():
        raise LabError("no lab cinder (is the lab up?)")
    try:
        if how == "kill":
            return f"{service}: killed" if c.kill_service(name) else f"{service}: was not running"
        if how == "start":
            if c.pid(name) is not None:
                return f"{service}: already running"
            return f"{service}: started, up in {c.start_service(name):.1f}s"
    except CinderError as e:
        raise LabError(str(e)) from None
    raise LabError(f"unknown cinder failure {how!r}: one of {', '.join(CINDER_FAILURES)}")


# --- nova ---------------------------------------------------------------------------------------------------------------

def nova() -> nova_env.NovaBox:
    return nova_env.NovaBox.attach(NOVA_STATE)


def write_clouds_yaml() -> pathlib.Path:
    """openstacksdk and novaclient read this unchanged (OS_CLIENT_CONFIG_FILE, cloud crashup-lab)."""
    url = topology.nova_url()
    CLOUDS_YAML.write_text(
        "clouds:\n"
        f"  {CLOUD}:\n"
        "    auth_type: admin_token\n"
        "    auth:\n"
        f"      endpoint: {url}\n"
        f"      token: {nova_env.ADMIN_TOKEN}\n"
        f"    compute_endpoint_override: {url}\n"
        f"    block_storage_endpoint_override: {topology.cinder_url()}\n"
        "    region_name: RegionOne\n")
    return CLOUDS_YAML


def cloud_config(microversion: str = "2.95"):
    import openstack.config
    return openstack.config.OpenStackConfig(config_files=[str(CLOUDS_YAML)], load_envvars=False).get_one(
        cloud=CLOUD, compute_api_version=microversion)


def write_crashup_conf(lab_nodes: list[Node], mode: str = "auto", state: dict | None = None) -> pathlib.Path:
    """crashup's configuration for the lab, rendered from the lab's inventory (crashup pcs render --conf)."""
    from crashup_lib import pcs
    CRASHUP_CONF.write_text(pcs.crashup_conf(pcs.parse(inventory(lab_nodes, mode, state), "lab inventory")))
    return CRASHUP_CONF


def connection(microversion: str = "2.95"):
    import openstack.connection
    return openstack.connection.Connection(config=cloud_config(microversion))


# --- Pacemaker configuration ------------------------------------------------------------------------------------------

def guest_options(state: dict | None = None) -> dict[str, str]:
    """crashup.conf's [guests] options for a lab with real guests (state: lab.json's, default the running lab's),
    those this crashup knows: every node's libvirt URI, and the guest monitor's clone when the lab was asked for it."""
    from crashup_lib import config
    state = read_state() if state is None else state
    if not state.get("guests"):
        return {}
    # the state file in the node's own /run (DAEMON_DIR): one per node, as each host's /var/lib is, and nothing left
    # on the machine by `lab down`
    wanted = {"guest_libvirt_uri": state["libvirt_uri"], "guest_state_file": str(DAEMON_DIR / "guests.json"),
              **({"guest_monitor": "yes"} if state.get("guest_monitor") else {})}
    return {k: v for k, v in wanted.items() if k in config.BY_NAME}


#: the lab's isolation settings (`up(isolation=True)`, `python -m tests.lab up --isolation`): short, so that the
#: fallback level's wait (timing.deadline + margin: 1 + 3 + 10 + 10 + 5 = 29 s) fits a test
#: isolation_timeout above the ~40 s a cut node's controller stall took from the other nodes (docs/isolation.md)
LAB_ISOLATION = {"enabled": "yes", "isolation_timeout": "60", "probe_interval": "1", "probe_timeout": "3",
                 "action_timeout": "10", "margin": "5"}


def isolation_options(state: dict | None = None) -> dict[str, str]:
    """The inventory's `isolation:` section of a lab brought up with isolation (state: lab.json's, default the
    running lab's): the guard's clone and the fallback fencing level (docs/isolation.md)."""
    state = read_state() if state is None else state
    return dict(state["isolation"]) if state.get("isolation") else {}


def inventory(lab_nodes: list[Node], mode: str = "auto", state: dict | None = None) -> dict:
    """The lab as an operator's inventory (pcs-templates/README.md): every end-to-end test runs on the Pacemaker
    configuration and crashup.conf that `crashup pcs render` makes of it. Shorter intervals than production's.
    state: lab.json's (default: the running lab's), for the [guests] options of a lab with real guests."""
    guest = guest_options(state)
    ctl = f"{COMPUTE_CTL} http://{topology.BRIDGE_ADDR}:{topology.NOVA_API_PORT}"
    # several controllers (tests/lab/controllers.py): each fenced through its BMC, with the lab's short delay
    several = [{"name": c.name, "bmc": {"address": c.net.host, "port": c.bmc_port}}
               for c in ctl_cluster.controllers()] if ctl_cluster.read_state() else []
    return {
        "controllers": several or [topology.CONTROLLER],
        "bmc_defaults": {"user": topology.BMC_USER, "password_file": str(bmc_password_file())},
        "computes": [{"name": n.name, "nova_host": n.nova_host, "remote_address": n.address,
                      "bmc": {"address": topology.BMC_ADDR, "port": n.bmc_port}, "failure_domain": n.rack}
                     for n in lab_nodes],
        "crashup": {"config_file": str(CRASHUP_CONF), "state_dir": str(DAEMON_DIR)},
        "openstack": {"cloud": CLOUD, "clouds_file": str(CLOUDS_YAML), "interface": "public", "api_timeout": 20},
        "recovery": {"mode": mode},
        "events": {"journal": str(JOURNAL), **bus_options()},
        **({"guests": guest} if guest else {}),
        **({"isolation": isolation} if (isolation := isolation_options(state)) else {}),
        "nova_compute": {"backend": "command", "start_command": f"{ctl} start {{host}}",
                         "stop_command": f"{ctl} stop {{host}}", "status_command": f"{ctl} status {{host}}",
                         "heartbeat_cache": 5},
        "tuning": {"remote_monitor_interval": 5, "remote_monitor_timeout": 10, "remote_reconnect_interval": 5,
                   "remote_start_timeout": 20, "crashup_monitor_interval": 5, "nova_compute_monitor_interval": 5,
                   "nova_compute_failure_timeout": 20,
                   **({"controller_fence_delay": ctl_cluster.LAB_FENCE_DELAY} if several else {}),
                   **(read_state() if state is None else state).get("tuning", {})},
    }


def write_inventory(lab_nodes: list[Node], state: dict | None = None) -> pathlib.Path:
    import yaml
    INVENTORY.write_text(yaml.safe_dump(inventory(lab_nodes, state=state), sort_keys=False))
    return INVENTORY


def all_online(lab_nodes: list[Node]):
    return lambda st: all(st.nodes.get(n.name) and st.nodes[n.name].online for n in lab_nodes)


def all_started(st) -> bool:
    """Every configured resource (remote connections, stonith devices, crashup, clones) active: a lab that reports
    itself up before its fence devices have started fails the first fencing it is asked for."""
    return bool(st.resources) and all(r.active for r in st.resources.values())


# --- up / down ----------------------------------------------------------------------------------------------------------

def up(count: int = topology.DEFAULT_NODES, quiet: bool = False, controllers: int = 1,
       guests: bool = False, guest_monitor: bool = False, isolation: bool | dict = False,
       tuning: dict | None = None) -> Timeline:
    """Bring the whole lab up; idempotent only in the sense that a running lab is refused, never adopted.
    controllers > 1: that many controllers, each in its own namespaces (tests/lab/controllers.py), instead of ctl1
    on the host. guests: real guests possible (tests/lab/guests.py): a libvirtd per compute node, the nova box's
    driver making servers of flavors with lab:guest=qemu real qemu domains, the broker on the bridge too (the
    transport URL file names the bridge address: crashup on the nodes reads the same crashup.conf). guest_monitor
    (implies guests): crashup's guest monitor clone on every compute node (inventory `guests.guest_monitor`).
    isolation (implies guests: the guard refuses to start without a libvirtd to act on): the isolation guard's clone
    and the fallback fencing level, LAB_ISOLATION's timings or a dict over them. tuning: over the lab's timings."""
    guests = guests or guest_monitor or bool(isolation)
    guest_state = {"guests": True, "libvirt_uri": libvirtd.uri_template(), "guest_monitor": guest_monitor,
                   "bus_bridge_address": topology.BRIDGE_ADDR} if guests else {}
    if isolation:              # the isolation guard's clone and the fallback fencing level, LAB_ISOLATION's timings
        guest_state["isolation"] = dict(LAB_ISOLATION, **(isolation if isinstance(isolation, dict) else {}))
    if tuning:                 # the inventory's tuning over the lab's own (bench/silent.py: production's timings)
        guest_state["tuning"] = dict(tuning)
    if read_state() or ctl_cluster.read_state():
        raise LabError(f"a lab is already up ({STATE_FILE}); run `python -m tests.lab down` first")
    why = rabbitmq.available()
    if why:
        raise LabError(f"{why}: run `make deps`")
    t = Timeline(quiet)
    lab_nodes = topology.nodes(count)
    pacemaker.install()
    nova_env.ensure_nova_venv(quiet=True)
    guest_args: list[str] = []
    if guests:
        from tests.lab import guestimage
        image = guestimage.ensure()
        guest_args = ["--libvirt-uri", libvirtd.uri_template(), "--guest-kernel", str(image.kernel),
                      "--guest-initrd", str(image.initrd), "--guest-cmdline", image.cmdline]
    t.mark("packages, pacemaker-remoted, nova venv" + (", guest image" if guests else "") + " ready")
    for d in (RUN_DIR, LOG_DIR):
        d.mkdir(parents=True, exist_ok=True)
    install_agents()
    from tests.lab import netns
    netns.ensure_bridge()
    box = nova_env.NovaBox()
    nova_error: list[BaseException] = []
    bus = broker(also_listen=(topology.BRIDGE_ADDR,) if guests else ())
    bus.prepare()                                        # ports, password: the URL is known before the broker runs
    bus.write_url_file(TRANSPORT_URL_FILE, host=topology.BRIDGE_ADDR if guests else rabbitmq.HOST)
    bus_error: list[BaseException] = []

    def start_bus():
        try:
            bus.start()
        except BaseException as e:                       # reported in the main thread
            bus_error.append(e)
    bus_thread = threading.Thread(target=start_bus, name="rabbitmq-start")
    bus_thread.start()                                   # the broker (~4 s) starts with nova, while Pacemaker elects
    block = cinder()
    cinder_error: list[BaseException] = []

    def start_cinder():
        try:
            block.sync_db()                              # ~2 s, while the broker starts
            bus_thread.join()
            if not bus_error:                            # else the broker's error is the one reported
                block.prepare(bus)
                block.start()
        except BaseException as e:                       # reported in the main thread
            cinder_error.append(e)
    cinder_thread = threading.Thread(target=start_cinder, name="cinder-start")
    cinder_thread.start()                                # cinder (~4 s once the broker is up) starts beside nova

    def start_nova():
        try:
            # many fake computes in nova's one process, on a busy machine: their heartbeats (a database write
            # each) come late, and a compute "not heard from" is refused by the scheduler; rarer and more lenient
            big = len(lab_nodes) > 6
            box.start(hosts=[n.nova_host for n in lab_nodes], state_dir=NOVA_STATE, log_file=LOG_DIR / "nova.log",
                      extra_args=["--cinder-url", topology.cinder_url(), *guest_args],
                      report_interval=5 if big else 2, service_down_time=30 if big else 6)
        except BaseException as e:                       # reported in the main thread
            nova_error.append(e)
    nova_thread = threading.Thread(target=start_nova, name="nova-start")
    nova_thread.start()                                  # nova (~3 s) starts while Pacemaker elects its DC (~4 s)
    try:
        try:
            if controllers > 1:
                ctl_cluster.up(controllers, ctl_cluster.LAB, password_file=bmc_password_file())
                t.mark(f"{controllers} controllers quorate, with a DC")
            else:
                pacemaker.up_controller()
                t.mark("controller ctl1 is DC")
            for n in lab_nodes:
                pacemaker.add_node(n)
            t.mark(f"{count} compute nodes listening (netns, pacemaker-remoted)")
            if guests:
                took = libvirtd.start_all(lab_nodes)
                t.mark(f"{count} libvirtd answering (slowest {max(took.values()):.1f}s)")
            for n in lab_nodes:
                start_bmc(n)
            t.mark(f"{count} BMC simulators listening")
        finally:
            nova_thread.join()
            bus_thread.join()
        if nova_error:
            raise LabError(f"nova did not start: {nova_error[0]}")
        t.mark("nova API, placement, conductor, scheduler, computes up")
        if bus_error:
            raise LabError(f"RabbitMQ did not start: {bus_error[0]}")
        t.mark(f"RabbitMQ on {rabbitmq.HOST}:{bus.port} (vhost {bus.vhost}) ready, started in {bus.start_seconds:.1f}s")
        STATE_FILE.write_text(json.dumps({"nodes": count, "controllers": controllers, "nova_url": topology.nova_url(),
                                          "cinder_url": topology.cinder_url(), "cinder_db": block.db_url(),
                                          "clouds_yaml": str(write_clouds_yaml()), "cloud": CLOUD,
                                          "transport_url_file": str(TRANSPORT_URL_FILE),
                                          "crashup_conf": str(write_crashup_conf(lab_nodes, state=guest_state)),
                                          **guest_state}))
        if controllers > 1:
            # the same commands through the same apply_pcs, with the CIB read and pushed inside a controller (pcs
            # -f itself runs here: inside a controller's namespaces each pcs call takes ~10 s)
            from crashup_lib import pcs
            pacemaker.push_config(pcs.commands(pcs.load(str(write_inventory(lab_nodes, guest_state)))))
        else:
            # what an operator runs: `crashup pcs apply INVENTORY`
            applied = subprocess.run([sys.executable, "-m", "crashup_lib.cli", "pcs", "apply",
                                      str(write_inventory(lab_nodes, guest_state))], capture_output=True, text=True,
                                     timeout=600)
            if applied.returncode != 0:
                raise LabError(f"crashup pcs apply failed: {(applied.stderr or applied.stdout).strip()}")
        t.mark("Pacemaker configuration pushed")
        pacemaker.wait_for(lambda st: all_online(lab_nodes)(st) and "crashup" in st.resources and all_started(st)
                           and all(compute_running(st, n) for n in lab_nodes)
                           and (not guest_monitor or all(clone_running(st, GUEST_MONITOR, n) for n in lab_nodes)),
                           # Pacemaker runs a few actions at once (batch-limit: twice the cores), so every node
                           # beyond the usual three adds its connection, probes and starts to the queue
                           (90 if controllers == 1 else 120) + 8 * max(0, count - topology.DEFAULT_NODES),
                           "every compute node online, every resource started")
        t.mark("every compute node online, every fence device and crashup's recovery daemon started")
    except BaseException:
        cinder_thread.join()                             # no cinder process may start after this fails (`lab down`)
        raise
    cinder_thread.join()
    if cinder_error:
        raise LabError(f"cinder did not start: {cinder_error[0]}")
    t.mark(f"cinder API, scheduler, volume up at {block.url} (started in {block.start_seconds:.1f}s once the broker "
           f"was; db sync {block.sync_seconds:.1f}s)")
    return t


def recovery_request(n: Node):
    if ctl_cluster.read_state():                          # read inside a live controller
        return ctl_cluster.recovery_request(n)
    from crashup_lib import pacemaker as cluster
    return cluster.request(n.name)


def clone_running(st, primitive: str, n: Node) -> bool:
    """The clone of primitive runs on node n, no operation of it pending (as Pacemaker sees it)."""
    clone = st.resources.get(f"{primitive}-clone")
    return clone is not None and n.name in clone.nodes and not clone.pending


def compute_running(st, n: Node) -> bool:
    """crashup's nova-compute agent runs on node n (as Pacemaker sees it)."""
    return clone_running(st, NOVA_COMPUTE, n)


def wait_rejoined(n: Node, timeout: float = 120) -> None:
    """Until node n is back in service, by crashup's own path: its recovery closed, Pacemaker's nova-compute agent
    started on it (which starts nova-compute and clears forced-down in the order nova demands), and nova sees the
    service up and not forced down."""
    limit = time.monotonic() + timeout
    pacemaker.wait_for(lambda st: st.nodes[n.name].online and compute_running(st, n), timeout,
                       f"{n.name} online with nova-compute started by its agent")
    conn = connection()
    while True:
        service = next((s for s in conn.compute.services() if s.host == n.nova_host and s.binary == "nova-compute"),
                       None)
        if service is not None and not service.is_forced_down and service.state == "up":
            return
        if time.monotonic() > limit:
            raise LabError(f"{n.name}: nova-compute not up (forced down: "
                           f"{getattr(service, 'is_forced_down', None)}) {timeout:g}s after rejoining")
        time.sleep(0.25)


def down(quiet: bool = False) -> Timeline:
    """Stop everything and remove all the lab made, but logs and install caches. Safe after a partial up."""
    t = Timeline(quiet)
    if ctl_cluster.read_state():                         # several controllers: powered off, nothing left to stop
        ctl_cluster.down()
        t.mark("controllers stopped and removed")
    # Pacemaker leaves resources alone from here: stopping nova-compute clones through a nova box that is already
    # gone would fail, and failed stops want fencing through BMCs that are gone too (a minute-long shutdown)
    with contextlib.suppress(Exception):
        subprocess.run(["crm_attribute", "--type", "crm_config", "--name", "maintenance-mode", "--update", "true"],
                       capture_output=True, timeout=10)
    # the broker (graceful, SIGKILL after a bounded wait, then its epmd) stops while BMCs and nova do; by its pid
    # files in BUS_DIR, so before pacemaker.down() removes RUN_DIR
    bus_error: list[BaseException] = []
    bus_stopped: list[float] = []
    cinder_stopped: list[float] = []

    def stop_bus():
        try:
            if CINDER_STATE.exists():                    # cinder first: without its broker it ignores SIGTERM
                block = cinder()
                t0 = time.monotonic()
                block.stop()
                cinder_stopped.append(time.monotonic() - t0)
        except BaseException as e:                       # reported once everything else is down
            bus_error.append(e)
        try:
            if BUS_DIR.exists():
                b = broker()
                b.stop()
                bus_stopped.append(b.stop_seconds)
        except BaseException as e:                       # reported once everything else is down
            bus_error.append(e)
    bus_thread = threading.Thread(target=stop_bus, name="rabbitmq-stop")
    bus_thread.start()
    stop_bmcs()
    t.mark("BMC simulators stopped")
    with contextlib.suppress(Exception):
        nova().stop()
    t.mark("nova stopped")
    if libvirtd.BASE.exists():
        libvirtd.stop_all()
        t.mark("libvirtd of every node stopped, every domain destroyed")
    bus_thread.join()
    took = ([f"cinder in {cinder_stopped[0]:.1f}s"] if cinder_stopped else []) + \
        ([f"the broker in {bus_stopped[0]:.1f}s"] if bus_stopped else [])
    t.mark("cinder, RabbitMQ and its epmd stopped" + (f" ({', '.join(took)}, beside the above)" if took else ""))
    pacemaker.down()                                     # also namespaces, links, bridge, corosync.conf, CIB
    _kill_orphan_daemon()
    t.mark("Pacemaker, nodes and network removed")
    remove_agents()
    for d in (RUN_DIR, SECRETS_DIR, DAEMON_DIR):
        shutil.rmtree(d, ignore_errors=True)
    t.mark("agents and run state removed")
    if bus_error:
        raise LabError(f"cinder or RabbitMQ did not stop cleanly: {'; '.join(map(str, bus_error))}")
    return t


# --- failures -----------------------------------------------------------------------------------------------------------

FAILURES = ("crash", "net", "power")


def fail(n: Node, how: str) -> None:
    """crash: the host dies with its guests (remoted and nova-compute gone, the BMC still says ON); its kernel closes
    remoted's connection, so Pacemaker hears of it at once;
    net: the host is cut off silently (link down, no TCP reset; nova-compute's heartbeats stop, its guests run on);
    power: its BMC powers it off (the power hook takes it down; its processes' deaths close remoted's connection:
    bench/silent.py takes the link down first for a silent power loss)."""
    if how == "crash":
        pacemaker.kill_remoted(n)
        netns.kill_in_node(n, CRASHUP_DAEMON)
        if guests_on():
            libvirtd.kill(n)
        nova().stop_compute(n.nova_host, power_off=True)
    elif how == "net":
        pacemaker.link(n, False)
        nova().stop_compute(n.nova_host, power_off=False)
    elif how == "power":
        with bmc(n) as session:
            session.set_power("off")
    else:
        raise LabError(f"unknown failure {how!r}: one of {', '.join(FAILURES)}")


def guests_on() -> bool:
    """The lab was brought up with real guests (a libvirtd per node)."""
    return bool(read_state().get("guests"))


def status_text() -> str:
    state = read_state()
    if not state:
        return "lab: down"
    several = f", {state['controllers']} controllers" if state.get("controllers", 1) > 1 else ""
    lines = [f"lab: up, {state['nodes']} compute nodes{several}; export OS_CLIENT_CONFIG_FILE={CLOUDS_YAML} "
             f"(cloud {CLOUD})", "", pacemaker.crm_mon_text().rstrip(), ""]
    for n in nodes():
        try:
            with bmc(n) as session:
                power = session.power_state()
        except Exception as e:                             # the status view must not die with one BMC
            power = f"unknown ({e})"
        lines.append(f"BMC {n.name:<10} 127.0.0.1:{n.bmc_port}  power {power}")
    try:
        lines.append(f"bus: RabbitMQ {broker().status_line()}; transport URL in {TRANSPORT_URL_FILE}")
    except Exception as e:
        lines.append(f"bus: unknown ({e})")
    try:
        lines.append(cinder().status_line())
    except Exception as e:
        lines.append(f"cinder: unknown ({e})")
    if state.get("guests"):
        lines.append("libvirtd: " + ", ".join(f"{n.name} {'running' if libvirtd.running(n) else 'stopped'} "
                                              f"({len(libvirtd.qemu_pids(n))} qemu)" for n in nodes()))
    try:
        computes = nova().get_state().get("computes", {})
        lines.append("nova-compute: " + ", ".join(f"{h} {'running' if up else 'stopped'}"
                                                   for h, up in sorted(computes.items())))
    except Exception as e:
        lines.append(f"nova: unreachable ({e})")
    return "\n".join(lines)
