"""crashup_lib.libvirt: the Watch (libvirt's event loop against the test:///default driver, reconnects against a fake
connection, a hung open abandoned in bounded time) and the pure reading of libvirt's numbers (crashup_lib.guests.kinds),
property-tested: every event and state number gives a failure or none, never an exception, and nothing an operator or
nova does to a guest is a failure."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashup_lib import libvirt as lv
from crashup_lib.guests import kinds
from crashup_lib.guests.kinds import Kind

libvirt = pytest.importorskip("libvirt")


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# --- a fake connection: what Watch calls on libvirt's virConnect ---------------------------------------------------

class FakeDomain:
    def __init__(self, uuid, name, state=lv.VIR_DOMAIN_RUNNING, reason=1, id_=1):
        self.uuid, self._name, self.st, self.reason, self.id = uuid, name, state, reason, id_

    def UUIDString(self):
        return self.uuid

    def name(self):
        return self._name

    def state(self):
        return [self.st, self.reason]

    def ID(self):
        return self.id if self.st != lv.VIR_DOMAIN_SHUTOFF else -1


class FakeConn:
    """One connection: its callbacks, so a test fires events and closes it as libvirtd would."""

    def __init__(self, world):
        self.world = world
        self.callbacks = {}
        self.close_cb = None
        self.closed = False

    def registerCloseCallback(self, cb, opaque):
        self.close_cb = cb

    def setKeepAlive(self, interval, count):
        pass

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):
        self.callbacks[event_id] = cb

    def listAllDomains(self, flags):
        if self.world.list_error:
            raise RuntimeError(self.world.list_error)
        return list(self.world.domains.values())

    def close(self):
        self.closed = True

    # -- levers: what libvirtd would do
    def lifecycle(self, uuid, event, detail):
        self.callbacks[lv.EVENT_LIFECYCLE](self, self.world.domains[uuid], event, detail, None)

    def watchdog(self, uuid, action):
        self.callbacks[lv.EVENT_WATCHDOG](self, self.world.domains[uuid], action, None)

    def io_error(self, uuid, action, reason):
        self.callbacks[lv.EVENT_IO_ERROR_REASON](self, self.world.domains[uuid], "/dev/vda", "vda", action, reason,
                                                 None)

    def reboot(self, uuid):
        self.callbacks[lv.EVENT_REBOOT](self, self.world.domains[uuid], None)

    def lose(self):
        self.close_cb(self, 0, None)


class FakeLibvirtd:
    """The host's libvirtd: its domains, whether it answers (`down`), every connection opened."""

    def __init__(self, *domains):
        self.domains = {d.uuid: d for d in domains}
        self.down = False
        self.list_error = ""
        self.conns: list[FakeConn] = []

    def open(self, uri):
        if self.down:
            raise RuntimeError(f"Failed to connect socket to {uri}: Connection refused")
        conn = FakeConn(self)
        self.conns.append(conn)
        return conn

    @property
    def conn(self) -> FakeConn:
        return self.conns[-1]


UUID = "11111111-2222-4333-8444-555555555555"


def test_reconnects_after_the_connection_closes_and_reconciles_each_time():
    world = FakeLibvirtd(FakeDomain(UUID, "instance-00000001"))
    world.down = True
    reconciled, seen, problems = [], [], []
    watch = lv.Watch("qemu:///system", seen.append, lambda w: reconciled.append(w.domains()),
                     opener=world.open, backoff=(0.01, 0.05), on_problem=problems.append)
    watch.start()
    try:
        assert wait_for(lambda: len(problems) >= 2)            # libvirtd down: tried again, with one line each
        assert all("Connection refused" in p and "\n" not in p for p in problems)
        world.down = False
        assert wait_for(lambda: len(reconciled) == 1)
        assert [d.uuid for d in reconciled[0]] == [UUID]
        first = world.conn
        world.domains[UUID].st, world.domains[UUID].reason = lv.VIR_DOMAIN_CRASHED, lv.VIR_DOMAIN_CRASHED_PANICKED
        first.lose()                                            # libvirtd restarted: the close callback
        assert wait_for(lambda: len(reconciled) == 2)
        assert first.closed and world.conn is not first and watch.connects == 2
        assert (reconciled[1][0].state, reconciled[1][0].reason) == (lv.VIR_DOMAIN_CRASHED,
                                                                     lv.VIR_DOMAIN_CRASHED_PANICKED)
        world.conn.watchdog(UUID, 0)                            # events flow on the new connection
        assert wait_for(lambda: seen)
        assert seen[0] == lv.GuestEvent(UUID, "instance-00000001", lv.EVENT_WATCHDOG, 0, 0, "", 1, seen[0].at)
        assert abs(seen[0].at - time.time()) < 5
    finally:
        watch.stop(2)


