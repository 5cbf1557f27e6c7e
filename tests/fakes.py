"""The worlds crashup's recovery talks to, faked once for every unit test: the cluster (pacemaker.Cluster), nova
(nova.Nova) and cinder (cinder.CinderApi, the calls recovery makes). Each fake has only methods of the real class,
with the same parameters (test_pipeline.py and test_storage_recovery.py check it; FakeCinder adds the levers of its
fake world), and answers with the real records (pacemaker.RecoveryRequest, FenceEvent, Node; nova.Server, Service,
Migration, Aggregate; cinder.Volume, Attachment, VolumeService), so code that works against a fake works against the
real thing."""
from __future__ import annotations

import dataclasses
import datetime
import itertools

from crashup_lib import cinder, nova, pacemaker

COMPUTES = ("compute1", "compute2", "compute3")


class FakeCluster:
    """pacemaker.Cluster over a dict of requests (the CIB's persistent attributes). `fenced`: whether fencing
    history shows a successful reboot since any time asked; `in_flight`: whether a fencing is pending. Fencing
    asked for, and waits for the DC to settle, are logged in `refenced` ("settled", then the node)."""

    def __init__(self, nodes=COMPUTES):
        self.saved: dict[str, pacemaker.RecoveryRequest] = {}
        self.mirror: dict[str, str] = {}                 # crashup-recovery-state, as written
        self.remote_nodes = list(nodes)
        self.fenced = True
        self.in_flight = False
        self.refenced: list[str] = []
        self.has_quorum = True
        self.daemon_on: set[str] = set()                 # where the recovery daemon's resource runs

    def running_on(self, resource):
        return set(self.daemon_on) if resource == "crashup" else set()

    def survey(self):
        return dict(self.saved), [r for r in self.saved.values() if self.mirror.get(r.node) != r.state]

    def quorate(self):
        return self.has_quorum

    def requests(self):
        return dict(self.saved)

    def request(self, node):
        return self.saved.get(node)

    def write_request(self, req):
        if not self.has_quorum:
            raise pacemaker.NoQuorum(f"no quorum: not writing the recovery request of {req.node}")
        self.saved[req.node] = req
        self.mirror[req.node] = req.state

    def write_state_mirror(self, req):
        self.mirror[req.node] = req.state

    def nodes(self):
        return [pacemaker.Node(n, "remote", False, False) for n in self.remote_nodes]

    def fenced_since(self, node, since):
        return pacemaker.FenceEvent(node, "reboot", "success", since + 1, "ctl1") if self.fenced else None

    def fencing_in_flight(self, node):
        return self.in_flight

    def wait_settled(self, limit=pacemaker.SETTLE_WAIT):
        self.refenced.append("settled")
        return True

    def request_fencing(self, node):
        self.refenced.append(node)


def server(sid, *, host="compute1", status="ACTIVE", vm_state=None, task_state=None, **fields) -> nova.Server:
    """A nova.Server as the admin API shows it; vm_state follows the status unless given."""
    vm_state = vm_state or {"ACTIVE": "active", "SHUTOFF": "stopped", "ERROR": "error"}.get(status, status.lower())
    fields.setdefault("flavor", {"original_name": "m1", "extra_specs": {}})
    fields.setdefault("project_id", "p")
    return nova.Server(id=sid, name=fields.pop("name", sid), status=status, task_state=task_state,
                       vm_state=vm_state, power_state=fields.pop("power_state", 1 if status == "ACTIVE" else 4),
                       host=host, **fields)


