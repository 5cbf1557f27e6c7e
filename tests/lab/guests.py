"""Real guests for tests, in a lab brought up with `python -m tests.lab up --guests`.

A server of a flavor with the extra spec `lab:guest=qemu` is a real qemu domain (TCG, 96-256 MiB, the lab's kernel
and busybox initramfs, tests/lab/guestimage.py) on its host's libvirtd (tests/lab/libvirtd.py), made by the nova
box's driver: domain uuid = server id, name = instance name; `hw:watchdog_action` gives an i6300esb watchdog with
that action; every real guest has a pvpanic device and `on_crash` preserve. The guest's console (ttyS0) goes to
a log file and its second serial port (ttyS1) to a unix socket this module writes commands to; both paths are read
from the domain's XML.

    flavor(conn, watchdog_action="none")            # find or make the flavor
    server = boot(conn, "g1", flavor_id, host="compute1")  # ACTIVE, and the guest printed its ready line
    inject(server.id, "watchdog" | "panic" | "kill" | "run")
    state(server.id) -> ("running"|"crashed"|..., reason), qemu_pid(server.id), console_log(server.id),
    ready_lines(server.id), wait_ready(server.id, seen=n)       # the console log holds every boot: count
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import time
import xml.etree.ElementTree as ET

from tests.lab import libvirtd, procs, topology
from tests.lab.guestimage import READY
from tests.lab.netns import LabError

SPEC = "lab:guest"
HOWS = ("watchdog", "panic", "kill", "run")
WATCHDOG_ACTIONS = ("reset", "poweroff", "pause", "none")
#: libvirt's domain states (virDomainState), as `virsh domstate` names them
STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed",
          7: "pmsuspended"}


def _libvirt():
    import libvirt
    libvirt.registerErrorHandler(lambda *a: None, None)   # errors are raised; not printed on stderr too
    return libvirt


def flavor(conn, watchdog_action: str | None = None, ram: int = 128):
    """The flavor for real guests (1 vCPU, `ram` MiB, no disk) with this watchdog action (None: no watchdog):
    found by name, made the first time."""
    if watchdog_action is not None and watchdog_action not in WATCHDOG_ACTIONS:
        raise LabError(f"watchdog action {watchdog_action!r}: one of {', '.join(WATCHDOG_ACTIONS)}")
    name = f"lab.guest.{ram}" + (f".wd-{watchdog_action}" if watchdog_action else "")
    found = [f for f in conn.compute.flavors() if f.name == name]
    if found:
        return found[0]
    made = conn.compute.create_flavor(name=name, ram=ram, vcpus=1, disk=0)
    specs = {SPEC: "qemu", **({"hw:watchdog_action": watchdog_action} if watchdog_action else {})}
    conn.compute.create_flavor_extra_specs(made, specs)
    return made


def boot(conn, name: str, flavor_id: str, host: str | None = None, timeout: float = 120):
    """Boot a real guest and wait until nova says ACTIVE and the guest printed its ready line."""
    from tests.lab.nova_env import IMAGE_ID
    server = conn.compute.create_server(name=name, flavor_id=flavor_id, image_id=IMAGE_ID, networks="none",
                                        **({"host": host} if host else {}))
    server = conn.compute.wait_for_server(server, status="ACTIVE", interval=0.3, wait=timeout)
    wait_ready(server.id, timeout=timeout)
    return server


@dataclasses.dataclass(frozen=True)
class Where:
    host: str
    console_log: pathlib.Path
    command_socket: pathlib.Path


def connect(host: str):
    """A libvirt connection to host's libvirtd (the caller closes it)."""
    try:
        return _libvirt().open(libvirtd.uri(host))
    except _libvirt().libvirtError as e:
        raise LabError(f"{host}: libvirtd does not answer: {e.get_error_message()}") from None


