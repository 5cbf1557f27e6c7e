"""The two worlds crashup's recovery talks to, faked once for every unit test: the cluster (pacemaker.Cluster) and
nova (nova.Nova). Each fake has only methods of the real class, with the same parameters (test_pipeline.py checks
it), and answers with the real records (pacemaker.RecoveryRequest, FenceEvent, Node; nova.Server, Service, Migration,
Aggregate), so code that works against a fake works against the real thing."""
from __future__ import annotations

import dataclasses
import datetime
import itertools

from crashup_lib import nova, pacemaker

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

    def survey(self):
        return dict(self.saved), [r for r in self.saved.values() if self.mirror.get(r.node) != r.state]

    def requests(self):
        return dict(self.saved)

    def request(self, node):
        return self.saved.get(node)

    def write_request(self, req):
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

    def __init__(self, servers=(), *, hosts=COMPUTES, up=None, aggregates=()):
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
