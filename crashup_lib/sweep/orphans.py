"""The sweep's orphan pass: what exists in the managed environment that the service's database does not describe.

Reported (a `crashup.resource.orphaned` event and one log line), never deleted nor changed: a guest nova does not
know may be someone's only copy of a disk, a file glance does not know may be an image being restored by hand.

- nova: libvirt guests (by UUID, nova's instance UUID) on a host the cell databases do not place there: no instance
  row, a deleted one, or one on another host.
- glance: files of the filesystem store named like an image id with no image row, or whose row is deleted in
  status `deleted` (pending_delete is glance's scrubber's to remove).

Shape: the decisions (`nova_orphans`, `glance_orphans`) are pure functions of (listing, rows, cutoff); the finders
(`NovaOrphans`, `GlanceOrphans`) do the I/O around them: list first, read the rows after, so a resource created
meanwhile has its row already (nova and glance write the row before the guest or the file). A listing that fails
(host down, libvirtd hung: bounded by the backend's timeout) is one log line and nothing reported for it: unknown is
not absent. A row deleted less than recovery_stale_period ago is not yet an orphan: the service's own delete (nova
destroys the guest, then marks the row; its running_deleted_instance_poll reaps) may still be on it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from crashup_lib import events, log
from crashup_lib.health import Guest, HealthError, StoredFile

ORPHANED = events.RESOURCE_ORPHANED
IMAGE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
#: a guest on two hosts is normal while one of these runs (live migration, resize, evacuation) or until a resize is
#: confirmed (vm_state resized: the source keeps its shut-off guest)
IN_MOTION_VM_STATES = ("resized",)

_log = log.get("sweep")


@dataclasses.dataclass(frozen=True)
class Orphan:
    service: str                    # nova, glance
    resource_type: str              # the event's word: server, image
    id: str                         # the guest's UUID, the file's name
    state: str                      # as found: the guest's libvirt state, 'stored' for a file
    where: str                      # the host (nova), the store directory (glance)
    reason: str                     # one line: why no row describes it

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.service, self.resource_type, self.id, self.where

    def line(self) -> str:
        return f"{self.service} {self.resource_type} {self.id} in {self.where}: {self.reason}"

    def payload(self) -> dict[str, str]:
        """The event's payload (events.schema.json's resource payload: no host key, the reason names it)."""
        return {"service": self.service, "resource_type": self.resource_type, "id": self.id, "state": self.state,
                "action": "none", "reason": self.reason}


# ------------------------------------------------------------------------------------------------ pure decisions
def _settled(when: _dt.datetime | None, before: _dt.datetime) -> bool:
    """A deletion at `when` is final (older than the cutoff); no time recorded counts as old."""
    return when is None or when < before


def _shown(when: _dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%SZ") if when else "an unrecorded time"


def nova_orphans(hosts: Iterable[str], guests: Sequence[Guest], rows: Mapping[str, Sequence[Mapping[str, Any]]],
                 before: _dt.datetime) -> list[Orphan]:
    """The guests of one libvirt listing that the cell rows do not place on `hosts` (the nova hosts whose libvirt
    URI it is, usually one). rows: uuid -> its instance rows in every cell (uuid, host,
    vm_state, task_state, deleted, deleted_at)."""
    hosts = set(hosts)
    where = ", ".join(sorted(hosts))
    found = []
    for guest in guests:
        why = _nova_why(guest, rows.get(guest.uuid, ()), hosts, before)
        if why:
            found.append(Orphan("nova", "server", guest.uuid, guest.state, where,
                                f"guest {guest.name} ({guest.state}) on {where}: {why}"))
    return found


def _nova_why(guest: Guest, rows: Sequence[Mapping[str, Any]], hosts: set[str], before) -> str | None:
    live = [r for r in rows if not r["deleted"]]
    if any(r["host"] in hosts for r in live):
        return None
    if any(r["task_state"] or r["vm_state"] in IN_MOTION_VM_STATES for r in live):
        return None                                 # between two hosts: nova cleans up the one it leaves
    if live:
        elsewhere = ", ".join(sorted({r["host"] or "no host" for r in live}))
        return f"nova places instance {guest.uuid} on {elsewhere}"
    if rows:
        if not all(_settled(r["deleted_at"], before) for r in rows):
            return None                             # deleted just now: nova's delete may still be at it
        when = max((r["deleted_at"] for r in rows if r["deleted_at"]), default=None)
        return f"instance {guest.uuid} was deleted at {_shown(when)}"
    return "no instance row in any nova cell database"


def glance_orphans(datadir: str, files: Sequence[StoredFile], rows: Mapping[str, Mapping[str, Any]],
                   before: _dt.datetime) -> list[Orphan]:
    """The files of one store directory named like an image id whose image does not exist: no row, or a row deleted
    (status deleted) before the cutoff. rows: id -> (status, deleted, deleted_at, updated_at)."""
    found = []
    for f in files:
        if not IMAGE_ID.match(f.name):
            continue                                # not an image's data (lost+found, an operator's file)
        row = rows.get(f.name)
        if row is None:
            why = "no image row in glance's database"
        elif row["status"] == "deleted" and _settled(row["deleted_at"] or row["updated_at"], before):
            why = f"image {f.name} was deleted at {_shown(row['deleted_at'] or row['updated_at'])}"
        else:
            continue                                # pending_delete: glance's scrubber removes the data
        found.append(Orphan("glance", "image", f.name, "stored", datadir, f"file {f.path} ({f.size} bytes): {why}"))
    return found


# ----------------------------------------------------------------------------------------------------- finders
def _unlisted(service: str, what: str, error: BaseException) -> None:
    _log.warning("sweep: %s: %s not listed, orphans there unknown: %s", service, what,
                 log.error_line(error, 1000))


class NovaOrphans:
    """Lists the guests of every nova host the sweep knows through `libvirt` (a health.LibvirtBackend: its URI
    template, its time bound) and decides against the cells' rows. Hosts: those of the instances, plus
    `extra_hosts(sweeper)` (the cells' compute nodes, from the configuration). Hosts whose URI is the same
    (a URI without {host}) are listed once, their guests checked against any of them."""

    def __init__(self, libvirt, extra_hosts: Callable[[Any], Iterable[str]] | None = None):
        self.libvirt, self.extra_hosts = libvirt, extra_hosts

    def __call__(self, sweeper, before: _dt.datetime, stopping: Callable[[], bool] = lambda: False) -> list[Orphan]:
        hosts = set(sweeper.hosts()) | set(self.extra_hosts(sweeper) if self.extra_hosts else ())
        by_uri: dict[str, set[str]] = {}
        for host in sorted(hosts):
            try:
                by_uri.setdefault(self.libvirt.uri(host), set()).add(host)
            except HealthError as e:
                _unlisted("nova", f"guests of {host}", e)
        listed: list[tuple[str, set[str], list[Guest]]] = []
        for uri, on in by_uri.items():
            if stopping():
                return []
            try:
                listed.append((uri, on, self.libvirt.list_guests(sorted(on)[0])))
            except HealthError as e:
                _unlisted("nova", f"guests of {', '.join(sorted(on))}", e)
        rows = sweeper.placements({g.uuid for _, _, guests in listed for g in guests})     # after the listings
        return [o for uri, on, guests in listed for o in nova_orphans(on, guests, rows, before)]


class GlanceOrphans:
    """Lists every directory of `store` (a health.GlanceFileBackend: its datadirs, its time bound) and decides
    against glance's image rows."""

    def __init__(self, store):
        self.store = store

    def __call__(self, sweeper, before: _dt.datetime, stopping: Callable[[], bool] = lambda: False) -> list[Orphan]:
        listed: list[tuple[str, list[StoredFile]]] = []
        for datadir in self.store.datadirs:
            if stopping():
                return []
            try:
                listed.append((datadir, self.store.list_files(datadir)))
            except HealthError as e:
                _unlisted("glance", f"files of {datadir}", e)
        names = {f.name for _, files in listed for f in files if IMAGE_ID.match(f.name)}
        rows = sweeper.image_rows(names) if names else {}                                  # after the listings
        return [o for datadir, files in listed for o in glance_orphans(datadir, files, rows, before)]


# ------------------------------------------------------------------------------------------------------ report
def report(orphan: Orphan, emitter) -> bool:
    """One log line and the event; nothing else. False when the event could not be recorded (the caller asks
    again next round)."""
    _log.warning("sweep: orphan: %s; reported, left as it is", orphan.line())
    if emitter is None:
        return True
    try:
        emitter.publish(ORPHANED, orphan.id, orphan.payload())
    except Exception as e:          # noqa: BLE001 - a lost event must not stop the sweep
        _log.error("sweep: orphan %s %s: the %s event was not recorded: %s", orphan.service, orphan.id, ORPHANED,
                   log.error_line(e, 1000))
        return False
    return True
