"""The CrashUp decision tables (crashup_lib/rules/): consistency, rows checked against the services' own
state machines, the generated docs, and host recovery's agreement with them."""
import dataclasses
import pathlib
import re
import subprocess
import sys
import types

import pytest

from crashup_lib import rules as R
from crashup_lib import repair
from crashup_lib.rules import docs, tables

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOVA_FIELDS = ROOT / ".venv-nova/lib/python3.11/site-packages/nova/objects/fields.py"


def test_tables_are_consistent():
    assert R.check() == []


def test_every_nova_task_state_has_an_outcome_for_every_reality():
    for state in R.NOVA_TASK_STATES:
        assert R.rule_for("nova", "instance", state).state == state
        for reality in R.kind_of("nova", "instance").reality_names:
            for vm_state in R.NOVA_VM_STATES:
                outcome = R.decide("nova", "instance", state, reality, vm_state=vm_state)
                assert outcome.why, (state, reality)
    for k in R.KINDS:
        assert set(R.CORE_REALITIES) <= set(k.reality_names)
        for state in R.stuck_states(k.service, k.kind):
            assert [r for r, _ in R.rule_for(k.service, k.kind, state).outcomes] == list(k.reality_names)


@pytest.mark.skipif(not NOVA_FIELDS.exists(), reason="the lab's nova is not installed")
def test_nova_task_states_are_those_of_the_installed_nova():
    text = NOVA_FIELDS.read_text()
    body = text[text.index("class InstanceTaskState"):]
    body = body[:body.index("ALL = (")]
    assert set(re.findall(r"^    [A-Z_]+ = ['\"]([a-z_-]+)['\"]", body, re.M)) == set(R.NOVA_TASK_STATES)


@pytest.mark.parametrize("bad, problem", [
    (R.Reset(R.values_of({"vm_state": "stopped", "task_state": None})), "os-resetState cannot set"),
    (R.CasUpdate(R.values_of({"task_state": None})), "host recovery has only the API"),
])
def test_check_finds_a_reset_the_api_cannot_express(monkeypatch, bad, problem):
    row = R.rule_for("nova", "instance", "rebooting")
    broken = dataclasses.replace(row, state="made-up", outcomes=tuple(
        (reality, bad if reality == R.HOST_DOWN else o) for reality, o in row.outcomes))
    monkeypatch.setattr(tables, "RULES", R.RULES + (broken,))
    assert any(problem in p and "made-up" in p for p in R.check())


def test_check_finds_a_missing_reality_and_a_glance_move_glance_refuses(monkeypatch):
    row = R.rule_for("glance", "image", "saving")
    short = dataclasses.replace(row, state="killed", outcomes=row.outcomes[:-1])
    saving = R.CasUpdate(R.values_of({"status": "saving"}))
    back = dataclasses.replace(row, state="importing", outcomes=tuple((r, saving) for r, _ in row.outcomes))
    monkeypatch.setattr(tables, "RULES", R.RULES + (short, back))
    problems = "\n".join(R.check())
    assert "('glance', 'image', 'killed'): outcomes for" in problems
    assert "glance does not go from importing to saving" in problems


def nova(state, reality, vm_state="active"):
    return R.decide("nova", "instance", state, reality, vm_state=vm_state)


