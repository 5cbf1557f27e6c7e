"""One host's recovery: verify fenced -> repair stale tasks -> storm guard -> auto (plan, evacuate) | notify -> done.

With cinder (`cinder` given, volume_checks on), auto mode also reads the servers' volumes before planning
(recovery/storage.py, bounded), repairs a volume the fenced host left attaching/detaching (repair.decide_volume,
a crashup.resource.stale_recovered event each), and checks after each evacuation that its volumes followed the
server (the instance.evacuated event's `volumes`), beside the evacuations, in threads of its own.

Every step is safe to run again: a daemon that dies anywhere, or a new one after a failover, calls recover() on the
same request and carries on (the request's state and hold say how far it got; nova's migrations say which instances
moved). The request stays open until its recovery is finished, so the host is not let back before that. The cluster
and nova are objects it is given (pacemaker.Cluster, nova.Nova), so tests give it fakes (tests/fakes.py).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time

from crashup_lib import events, hostmap, log, pacemaker
from crashup_lib.nova import evacuate_microversion
from crashup_lib.pacemaker import Hold, RecoveryRequest
from crashup_lib import plan as planning
from crashup_lib import repair, storm
from crashup_lib.recovery import storage
from crashup_lib.recovery.evacuate import FAILED_MIGRATION, Evacuator, Result, _ts

LOG = log.get("recovery")
#: how long fencing may take to be confirmed before an event says it was not (Pacemaker's default stonith-timeout)
FENCING_GRACE = 60.0
#: a pending request with no fencing recorded, successful or in flight, for this long: fence the node again. This is
#: what a full cluster restart leaves (the fencer keeps its history in memory): a fresh fencing is the only proof.
REFENCE_AFTER = 15.0
#: the notes that go with a hold: what an operator reads (`crashup status`, the nova-compute agent's wait reason,
#: a daemon of the previous version mid-upgrade); the pipeline itself reads only the request's Hold
NOTIFIED = "notified: waiting for release"
STORM = "storm guard: automatic evacuation stopped"
NO_TARGET = "waiting for another nova-compute to be up to take the instances"


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far one recover() call got, for the daemon's log and `crashup recover`'s output."""
    request: RecoveryRequest
    waiting: bool                        # nothing more to do now; call again later
    summary: str


