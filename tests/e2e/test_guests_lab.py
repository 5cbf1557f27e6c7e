"""Real guests in the lab (`lab up --guests`): a qemu domain per server of a lab:guest=qemu flavor on its node's
libvirtd, the guest failures tests/lab/guests.py injects seen as the libvirt events crashup's guest monitor will
subscribe to (watched here with libvirt-python, as the monitor would), nova acting on the real domain (lifecycle
events, HARD reboot, start), and an evacuation landing a real domain on the other node. Prints what it measures."""
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from tests.e2e.scenario import own_lab

pytestmark = pytest.mark.lab

libvirt = pytest.importorskip("libvirt")


@pytest.fixture(scope="module")
def lab():
    yield from own_lab(2, "--guests", guests=True)


class Events:
    """libvirt events of one node's libvirtd, as a guest monitor sees them: lifecycle and watchdog."""
    _loop_started = False

    def __init__(self, host):
        if not Events._loop_started:
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=self._loop, daemon=True).start()
            Events._loop_started = True
        from tests.lab import libvirtd
        self.conn = libvirt.open(libvirtd.uri(host))
        self.seen = []                                   # (monotonic, uuid, kind, a, b)
        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on, "lifecycle")
        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._on_watchdog, None)

    @staticmethod
    def _loop():
        while True:
            libvirt.virEventRunDefaultImpl()

    def _on(self, conn, dom, event, detail, kind):
        self.seen.append((time.monotonic(), dom.UUIDString(), kind, event, detail))

    def _on_watchdog(self, conn, dom, action, opaque):
        self.seen.append((time.monotonic(), dom.UUIDString(), "watchdog", action, None))

    def wait(self, uuid, kind, a, b=None, since=0.0, timeout=30):
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            for e in list(self.seen):
                if e[0] >= since and e[1] == uuid and e[2] == kind and e[3] == a and (b is None or e[4] == b):
                    return e[0] - since
            time.sleep(0.02)
        raise AssertionError(f"no {kind} event {a}/{b} of {uuid} in {timeout}s; seen: {self.seen}")

    def after(self, uuid, how, kind, a, b=None, timeout=30):
        """Seconds from injecting `how` into the guest to its event."""
        from tests.lab import guests
        t0 = time.monotonic()
        guests.inject(uuid, how)
        return self.wait(uuid, kind, a, b, since=t0, timeout=timeout)

    def close(self):
        self.conn.close()


@pytest.fixture(scope="module")
def guest(lab):
    """One real guest on compute1 with a watchdog that only reports (action none)."""
    from tests.lab import guests
    conn = lab.connection()
    flavor = guests.flavor(conn, watchdog_action="none")
    t0 = time.monotonic()
    server = guests.boot(conn, "real-1", flavor.id, host="compute1")
    print(f"\nreal guest: boot to ACTIVE and ready {time.monotonic() - t0:.1f}s, "
          f"qemu RSS {guests.rss(server.id) / 2**20:.0f} MiB")
    return server


def wait_server(conn, server, status, timeout=60):
    limit = time.monotonic() + timeout
    while True:
        s = conn.compute.get_server(server.id)
        if s.status == status and not s.task_state:
            return s
        assert time.monotonic() < limit, f"{server.id}: {s.status}/{s.task_state}, not {status}, after {timeout}s"
        time.sleep(0.3)


def test_a_real_guest_is_a_domain_on_its_nodes_libvirtd(lab, guest):
    from tests.lab import guests, libvirtd
    conn = lab.connection()
    server = conn.compute.get_server(guest.id)
    assert server.compute_host == "compute1"
    c = libvirt.open(libvirtd.uri("compute1"))
    try:
        dom = c.lookupByUUIDString(guest.id)
        assert dom.name() == server.instance_name
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        root = ET.fromstring(dom.XMLDesc())
    finally:
        c.close()
    assert root.get("type") == "qemu"
    assert root.find("devices/watchdog").attrib == {"model": "i6300esb", "action": "none"}
    assert root.find("devices/panic").get("model") == "isa"
    assert root.findtext("on_crash") == "preserve"
    assert guests.state(guest.id) == ("running", libvirt.VIR_DOMAIN_RUNNING_BOOTED)
    view = lab.nova().control("GET", "computes/compute1/guests")
    assert view["power_states"][guest.id] == "running"
    c2 = libvirt.open(libvirtd.uri("compute2"))
    try:
        assert guest.id not in [d.UUIDString() for d in c2.listAllDomains()]
    finally:
        c2.close()


def test_nodes_reach_the_broker_with_the_labs_transport_url(lab):
    """crashup on a compute node (the guest monitor) reads the same crashup.conf: its URL names the bridge."""
    import sys
    import urllib.parse
    from tests.lab import pacemaker
    url = lab.TRANSPORT_URL_FILE.read_text().strip()
    assert urllib.parse.urlsplit(url).hostname == lab.topology.BRIDGE_ADDR
    probe = ("import kombu, sys; c = kombu.Connection(sys.stdin.read().strip().replace('rabbit://', 'amqp://', 1), "
             "connect_timeout=5, transport_options={'max_retries': 0}); c.connect(); print('connected'); c.release()")
    for n in lab.nodes():
        got = pacemaker.run_in_node(n, [sys.executable, "-c", probe], input=url)
        assert (got.returncode, got.stdout.strip()) == (0, "connected"), got.stderr[-500:]
    assert lab.guest_options()["guest_libvirt_uri"] == lab.libvirtd.uri_template()


