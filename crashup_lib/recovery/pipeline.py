"""One host's recovery: verify fenced -> repair stale tasks -> storm guard -> auto (plan, evacuate) | notify -> done.

Every step is safe to run again: a daemon that dies anywhere, or a new one after a failover, calls recover() on the
same request and carries on (the request's state says how far it got; nova's migrations say which instances moved).
The request stays open until its recovery is finished, so the host is not let back before that.
"""
from __future__ import annotations

import dataclasses
import time

from crashup_lib import log, pacemaker
from crashup_lib.pacemaker import RecoveryRequest

LOG = log.get("recovery")
#: how long fencing may take to be confirmed before an event says it was not (Pacemaker's default stonith-timeout)
FENCING_GRACE = 60.0
#: a pending request with no fencing recorded, successful or in flight, for this long: fence the node again. This is
#: what a full cluster restart leaves (the fencer keeps its history in memory): a fresh fencing is the only proof.
REFENCE_AFTER = 15.0
NOTIFIED = "notified: waiting for release"
STORM = "storm guard: automatic evacuation stopped"
NO_TARGET = "waiting for another nova-compute to be up to take the instances"


@dataclasses.dataclass(frozen=True)
class Step:
    """What the pipeline did on one call, for the daemon's log and `crashup recover`'s output."""
    request: RecoveryRequest
    waiting: bool                        # nothing more to do now; call again later
    summary: str


