"""crashup evacuate (fence through Pacemaker, the daemon evacuates) and crashup restore (evacuate off a dead host if
needed, then rebuild from a backup image): decisions and runs against the fakes."""
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
            restore.decide(s1, svc(fake, "compute1"), req, in_place, "img-backup")
    else:
        assert restore.decide(s1, svc(fake, "compute1"), req, in_place, "img-backup").evacuate is evacuate


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
