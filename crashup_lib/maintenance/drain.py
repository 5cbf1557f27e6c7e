"""`crashup drain HOST` and `crashup undrain HOST`: empty a healthy host for planned maintenance, and bring it back.

drain: the host's nova-compute is disabled with crashup's reason (DRAIN_REASON: no new server lands there), then
each server on it, one at a time: live-migrated when running (ACTIVE, PAUSED); a server that cannot (nova refuses,
or the migration fails and it stays) and a stopped one get the policy (`[maintenance] drain_policy`, or its own
metadata `crashup:drain` = live | cold-migrate | stop): cold-migrated (resize confirmed) or stopped where it is.
A PAUSED server is live-migrated only: nova neither stops nor cold-migrates one (compute API stop: vm_state ACTIVE
or ERROR; resize: ACTIVE or STOPPED), so one whose metadata asks for cold-migrate or stop is refused up front, and
one whose live migration fails is reported failed (unpause it, run the drain again). Before an ACTIVE server is
stopped it is marked with metadata `crashup:drain_stopped` = HOST; undrain enables the service and starts exactly
the servers marked so that are still on the host, then removes the mark. Between two servers the drain re-checks
quorum and the host (up, not forced down, no recovery open): a refusal then stops it (exit 1, what was done said).

Where the drain's state lives, and why: in nova itself. The host's "being drained" is its service's disabled
reason (nova shows it to every operator, `openstack compute service list --long`); "was running before the drain"
is each server's own metadata, written before the stop, so it travels with the server, survives any interruption
or controller failover, and is read back in the same call that lists the host's servers. A drain or undrain that
was interrupted is simply run again: servers already moved are no longer on the host, those moving are followed,
a cold migration awaiting confirmation is confirmed.

decide() and refusals() are pure (nova's records in, data out); the run is I/O around them.
"""
from __future__ import annotations

import dataclasses
import enum

from crashup_lib import nova as nova_api
from crashup_lib.maintenance.common import Context, Refused, Target, TimedOut, find_host, follow, halt_unless, \
    refuse_down, refuse_open_recovery, usable_targets
from crashup_lib.rejoin import DRAIN_REASON, DRAIN_STOPPED     # rejoin's next_step never re-enables the first

POLICY_KEY = "crashup:drain"            # per-server override of the policy
STOPPED_KEY = DRAIN_STOPPED            # = the host: running before the drain, stopped by it; undrain starts it
POLICIES = ("live", "cold-migrate", "stop")
RUNNING = ("ACTIVE", "PAUSED")          # what live migration takes
MOVING_TASKS = ("migrating", "resize_prep", "resize_migrating", "resize_migrated", "resize_finish",
                "powering-off", "powering-on")   # what a drain of ours leaves in flight, followed on a resume


class Action(enum.StrEnum):
    LIVE = "live-migrate"
    COLD = "cold-migrate"
    STOP = "stop"
    CONFIRM = "confirm-resize"           # a cold migration of ours waits for its confirmation
    FOLLOW = "follow"                    # a move or stop of ours is under way (a resumed drain)
    STAY = "stay"                        # stopped, and stays: nothing to do


@dataclasses.dataclass(frozen=True)
class Step:
    server_id: str
    name: str
    status: str
    action: Action
    reason: str


def _override(server: nova_api.Server) -> str | None:
    value = str(server.metadata.get(POLICY_KEY, "")).strip().lower()
    return value if value in POLICIES else None


def fallback(server: nova_api.Server, policy: str) -> Action:
    """What a server gets when it cannot live-migrate: its own override, else the policy."""
    chosen = _override(server) or policy
    return Action.STOP if chosen == "stop" else Action.COLD


