"""Issue 16 end to end: crashup's guest monitor as Pacemaker runs it (crashup-guests-clone on each compute node,
from `crashup pcs render`) against real qemu guests (`lab up --guests --guest-monitor`).

Each failure is injected into a real guest (tests/lab/guests.py); the test listens to the node's libvirt itself (as
the monitor does) and compares the moment libvirt reported the failure with the guest_failed event in the lab's
journal (the node's monitor reads the lab's crashup.conf: same journal). Then what each policy asks is checked on
the guest (its console's ready line) and on nova. At most two guests live at once; each test deletes its own.
"""
import datetime
import os
import pathlib
import signal
import time

import pytest

from crashup_lib import events
from tests.e2e.scenario import own_lab

pytestmark = pytest.mark.lab

libvirt = pytest.importorskip("libvirt")

POLICY_KEY = "crashup:guest_failure_policy"
GOAL = 1.0                  # seconds from libvirt's report to the event in the journal
MAX_REBOOTS = 3             # the lab's crashup.conf leaves [guests] guest_max_reboots at its default


@pytest.fixture(scope="module")
def lab():
    yield from own_lab(2, "--guest-monitor", guest_monitor=True)


@pytest.fixture(scope="module")
def tap(lab):
    """The lab's bus, when its crashup publishes there: every notification, from before the first failure."""
    from tests.e2e.scenario import BusTap
    if not lab.bus_options():
        yield None
        return
    t = BusTap(lab, {"e2e-guests": ["notifications.*"]}).start()
    yield t
    t.stop()


# --- what the tests and bench/guests.py share ----------------------------------------------------------------------

class LibvirtWatch:
    """A node's libvirt events as the guest monitor sees them (test_guests_lab.Events), with wall-clock times:
    comparable with the journal's."""

    def __init__(self, host):
        from tests.e2e.test_guests_lab import Events
        self.events = Events(host)

    def wait(self, uuid, what, since, timeout=30):
        """time.time() of the first event `what` (REPORT's key) of uuid after since (a time.time())."""
        offset = time.time() - time.monotonic()
        return since + self.events.wait(uuid, *REPORT[what], since=since - offset, timeout=timeout)

    def close(self):
        try:
            self.events.close()
        except libvirt.libvirtError:
            pass


#: how libvirt reports each injected failure (tests/lab/guests.py inject), and the kind crashup names it
REPORT = {"watchdog": ("watchdog", libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE, None),
          "panic": ("lifecycle", libvirt.VIR_DOMAIN_EVENT_CRASHED, libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED),
          "kill": ("lifecycle", libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED)}
KIND = {"watchdog": "watchdog", "panic": "panic", "kill": "killed"}


def epoch(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def journal_events(lab, uuid, type_=None, since=0.0):
    return [e for e in events.read(str(lab.JOURNAL), warn=False)
            if e["subject"] == uuid and (type_ is None or e["type"] == type_) and epoch(e["time"]) >= since]


def wait_event(lab, uuid, type_, since, timeout=30):
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        found = journal_events(lab, uuid, type_, since)
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no {type_} of {uuid} in the journal {timeout}s after the failure; its events: "
                         f"{[(e['type'], e['payload'].get('action')) for e in journal_events(lab, uuid)]}")


def boot_guest(lab, name, host, policy):
    """A real guest (watchdog action none) on host with server metadata POLICY_KEY=policy, running and ready."""
    from tests.lab import guests
    conn = lab.connection()
    flavor = guests.flavor(conn, watchdog_action="none")
    server = guests.boot(conn, name, flavor.id, host=host)
    conn.compute.set_server_metadata(server, **{POLICY_KEY: policy})
    return server.id


def delete_guest(lab, uuid):
    conn = lab.connection()
    try:
        conn.compute.delete_server(uuid)
        conn.compute.wait_for_delete(conn.compute.get_server(uuid), interval=0.3, wait=120)
    except Exception as e:                         # noqa: BLE001 - gone already
        if "NotFound" not in type(e).__name__:
            raise


def wait_server(lab, uuid, status, timeout=60):
    conn = lab.connection()
    limit = time.monotonic() + timeout
    while True:
        s = conn.compute.get_server(uuid)
        if s.status == status and not s.task_state:
            return s
        assert time.monotonic() < limit, f"{uuid}: nova says {s.status}/{s.task_state}, not {status}, after {timeout}s"
        time.sleep(0.2)