def test_a_listing_that_fails_is_a_lost_connection_and_is_retried():
    world = FakeLibvirtd(FakeDomain(UUID, "i-1"))
    world.list_error = "End of file while reading data: Input/output error"
    reconciled, problems = [], []
    watch = lv.Watch("qemu:///system", lambda e: None, lambda w: reconciled.append(w.domains()),
                     opener=world.open, backoff=(0.01, 0.05), on_problem=problems.append)
    watch.start()
    try:
        assert wait_for(lambda: len(world.conns) >= 2)
        assert not reconciled and "listing domains: End of file" in problems[0]
        world.list_error = ""
        assert wait_for(lambda: reconciled)
    finally:
        watch.stop(2)


def test_an_open_that_hangs_is_abandoned_within_its_bound_and_stop_is_bounded():
    release = threading.Event()

    def hang(uri):
        release.wait(10)
        raise RuntimeError("never")
    problems = []
    watch = lv.Watch("qemu+tcp://10.0.0.1/system", lambda e: None, lambda w: None, opener=hang,
                     backoff=(0.05, 0.05), on_problem=problems.append, open_timeout=0.2)
    started = time.monotonic()
    watch.start()
    try:
        assert wait_for(lambda: len(problems) >= 2, 3)
        assert "no answer within 0.2s" in problems[0]
        assert "still hangs" in problems[1]                     # no second thread piled on the hung one
    finally:
        watch.stop(1)
        release.set()
    assert time.monotonic() - started < 3


def test_events_from_libvirts_own_loop_with_the_test_driver():
    """The real event loop and callbacks: test:///default emits the lifecycle events its own API calls cause (it
    never reports a watchdog, a panic or an I/O error: those are for the lab). An operator's destroy and a guest's
    shutdown are events, never failures."""
    seen, reconciled = [], []
    watch = lv.Watch("test:///default", seen.append, lambda w: reconciled.append(w.domains()))
    watch.start()
    admin = libvirt.open("test:///default")                   # the same default driver state in this process
    try:
        assert wait_for(lambda: watch.connected.is_set())
        dom = admin.lookupByName("test")
        assert any(d.uuid == dom.UUIDString() and kinds.is_running(d.state) for d in reconciled[0])
        dom.destroy()
        assert wait_for(lambda: any(e.event_id == lv.EVENT_LIFECYCLE and e.code == lv.EVENT_STOPPED for e in seen))
        stopped = next(e for e in seen if e.code == lv.EVENT_STOPPED)
        assert (stopped.uuid, stopped.name, stopped.detail) == (dom.UUIDString(), "test", lv.STOPPED_DESTROYED)
        dom.create()
        assert wait_for(lambda: any(e.code == lv.EVENT_STARTED for e in seen))
        assert [kinds.from_event(e) for e in seen] == [None] * len(seen)
        assert kinds.is_fresh_start(next(e for e in seen if e.code == lv.EVENT_STARTED))
    finally:
        watch.stop(2)
        if not admin.lookupByName("test").isActive():
            admin.lookupByName("test").create()
        admin.close()


# --- libvirt's numbers -> failure kinds --------------------------------------------------------------------------

def ev(event_id, code=0, detail=0, reason=""):
    return lv.GuestEvent(UUID, "i-1", event_id, code, detail, reason)


@pytest.mark.parametrize("event, kind", [
    (ev(lv.EVENT_WATCHDOG, 0), Kind.WATCHDOG),                              # action none: the guest keeps running
    (ev(lv.EVENT_WATCHDOG, 1), Kind.WATCHDOG),
    (ev(lv.EVENT_WATCHDOG, 2), Kind.WATCHDOG),
    (ev(lv.EVENT_WATCHDOG, 3), Kind.WATCHDOG),
    (ev(lv.EVENT_LIFECYCLE, lv.EVENT_CRASHED, lv.CRASHED_PANICKED), Kind.PANIC),
    (ev(lv.EVENT_LIFECYCLE, lv.EVENT_STOPPED, lv.STOPPED_FAILED), Kind.KILLED),
    (ev(lv.EVENT_LIFECYCLE, lv.EVENT_STOPPED, lv.STOPPED_CRASHED), Kind.KILLED),
    (ev(lv.EVENT_IO_ERROR_REASON, 1, 0, "enospc"), Kind.IO_ERROR),
    (ev(lv.EVENT_LIFECYCLE, lv.EVENT_SUSPENDED, lv.SUSPENDED_IOERROR), Kind.IO_ERROR),
    (ev(lv.EVENT_LIFECYCLE, lv.EVENT_SUSPENDED, lv.SUSPENDED_WATCHDOG), Kind.WATCHDOG),
])
def test_each_failure_event_has_its_kind(event, kind):
    failure = kinds.from_event(event)
    assert failure is not None and failure.kind is kind and "\n" not in failure.detail
    assert failure.self_healed == (event.event_id == lv.EVENT_WATCHDOG and event.code == 2)


