"""The recovery request's state mirror (crashup-recovery-state), which the nova-compute clone's location rule reads:
written in the order that errs on the safe side, and put right by the daemon when a writer stopped halfway."""
import dataclasses
import json

import pytest

from crashup_lib import pacemaker
from crashup_lib.pacemaker import RecoveryRequest


@pytest.fixture
def cib(tmp_path, monkeypatch):
    """Pacemaker's tools faked at the PATH: cibadmin prints nodes.xml, crm_attribute logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nodes, calls = tmp_path / "nodes.xml", tmp_path / "calls"
    nodes.write_text("<nodes/>")
    (bin_dir / "cibadmin").write_text(f"#!/bin/sh\ncat {nodes}\n")
    (bin_dir / "crm_attribute").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    quorum = tmp_path / "quorum"
    quorum.write_text("1")
    (bin_dir / "crm_node").write_text(f"#!/bin/sh\ncat {quorum}; echo; grep -q 1 {quorum}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    class Cib:
        @staticmethod
        def attributes(node, **attrs):
            pairs = "".join(f"<nvpair id='{node}-{k}' name='{k}' value='{v}'/>" for k, v in attrs.items())
            nodes.write_text(f"<nodes><node id='{node}' uname='{node}'><instance_attributes id='n'>{pairs}"
                             "</instance_attributes></node></nodes>")

        @staticmethod
        def quorum(has: bool):
            quorum.write_text("1" if has else "0")

        @staticmethod
        def writes():
            text = calls.read_text() if calls.exists() else ""
            return [line.split("--name ")[1].split()[0:3:2] for line in text.splitlines()]
    return Cib


def req(state):
    return RecoveryRequest(node="compute1", state=state, mode="auto", fenced_at=1.0, updated_at=2.0)


def test_an_opening_request_holds_the_node_before_it_is_written(cib):
    pacemaker.write_request(req("pending"))
    assert cib.writes() == [["crashup-recovery-state", "pending"], ["crashup-recovery", req("pending").to_value()]]


def test_a_closing_request_is_closed_before_the_node_is_let_go(cib):
    pacemaker.write_request(req("done"))
    assert cib.writes() == [["crashup-recovery", req("done").to_value()], ["crashup-recovery-state", "done"]]


def test_a_partition_without_quorum_writes_no_request_and_fences_nothing(cib):
    cib.quorum(False)
    for state in ("pending", "done"):
        with pytest.raises(pacemaker.NoQuorum, match="no quorum"):
            pacemaker.write_request(req(state))
    with pytest.raises(pacemaker.NoQuorum):
        pacemaker.request_fencing("compute1")
    assert cib.writes() == []
    cib.quorum(True)
    pacemaker.write_request(req("done"))
    assert len(cib.writes()) == 2


def test_survey_finds_requests_whose_mirror_lags(cib):
    value = req("done").to_value().replace("'", "&apos;")
    cib.attributes("compute1", **{"crashup-recovery": value, "crashup-recovery-state": "recovering"})
    found, lagging = pacemaker.survey()
    assert found["compute1"].state == "done" and [r.node for r in lagging] == ["compute1"]
    cib.attributes("compute1", **{"crashup-recovery": value, "crashup-recovery-state": "done"})
    assert pacemaker.survey()[1] == []
    assert json.loads(found["compute1"].to_value())["state"] == "done"


def test_the_daemon_puts_a_mirror_right_only_when_the_lag_lasts(cib):
    from crashup_lib.recovery.daemon import Daemon
    value = req("done").to_value().replace("'", "&apos;")
    cib.attributes("compute1", **{"crashup-recovery": value, "crashup-recovery-state": "recovering"})
    daemon = Daemon(None, state_dir="/nonexistent")
    daemon.tick()                                     # maybe a writer between its two writes: leave it
    assert cib.writes() == []
    daemon.tick()                                     # the same lag again: the writer stopped halfway
    assert cib.writes() == [["crashup-recovery-state", "done"]]


def test_fencing_again_lifts_the_hold_as_the_previous_fence_agent_does(cib, tmp_path):
    """A node fenced again while its recovery is held (storm guard, notify hand-off) gets a fresh look from the
    pipeline: what the previous version did (its note, which was its hold, changed), and still does mid-upgrade."""
    import re
    held = dataclasses.replace(req("recovering"), note="storm guard: automatic evacuation stopped",
                               hold=pacemaker.Hold.STORM)
    cib.attributes("compute1", **{"crashup-recovery": held.to_value().replace("'", "&apos;"),
                                  "crashup-recovery-state": "recovering"})
    recorded = pacemaker.record_failure("compute1", "auto")
    assert (recorded.state, recorded.hold, recorded.note) == ("recovering", pacemaker.Hold.NONE,
                                                              "fenced again while recovering")
    written = re.search(r"--update (\{.*\}) --lifetime", (tmp_path / "calls").read_text()).group(1)
    assert json.loads(written)["hold"] == "none" and json.loads(written)["note"] == "fenced again while recovering"
