"""The recovery pipeline's decisions with the cluster and nova faked: fencing unconfirmed, storm guard, notify."""
import types

import pytest

from crashup_lib import config, pacemaker
from crashup_lib.recovery import pipeline


class FakeNova:
    def __init__(self, servers):
        self._servers = servers
        self.resets, self.evacuations = [], []

    up = ("compute1", "compute2", "compute3")

    def services(self, host=None):
        return [types.SimpleNamespace(host=h, state="up" if h in self.up else "down", forced_down=False,
                                      status="enabled") for h in ("compute1", "compute2", "compute3")]

    def servers_on_host(self, host):
        return self._servers

    def reset_state(self, server_id, state):
        self.resets.append((server_id, state))


class Recorder:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


def server(sid, task=None, vm_state="active"):
    return types.SimpleNamespace(id=sid, name=sid, status="ACTIVE", task_state=task, vm_state=vm_state,
                                 project_id="p")


@pytest.fixture
def cluster(monkeypatch):
    state = {"requests": {}, "fenced": True, "nodes": ["compute1", "compute2", "compute3"]}
    monkeypatch.setattr(pacemaker, "write_request", lambda req, timeout=15: state["requests"].__setitem__(
        req.node, req))
    monkeypatch.setattr(pacemaker, "requests", lambda timeout=15: dict(state["requests"]))
    monkeypatch.setattr(pacemaker, "fenced_since", lambda node, since, timeout=15: pacemaker.FenceEvent(
        node, "reboot", "success", since + 1, "ctl1") if state["fenced"] else None)
    monkeypatch.setattr(pacemaker, "nodes", lambda timeout=15: [pacemaker.Node(n, "remote", False, False)
                                                                for n in state["nodes"]])
    monkeypatch.setattr(pacemaker, "fencing_in_flight", lambda node, timeout=15: state.get("in_flight", False))
    state["refenced"] = []
    monkeypatch.setattr(pacemaker, "request_fencing", lambda node, timeout=120: state["refenced"].append(node))
    monkeypatch.setattr(pacemaker, "wait_settled", lambda: state["refenced"].append("settled") or True)
    monkeypatch.setattr(pacemaker, "request", lambda node, timeout=15: state["requests"].get(node))
    return state


def request(node="compute1", mode="auto", fenced_at=1000.0):
    return pacemaker.RecoveryRequest(node=node, state="pending", mode=mode, fenced_at=fenced_at,
                                     updated_at=fenced_at)


def recovery(nova, clock=2000.0, **options):
    cfg = config.load(env={f"CRASHUP_{k.upper()}": str(v) for k, v in options.items()})
    return pipeline.Recovery(cfg, nova, Recorder(), clock=lambda: clock)


def test_never_acts_before_fencing_is_confirmed(cluster):
    cluster["fenced"] = False
    nova = FakeNova([server("a", "rebooting")])
    rec = recovery(nova, clock=1010.0)
    step = rec.recover(request())
    assert step.waiting and step.request.state == "pending" and nova.resets == [] and rec.emitter.events == []
    assert cluster["refenced"] == []                 # young request: fencing may still be under way
    late = recovery(nova, clock=1000.0 + pipeline.FENCING_GRACE + 1)
    step = late.recover(request())
    assert [e["type"] for e in late.emitter.events] == ["crashup.host.fencing_unconfirmed"]
    assert nova.resets == [] and step.request.note.startswith("fencing not confirmed")
    late.recover(step.request)                       # said once, not at every retry
    assert len(late.emitter.events) == 1
    # no record and nothing in flight: fenced again (once the DC's transition is over), once a grace
    assert cluster["refenced"] == ["settled", "compute1"]


def test_waiting_for_the_cluster_to_settle_is_bounded():
    now = [0.0]
    running = iter([True, True, None, False])
    assert pacemaker.wait_settled(10, running=lambda: next(running), sleep=lambda s: now.__setitem__(0, now[0] + s),
                                  clock=lambda: now[0])
    assert now[0] == 1.5                             # a DC crmadmin cannot name yet counts as busy
    now[0] = 0.0
    assert not pacemaker.wait_settled(3, running=lambda: True, sleep=lambda s: now.__setitem__(0, now[0] + s),
                                      clock=lambda: now[0])
    assert now[0] == 3.0


