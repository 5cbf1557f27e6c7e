"""Custom recovery on the notification bus, in the real lab against its real RabbitMQ (issue 13): every recovery
event reaches a consumer on the bus, once per id and in order, as the journal has it (auto mode); a stopped broker
neither slows a recovery nor loses one of its events; and in notify mode a consumer (docs/examples/consumer.py, run
as an operator would) receives crashup.host.failed, recovers the servers its own way and releases the host, which
then rejoins with no server ever on two hypervisors.

One lab for the module (tests/e2e/conftest.py); tests/e2e/test_recovery.py's clean-up after each test.
"""
import os
import pathlib
import subprocess
import sys
import time

import pytest

from crashup_lib import events
from crashup_lib.events import bus as events_bus
from crashup_lib.events.outbox import Outbox
from tests.e2e.scenario import (BusTap, GuestWatch, _epoch, boot, declare_queue, delete_queue, evacuations, journal,
                                recovery_mode, tidy_up, wait_request)
from tests.helpers import REPO, wait_for
from tests.lab import pacemaker

pytestmark = pytest.mark.lab

kombu = pytest.importorskip("kombu")

EXAMPLE = REPO / "docs" / "examples" / "consumer.py"
DEFAULT_QUEUES = {"notifications.info": ["notifications.info"], "notifications.error": ["notifications.error"]}
RECOVERY = (events.HOST_FAILED, events.INSTANCE_REPAIRED, events.INSTANCE_EVACUATED,
            events.INSTANCE_EVACUATION_FAILED, events.HOST_RECOVERED)
#: what the auto-mode test measured (journal times), the reference for the same recovery with the broker down
FIGURES = {}


@pytest.fixture(autouse=True)
def tidy(lab):
    """The broker running again, then test_recovery's clean-up: whatever a test left, the next one finds the lab."""
    yield
    if lab.broker().state() != "running":
        lab.fail_bus("start")
    tidy_up(lab)


# --- helpers -------------------------------------------------------------------------------------------------------

def host_of(event):
    p = event["payload"]
    return p.get("source_host") or p.get("host")


def recovery_events(lab, host, since):
    """The journal's recovery events of `host` since `since`, in the journal's order."""
    return [e for e in journal(lab, since) if e["type"] in RECOVERY and host_of(e) == host]


def boot_with_one_doomed(lab, node, prefix):
    """Three servers on the node, nova refusing every evacuate of the first (500: retried, then given up).
    Returns (server ids, the doomed one)."""
    ids = boot(lab, node.nova_host, 3, prefix)
    lab.nova().add_fault(rf"POST .*/servers/{ids[0]}/action", status=500, count=-1, body_match="evacuate")
    return ids, ids[0]


def crash_and_recover(lab, node):
    """The node crashes; returns the time of the crash once its recovery is done (2 evacuated, 1 given up)."""
    since = time.time()
    try:
        lab.fail(node, "crash")
        req = wait_request(lab, node, ("done",), since)
    finally:
        lab.nova().clear_faults()
    assert req.note.startswith("2 evacuated, 1 failed"), req.note
    return since


def timing(evs):
    """(fenced -> host.failed, fenced -> host.recovered), seconds, from the journal's own times."""
    fenced_at = _epoch(evs[0]["payload"]["fenced_at"])
    return _epoch(evs[0]["time"]) - fenced_at, _epoch(evs[-1]["time"]) - fenced_at


def assert_on_the_bus_as_in_the_journal(tap, evs, ids, doomed, *, among=False):
    """Each journal event on the bus once after de-duplication, equal to the journal's, in the journal's order per
    host, in the oslo envelope, on the routing key of its priority; nothing else of crashup's arrived (among: the
    tap's queues may hold other events too, e.g. crashup's default queues: only these are looked at)."""
    kinds = [e["type"] for e in evs]
    assert kinds[0] == events.HOST_FAILED and kinds[-1] == events.HOST_RECOVERED, kinds
    assert sorted(kinds[1:-1]) == sorted([events.INSTANCE_EVACUATED] * 2 + [events.INSTANCE_EVACUATION_FAILED]), kinds
    assert sorted(e["payload"]["id"] for e in evs[1:-1]) == sorted(ids)
    assert next(e for e in evs if e["type"] == events.INSTANCE_EVACUATION_FAILED)["payload"]["id"] == doomed
    got = tap.events()
    if among:
        got = [d for d in got if d[2]["payload"]["id"] in {e["id"] for e in evs}]
    by_host = {}
    for _, _, msg in got:
        by_host.setdefault(host_of(msg["payload"]), []).append(msg["payload"])
    assert list(by_host) == [host_of(evs[0])], list(by_host)
    assert [e["id"] for e in by_host[host_of(evs[0])]] == [e["id"] for e in evs]      # in order, each once
    assert by_host[host_of(evs[0])] == evs                                            # the journal's events
    for _, key, msg in got:
        event = msg["payload"]
        priority = events_bus.priority(event["type"])
        assert (msg["message_id"], msg["event_type"], msg["priority"], key) == \
            (event["id"], event["type"], priority, f"notifications.{priority.lower()}")
        assert msg["publisher_id"] == "crashup." + event["source"].partition("@")[2]
        assert msg["timestamp"] == events_bus.oslo_timestamp(event["time"])


