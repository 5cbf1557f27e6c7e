"""The guest monitor (crashup_lib.guests.monitor) end to end against a fake libvirtd (tests/test_libvirt_events.py's)
and FakeNova: each failure kind acted on under its policy, the guests nova or the operator stopped never touched,
the crash-loop limit, a host being recovered left alone, reconciles after a gap and after a restart (no failure lost,
none acted on twice), nova unreachable, bad configuration; every event valid against the contract."""
from __future__ import annotations

import dataclasses
import json

import pytest

from crashup_lib import cli, config, events, nova, rejoin
from crashup_lib import libvirt as lv
from crashup_lib.guests import monitor as gm
from crashup_lib.guests import state as gstate
from tests.fakes import FakeNova
from tests.test_libvirt_events import UUID, FakeDomain, FakeLibvirtd, wait_for

KEY = "crashup:guest_failure_policy"


class GuestNova(FakeNova):
    """FakeNova with the calls the guest monitor makes: reboot, and this host's nova-compute forced down or not."""

    def __init__(self, *servers, forced_down=False):
        super().__init__(servers)
        self.reboots = []
        self.forced_down = forced_down

    def service(self, host, binary="nova-compute"):
        return dataclasses.replace(super().service(host, binary), forced_down=self.forced_down)

    def reboot(self, server_id, hard=True):
        self._known("reboot", server_id)
        self.reboots.append((server_id, hard))


def server(policy=None, **changes):
    s = nova.Server(UUID, "web-1", "ACTIVE", None, "active", 1, "compute1",
                    flavor={"original_name": "m1", "extra_specs": {KEY: policy} if policy else {}})
    return dataclasses.replace(s, **changes)


class Journal:
    durable = True

    def __init__(self):
        self.events = []

    def send(self, event):
        events.check_event(event)
        self.events.append(event)

    def types(self):
        return [e["type"] for e in self.events]


def cfg(**options):
    raw = {"guest_max_reboots": "2", "guest_reboot_window": "1h", **{k: str(v) for k, v in options.items()}}
    return config.load("/dev/null", overrides=raw, env={})


class Rig:
    """A monitor on compute1 over a fake libvirtd with one guest, started (connected, first reconcile done)."""

    def __init__(self, tmp_path, client, *domains, host="compute1", **options):
        self.world = FakeLibvirtd(*(domains or (FakeDomain(UUID, "instance-00000001"),)))
        self.client, self.journal = client, Journal()
        self.state_path = str(tmp_path / "guests.json")
        self.monitor = gm.Monitor(cfg(**options), host, nova_factory=lambda: client,
                                  emitter=events.Emitter([self.journal]), opener=self.world.open,
                                  state_path=self.state_path)
        self.monitor.watch.backoff = (0.01, 0.05)
        self.monitor.watch.start()
        assert wait_for(self.monitor.watch.connected.is_set)
        self.drain()

    def drain(self):
        while self.monitor.step(0.05):
            pass

    def fire(self, how, *args):
        getattr(self.world.conn, how)(UUID, *args)
        self.drain()

    def close(self):
        self.monitor.watch.stop(2)


@pytest.fixture
def rigs():
    made = []
    yield made
    for rig in made:
        rig.close()


def rig(rigs, *args, **kw):
    made = Rig(*args, **kw)
    rigs.append(made)
    return made


@pytest.mark.parametrize("fire, kind", [
    (("watchdog", 0), "watchdog"),                                           # any action: none here
    (("watchdog", 1), "watchdog"),
    (("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED), "panic"),
    (("lifecycle", lv.EVENT_STOPPED, lv.STOPPED_FAILED), "killed"),
])
def test_each_failure_is_rebooted_through_nova_under_the_reboot_policy(tmp_path, rigs, fire, kind):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client)
    r.fire(*fire)
    assert client.reboots == [(UUID, True)]
    (event,) = r.journal.events
    assert event["type"] == events.INSTANCE_GUEST_FAILED and event["subject"] == UUID
    assert {k: event["payload"][k] for k in ("kind", "policy", "policy_source", "action", "attempt", "seen",
                                             "host")} == {
        "kind": kind, "policy": "reboot", "policy_source": "flavor", "action": "reboot", "attempt": 1,
        "seen": "event", "host": "compute1"}


@pytest.mark.parametrize("fire", [("io_error", 1, "enospc"),
                                  ("lifecycle", lv.EVENT_SUSPENDED, lv.SUSPENDED_IOERROR)])
def test_an_io_error_is_told_not_rebooted(tmp_path, rigs, fire):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client)
    r.fire(*fire)
    assert client.reboots == [] and [e["payload"]["kind"] for e in r.journal.events] == ["io_error"]
    assert r.journal.events[0]["payload"]["action"] == "notify"