def decide(server: nova_api.Server, host: str, policy: str, ours: bool) -> Step:
    """The one thing a drain does with `server` now (refusals() has ruled out what it must not touch)."""
    def step(action, reason=""):
        return Step(server.id, server.name, server.status, action, reason)
    if server.task_state:
        return step(Action.FOLLOW, f"{server.task_state} under way")
    if server.status == "VERIFY_RESIZE":
        return step(Action.CONFIRM, "cold migration done, awaiting confirmation")
    override = _override(server)
    if server.status in RUNNING:
        if override in ("cold-migrate", "stop"):
            return step(Action.COLD if override == "cold-migrate" else Action.STOP, f"metadata {POLICY_KEY}")
        return step(Action.LIVE)
    # SHUTOFF
    if server.metadata.get(STOPPED_KEY) == host:
        return step(Action.STAY, "stopped by the drain: undrain starts it")
    if (override or policy) == "stop":
        return step(Action.STAY, "stopped before the drain: stays")
    return step(Action.COLD, "stopped: cold migration" + (f" (metadata {POLICY_KEY})" if override else ""))


def refusals(servers, host: str, ours: bool) -> list[str]:
    """Why a drain must not start (or resume): servers it cannot handle safely, one phrase each."""
    found = []
    for s in servers:
        label = f"{s.name} ({s.id})"
        if s.task_state and not (ours and s.task_state in MOVING_TASKS):
            found.append(f"server {label} is in a task ({s.task_state})")
        elif s.status == "VERIFY_RESIZE" and not ours:
            found.append(f"server {label} awaits a resize confirmation (someone else's resize)")
        elif s.status == "PAUSED" and not s.task_state and _override(s) in ("cold-migrate", "stop"):
            found.append(f"server {label} is PAUSED with metadata {POLICY_KEY} = {_override(s)}: nova neither stops "
                         "nor cold-migrates a paused server: unpause it first")
        elif s.status == "ERROR" or s.vm_state == "error":
            found.append(f"server {label} is in ERROR: repair or delete it first")
        elif not s.task_state and s.status not in (*RUNNING, "SHUTOFF", "VERIFY_RESIZE"):
            found.append(f"server {label} is {s.status}: drain moves running and stopped servers only")
    return found


def plan(servers, host: str, policy: str, ours: bool) -> list[Step]:
    return [decide(s, host, policy, ours) for s in sorted(servers, key=lambda s: (s.name, s.id))]


def render(target: Target, steps, policy: str, ours: bool, verb: str = "drain") -> str:
    head = (f"{verb} {target.host}" + (f" (node {target.node})" if target.node else "") +
            f": {len(steps)} servers; policy for those that cannot live-migrate: {policy}" +
            ("; resuming (disabled by crashup drain)" if ours else ""))
    rows = [f"  {s.name:<24} {s.server_id}  {s.status:<13} {s.action:<15} {s.reason}".rstrip() for s in steps]
    return "\n".join([head, *rows]) if rows else head + "\n  nothing on the host"


# --- drain -----------------------------------------------------------------------------------------------------------

def drain(ctx: Context, name: str, dry_run: bool = False) -> int:
    target = find_host(ctx, name)
    refuse_open_recovery(ctx, target)
    refuse_down(target, "drain")
    svc = target.service
    ours = svc.status == "disabled" and svc.disabled_reason == DRAIN_REASON
    if svc.status == "disabled" and not ours:
        raise Refused(f"{target.host}: disabled by someone else ({svc.disabled_reason or 'no reason'}): enable it "
                      "first, or move its servers yourself")
    policy = ctx.cfg.get("drain_policy", "cold-migrate")
    servers = ctx.nova.servers_on_host(target.host)
    bad = refusals(servers, target.host, ours)
    if bad:
        raise Refused(f"{target.host}: not draining: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1
                                                                   else ""))
    if ours:           # a resumed drain: cold migrations of ours awaiting confirmation are on their new host now
        servers += _awaiting_confirmation(ctx, target.host, {s.id for s in servers})
    steps = plan(servers, target.host, policy, ours)
    if any(s.action is not Action.STAY for s in steps) and not usable_targets(ctx, target.host):
        raise Refused(f"{target.host}: no other nova-compute is up and enabled to take its servers")
    ctx.out(render(target, steps, policy, ours))
    if dry_run:
        return 0
    ctx.require_quorum(f"draining {target.host}")
    if not ours:
        ctx.nova.disable(target.host, DRAIN_REASON)
        ctx.host_event(target, "drain", "disabled", len(servers), f"policy {policy}")
        ctx.out(f"{target.host}: nova-compute disabled ({DRAIN_REASON!r})")
    failed = done = 0
    todo = sum(s.action is not Action.STAY for s in steps)
    for step in steps:
        if step.action is Action.STAY:
            continue
        halt_unless(lambda: _still_drainable(ctx, target.host),      # cut off, or the host failing, meanwhile
                    f"{target.host} disabled ({DRAIN_REASON!r}), {done} of {todo} servers handled")
        failed += not _run_step(ctx, target.host, step, policy)
        done += 1
    left = [s for s in ctx.nova.servers_on_host(target.host) if s.status != "SHUTOFF"]
    detail = f"{failed} failed" + (f"; still running there: {', '.join(s.name for s in left)}" if left else "")
    ctx.host_event(target, "drain", "finished", len(steps), detail)
    if failed or left:
        ctx.out(f"{target.host}: drain incomplete: {detail}; run it again to resume")
        return 1
    ctx.out(f"{target.host}: drained: nothing runs there any more (crashup undrain {target.host} enables it and "
            "starts the servers the drain stopped)")
    return 0


