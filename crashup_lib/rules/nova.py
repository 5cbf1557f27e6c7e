"""The nova rows of the CrashUp decision tables: instances by task_state, and by vm_state when no task is set.

Sources read (the real state machine, the version the lab and the issue name): nova 34.0.0:
nova/objects/fields.py (InstanceTaskState.ALL, InstanceState), nova/compute/task_states.py,
nova/compute/vm_states.py, nova/compute/api.py (check_instance_state: the vm_states each task starts from),
nova/compute/manager.py (_init_instance: what nova-compute does at start-up with each stuck task, the model for
most rows; _retry_reboot; _sync_instance_power_state, which reconciles vm_state with the guest once no task is
set), nova/api/openstack/compute/admin_actions.py (_reset_state: active|error, task_state None).
"""
from __future__ import annotations

from crashup_lib.rules.model import (ABSENT, ANY_STATE, HOST_DOWN, PAUSED, RUNNING, SHUT_OFF, SUSPENDED, UNKNOWN,
                                     ByVmState, CasUpdate, Error, Keep, Kind, Reset, Rule, Skip, make_rows,
                                     values_of)

# nova/objects/fields.py InstanceState, InstanceTaskState.ALL (nova 34)
NOVA_VM_STATES = ("active", "building", "paused", "suspended", "stopped", "rescued", "resized", "soft-delete",
                  "deleted", "error", "shelved", "shelved_offloaded")
NOVA_TASK_STATES = (
    "scheduling", "block_device_mapping", "networking", "spawning", "image_snapshot", "image_snapshot_pending",
    "image_pending_upload", "image_uploading", "image_backup", "updating_password", "resize_prep",
    "resize_migrating", "resize_migrated", "resize_finish", "resize_reverting", "resize_confirming", "rebooting",
    "reboot_pending", "reboot_started", "rebooting_hard", "reboot_pending_hard", "reboot_started_hard", "pausing",
    "unpausing", "suspending", "resuming", "powering-off", "powering-on", "rescuing", "unrescuing", "rebuilding",
    "rebuild_block_device_mapping", "rebuild_spawning", "migrating", "deleting", "soft-deleting", "restoring",
    "shelving", "shelving_image_pending_upload", "shelving_image_uploading", "shelving_offloading", "unshelving")

