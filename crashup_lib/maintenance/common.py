"""What the operator verbs share: refusals, the host and node a verb acts on, the quorum guard, progress and events,
following a server until it settles.

A verb checks everything it can before it changes anything; what is unsafe or wrong is `Refused` (one line, exit 2)
and nothing has been changed; what is found unsafe once it acts (checks re-run between steps) is `Halted` (one line
saying what was done, exit 1). Failures once acting are the adapters' own errors (one line, exit 1); every verb is
safe to run again and resumes from what nova and the CIB say.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable

from crashup_lib import events, hostmap, log, nova, pacemaker

LOG = log.get("maintenance")
POLL = 0.5                      # seconds between two reads of a server being followed
STATE_POLL = 1.0                # seconds between two reads of a recovery request being followed


class Refused(ValueError):
    """Unsafe or bad input, found before anything was changed: one line for the operator, exit 2."""


class Halted(RuntimeError):
    """A refusal found once the verb had changed things (quorum lost, the host failing): one line saying what was
    done so far, exit 1 (exit 2 promises nothing changed). Run again, the verb resumes."""


def halt_unless(check: Callable[[], None], done: str) -> None:
    """A refusal check run mid-way: its Refused becomes Halted, with what was `done` so far."""
    try:
        check()
    except Refused as e:
        raise Halted(f"{e}; stopped after: {done}") from None


class TimedOut(RuntimeError):
    """A server did not settle within maintenance_timeout (what nova was asked goes on: run the verb again)."""


@dataclasses.dataclass
class Context:
    """What a verb is given: the configuration, nova, the cluster, the events' emitter (None: no events), where
    progress lines go, and the clock (tests give fakes)."""
    cfg: object
    nova: object
    cluster: object
    emitter: object = None
    out: Callable[[str], None] = lambda line: print(line, flush=True)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    @property
    def timeout(self) -> float:
        return float(self.cfg.get("maintenance_timeout", 600))

    def emit(self, kind: str, subject: str, payload: dict) -> None:
        if self.emitter is None:
            return
        try:
            event = events.make_event(kind, subject, payload)
        except events.EventError as e:          # a bug to log loudly, never a reason to stop half-way
            LOG.error("event %s not emitted: %s", kind, e)
            return
        self.emitter.emit(event)

    def host_event(self, target: "Target", verb: str, step: str, servers: int, detail: str = "") -> None:
        self.emit(events.HOST_MAINTENANCE, target.host, {"host": target.host, "node": target.node, "verb": verb,
                                                  "step": step, "servers": servers, "detail": detail})

    def instance_event(self, server: nova.Server, verb: str, action: str, source: str, target: str | None,
                       outcome: str = "done", reason: str = "") -> None:
        self.emit(events.INSTANCE_MAINTENANCE, server.id, {"id": server.id, "name": server.name, "verb": verb,
                                                    "action": action, "source_host": source or "",
                                                    "target_host": target, "outcome": outcome, "reason": reason})

    def require_quorum(self, what: str) -> None:
        """The guard every acting verb passes first: a partition cut off from the majority changes nothing."""
        if not self.cluster.quorate():
            raise Refused(f"no quorum: not {what} from a partition cut off from the majority")


@dataclasses.dataclass(frozen=True)
class Target:
    """The host a verb acts on: its nova-compute service and its Pacemaker node ("" when it has none)."""
    host: str
    node: str
    service: nova.Service


def find_host(ctx: Context, name: str) -> Target:
    """The nova-compute host named `name` (a nova host, or a Pacemaker node name that maps to one); Refused when
    nova has none, or several."""
    services = ctx.nova.services()
    hosts = sorted({s.host for s in services})
    host = name if name in hosts else None
    if host is None:
        try:
            host = hostmap.resolve(name, hosts, ctx.cfg.get("host_map") or {})
        except hostmap.HostMapError:
            raise Refused(f"unknown host {name!r}: nova has no nova-compute service there "
                          f"(known: {', '.join(hosts) or 'none'})") from None
    found = [s for s in services if s.host == host]
    if len(found) != 1:
        raise Refused(f"host {host!r} has {len(found)} nova-compute services: refusing to pick one")
    try:
        node = hostmap.node_for_host(host, [n.name for n in ctx.cluster.nodes()], ctx.cfg.get("host_map") or {})
    except hostmap.HostMapError:
        node = ""
    return Target(host, node, found[0])


def refuse_open_recovery(ctx: Context, target: Target) -> None:
    """A host whose recovery is open belongs to the recovery daemon: no verb acts on it meanwhile."""
    req = ctx.cluster.request(target.node) if target.node else None
    if req is not None and req.open:
        raise Refused(f"{target.host}: its recovery is open ({req.state}{': ' + req.note if req.note else ''}): "
                      f"wait for it (crashup status), or close it (crashup release {target.node})")


def refuse_down(target: Target, verb: str) -> None:
    svc = target.service
    if svc.forced_down or svc.state != "up":
        why = "forced down (fenced?)" if svc.forced_down else "down"
        raise Refused(f"{target.host}: its nova-compute is {why}: {verb} needs it up "
                      f"(a dead or damaged host: crashup evacuate {target.host})")


def usable_targets(ctx: Context, host: str) -> list[str]:
    """Other compute hosts that can take servers now: up, enabled, not forced down."""
    return sorted(s.host for s in ctx.nova.services()
                  if s.host != host and s.state == "up" and s.status == "enabled" and not s.forced_down)


def refuse_bad_target(ctx: Context, host: str, to: str | None) -> None:
    """`--to HOST`: known, another host, and able to take servers now."""
    if to is None:
        return
    services = {s.host: s for s in ctx.nova.services()}
    if to == host:
        raise Refused(f"--to {to}: that is the host being emptied")
    if to not in services:
        raise Refused(f"--to {to}: unknown host (known: {', '.join(sorted(services))})")
    if to not in usable_targets(ctx, host):
        svc = services[to]
        why = ", ".join(w for w, bad in (("down", svc.state != "up"), ("forced down", svc.forced_down),
                                         ("disabled", svc.status != "enabled")) if bad)
        raise Refused(f"--to {to}: it cannot take servers now ({why})")


def follow(ctx: Context, server_id: str, settled: Callable[[nova.Server], bool], what: str) -> nova.Server:
    """Read the server until `settled(server)` (a task never counts as settled), at most maintenance_timeout."""
    end = ctx.clock() + ctx.timeout
    while True:
        server = ctx.nova.server(server_id)
        if not server.task_state and settled(server):
            return server
        if ctx.clock() >= end:
            raise TimedOut(f"server {server_id}: {what} not finished within {ctx.timeout:g}s (status {server.status}, "
                           f"task {server.task_state or '-'}): it goes on in nova; run the command again to resume")
        ctx.sleep(POLL)


def warn(line: str) -> None:
    print(f"crashup: warning: {line}", file=sys.stderr, flush=True)


def follow_request(ctx: Context, node: str, since: float) -> pacemaker.RecoveryRequest:
    """The node's recovery request (one fenced after `since`) followed until the daemon closes it, hands it to the
    operator (notify mode) or the storm guard holds it, each new state and note printed as progress; TimedOut after
    maintenance_timeout (the recovery goes on)."""
    end = ctx.clock() + ctx.timeout
    seen = None
    while True:
        req = ctx.cluster.request(node)
        if req is not None and (req.state, req.note) != seen:
            seen = (req.state, req.note)
            ctx.out(f"{node}: recovery {req.state}" + (f": {req.note}" if req.note else ""))
        if req is not None and req.fenced_at >= since - 5:
            if not req.open:
                return req
            if req.hold is pacemaker.Hold.NOTIFIED:
                ctx.out(f"{node}: handed to your tooling (notify mode): crashup release {node} when its servers "
                        "are back")
                return req
            if req.hold is pacemaker.Hold.STORM:    # nothing moves until the operator says so
                ctx.out(f"{node}: held by the storm guard: crashup recover {node} --force to go on")
                return req
        if ctx.clock() >= end:
            raise TimedOut(f"{node}: recovery not finished within {ctx.timeout:g}s; it goes on (crashup status)")
        ctx.sleep(STATE_POLL)


__all__ = ["Refused", "Halted", "halt_unless", "TimedOut", "Context", "Target", "find_host", "refuse_open_recovery", "refuse_down",
           "usable_targets", "refuse_bad_target", "follow", "follow_request", "warn"]

