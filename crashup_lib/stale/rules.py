"""The CrashUp decision tables: (service, resource kind, stuck state, observed reality) -> outcome.

Plain data and pure functions, no I/O. The sweep's scanners look for `stuck_states()`, the Health Collector reports
one reality per resource, `decide()` gives the outcome and the fixers carry it out; host recovery
(recovery/repair.py) reads the nova rows with the reality `host_down`. `python -m crashup_lib.stale.rules
--markdown` renders docs/stale-rules.md from these tables (a test keeps the two equal).

Realities (what the Health Collector observed, about what the stuck task works on; each kind says what it means):
running, shut_off, absent, host_down, unknown for every kind, and for nova instances also paused and suspended.
`unknown` is applied only after the collector failed `recovery_resync_count` times.

Outcomes:
- Reset: through the service's own API, which can only express some states (nova os-resetState: vm_state active
  or error, task_state cleared; cinder os-reset_status: volume status, attach_status, migration_status; backups
  available or error). `check()` refuses a Reset the API cannot express.
- CasUpdate: a compare-and-swap write on the service's database, applied only while the row's state and
  updated_at are still what the scan read.
- Error: to the kind's error state (through the API where it can express it) and a
  `crashup.resource.stale_unrecoverable` alert.
- Skip: left as it is (the service itself finishes it, or only a person can decide), reported in the sweep's log.
- Keep: nothing is wrong (host recovery: an instance already in a state evacuation accepts).
- Report: left as it is, with a `crashup.resource.orphaned` event (something exists the database does not
  describe).
- ByVmState (nova only): the outcome depends on the instance's vm_state (nova keeps the vm_state a task started
  from until the task ends).

Sources read (the real state machines, the versions the lab and the issue name):
- nova 34.0.0: nova/objects/fields.py (InstanceTaskState.ALL, InstanceState), nova/compute/task_states.py,
  nova/compute/vm_states.py, nova/compute/api.py (check_instance_state: the vm_states each task starts from),
  nova/compute/manager.py (_init_instance: what nova-compute does at start-up with each stuck task, the model for
  most rows; _retry_reboot; _sync_instance_power_state, which reconciles vm_state with the guest once no task is
  set), nova/api/openstack/compute/admin_actions.py (_reset_state: active|error, task_state None).
- cinder 29.0.0: cinder/objects/fields.py (VolumeStatus, VolumeAttachStatus, VolumeMigrationStatus,
  BackupStatus), cinder/api/contrib/admin_actions.py (os-reset_status; refuses 'deleting'), 
  cinder/api/validation/validators.py (attach_status attached|detached; backup status available|error),
  cinder/volume/manager.py (_do_cleanup at start-up: creating/downloading -> error, uploading -> by attachments,
  deleting resumed), cinder/backup/manager.py (_cleanup_one_volume/_cleanup_one_backup: backing-up -> previous
  status, restoring-backup -> error_restoring, backup creating -> error, restoring -> available).
- glance 33.0.0: glance/domain/__init__.py (Image.valid_state_targets), glance/api/v2/image_data.py (_restore: a
  failed upload goes back to queued), glance/async_/flows/api_image_import.py (importing).
- neutron-lib 5.0.1 neutron_lib/constants.py (PORT_STATUS_*, ROUTER_STATUS_*, FLOATINGIP_STATUS_*),
  neutron_lib/api/definitions/port.py (status: allow_put False, so no API can set it),
  neutron 29.0.0 neutron/plugins/ml2/rpc.py (BUILD while the L2 agent wires the port).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar, Iterable

RUNNING, PAUSED, SUSPENDED, SHUT_OFF, ABSENT, HOST_DOWN, UNKNOWN = (
    "running", "paused", "suspended", "shut_off", "absent", "host_down", "unknown")
CORE_REALITIES = (RUNNING, SHUT_OFF, ABSENT, HOST_DOWN, UNKNOWN)
ANY_STATE = "*"                       # a kind's row for states the table does not name
BY_ATTACHMENTS = "@by-attachments"    # cinder: in-use if the volume keeps attachments, else available (cinder's own
                                      # volume_update_status_based_on_attachment); the fixer reads the attachments

Values = tuple[tuple[str, Any], ...]


def _values(columns: dict[str, Any]) -> Values:
    return tuple(sorted(columns.items()))


def _fmt(values: Values) -> str:
    shown = [(k, v) for k, v in values if (k, v) != ("task_state", None)] or values   # every nova outcome clears it
    return ", ".join(f"{k}={'NULL' if v is None else v}" for k, v in shown)


@dataclasses.dataclass(frozen=True)
class _Change:
    values: Values
    why: str = ""
    action: ClassVar[str] = ""
    verb: ClassVar[str] = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def short(self) -> str:
        return f"{self.verb} {_fmt(self.values)}"


@dataclasses.dataclass(frozen=True)
class Reset(_Change):
    """Through the service's API (nova os-resetState, cinder os-reset_status)."""
    action: ClassVar[str] = "reset"
    verb: ClassVar[str] = "reset"