def fail(lab, watch, uuid, how, timeout=30):
    """Inject `how` into the guest: (libvirt's report time, the guest_failed event in the journal)."""
    from tests.lab import guests
    t0 = time.time()
    guests.inject(uuid, how)
    reported = watch.wait(uuid, how, t0, timeout)
    return reported, wait_event(lab, uuid, events.INSTANCE_GUEST_FAILED, t0, timeout)


def monitor_pids(node_name):
    """The guest monitors running for node_name (crashup guests --daemon --node NAME), by their command line."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            args = pathlib.Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"crashup_lib.cli" in args and b"--daemon" in args and b"guests" in args and \
                b"--node" in args and node_name.encode() in args:
            found.append(int(d))
    return found


# --- the tests ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def looping(lab):
    """A guest of policy reboot on compute1, shared by the reboot test and the crash-loop test after it."""
    uuid = boot_guest(lab, "gm-reboot", "compute1", "reboot")
    yield uuid
    delete_guest(lab, uuid)


def test_the_monitor_runs_as_the_pacemaker_clone_on_each_compute_node(lab):
    from tests.lab import pacemaker
    st = pacemaker.status(fencing=False)
    for n in lab.nodes():
        assert lab.clone_running(st, lab.GUEST_MONITOR, n), n.name
        assert len(monitor_pids(n.name)) == 1, (n.name, monitor_pids(n.name))


def test_reboot_policy_brings_back_a_watchdog_a_panic_and_a_killed_qemu(lab, tap, looping):
    from tests.lab import guests
    watch = LibvirtWatch("compute1")
    try:
        for attempt, how in enumerate(("watchdog", "panic", "kill"), 1):
            seen, old = guests.ready_lines(looping), guests.qemu_pid(looping)
            reported, e = fail(lab, watch, looping, how)
            late = epoch(e["time"]) - reported
            p = e["payload"]
            print(f"\n{how}: guest_failed {late * 1000:.0f} ms after libvirt's report "
                  f"(monitor's own part {(epoch(e['time']) - epoch(p['reported_at'])) * 1000:.0f} ms)", end="")
            assert (p["kind"], p["action"], p["policy"], p["policy_source"], p["attempt"], p["seen"], p["host"]) == \
                (KIND[how], "reboot", "reboot", "server metadata", attempt, "event", "compute1"), p
            assert late <= GOAL, f"{how}: the event came {late:.2f}s after libvirt's report"
            t1 = time.time()
            guests.wait_ready(looping, seen=seen, timeout=60)
            print(f"; ready again {time.time() - reported:.1f}s after the report", end="")
            s = wait_server(lab, looping, "ACTIVE")
            assert s.power_state == 1 and s.compute_host == "compute1"
            assert guests.state(looping)[0] == "running" and guests.qemu_pid(looping) not in (None, old)
            assert t1 - reported < 30
            if tap is not None:
                limit = time.monotonic() + 10
                while tap.first(events.INSTANCE_GUEST_FAILED, looping) is None and time.monotonic() < limit:
                    time.sleep(0.1)
                assert tap.first(events.INSTANCE_GUEST_FAILED, looping) is not None, tap.errors[-3:]
        # a killed guest's delayed STOPPED (nova's driver: 15 s) was cancelled by the reboot: nova keeps it ACTIVE
        time.sleep(16)
        assert wait_server(lab, looping, "ACTIVE", timeout=1).power_state == 1
    finally:
        watch.close()


def test_a_crash_looping_guest_is_left_down_with_an_error_event(lab, looping):
    from tests.lab import guests
    watch = LibvirtWatch("compute1")
    try:
        seen = guests.ready_lines(looping)
        before = journal_events(lab, looping, events.INSTANCE_GUEST_FAILED)
        assert [e["payload"]["action"] for e in before] == ["reboot"] * MAX_REBOOTS, "the reboot test ran first"
        reported, e = fail(lab, watch, looping, "panic")
        assert (e["payload"]["action"], e["payload"]["attempt"]) == ("leave_down", MAX_REBOOTS)
        assert epoch(e["time"]) - reported <= GOAL
        down = wait_event(lab, looping, events.INSTANCE_GUEST_LEFT_DOWN, reported - 1)
        assert (down["payload"]["kind"], down["payload"]["reboots"], down["payload"]["window_s"]) == \
            ("panic", MAX_REBOOTS, 3600), down["payload"]
        s = wait_server(lab, looping, "SHUTOFF", timeout=30)
        print(f"\ncrash loop: left down, nova SHUTOFF {time.time() - reported:.1f}s after the 4th failure")
        assert s.power_state == 4
        time.sleep(5)                                    # no further reboot
        assert guests.state(looping)[0] == "shutoff" and guests.qemu_pid(looping) is None
        assert guests.ready_lines(looping) == seen
        assert len(journal_events(lab, looping, events.INSTANCE_GUEST_FAILED)) == MAX_REBOOTS + 1
    finally:
        watch.close()


def test_notify_tells_and_leaves_the_guest_to_nova_and_none_says_nothing(lab):
    from tests.lab import guests
    uuid = boot_guest(lab, "gm-notify", "compute1", "notify")
    watch = LibvirtWatch("compute1")
    conn = lab.connection()
    try:
        # watchdog (action none): told; the guest runs on
        reported, e = fail(lab, watch, uuid, "watchdog")
        assert (e["payload"]["kind"], e["payload"]["action"], e["payload"]["policy"]) == ("watchdog", "notify",
                                                                                        "notify")
        assert epoch(e["time"]) - reported <= GOAL
        guests.inject(uuid, "run")
        assert guests.state(uuid)[0] == "running"
        assert wait_server(lab, uuid, "ACTIVE", timeout=1)
        # panic: told; crashup does nothing to it; nova's view afterwards
        pid = guests.qemu_pid(uuid)
        reported, e = fail(lab, watch, uuid, "panic")
        assert (e["payload"]["kind"], e["payload"]["action"]) == ("panic", "notify")
        assert epoch(e["time"]) - reported <= GOAL
        time.sleep(3)
        s = conn.compute.get_server(uuid)
        print(f"\nnotify, panic: libvirt {guests.state(uuid)}, nova {s.status}/{s.task_state} power {s.power_state} "
              "3 s after", end="")
        assert guests.state(uuid) == ("crashed", libvirt.VIR_DOMAIN_CRASHED_PANICKED)
        assert guests.qemu_pid(uuid) == pid                                    # not rebooted
        # nova's libvirt driver turns no CRASHED lifecycle event into a power-state change (only its periodic sync,
        # every 10 min by default, would find the domain crashed and stop the server): nova still says running
        assert (s.status, s.task_state, s.power_state) == ("ACTIVE", None, 1)
        # back to running for the kill: the operator's HARD reboot
        seen = guests.ready_lines(uuid)
        conn.compute.reboot_server(uuid, "HARD")
        guests.wait_ready(uuid, seen=seen)
        wait_server(lab, uuid, "ACTIVE")
        # killed qemu: told; nova's own power sync stops it ~15 s later (its driver's delayed STOPPED)
        reported, e = fail(lab, watch, uuid, "kill")
        assert (e["payload"]["kind"], e["payload"]["action"]) == ("killed", "notify")
        assert epoch(e["time"]) - reported <= GOAL
        s = wait_server(lab, uuid, "SHUTOFF", timeout=40)
        print(f"; kill: nova SHUTOFF {time.time() - reported:.1f}s after libvirt's report", end="")
        assert s.power_state == 4 and time.time() - reported > 10
        assert len(journal_events(lab, uuid, events.INSTANCE_GUEST_FAILED, reported - 1)) == 1
        # none: not a word, whatever fails
        conn.compute.set_server_metadata(uuid, **{POLICY_KEY: "none"})
        seen = guests.ready_lines(uuid)
        conn.compute.start_server(uuid)
        guests.wait_ready(uuid, seen=seen)
        wait_server(lab, uuid, "ACTIVE")
        t0 = time.time()
        guests.inject(uuid, "panic")
        watch.wait(uuid, "panic", t0)
        time.sleep(3)
        assert journal_events(lab, uuid, since=t0) == []
        assert guests.state(uuid)[0] == "crashed"
    finally:
        watch.close()
        delete_guest(lab, uuid)


def test_a_panic_while_the_monitor_is_down_is_rebooted_after_pacemaker_restarts_it(lab):
    from tests.lab import guests, pacemaker
    uuid = boot_guest(lab, "gm-gap", "compute1", "reboot")
    watch = LibvirtWatch("compute1")
    try:
        [old] = monitor_pids("compute1")
        seen = guests.ready_lines(uuid)
        t0 = time.time()
        os.kill(old, signal.SIGKILL)                      # Pacemaker's monitor (every 5 s) finds it gone
        guests.inject(uuid, "panic")
        reported = watch.wait(uuid, "panic", t0)
        assert monitor_pids("compute1") == []
        e = wait_event(lab, uuid, events.INSTANCE_GUEST_FAILED, t0, timeout=60)
        p = e["payload"]
        print(f"\nmonitor killed, panic in the gap: rebooted by the restarted monitor's reconcile "
              f"{epoch(e['time']) - reported:.1f}s after the panic", end="")
        assert (p["kind"], p["action"], p["seen"], p["attempt"]) == ("panic", "reboot", "reconcile", 1), p
        assert [pid for pid in monitor_pids("compute1") if pid != old]
        guests.wait_ready(uuid, seen=seen)
        wait_server(lab, uuid, "ACTIVE")
        pacemaker.tool(["crm_resource", "--cleanup", "--resource", lab.GUEST_MONITOR], check=False, timeout=60)

        # libvirtd restarted under the running monitor (its guests die with it here): the monitor reconnects,
        # reconciles, and a later failure is still seen as an event
        from tests.lab import libvirtd
        watch.close()
        node = lab.node("compute1")
        seen = guests.ready_lines(uuid)
        t1 = time.time()
        libvirtd.kill(node)
        libvirtd.start(node)
        e = wait_event(lab, uuid, events.INSTANCE_GUEST_FAILED, t1, timeout=60)
        print(f"; libvirtd restarted: {e['payload']['kind']} ({e['payload']['detail']}) seen by "
              f"{e['payload']['seen']}, {e['payload']['action']} {epoch(e['time']) - t1:.1f}s after", end="")
        assert (e["payload"]["seen"], e["payload"]["action"]) == ("reconcile", "reboot"), e["payload"]
        guests.wait_ready(uuid, seen=seen, timeout=60)
        wait_server(lab, uuid, "ACTIVE")
        watch = LibvirtWatch("compute1")
        seen = guests.ready_lines(uuid)
        reported, e = fail(lab, watch, uuid, "panic")
        assert (e["payload"]["seen"], e["payload"]["action"], e["payload"]["attempt"]) == ("event", "reboot", 3)
        assert epoch(e["time"]) - reported <= GOAL
        guests.wait_ready(uuid, seen=seen)
        wait_server(lab, uuid, "ACTIVE")
        assert len(monitor_pids("compute1")) == 1
    finally:
        watch.close()
        delete_guest(lab, uuid)


def test_guests_of_a_fenced_host_are_left_to_host_recovery(lab):
    from tests.e2e.scenario import assert_recovered_exactly_once
    from tests.lab import guests
    uuid = boot_guest(lab, "gm-fenced", "compute1", "reboot")
    node = lab.node("compute1")
    try:
        t0 = time.time()
        lab.fail(node, "crash")
        assert monitor_pids("compute1") == []            # the node's daemons die with it
        conn = lab.connection()
        limit = time.monotonic() + 180
        while conn.compute.get_server(uuid).compute_host != "compute2":
            assert time.monotonic() < limit, f"not evacuated: {conn.compute.get_server(uuid)}"
            time.sleep(1)
        wait_server(lab, uuid, "ACTIVE", timeout=120)
        guests.wait_ready(uuid, host="compute2")
        print(f"\nfenced host: guest ready on compute2 {time.time() - t0:.1f}s after compute1 crashed", end="")
        assert_recovered_exactly_once(lab, node, [uuid])
        lab.wait_rejoined(node, timeout=180)
        limit = time.monotonic() + 30                     # its monitor back, and reconciled with compute1's domains
        while len(monitor_pids("compute1")) != 1:
            assert time.monotonic() < limit, monitor_pids("compute1")
            time.sleep(0.5)
        time.sleep(3)
        assert journal_events(lab, uuid, events.INSTANCE_GUEST_FAILED, t0) == []
        assert journal_events(lab, uuid, events.INSTANCE_GUEST_LEFT_DOWN, t0) == []
        assert guests.state(uuid, host="compute2")[0] == "running"
        assert conn.compute.get_server(uuid).compute_host == "compute2"
    finally:
        delete_guest(lab, uuid)
