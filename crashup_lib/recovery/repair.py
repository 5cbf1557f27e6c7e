"""Stale-task repair for the instances of a fenced host: what stands between them and evacuation.

nova evacuates only instances in vm_state active, stopped or error with no task in progress. On a host whose
power-off is confirmed every in-progress task is dead (the guest is gone, its compute will never finish it), so the
decision needs no more reality than "fenced":
- no task, and a vm_state evacuate accepts: nothing to do;
- being deleted (or deleted, shelved): skip; evacuating would resurrect it;
- active with a dead task (rebooting, migrating, ...): reset to active; evacuation rebuilds it running;
- anything else (stopped with a task, paused, suspended, rescued, resized, building): reset to error, as Masakari
  does: nova has nothing truer to say, and the operator sees the instance went through a failure.
The plan's dry run (plan.py) shows these same decisions. apply() is the only I/O.
"""
from __future__ import annotations

import dataclasses

EVACUABLE_VM_STATES = ("active", "stopped", "error")
_BEING_DELETED = ("deleting", "soft-deleting", "restoring")
_NOT_EVACUATED = ("deleted", "soft-delete", "shelved", "shelved_offloaded", "")


@dataclasses.dataclass(frozen=True)
class Repair:
    server_id: str
    name: str
    vm_state: str
    task_state: str
    action: str                         # "reset-active" | "reset-error" | "skip"
    reason: str


def decide(server) -> Repair | None:
    """The repair one instance of a fenced host needs, or None. `server` has id, name, vm_state, task_state."""
    task = server.task_state or ""
    vm_state = server.vm_state or ""
    if task in _BEING_DELETED:
        return Repair(server.id, server.name, vm_state, task, "skip", f"{task}: being deleted, not evacuated")
    if not task and (vm_state in EVACUABLE_VM_STATES or vm_state in _NOT_EVACUATED):
        return None
    if vm_state == "active":
        return Repair(server.id, server.name, vm_state, task, "reset-active",
                      f"{task} died with the fenced host; evacuation rebuilds the instance running")
    what = f"{task} in vm_state {vm_state}" if task else f"vm_state {vm_state}"
    return Repair(server.id, server.name, vm_state, task, "reset-error",
                  f"{what} on the fenced host: evacuate refuses it; error until rebuilt elsewhere")


def decide_all(servers) -> list[Repair]:
    return [r for r in (decide(s) for s in servers) if r is not None]


def apply(nova, repair: Repair) -> None:
    """Carry out one decision through nova's API (os-resetState)."""
    if repair.action in ("reset-active", "reset-error"):
        nova.reset_state(repair.server_id, repair.action.removeprefix("reset-"))