def outbox_ids(lab):
    return [name.split("-", 1)[1][:-len(".json")] for name in Outbox(str(lab.OUTBOX_DIR)).pending()]


# --- tests ---------------------------------------------------------------------------------------------------------

def test_auto_mode_every_recovery_event_is_on_the_bus_once_in_order_as_in_the_journal(lab):
    node = lab.node("compute1")
    with BusTap(lab, {"e2e-bus-auto": ["notifications.*"]}) as tap:
        ids, doomed = boot_with_one_doomed(lab, node, "bus")
        since = crash_and_recover(lab, node)
        evs = recovery_events(lab, node.nova_host, since)
        wait_for("every recovery event on the bus", lambda: {m["payload"]["id"] for _, _, m in tap.events()} >=
                 {e["id"] for e in evs}, 20, 0.1)
        assert_on_the_bus_as_in_the_journal(tap, evs, ids, doomed)
        arrivals = {m["payload"]["id"]: t for t, _, m in tap.events()}
    lag = max(arrivals[e["id"]] - _epoch(e["time"]) for e in evs)
    FIGURES["auto"] = timing(evs)
    print(f"\nauto: fenced -> host.failed in the journal {FIGURES['auto'][0]:.2f}s, on the bus "
          f"{arrivals[evs[0]['id']] - _epoch(evs[0]['payload']['fenced_at']):.2f}s; fenced -> host.recovered "
          f"{FIGURES['auto'][1]:.2f}s; journal -> bus at most {lag:.3f}s")
    assert lag < 5.0                              # published as it happens (the broker is up)
    assert not outbox_ids(lab)


def test_broker_stopped_during_a_failure_recovery_goes_on_and_every_event_arrives_once_it_is_back(lab):
    node = lab.node("compute2")
    broker = lab.broker()
    # crashup's default queues, which its publisher declares before each replay: a consumer reading them misses
    # nothing a broker restart dropped (a queue of one's own loses its binding to the non-durable exchange with it)
    with BusTap(lab, DEFAULT_QUEUES, durable=False, delete=False) as tap:
        ids, doomed = boot_with_one_doomed(lab, node, "nobus")
        print(lab.fail_bus("stop"))
        assert broker.state() == "stopped"
        try:
            since = crash_and_recover(lab, node)
            evs = recovery_events(lab, node.nova_host, since)
            # accepted while the broker was down: every one waits in the outbox, in order; none reached the bus
            assert outbox_ids(lab) == [e["id"] for e in evs]
            assert not {m["payload"]["id"] for _, _, m in tap.events()} & {e["id"] for e in evs}
            down = timing(evs)
        finally:
            print(lab.fail_bus("start"))
        back = time.time()
        wait_for("every event of the recovery on the bus after the broker came back",
                 lambda: {m["payload"]["id"] for _, _, m in tap.events()} >= {e["id"] for e in evs}, 60, 0.1)
        arrivals = {m["payload"]["id"]: t for t, _, m in tap.events()}
        wait_for("the outbox drained", lambda: not outbox_ids(lab), 10, 0.1)
        assert_on_the_bus_as_in_the_journal(tap, evs, ids, doomed, among=True)
    replayed = max(arrivals[e["id"]] for e in evs) - back
    # the same speed as with the broker up (the same scenario in the test above), to the journal's own times
    reference = FIGURES.get("auto") or (5.0, 20.0)
    print(f"\nbroker down: fenced -> host.failed {down[0]:.2f}s, fenced -> host.recovered {down[1]:.2f}s "
          f"(reference {reference[0]:.2f}s and {reference[1]:.2f}s); all {len(evs)} events on the bus "
          f"{replayed:.2f}s after the broker was started again")
    assert down[0] <= reference[0] * 1.5 + 2.0 and down[1] <= reference[1] * 1.5 + 2.0, (down, reference)