def find(uuid: str, host: str | None = None) -> Where:
    """Where the server's domain is defined (the one running first, when an evacuation left one elsewhere)."""
    libvirt = _libvirt()
    found = []
    for h in [host] if host else [p.parent.name for p in libvirtd.BASE.glob("*/libvirt-sock")]:
        try:
            conn = libvirt.open(libvirtd.uri(h))
        except libvirt.libvirtError:
            continue                                     # a node that is down holds nothing we can reach
        try:
            dom = conn.lookupByUUIDString(uuid)
            root = ET.fromstring(dom.XMLDesc())
            paths = {int(s.find("target").get("port")): s.find("source").get("path")
                     for s in root.iter("serial") if s.find("source") is not None}
            found.append((not dom.isActive(), Where(h, pathlib.Path(paths[0]), pathlib.Path(paths[1]))))
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()
    if not found:
        raise LabError(f"no domain {uuid} on any lab libvirtd" + (f" ({host})" if host else ""))
    return sorted(found, key=lambda f: f[0])[0][1]


def state(uuid: str, host: str | None = None) -> tuple[str, int]:
    """The domain's libvirt state name and reason code (e.g. ("crashed", 1) = VIR_DOMAIN_CRASHED_PANICKED)."""
    where = find(uuid, host)
    conn = connect(where.host)
    try:
        st, reason = conn.lookupByUUIDString(uuid).state()
    finally:
        conn.close()
    return STATES.get(st, str(st)), reason


def console_log(uuid: str, host: str | None = None) -> pathlib.Path:
    return find(uuid, host).console_log


def qemu_pid(uuid: str, host: str | None = None) -> int | None:
    """The pid of the domain's qemu (as this machine sees it), None when it does not run."""
    where = find(uuid, host)
    node = topology.Node(int(where.host.removeprefix("compute")))
    for pid in libvirtd.qemu_pids(node):
        try:
            if uuid.encode() in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def ready_lines(uuid: str, host: str | None = None) -> int:
    """How many times the guest printed its ready line (libvirt appends each boot to the same console log)."""
    try:
        return find(uuid, host).console_log.read_text(errors="replace").count(READY)
    except OSError:
        return 0


def wait_ready(uuid: str, host: str | None = None, timeout: float = 60, seen: int = 0) -> float:
    """Until the guest's qemu runs and it printed more than `seen` ready lines (ready_lines() before a restart:
    this boot's, not an earlier one's); seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            where = find(uuid, host)
            if qemu_pid(uuid, where.host) is not None and ready_lines(uuid, where.host) > seen:
                return time.monotonic() - t0
        except LabError:
            pass
        if time.monotonic() - t0 > timeout:
            raise LabError(f"guest {uuid} not ready after {timeout:g}s")
        time.sleep(0.1)


def inject(uuid: str, how: str, host: str | None = None) -> str:
    """watchdog: the guest stops petting its watchdog; panic: its kernel panics (pvpanic reports it); kill: SIGKILL
    its qemu; run: back to petting."""
    if how not in HOWS:
        raise LabError(f"unknown guest failure {how!r}: one of {', '.join(HOWS)}")
    where = find(uuid, host)
    if how == "kill":
        pid = qemu_pid(uuid, where.host)
        if pid is None:
            raise LabError(f"guest {uuid} on {where.host}: no qemu running")
        os.kill(pid, signal.SIGKILL)
        return f"guest {uuid} on {where.host}: qemu {pid} killed"
    import socket
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(where.command_socket))
            s.sendall(f"{how}\n".encode())
            time.sleep(0.1)                              # closing at once may drop the line in qemu's chardev
    except OSError as e:
        raise LabError(f"guest {uuid} on {where.host}: command socket {where.command_socket}: {e}") from None
    return f"guest {uuid} on {where.host}: {how} sent"


def rss(uuid: str, host: str | None = None) -> int:
    """Resident memory of the guest's qemu, bytes."""
    pid = qemu_pid(uuid, host)
    return procs.rss(pid) if pid else 0
