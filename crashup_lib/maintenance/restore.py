"""`crashup restore SERVER --image IMAGE`: a server back from a backup image, keeping what makes it itself.

nova's rebuild keeps the server's id, its ports (addresses), its attached volumes, flavor and key pair, and replaces
its disk with the image (a volume-backed root is re-imaged, 2.93+). When the server's host is dead, it is first
evacuated (the host fenced: its recovery request closed, its nova-compute forced down) to a host that is up, then
rebuilt there.

Refused while the server's host may still run it: its nova-compute is up and not forced down (it may be the
damaged host: `crashup evacuate HOST` fences it first; `--in-place` says it is healthy: rebuild it where it is), or
down without proof of fencing (no recovery request of its node, or not its current one: see not_current), or its
node's recovery is open and the daemon is evacuating it (in notify mode, handed over to the operator, restoring is
the operator's tooling: allowed). A server in a task, an unknown server or image: refused too. Nothing is changed
then. Quorum is checked before anything is changed, and again right before the evacuation and the rebuild.

The request is taken as the host's current one (not_current) when Pacemaker confirms a fencing of the node since the
request's fenced_at and, for a closed request, the node is offline in Pacemaker and nova's service record has not
changed since the request was closed: the rejoin clears forced-down only after the request closed, so a host that
came back and was forced down again later (by hand) shows a newer updated_at. An open request (handed over in notify
mode) may have its node online: fencing reboots it, and the hold rule keeps its nova-compute off until the request
closes. The service's updated_at alone cannot date the forced-down: it also moves with every heartbeat, and
fence_crashup_nova forces the service down after it wrote the request.

Resumable: the server is marked (metadata RESTORE_KEY = the image) before anything is done and unmarked after the
rebuild; run again, a marked server in an evacuation or rebuild of ours is followed, then the rest done.
"""
from __future__ import annotations

import dataclasses

from crashup_lib import nova as nova_api
from crashup_lib.maintenance.common import Context, Refused, TimedOut, find_host, follow, halt_unless, \
    refuse_bad_target
from crashup_lib.nova import evacuate_microversion
from crashup_lib.pacemaker import Hold
from crashup_lib.report.fields import epoch

RESTORE_KEY = "crashup:restore"         # = the image: a restore of ours under way
CLOCK_SLACK = 5.0                       # seconds: nova's clock (service updated_at) against crashup's (the request)
OURS_TASKS = ("rebuilding", "rebuild_block_device_mapping", "rebuild_spawning", "powering-on")


@dataclasses.dataclass(frozen=True)
class Decision:
    evacuate: bool                      # off its dead host first
    reason: str                         # what an operator reads


def not_current(request, service: nova_api.Service, fenced: bool, online: bool) -> str | None:
    """Why `request` does not prove the host is fenced now (None: it does). `fenced`: Pacemaker's fencing history has
    a successful power-off of the node since request.fenced_at; `online`: Pacemaker has the node online."""
    if not fenced:
        return f"no fencing of node {request.node} confirmed since its recovery request"
    if online and not request.open:     # open: the hold rule keeps nova-compute off a node back from a reboot
        return f"node {request.node} is online in Pacemaker and its recovery is closed: its nova-compute may run"
    changed = epoch(service.updated_at)
    if not request.open and changed is not None and changed > request.updated_at + CLOCK_SLACK:
        return (f"its nova-compute service changed after its recovery request closed (an old request of node "
                f"{request.node})")
    return None


def decide(server: nova_api.Server, service: nova_api.Service, request, in_place: bool, image: str, *,
           fenced: bool = False, online: bool = True) -> Decision:
    """Pure: whether to evacuate first, or Refused (why the host may still run the server, or the server is busy).
    `request`: the recovery request of the host's node (None when it has none); `fenced`, `online`: see
    not_current (the defaults prove nothing)."""
    ours = server.metadata.get(RESTORE_KEY) == image
    if server.task_state and not (ours and server.task_state in OURS_TASKS):
        raise Refused(f"server {server.name} ({server.id}) is in a task ({server.task_state}): not restoring it")
    if server.status == "ERROR" and not ours:
        raise Refused(f"server {server.name} ({server.id}) is in ERROR: reset it first (nova reset-state --active)")
    host = server.host or "?"
    handed_over = request is not None and request.open and request.hold is Hold.NOTIFIED
    if request is not None and request.open and not handed_over:
        raise Refused(f"{host}: its recovery is open ({request.state}): the daemon is evacuating it; wait for it "
                      "(crashup status), then restore")
    if service.state == "up" and not service.forced_down:
        if in_place:
            return Decision(False, f"rebuild in place on {host} (--in-place: the operator says it is healthy)")
        if ours:                        # evacuated by an earlier run of ours: this is its new host
            return Decision(False, f"rebuild on {host}")
        raise Refused(f"{host} may still run server {server.name}: its nova-compute is up and not fenced "
                      f"(a damaged host: crashup evacuate {host} first; a healthy one: --in-place)")
    if not service.forced_down or request is None:
        raise Refused(f"{host} may still run server {server.name}: it is down but not fenced by crashup "
                      f"(crashup evacuate {host} fences it)")
    stale = not_current(request, service, fenced, online)
    if stale:
        raise Refused(f"{host} may still run server {server.name}: {stale} (crashup evacuate {host} fences it)")
    return Decision(True, f"{host} is fenced ({'handed over in notify mode' if handed_over else request.state}): "
                          "evacuate, then rebuild")