_NOVA_REALITIES = (
    (RUNNING, "the guest runs on the instance's host (nova power_state RUNNING)"),
    (PAUSED, "the guest is paused (PAUSED)"),
    (SUSPENDED, "the guest is suspended (SUSPENDED; libvirt: a managed-save image)"),
    (SHUT_OFF, "the guest is defined but not running (SHUTDOWN, CRASHED)"),
    (ABSENT, "the hypervisor of the instance's host has no such guest"),
    (HOST_DOWN, "the instance's host is fenced or its nova-compute is down: nothing there finishes the task"),
    (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times"),
)
_NOVA_API = (("vm_state", frozenset({"active", "error"})), ("task_state", frozenset({None})))
_NOVA_ERROR = values_of({"vm_state": "error", "task_state": None})

NOVA_KINDS: tuple[Kind, ...] = (
    Kind("nova", "instance", "task_state", _NOVA_REALITIES, "os-resetState", _NOVA_API, _NOVA_ERROR),
    Kind("nova", "instance_vm_state", "vm_state (no task)", _NOVA_REALITIES, "os-resetState", _NOVA_API,
         _NOVA_ERROR),
)

# Outcomes used by many nova rows.
ACTIVE = Reset(values_of({"vm_state": "active", "task_state": None}))


def _nova_cas(why: str = "", **columns) -> CasUpdate:
    return CasUpdate(values_of({"task_state": None, **columns}), why)


#: clear the task, keep the vm_state: os-resetState when the vm_state is one it can set, else CAS task_state only
#: (nova's own start-up does this for image_* and resize_prep: manager.py _init_instance)
CLEAR_TASK = ByVmState(((("active",), ACTIVE),
                        (("error",), Reset(values_of({"vm_state": "error", "task_state": None})))),
                       _nova_cas(), "clear task")
#: what host recovery does (an evacuation follows): active stays active (evacuation rebuilds it running), anything
#: else goes to error (evacuate refuses it; nova has nothing truer to say): repair.py, API only
HOST_DOWN_RESET = ByVmState(((("active",), Reset(ACTIVE.values, "the task died with the host; evacuation "
                                                                 "rebuilds the instance running")),),
                            Error("the task died with the host: evacuate refuses this vm_state; error until "
                                  "rebuilt elsewhere"), "host recovery")
_GONE = "the guest is gone: nothing nova can finish"
ACTIVE_THEN_SYNC = Reset(ACTIVE.values, "active with no task: nova's _sync_power_states stops it")


def _err(why: str = "") -> Error:
    return Error(why)


UNKNOWN_ERROR = Error("the Health Collector could not tell the guest's state, recovery_resync_count times")


def _nova(states, why, default, stuck=True, **by_reality) -> list[Rule]:
    by_reality.setdefault(HOST_DOWN, HOST_DOWN_RESET)
    if isinstance(default, Error):
        by_reality.setdefault(UNKNOWN, UNKNOWN_ERROR)
    return make_rows("nova", "instance", states, why, tuple(r for r, _ in _NOVA_REALITIES), default, stuck,
                     **by_reality)


NOVA_RULES = [
    *_nova(("scheduling", "block_device_mapping", "networking", "spawning"),
           "the build did not finish; nova-compute sets such instances to error at start-up (_init_instance)",
           _err()),
    *_nova(("image_snapshot", "image_snapshot_pending", "image_pending_upload", "image_uploading", "image_backup"),
           "the snapshot is abandoned (its glance image is the glance rows' business); nova clears the task at "
           "start-up and keeps the vm_state (_init_instance); _sync_power_states then reconciles the power state",
           CLEAR_TASK, absent=_err(_GONE)),
    *_nova(("updating_password",),
           "set_admin_password never changes the vm_state: the task is only cleared",
           CLEAR_TASK, absent=_err(_GONE)),
    *_nova(("resize_prep",),
           "nothing moved yet (prep_resize on the destination): nova clears the task at start-up (_init_instance)",
           CLEAR_TASK, absent=_err(_GONE)),
    *_nova(("resize_migrating",),
           "disks were being copied: nova reverts (finish_revert_migration) at start-up; a still-running source "
           "means the copy never powered it off",
           _err("the source was powered off for the copy: only nova-compute's revert "
                "(finish_revert_migration) puts it back"),
           running=CLEAR_TASK,
           shut_off=ByVmState(((("stopped",), _nova_cas("it was stopped before the resize")),),
                              _err("the source was powered off for the copy: only nova-compute's revert "
                                   "(finish_revert_migration) puts it back")),
           absent=_err(_GONE)),
    *_nova(("resize_migrated",),
           "the disks are on the destination, finish_resize never ran: the instance is between two hosts",
           _err("between two hosts: an operator decides (revert or finish)")),
    *_nova(("resize_finish",),
           "finish_resize spawns the guest on the destination and leaves vm_state resized (awaiting confirm)",
           _err(),
           running=_nova_cas(vm_state="resized"), shut_off=_nova_cas(vm_state="resized"),
           absent=_err(_GONE)),
    *_nova(("resize_reverting",),
           "a revert destroys the destination guest then respawns the source: half done, the two hosts disagree",
           _err("revert half done: an operator decides")),
    *_nova(("resize_confirming",),
           "confirm only deletes the source copy; the instance runs on the destination (confirm_resize leaves "
           "active or stopped by its power state)",
           _err(),
           running=ACTIVE, shut_off=_nova_cas(vm_state="stopped"), absent=_err(_GONE)),
    *_nova(("rebooting", "reboot_pending", "reboot_started", "rebooting_hard", "reboot_pending_hard",
            "reboot_started_hard"),
           "a running guest is what a reboot leaves: nova clears the task and sets active at start-up "
           "(_init_instance); a guest left off or paused needs the retried (hard) reboot nova-compute would do "
           "(_retry_reboot)",
           _err("the reboot left the guest not running: a hard reboot brings it back"),
           running=ACTIVE, absent=_err(_GONE)),
    *_nova(("pausing",),
           "from active: a running guest means the pause never happened (nova clears the task at start-up), a "
           "paused one that it did",
           _err(),
           running=ACTIVE, paused=_nova_cas(vm_state="paused"),
           shut_off=ACTIVE_THEN_SYNC,
           absent=_err(_GONE)),
    *_nova(("unpausing",),
           "from paused: a running guest means the unpause happened (nova clears the task at start-up)",
           _err(),
           running=ACTIVE, paused=CLEAR_TASK,
           shut_off=ACTIVE_THEN_SYNC,
           absent=_err(_GONE)),
    *_nova(("suspending",),
           "from active: a running guest means the suspend never happened, a suspended one that it did",
           _err(),
           running=ACTIVE, suspended=_nova_cas(vm_state="suspended"),
           shut_off=ACTIVE_THEN_SYNC,
           absent=_err(_GONE)),
    *_nova(("resuming",),
           "from suspended: a running guest means the resume happened",
           _err(),
           running=ACTIVE, suspended=CLEAR_TASK, shut_off=CLEAR_TASK, absent=_err(_GONE)),
    *_nova(("powering-off",),
           "from active or error: an off guest is what the stop leaves (vm_state stopped); a running one never "
           "got the stop",
           _err(),
           running=CLEAR_TASK, paused=CLEAR_TASK, suspended=CLEAR_TASK,
           shut_off=_nova_cas(vm_state="stopped"), absent=_err(_GONE)),
    *_nova(("powering-on",),
           "from stopped: a running guest is what the start leaves (active); an off one never got it",
           _err(),
           running=ACTIVE, shut_off=CLEAR_TASK, absent=_err(_GONE)),
    *_nova(("rescuing", "unrescuing"),
           "a rescue swaps the guest for a rescue domain and back: which one runs cannot be told from power",
           _err("rescue half done: an operator unrescues or rebuilds")),
    *_nova(("rebuilding", "rebuild_block_device_mapping", "rebuild_spawning"),
           "the rebuild did not finish: nova-compute sets such instances to error at start-up (_init_instance)",
           _err()),
    *_nova(("migrating",),
           "a live migration that did not finish: nova aborts it and clears the task at start-up "
           "(_reset_live_migration) while the guest is still on the source",
           _err(),
           running=CLEAR_TASK, paused=CLEAR_TASK,
           absent=_err("not on the source: it may run on the destination; an operator decides where it lives")),
    *_nova(("deleting", "soft-deleting"),
           "being deleted: nova-compute finishes the delete at start-up (_init_instance, "
           "_complete_partial_deletion); evacuating or resetting it would resurrect it",
           Skip(), host_down=Skip()),
    *_nova(("restoring",),
           "from soft-delete: restore powers the guest on and leaves it active",
           _err(),
           running=ACTIVE, absent=_err(_GONE),
           host_down=Skip("soft-deleted: not evacuated; restored by hand once its host is back")),
    *_nova(("shelving", "shelving_image_pending_upload", "shelving_image_uploading"),
           "the shelve did not finish (its snapshot image is the glance rows' business): the task is cleared "
           "and the vm_state kept, _sync_power_states reconciles the power; the owner shelves again",
           CLEAR_TASK, absent=_err(_GONE), unknown=UNKNOWN_ERROR),
    *_nova(("shelving_offloading",),
           "from shelved: the guest is destroyed and the host freed; stays shelved with no task so that a new "
           "offload (quick once the guest is gone) frees placement properly",
           CLEAR_TASK),
    *_nova(("unshelving",),
           "from shelved or shelved_offloaded: a running guest is what an unshelve leaves; otherwise it stays "
           "shelved with no task and can be unshelved again",
           _err(),
           running=ACTIVE, shut_off=CLEAR_TASK, absent=CLEAR_TASK),
    *_nova((ANY_STATE,),
           "a task state this table does not know: reported for a person, never changed (but on a fenced host "
           "it died with the host, as any task)",
           Skip(), stuck=False),
]

_NOVA_AT_REST = tuple(r for r, _ in _NOVA_REALITIES)
NOVA_RULES += [
    *make_rows("nova", "instance_vm_state", ("active", "stopped", "error"),
               "evacuate accepts these vm_states (nova/compute/api.py evacuate); nothing is stuck",
               _NOVA_AT_REST, Keep(), stuck=False),
    *make_rows("nova", "instance_vm_state", ("shelved", "shelved_offloaded", "soft-delete", "deleted"),
               "not evacuated: shelved instances keep no guest to lose, deleted ones stay deleted",
               _NOVA_AT_REST, Keep(), stuck=False),
    *make_rows("nova", "instance_vm_state", ("paused", "suspended", "rescued", "resized"),
               "a resting state; on a fenced host the guest is gone and evacuate refuses this vm_state: error until "
               "rebuilt elsewhere",
               _NOVA_AT_REST, Keep(), stuck=False, host_down=Error()),
    *make_rows("nova", "instance_vm_state", ("building",),
               "building with no task: the build died between tasks; nova's _check_instance_build_time sets error",
               _NOVA_AT_REST, Error()),
    *make_rows("nova", "instance_vm_state", (ANY_STATE,),
               "a vm_state this table does not know: left; on a fenced host, error (evacuate refuses it)",
               _NOVA_AT_REST, Skip(), stuck=False, host_down=Error()),
]
