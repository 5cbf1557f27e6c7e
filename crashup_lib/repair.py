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

Its volumes too (decide_volume): nova's evacuation re-attaches each volume of nova's block device mappings on the
new host, asking cinder for a new attachment, which cinder grants only to a volume `available`, or `in-use`/
`reserved` with an attachment record of the same server (cinder/volume/api.py _attachment_reserve). A volume left
`attaching` or `detaching` by the fenced host fails the evacuation (the server ends in ERROR). The cinder rules say
host_down: skip, host recovery rebuilds the attachment; so host recovery applies the rules' outcome for the reality
the evacuation makes: with an attachment record of the server, connected on its (new) host: `running` (in-use,
attached: the record stays, nova replaces it); with none, no connection: `absent` (available, detached). A
multiattach volume is left alone (another server's attach may be the one in progress), as is any outcome the
cinder API cannot carry out; apply_volume() is the I/O (os-reset_status).
"""
from __future__ import annotations

import dataclasses

from crashup_lib import rules

EVACUABLE_VM_STATES = ("active", "stopped", "error")
STUCK_VOLUME_STATES = ("attaching", "detaching")          # what the fenced host's dead attach/detach leaves


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


# --- volumes ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VolumeRepair:
    server_id: str
    volume_id: str
    status: str                         # the status it was stuck in
    action: str                         # "reset-in-use" | "reset-available" | "skip"
    values: rules.Values                # the os-reset_status body ("skip": none)
    reason: str


def decide_volume(server_id: str, volume, records=()) -> VolumeRepair | None:
    """The repair a volume of a server on a fenced host needs before the server's evacuation, or None. `volume`: a
    cinder.Volume; `records`: the server's attachment records (cinder.Attachment, any status; the volume's own
    attachments[] lists only the attached ones)."""
    if volume.status not in STUCK_VOLUME_STATES:
        return None
    if volume.multiattach:
        return VolumeRepair(server_id, volume.id, volume.status, "skip", (),
                            f"{volume.status} multiattach volume: another server's attach or detach may be the one "
                            "in progress; a person checks (the evacuation fails while it stays)")
    outcome = rules.decide("cinder", "volume", volume.status, rules.HOST_DOWN)
    if isinstance(outcome, rules.Skip):         # the rules hand it to host recovery: the evacuation's reality
        has_record = any(r.volume_id == volume.id and r.server_id == server_id for r in records) or \
            bool(volume.attached_to(server_id))
        outcome = rules.decide("cinder", "volume", volume.status, rules.RUNNING if has_record else rules.ABSENT)
    if not isinstance(outcome, rules.Reset) or not rules.via_api("cinder", "volume", outcome):
        return VolumeRepair(server_id, volume.id, volume.status, "skip", (),
                            f"{volume.status} on the fenced host: the rules say {outcome.short()}, which host "
                            "recovery does not carry out; a person checks")
    values = dict(outcome.values)
    action = "reset-in-use" if values.get("status") == "in-use" else "reset-" + str(values.get("status"))
    return VolumeRepair(server_id, volume.id, volume.status, action, outcome.values,
                        f"{volume.status} on the fenced host, so that nova's evacuation can attach it anew: "
                        f"{outcome.why}")


def apply_volume(cinder, repair: VolumeRepair) -> None:
    """Carry out one volume decision through cinder's API (os-reset_status)."""
    if repair.action != "skip":
        cinder.reset_status("volume", repair.volume_id, dict(repair.values))