@pytest.fixture
def notify_mode(lab):
    with recovery_mode(lab, "notify"):
        yield


def test_notify_mode_a_consumer_on_the_bus_recovers_the_host_its_way_and_releases_it(lab, notify_mode, tmp_path):
    node = lab.node("compute3")
    ids = boot(lab, node.nova_host, 3, "custom")
    queue = "e2e-custom-recovery"
    declare_queue(lab, queue, ["notifications.info"])         # the example's own queue, as an operator makes it
    log_path = tmp_path / "consumer.log"
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               CRASHUP_CONFIG=str(lab.CRASHUP_CONF), PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        consumer = subprocess.Popen([sys.executable, str(EXAMPLE), "--config", str(lab.CRASHUP_CONF),
                                     "--queue", queue], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                    cwd=str(tmp_path))
    tap = BusTap(lab, {"e2e-bus-notify": ["notifications.*"]}).start()
    watch = GuestWatch(lab, ids).start()
    try:
        since = time.time()
        lab.fail(node, "crash")
        arrived, key, msg = wait_for("crashup.host.failed on the bus",
                                     lambda: tap.first(events.HOST_FAILED, node.nova_host), 120, 0.1)
        event = msg["payload"]
        failed = event["payload"]
        fenced_at = _epoch(failed["fenced_at"])
        held = arrived - fenced_at
        assert key == "notifications.info" and failed["mode"] == "notify" and failed["node"] == node.name
        assert sorted(i["id"] for i in failed["instances"]) == sorted(ids)
        assert all(i["status"] == "ACTIVE" for i in failed["instances"])
        assert fenced_at >= since - 1
        # the consumer evacuates them its own way, waits for each, then releases the host
        wait_request(lab, node, ("released",), since, timeout=180)
        released = time.time()
        assert consumer.poll() is None, log_path.read_text()[-3000:]
        # the consumer logs "released" once `crashup release` returned: a moment after the request says so
        wait_for("the consumer's released line", lambda: f"{node.name}: released" in log_path.read_text(), 10, 0.1)
        text = log_path.read_text()
        assert f"{node.nova_host} failed (3 servers): recovering" in text, text
        conn = lab.connection()
        servers = {s.id: s for s in conn.compute.servers(all_projects=True) if s.id in ids}
        assert all(s.compute_host != node.nova_host and s.status in ("ACTIVE", "SHUTOFF") and not s.task_state
                   for s in servers.values()), [(s.name, s.compute_host, s.status) for s in servers.values()]
        assert len({s.compute_host for s in servers.values()}) == 2          # spread over the two other hosts
        for sid, migrations in evacuations(lab, ids).items():                 # each evacuated once, by the consumer
            assert [(m.source_compute, m.status) for m in migrations] in \
                ([(node.nova_host, "done")], [(node.nova_host, "completed")]), (sid, migrations)
        journal_failed = [e for e in journal(lab, since) if e["type"] == events.HOST_FAILED]
        assert journal_failed == [event]
        assert not [e for e in journal(lab, since) if e["type"] == events.INSTANCE_EVACUATED]   # crashup did not
        # released: the host rejoins, and its nova-compute destroys nothing that runs elsewhere now
        lab.wait_rejoined(node)
        rejoined = time.time()
        pacemaker.wait_for(lab.all_online(lab.nodes()), 90, "every node online")
        guests = lab.nova().guests()
        for sid in ids:
            assert [h for h, g in guests.items() if sid in g] == [servers[sid].compute_host], (sid, guests)
        assert lab.recovery_request(node).state == "released"
    finally:
        watch.stop()
        tap.stop()
        consumer.terminate()
        try:
            consumer.wait(10)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()
        delete_queue(lab, queue)
    assert consumer.returncode == 0, log_path.read_text()[-3000:]
    assert watch.samples > 10 and not watch.doubles, watch.doubles       # never on two hypervisors, at any sample
    print(f"\nnotify: fenced -> a consumer holds crashup.host.failed {held:.2f}s; -> released by the example "
          f"consumer {released - fenced_at:.2f}s; released -> rejoined {rejoined - released:.2f}s; servers "
          f"{sorted((s.status, s.compute_host) for s in servers.values())}; {watch.samples} samples of the "
          f"hypervisors, no server on two")