class FakeNova:
    """nova.Nova over an in-memory cloud: `servers`, compute services on `hosts` (up when in `up`), `aggregates`.
    evacuate() lands the server on its target (or the first other host up) at once with a `done` evacuation
    migration, ACTIVE or SHUTOFF as nova would at that microversion. Actions are logged (resets, evacuations,
    starts, stops); `failures[method] = exception` makes a method raise it."""
    timeout = 1.0

    def __init__(self, servers=(), *, hosts=COMPUTES, up=None, aggregates=(), cinder=None):
        self.cinder = cinder                 # a FakeCinder: evacuate() moves the server's volumes as nova does
        self._servers = {s.id: s for s in servers}
        self.hosts = tuple(hosts)
        self.up = tuple(hosts if up is None else up)
        self._aggregates = list(aggregates)
        self._migrations: list[nova.Migration] = []
        self._ids = itertools.count(1)
        self.resets, self.evacuations, self.starts, self.stops = [], [], [], []
        self.failures: dict[str, Exception] = {}

    def _fail(self, call):
        if call in self.failures:
            raise self.failures[call]

    def _known(self, call, server_id) -> nova.Server:
        self._fail(call)
        if server_id not in self._servers:
            raise nova.NovaNotFound(call, server_id, "HTTP 404: no such server", status=404)
        return self._servers[server_id]

    def _update(self, server_id, **changes):
        self._servers[server_id] = dataclasses.replace(self._servers[server_id], **changes)

    # -- services ----------------------------------------------------------------------------------------------
    def services(self, host=None, binary="nova-compute"):
        self._fail("services")
        return [nova.Service(f"svc-{h}", h, "nova-compute", "up" if h in self.up else "down", "enabled", False,
                             None, None) for h in self.hosts if host in (None, h) and binary in (None, "nova-compute")]

    def service(self, host, binary="nova-compute"):
        found = self.services(host, binary)
        if not found:
            raise nova.NovaNotFound("service", host, f"no {binary} service on host {host!r}")
        return found[0]

    # -- servers -----------------------------------------------------------------------------------------------
    def servers_on_host(self, host):
        self._fail("servers_on_host")
        return [s for s in self._servers.values() if s.host == host]

    def server(self, server_id):
        return self._known("server", server_id)

    def evacuate(self, server_id, target_host=None, microversion=None):
        found = self._known("evacuate", server_id)
        self.evacuations.append((server_id, target_host, microversion))
        target = target_host or next(h for h in self.up if h != found.host)
        stopped = nova.evacuate_leaves_stopped(microversion or nova.EVACUATE_STOPPED) or found.vm_state == "stopped"
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        if self.cinder is not None and not self.cinder.server_moved(server_id, target):
            # cinder refused a new attachment (a volume attaching/detaching): nova's rebuild fails, ERROR
            self._migrations.insert(0, nova.Migration(next(self._ids), server_id, found.host, target, "failed",
                                                      "evacuation", now, now))
            self._update(server_id, status="ERROR", vm_state="error", task_state=None)
            return
        self._migrations.insert(0, nova.Migration(next(self._ids), server_id, found.host, target, "done", "evacuation",
                                                  now, now))
        self._update(server_id, host=target, task_state=None, status="SHUTOFF" if stopped else "ACTIVE",
                     vm_state="stopped" if stopped else "active", power_state=4 if stopped else 1)

    def reset_state(self, server_id, state="active"):
        self._known("reset_state", server_id)
        self.resets.append((server_id, state))
        self._update(server_id, vm_state=state, task_state=None)

    def start(self, server_id):
        self._known("start", server_id)
        self.starts.append(server_id)
        self._update(server_id, status="ACTIVE", vm_state="active", power_state=1)

    def stop(self, server_id):
        self._known("stop", server_id)
        self.stops.append(server_id)
        self._update(server_id, status="SHUTOFF", vm_state="stopped", power_state=4)

    # -- migrations, aggregates --------------------------------------------------------------------------------
    def migrations(self, server_id=None, source_compute=None, migration_type="evacuation", changes_since=None):
        self._fail("migrations")
        return [m for m in self._migrations if server_id in (None, m.server_id)
                and source_compute in (None, m.source_compute) and migration_type in (None, m.migration_type)]

    def aggregates(self):
        self._fail("aggregates")
        return list(self._aggregates)


def volume(vid, *, status="in-use", host="ctl1@lvm#pool", bootable=False, multiattach=False, **fields):
    """A cinder.Volume as the admin API shows it, without attachments (FakeCinder adds them from its records)."""
    return cinder.Volume(id=vid, status=status, attach_status=fields.pop("attach_status", None),
                         migration_status=fields.pop("migration_status", None), host=host, bootable=bootable,
                         size=fields.pop("size", 1), multiattach=multiattach, **fields)


