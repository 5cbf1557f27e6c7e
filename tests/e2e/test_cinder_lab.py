"""The lab's real cinder (cinder-api, -scheduler, -volume on the lab's RabbitMQ, the file volume driver) and nova
using it: boot from a volume, attach a second one, attachments on the server's host, a marker in the volume file;
crashup's own configuration reaches it; a killed cinder-volume goes down and comes back; `lab down` leaves no cinder."""
import pathlib
import subprocess
import sys
import time

import pytest

from tests.lab import topology
from tests.lab.volumes import Volumes

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def vols(lab):
    return Volumes.lab()


@pytest.fixture
def clean(lab, vols):
    """Servers and volumes made by a test are deleted after it (servers first: their volumes are in use)."""
    yield
    servers = vols.nova("GET", "/servers?all_tenants=1")["servers"]
    for s in servers:
        vols.nova("DELETE", f"/servers/{s['id']}")
    limit = time.monotonic() + 120
    while vols.nova("GET", "/servers?all_tenants=1")["servers"] and time.monotonic() < limit:
        time.sleep(0.3)
    for v in vols.list():
        vols.delete(v["id"])


def test_boot_from_volume_and_a_second_volume_attached_on_the_servers_host(lab, vols, clean):
    root = vols.create(bootable=True, name="root")
    assert root["bootable"] == "true" and vols.path(root["id"]).exists()
    bfv = vols.boot_from_volume("bfv", root["id"], host="compute1")
    assert bfv["image"] == "" and bfv["OS-EXT-SRV-ATTR:host"] == "compute1"
    plain = vols.boot("with-data", host="compute2")
    data = vols.create(name="data")
    vols.attach(plain["id"], data["id"])
    for volume, server, host in ((root, bfv, "compute1"), (data, plain, "compute2")):
        [att] = vols.attachments(volume["id"])
        # the connector's host of nova's fake driver is the compute's own name: what crashup compares after an
        # evacuation
        assert (att["server_id"], att["host_name"]) == (server["id"], host)
        [record] = vols.attachment_records(volume["id"])
        assert record["status"] == "attached" and record["connection_info"]["device_path"] == \
            str(vols.path(volume["id"]))
        assert [a["volumeId"] for a in vols.server_volumes(server["id"])] == [volume["id"]]
        vols.write_marker(volume["id"], f"marker of {volume['id']}")
        assert vols.read_marker(volume["id"]) == f"marker of {volume['id']}"
    assert vols.get(root["id"])["status"] == vols.get(data["id"])["status"] == "in-use"


def test_crashups_configuration_reaches_the_lab_cinder(lab, vols, clean):
    from crashup_lib import config
    from crashup_lib.cinder import CinderApi
    cfg = config.load(str(lab.CRASHUP_CONF), env={})
    api = CinderApi.from_config(cfg)
    volume = vols.create(name="seen-by-crashup")
    seen = api.volume(volume["id"])
    assert seen is not None and seen.id == volume["id"] and seen.status == "available"
    assert seen.host == f"{topology.CONTROLLER}@lab#lab"
    assert api.volume("00000000-0000-0000-0000-000000000000") is None
    assert lab.read_state()["cinder_db"] == f"sqlite:///{lab.CINDER_STATE / 'cinder.sqlite'}"


def _gone(pid: int) -> bool:
    """No such process, or a zombie (a service `lab up` started in this process, killed by another one)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def _lab(*args):
    return subprocess.run([sys.executable, "-m", "tests.lab", *args], capture_output=True, text=True, timeout=120)


def test_cinder_volume_killed_goes_down_and_comes_back(lab, vols, clean):
    block = lab.cinder()
    before = block.pid("volume")
    assert before is not None
    out = _lab("fail", "cinder-volume", "--how", "kill")
    assert out.returncode == 0 and "killed" in out.stdout, out.stderr
    assert block.pid("volume") is None and _gone(before)
    block.wait_service("volume", up=False, timeout=30)            # its heartbeat stopped: cinder says down
    assert "cinder-volume stopped" in _lab("status").stdout
    out = _lab("fail", "cinder-volume", "--how", "start")
    assert out.returncode == 0 and "started" in out.stdout, out.stderr
    block.wait_service("volume", up=True, timeout=30)
    volume = vols.create(name="after-restart")                    # the restarted service serves requests again
    assert vols.path(volume["id"]).exists()


def _listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state (any address, v4 and v6): /proc/net/tcp*, state 0A."""
    ports = set()
    for name in ("tcp", "tcp6"):
        for line in pathlib.Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_lab_down_leaves_no_cinder_behind(lab):
    """Last in this module: it takes the lab down (the module's fixture then finds it down)."""
    block = lab.cinder()
    pids = block.pids()
    assert set(pids) == {"api", "scheduler", "volume"}
    groups = set(pids.values())
    lab.down(quiet=True)
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            pgid = int((proc / "stat").read_text().rsplit(")", 1)[-1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        assert b"cinderbox/run.py" not in cmdline, cmdline
        assert pgid not in groups, (proc.name, cmdline)
    assert topology.CINDER_API_PORT not in _listening_ports()
    assert not lab.CINDER_STATE.exists()
    assert (topology.LOG_DIR / "cinder" / "cinder-volume.log").exists()      # logs stay