@dataclasses.dataclass(frozen=True)
class CasUpdate(_Change):
    """A compare-and-swap UPDATE on the service's database (state and updated_at as read)."""
    action: ClassVar[str] = "cas-update"
    verb: ClassVar[str] = "CAS"


@dataclasses.dataclass(frozen=True)
class Error:
    """To the kind's error state (values; empty: the kind's default) and a stale_unrecoverable alert."""
    why: str = ""
    values: Values = ()
    action: ClassVar[str] = "error"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def short(self) -> str:
        return f"**error** {_fmt(self.values)}" if self.values else "**error**"


@dataclasses.dataclass(frozen=True)
class _Leave:
    why: str = ""
    action: ClassVar[str] = ""

    def short(self) -> str:
        return self.action


@dataclasses.dataclass(frozen=True)
class Skip(_Leave):
    """Left as it is (the service finishes it, or only a person can decide), logged."""
    action: ClassVar[str] = "skip"


@dataclasses.dataclass(frozen=True)
class Keep(_Leave):
    """Nothing is wrong."""
    action: ClassVar[str] = "keep"


@dataclasses.dataclass(frozen=True)
class Report(_Leave):
    """Left as it is, with a crashup.resource.orphaned event."""
    action: ClassVar[str] = "report"


Outcome = Reset | CasUpdate | Error | Skip | Keep | Report


@dataclasses.dataclass(frozen=True)
class ByVmState:
    """nova: the outcome for the instance's vm_state (the first case naming it, else `other`)."""
    cases: tuple[tuple[tuple[str, ...], Outcome], ...]
    other: Outcome
    label: str = ""                               # its name in the docs' tables (explained once under them)
    action: ClassVar[str] = "by-vm-state"

    def resolve(self, vm_state: str) -> Outcome:
        return next((o for states, o in self.cases if vm_state in states), self.other)

    def short(self) -> str:
        return self.label or self.expanded()

    def expanded(self) -> str:
        return "; ".join([f"{'/'.join(s)}: {o.short()}" for s, o in self.cases] + [f"else: {self.other.short()}"])


@dataclasses.dataclass(frozen=True)
class Kind:
    service: str
    kind: str
    column: str                                   # the column the stuck state is read from
    realities: tuple[tuple[str, str], ...]        # (reality, what it means for this kind)
    api: str                                      # the API that resets it ("" if none)
    api_columns: tuple[tuple[str, frozenset], ...]  # what that API can set, and to which values (None: NULL)
    error: Values                                 # what Error writes unless a row says otherwise

    @property
    def reality_names(self) -> tuple[str, ...]:
        return tuple(r for r, _ in self.realities)

    def api_can_set(self, values: Values) -> bool:
        allowed = dict(self.api_columns)
        return bool(allowed) and all(k in allowed and v in allowed[k] for k, v in values)


@dataclasses.dataclass(frozen=True)
class Rule:
    service: str
    kind: str
    state: str
    why: str
    outcomes: tuple[tuple[str, Outcome | ByVmState], ...]
    stuck: bool = True                            # the sweep scans for it (False: decided only when asked)

    def outcome(self, reality: str) -> Outcome | ByVmState:
        return dict(self.outcomes)[reality]


class UnknownState(KeyError):
    pass


