"""Stale-task repair for the instances of a fenced host: what stands between them and evacuation.

nova evacuates only instances in vm_state active, stopped or error with no task in progress. On a host whose
power-off is confirmed every in-progress task is dead (the guest is gone, its compute will never finish it), so the
decision needs no more reality than "fenced": the CrashUp rules (crashup_lib/rules/) with the reality
`host_down`, read here through the API-only outcomes they are checked to give:
- no task, and a vm_state evacuate accepts: nothing to do (keep);
- being deleted (or deleted, shelved): skip; evacuating would resurrect it;
- active with a dead task (rebooting, migrating, ...): reset to active; evacuation rebuilds it running;
- anything else (stopped with a task, paused, suspended, rescued, resized, building): reset to error, as Masakari
  does: nova has nothing truer to say, and the operator sees the instance went through a failure.
The plan's dry run (plan.py) shows these same decisions. apply() is the only I/O.
"""
from __future__ import annotations

import dataclasses

from crashup_lib import rules

EVACUABLE_VM_STATES = ("active", "stopped", "error")


@dataclasses.dataclass(frozen=True)
class Repair:
    server_id: str
    name: str
    vm_state: str
    task_state: str
    action: str                         # "reset-active" | "reset-error" | "skip"
    reason: str


def action_of(outcome: rules.Outcome) -> str | None:
    """A host_down outcome as repair's action (None: nothing to do). rules.check() guarantees host_down outcomes of
    nova are only these: host recovery has the API, not nova's database."""
    if isinstance(outcome, rules.Keep):
        return None
    if isinstance(outcome, rules.Skip):
        return "skip"
    if isinstance(outcome, (rules.Reset, rules.Error)) and outcome.as_dict().get("vm_state") in ("active", "error"):
        return "reset-" + outcome.as_dict()["vm_state"]
    raise ValueError(f"host recovery cannot carry out {outcome!r}")


def decide(server) -> Repair | None:
    """The repair one instance of a fenced host needs, or None. `server` has id, name, vm_state, task_state."""
    task = server.task_state or ""
    vm_state = server.vm_state or ""
    if not task and not vm_state:
        return None                     # nova told nothing: nothing to reset from
    kind, state = ("instance", task) if task else ("instance_vm_state", vm_state)
    outcome = rules.decide("nova", kind, state, rules.HOST_DOWN, vm_state=vm_state)
    action = action_of(outcome)
    if action is None:
        return None
    what = f"{task} in vm_state {vm_state}" if task else f"vm_state {vm_state}"
    return Repair(server.id, server.name, vm_state, task, action, f"{what} on the fenced host: {outcome.why}")


def decide_all(servers) -> list[Repair]:
    return [r for r in (decide(s) for s in servers) if r is not None]


def apply(nova, repair: Repair) -> None:
    """Carry out one decision through nova's API (os-resetState)."""
    if repair.action in ("reset-active", "reset-error"):
        nova.reset_state(repair.server_id, repair.action.removeprefix("reset-"))
