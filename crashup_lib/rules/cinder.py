"""The cinder rows of the CrashUp decision tables: volumes, volume migrations and backups.

Sources read (the real state machine, the version the lab and the issue name): cinder 29.0.0:
cinder/objects/fields.py (VolumeStatus, VolumeAttachStatus, VolumeMigrationStatus, BackupStatus),
cinder/api/contrib/admin_actions.py (os-reset_status; refuses 'deleting'), cinder/api/validation/validators.py
(attach_status attached|detached; backup status available|error), cinder/volume/manager.py (_do_cleanup at
start-up: creating/downloading -> error, uploading -> by attachments, deleting resumed), cinder/backup/manager.py
(_cleanup_one_volume/_cleanup_one_backup: backing-up -> previous status, restoring-backup -> error_restoring,
backup creating -> error, restoring -> available).
"""
from __future__ import annotations

from crashup_lib.rules.model import (ABSENT, ANY_STATE, BY_ATTACHMENTS, CORE_REALITIES, HOST_DOWN, RUNNING,
                                     SHUT_OFF, UNKNOWN, CasUpdate, Error, Kind, Report, Reset, Rule, Skip,
                                     make_rows, values_of)

CINDER_KINDS: tuple[Kind, ...] = (
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
        values_of({"status": "error"})),
    Kind("cinder", "volume_migration", "migration_status", (
        (RUNNING, "the migration's destination volume exists and the copy is running"),
        (SHUT_OFF, "the destination volume exists, nothing copies"),
        (ABSENT, "no destination volume"),
        (HOST_DOWN, "the cinder-volume service doing the migration is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "os-reset_status",
        (("migration_status", frozenset({None, "error", "success"})),
         ("status", frozenset({BY_ATTACHMENTS}))),
        values_of({"migration_status": "error"})),
    Kind("cinder", "backup", "status", (
        (RUNNING, "the backup's data is complete in the backup store"),
        (SHUT_OFF, "partial data in the backup store"),
        (ABSENT, "no data in the backup store"),
        (HOST_DOWN, "the cinder-backup service that owns it is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "os-reset_status", (("status", frozenset({"available", "error"})),),   # validators.py: available|error
        values_of({"status": "error"})),
)

_CORE = CORE_REALITIES


def _cinder(kind, states, why, default, stuck=True, **by_reality) -> list[Rule]:
    return make_rows("cinder", kind, states, why, _CORE, default, stuck, **by_reality)


def _vol(**columns) -> Reset:
    return Reset(values_of(columns))


_VOL_IDLE = _vol(status=BY_ATTACHMENTS)
_IN_USE = _vol(status="in-use", attach_status="attached")
_DETACHED = _vol(status="available", attach_status="detached")
_EVACUATION = Skip("the instance's host is fenced: host recovery rebuilds its attachments from nova's block "
                   "device mappings; a person checks if it stays")

CINDER_RULES = [
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
             Reset(values_of({"status": "error_deleting"})), host_down=Skip(), unknown=Skip()),
    *_cinder("volume", ("extending",),
             "the new size cannot be trusted: cinder's own failure state, the admin checks the size",
             Error(values=values_of({"status": "error_extending"})),
             absent=Error("the backend has no such volume")),
    *_cinder("volume", ("backing-up",),
             "cinder-backup returns the volume to its previous status at start-up (backup/manager.py "
             "_cleanup_one_volume); the backup itself is the backup rows' business",
             _VOL_IDLE, absent=Error("the backend has no such volume")),
    *_cinder("volume", ("restoring-backup",),
             "the restored data cannot be trusted: cinder-backup sets error_restoring at start-up",
             Error(values=values_of({"status": "error_restoring"}))),
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
             Reset(values_of({"migration_status": "error", "status": BY_ATTACHMENTS})),
             running=Report("the destination volume still exists: a person deletes it"),
             shut_off=Report("the destination volume still exists: a person deletes it")),
    *_cinder("backup", ("creating",),
             "the backup cannot be trusted: cinder-backup sets error at start-up (_cleanup_one_backup)",
             Error()),
    *_cinder("backup", ("restoring",),
             "the backup itself is intact: cinder-backup sets it available at start-up (the volume's row says "
             "error_restoring)",
             Reset(values_of({"status": "available"})), absent=Error("the backup store has no data for it")),
    *_cinder("backup", ("deleting",),
             "a delete that died: error_deleting lets it be deleted again (not expressible by os-reset_status); "
             "cinder-backup resumes deletes itself at start-up",
             CasUpdate(values_of({"status": "error_deleting"})), host_down=Skip(), unknown=Skip()),
]