def test_the_io_error_names_libvirts_reason():
    assert "enospc" in kinds.from_event(ev(lv.EVENT_IO_ERROR_REASON, 1, 0, "enospc")).detail


@pytest.mark.parametrize("state, reason, kind", [
    (lv.VIR_DOMAIN_CRASHED, lv.VIR_DOMAIN_CRASHED_PANICKED, Kind.PANIC),
    (lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_SHUTOFF_FAILED, Kind.KILLED),
    (lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PAUSED_IOERROR, Kind.IO_ERROR),
    (lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PAUSED_WATCHDOG, Kind.WATCHDOG),
])
def test_each_failure_state_has_its_kind(state, reason, kind):
    assert kinds.from_state(state, reason).kind is kind


# what the operator or nova does: shut down from inside, destroyed (nova's stop and hard reboot), saved, migrated
OPERATOR_STOPS = (lv.STOPPED_SHUTDOWN, lv.STOPPED_DESTROYED, 3, 4, 6)


@given(st.integers(-5, 40), st.integers(-5, 20), st.integers(-5, 20), st.text(max_size=30))
def test_any_event_number_is_a_failure_or_none_and_operator_stops_never_are(event_id, code, detail, reason):
    failure = kinds.from_event(ev(event_id, code, detail, reason))
    assert failure is None or (isinstance(failure.kind, Kind) and failure.detail)
    if event_id == lv.EVENT_LIFECYCLE and code == lv.EVENT_STOPPED and detail in OPERATOR_STOPS:
        assert failure is None
    if event_id == lv.EVENT_LIFECYCLE and code in (lv.EVENT_STARTED, lv.EVENT_RESUMED):
        assert failure is None and kinds.is_fresh_start(ev(event_id, code, detail))
    if kinds.is_fresh_start(ev(event_id, code, detail)):
        assert failure is None                              # a guest running again is never a failure
    if event_id not in (lv.EVENT_LIFECYCLE, lv.EVENT_WATCHDOG, lv.EVENT_IO_ERROR_REASON):
        assert failure is None


@given(st.integers(-5, 12), st.integers(-5, 20))
def test_any_state_number_is_a_failure_or_none_and_shut_off_by_someone_is_not(state, reason):
    failure = kinds.from_state(state, reason)
    assert failure is None or isinstance(failure.kind, Kind)
    if state == lv.VIR_DOMAIN_SHUTOFF and reason not in (lv.VIR_DOMAIN_SHUTOFF_FAILED, lv.VIR_DOMAIN_SHUTOFF_CRASHED):
        assert failure is None                              # shutdown, destroyed, saved, migrated, unknown
    if state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED, lv.VIR_DOMAIN_SHUTDOWN, lv.VIR_DOMAIN_PMSUSPENDED):
        assert failure is None


def test_the_numbers_are_libvirts():
    assert (lv.EVENT_LIFECYCLE, lv.EVENT_REBOOT, lv.EVENT_WATCHDOG, lv.EVENT_IO_ERROR_REASON) == (
        libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG,
        libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON)
    assert (lv.EVENT_STARTED, lv.EVENT_SUSPENDED, lv.EVENT_RESUMED, lv.EVENT_STOPPED, lv.EVENT_CRASHED) == (
        libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED,
        libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_CRASHED)
    assert (lv.STOPPED_SHUTDOWN, lv.STOPPED_DESTROYED, lv.STOPPED_CRASHED, lv.STOPPED_FAILED) == (
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
        libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED)
    assert (lv.SUSPENDED_IOERROR, lv.SUSPENDED_WATCHDOG, lv.CRASHED_PANICKED) == (
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG,
        libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED)
    assert (lv.VIR_DOMAIN_SHUTOFF_SHUTDOWN, lv.VIR_DOMAIN_SHUTOFF_DESTROYED, lv.VIR_DOMAIN_SHUTOFF_CRASHED,
            lv.VIR_DOMAIN_SHUTOFF_FAILED, lv.VIR_DOMAIN_CRASHED_PANICKED, lv.VIR_DOMAIN_PAUSED_IOERROR,
            lv.VIR_DOMAIN_PAUSED_WATCHDOG, lv.VIR_DOMAIN_PAUSED_CRASHED) == (
        libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED,
        libvirt.VIR_DOMAIN_SHUTOFF_FAILED, libvirt.VIR_DOMAIN_CRASHED_PANICKED, libvirt.VIR_DOMAIN_PAUSED_IOERROR,
        libvirt.VIR_DOMAIN_PAUSED_WATCHDOG, libvirt.VIR_DOMAIN_PAUSED_CRASHED)
    assert lv.WATCHDOG_ACTIONS.index("reset") == libvirt.VIR_DOMAIN_EVENT_WATCHDOG_RESET
    assert lv.WATCHDOG_ACTIONS.index("poweroff") == libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF
