"""The recovery pipeline's decisions with the cluster and nova faked (tests/fakes.py): fencing unconfirmed, storm
guard, notify, evacuation, and requests written by the previous version."""
import inspect

import pytest

from crashup_lib import config, nova as nova_api, pacemaker
from crashup_lib.pacemaker import Hold
from crashup_lib.recovery import pipeline
from crashup_lib import plan as P
from crashup_lib.recovery.evacuate import Evacuator, Result
from tests.fakes import FakeCluster, FakeNova, server


class Recorder:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


@pytest.fixture
def cluster():
    return FakeCluster()


def request(node="compute1", mode="auto", fenced_at=1000.0):
    return pacemaker.RecoveryRequest(node=node, state="pending", mode=mode, fenced_at=fenced_at,
                                     updated_at=fenced_at)


def recovery(cluster, nova, clock=2000.0, **options):
    cfg = config.load(env={f"CRASHUP_{k.upper()}": str(v) for k, v in options.items()})
    return pipeline.Recovery(cfg, cluster, nova, Recorder(), clock=lambda: clock)


@pytest.mark.parametrize("fake, real", [(FakeCluster, pacemaker.Cluster), (FakeNova, nova_api.Nova)])
def test_the_fakes_have_only_the_real_methods_with_their_parameters(fake, real):
    for name, method in inspect.getmembers(fake, inspect.isfunction):
        if not name.startswith("_"):
            assert list(inspect.signature(method).parameters) == \
                list(inspect.signature(getattr(real, name)).parameters), name


def test_never_acts_before_fencing_is_confirmed(cluster):
    cluster.fenced = False
    nova = FakeNova([server("a", task_state="rebooting")])
    rec = recovery(cluster, nova, clock=1010.0)
    step = rec.recover(request())
    assert step.waiting and step.request.state == "pending" and nova.resets == [] and rec.emitter.events == []
    assert cluster.refenced == []                    # young request: fencing may still be under way
    late = recovery(cluster, nova, clock=1000.0 + pipeline.FENCING_GRACE + 1)
    step = late.recover(request())
    assert [e["type"] for e in late.emitter.events] == ["crashup.host.fencing_unconfirmed"]
    assert nova.resets == [] and step.request.hold is Hold.FENCING_UNCONFIRMED
    assert step.request.note.startswith("fencing not confirmed: no successful fencing of compute1")
    late.recover(step.request)                       # said once, not at every retry
    assert len(late.emitter.events) == 1
    # no record and nothing in flight: fenced again (once the DC's transition is over), once a grace
    assert cluster.refenced == ["settled", "compute1"]


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
    cluster.fenced, cluster.in_flight = False, True
    rec = recovery(cluster, FakeNova(), clock=1000.0 + pipeline.REFENCE_AFTER + 5)
    assert rec.recover(request()).waiting and cluster.refenced == []


def test_a_recovering_request_is_not_verified_again(cluster):
    """After a confirmed fencing the request says "recovering" in the CIB: a restarted cluster, whose fencer has
    forgotten its history, resumes it without fencing again."""
    cluster.fenced = False
    rec = recovery(cluster, FakeNova(), mode="notify")
    req = request(mode="notify").moved_to("recovering", "fencing confirmed", host="compute1")
    step = rec.recover(req)
    assert step.request.hold is Hold.NOTIFIED and cluster.refenced == []


def test_notify_mode_repairs_hands_over_once_and_waits_for_release(cluster):
    nova = FakeNova([server("a", task_state="rebooting"), server("b")])
    rec = recovery(cluster, nova)
    step = rec.recover(request(mode="notify"))
    assert step.waiting and step.request.state == "recovering" and step.request.hold is Hold.NOTIFIED
    assert step.request.note == pipeline.NOTIFIED == "notified: waiting for release"   # what operators read
    assert nova.resets == [("a", "active")]
    kinds = [e["type"] for e in rec.emitter.events]
    assert kinds == ["crashup.instance.repaired", "crashup.host.failed"]
    failed = rec.emitter.events[-1]["payload"]
    assert failed["mode"] == "notify" and [i["id"] for i in failed["instances"]] == ["a", "b"]
    rec.recover(step.request)                        # a resumed daemon does not notify twice
    assert len(rec.emitter.events) == 2
    released = pipeline.release("compute1", cluster)
    assert released.state == "released" and not released.open and released.hold is Hold.NONE
    assert cluster.request("compute1") == released and cluster.mirror["compute1"] == "released"


