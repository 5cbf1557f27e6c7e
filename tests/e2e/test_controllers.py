"""Controller high availability in the real lab (issue 14): three Pacemaker controllers, each in its own namespaces
(tests/lab/controllers.py), fenced through their BMCs; crashup's recovery daemon on whichever one Pacemaker picks.

A controller lost in the middle of a compute host's recovery (crashed, cut off, all three restarted) costs the
recovery a few seconds, never a server evacuated twice, and the host rejoins only once its recovery is done."""
import json
import threading
import time

import pytest

from tests.e2e.scenario import (BusTap, GuestWatch, assert_recovered_exactly_once, boot, delete_servers,
                                evacuations, journal, wait_request)
from tests.lab import controllers, pacemaker, topology
from tests.lab import lab as lab_module
from tests.lab.netns import LabError, alive, record_of

pytestmark = pytest.mark.lab

SERVERS = 30                    # the figure: a controller lost while 30 servers are being evacuated


@pytest.fixture(scope="module")
def lab():
    """The lab with three controllers for this module (the one-controller lab's fixture is overridden)."""
    import os
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, Pacemaker)")
    if lab_module.read_state() or controllers.read_state():
        lab_module.down(quiet=True)
    lab_module.up(quiet=True, controllers=3)
    yield lab_module
    lab_module.down(quiet=True)


def wait(cond, timeout, what, interval=0.2):
    limit = time.monotonic() + timeout
    while True:
        try:
            got = cond()
        except LabError:
            got = None
        if got:
            return got
        if time.monotonic() > limit:
            raise AssertionError(f"not {what} after {timeout}s\n{pacemaker.crm_mon_text()}")
        time.sleep(interval)


def all_controllers_back(timeout=120):
    for c in controllers.controllers():
        if not controllers.running(c) and not controllers.pids(c):
            controllers.boot(c)
        controllers.set_link(c, True)
    names = [c.name for c in controllers.controllers()]
    pacemaker.wait_for(lambda st: st.quorate and all(st.nodes[n].online for n in names), timeout,
                       "every controller online")


@pytest.fixture(autouse=True)
def tidy(lab):
    """After each test: every controller back, every recovery closed, every compute back, no servers."""
    yield
    all_controllers_back()
    for node in lab.nodes():
        req = lab.recovery_request(node)
        if req is not None and req.open:
            try:
                wait_request(lab, node, ("done", "released"), req.fenced_at, timeout=120)
            except AssertionError:
                controllers.run(controllers.controller(controllers.daemon_at() or "ctl1"),
                                [str(topology.REPO / ".venv/bin/crashup"), "--config", str(lab.CRASHUP_CONF),
                                 "release", node.name])
        lab.wait_rejoined(node)
    pacemaker.wait_for(lambda st: lab.all_online(lab.nodes())(st) and lab.all_started(st), 120,
                       "every node online, every resource started")
    delete_servers(lab)