@pytest.mark.parametrize("state, reality, vm_state, kind, values", [
    ("rebooting", "running", "active", R.Reset, {"vm_state": "active", "task_state": None}),
    ("reboot_started_hard", "running", "stopped", R.Reset, {"vm_state": "active", "task_state": None}),
    ("rebooting", "shut_off", "active", R.Error, {"vm_state": "error", "task_state": None}),
    ("spawning", "absent", "building", R.Error, {"vm_state": "error", "task_state": None}),
    ("spawning", "running", "building", R.Error, {"vm_state": "error", "task_state": None}),   # as _init_instance
    ("rebuild_spawning", "running", "active", R.Error, {"vm_state": "error", "task_state": None}),
    ("image_uploading", "running", "active", R.Reset, {"vm_state": "active", "task_state": None}),
    ("image_uploading", "shut_off", "stopped", R.CasUpdate, {"task_state": None}),     # keeps the vm_state
    ("image_snapshot", "unknown", "paused", R.CasUpdate, {"task_state": None}),
    ("powering-off", "shut_off", "active", R.CasUpdate, {"vm_state": "stopped", "task_state": None}),
    ("powering-off", "running", "error", R.Reset, {"vm_state": "error", "task_state": None}),
    ("powering-on", "running", "stopped", R.Reset, {"vm_state": "active", "task_state": None}),
    ("powering-on", "shut_off", "stopped", R.CasUpdate, {"task_state": None}),
    ("pausing", "paused", "active", R.CasUpdate, {"vm_state": "paused", "task_state": None}),
    ("suspending", "suspended", "active", R.CasUpdate, {"vm_state": "suspended", "task_state": None}),
    ("resize_finish", "running", "active", R.CasUpdate, {"vm_state": "resized", "task_state": None}),
    ("resize_confirming", "running", "resized", R.Reset, {"vm_state": "active", "task_state": None}),
    ("resize_migrating", "shut_off", "stopped", R.CasUpdate, {"task_state": None}),
    ("resize_migrating", "shut_off", "active", R.Error, {"vm_state": "error", "task_state": None}),
    ("migrating", "running", "active", R.Reset, {"vm_state": "active", "task_state": None}),
    ("shelving_offloading", "absent", "shelved", R.CasUpdate, {"task_state": None}),
    ("unshelving", "absent", "shelved_offloaded", R.CasUpdate, {"task_state": None}),
    ("rebooting", "host_down", "active", R.Reset, {"vm_state": "active", "task_state": None}),
    ("powering-on", "host_down", "stopped", R.Error, {"vm_state": "error", "task_state": None}),
])
def test_nova_rows(state, reality, vm_state, kind, values):
    outcome = nova(state, reality, vm_state)
    assert type(outcome) is kind and outcome.as_dict() == values and outcome.why


@pytest.mark.parametrize("state", ["deleting", "soft-deleting"])
def test_nova_deletes_are_left_to_nova_whatever_the_reality(state):
    for reality in R.kind_of("nova", "instance").reality_names:
        assert isinstance(nova(state, reality), R.Skip)


def test_nova_outcome_that_depends_on_the_vm_state_needs_it():
    with pytest.raises(ValueError, match="depends on the vm_state"):
        R.decide("nova", "instance", "image_snapshot", "running")
    assert isinstance(R.decide("nova", "instance", "spawning", "running"), R.Error)   # does not depend on it


def test_unknown_states_fall_to_the_kind_row_and_unknown_kinds_fail():
    assert isinstance(nova("a-future-task", "running"), R.Skip)
    assert nova("a-future-task", "host_down").as_dict()["vm_state"] == "active"
    assert isinstance(R.decide("cinder", "volume", "a-future-status", "absent"), R.Skip)
    with pytest.raises(R.UnknownState):
        R.decide("swift", "object", "x", "absent")
    with pytest.raises(ValueError, match="reality 'paused'"):
        R.decide("cinder", "volume", "creating", "paused")


def cinder(state, reality, kind="volume"):
    return R.decide("cinder", kind, state, reality)


@pytest.mark.parametrize("state, reality, kind, values", [
    ("attaching", "absent", R.Reset, {"status": "available", "attach_status": "detached"}),
    ("attaching", "running", R.Reset, {"status": "in-use", "attach_status": "attached"}),
    ("detaching", "running", R.Reset, {"status": "in-use", "attach_status": "attached"}),
    ("detaching", "absent", R.Reset, {"status": "available", "attach_status": "detached"}),
    ("creating", "absent", R.Error, {"status": "error"}),
    ("creating", "shut_off", R.Reset, {"status": "available"}),
    ("downloading", "shut_off", R.Error, {"status": "error"}),
    ("uploading", "running", R.Reset, {"status": R.BY_ATTACHMENTS}),
    ("backing-up", "host_down", R.Reset, {"status": R.BY_ATTACHMENTS}),
    ("restoring-backup", "running", R.Error, {"status": "error_restoring"}),
    ("extending", "shut_off", R.Error, {"status": "error_extending"}),
    ("deleting", "absent", R.Reset, {"status": "error_deleting"}),    # os-reset_status refuses 'deleting'
    ("retyping", "shut_off", R.Reset, {"status": R.BY_ATTACHMENTS, "migration_status": "error"}),
])
def test_cinder_volume_rows(state, reality, kind, values):
    outcome = cinder(state, reality)
    assert type(outcome) is kind and outcome.as_dict() == values


def test_cinder_waiting_states_are_not_forced():
    assert isinstance(cinder("reserved", "absent"), R.Skip)          # a shelved-offloaded instance's volume
    assert isinstance(cinder("attaching", "host_down"), R.Skip)
    assert isinstance(cinder("deleting", "host_down"), R.Skip)
    assert "awaiting-transfer" not in R.stuck_states("cinder", "volume")
    assert isinstance(cinder("awaiting-transfer", "shut_off"), R.Skip)