def _still_drainable(ctx: Context, host: str) -> None:
    """Before each server: quorum, and the host still healthy and not taken by a recovery (read afresh)."""
    ctx.require_quorum(f"draining {host}")
    fresh = find_host(ctx, host)
    refuse_open_recovery(ctx, fresh)
    refuse_down(fresh, "drain")


def _awaiting_confirmation(ctx: Context, host: str, known: set) -> list:
    """Servers cold-migrated off `host` whose resize nova still waits to have confirmed (VERIFY_RESIZE elsewhere)."""
    found = []
    for m in ctx.nova.migrations(source_compute=host, migration_type="migration"):
        if m.status != "finished" or m.server_id in known:
            continue
        known.add(m.server_id)
        try:
            s = ctx.nova.server(m.server_id)
        except nova_api.NovaNotFound:
            continue
        if s.status == "VERIFY_RESIZE" and not s.task_state:
            found.append(s)
    return found


def _run_step(ctx: Context, host: str, step: Step, policy: str) -> bool:
    """One server off the host (or stopped on it); True when it ended as wanted. An event either way."""
    server = ctx.nova.server(step.server_id)
    action = step.action
    try:
        if action is Action.FOLLOW:
            server = follow(ctx, server.id, lambda s: True, f"{server.task_state}")
            if server.host != host or (server.status == "SHUTOFF" and server.metadata.get(STOPPED_KEY) == host):
                ctx.out(f"  {server.name}: finished ({server.status} on {server.host})")
                return True
            return _run_step(ctx, host, decide(server, host, policy, True), policy)
        if action is Action.LIVE:
            ctx.out(f"  {server.name}: live-migrating")
            try:
                ctx.nova.live_migrate(server.id)
                after = follow(ctx, server.id, lambda s: True, "live migration")
                if after.host != host and after.status in RUNNING:
                    return _moved(ctx, server, host, action, after.host)
                why = f"live migration ended {after.status} on {after.host}"
            except (nova_api.NovaBadRequest, nova_api.NovaConflict) as e:
                why = f"nova refused live migration: {e.nova_message or e}"
            action = fallback(server, policy)
            ctx.out(f"  {server.name}: cannot live-migrate ({why}): {action}")
            return _fallback(ctx, host, ctx.nova.server(server.id), action, why)
        return _fallback(ctx, host, server, action, step.reason)
    except (nova_api.NovaError, TimedOut) as e:
        ctx.out(f"  {server.name}: {action} failed: {e}")
        ctx.instance_event(server, "drain", str(action), host, None, "failed", str(e))
        return False


