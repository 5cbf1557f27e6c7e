"""The cinder backends: what reality says about a volume, a volume migration or a backup stuck in a task.

Which question a stuck cinder resource asks (`question()`, pure) decides who can answer it:
- an attach task (a volume `attaching`, `detaching` or `reserved`) is the instance's: host-level, the nova-compute of
  the instance's host (`InstanceHeartbeatBackend`: fenced, forced down or down -> host_down); resource-level,
  whether the volume is connected to the guest there (`VolumeConnectionBackend`, over a guest reader: libvirt's
  domain XML names nova's volumes by `<serial>`, `LibvirtVolumes`);
- any other volume task, and a migration, is cinder-volume's: host-level, its service heartbeat in cinder's
  os-services (`CinderServiceBackend`, the service `host@backend` of the volume's `host@backend#pool`);
  resource-level, the volume's file on a file-backed store (`VolumeFileBackend`: `volume-<id>` as cinder's NFS
  driver keeps it on its share);
- a backup's is cinder-backup's: its heartbeat, and its data in a posix/NFS backup store (`BackupFileBackend`).
The sweeper (sweep/cinder.py) builds the Resource: `host` the task's owner (the instance's host for an attach task,
else the row's host), `record` the row and its attachments. A backend asked a question that is not its own answers
HOST_UP (host level: nothing says down) or unknown (resource level), so one route serves every volume task; a site
that cannot answer a question at all is told apart before (the sweeper's `observed`): no backend is not unknown.
Every answer that is not sure is unknown: a wrong absent or host_down makes the sweep act.
"""
from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, Mapping, Protocol, Sequence

from crashup_lib.health.libvirt import libvirt_module
from crashup_lib.health.model import HOST, HOST_UP, RESOURCE, HealthError, Observation, Resource
from crashup_lib.health.realities import (VIR_DOMAIN_SHUTOFF, VIR_ERR_INVALID_ARG, VIR_ERR_NO_DOMAIN, heartbeat_reality,
                                          libvirt_reality)
from crashup_lib.rules import ABSENT, RUNNING, SHUT_OFF, UNKNOWN

ATTACH_TASKS = frozenset({"attaching", "detaching", "reserved"})   # volume statuses the instance's host owns
CONNECTION, VOLUME_STORE, BACKUP_STORE = "volume connection", "volume store", "backup store"   # question()
BINARIES = {"volume": "cinder-volume", "volume_migration": "cinder-volume", "backup": "cinder-backup"}
VOLUME_FILE = "volume-{id}"            # cinder's volume_name_template, the NFS driver's file name on its share


def question(kind: str, status: str | None) -> str:
    """What a stuck cinder resource asks reality: CONNECTION, VOLUME_STORE or BACKUP_STORE."""
    if kind == "backup":
        return BACKUP_STORE
    return CONNECTION if kind == "volume" and status in ATTACH_TASKS else VOLUME_STORE


def asks(resource: Resource) -> str:
    return question(resource.kind, resource.record.get("status"))