class Recovery:
    def __init__(self, cfg, cluster: pacemaker.Cluster, nova, emitter, *, microversion: str | None = None,
                 clock=time.time, cinder=None):
        self.cfg = cfg
        self.cluster = cluster
        self.nova = nova
        self.emitter = emitter
        self.clock = clock
        # cinder.CinderApi (or a fake); None, or volume_checks off: volumes are not read
        self.cinder = cinder if cfg.get("volume_checks", True) else None
        self._emit_lock = threading.Lock()        # the volume checks emit from their own threads
        self._refenced_at: dict[str, float] = {}
        self.microversion = microversion or evacuate_microversion(cfg.keep_power_state)

    # --- the steps ---------------------------------------------------------------------------------------------
    def recover(self, req: RecoveryRequest) -> Progress:
        if not req.open:
            return Progress(req, False, f"{req.node}: recovery already {req.state}")
        if req.state == "pending":
            # never a step before the power-off is proven; "recovering" in the CIB then is that proof, kept
            fenced = self.cluster.fenced_since(req.node, req.fenced_at)
            if fenced is None:
                return self._unconfirmed(req)
            req = self._save(req.moved_to("recovering", f"fencing confirmed ({fenced.action} by {fenced.delegate})",
                                          host=self._host(req.node)))
        host = req.host or self._host(req.node)
        if req.hold is Hold.NOTIFIED:
            return Progress(req, True, f"{req.node}: notified, waiting for release")
        if req.hold is Hold.STORM:
            return Progress(req, True, f"{req.node}: held by the storm guard; `crashup recover --force` to go on")

        servers = self.nova.servers_on_host(host)
        repairs = self._repair(host, servers)
        if repairs:
            servers = self.nova.servers_on_host(host)
        if req.mode == "notify" and not req.forced:     # forced: the operator hands it back to crashup
            self._emit(events.HOST_FAILED, host, self._failed_payload(req, host, servers, repairs))
            req = self._save(req.moved_to("recovering", NOTIFIED, Hold.NOTIFIED))
            return Progress(req, True, f"{req.node}: {len(servers)} instances handed to the operator (notify mode)")
        storm = None if req.forced else self._storm(req)      # the operator's --force is for this incident
        if storm:
            self._emit(events.HOST_STORM, host, storm)
            req = self._save(req.moved_to("recovering", STORM, Hold.STORM))
            return Progress(req, True, f"{req.node}: storm guard holds automatic evacuation ({storm['hosts']})")
        if servers and not self._targets_up(host):
            # nowhere to go (e.g. every nova-compute restarting with the cluster): evacuating now would only put
            # the instances in ERROR with "No valid host"; the request waits, with a note that says why
            if req.hold is not Hold.WAITING_FOR_COMPUTE:
                req = self._save(req.moved_to("recovering", NO_TARGET, Hold.WAITING_FOR_COMPUTE))
            return Progress(req, True, f"{req.node}: no other nova-compute is up to take its instances: waiting")
        return self._evacuate(req, host, servers, repairs)

    def _targets_up(self, host: str) -> bool:
        return any(s.host != host and s.state == "up" and not s.forced_down and s.status == "enabled"
                   for s in self.nova.services())

    def _unconfirmed(self, req: RecoveryRequest) -> Progress:
        age = self.clock() - req.fenced_at
        recently = self.clock() - self._refenced_at.get(req.node, float("-inf")) < FENCING_GRACE
        if age > REFENCE_AFTER and not recently and not self.cluster.fencing_in_flight(req.node):
            self._refenced_at[req.node] = self.clock()
            LOG.warning("%s: no fencing recorded since the request (history lost in a cluster restart?): "
                        "fencing it again", req.node)
            if not self.cluster.wait_settled():
                LOG.info("%s: the cluster is still busy after %gs: fencing anyway", req.node, pacemaker.SETTLE_WAIT)
            try:
                self.cluster.request_fencing(req.node)  # the level records the request anew: fenced_at moves on
            except pacemaker.PacemakerError as e:
                LOG.warning("%s: fencing again failed: %s", req.node, e)
            req = self.cluster.request(req.node) or req
            age = self.clock() - req.fenced_at
        if age > FENCING_GRACE and req.hold is not Hold.FENCING_UNCONFIRMED:
            reason = f"no successful fencing of {req.node} recorded since {time.ctime(req.fenced_at)}"
            self._emit(events.HOST_FENCING_UNCONFIRMED, req.host or req.node,
                       {"host": req.host or "", "node": req.node, "reason": reason})
            req = self._save(req.moved_to(req.state, f"fencing not confirmed: {reason}", Hold.FENCING_UNCONFIRMED))
        return Progress(req, True, f"{req.node}: waiting for confirmed fencing ({age:.0f}s)")

    def _host(self, node: str) -> str:
        return hostmap.resolve(node, [s.host for s in self.nova.services()], self.cfg.host_map)

    def _repair(self, host: str, servers) -> list:
        decisions = repair.decide_all(servers)
        for decision in decisions:
            if decision.action == "skip":
                continue
            repair.apply(self.nova, decision)
            LOG.info("%s: %s (%s -> %s)", decision.name, decision.action, decision.task_state, decision.reason)
            self._emit(events.INSTANCE_REPAIRED, decision.server_id,
                       {"id": decision.server_id, "from_task_state": decision.task_state,
                        "from_vm_state": decision.vm_state, "action": decision.action, "host": host})
        return decisions

    def _storm(self, req: RecoveryRequest) -> dict | None:
        window = self.cfg.storm_window
        now = self.clock()
        failed = sorted(r.node for r in self.cluster.requests().values()
                        if r.open and now - r.fenced_at <= window)
        computes = [n for n in self.cluster.nodes() if n.type == "remote"]
        found = storm.decide(failed, len(computes), storm.Limits(
            self.cfg.storm_max_hosts, self.cfg.storm_max_fraction, self.cfg.storm_max_domains,
            self.cfg.storm_domains))
        if found is None:
            return None
        return {"hosts": list(found.hosts), "window_s": window, "limit": found.limit, "action": "evacuation stopped",
                **({"domains": list(found.domains)} if found.domains else {}), "reason": found.reason}

    def _repair_volumes(self, host: str, found: dict, servers, fenced_at: float) -> None:
        """Volumes the fenced host left attaching/detaching, set so that nova's evacuation can attach them anew.
        Never those of a server whose evacuation is under way (a resumed recovery): nova may be attaching them."""
        busy = {s.id for s in servers if (s.task_state or "") in planning.EVACUATING_TASKS}
        try:
            busy |= {m.server_id for m in self.nova.migrations(source_compute=host, migration_type="evacuation")
                     if m.status not in FAILED_MIGRATION and _ts(m.created_at) >= int(fenced_at) - 1}
        except Exception as e:                   # noqa: BLE001 - not knowing, nothing is changed
            LOG.warning("volumes not repaired: reading the evacuations of %s failed: %s", host, e)
            return
        for sv in found.values():
            if sv.server_id in busy:
                continue
            for volume in sv.volumes:
                decision = repair.decide_volume(sv.server_id, volume, sv.records)
                if decision is None:
                    continue
                payload = {"service": "cinder", "resource_type": "volume", "id": volume.id, "state": volume.status,
                           "action": decision.action if decision.action != "skip" else "none",
                           "reason": f"server {sv.server_id} on failed host {host}: {decision.reason}"}
                if decision.action != "skip":
                    try:
                        repair.apply_volume(self.cinder, decision)
                    except Exception as e:      # noqa: BLE001 - the evacuation says the rest
                        LOG.warning("volume %s: %s failed: %s", volume.id, decision.action, e)
                        payload.update(action="none", reason=f"{payload['reason']}; {decision.action} failed: {e}")
                        self._emit(events.RESOURCE_STALE_UNRECOVERABLE, volume.id, payload)
                        continue
                    LOG.info("volume %s of %s: %s (%s)", volume.id, sv.server_id, decision.action, decision.reason)
                    self._emit(events.RESOURCE_STALE_RECOVERED, volume.id, payload)
                else:
                    LOG.warning("volume %s of %s left %s: %s", volume.id, sv.server_id, volume.status,
                                decision.reason)
                    self._emit(events.RESOURCE_STALE_UNRECOVERABLE, volume.id, payload)

    def _evacuate(self, req: RecoveryRequest, host: str, servers, repairs) -> Progress:
        if not req.filter_mode:                  # once per request: a resumed recovery has its plan's filter saved
            self._emit(events.HOST_FAILED, host, self._failed_payload(req, host, servers, repairs))
        found = storage.gather(self.cinder, [s.id for s in servers], concurrency=self.cfg.concurrency)
        self._repair_volumes(host, found, servers, req.fenced_at)
        volumes = {sid: sv.volume_ids for sid, sv in found.items()}
        try:                                     # `crashup evacuate --to`: the operator's target, while it can take them
            the_plan = plan_for_host(self.nova, host, self.cfg, servers=servers, microversion=self.microversion,
                                     filter_mode=req.filter_mode or None, volumes=volumes,
                                     target_host=req.target or None)
        except planning.PlanError as e:
            if not req.target:
                raise
            LOG.warning("%s: target %s not usable (%s): the plan chooses", req.node, req.target, e)
            the_plan = plan_for_host(self.nova, host, self.cfg, servers=servers, microversion=self.microversion,
                                     filter_mode=req.filter_mode or None, volumes=volumes)
        if not req.filter_mode:
            req = self._save(req.moved_to(req.state, f"evacuating {len(the_plan.steps)} instances",
                                          filter_mode=the_plan.filter_mode))

        checks = concurrent.futures.ThreadPoolExecutor(max(1, self.cfg.concurrency), thread_name_prefix="volcheck")
        not_moved: list[str] = []
        checking: list[concurrent.futures.Future] = []

        def evacuated(outcome, step, check: bool):
            payload = {"id": outcome.server_id, "name": outcome.name, "source_host": host,
                       "target_host": outcome.target_host, "duration_s": outcome.duration_s,
                       "power_state": outcome.power_state if outcome.power_state is not None else "",
                       "storage": str(step.storage)}
            if check:
                try:
                    states = storage.check_moved(self.cinder, outcome.server_id, step.volumes, host,
                                                 outcome.target_host)
                except Exception as e:          # noqa: BLE001 - the event goes out, without what is not known
                    LOG.warning("%s: checking its volumes failed: %s: %s", outcome.name, type(e).__name__, e)
                    states = [storage.VolumeState(v, None, (), "") for v in step.volumes]
                payload["volumes"] = [v.to_dict() for v in states]
                bad = [v for v in states if v.moved is False]
                if bad:
                    not_moved.extend(v.id for v in bad)
                    LOG.warning("%s: volumes not attached on %s alone: %s", outcome.name, outcome.target_host,
                                ", ".join(f"{v.id} ({v.status}, on {'/'.join(v.hosts) or 'no host'})" for v in bad))
            self._emit(events.INSTANCE_EVACUATED, outcome.server_id, payload)

        def report(outcome):
            if outcome.result is Result.EVACUATED:
                step = the_plan.step(outcome.server_id)
                if self.cinder is not None and step.volumes:    # known, and some: beside the evacuations
                    checking.append(checks.submit(evacuated, outcome, step, True))
                else:
                    evacuated(outcome, step, False)
            elif outcome.result is Result.FAILED:
                self._emit(events.INSTANCE_EVACUATION_FAILED, outcome.server_id,
                           {"id": outcome.server_id, "name": outcome.name, "source_host": host,
                            "reason": outcome.reason, "attempts": outcome.attempts})

        evacuator = Evacuator(self.nova, source_host=host, fenced_at=req.fenced_at, microversion=self.microversion,
                              concurrency=self.cfg.concurrency, instance_timeout=self.cfg.instance_timeout,
                              on_outcome=report, may_act=self.cluster.quorate)
        try:
            outcomes = evacuator.run(the_plan.waves)
        finally:
            checks.shutdown(wait=True)           # each check ends within storage.SETTLE plus one cinder call
        for future in checking:
            future.result()                      # an event that could not be written is raised, as in this thread
        failed = [o for o in outcomes if o.result is Result.FAILED]
        gone = [o for o in outcomes if o.result is Result.DELETED]
        # counted from nova's ledger, not this run's outcomes: a recovery resumed after a failover reports all of it
        moved = self._evacuated_since(host, req.fenced_at) | {o.server_id for o in outcomes
                                                               if o.result is Result.EVACUATED}
        left = [s for s in the_plan.skipped if s.code == "local_disk"]
        self._emit(events.HOST_RECOVERED, host,
                   {"host": host, "node": req.node, "mode": req.mode, "evacuated": len(moved),
                    "failed": len(failed), "skipped": len(the_plan.skipped) + len(gone),
                    "duration_s": round(max(0.0, self.clock() - req.fenced_at), 2),   # from the fencing, resumed or not
                    "volumes_not_moved": len(not_moved),
                    "left_on_host": [{"id": s.server_id, "name": s.name, "reason": s.reason} for s in left]})
        note = f"{len(moved)} evacuated, {len(failed)} failed, {len(the_plan.skipped)} skipped" + \
            (f", {len(gone)} deleted meanwhile" if gone else "") + \
            (f", {len(left)} left on the host (local disk)" if left else "") + \
            (f", {len(not_moved)} volumes not moved" if not_moved else "")
        req = self._save(req.moved_to("done", note))
        return Progress(req, False, f"{req.node}: recovery done: {note}")

    # --- helpers -----------------------------------------------------------------------------------------------
    def _evacuated_since(self, host: str, fenced_at: float) -> set[str]:
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
        try:
            event = events.make_event(kind, subject, payload)
        except events.EventError as e:
            LOG.error("event %s not emitted: %s", kind, e)
            return
        with self._emit_lock:
            self.emitter.emit(event)

    def _save(self, req: RecoveryRequest) -> RecoveryRequest:
        self.cluster.write_request(req)
        LOG.info("%s: request %s (%s)", req.node, req.state, req.note)
        return req