def test_a_fencing_in_flight_is_waited_for_not_repeated(cluster):
    cluster["fenced"], cluster["in_flight"] = False, True
    rec = recovery(FakeNova([]), clock=1000.0 + pipeline.REFENCE_AFTER + 5)
    assert rec.recover(request()).waiting and cluster["refenced"] == []


def test_a_recovering_request_is_not_verified_again(cluster):
    """After a confirmed fencing the request says "recovering" in the CIB: a restarted cluster, whose fencer has
    forgotten its history, resumes it without fencing again."""
    cluster["fenced"] = False
    nova = FakeNova([])
    rec = recovery(nova, mode="notify")
    req = request(mode="notify").moved_to("recovering", "fencing confirmed", host="compute1")
    step = rec.recover(req)
    assert step.request.note == pipeline.NOTIFIED and cluster["refenced"] == []


def test_notify_mode_repairs_hands_over_once_and_waits_for_release(cluster):
    nova = FakeNova([server("a", "rebooting"), server("b")])
    rec = recovery(nova)
    step = rec.recover(request(mode="notify"))
    assert step.waiting and step.request.state == "recovering" and step.request.note == pipeline.NOTIFIED
    assert nova.resets == [("a", "active")]
    kinds = [e["type"] for e in rec.emitter.events]
    assert kinds == ["crashup.instance.repaired", "crashup.host.failed"]
    failed = rec.emitter.events[-1]["payload"]
    assert failed["mode"] == "notify" and [i["id"] for i in failed["instances"]] == ["a", "b"]
    rec.recover(step.request)                        # a resumed daemon does not notify twice
    assert len(rec.emitter.events) == 2
    cluster["requests"]["compute1"] = step.request
    released = pipeline.release("compute1")
    assert released.state == "released" and not released.open


def test_storm_guard_stops_automatic_evacuation(cluster):
    for node in ("compute2", "compute3"):
        cluster["requests"][node] = request(node, fenced_at=1990.0)
    nova = FakeNova([server("a")])
    rec = recovery(nova, storm_max_hosts=2, storm_max_fraction=0.5)
    step = rec.recover(request(fenced_at=1995.0))
    assert step.waiting and step.request.note == pipeline.STORM
    storm = [e for e in rec.emitter.events if e["type"] == "crashup.host.storm"]
    assert storm and storm[0]["payload"]["hosts"] == ["compute1", "compute2", "compute3"]


def test_with_no_other_compute_up_evacuation_waits_instead_of_erroring_every_instance(cluster):
    """A full cluster restart restarts every nova-compute: evacuating before one is back gives "No valid host"."""
    nova = FakeNova([server("a")])
    nova.up = ("compute1",)                               # only the failed host's record says up
    rec = recovery(nova)
    step = rec.recover(request())
    assert step.waiting and step.request.note == pipeline.NO_TARGET and nova.evacuations == []
    assert not [e for e in rec.emitter.events if e["type"] == "crashup.host.failed"]


def test_closed_requests_and_old_failures_do_not_count_towards_a_storm(cluster):
    cluster["requests"]["compute2"] = request("compute2", fenced_at=1990.0).moved_to("done")
    cluster["requests"]["compute3"] = request("compute3", fenced_at=100.0)     # outside the window
    rec = recovery(FakeNova([]), storm_max_hosts=2, storm_max_fraction=0.5)
    assert rec._storm(request(fenced_at=1995.0)) is None


def test_an_instance_deleted_during_recovery_is_finished_not_failed():
    from crashup_lib import nova as nova_api
    from crashup_lib.recovery.evacuate import Evacuator

    class Gone:
        def migrations(self, **kw):
            return []

        def evacuate(self, server_id, target_host=None, microversion=None):
            raise nova_api.NovaNotFound("evacuate", server_id, "no such server", 404)

    step = types.SimpleNamespace(server_id="x", name="x", target=None, after="none")
    outcomes = Evacuator(Gone(), source_host="compute1", fenced_at=1000).run(
        [types.SimpleNamespace(steps=(step,))])
    assert [(o.result, o.reason) for o in outcomes] == [("deleted", "deleted by its owner during the recovery")]