def test_notify_emits_only_and_none_does_nothing(tmp_path, rigs):
    client = GuestNova(server())                                             # the default: notify
    r = rig(rigs, tmp_path, client)
    r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
    assert client.reboots == [] and client.stops == []
    assert [(e["payload"]["action"], e["payload"]["policy_source"]) for e in r.journal.events] == [
        ("notify", "default")]
    client2 = GuestNova(server("none"))
    r2 = rig(rigs, tmp_path / "2", client2)
    r2.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
    assert client2.reboots == [] and r2.journal.events == []


@pytest.mark.parametrize("fire", [("lifecycle", lv.EVENT_STOPPED, lv.STOPPED_SHUTDOWN),
                                  ("lifecycle", lv.EVENT_STOPPED, lv.STOPPED_DESTROYED),
                                  ("lifecycle", lv.EVENT_SUSPENDED, 0)])
def test_a_guest_the_operator_or_nova_stopped_is_never_touched(tmp_path, rigs, fire):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client)
    r.fire(*fire)
    assert client.reboots == [] and client.stops == [] and r.journal.events == []


@pytest.mark.parametrize("changes, forced_down", [
    ({"task_state": "powering-off"}, False),            # a nova stop in progress (qemu's end is its doing)
    ({"vm_state": "stopped", "status": "SHUTOFF"}, False),
    ({"host": "compute2"}, False),                      # evacuated away: whatever is left here is not the server
    ({}, True),                                         # this host is being fenced/recovered: host recovery's
])
def test_nova_stopping_it_or_the_host_being_recovered_leaves_it_alone(tmp_path, rigs, changes, forced_down):
    client = GuestNova(server("reboot", **changes), forced_down=forced_down)
    r = rig(rigs, tmp_path, client)
    r.fire("lifecycle", lv.EVENT_STOPPED, lv.STOPPED_FAILED)
    assert client.reboots == [] and client.stops == [] and r.journal.events == []


def test_a_monitor_whose_host_nova_does_not_know_leaves_every_guest_alone_at_once(tmp_path, rigs):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client, host="compute1.example.org")      # nova knows it as compute1
    r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
    assert client.reboots == [] and r.journal.events == [] and r.monitor.later == []


def test_a_crash_loop_is_rebooted_max_reboots_times_then_left_down_with_an_error_event(tmp_path, rigs):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client, guest_max_reboots=2)
    for _ in range(3):
        r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
        r.fire("lifecycle", lv.EVENT_STARTED, 1)        # nova's HARD reboot starts it again (no-op after the stop)
    assert client.reboots == [(UUID, True)] * 2 and client.stops == [UUID]
    assert r.journal.types() == [events.INSTANCE_GUEST_FAILED] * 3 + [events.INSTANCE_GUEST_LEFT_DOWN]
    assert [e["payload"]["action"] for e in r.journal.events[:3]] == ["reboot", "reboot", "leave_down"]
    left = r.journal.events[3]["payload"]
    assert (left["reboots"], left["window_s"], left["kind"]) == (2, 3600.0, "panic")
    assert events.priority(events.INSTANCE_GUEST_LEFT_DOWN) == "ERROR"


def test_reboots_outside_the_window_do_not_count(tmp_path, rigs):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client, guest_max_reboots=1, guest_reboot_window=60)
    now = [1000.0]
    r.monitor.clock = lambda: now[0]
    for _ in range(3):
        r.fire("watchdog", 0)
        r.fire("reboot")                                # the guest rebooted: its failure is over
        now[0] += 61
    assert client.reboots == [(UUID, True)] * 3 and client.stops == []


def test_the_second_event_of_one_failure_is_not_acted_on_twice(tmp_path, rigs):
    """watchdog poweroff: WATCHDOG then STOPPED/FAILED; watchdog pause: WATCHDOG then SUSPENDED/WATCHDOG."""
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client)
    r.fire("watchdog", 3)
    r.fire("lifecycle", lv.EVENT_STOPPED, lv.STOPPED_FAILED)
    assert client.reboots == [(UUID, True)] and len(r.journal.events) == 1