class HeldWatch:
    """Samples, about every 0.3 s, the node's recovery request and whether its nova-compute runs: the host must not
    rejoin (nova-compute started) while its recovery is open."""

    def __init__(self, lab, node, since):
        self.lab, self.node, self.since = lab, node, since
        self.violations, self.samples = [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        while not self._stop.is_set():
            try:
                req = self.lab.recovery_request(self.node)
                running = self.lab.nova().get_state()["computes"][self.node.nova_host]
            except Exception:                   # noqa: BLE001 - a controller or the box busy: sample again
                self._stop.wait(0.3)
                continue
            self.samples += 1
            if req is not None and req.fenced_at >= self.since and req.open and running:
                self.violations.append((time.time(), req.state))
            self._stop.wait(0.3)


def evacuated(lab, since):
    return [e for e in journal(lab, since) if e["type"] == "crashup.instance.evacuated"]


def power_log(c):
    path = topology.RUN_DIR / "bmc" / c.name / "power.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def gone(pid):
    rec = record_of(pid)
    return rec is None or not alive(rec)


# --- tests ---------------------------------------------------------------------------------------------------------

def test_controller_running_the_daemon_crashes_mid_recovery(lab):
    node = lab.node("compute1")
    ids = boot(lab, node.nova_host, SERVERS, "ctlcrash")
    guests = GuestWatch(lab, ids).start()
    tap = BusTap(lab, {"e2e-controllers": ["notifications.info", "notifications.error"]}).start()
    since = time.time()
    held = HeldWatch(lab, node, since).start()
    lab.fail(node, "crash")
    wait(lambda: len(evacuated(lab, since)) >= 3, 120, "3 servers evacuated")
    holder = controllers.controller(controllers.daemon_at())
    crashed = time.monotonic()
    controllers.fail(holder, "crash")
    elsewhere = wait(lambda: (d := controllers.daemon_at()) and d != holder.name and d, 60, "the daemon elsewhere")
    moved = time.monotonic() - crashed
    req = wait_request(lab, node, ("done",), since, timeout=300)
    assert req.note.startswith(f"{SERVERS} evacuated, 0 failed"), req.note
    assert_recovered_exactly_once(lab, node, ids)
    lab.wait_rejoined(node)
    held.stop()
    guests.stop()
    assert not guests.doubles and not held.violations and held.samples > 10
    # the outbox is on storage every controller sees: what the crashed daemon accepted, the next one published
    wanted = {e["id"] for e in journal(lab, since)}
    try:
        wait(lambda: wanted <= {m["payload"]["id"] for _, _, m in tap.events()}, 30, "every event on the bus")
    finally:
        tap.stop()
    # the crashed controller was fenced through its BMC (reboot: off, then on) and is back in the cluster
    assert [e["command"] for e in power_log(holder)][-2:] == ["off", "on"]
    all_controllers_back()
    print(f"\n{holder.name} crashed with the daemon: it ran on {elsewhere} {moved:.1f}s later")


def test_cut_off_controller_stops_its_daemon_and_the_majority_finishes(lab, monkeypatch):
    node = lab.node("compute2")
    ids = boot(lab, node.nova_host, SERVERS, "ctlcut")
    since = time.time()
    lab.fail(node, "crash")
    wait(lambda: len(evacuated(lab, since)) >= 3, 120, "3 servers evacuated")
    holder = controllers.controller(controllers.daemon_at())
    pid = controllers.daemon_pid(holder)
    assert pid
    cut = time.time()
    controllers.fail(holder, "net")
    # alone it has no quorum: it stops its daemon itself (no-quorum-policy=stop), usually before the majority powers
    # it off (the fencing delay); an inquorate DC first waits for the actions it has in flight (a fence device's
    # monitor retrying a BMC it can no longer reach: up to ~20 s), so then the power-off comes first
    wait(lambda: gone(pid), 60, f"the daemon on {holder.name} stopped")
    stopped = time.time()
    wait(lambda: any(e["command"] == "off" and e["time"] >= cut for e in power_log(holder)), 60,
         f"{holder.name} fenced")
    off = min(e["time"] for e in power_log(holder) if e["command"] == "off" and e["time"] >= cut)
    req = wait_request(lab, node, ("done",), since, timeout=300)
    assert req.note.startswith(f"{SERVERS} evacuated, 0 failed"), req.note
    assert_recovered_exactly_once(lab, node, ids)
    # nothing from the cut-off controller once it was cut (what it learnt from nova before, written 2 s at most after)
    late = [e for e in journal(lab, cut + 2) if e["source"] == f"crashup@{holder.name}"]
    assert not late, late
    # nor did it fence anything: every fencing since the cut was the majority's. Asked of a controller never cut:
    # the fenced one boots again with its link up and, until its fencer has synced the history, reports none
    monkeypatch.setenv("CRASHUP_LAB_CONTROLLER", next(c.name for c in controllers.controllers() if c != holder))
    fenced = [e for e in pacemaker.fence_history() if e.completed and e.completed >= int(cut)]
    assert fenced and all(holder.name not in (e.delegate, e.origin) for e in fenced), fenced
    print(f"\n{holder.name} cut off: its daemon gone {stopped - cut:.1f}s later "
          f"({'by itself' if stopped < off else 'with the power'}), it was powered off at {off - cut:.1f}s")


def test_dc_crashed_mid_recovery(lab):
    node = lab.node("compute2")
    ids = boot(lab, node.nova_host, SERVERS, "dccrash")
    since = time.time()
    held = HeldWatch(lab, node, since).start()
    lab.fail(node, "crash")
    wait(lambda: len(evacuated(lab, since)) >= 3, 120, "3 servers evacuated")
    dc = controllers.controller(pacemaker.status(fencing=False).dc)
    controllers.fail(dc, "crash")
    req = wait_request(lab, node, ("done",), since, timeout=300)
    assert req.note.startswith(f"{SERVERS} evacuated, 0 failed"), req.note
    assert_recovered_exactly_once(lab, node, ids)
    lab.wait_rejoined(node)
    held.stop()
    assert not held.violations and held.samples > 10
    # the recovery may well end before the old DC's fencing (its delay): that is awaited apart
    pacemaker.wait_for(lambda st: st.dc and st.dc != dc.name and st.fenced(dc.name, since), 60,
                       f"another DC, {dc.name} fenced")


def test_rolling_restart_of_the_controllers_fences_and_recovers_nothing(lab):
    since = time.time()
    for c in controllers.controllers():
        controllers.fail(c, "stop")
        controllers.fail(c, "boot")
        all_controllers_back()
        pacemaker.wait_for(lambda st: lab.all_online(lab.nodes())(st) and lab.all_started(st), 120,
                           "every node online, every resource started")
    st = pacemaker.status()
    assert not [e for e in st.fencing if e.completed and e.completed >= int(since)], st.fencing
    assert all(lab.recovery_request(n) is None or lab.recovery_request(n).fenced_at < since for n in lab.nodes())
    assert all(lab.nova().get_state()["computes"].values())


def test_full_restart_of_all_three_controllers_mid_recovery(lab):
    node = lab.node("compute3")
    ids = boot(lab, node.nova_host, 10, "ctlfull")
    since = time.time()
    lab.fail(node, "crash")
    wait(lambda: len(evacuated(lab, since)) >= 2, 120, "2 servers evacuated")
    for c in controllers.controllers():
        controllers.fail(c, "crash")
    for c in controllers.controllers():
        controllers.fail(c, "boot")
    all_controllers_back()
    req = wait_request(lab, node, ("done",), since, timeout=300)
    assert req.note.startswith("10 evacuated, 0 failed"), req.note
    assert_recovered_exactly_once(lab, node, ids)


def test_quorum_lost_nothing_is_evacuated_until_it_returns(lab):
    # one controller down: a compute host failing is recovered as usual
    first, second, last = controllers.controllers()
    controllers.fail(first, "stop")
    node = lab.node("compute1")
    ids = boot(lab, node.nova_host, 3, "onedown")
    since = time.time()
    lab.fail(node, "crash")
    req = wait_request(lab, node, ("done",), since, timeout=180)
    assert req.note.startswith("3 evacuated, 0 failed"), req.note
    assert_recovered_exactly_once(lab, node, ids)
    lab.wait_rejoined(node)
    delete_servers(lab)
    # the second one lost too (crashed: nobody left with quorum can fence it): the last one has no quorum, fences
    # nothing, evacuates nothing
    node = lab.node("compute2")
    ids = boot(lab, node.nova_host, 3, "nquorum")
    controllers.fail(second, "crash")
    wait(lambda: controllers.quorate(last) is False, 30, f"{last.name} inquorate")
    since = time.time()
    lab.fail(node, "crash")
    time.sleep(15)
    assert all(not m for m in evacuations(lab, ids).values())
    req = lab.recovery_request(node)
    assert req is None or req.fenced_at < since
    # quorum back (the first one boots; the crashed second is fenced by the new majority): fenced, recovered
    controllers.fail(first, "boot")
    req = wait_request(lab, node, ("done",), since, timeout=240)
    assert req.note.startswith("3 evacuated, 0 failed"), req.note
    assert_recovered_exactly_once(lab, node, ids)
