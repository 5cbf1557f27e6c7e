"""One libvirtd per lab compute node, for real guests (`python -m tests.lab up --guests`).

A node's libvirtd runs inside the node (its network and UTS namespaces, its /run) in a mount namespace of its own,
where the lab's files are bound over /etc/libvirt (libvirtd.conf, qemu.conf: root, no cgroups, no namespaces, no
virtlogd), /etc/passwd and /etc/group (libvirtd resolves the `libvirt-qemu` user before it reads qemu.conf),
/etc/hosts (the node's own name, which libvirtd resolves at every domain start),
/var/lib/libvirt (the node's domain definitions: they survive the node's crash, as on a real host) and
/var/log/libvirt. /var/cache/libvirt is one folder for every node and every lab (LAB_DIR/cache/libvirt): qemu's
capability probe (~7 s) runs once. libvirtd runs under `tini -s`: the qemus it double-forks are reparented to tini,
which reaps them at once (the machine's PID 1 is 1-2 s late, which would delay every STOPPED event), and they are
the node's processes: a crash of the node (kill) takes libvirtd and every qemu with it.

The socket is RUN_DIR/libvirt/<node>/libvirt-sock; the URI `qemu:///system?socket=<that>` (uri()).
"""
from __future__ import annotations

import pathlib
import signal
import time

from tests.lab import netns
from tests.lab.netns import LabError
from tests.lab.topology import LAB_DIR, LOG_DIR, RUN_DIR, Node

BASE = RUN_DIR / "libvirt"
CACHE = LAB_DIR / "cache" / "libvirt"
#: mount points libvirtd's paths need on the host (Debian's libvirt-daemon-system would make them; empty here)
MOUNT_POINTS = ("/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt")
QEMU_USER = "libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n"
QEMU_GROUP = "libvirt-qemu:x:64055:\n"
QEMU_CONF = """# written by tests/lab/libvirtd.py
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""


def folder(n: Node) -> pathlib.Path:
    return BASE / n.name


def socket_path(n: Node | str) -> pathlib.Path:
    return BASE / (n if isinstance(n, str) else n.name) / "libvirt-sock"


def uri_template() -> str:
    """The libvirt URI of every node, {host} standing for its nova host (== node name in the lab)."""
    return f"qemu:///system?socket={BASE}/{{host}}/libvirt-sock"


def uri(n: Node | str) -> str:
    return uri_template().replace("{host}", n if isinstance(n, str) else n.nova_host)


def guest_dir(host: str) -> pathlib.Path:
    """Console logs and command sockets of the host's guests (the nova box's driver puts them there)."""
    return BASE / host / "guests"


def _record(n: Node) -> str:
    return f"libvirtd-{n.name}"


def _write_config(n: Node) -> pathlib.Path:
    base = folder(n)
    etc = base / "etc"
    for d in (etc, base / "lib", base / "guests", LOG_DIR / f"libvirt-{n.name}", CACHE):
        d.mkdir(parents=True, exist_ok=True)
    (etc / "libvirtd.conf").write_text(
        "# written by tests/lab/libvirtd.py\n"
        f'unix_sock_dir = "{base}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\nunix_sock_rw_perms = "0700"\n'
        f'log_outputs = "3:file:{LOG_DIR / f"libvirt-{n.name}" / "libvirtd.log"}"\n'
        "keepalive_interval = 2\nkeepalive_count = 3\n")
    (etc / "qemu.conf").write_text(QEMU_CONF)
    passwd, group = pathlib.Path("/etc/passwd").read_text(), pathlib.Path("/etc/group").read_text()
    (base / "passwd").write_text(passwd if "\nlibvirt-qemu:" in "\n" + passwd else passwd + QEMU_USER)
    (base / "group").write_text(group if "\nlibvirt-qemu:" in "\n" + group else group + QEMU_GROUP)
    # its own hostname resolves without DNS (there is none from a node: each domain start would wait ~10 s for it)
    (base / "hosts").write_text(pathlib.Path("/etc/hosts").read_text() + f"{n.address} {n.name}\n")
    return base


def start(n: Node, timeout: float = 30) -> float:
    """Start the node's libvirtd (no-op if it runs) and wait until its socket answers; returns the seconds it took."""
    rec = netns.read_record(_record(n))
    if netns.alive(rec):
        return 0.0
    t0 = time.monotonic()
    base = _write_config(n)
    for p in MOUNT_POINTS + ("/etc/libvirt",):
        pathlib.Path(p).mkdir(parents=True, exist_ok=True)
    sock = socket_path(n)
    sock.unlink(missing_ok=True)
    log_dir = LOG_DIR / f"libvirt-{n.name}"
    setup = " && ".join([
        f"mount --bind {base / 'etc'} /etc/libvirt",
        f"mount --bind {base / 'passwd'} /etc/passwd", f"mount --bind {base / 'group'} /etc/group",
        f"mount --bind {base / 'hosts'} /etc/hosts",
        f"mount --bind {base / 'lib'} /var/lib/libvirt", f"mount --bind {log_dir} /var/log/libvirt",
        f"mount --bind {CACHE} /var/cache/libvirt", "mkdir -p /run/libvirt",
        "exec tini -s -- libvirtd"])
    argv = netns.nsenter_argv(n, ["unshare", "--mount", "--propagation", "private", "sh", "-ec", setup])
    rec = netns.spawn(_record(n), argv, env=netns.BASE_ENV, log_path=log_dir / "libvirtd.stdout")
    limit = time.monotonic() + timeout
    while not _answers(sock):
        if not netns.alive(rec):
            raise LabError(f"{n.name}: libvirtd exited (see {log_dir})")
        if time.monotonic() > limit:
            raise LabError(f"{n.name}: libvirtd not answering on {sock} after {timeout:g}s (see {log_dir})")
        time.sleep(0.05)
    return time.monotonic() - t0


