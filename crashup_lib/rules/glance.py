"""The glance rows of the CrashUp decision tables: images.

Sources read (the real state machine, the version the lab and the issue name): glance 33.0.0:
glance/domain/__init__.py (Image.valid_state_targets), glance/api/v2/image_data.py (_restore: a failed upload
goes back to queued), glance/async_/flows/api_image_import.py (importing).
"""
from __future__ import annotations

from crashup_lib.rules.model import (ABSENT, ANY_STATE, CORE_REALITIES, HOST_DOWN, RUNNING, SHUT_OFF, UNKNOWN,
                                     CasUpdate, Error, Kind, Report, Skip, make_rows, values_of)

GLANCE_KINDS: tuple[Kind, ...] = (
    Kind("glance", "image", "status", (
        (RUNNING, "the image data is complete in its store (size and checksum as recorded)"),
        (SHUT_OFF, "partial data in its store or in the staging area"),
        (ABSENT, "no data in any store nor in the staging area"),
        (HOST_DOWN, "the glance-api node that streamed the upload or ran the import is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "", (), values_of({"status": "killed"})),                               # glance has no reset API
)

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
_QUEUED = CasUpdate(values_of({"status": "queued"}))
_LEFTOVER = "; the data left in the store is reported for a person"

GLANCE_RULES = [
    *make_rows("glance", "image", ("queued",),
               "queued with no data is a legal resting state (the data may be uploaded later): never killed; data "
               "without a finished record is reported",
               CORE_REALITIES, Skip(), running=Report("data in the store for an image still queued"),
               shut_off=Report("partial data in the store for an image still queued")),
    *make_rows("glance", "image", ("saving",),
               "an upload that died: the record has no size nor checksum, so even complete data is not trusted; "
               "killed (a valid target of saving) tells the owner to upload again" + _LEFTOVER,
               CORE_REALITIES, Error()),
    *make_rows("glance", "image", ("uploading", "importing"),
               "a staging or import that died: glance itself returns failed imports to queued (image_data.py "
               "_restore, valid_state_targets) so they can be retried" + _LEFTOVER,
               CORE_REALITIES, _QUEUED),
    *make_rows("glance", "image", ("pending_delete",),
               "delayed delete: the glance scrubber deletes the data after scrub_time; with no data left only the "
               "record is missing its last step",
               CORE_REALITIES, Skip(), absent=CasUpdate(values_of({"status": "deleted", "deleted": True}))),
    *make_rows("glance", "image", (ANY_STATE,),
               "an image status this table does not know (glance has no 'deleting' status): reported for a person",
               CORE_REALITIES, Skip(), stuck=False),
]