def test_cinder_backups():
    assert cinder("creating", "running", "backup").as_dict() == {"status": "error"}
    assert cinder("restoring", "running", "backup").as_dict() == {"status": "available"}
    deleting = cinder("deleting", "absent", "backup")
    assert isinstance(deleting, R.CasUpdate) and not R.via_api("cinder", "backup", deleting)


@pytest.mark.parametrize("state, reality, kind, status", [
    ("saving", "absent", R.Error, "killed"),
    ("saving", "running", R.Error, "killed"),
    ("importing", "shut_off", R.CasUpdate, "queued"),
    ("uploading", "absent", R.CasUpdate, "queued"),
    ("pending_delete", "absent", R.CasUpdate, "deleted"),
])
def test_glance_rows(state, reality, kind, status):
    outcome = R.decide("glance", "image", state, reality)
    assert type(outcome) is kind and outcome.as_dict()["status"] == status
    assert not R.via_api("glance", "image", outcome)
    assert status in R.GLANCE_TRANSITIONS[state]


def test_glance_queued_is_never_killed():
    for reality in R.CORE_REALITIES:
        assert isinstance(R.decide("glance", "image", "queued", reality), (R.Skip, R.Report))


@pytest.mark.parametrize("reality, status", [("host_down", "DOWN"), ("absent", "DOWN"), ("running", "ACTIVE")])
def test_neutron_port_build(reality, status):
    outcome = R.decide("neutron", "port", "BUILD", reality)
    assert isinstance(outcome, R.CasUpdate) and outcome.as_dict() == {"status": status}


def test_stuck_states_are_what_the_scanners_look_for():
    assert R.stuck_states("nova", "instance") == R.NOVA_TASK_STATES
    assert R.stuck_states("nova", "instance_vm_state") == ("building",)
    assert set(R.stuck_states("cinder", "volume")) == {
        "creating", "attaching", "detaching", "deleting", "extending", "backing-up", "restoring-backup",
        "downloading", "uploading", "retyping", "reserved", "maintenance"}
    assert R.stuck_states("cinder", "volume_migration") == ("starting", "migrating", "completing")
    assert R.stuck_states("cinder", "backup") == ("creating", "restoring", "deleting")
    assert R.stuck_states("glance", "image") == ("queued", "saving", "uploading", "importing", "pending_delete")
    assert R.stuck_states("neutron", "port") == ("BUILD",)


def test_via_api():
    assert R.via_api("nova", "instance", nova("rebooting", "running"))
    assert not R.via_api("nova", "instance", nova("powering-off", "shut_off"))
    assert R.via_api("nova", "instance", nova("spawning", "absent", "building"))
    assert R.via_api("cinder", "volume", cinder("attaching", "absent"))
    assert not R.via_api("cinder", "volume", cinder("attaching", "host_down"))      # a Skip changes nothing


def test_committed_docs_are_the_rendered_tables():
    assert (ROOT / "docs/stale-rules.md").read_text() == docs.markdown(), \
        "docs/stale-rules.md is stale: python -m crashup_lib.rules.docs --markdown > docs/stale-rules.md"


def test_module_prints_the_markdown_and_checks():
    out = subprocess.run([sys.executable, "-m", "crashup_lib.rules.docs", "--markdown"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert out.stdout == docs.markdown() and out.stderr == ""
    assert subprocess.run([sys.executable, "-m", "crashup_lib.rules.docs", "--check"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() == "consistent"


def expected_host_recovery(vm_state, task):
    """Host recovery's policy, stated independently of the tables (repair.py's docstring)."""
    if task in ("deleting", "soft-deleting", "restoring"):
        return "skip"
    if not task and (vm_state in ("active", "stopped", "error", "deleted", "soft-delete", "shelved",
                                  "shelved_offloaded", "")):
        return None
    return "reset-active" if vm_state == "active" else "reset-error"


@pytest.mark.parametrize("vm_state", R.NOVA_VM_STATES + ("", "weird"))
def test_host_recovery_agrees_with_the_rules_for_host_down(vm_state):
    for task in R.NOVA_TASK_STATES + (None, "a-future-task"):
        server = types.SimpleNamespace(id="i-1", name="vm", vm_state=vm_state, task_state=task)
        decision = repair.decide(server)
        assert (decision.action if decision else None) == expected_host_recovery(vm_state, task), (vm_state, task)
        if decision is None:
            continue
        kind, state = ("instance", task) if task else ("instance_vm_state", vm_state)
        outcome = R.decide("nova", kind, state, "host_down", vm_state=vm_state)
        assert repair.action_of(outcome) == decision.action and outcome.why in decision.reason