class FakeCinder:
    """cinder.CinderApi over in-memory volumes and attachment records (any status). attach() makes a record;
    server_moved() is what nova's evacuation does (a new attachment on the new host, the old one deleted; refused
    unless cinder's _attachment_reserve would allow it). reset_status() acts as cinder's os-reset_status (detached
    drops the records). `failures[method] = exception` makes a method raise it; `calls` logs every call."""
    timeout = 1.0

    def __init__(self, volumes=()):
        self._volumes = {v.id: v for v in volumes}
        self.records: list[cinder.Attachment] = []
        self.resets: list[tuple[str, str, dict]] = []
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[str, Exception] = {}
        self.moves_to_settle = 0          # server_moved() leaves the old record for this many volume() reads
        self._lagging: list[cinder.Attachment] = []
        self._ids = itertools.count(1)

    def _call(self, call, target):
        self.calls.append((call, target))
        if call in self.failures:
            raise self.failures[call]

    def attach(self, volume_id, server_id, host, status="attached"):
        self.records.append(cinder.Attachment(f"att-{next(self._ids)}", server_id, host, "2026-01-01T00:00:00",
                                              volume_id, status))

    def _shown(self, v):
        if self._lagging and self.moves_to_settle > 0:
            self.moves_to_settle -= 1
        elif self._lagging:
            self.records = [r for r in self.records if r not in self._lagging]
            self._lagging = []
        attached = tuple(r for r in self.records if r.volume_id == v.id and r.status == "attached")
        return dataclasses.replace(v, attachments=attached, attach_status="attached" if attached else "detached")

    # -- the calls recovery makes --------------------------------------------------------------------------------
    def volume(self, volume_id):
        self._call("volume", volume_id)
        v = self._volumes.get(volume_id)
        return None if v is None else self._shown(v)

    def volumes(self, **filters):
        self._call("volumes", ",".join(f"{k}={v}" for k, v in sorted(filters.items())))
        return [self._shown(v) for v in self._volumes.values()
                if all(getattr(v, k, None) == want for k, want in filters.items())]

    def attachments(self, server_id):
        self._call("attachments", server_id)
        return [dataclasses.replace(r, host_name=None) for r in self.records if r.server_id == server_id]

    def volumes_of(self, server_id):
        self._call("volumes_of", server_id)
        ids = dict.fromkeys(r.volume_id for r in self.records if r.server_id == server_id)
        return [self._shown(self._volumes[i]) for i in ids if i in self._volumes]

    def services(self, binary=None):
        self._call("services", binary or "all")
        svc = cinder.VolumeService("cinder-volume", "ctl1@lvm", "nova", "enabled", "up", None)
        return [svc] if binary in (None, svc.binary) else []

    def reset_status(self, kind, resource_id, values):
        self._call("reset_status", resource_id)
        self.resets.append((kind, resource_id, dict(values)))
        v = self._volumes[resource_id]
        if values.get("status") == "in-use" and not any(r.volume_id == resource_id for r in self.records):
            raise cinder.CinderError("reset_status", resource_id, "HTTP 400: Cannot reset-state to in-use because "
                                     "volume does not have any attachments.", 400)
        if values.get("attach_status") == "detached":
            self.records = [r for r in self.records if r.volume_id != resource_id]
        self._volumes[resource_id] = dataclasses.replace(v, status=values.get("status", v.status))

    # -- what nova's evacuation does to them ---------------------------------------------------------------------
    def server_moved(self, server_id, host) -> bool:
        """A new attachment on `host` for each volume of the server, the old one deleted; False (nothing changed)
        when cinder refuses one (status neither available nor in-use/reserved with a record of the server)."""
        mine = [r for r in self.records if r.server_id == server_id]
        for vid in dict.fromkeys(r.volume_id for r in mine):
            if self._volumes[vid].status not in ("available", "in-use", "reserved"):
                return False
        for vid in dict.fromkeys(r.volume_id for r in mine):
            self.attach(vid, server_id, host)
            self._volumes[vid] = dataclasses.replace(self._volumes[vid], status="in-use")
        if self.moves_to_settle:
            self._lagging += mine
        else:
            self.records = [r for r in self.records if r not in mine]
        return True
