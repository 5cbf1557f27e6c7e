"""`crashup recover NODE [--force]`: with the recovery daemon running anywhere in the cluster the request is its own
(a second pipeline in the CLI would race its worker: test_rack's forced recoveries timed out that way), so the
command lifts the hold and follows the request; with no daemon it runs the recovery in the foreground."""
import argparse
import subprocess
import time

import pytest

from crashup_lib import cli, pacemaker
from crashup_lib.maintenance import common
from crashup_lib.recovery import daemon as recovery_daemon
from tests.fakes import FakeCluster


def held(node="compute1"):
    now = time.time()
    return pacemaker.RecoveryRequest(node=node, state="recovering", mode="auto", fenced_at=now - 10,
                                     updated_at=now - 5, host=node, note="storm guard: automatic evacuation stopped",
                                     hold=pacemaker.Hold.STORM)


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    c = FakeCluster()
    monkeypatch.setattr(pacemaker, "Cluster", lambda: c)
    conf = tmp_path / "crashup.conf"
    conf.write_text("[recovery]\nmode = auto\n")
    c.conf = str(conf)

    def no_daemon(*a, **kw):
        raise AssertionError("the CLI ran a pipeline of its own")
    monkeypatch.setattr(recovery_daemon, "Daemon", no_daemon)
    monkeypatch.setattr("crashup_lib.maintenance.common.STATE_POLL", 0.05)
    monkeypatch.setattr(common.Context, "timeout", property(lambda self: 1.5))     # maintenance_timeout
    return c


def recover(cluster, force=True):
    return cli._recover(argparse.Namespace(config=cluster.conf, node="compute1", force=force))


def test_force_lifts_the_hold_and_follows_the_daemon_until_it_closes_the_request(cluster, capsys, monkeypatch):
    cluster.daemon_on = {"ctl2"}
    cluster.saved["compute1"] = held()
    reads = []
    real = cluster.request

    def request(node):                        # the daemon's worker: it takes the forced request, then closes it
        req = real(node)
        reads.append(req)
        if len(reads) == 3:
            assert req.forced and req.hold is pacemaker.Hold.NONE and req.state == "recovering"
            cluster.saved[node] = req.moved_to("done", "2 evacuated, 0 failed, 0 skipped")
        return real(node)
    monkeypatch.setattr(cluster, "request", request)
    assert recover(cluster) == 0
    out = capsys.readouterr().out
    assert "the recovery daemon on ctl2 runs it" in out
    assert out.rstrip().endswith("compute1: recovery done: 2 evacuated, 0 failed, 0 skipped")


def test_a_recovery_the_daemon_does_not_finish_in_time_is_one_line_and_exit_1(cluster, capsys):
    cluster.daemon_on = {"ctl1"}
    cluster.saved["compute1"] = held()
    start = time.monotonic()
    assert recover(cluster) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err.strip()
    assert err == "crashup: compute1: recovery not finished within 1.5s; it goes on (crashup status)"
    assert cluster.saved["compute1"].forced                      # the hold stays lifted: the daemon goes on


def test_without_a_daemon_the_recovery_runs_here(cluster, monkeypatch, capsys):
    cluster.saved["compute1"] = held()
    ran = []

    class Runner:
        def __init__(self, cfg, **kw):
            pass

        def recovery(self):
            return self

        def recover(self, req):
            ran.append(req)
            return type("P", (), {"request": req.moved_to("done", "0 evacuated"), "waiting": False,
                                  "summary": "compute1: done"})()

        def close_emitter(self):
            pass
    monkeypatch.setattr(recovery_daemon, "Daemon", Runner)
    assert recover(cluster) == 0
    assert len(ran) == 1 and ran[0].forced
    assert capsys.readouterr().out.strip() == "compute1: done"


def test_a_held_request_without_force_says_how_to_go_on_and_changes_nothing(cluster, capsys):
    cluster.daemon_on = {"ctl1"}
    cluster.saved["compute1"] = held()
    assert recover(cluster, force=False) == 1
    assert "--force` to go on" in capsys.readouterr().err
    req = cluster.saved["compute1"]
    assert req.hold is pacemaker.Hold.STORM and not req.forced


def test_force_on_a_request_whose_fencing_is_unconfirmed_keeps_it_pending(cluster):
    """--force lifts a hold; it is never a way past the fencing proof (the pipeline checks a pending request's)."""
    cluster.daemon_on = {"ctl1"}
    now = time.time()
    cluster.saved["compute1"] = pacemaker.RecoveryRequest(node="compute1", state="pending", mode="auto",
                                                          fenced_at=now, updated_at=now, note="recorded by fencing")
    assert recover(cluster) == 1                                  # followed until maintenance_timeout
    req = cluster.saved["compute1"]
    assert req.state == "pending" and req.forced


def test_a_crashup_resource_that_is_not_configured_is_no_daemon(monkeypatch):
    """crm_resource --locate exits 105 for a resource the CIB lacks: running nowhere (so `crashup recover` runs the
    recovery itself, as test_without_a_daemon_the_recovery_runs_here shows), not an error."""
    seen = []
    xml = '<pacemaker-result api-version="2.25" request="crm_resource"><status code="105" message="No such object"/>' \
          '</pacemaker-result>'
    done = subprocess.CompletedProcess([], 105, xml, "")
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: seen.append(argv) or done)
    assert pacemaker.running_on("crashup") == set()
    assert seen[0][:2] == ["crm_resource", "--locate"]