def plan_for_host(nova, host: str, cfg, *, servers=None, microversion: str | None = None,
                  target_host: str | None = None, skip_error: bool = False, filter_mode: str | None = None,
                  volumes=None, cinder=None):
    """Plan from what nova says now (the host's servers, unless given; aggregates; compute services) and, when
    `volumes` (server id -> volume ids) is not given, what `cinder` says of their volumes (bounded; None: not read)."""
    servers = nova.servers_on_host(host) if servers is None else servers
    if volumes is None and cinder is not None:
        volumes = {sid: sv.volume_ids for sid, sv in storage.gather(cinder, [s.id for s in servers],
                                                                    concurrency=cfg.concurrency).items()}
    return planning.build_plan(host, servers, aggregates=nova.aggregates(), services=nova.services(),
                               policy=planning.Policy.from_config(cfg, skip_error=skip_error,
                                                                  target_host=target_host),
                               microversion=microversion or evacuate_microversion(cfg.keep_power_state),
                               filter_mode=filter_mode, volumes=volumes)


def release(node: str, cluster: pacemaker.Cluster | None = None) -> RecoveryRequest:
    """Mark a node's recovery finished by the operator (notify mode), so the host may rejoin."""
    cluster = cluster or pacemaker.Cluster()
    req = cluster.request(node)
    if req is None:
        raise pacemaker.PacemakerError(f"no recovery request for {node}")
    if not req.open:
        return req
    released = req.moved_to("released", "released by the operator")
    cluster.write_request(released)
    return released