class Recovery:
    def __init__(self, cfg, nova, emitter, *, microversion: str | None = None, clock=time.time):
        self.cfg = cfg
        self.nova = nova
        self.emitter = emitter
        self.clock = clock
        self._refenced_at: dict[str, float] = {}
        # <= 2.94 keeps each server's power state through evacuation; 2.95 leaves them all SHUTOFF
        self.microversion = microversion or ("2.94" if cfg.keep_power_state else "2.95")

    # --- the steps ---------------------------------------------------------------------------------------------
    def recover(self, req: RecoveryRequest) -> Step:
        if not req.open:
            return Step(req, False, f"{req.node}: recovery already {req.state}")
        if req.state == "pending":
            # never a step before the power-off is proven; "recovering" in the CIB then is that proof, kept
            fenced = pacemaker.fenced_since(req.node, req.fenced_at)
            if fenced is None:
                return self._unconfirmed(req)
            req = self._save(req.moved_to("recovering", f"fencing confirmed ({fenced.action} by {fenced.delegate})",
                                          host=self._host(req.node)))
        host = req.host or self._host(req.node)
        if req.mode == "notify" and req.note == NOTIFIED:
            return Step(req, True, f"{req.node}: notified, waiting for release")
        if req.note == STORM:
            return Step(req, True, f"{req.node}: held by the storm guard; `crashup recover --force` to go on")

        servers = self.nova.servers_on_host(host)
        repairs = self._repair(host, servers)
        if repairs:
            servers = self.nova.servers_on_host(host)
        if req.mode == "notify":
            self._emit("crashup.host.failed", host, self._failed_payload(req, host, servers, repairs))
            req = self._save(req.moved_to("recovering", NOTIFIED))
            return Step(req, True, f"{req.node}: {len(servers)} instances handed to the operator (notify mode)")
        storm = self._storm(req)
        if storm:
            self._emit("crashup.host.storm", host, storm)
            req = self._save(req.moved_to("recovering", STORM))
            return Step(req, True, f"{req.node}: storm guard holds automatic evacuation ({storm['hosts']})")
        if servers and not self._targets_up(host):
            # nowhere to go (e.g. every nova-compute restarting with the cluster): evacuating now would only put
            # the instances in ERROR with "No valid host"; the request waits, with a note that says why
            if req.note != NO_TARGET:
                req = self._save(req.moved_to("recovering", NO_TARGET))
            return Step(req, True, f"{req.node}: no other nova-compute is up to take its instances: waiting")
        return self._evacuate(req, host, servers, repairs)

    def _targets_up(self, host: str) -> bool:
        return any(s.host != host and s.state == "up" and not s.forced_down and s.status == "enabled"
                   for s in self.nova.services())

    def _unconfirmed(self, req: RecoveryRequest) -> Step:
        age = self.clock() - req.fenced_at
        recently = self.clock() - self._refenced_at.get(req.node, float("-inf")) < FENCING_GRACE
        if age > REFENCE_AFTER and not recently and not pacemaker.fencing_in_flight(req.node):
            self._refenced_at[req.node] = self.clock()
            LOG.warning("%s: no fencing recorded since the request (history lost in a cluster restart?): "
                        "fencing it again", req.node)
            if not pacemaker.wait_settled():
                LOG.info("%s: the cluster is still busy after %gs: fencing anyway", req.node, pacemaker.SETTLE_WAIT)
            try:
                pacemaker.request_fencing(req.node)     # the level records the request anew: fenced_at moves on
            except pacemaker.PacemakerError as e:
                LOG.warning("%s: fencing again failed: %s", req.node, e)
            req = pacemaker.request(req.node) or req
            age = self.clock() - req.fenced_at
        if age > FENCING_GRACE and not req.note.startswith("fencing not confirmed"):
            reason = f"no successful fencing of {req.node} recorded since {time.ctime(req.fenced_at)}"
            self._emit("crashup.host.fencing_unconfirmed", req.host or req.node,
                       {"host": req.host or "", "node": req.node, "reason": reason})
            req = self._save(req.moved_to(req.state, f"fencing not confirmed: {reason}"))
        return Step(req, True, f"{req.node}: waiting for confirmed fencing ({age:.0f}s)")

    def _host(self, node: str) -> str:
        from crashup_lib import hostmap
        return hostmap.resolve(node, [s.host for s in self.nova.services()], self.cfg.host_map)

    def _repair(self, host: str, servers) -> list:
        from crashup_lib.recovery import repair
        decisions = repair.decide_all(servers)
        for decision in decisions:
            if decision.action == "skip":
                continue
            repair.apply(self.nova, decision)
            LOG.info("%s: %s (%s -> %s)", decision.name, decision.action, decision.task_state, decision.reason)
            self._emit("crashup.instance.repaired", decision.server_id,
                       {"id": decision.server_id, "from_task_state": decision.task_state,
                        "from_vm_state": decision.vm_state, "action": decision.action, "host": host})
        return decisions

    def _storm(self, req: RecoveryRequest) -> dict | None:
        window = self.cfg.storm_window
        now = self.clock()
        failed = sorted(r.node for r in pacemaker.requests().values()
                        if r.open and now - r.fenced_at <= window)
        computes = [n for n in pacemaker.nodes() if n.type == "remote"]
        limit_fraction = self.cfg.storm_max_fraction * max(1, len(computes))
        if len(failed) > self.cfg.storm_max_hosts or len(failed) > limit_fraction:
            return {"hosts": failed, "window_s": window,
                    "limit": min(self.cfg.storm_max_hosts, int(limit_fraction)),
                    "action": "evacuation stopped"}
        return None

    def _evacuate(self, req: RecoveryRequest, host: str, servers, repairs) -> Step:
        from crashup_lib.recovery.evacuate import Evacuator
        started = self.clock()
        self._emit("crashup.host.failed", host, self._failed_payload(req, host, servers, repairs))
        the_plan = plan_for_host(self.nova, host, self.cfg, servers=servers, microversion=self.microversion,
                                 filter_mode=req.filter_mode or None)
        if not req.filter_mode:
            req = self._save(req.moved_to(req.state, f"evacuating {len(the_plan.steps)} instances",
                                          filter_mode=the_plan.filter_mode))

        def report(outcome):
            if outcome.result == "evacuated":
                self._emit("crashup.instance.evacuated", outcome.server_id,
                           {"id": outcome.server_id, "name": outcome.name, "source_host": host,
                            "target_host": outcome.target_host, "duration_s": outcome.duration_s,
                            "power_state": outcome.power_state if outcome.power_state is not None else ""})
            elif outcome.result == "failed":
                self._emit("crashup.instance.evacuation_failed", outcome.server_id,
                           {"id": outcome.server_id, "name": outcome.name, "source_host": host,
                            "reason": outcome.reason, "attempts": outcome.attempts})

        evacuator = Evacuator(self.nova, source_host=host, fenced_at=req.fenced_at, microversion=self.microversion,
                              concurrency=self.cfg.concurrency, instance_timeout=self.cfg.instance_timeout,
                              on_outcome=report)
        outcomes = evacuator.run(the_plan.waves)
        failed = [o for o in outcomes if o.result == "failed"]
        gone = [o for o in outcomes if o.result == "deleted"]
        # counted from nova's ledger, not this run's outcomes: a recovery resumed after a failover reports all of it
        moved = self._evacuated_since(host, req.fenced_at) | {o.server_id for o in outcomes
                                                               if o.result in ("evacuated", "already_moved")}
        self._emit("crashup.host.recovered", host,
                   {"host": host, "node": req.node, "mode": req.mode, "evacuated": len(moved),
                    "failed": len(failed), "skipped": len(the_plan.skipped) + len(gone),
                    "duration_s": round(self.clock() - started, 2)})
        note = f"{len(moved)} evacuated, {len(failed)} failed, {len(the_plan.skipped)} skipped" + \
            (f", {len(gone)} deleted meanwhile" if gone else "")
        req = self._save(req.moved_to("done", note))
        return Step(req, False, f"{req.node}: recovery done: {note}")

    # --- helpers -----------------------------------------------------------------------------------------------
    def _evacuated_since(self, host: str, fenced_at: float) -> set[str]:
        from crashup_lib.recovery.evacuate import _ts
        try:
            migrations = self.nova.migrations(source_compute=host, migration_type="evacuation")
        except Exception as e:                   # a summary is not worth failing a finished recovery for
            LOG.warning("counting evacuations of %s failed: %s", host, e)
            return set()
        return {m.server_id for m in migrations if m.status in ("done", "completed")
                and _ts(m.created_at) >= int(fenced_at) - 1}

    def _failed_payload(self, req, host, servers, repairs) -> dict:
        return {"host": host, "node": req.node, "fenced_at": req.fenced_at, "mode": req.mode,
                "instances": [{"id": s.id, "name": s.name, "status": s.status, "task_state": s.task_state,
                               "project_id": s.project_id} for s in servers],
                "repairs": [{"id": r.server_id, "from_task_state": r.task_state or None, "action": r.action}
                            for r in repairs if r.action != "skip"]}

    def _emit(self, kind: str, subject: str, payload: dict) -> None:
        """Emit an event. A malformed payload is a bug to log loudly, never a reason to stop a recovery; a journal
        that cannot be written is raised (the daemon retries the step: events are not lost)."""
        from crashup_lib.recovery import events
        try:
            event = events.make_event(kind, subject, payload)
        except events.EventError as e:
            LOG.error("event %s not emitted: %s", kind, e)
            return
        self.emitter.emit(event)

    def _save(self, req: RecoveryRequest) -> RecoveryRequest:
        pacemaker.write_request(req)
        LOG.info("%s: request %s (%s)", req.node, req.state, req.note)
        return req


