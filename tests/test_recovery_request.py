"""Recovery requests (their CIB value) and the repair table: plain data, no cluster needed."""
import types

import pytest

from crashup_lib import pacemaker
from crashup_lib.recovery import repair


def req(**kw):
    base = dict(node="compute1", state="pending", mode="auto", fenced_at=1000.5, updated_at=1000.5)
    base.update(kw)
    return pacemaker.RecoveryRequest(**base)


def test_request_round_trips_through_its_cib_value():
    original = req(host="compute1.example.org", note="recorded by fencing", filter_mode="tagged")
    assert pacemaker.RecoveryRequest.from_value("compute1", original.to_value()) == original
    assert original.open and not req(state="done").open and not req(state="released").open


@pytest.mark.parametrize("value", ["", "not json", '{"state": "pending"}', '{"state": "lost", "mode": "auto", '
                                   '"fenced_at": 1}', '{"state": "done", "mode": "sometimes", "fenced_at": 1}'])
def test_unreadable_request_is_a_clear_error(value):
    with pytest.raises(pacemaker.PacemakerError, match="unreadable recovery request of compute1"):
        pacemaker.RecoveryRequest.from_value("compute1", value)


def test_moved_to_keeps_identity_and_stamps_time():
    moved = req().moved_to("recovering", "fencing confirmed", host="compute1")
    assert (moved.node, moved.fenced_at, moved.state, moved.host) == ("compute1", 1000.5, "recovering", "compute1")
    assert moved.updated_at > 1000.5
    with pytest.raises(ValueError):
        req().moved_to("forgotten")


def server(vm_state, task_state=None):
    return types.SimpleNamespace(id="i-1", name="vm", vm_state=vm_state, task_state=task_state)


@pytest.mark.parametrize("vm_state, task_state, action", [
    ("active", None, None), ("stopped", None, None), ("error", None, None),
    ("shelved_offloaded", None, None), ("deleted", None, None),
    ("active", "rebooting", "reset-active"), ("active", "migrating", "reset-active"),
    ("active", "powering-off", "reset-active"),
    ("stopped", "powering-on", "reset-error"), ("paused", None, "reset-error"), ("resized", None, "reset-error"),
    ("building", "spawning", "reset-error"),
    ("active", "deleting", "skip"), ("stopped", "soft-deleting", "skip"),
])
def test_repair_table(vm_state, task_state, action):
    decision = repair.decide(server(vm_state, task_state))
    assert (decision.action if decision else None) == action
    if decision:
        assert decision.reason


def test_apply_calls_reset_state_only_for_resets():
    calls = []
    fake = types.SimpleNamespace(reset_state=lambda sid, state: calls.append((sid, state)))
    for decision in repair.decide_all([server("active", "rebooting"), server("paused"), server("active", "deleting"),
                                       server("active")]):
        repair.apply(fake, decision)
    assert calls == [("i-1", "active"), ("i-1", "error")]