def test_a_notified_recovery_the_operator_forces_is_evacuated_by_crashup(cluster):
    nova = FakeNova([server("a"), server("b")])
    rec = recovery(cluster, nova)
    handed = rec.recover(request(mode="notify")).request
    assert handed.hold is Hold.NOTIFIED and nova.evacuations == []
    done = rec.recover(handed.moved_to(handed.state, "resumed by the operator", forced=True))   # crashup recover --force
    assert not done.request.open and sorted(sid for sid, *_ in nova.evacuations) == ["a", "b"]
    assert [e["type"] for e in rec.emitter.events].count("crashup.host.failed") == 2    # notified, then evacuating


def test_storm_guard_stops_automatic_evacuation(cluster):
    for node in ("compute2", "compute3"):
        cluster.saved[node] = request(node, fenced_at=1990.0)
    nova = FakeNova([server("a")])
    rec = recovery(cluster, nova, storm_max_hosts=2, storm_max_fraction=0.5)
    step = rec.recover(request(fenced_at=1995.0))
    assert step.waiting and step.request.hold is Hold.STORM and step.request.note == pipeline.STORM
    storm = [e for e in rec.emitter.events if e["type"] == "crashup.host.storm"]
    assert storm and storm[0]["payload"]["hosts"] == ["compute1", "compute2", "compute3"]
    assert rec.recover(step.request).waiting and nova.evacuations == []      # held, until --force moves it on


def test_with_no_other_compute_up_evacuation_waits_instead_of_erroring_every_instance(cluster):
    """A full cluster restart restarts every nova-compute: evacuating before one is back gives "No valid host"."""
    nova = FakeNova([server("a")], up=("compute1",))      # only the failed host's record says up
    rec = recovery(cluster, nova)
    step = rec.recover(request())
    assert step.waiting and step.request.hold is Hold.WAITING_FOR_COMPUTE and nova.evacuations == []
    assert step.request.note == pipeline.NO_TARGET
    assert not [e for e in rec.emitter.events if e["type"] == "crashup.host.failed"]


def test_closed_requests_and_old_failures_do_not_count_towards_a_storm(cluster):
    cluster.saved["compute2"] = request("compute2", fenced_at=1990.0).moved_to("done")
    cluster.saved["compute3"] = request("compute3", fenced_at=100.0)     # outside the window
    rec = recovery(cluster, FakeNova(), storm_max_hosts=2, storm_max_fraction=0.5)
    assert rec._storm(request(fenced_at=1995.0)) is None


def test_auto_mode_evacuates_and_closes_the_request(cluster):
    nova = FakeNova([server("a"), server("b", status="SHUTOFF"), server("elsewhere", host="compute2")])
    rec = recovery(cluster, nova)
    step = rec.recover(request())
    assert not step.waiting and step.request.state == "done" and step.request.hold is Hold.NONE
    assert step.request.note == "2 evacuated, 0 failed, 0 skipped" and cluster.mirror["compute1"] == "done"
    assert sorted((sid, mv) for sid, _, mv in nova.evacuations) == [("a", "2.94"), ("b", "2.94")]  # keep_power_state
    kinds = [e["type"] for e in rec.emitter.events]
    assert kinds[0] == "crashup.host.failed" and kinds[-1] == "crashup.host.recovered"
    assert sorted(e["payload"]["id"] for e in rec.emitter.events if e["type"] == "crashup.instance.evacuated") == \
        ["a", "b"]
    assert rec.emitter.events[-1]["payload"]["evacuated"] == 2


def test_quorum_lost_mid_recovery_stops_the_evacuations_not_yet_asked_and_the_request_stays_open(cluster):
    """A controller cut off from the majority after fencing was confirmed: no evacuate call from it after that (the
    majority's daemon recovers the host), and the request it could not write stays as the majority sees it."""
    nova = FakeNova([server(f"s{i}") for i in range(4)])
    asked = []

    def quorum():
        asked.append(len(nova.evacuations))
        cluster.has_quorum = len(nova.evacuations) < 2        # the cut comes after two evacuate calls
        return cluster.has_quorum
    cluster.quorate = quorum
    rec = recovery(cluster, nova, concurrency=1)
    with pytest.raises(pacemaker.NoQuorum):
        rec.recover(request())
    assert len(nova.evacuations) == 2 and asked[-1] == 2
    assert cluster.saved["compute1"].open


def test_a_resumed_recovery_says_host_failed_once_and_times_itself_from_the_fencing(cluster):
    """A recovery cut short (here by a lost quorum; a failover is the same) and resumed: one host.failed for the
    request, and host.recovered's duration_s counts from the fencing, not from the resumption."""
    nova = FakeNova([server(f"s{i}") for i in range(4)])
    cluster.quorate = lambda: len(nova.evacuations) < 2
    first = recovery(cluster, nova, concurrency=1, clock=1500.0)
    with pytest.raises(pacemaker.NoQuorum):
        first.recover(request())
    cluster.quorate = lambda: True
    resumed = recovery(cluster, nova, concurrency=1, clock=1900.0)
    step = resumed.recover(cluster.saved["compute1"])
    assert step.request.state == "done" and step.request.note.startswith("4 evacuated")
    said = [e["type"] for e in first.emitter.events + resumed.emitter.events]
    assert said.count("crashup.host.failed") == 1 and said[0] == "crashup.host.failed"
    assert resumed.emitter.events[-1]["payload"]["duration_s"] == 900.0      # fenced at 1000, done at 1900


def test_the_daemon_acts_on_no_request_without_quorum(cluster, tmp_path):
    from crashup_lib.recovery import daemon
    cluster.saved["compute1"] = request()
    cfg = config.load(env={})
    d = daemon.Daemon(cfg, state_dir=str(tmp_path), cluster=cluster, nova_factory=FakeNova, emitter=Recorder())
    cluster.has_quorum = False
    d.tick()
    assert d.workers == {} and d.inquorate
    cluster.has_quorum = True
    d.tick()
    assert list(d.workers) == ["compute1"] and not d.inquorate
    d.stop()
    d.workers["compute1"].join(10)


def test_an_instance_deleted_during_recovery_is_finished_not_failed():
    step = P.EvacuationStep(server_id="x", name="x", priority=0, group=None, target=None, after="none",
                            prepare="none", reason="", wave=0)
    outcomes = Evacuator(FakeNova(), source_host="compute1", fenced_at=1000).run([P.Wave(0, 0, (step,))])
    assert [(o.result, o.reason) for o in outcomes] == [(Result.DELETED, "deleted by its owner during the recovery")]


# --- requests written by the previous version (no "hold": the note was the hold) ------------------------------------

def old_request(state, note, mode="auto"):
    """A request as the version before `hold` wrote it (its daemon, or its fence agent mid-upgrade)."""
    value = ('{"fenced_at":1000.0,"filter_mode":"","host":"compute1","mode":"%s","note":"%s","state":"%s",'
             '"updated_at":1001.0}' % (mode, note, state))
    return pacemaker.RecoveryRequest.from_value("compute1", value)


def test_an_old_notified_request_is_not_notified_again(cluster):
    rec = recovery(cluster, FakeNova([server("a")]))
    step = rec.recover(old_request("recovering", "notified: waiting for release", mode="notify"))
    assert step.waiting and step.request.hold is Hold.NOTIFIED and rec.emitter.events == []


def test_an_old_storm_held_request_stays_held(cluster):
    nova = FakeNova([server("a")])
    step = recovery(cluster, nova).recover(old_request("recovering", "storm guard: automatic evacuation stopped"))
    assert step.waiting and step.request.hold is Hold.STORM and nova.evacuations == []


def test_a_request_recorded_by_the_old_fence_agent_is_recovered(cluster):
    nova = FakeNova([server("a")])
    step = recovery(cluster, nova).recover(old_request("pending", "recorded by fencing"))
    assert step.request.state == "done" and [sid for sid, _, _ in nova.evacuations] == ["a"]