def _answers(sock: pathlib.Path) -> bool:
    if not sock.exists():
        return False
    import libvirt
    libvirt.registerErrorHandler(lambda *a: None, None)   # errors are raised; not printed on stderr too
    try:
        conn = libvirt.open(f"qemu:///system?socket={sock}")
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def running(n: Node) -> bool:
    return netns.alive(netns.read_record(_record(n)))


def _tree(pid: int) -> list[int]:
    """pid's descendants, deepest first."""
    out: list[int] = []
    for child in netns.children_of(pid):
        out += _tree(child) + [child]
    return out


def qemu_pids(n: Node) -> list[int]:
    rec = netns.read_record(_record(n))
    if not netns.alive(rec):
        return []
    return [p for p in _tree(rec["pid"]) if netns.proc_name(p).startswith("qemu-system")]


def kill(n: Node) -> bool:
    """The node dies: SIGKILL its libvirtd, tini and every qemu at once (no domain shuts down). False if none ran."""
    rec = netns.read_record(_record(n))
    if not netns.alive(rec):
        return False
    victims = [netns.record_of(p) for p in _tree(rec["pid"])] + [rec]
    for r in victims:
        netns.signal_rec(r, signal.SIGKILL)
    netns.wait_dead(victims, 10)
    for r in victims:
        if r:
            netns._reap(r["pid"])
    return True


def stop(n: Node, timeout: float = 5) -> None:
    """`lab down`: every domain destroyed (its qemu killed), then libvirtd stopped (SIGTERM, SIGKILL after timeout)."""
    rec = netns.read_record(_record(n))
    if not netns.alive(rec):
        return
    qemus = [netns.record_of(p) for p in qemu_pids(n)]
    for r in qemus:
        netns.signal_rec(r, signal.SIGKILL)
    netns.wait_dead(qemus, 5)
    netns.stop_recs([rec] + [netns.record_of(p) for p in _tree(rec["pid"])], timeout)


def start_all(nodes: list[Node]) -> dict[str, float]:
    """Every node's libvirtd, one after the other: the first may probe qemu (~7 s, once per cache), then ~0.1 s."""
    return {n.name: start(n) for n in nodes}


def stop_all() -> None:
    for path in sorted(BASE.glob("*/etc")) if BASE.exists() else []:
        name = path.parent.name
        if name.startswith("compute") and name[7:].isdigit():
            stop(Node(int(name[7:])))
