"""Recovery requests (their CIB value) and the repair table: plain data, no cluster needed."""
import json

import pytest

from crashup_lib import pacemaker
from crashup_lib import repair
from tests.fakes import FakeNova
from tests.fakes import server as fake_server


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


def server(vm_state, task_state=None, sid="i-1"):
    return fake_server(sid, name="vm", vm_state=vm_state, task_state=task_state)


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
    servers = [server("active", "rebooting", "i-1"), server("paused", sid="i-2"), server("active", "deleting", "i-3"),
               server("active", sid="i-4")]
    nova = FakeNova(servers)
    for decision in repair.decide_all(servers):
        repair.apply(nova, decision)
    assert nova.resets == [("i-1", "active"), ("i-2", "error")]


# --- the hold, and requests of the previous version -------------------------------------------------------------------

OLD_KEYS = {"state", "mode", "fenced_at", "updated_at", "host", "note", "filter_mode"}


def test_the_hold_round_trips_and_old_readers_find_every_field_they_know():
    held = req(state="recovering", note="storm guard: automatic evacuation stopped", hold=pacemaker.Hold.STORM)
    assert pacemaker.RecoveryRequest.from_value("compute1", held.to_value()) == held
    data = json.loads(held.to_value())
    assert set(data) == OLD_KEYS | {"hold"} and data["hold"] == "storm"      # a reader of old ignores "hold"
    assert (data["state"], data["mode"], data["note"]) == ("recovering", "auto", held.note)


@pytest.mark.parametrize("state, note, hold", [
    ("recovering", "notified: waiting for release", pacemaker.Hold.NOTIFIED),
    ("recovering", "storm guard: automatic evacuation stopped", pacemaker.Hold.STORM),
    ("recovering", "waiting for another nova-compute to be up to take the instances",
     pacemaker.Hold.WAITING_FOR_COMPUTE),
    ("pending", "fencing not confirmed: no successful fencing of compute1 recorded since Thu Jan  1 00:16:40 1970",
     pacemaker.Hold.FENCING_UNCONFIRMED),
    ("pending", "recorded by fencing", pacemaker.Hold.NONE),
    ("recovering", "fenced again while recovering", pacemaker.Hold.NONE),
    ("recovering", "resumed by the operator", pacemaker.Hold.NONE),
    ("done", "4 evacuated, 0 failed, 0 skipped", pacemaker.Hold.NONE),
])
def test_an_old_format_request_gets_its_hold_from_its_note(state, note, hold):
    value = json.dumps({"state": state, "mode": "auto", "fenced_at": 1000.0, "updated_at": 1001.0, "host": "compute1",
                        "note": note, "filter_mode": ""})
    read = pacemaker.RecoveryRequest.from_value("compute1", value)
    assert (read.state, read.note, read.hold) == (state, note, hold)
    assert json.loads(read.to_value())["hold"] == hold.value              # written back in the new format


def test_the_oldest_format_still_reads():
    read = pacemaker.RecoveryRequest.from_value("compute1", '{"state": "pending", "mode": "notify", "fenced_at": 5}')
    assert (read.updated_at, read.host, read.note, read.hold) == (5.0, "", "", pacemaker.Hold.NONE)


def test_an_unknown_hold_is_unreadable():
    value = req().to_value().replace('"hold":"none"', '"hold":"someday"')
    with pytest.raises(pacemaker.PacemakerError, match="unreadable recovery request of compute1"):
        pacemaker.RecoveryRequest.from_value("compute1", value)


def test_every_move_clears_the_hold():
    held = req(state="recovering", hold=pacemaker.Hold.NOTIFIED)
    assert held.moved_to("released", "released by the operator").hold is pacemaker.Hold.NONE
    assert held.moved_to("recovering", "x", pacemaker.Hold.STORM).hold is pacemaker.Hold.STORM