def _fallback(ctx: Context, host: str, server: nova_api.Server, action: Action, reason: str) -> bool:
    if server.status == "PAUSED":                   # nova stops and cold-migrates no paused server
        raise nova_api.NovaError(str(action), server.id, "it is PAUSED: nova neither stops nor cold-migrates it "
                                 "(unpause it, then run the drain again)")
    if action is Action.STOP:
        if server.status == "ACTIVE":               # marked before the stop: undrain starts exactly these
            ctx.nova.set_metadata(server.id, STOPPED_KEY, host)
            ctx.out(f"  {server.name}: stopping (undrain starts it)")
            ctx.nova.stop(server.id)
            follow(ctx, server.id, lambda s: s.status == "SHUTOFF", "stop")
        return _moved(ctx, server, host, action, host, reason)
    if action is Action.COLD:
        ctx.out(f"  {server.name}: cold-migrating")
        ctx.nova.migrate(server.id)                 # nova sets its task before it answers: followed to the end
        server = follow(ctx, server.id, lambda s: True, "cold migration")
    if server.status == "VERIFY_RESIZE":
        ctx.nova.confirm_resize(server.id)
        after = follow(ctx, server.id, lambda s: s.status != "VERIFY_RESIZE", "resize confirmation")
        if after.host != host and after.status in (*RUNNING, "SHUTOFF"):
            return _moved(ctx, server, host, Action.COLD, after.host, reason)
        server = after
    raise nova_api.NovaError("migrate", server.id, f"the server is {server.status} on {server.host}")


def _moved(ctx: Context, server: nova_api.Server, host: str, action: Action, to: str | None,
           reason: str = "") -> bool:
    ctx.out(f"  {server.name}: {action} done" + (f" -> {to}" if to and to != host else ""))
    ctx.instance_event(server, "drain", str(action), host, to, "done", reason)
    return True


# --- undrain ---------------------------------------------------------------------------------------------------------

def undrain(ctx: Context, name: str, dry_run: bool = False) -> int:
    target = find_host(ctx, name)
    refuse_open_recovery(ctx, target)
    refuse_down(target, "undrain")
    svc = target.service
    marked = [s for s in ctx.nova.servers_on_host(target.host) if s.metadata.get(STOPPED_KEY) == target.host]
    if svc.status == "disabled" and svc.disabled_reason != DRAIN_REASON:
        raise Refused(f"{target.host}: disabled by someone else ({svc.disabled_reason or 'no reason'}), not by "
                      "crashup drain: enable it yourself")
    busy = [s for s in marked if s.task_state and s.task_state != "powering-on"]
    if busy:
        raise Refused(f"{target.host}: not undraining: server {busy[0].name} ({busy[0].id}) is in a task "
                      f"({busy[0].task_state})")
    ctx.out(f"undrain {target.host}: " + ("enable nova-compute; " if svc.status == "disabled" else "") +
            f"start {len(marked)} servers the drain stopped" +
            "".join(f"\n  {s.name:<24} {s.id}  {s.status}" for s in marked))
    if dry_run:
        return 0
    ctx.require_quorum(f"undraining {target.host}")
    if svc.status == "disabled":
        ctx.nova.enable(target.host)
        ctx.host_event(target, "undrain", "enabled", len(marked))
        ctx.out(f"{target.host}: nova-compute enabled")
    failed = 0
    for server in marked:
        try:
            if server.status != "ACTIVE":
                ctx.out(f"  {server.name}: starting")
                if server.task_state != "powering-on":
                    ctx.nova.start(server.id)
                follow(ctx, server.id, lambda s: s.status in ("ACTIVE", "ERROR"), "start")
                if ctx.nova.server(server.id).status != "ACTIVE":
                    raise nova_api.NovaError("start", server.id, "the server went to ERROR")
            ctx.nova.delete_metadata(server.id, STOPPED_KEY)     # last: a resumed undrain finds it again
            ctx.out(f"  {server.name}: ACTIVE")
            ctx.instance_event(server, "undrain", "start", target.host, target.host)
        except (nova_api.NovaError, TimedOut) as e:
            failed += 1
            ctx.out(f"  {server.name}: start failed: {e}")
            ctx.instance_event(server, "undrain", "start", target.host, None, "failed", str(e))
    ctx.host_event(target, "undrain", "finished", len(marked), f"{failed} failed")
    ctx.out(f"{target.host}: undrained: {len(marked) - failed} started, {failed} failed")
    return 0 if not failed else 1