def service_host(host: str | None) -> str | None:
    """A volume's host `host@backend#pool` -> its cinder-volume service's `host@backend` (a backup's host is its
    service's already)."""
    return host.partition("#")[0] or None if host else None


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One volume_attachment row, as the sweep reads it."""
    instance_uuid: str | None
    host: str | None                    # attached_host: the compute host of the connector
    attach_status: str | None


def task_attachment(status: str | None, attachments: Sequence[Attachment]) -> Attachment | None:
    """The attachment an attach task is about: the only one naming an instance and a host, or among several the only
    one in the task's own attach_status (new-style attachments: 'attaching'; detaching leaves it 'attached' or
    'detaching'). None when it cannot be told (then the instance's host is unknown)."""
    known = [a for a in attachments if a.instance_uuid and a.host]
    if len({(a.instance_uuid, a.host) for a in known}) == 1:
        return known[0]
    own = [a for a in known if a.attach_status == status]
    return own[0] if len({(a.instance_uuid, a.host) for a in own}) == 1 else None


@dataclasses.dataclass(frozen=True)
class GuestDisks:
    """A guest as a host's hypervisor holds it: its reality (running, shut_off, ...) and the volume ids of its
    disks (nova's volume serials)."""
    reality: str
    volumes: frozenset


class GuestReader(Protocol):
    """What VolumeConnectionBackend asks: the guest of `instance_uuid` on `host` (None: no such guest there).
    Raises when the host cannot be asked."""
    name: str
    timeout: float

    def guest_disks(self, host: str, instance_uuid: str) -> GuestDisks | None: ...


def volume_serials(domain_xml: str) -> frozenset:
    """The <serial> of every disk of a libvirt domain: nova's volumes carry their volume id there."""
    root = ElementTree.fromstring(domain_xml)
    return frozenset(s.strip() for s in (d.findtext("serial") for d in root.iterfind("./devices/disk")) if s)


class LibvirtVolumes:
    """A GuestReader over libvirt, read-only: the domain by the instance's UUID, its state and disk serials.
    `uri` as LibvirtBackend's ({host} replaced by the instance's host, or a function host -> URI)."""

    def __init__(self, uri: str | Callable[[str | None], str] = "qemu+tcp://{host}/system", *,
                 timeout: float = 10.0, name: str = "libvirt"):
        self._uri, self.timeout, self.name = uri, timeout, name
        self._lv = libvirt_module()

    def uri(self, host: str) -> str:
        return self._uri(host) if callable(self._uri) else self._uri.replace("{host}", host)

    def guest_disks(self, host: str, instance_uuid: str) -> GuestDisks | None:
        lv = self._lv
        conn = lv.openReadOnly(self.uri(host))
        try:
            try:
                domain = conn.lookupByUUIDString(instance_uuid)
            except lv.libvirtError as e:
                if e.get_error_code() in (VIR_ERR_NO_DOMAIN, VIR_ERR_INVALID_ARG):
                    return None
                raise
            state = domain.state()[0]
            managed = bool(domain.hasManagedSaveImage(0)) if state == VIR_DOMAIN_SHUTOFF else False
            return GuestDisks(libvirt_reality(state, managed), volume_serials(domain.XMLDesc(0)))
        finally:
            try:
                conn.close()
            except lv.libvirtError:
                pass


class CinderServiceBackend:
    """Host level: the cinder service that owns the task (cinder-volume of the volume's backend, cinder-backup of a
    backup) in cinder's os-services: down -> host_down, up -> host up (a disabled service still runs its tasks);
    no such service, or cinder not answering -> unknown. An attach task is not its: host up (not asked).
    `api`: crashup_lib.cinder.CinderApi, or anything with its services(binary)."""
    level = HOST

    def __init__(self, api, *, timeout: float | None = None, name: str = "cinder os-services"):
        self.api, self.name = api, name
        # CinderApi bounds each call itself (api_timeout); ours is a backstop just above it
        self.timeout = timeout if timeout is not None else float(getattr(api, "timeout", 30.0)) + 5.0

    def observe(self, resource: Resource) -> Observation:
        if asks(resource) == CONNECTION:
            return Observation(HOST_UP, "an attach task: the instance's host owns it, not cinder-volume", self.name)
        binary = BINARIES[resource.kind]
        host = service_host(resource.host)
        if not host:
            return Observation(UNKNOWN, f"no host recorded to ask about its {binary}", self.name)
        found = [s for s in self.api.services(binary=binary) if s.binary == binary and s.host == host]
        if not found:
            return Observation(UNKNOWN, f"cinder lists no {binary} on {host}", self.name)
        states = sorted({str(s.state) for s in found})
        answers = {heartbeat_reality(s.state, False) for s in found}
        # one service up is enough to finish the task (a cluster's); all down is down
        reality = HOST_UP if HOST_UP in answers else answers.pop() if len(answers) == 1 else UNKNOWN
        return Observation(reality, f"{binary} on {host} is {'/'.join(states)}", self.name)


class InstanceHeartbeatBackend:
    """Host level, attach tasks only: the instance's host through nova's service heartbeat (a
    health.NovaHeartbeatBackend: forced down or down -> host_down; the rules' "the instance's host is fenced").
    Any other task is not its: host up (not asked)."""
    level = HOST

    def __init__(self, heartbeat, *, name: str = "nova heartbeat of the instance's host"):
        self.heartbeat, self.name = heartbeat, name
        self.timeout = heartbeat.timeout

    def observe(self, resource: Resource) -> Observation:
        if asks(resource) != CONNECTION:
            return Observation(HOST_UP, "not an attach task: cinder's service owns it", self.name)
        if not resource.host:
            return Observation(UNKNOWN, "no attachment names the instance's host", self.name)
        return self.heartbeat.observe(resource)


class VolumeConnectionBackend:
    """Resource level, attach tasks only: whether the volume is connected to the instance's guest on its host
    (`reader`: a GuestReader). Connected -> running (guest running) or shut_off (guest not running); the guest
    without it, or no such guest there -> absent; the host not answering -> unknown (raised, made unknown by the
    collector). Other tasks: unknown (not its question)."""
    level = RESOURCE

    def __init__(self, reader: GuestReader, *, name: str | None = None):
        self.reader = reader
        self.name = name or f"{reader.name} volume connections"
        self.timeout = reader.timeout

    def observe(self, resource: Resource) -> Observation:
        if asks(resource) != CONNECTION:
            return Observation(UNKNOWN, "not an attach task: connections say nothing", self.name)
        instance = resource.record.get("instance_uuid")
        if not (instance and resource.host):
            return Observation(UNKNOWN, "no attachment names the instance and its host", self.name)
        guest = self.reader.guest_disks(resource.host, instance)
        if guest is None:
            return Observation(ABSENT, f"no guest {instance} on {resource.host}: the volume is not connected there",
                               self.name)
        if resource.id not in guest.volumes:
            return Observation(ABSENT, f"guest {instance} on {resource.host} has no disk of volume {resource.id}",
                               self.name)
        if guest.reality == UNKNOWN:
            return Observation(UNKNOWN, f"guest {instance} on {resource.host} has the volume, its state unknown",
                               self.name)
        reality = RUNNING if guest.reality == RUNNING else SHUT_OFF
        return Observation(reality, f"guest {instance} on {resource.host} ({guest.reality}) has the volume",
                           self.name)


def _missing_dirs(dirs: Sequence[str]) -> list[str]:
    return [d for d in dirs if not os.path.isdir(d)]


class VolumeFileBackend:
    """Resource level: a volume on a file-backed store (cinder's NFS driver, the lab's driver): the file
    `volume-<id>` in one of `dirs` (the shares' mount points). Present -> running when the volume keeps attachments,
    else shut_off; absent from every directory -> absent. A directory that is not there (a share not mounted) makes
    every answer unknown: an absent file would mean nothing. A migration: its destination volume's file (the row
    whose migration_status is target:<id>); no destination row -> absent. Attach tasks: unknown (not its question)."""
    level = RESOURCE

    def __init__(self, dirs: Sequence[str], *, timeout: float = 10.0, name: str = "cinder volume files",
                 file_name: str = VOLUME_FILE):
        self.dirs, self.timeout, self.name, self.file_name = tuple(dirs), timeout, name, file_name

    def observe(self, resource: Resource) -> Observation:
        if asks(resource) != VOLUME_STORE:
            return Observation(UNKNOWN, "an attach task: the store does not tell a connection", self.name)
        missing = _missing_dirs(self.dirs)
        if missing or not self.dirs:
            return Observation(UNKNOWN, f"no store directory {', '.join(missing) or '(none configured)'}",
                               self.name)
        volume_id = resource.id
        if resource.kind == "volume_migration":
            volume_id = resource.record.get("migration_target")
            if not volume_id:
                return Observation(ABSENT, "cinder's database has no destination volume for the migration",
                                   self.name)
        name = self.file_name.format(id=volume_id)
        path = next((p for p in (os.path.join(d, name) for d in self.dirs) if os.path.isfile(p)), None)
        what = "destination volume" if resource.kind == "volume_migration" else "volume"
        if path is None:
            return Observation(ABSENT, f"no {name} in {', '.join(self.dirs)}", self.name)
        if resource.kind == "volume_migration":
            return Observation(SHUT_OFF, f"the {what} is there: {path}", self.name)
        used = bool(resource.record.get("attachments"))
        return Observation(RUNNING if used else SHUT_OFF,
                           f"{path} is there, {'with' if used else 'without'} attachments", self.name)


class BackupFileBackend:
    """Resource level: a backup in a posix or NFS backup store (cinder's backup_posix_path, or the NFS share's
    mount point): `<dir>/<container>/<service_metadata>_metadata` is written last, so present -> running
    (complete); only chunks `<service_metadata>-NNNNN` -> shut_off (partial); the container without any -> absent.
    A row without container or service_metadata, or a directory not there -> unknown."""
    level = RESOURCE

    def __init__(self, dirs: Sequence[str], *, timeout: float = 10.0, name: str = "cinder backup files"):
        self.dirs, self.timeout, self.name = tuple(dirs), timeout, name

    def observe(self, resource: Resource) -> Observation:
        record: Mapping[str, Any] = resource.record
        container, prefix = record.get("container"), record.get("service_metadata")
        if not (container and prefix):
            return Observation(UNKNOWN, "the backup row names no container and object prefix", self.name)
        missing = _missing_dirs(self.dirs)
        if missing or not self.dirs:
            return Observation(UNKNOWN, f"no store directory {', '.join(missing) or '(none configured)'}",
                               self.name)
        if os.path.isabs(container) or ".." in container.split("/") or "/" in prefix:
            raise HealthError(f"backup container {container!r} / prefix {prefix!r}: not a path in the store")
        for d in self.dirs:
            where = os.path.join(d, container)
            if not os.path.isdir(where):
                continue
            names = os.listdir(where)
            if f"{prefix}_metadata" in names:
                return Observation(RUNNING, f"{where}/{prefix}_metadata is there: complete", self.name)
            chunks = [n for n in names if n.startswith(f"{prefix}-")]
            if chunks:
                return Observation(SHUT_OFF, f"{where}: {len(chunks)} chunk(s) of {prefix}, no metadata: partial",
                                   self.name)
        return Observation(ABSENT, f"no data of {prefix} in {container} under {', '.join(self.dirs)}", self.name)


__all__ = ["ATTACH_TASKS", "CONNECTION", "VOLUME_STORE", "BACKUP_STORE", "Attachment", "GuestDisks",
           "GuestReader", "LibvirtVolumes", "CinderServiceBackend", "InstanceHeartbeatBackend",
           "VolumeConnectionBackend", "VolumeFileBackend", "BackupFileBackend", "question", "asks",
           "service_host", "task_attachment", "volume_serials"]