def test_a_failure_during_a_gap_is_found_by_the_reconcile_after_the_reconnect(tmp_path, rigs):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client)
    assert client.reboots == []                         # running at the first reconcile: nothing to do
    first = r.world.conn
    first.lose()                                        # libvirtd restarts...
    dom = r.world.domains[UUID]
    dom.st, dom.reason = lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_SHUTOFF_FAILED     # ... and qemu died meanwhile
    assert wait_for(lambda: r.world.conn is not first and r.monitor.watch.connected.is_set())
    r.drain()
    assert client.reboots == [(UUID, True)]
    assert r.journal.events[0]["payload"]["seen"] == "reconcile"


def test_a_restarted_monitor_does_not_act_twice_on_the_same_failure(tmp_path, rigs):
    crashed = FakeDomain(UUID, "instance-00000001", lv.VIR_DOMAIN_CRASHED, lv.VIR_DOMAIN_CRASHED_PANICKED, 7)
    client = GuestNova(server("notify"))
    r = rig(rigs, tmp_path, client, crashed)
    assert r.journal.types() == [events.INSTANCE_GUEST_FAILED]   # found by the first reconcile
    r.close()
    again = rig(rigs, tmp_path, client, crashed)                 # same state file, same crashed qemu
    assert again.journal.events == []
    saved = json.loads((tmp_path / "guests.json").read_text())
    assert saved["handled"][UUID]["kind"] == "panic" and saved["handled"][UUID]["domain_id"] == 7


def test_a_guest_running_again_clears_its_failure_and_an_operator_start_resets_the_loop_counter(tmp_path, rigs):
    client = GuestNova(server("reboot"))
    r = rig(rigs, tmp_path, client, guest_max_reboots=0)
    r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
    assert client.stops == [UUID] and UUID in r.monitor.state.left_down
    r.fire("lifecycle", lv.EVENT_STARTED, 0)                     # the operator starts it again
    assert UUID not in r.monitor.state.left_down and UUID not in r.monitor.state.handled


def test_nova_unreachable_is_asked_again_later(tmp_path, rigs, monkeypatch):
    monkeypatch.setattr(gm, "RETRY_PAUSE", 0.05)
    client = GuestNova(server("reboot"))
    client.failures["server"] = nova.NovaUnavailable("server", UUID, "no answer within 1s")
    r = rig(rigs, tmp_path, client)
    r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
    assert client.reboots == [] and len(r.monitor.later) == 1
    del client.failures["server"]
    assert wait_for(lambda: (r.monitor.step(0.05), client.reboots)[1], 3)


def test_a_guest_nova_stopped_after_its_failure_is_started_once_novas_task_ends(tmp_path, rigs, monkeypatch):
    """qemu killed: nova's power-state sync may stop the server at once (a driver that reports the stop without
    nova libvirt driver's 15 s delay): the reboot gets 409, the monitor follows the task and starts the server."""
    monkeypatch.setattr(gm, "FOLLOW_PAUSE", 0.05)
    client = GuestNova(server("reboot"))

    def busy(server_id, hard=True):                     # nova's sync began its stop just before the reboot
        client._update(UUID, task_state="powering-off")
        raise nova.NovaConflict("reboot", UUID, "HTTP 409: Cannot 'reboot' instance while it is in task_state "
                                                "powering-off", status=409)
    monkeypatch.setattr(client, "reboot", busy)
    r = rig(rigs, tmp_path, client)
    r.fire("lifecycle", lv.EVENT_STOPPED, lv.STOPPED_FAILED)
    assert client.starts == [] and len(r.monitor.following) == 1         # nova still busy: wait
    client._update(UUID, task_state=None, vm_state="stopped", status="SHUTOFF", power_state=4)
    assert wait_for(lambda: (r.monitor.step(0.05), client.starts)[1], 3)
    assert client.starts == [UUID] and r.monitor.following == []


def test_a_reboot_nova_refuses_is_one_log_line_and_the_monitor_goes_on(tmp_path, rigs, caplog):
    client = GuestNova(server("reboot"))
    client.failures["reboot"] = nova.NovaBadRequest("reboot", UUID, "HTTP 400: nope")
    r = rig(rigs, tmp_path, client)
    r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
    assert "the HARD reboot failed: nova reboot" in caplog.text and r.journal.types() == [events.INSTANCE_GUEST_FAILED]


def test_a_corrupt_state_file_is_a_fresh_start_with_one_line(tmp_path):
    path = tmp_path / "guests.json"
    path.write_text("{not json")
    loaded, problem = gstate.load(str(path))
    assert loaded == gstate.State() and "unreadable" in problem and "\n" not in problem