def plan_for_host(nova, host: str, cfg, *, servers=None, microversion: str | None = None,
                  target_host: str | None = None, skip_error: bool = False, filter_mode: str | None = None):
    """Gather what the pure planner needs from nova (instances, the host's aggregates, compute services)."""
    from crashup_lib.recovery import plan as planning
    servers = nova.servers_on_host(host) if servers is None else servers
    aggregates = [a for a in nova.aggregates() if host in a.hosts]
    microversion = microversion or ("2.94" if cfg.keep_power_state else "2.95")
    return planning.build_plan(host, [dataclasses.asdict(s) for s in servers],
                               aggregates=[dataclasses.asdict(a) for a in aggregates],
                               hosts=[dataclasses.asdict(s) for s in nova.services()],
                               policy=planning.Policy.from_config(cfg, skip_error=skip_error,
                                                                  target_host=target_host),
                               microversion=microversion, filter_mode=filter_mode)


def release(node: str) -> RecoveryRequest:
    """Mark a node's recovery finished by the operator (notify mode), so the host may rejoin."""
    req = pacemaker.request(node)
    if req is None:
        raise pacemaker.PacemakerError(f"no recovery request for {node}")
    if not req.open:
        return req
    released = req.moved_to("released", "released by the operator")
    pacemaker.write_request(released)
    return released