# ---------------------------------------------------------------------------------------------------------- nova
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
_NOVA_ERROR = _values({"vm_state": "error", "task_state": None})

KINDS: tuple[Kind, ...] = (
    Kind("nova", "instance", "task_state", _NOVA_REALITIES, "os-resetState", _NOVA_API, _NOVA_ERROR),
    Kind("nova", "instance_vm_state", "vm_state (no task)", _NOVA_REALITIES, "os-resetState", _NOVA_API,
         _NOVA_ERROR),
    Kind("cinder", "volume", "status", (
        (RUNNING, "what the task works on exists and is in use: the volume on its backend; for attach/detach, "
                  "the connection on the instance's host with the guest running"),
        (SHUT_OFF, "it exists, idle: the volume on its backend; for attach/detach, connected, the guest off"),
        (ABSENT, "it does not exist: no such volume on the backend; for attach/detach, no connection on the "
                 "instance's host"),
        (HOST_DOWN, "the owner of the task is down: the cinder-volume service of the volume's backend, for "
                    "attach/detach the instance's host (fenced)"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "os-reset_status",
        # cinder/api/contrib/admin_actions.py refuses 'deleting'; in-use needs attachments (BY_ATTACHMENTS
        # resolves to it only then); validators.py: attach_status attached|detached
        (("status", frozenset({"available", "in-use", "error", "error_deleting", "error_extending",
                               "error_restoring", "error_backing-up", "maintenance", BY_ATTACHMENTS})),
         ("attach_status", frozenset({"attached", "detached"})),
         ("migration_status", frozenset({None, "error", "success"}))),
        _values({"status": "error"})),
    Kind("cinder", "volume_migration", "migration_status", (
        (RUNNING, "the migration's destination volume exists and the copy is running"),
        (SHUT_OFF, "the destination volume exists, nothing copies"),
        (ABSENT, "no destination volume"),
        (HOST_DOWN, "the cinder-volume service doing the migration is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "os-reset_status",
        (("migration_status", frozenset({None, "error", "success"})),
         ("status", frozenset({BY_ATTACHMENTS}))),
        _values({"migration_status": "error"})),
    Kind("cinder", "backup", "status", (
        (RUNNING, "the backup's data is complete in the backup store"),
        (SHUT_OFF, "partial data in the backup store"),
        (ABSENT, "no data in the backup store"),
        (HOST_DOWN, "the cinder-backup service that owns it is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "os-reset_status", (("status", frozenset({"available", "error"})),),   # validators.py: available|error
        _values({"status": "error"})),
    Kind("glance", "image", "status", (
        (RUNNING, "the image data is complete in its store (size and checksum as recorded)"),
        (SHUT_OFF, "partial data in its store or in the staging area"),
        (ABSENT, "no data in any store nor in the staging area"),
        (HOST_DOWN, "the glance-api node that streamed the upload or ran the import is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "", (), _values({"status": "killed"})),                                 # glance has no reset API
    Kind("neutron", "port", "status", (
        (RUNNING, "the port's device is wired and up on its binding host"),
        (SHUT_OFF, "the device is wired, link down"),
        (ABSENT, "no device for the port on its binding host"),
        (HOST_DOWN, "the binding host is fenced or its L2 agent is dead"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "", (), _values({"status": "ERROR"})),                 # neutron-lib port.py: status allow_put False
    Kind("neutron", "router", "status", (
        (RUNNING, "an alive L3 agent hosts the router and its namespace is up"),
        (SHUT_OFF, "scheduled to an L3 agent, not set up there yet"),
        (ABSENT, "no L3 agent hosts it"),
        (HOST_DOWN, "the hosting L3 agent's host is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "", (), _values({"status": "ERROR"})),
)

# Outcomes used by many nova rows.
ACTIVE = Reset(_values({"vm_state": "active", "task_state": None}))


def _nova_cas(why: str = "", **columns) -> CasUpdate:
    return CasUpdate(_values({"task_state": None, **columns}), why)


#: clear the task, keep the vm_state: os-resetState when the vm_state is one it can set, else CAS task_state only
#: (nova's own start-up does this for image_* and resize_prep: manager.py _init_instance)
CLEAR_TASK = ByVmState(((("active",), ACTIVE), (("error",), Reset(_values({"vm_state": "error", "task_state": None})))),
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


def _rows(service: str, kind: str, states: Iterable[str], why: str, realities: tuple[str, ...],
          default: Outcome | ByVmState, stuck: bool = True, **by_reality) -> list[Rule]:
    unknown = set(by_reality) - set(realities)
    if unknown:
        raise ValueError(f"{service} {kind}: no such reality {sorted(unknown)}")
    outcomes = tuple((r, by_reality.get(r, default)) for r in realities)
    return [Rule(service, kind, s, why, outcomes, stuck) for s in states]


UNKNOWN_ERROR = Error("the Health Collector could not tell the guest's state, recovery_resync_count times")


def _nova(states, why, default, stuck=True, **by_reality) -> list[Rule]:
    by_reality.setdefault(HOST_DOWN, HOST_DOWN_RESET)
    if isinstance(default, Error):
        by_reality.setdefault(UNKNOWN, UNKNOWN_ERROR)
    return _rows("nova", "instance", states, why, tuple(r for r, _ in _NOVA_REALITIES), default, stuck,
                 **by_reality)


_NOVA_RULES = [
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
_NOVA_RULES += [
    *_rows("nova", "instance_vm_state", ("active", "stopped", "error"),
           "evacuate accepts these vm_states (nova/compute/api.py evacuate); nothing is stuck",
           _NOVA_AT_REST, Keep(), stuck=False),
    *_rows("nova", "instance_vm_state", ("shelved", "shelved_offloaded", "soft-delete", "deleted"),
           "not evacuated: shelved instances keep no guest to lose, deleted ones stay deleted",
           _NOVA_AT_REST, Keep(), stuck=False),
    *_rows("nova", "instance_vm_state", ("paused", "suspended", "rescued", "resized"),
           "a resting state; on a fenced host the guest is gone and evacuate refuses this vm_state: error until "
           "rebuilt elsewhere",
           _NOVA_AT_REST, Keep(), stuck=False, host_down=Error()),
    *_rows("nova", "instance_vm_state", ("building",),
           "building with no task: the build died between tasks; nova's _check_instance_build_time sets error",
           _NOVA_AT_REST, Error()),
    *_rows("nova", "instance_vm_state", (ANY_STATE,),
           "a vm_state this table does not know: left; on a fenced host, error (evacuate refuses it)",
           _NOVA_AT_REST, Skip(), stuck=False, host_down=Error()),
]

# -------------------------------------------------------------------------------------------------------- cinder
_CORE = CORE_REALITIES


def _cinder(kind, states, why, default, stuck=True, **by_reality) -> list[Rule]:
    return _rows("cinder", kind, states, why, _CORE, default, stuck, **by_reality)


def _vol(**columns) -> Reset:
    return Reset(_values(columns))


_VOL_IDLE = _vol(status=BY_ATTACHMENTS)
_IN_USE = _vol(status="in-use", attach_status="attached")
_DETACHED = _vol(status="available", attach_status="detached")
_EVACUATION = Skip("the instance's host is fenced: host recovery rebuilds its attachments from nova's block "
                   "device mappings; a person checks if it stays")

_CINDER_RULES = [
    *_cinder("volume", ("creating",),
             "cinder-volume sets creating volumes to error at start-up (volume/manager.py _do_cleanup); a volume "
             "the backend has is complete",
             Error(), running=_vol(status="available"), shut_off=_vol(status="available")),
    *_cinder("volume", ("downloading",),
             "creating from an image: the copy cannot be trusted; cinder-volume sets error at start-up (_do_cleanup)",
             Error()),
    *_cinder("volume", ("attaching",),
             "connected on the instance's host means nova got the volume (in-use); no connection means the attach "
             "never happened (available; os-reset_status attach_status=detached also drops the attachment "
             "records)",
             Error(), running=_IN_USE, shut_off=_IN_USE, absent=_DETACHED, host_down=_EVACUATION),
    *_cinder("volume", ("reserved",),
             "an attachment without a connector: connected means nova finished the attach (in-use); with no "
             "connection it may be how a shelved-offloaded instance holds its volumes (nova/compute/manager.py "
             "_terminate_volume_connections): only nova can say, so it is left",
             Skip(), running=_IN_USE, shut_off=_IN_USE, host_down=_EVACUATION),
    *_cinder("volume", ("detaching",),
             "still connected means the detach never happened (in-use); gone means it did (available)",
             Error(), running=_IN_USE, shut_off=_IN_USE, absent=_DETACHED, host_down=_EVACUATION),
    *_cinder("volume", ("deleting",),
             "a delete that died: os-reset_status cannot set deleting, error_deleting lets it be deleted again "
             "(quick if the backend has nothing); cinder-volume resumes deletes itself at start-up",
             Reset(_values({"status": "error_deleting"})), host_down=Skip(), unknown=Skip()),
    *_cinder("volume", ("extending",),
             "the new size cannot be trusted: cinder's own failure state, the admin checks the size",
             Error(values=_values({"status": "error_extending"})),
             absent=Error("the backend has no such volume")),
    *_cinder("volume", ("backing-up",),
             "cinder-backup returns the volume to its previous status at start-up (backup/manager.py "
             "_cleanup_one_volume); the backup itself is the backup rows' business",
             _VOL_IDLE, absent=Error("the backend has no such volume")),
    *_cinder("volume", ("restoring-backup",),
             "the restored data cannot be trusted: cinder-backup sets error_restoring at start-up",
             Error(values=_values({"status": "error_restoring"}))),
    *_cinder("volume", ("uploading",),
             "copying to an image: cinder-volume sets available or in-use by its attachments at start-up "
             "(_do_cleanup); the image is the glance rows' business",
             _VOL_IDLE, absent=Error("the backend has no such volume")),
    *_cinder("volume", ("retyping", "maintenance"),
             "a retype or migration that died: back to its previous status, the migration marked error "
             "(what cinder-manage/`cinder reset-state --reset-migration-status` do)",
             _vol(status=BY_ATTACHMENTS, migration_status="error"),
             absent=Error("the backend has no such volume"), unknown=Error()),
    *_cinder("volume", ("awaiting-transfer",),
             "a transfer waits for its recipient as long as it takes: not stuck, never changed",
             Skip(), stuck=False, absent=Error("the backend has no such volume")),
    *_cinder("volume", (ANY_STATE,),
             "a volume status this table does not know: reported for a person", Skip(), stuck=False),
    *_cinder("volume_migration", ("starting", "migrating", "completing"),
             "a migration that died: cinder marks failed migrations error and keeps the source volume; a "
             "leftover destination volume is reported for a person",
             Reset(_values({"migration_status": "error", "status": BY_ATTACHMENTS})),
             running=Report("the destination volume still exists: a person deletes it"),
             shut_off=Report("the destination volume still exists: a person deletes it")),
    *_cinder("backup", ("creating",),
             "the backup cannot be trusted: cinder-backup sets error at start-up (_cleanup_one_backup)",
             Error()),
    *_cinder("backup", ("restoring",),
             "the backup itself is intact: cinder-backup sets it available at start-up (the volume's row says "
             "error_restoring)",
             Reset(_values({"status": "available"})), absent=Error("the backup store has no data for it")),
    *_cinder("backup", ("deleting",),
             "a delete that died: error_deleting lets it be deleted again (not expressible by os-reset_status); "
             "cinder-backup resumes deletes itself at start-up",
             CasUpdate(_values({"status": "error_deleting"})), host_down=Skip(), unknown=Skip()),
]

# -------------------------------------------------------------------------------------------------------- glance
#: glance/domain/__init__.py Image.valid_state_targets (glance 33)
GLANCE_TRANSITIONS = {
    "queued": ("saving", "uploading", "importing", "active", "deleted"),
    "saving": ("active", "killed", "deleted", "queued"),
    "uploading": ("importing", "queued", "deleted"),
    "importing": ("active", "deleted", "queued"),
    "active": ("pending_delete", "deleted", "deactivated"),
    "killed": ("deleted",),
    "pending_delete": ("deleted", "active"),
    "deleted": (),
    "deactivated": ("active", "deleted"),
}
_QUEUED = CasUpdate(_values({"status": "queued"}))
_LEFTOVER = "; the data left in the store is reported for a person"

_GLANCE_RULES = [
    *_rows("glance", "image", ("queued",),
           "queued with no data is a legal resting state (the data may be uploaded later): never killed; data "
           "without a finished record is reported",
           _CORE, Skip(), running=Report("data in the store for an image still queued"),
           shut_off=Report("partial data in the store for an image still queued")),
    *_rows("glance", "image", ("saving",),
           "an upload that died: the record has no size nor checksum, so even complete data is not trusted; "
           "killed (a valid target of saving) tells the owner to upload again" + _LEFTOVER,
           _CORE, Error()),
    *_rows("glance", "image", ("uploading", "importing"),
           "a staging or import that died: glance itself returns failed imports to queued (image_data.py "
           "_restore, valid_state_targets) so they can be retried" + _LEFTOVER,
           _CORE, _QUEUED),
    *_rows("glance", "image", ("pending_delete",),
           "delayed delete: the glance scrubber deletes the data after scrub_time; with no data left only the "
           "record is missing its last step",
           _CORE, Skip(), absent=CasUpdate(_values({"status": "deleted", "deleted": True}))),
    *_rows("glance", "image", (ANY_STATE,),
           "an image status this table does not know (glance has no 'deleting' status): reported for a person",
           _CORE, Skip(), stuck=False),
]

# ------------------------------------------------------------------------------------------------------- neutron
_DOWN = CasUpdate(_values({"status": "DOWN"}))
_NEUTRON_RULES = [
    *_rows("neutron", "port", ("BUILD",),
           "the L2 agent wires the port in BUILD and reports it up (ACTIVE) or down (DOWN) (ml2/rpc.py); "
           "status is not settable through the API (allow_put False): CAS",
           _CORE, _DOWN, running=CasUpdate(_values({"status": "ACTIVE"})),
           unknown=Skip("left BUILD: the L2 agent moves it when it reports")),
    *_rows("neutron", "router", ("ALLOCATING",),
           "ALLOCATING until an L3 agent takes the router (neutron 29 no longer sets it; old rows keep it)",
           _CORE, Skip(), running=CasUpdate(_values({"status": "ACTIVE"})),
           absent=Error("no L3 agent hosts the router"), host_down=Error("its L3 agent's host is down")),
    # floating IPs have no transitional status (neutron_lib FLOATINGIP_STATUS_*: ACTIVE, DOWN, ERROR); networks'
    # BUILD is not used by ML2.
]

RULES: tuple[Rule, ...] = tuple(_NOVA_RULES + _CINDER_RULES + _GLANCE_RULES + _NEUTRON_RULES)
_KINDS = {(k.service, k.kind): k for k in KINDS}
_INDEX = {(r.service, r.kind, r.state): r for r in RULES}


# ------------------------------------------------------------------------------------------------------ functions
def kind_of(service: str, kind: str) -> Kind:
    try:
        return _KINDS[(service, kind)]
    except KeyError:
        raise UnknownState(f"no rules for {service} {kind}") from None


def rule_for(service: str, kind: str, state: str) -> Rule:
    """The row for a state, or the kind's row for states it does not name."""
    kind_of(service, kind)
    rule = _INDEX.get((service, kind, state)) or _INDEX.get((service, kind, ANY_STATE))
    if rule is None:
        raise UnknownState(f"no rule for {service} {kind} {state!r}")
    return rule


def stuck_states(service: str, kind: str) -> tuple[str, ...]:
    """The states the sweep's scanner looks for (older than recovery_stale_period)."""
    kind_of(service, kind)
    return tuple(r.state for r in RULES if (r.service, r.kind) == (service, kind) and r.stuck
                 and r.state != ANY_STATE)


def decide(service: str, kind: str, state: str, reality: str, *, vm_state: str | None = None) -> Outcome:
    """The outcome for a resource stuck in `state` given what the Health Collector observed. nova rows may depend
    on the vm_state (ValueError without it). The outcome's why is filled in from the row; Error's values from the
    kind."""
    k = kind_of(service, kind)
    if reality not in k.reality_names:
        raise ValueError(f"{service} {kind}: reality {reality!r} is not one of {', '.join(k.reality_names)}")
    rule = rule_for(service, kind, state)
    outcome = rule.outcome(reality)
    if isinstance(outcome, ByVmState):
        if vm_state is None:
            raise ValueError(f"{service} {kind} {state} {reality}: the outcome depends on the vm_state")
        outcome = outcome.resolve(vm_state)
    return _complete(k, rule, outcome)


def _complete(k: Kind, rule: Rule, outcome: Outcome) -> Outcome:
    if isinstance(outcome, Error) and not outcome.values:
        outcome = dataclasses.replace(outcome, values=k.error)
    if not outcome.why:
        outcome = dataclasses.replace(outcome, why=rule.why)
    return outcome


def via_api(service: str, kind: str, outcome: Outcome) -> bool:
    """Whether the service's API can carry out a Reset or Error (else: a CAS write on its database)."""
    return isinstance(outcome, (Reset, Error)) and kind_of(service, kind).api_can_set(
        outcome.values or kind_of(service, kind).error)


def _concrete(outcome: Outcome | ByVmState) -> list[tuple[str | None, Outcome]]:
    if isinstance(outcome, ByVmState):
        return [(vm, outcome.resolve(vm)) for vm in NOVA_VM_STATES]
    return [(None, outcome)]


def check() -> list[str]:
    """Problems in the tables (empty: consistent): every row has an outcome for each of its kind's realities, no
    Reset the API cannot express, host recovery's rows (nova, host_down) need no database, glance moves only
    along its own transitions, and every nova task state is covered."""
    problems = []
    seen = set()
    for k in KINDS:
        missing = set(CORE_REALITIES) - set(k.reality_names)
        if missing:
            problems.append(f"{k.service} {k.kind}: realities lack {sorted(missing)}")
    for r in RULES:
        key = (r.service, r.kind, r.state)
        if key in seen:
            problems.append(f"{key}: two rows")
        seen.add(key)
        if (r.service, r.kind) not in _KINDS:
            problems.append(f"{key}: no such kind")
            continue
        k = _KINDS[(r.service, r.kind)]
        if not r.why:
            problems.append(f"{key}: no why")
        if tuple(x for x, _ in r.outcomes) != k.reality_names:
            problems.append(f"{key}: outcomes for {[x for x, _ in r.outcomes]}, realities are {k.reality_names}")
        for reality, raw in r.outcomes:
            if isinstance(raw, ByVmState) and r.service != "nova":
                problems.append(f"{key} {reality}: ByVmState outside nova")
            for vm_state, o in _concrete(raw):
                where = f"{key} {reality}" + (f" (vm_state {vm_state})" if vm_state else "")
                o = _complete(k, r, o)
                if isinstance(o, Reset) and not k.api_can_set(o.values):
                    problems.append(f"{where}: {k.api or 'no API'} cannot set {_fmt(o.values)}")
                if r.service == "nova" and reality == HOST_DOWN and not (
                        isinstance(o, (Skip, Keep)) or (isinstance(o, (Reset, Error)) and k.api_can_set(o.values))):
                    problems.append(f"{where}: host recovery has only the API, not {o.short()}")
                if r.service == "glance" and isinstance(o, (CasUpdate, Error)) and r.state != ANY_STATE:
                    to = o.as_dict().get("status")
                    if to not in GLANCE_TRANSITIONS.get(r.state, ()):
                        problems.append(f"{where}: glance does not go from {r.state} to {to}")
    for state in NOVA_TASK_STATES:
        if ("nova", "instance", state) not in _INDEX:
            problems.append(f"nova task_state {state}: no row")
    for state in NOVA_VM_STATES:
        if ("nova", "instance_vm_state", state) not in _INDEX:
            problems.append(f"nova vm_state {state}: no row")
    return problems


# ----------------------------------------------------------------------------------------------------------- docs
_LABELLED = (CLEAR_TASK, HOST_DOWN_RESET)


def _cell(outcome: Outcome | ByVmState) -> str:
    return outcome.short().replace("|", "\\|")


def _notes(rules: list[Rule]) -> list[str]:
    """The whys of single outcomes that say more than their row's why, each once: why -> where it applies."""
    where: dict[str, dict[str, list[str]]] = {}
    for rule in rules:
        for reality, raw in rule.outcomes:
            if isinstance(raw, ByVmState) and raw in _LABELLED:
                continue
            cases = raw.cases + (((), raw.other),) if isinstance(raw, ByVmState) else (((), raw),)
            for states, o in cases:
                if o.why:
                    vm = f" (vm_state {'/'.join(states) or 'else'})" if isinstance(raw, ByVmState) else ""
                    where.setdefault(o.why, {}).setdefault(rule.state, []).append(reality + vm)
    notes = []
    for why, by_state in where.items():
        groups: dict[tuple[str, ...], list[str]] = {}
        for state, realities in by_state.items():
            groups.setdefault(tuple(realities), []).append(f"`{state}`")
        notes.append(f"{why}: " + "; ".join(f"{', '.join(states)} when {', '.join(realities)}"
                                             for realities, states in groups.items()))
    return notes


def markdown() -> str:
    """docs/stale-rules.md: one table per service and kind, from the same data decide() reads."""
    out = ["# CrashUp stale-task rules", "",
           "Generated by `python -m crashup_lib.stale.rules --markdown` from `crashup_lib/stale/rules.py`; "
           "do not edit (a test keeps this file equal to the tables).", "",
           "A resource stuck in a state for longer than `recovery_stale_period` is checked against reality by the "
           "Health Collector and gets the outcome of its row and reality. `unknown` applies only after "
           "`recovery_resync_count` failed tries, `recovery_resync_interval` apart. Host recovery uses the nova "
           "rows with `host_down` for every instance of a fenced host.", "",
           "Outcomes:", "",
           "- **reset**: through the service's API (nova `os-resetState`, which also clears the task; cinder "
           "`os-reset_status`).",
           "- **CAS**: a compare-and-swap write on the service's database, only while the state and `updated_at` "
           "are still those read.",
           "- **error**: the kind's error state (through the API where it can express it) and a "
           "`crashup.resource.stale_unrecoverable` alert.",
           "- **skip**: left as it is, logged. **keep**: nothing is wrong. **report**: left as it is, with a "
           "`crashup.resource.orphaned` event.",
           *[f"- **{b.label}** (nova): {b.expanded()}." for b in _LABELLED],
           f"- `{BY_ATTACHMENTS}`: in-use if the volume keeps attachments, else available.",
           "- `*`: any state the table does not name. *stuck*: whether the sweep scans for the state.", "",
           f"Host recovery (nova `host_down`) on vm_state active: {HOST_DOWN_RESET.cases[0][1].why}; on any other: "
           f"{HOST_DOWN_RESET.other.why}. Clear task: what nova-compute does at start-up with the image_* and "
           "resize_prep tasks; os-resetState where it can set the vm_state, a CAS write of task_state alone "
           "elsewhere.", ""]
    for k in KINDS:
        rows = [r for r in RULES if (r.service, r.kind) == (k.service, k.kind)]
        out += [f"## {k.service} {k.kind.replace('_', ' ')} (`{k.column}`)", "",
                f"Reset API: {('`' + k.api + '`') if k.api else 'none (every change is a CAS write)'}; "
                f"**error** writes {_fmt(k.error)}.", ""]
        out += [f"- `{name}`: {meaning}" for name, meaning in k.realities] + [""]
        out.append("| state | stuck | " + " | ".join(k.reality_names) + " | why |")
        out.append("|" + "---|" * (len(k.reality_names) + 3))
        for r in rows:
            out.append(f"| `{r.state}` | {'yes' if r.stuck else 'no'} | "
                       + " | ".join(_cell(o) for _, o in r.outcomes) + f" | {r.why} |")
        notes = _notes(rows)
        if notes:
            out += ["", "Why, where a cell says more than its row:", ""] + [f"- {n}" for n in notes]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(markdown())
        return 0
    if args == ["--check"]:
        problems = check()
        print("\n".join(problems) or "consistent")
        return 1 if problems else 0
    print("usage: python -m crashup_lib.stale.rules --markdown | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