def test_the_host_and_uri(monkeypatch):
    c = cfg(guest_libvirt_uri="qemu:///system?socket=/run/lab/{host}/libvirt-sock", host_map="node1:compute1")
    assert gm.own_host(c, "node1") == "compute1" and gm.own_host(c, "compute2") == "compute2"
    assert gm.own_host(cfg(guest_host="cmp9"), "node1") == "cmp9"
    assert gm.libvirt_uri(c, "compute1") == "qemu:///system?socket=/run/lab/compute1/libvirt-sock"
    with pytest.raises(config.ConfigError, match="is not a libvirt URI"):
        gm.libvirt_uri(cfg(guest_libvirt_uri="/var/run/libvirt/libvirt-sock"), "compute1")


@pytest.mark.parametrize("env, expected", [
    ({"CRASHUP_GUEST_LIBVIRT_URI": "no-scheme"}, "is not a libvirt URI"),
    ({"CRASHUP_GUEST_MAX_REBOOTS": "-1"}, "guest_max_reboots"),
    ({"CRASHUP_GUEST_FAILURE_POLICY": "restart"}, "guest_failure_policy"),
])
def test_bad_configuration_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["--config", "/dev/null", "guests", "--daemon", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert not (tmp_path / "guests.pid").exists()


def test_crashup_guests_lists_the_nodes_guests_with_their_failure_and_policy(monkeypatch, capsys):
    monkeypatch.setenv("CRASHUP_GUEST_LIBVIRT_URI", "test:///default")
    assert cli.main(["--config", "/dev/null", "guests", "--no-nova", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["failure"], row["policy"]) == ("test", "", "notify (default)")
    monkeypatch.setenv("CRASHUP_GUEST_LIBVIRT_URI", "qemu:///system?socket=/nonexistent/sock")
    assert cli.main(["--config", "/dev/null", "guests", "--no-nova"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nonexistent/sock" in err


def test_a_reboot_nova_did_not_take_is_followed_up_even_across_a_restart(tmp_path, rigs, monkeypatch):
    """nova down when the reboot is asked: the failure is handled (never twice) but its reboot stays pending, in the
    state file too: the same monitor asks again, and a monitor restarted meanwhile follows it up on its reconcile
    (nova still says running: its power-state sync lags the crash)."""
    crashed = FakeDomain(UUID, "instance-00000001", lv.VIR_DOMAIN_CRASHED, lv.VIR_DOMAIN_CRASHED_PANICKED, 7)
    client = GuestNova(server("reboot"))
    client.failures["reboot"] = nova.NovaUnavailable("reboot", UUID, "no answer within 30s")
    r = rig(rigs, tmp_path, client, crashed)                     # the first reconcile finds it
    assert client.reboots == [] and len(r.monitor.following) == 1
    assert json.loads((tmp_path / "guests.json").read_text())["handled"][UUID]["pending"] is True
    r.close()
    del client.failures["reboot"]
    again = rig(rigs, tmp_path, client, crashed)                 # restarted: same state file, same crashed qemu
    assert client.reboots == [(UUID, True)]
    assert again.journal.events == []                            # acted on, not announced twice
    assert json.loads((tmp_path / "guests.json").read_text())["handled"][UUID]["pending"] is False


def test_a_followed_up_reboot_leaves_a_server_that_moved_or_a_drain_stopped(tmp_path, rigs, monkeypatch):
    monkeypatch.setattr(gm, "FOLLOW_PAUSE", 0.05)
    client = GuestNova(server("reboot"))
    client.failures["reboot"] = nova.NovaUnavailable("reboot", UUID, "no answer within 30s")
    r = rig(rigs, tmp_path, client)
    r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)
    del client.failures["reboot"]
    client._update(UUID, vm_state="stopped", status="SHUTOFF", power_state=4,
                   metadata={rejoin.DRAIN_STOPPED: "compute1"})          # crashup drain stopped it meanwhile
    assert wait_for(lambda: (r.monitor.step(0.05), not r.monitor.following)[1], 3)
    assert client.reboots == [] and client.starts == []


def test_a_watchdog_the_guest_runs_on_after_is_not_kept_so_a_later_panic_is_a_new_failure(tmp_path, rigs):
    client = GuestNova(server("notify"))
    r = rig(rigs, tmp_path, client)
    r.fire("watchdog", 0)                                        # action none: the guest runs on in the same qemu
    r.fire("lifecycle", lv.EVENT_CRASHED, lv.CRASHED_PANICKED)   # then panics: same domain id, a new failure
    assert [e["payload"]["kind"] for e in r.journal.events] == ["watchdog", "panic"]