def restore(ctx: Context, server_id: str, image: str, to: str | None = None, in_place: bool = False,
            dry_run: bool = False) -> int:
    try:
        server = ctx.nova.server(server_id)
    except nova_api.NovaNotFound:
        raise Refused(f"unknown server {server_id!r}") from None
    try:
        found = ctx.nova.image(image)
    except nova_api.NovaNotFound:
        raise Refused(f"unknown image {image!r}") from None
    if str(found.get("status", "")).upper() not in ("ACTIVE", ""):
        raise Refused(f"image {image} is {found.get('status')}: not usable")
    if not server.host:
        raise Refused(f"server {server.name} ({server.id}) has no host (shelved?): unshelve it first")
    target = find_host(ctx, server.host)
    request = ctx.cluster.request(target.node) if target.node else None
    fenced = online = False
    if request is not None and target.service.forced_down:        # the evacuate branch: is the request current?
        fenced = ctx.cluster.fenced_since(target.node, request.fenced_at) is not None
        online = any(n.name == target.node and n.online for n in ctx.cluster.nodes())
    decision = decide(server, target.service, request, in_place, image, fenced=fenced, online=online)
    if decision.evacuate:
        refuse_bad_target(ctx, target.host, to)
    ctx.out(f"restore {server.name} ({server.id}) from image {found.get('name') or image}: {decision.reason}")
    if dry_run:
        return 0
    ctx.require_quorum(f"restoring {server.id}")
    was_running = server.status == "ACTIVE" or server.power_state == 1
    ctx.nova.set_metadata(server.id, RESTORE_KEY, image)
    source = server.host
    try:
        if server.task_state:
            ctx.out(f"  {server.name}: {server.task_state} under way: following it")
            server = follow(ctx, server.id, lambda s: True, server.task_state)
        if server.host == source and decision.evacuate:
            ctx.out(f"  {server.name}: evacuating from {source}")
            halt_unless(lambda: ctx.require_quorum(f"evacuating {server.id}"), f"{server.id} marked {RESTORE_KEY}")
            ctx.nova.evacuate(server.id, target_host=to, microversion=evacuate_microversion(True))
            server = follow(ctx, server.id, lambda s: s.host != source or s.status == "ERROR", "evacuation")
            if server.host == source or server.status == "ERROR":
                raise nova_api.NovaError("evacuate", server.id, f"the server is {server.status} on {server.host}")
            ctx.instance_event(server, "restore", "evacuate", source, server.host)
            ctx.out(f"  {server.name}: on {server.host}")
        ctx.out(f"  {server.name}: rebuilding from {image}")
        halt_unless(lambda: ctx.require_quorum(f"rebuilding {server.id}"),      # cut off meanwhile: not acting
                    f"{server.id} marked {RESTORE_KEY}" + (f", evacuated to {server.host}" if server.host != source
                                                           else ""))
        ctx.nova.rebuild(server.id, image)
        server = follow(ctx, server.id, lambda s: s.status in ("ACTIVE", "SHUTOFF", "ERROR"), "rebuild")
        if server.status == "ERROR":
            raise nova_api.NovaError("rebuild", server.id, "the server went to ERROR")
        if was_running and server.status == "SHUTOFF":
            ctx.nova.start(server.id)
            server = follow(ctx, server.id, lambda s: s.status in ("ACTIVE", "ERROR"), "start")
        ctx.nova.delete_metadata(server.id, RESTORE_KEY)
    except (nova_api.NovaError, TimedOut) as e:
        ctx.instance_event(server, "restore", "rebuild", source, None, "failed", str(e))
        raise
    ctx.instance_event(server, "restore", "rebuild", source, server.host, "done", f"image {image}")
    ctx.out(f"{server.name}: restored from {image} on {server.host} ({server.status})")
    return 0