def test_a_flavor_without_the_spec_stays_fake(lab):
    from tests.lab import guests
    from tests.lab.nova_env import IMAGE_ID
    conn = lab.connection()
    s = conn.compute.create_server(name="fake-1", flavor_id="1", image_id=IMAGE_ID, networks="none",
                                   host="compute1")
    s = conn.compute.wait_for_server(s, status="ACTIVE", interval=0.3, wait=60)
    with pytest.raises(guests.LabError):
        guests.find(s.id)
    assert s.id in lab.nova().guests("compute1")
    conn.compute.delete_server(s)
    conn.compute.wait_for_delete(s, interval=0.3, wait=60)


def test_watchdog_stops_being_petted_and_libvirt_reports_it(lab, guest):
    from tests.lab import guests
    events = Events("compute1")
    try:
        took = events.after(guest.id, "watchdog", "watchdog", libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE, timeout=20)
        print(f"\nwatchdog (action none): WATCHDOG event {took:.1f}s after the guest stopped petting")
        assert 3 < took < 12                             # heartbeat 5 s, petted every second before
        assert guests.state(guest.id)[0] == "running"   # action none: it only reports
    finally:
        guests.inject(guest.id, "run")
        events.close()


def test_panic_leaves_the_guest_crashed_and_nova_hard_reboot_brings_it_back(lab, guest):
    from tests.lab import guests
    events = Events("compute1")
    try:
        took = events.after(guest.id, "panic", "lifecycle", libvirt.VIR_DOMAIN_EVENT_CRASHED,
                            libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED)
        print(f"\npanic: CRASHED/PANICKED {took * 1000:.0f} ms after the command")
        assert guests.state(guest.id) == ("crashed", libvirt.VIR_DOMAIN_CRASHED_PANICKED)
        conn = lab.connection()
        old, seen = guests.qemu_pid(guest.id), guests.ready_lines(guest.id)
        t1 = time.monotonic()
        conn.compute.reboot_server(guest.id, "HARD")
        wait_server(conn, guest, "ACTIVE")
        ready = guests.wait_ready(guest.id, seen=seen)
        print(f"nova HARD reboot: ACTIVE and guest ready {time.monotonic() - t1:.1f}s after the request")
        assert guests.state(guest.id)[0] == "running"
        assert guests.qemu_pid(guest.id) not in (None, old)
        assert ready >= 0
    finally:
        events.close()


def test_killed_qemu_is_stopped_failed_and_nova_syncs_the_power_state(lab, guest):
    from tests.lab import guests
    events = Events("compute1")
    conn = lab.connection()
    try:
        t0 = time.monotonic()
        took = events.after(guest.id, "kill", "lifecycle", libvirt.VIR_DOMAIN_EVENT_STOPPED,
                            libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED)
        print(f"\nkill: STOPPED/FAILED {took * 1000:.0f} ms after SIGKILL")
        assert guests.state(guest.id)[0] == "shutoff"
        s = wait_server(conn, guest, "SHUTOFF", timeout=30)        # nova's own lifecycle-event sync stopped it
        print(f"nova: server SHUTOFF {time.monotonic() - t0:.1f}s after the kill")
        assert s.power_state == 4                                  # nova's SHUTDOWN
        seen = guests.ready_lines(guest.id)
        conn.compute.start_server(guest.id)
        wait_server(conn, guest, "ACTIVE")
        guests.wait_ready(guest.id, seen=seen)
        assert guests.state(guest.id)[0] == "running"
    finally:
        events.close()


def test_evacuation_lands_the_real_guest_on_the_other_node(lab, guest):
    from tests.lab import guests, libvirtd
    conn = lab.connection()
    events = Events("compute2")
    try:
        t0 = time.monotonic()
        lab.fail(lab.node("compute1"), "crash")               # crashup's recovery (mode auto) evacuates it
        assert not libvirtd.running(lab.node("compute1")) and not libvirtd.qemu_pids(lab.node("compute1"))
        limit = time.monotonic() + 240
        while conn.compute.get_server(guest.id).compute_host != "compute2":
            assert time.monotonic() < limit, f"not evacuated: {conn.compute.get_server(guest.id)}"
            time.sleep(1)
        wait_server(conn, guest, "ACTIVE", timeout=120)
        guests.wait_ready(guest.id, host="compute2")
        print(f"\nevacuation: guest ready on compute2 {time.monotonic() - t0:.1f}s after compute1 crashed")
        events.wait(guest.id, "lifecycle", libvirt.VIR_DOMAIN_EVENT_STARTED, since=t0, timeout=5)
        assert guests.state(guest.id, host="compute2")[0] == "running"
        lab.wait_rejoined(lab.node("compute1"), timeout=240)
        assert libvirtd.running(lab.node("compute1"))            # the node booted: its libvirtd is back
        limit = time.monotonic() + 60                            # nova-compute's init_host destroys the source
        while True:
            try:
                guests.find(guest.id, host="compute1")
            except guests.LabError:
                break
            assert time.monotonic() < limit, "the evacuated source domain is still defined on compute1"
            time.sleep(0.5)
    finally:
        events.close()
