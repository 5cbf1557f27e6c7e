"""crashup evacuate (fence through Pacemaker, the daemon evacuates) and crashup restore (evacuate off a dead host if
needed, then rebuild from a backup image): decisions and runs against the fakes."""
import dataclasses
import re
import time

import pytest

from crashup_lib import pacemaker
from crashup_lib.maintenance import common, evacuate_host, restore
from crashup_lib.maintenance.restore import RESTORE_KEY
from crashup_lib.pacemaker import Hold, RecoveryRequest
from tests.fakes import FakeCluster, server
from tests.test_maintenance_drain import MaintenanceNova, context


def request(state, hold=Hold.NONE, node="compute1"):
    return RecoveryRequest(node, state, "auto", time.time() - 60, time.time() - 60, host=node, hold=hold)


class FencingCluster(FakeCluster):
    """Fencing records the request as fence_crashup_nova does; the 'daemon' closes it on the next read."""

    def request_fencing(self, node):
        super().request_fencing(node)
        self.saved[node] = RecoveryRequest(node, "recovering", "auto", time.time(), time.time(), host=node,
                                           note="evacuating 1 instances")
        self.reads = 0

    def request(self, node):
        req = self.saved.get(node)
        if req is not None and req.open and getattr(self, "reads", None) is not None:
            self.reads += 1
            if self.reads > 1:
                self.saved[node] = req = req.moved_to("done", "1 evacuated, 0 failed, 0 skipped")
        return req


# --- evacuate --------------------------------------------------------------------------------------------------------

def test_evacuate_fences_through_pacemaker_and_follows_the_recovery():
    fake = MaintenanceNova([server("s1", host="compute1")])
    cluster = FencingCluster()
    ctx = context(fake, cluster)
    assert evacuate_host.evacuate(ctx, "compute1") == 0
    assert cluster.refenced == ["settled", "compute1"]
    assert fake.evacuations == []                         # crashup's daemon evacuates, never this command
    assert [k for k in ctx.emitter.kinds()] == [("crashup.host.maintenance", "fence_requested"),
                                                ("crashup.host.maintenance", "finished")]
    assert any("recovery done: 1 evacuated" in line for line in ctx.lines)


def test_evacuate_dry_run_prints_the_plan_and_fences_nothing():
    fake = MaintenanceNova([server("s1", host="compute1")])
    cluster = FencingCluster()
    ctx = context(fake, cluster)
    assert evacuate_host.evacuate(ctx, "compute1", dry_run=True) == 0
    assert cluster.refenced == [] and ctx.emitter.seen == []
    assert "fence node compute1" in ctx.lines[0] and "s1" in ctx.lines[0]


@pytest.mark.parametrize("to, setup, says", [
    (None, lambda f, c: c.write_request(request("recovering")), "its recovery is open"),
    ("compute9", lambda f, c: None, "--to compute9: unknown host"),
    ("compute1", lambda f, c: None, "that is the host being emptied"),
    ("compute2", lambda f, c: f.disabled.update(compute2="x"), "cannot take servers now (disabled)"),
    (None, lambda f, c: setattr(c, "has_quorum", False), "no quorum"),
])
def test_evacuate_refuses_and_fences_nothing(to, setup, says):
    fake, cluster = MaintenanceNova([server("s1", host="compute1")]), FencingCluster()
    setup(fake, cluster)
    ctx = context(fake, cluster)
    with pytest.raises(common.Refused, match=re.escape(says)):
        evacuate_host.evacuate(ctx, "compute1", to)
    assert cluster.refenced == [] and ctx.emitter.seen == []


def test_evacuate_to_a_host_reaches_the_daemon_in_the_request():
    fake, cluster = MaintenanceNova([server("s1", host="compute1")]), FencingCluster()
    ctx = context(fake, cluster)
    written = []
    cluster.write_request = lambda req: written.append(req) or cluster.saved.__setitem__(req.node, req)
    assert evacuate_host.evacuate(ctx, "compute1", "compute3", wait=False) == 0
    assert written[0].target == "compute3" and written[0].state == "pending"


# --- restore -------------------------------------------------------------------------------------------------------

def svc(fake, host):
    return fake.service(host)


@pytest.mark.parametrize("setup, req, in_place, evacuate, refused", [
    (lambda f: None, None, False, None, "may still run server s1: its nova-compute is up and not fenced"),
    (lambda f: None, None, True, False, None),
    (lambda f: f.forced.add("compute1"), request("done"), False, True, None),
    (lambda f: f.forced.add("compute1"), request("recovering", Hold.NOTIFIED), False, True, None),
    (lambda f: f.forced.add("compute1"), request("recovering"), False, None, "the daemon is evacuating it"),
    (lambda f: f.forced.add("compute1"), None, False, None, "down but not fenced by crashup"),
    (lambda f: f._update("s1", task_state="rebooting"), None, True, None, "is in a task"),
])
def test_restore_decides_or_refuses(setup, req, in_place, evacuate, refused):
    fake = MaintenanceNova([server("s1", host="compute1")])
    setup(fake)
    s1 = fake.server("s1")
    if refused:
        with pytest.raises(common.Refused, match=refused):
            restore.decide(s1, svc(fake, "compute1"), req, in_place, "img-backup", fenced=True, online=False)
    else:
        assert restore.decide(s1, svc(fake, "compute1"), req, in_place, "img-backup", fenced=True,
                              online=False).evacuate is evacuate


def test_restore_evacuates_off_a_fenced_host_then_rebuilds_keeping_the_server():
    fake = MaintenanceNova([server("s1", host="compute1", image_id="img-old")])
    fake.forced.add("compute1")
    cluster = FakeCluster()
    cluster.saved["compute1"] = request("done")
    ctx = context(fake, cluster)
    assert restore.restore(ctx, "s1", "img-backup", to="compute3") == 0
    s1 = fake.server("s1")
    assert (s1.id, s1.host, s1.image_id, s1.status) == ("s1", "compute3", "img-backup", "ACTIVE")
    assert RESTORE_KEY not in s1.metadata
    assert fake.evacuations[0][:2] == ("s1", "compute3")
    assert [c for c in fake.calls if c[0] != "set_metadata"][:1] == [("rebuild", "s1")]
    assert [k for k in ctx.emitter.kinds()] == [("crashup.instance.maintenance", "evacuate"),
                                                ("crashup.instance.maintenance", "rebuild")]


@pytest.mark.parametrize("server_id, image, says", [("nope", "img-backup", "unknown server 'nope'"),
                                                    ("s1", "img-nope", "unknown image 'img-nope'")])
def test_restore_bad_input_changes_nothing(server_id, image, says):
    fake = MaintenanceNova([server("s1", host="compute1")])
    ctx = context(fake)
    with pytest.raises(common.Refused, match=re.escape(says)):
        restore.restore(ctx, server_id, image, in_place=True)
    assert fake.calls == [] and fake.evacuations == []


def test_restore_resumes_a_rebuild_of_its_own():
    fake = MaintenanceNova([server("s1", host="compute2", metadata={RESTORE_KEY: "img-backup"})])
    ctx = context(fake)
    assert restore.restore(ctx, "s1", "img-backup") == 0       # its (new) host is up: it was evacuated by us
    assert fake.server("s1").image_id == "img-backup" and fake.evacuations == []


def test_fencing_goes_through_the_adapter():
    assert evacuate_host.pacemaker.request_fencing is pacemaker.request_fencing


def test_the_daemon_evacuates_to_the_target_the_request_carries():
    from crashup_lib.recovery.pipeline import Recovery
    from tests.test_maintenance_drain import Events
    fake = MaintenanceNova([server("s1", host="compute1"), server("s2", host="compute1")])
    cluster = FakeCluster()
    req = RecoveryRequest("compute1", "pending", "auto", time.time(), time.time(), target="compute3")
    cluster.saved["compute1"] = req
    progress = Recovery(context(fake).cfg, cluster, fake, Events()).recover(req)
    assert not progress.request.open
    assert sorted((sid, to) for sid, to, _ in fake.evacuations) == [("s1", "compute3"), ("s2", "compute3")]


# --- review fixes (issue 18) ---------------------------------------------------------------------------------------

class LoggingCluster(FencingCluster):
    """Logs request writes in `refenced` too (between "settled" and the fencing); `online`: nodes Pacemaker has
    online; `fence_fails`: what request_fencing raises."""
    online: tuple = ()
    fence_fails: BaseException | None = None

    def write_request(self, req):
        self.refenced.append(f"write {req.state}")
        super().write_request(req)

    def request_fencing(self, node):
        if self.fence_fails is not None:
            self.refenced.append(f"failed {node}")
            raise self.fence_fails
        super().request_fencing(node)

    def nodes(self):
        return [pacemaker.Node(n, "remote", n in self.online, False) for n in self.remote_nodes]


def test_evacuate_to_lets_the_transition_of_its_request_finish_before_the_fencing():
    fake, cluster = MaintenanceNova([server("s1", host="compute1")]), LoggingCluster()
    assert evacuate_host.evacuate(context(fake, cluster), "compute1", "compute3", wait=False) == 0
    assert cluster.refenced == ["write pending", "settled", "compute1"]


@pytest.mark.parametrize("at, failure", [
    ("request_fencing", pacemaker.PacemakerError("stonith_admin --reboot compute1: timed out")),
    ("request_fencing", KeyboardInterrupt()),
    ("wait_settled", KeyboardInterrupt()),             # Ctrl-C while the DC settles (up to 30 s)
])
def test_evacuate_to_whose_fencing_fails_or_is_interrupted_withdraws_its_request(at, failure, monkeypatch):
    """A pending request left behind would hold nova-compute off and get the node fenced later by the daemon:
    written back released; the fencing's own error goes on (one line, exit 1; Ctrl-C: 130)."""
    fake, cluster = MaintenanceNova([server("s1", host="compute1")]), LoggingCluster()
    cluster.fenced = False
    if at == "request_fencing":
        cluster.fence_fails = failure
    else:
        monkeypatch.setattr(cluster, at, lambda *a, **kw: (_ for _ in ()).throw(failure))
    with pytest.raises(type(failure)):
        evacuate_host.evacuate(context(fake, cluster), "compute1", "compute3")
    req = cluster.saved["compute1"]
    assert (req.state, req.open) == ("released", False) and "withdrawn" in req.note
    assert cluster.refenced[0] == "write pending" and cluster.refenced[-1] == "write released"
    assert "compute1" not in cluster.refenced


def test_a_failed_fencing_that_happened_after_all_keeps_its_request():
    fake, cluster = MaintenanceNova([server("s1", host="compute1")]), LoggingCluster()
    cluster.fence_fails = pacemaker.PacemakerError("stonith_admin: timed out")       # cluster.fenced: it happened
    with pytest.raises(pacemaker.PacemakerError):
        evacuate_host.evacuate(context(fake, cluster), "compute1", "compute3")
    assert cluster.saved["compute1"].state == "pending"


def _dead(fake, cluster, req):
    fake.forced.add("compute1")
    cluster.saved["compute1"] = req
    return context(fake, cluster)


@pytest.mark.parametrize("setup, says", [
    (lambda c, f: setattr(c, "fenced", False), "no fencing of node compute1 confirmed since its recovery request"),
    (lambda c, f: setattr(c, "online", ("compute1",)), "node compute1 is online in Pacemaker and its recovery is "
                                                       "closed"),
])
def test_restore_refuses_an_old_request_as_proof_of_fencing(setup, says):
    """A 90-day-old `done` request and a forced-down service prove nothing by themselves: nothing is changed."""
    fake, cluster = MaintenanceNova([server("s1", host="compute1")]), LoggingCluster()
    old = time.time() - 90 * 86400
    ctx = _dead(fake, cluster, RecoveryRequest("compute1", "done", "auto", old, old + 600, host="compute1"))
    setup(cluster, fake)
    with pytest.raises(common.Refused, match=re.escape(says)):
        restore.restore(ctx, "s1", "img-backup", to="compute3")
    assert fake.calls == [] and fake.evacuations == []


def test_restore_refuses_a_request_older_than_the_services_last_change():
    """The host came back after that recovery (the rejoin cleared forced-down: the record changed after the request
    closed) and was forced down again since: the request is not the current one."""
    fake = MaintenanceNova([server("s1", host="compute1")])
    closed = time.time() - 3600
    req = RecoveryRequest("compute1", "done", "auto", closed - 600, closed, host="compute1")
    later = dataclasses.replace(fake.service("compute1"), forced_down=True, state="down",
                                updated_at=time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime(closed + 60)))
    with pytest.raises(common.Refused, match="changed after its recovery request closed"):
        restore.decide(fake.server("s1"), later, req, False, "img-backup", fenced=True, online=False)
    same = dataclasses.replace(later, updated_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(closed - 300)))
    assert restore.decide(fake.server("s1"), same, req, False, "img-backup", fenced=True, online=False).evacuate


def test_restore_takes_an_open_handed_over_request_of_a_node_back_from_its_reboot():
    """notify mode: fencing rebooted the node (online again), the hold rule keeps its nova-compute off."""
    fake = MaintenanceNova([server("s1", host="compute1")])
    fake.forced.add("compute1")
    handed = request("recovering", Hold.NOTIFIED)
    assert restore.decide(fake.server("s1"), fake.service("compute1"), handed, False, "img-backup", fenced=True,
                          online=True).evacuate


@pytest.mark.parametrize("lose_at, evacuated", [("set_metadata", False), ("evacuate", True)])
def test_restore_checks_quorum_right_before_it_evacuates_and_rebuilds(lose_at, evacuated, monkeypatch):
    """Cut off from the majority after the first check: no evacuation (or no rebuild), exit 1 with what was done."""
    fake, cluster = MaintenanceNova([server("s1", host="compute1")]), LoggingCluster()
    ctx = _dead(fake, cluster, request("done"))
    original = getattr(fake, lose_at)

    def then_lose_quorum(*a, **kw):
        result = original(*a, **kw)
        cluster.has_quorum = False
        return result
    monkeypatch.setattr(fake, lose_at, then_lose_quorum)
    with pytest.raises(common.Halted, match="no quorum") as e:
        restore.restore(ctx, "s1", "img-backup", to="compute3")
    assert bool(fake.evacuations) is evacuated and ("rebuild", "s1") not in fake.calls
    assert "stopped after: s1 marked crashup:restore" in str(e.value)
    assert ("evacuated to compute3" in str(e.value)) is evacuated
