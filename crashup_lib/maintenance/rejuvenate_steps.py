"""Rejuvenation, the steps: `crashup rejuvenate [NODE]` and the recovery daemon's periodic roll
(`rejuvenation_interval`), around rejuvenate.py's decisions.

How one node's clone instance is restarted: `crm_resource --restart --resource CLONE --node NODE`. In Pacemaker
2.1.5 that bans the clone from the node (a cli-ban constraint), waits for the stop, clears the ban, and returns once
the start is scheduled: a graceful stop and start by the agent (ocf:crashup:nova-compute's stop, then its start,
which waits for a fresh heartbeat and never starts while the node's recovery is open), nothing else moved, no
fail count, no fencing. What it does not do (measured in the lab: it returned in 4 s with the start still running)
is wait for the start to finish: so the roll then waits for the DC to be idle, and for nova's own word: the node's
nova-compute up with a heartbeat newer than the restart. The alternatives are worse: `--force-stop`/`--force-start`
bypass the cluster; `crm_resource --fail` leaves a fail count and counts toward migration-threshold; a
target-role=Stopped stops every instance. The one risk of a ban, a roller killed between the ban and its clearing
(the instance then stays stopped), is what MARK_ATTRIBUTE answers: whoever resumes clears the node's ban first, and
the command interrupted (Ctrl-C, SIGTERM) clears its own before it exits.

The periodic roll runs in a thread of its own beside the recovery daemon's watch (a roll takes minutes; the watch
and the recovery workers never wait for it), one node per pass, everything re-read from the CIB and nova each pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time

from crashup_lib import hostmap, log, nova, pacemaker
from crashup_lib.maintenance.common import Context, Halted, Refused, Target, find_host, halt_unless, \
    refuse_open_recovery
from crashup_lib.maintenance.rejuvenate import COMMAND, DAEMON, DONE_ATTRIBUTE, MARK_ATTRIBUTE, VERB, NodeState, \
    Step, busy, came_back, due, mark, mark_owner, number, open_recoveries, ordered, render, stale_mark, unhealthy

LOG = log.get("rejuvenate")
POLL = 1.0                  # seconds between two looks at nova or the requests while waiting
TASK_POLL = 2.0             # seconds between two looks at busy servers
PASS_PAUSE = 15.0           # seconds between two passes of the periodic roll with nothing to do
RETRY_LATER = 3600.0        # a skipped node is not tried again, and after a failure no node is, before this


# --- one roll ---------------------------------------------------------------------------------------------------------

class Roll:
    """Rejuvenation of compute nodes one at a time, for the command and the periodic thread alike."""

    def __init__(self, ctx: Context, wall=time.time, stopped=lambda: False, owner: str = COMMAND):
        self.ctx = ctx
        self.owner = owner
        self.wall = wall
        self.stopped = stopped
        self.resources = tuple(ctx.cfg.get("rejuvenation_resources") or ("nova-compute-clone",))
        self.task_wait = float(ctx.cfg.get("rejuvenation_task_wait", 300))
        self.paused = False
        self.own: dict[str, float | None] = {}      # node -> the mark this roller wrote (its own, not another's)

    @property
    def mark_limit(self) -> float:
        """How long a restart of ours can take at most: a mark older than this was left by a roller now gone."""
        return self.task_wait + 3 * self.ctx.timeout + 60

    def targets(self) -> list[Target]:
        """Every nova-compute host that has a Pacemaker node (the others are not restarted through Pacemaker)."""
        nodes = [n.name for n in self.ctx.cluster.nodes()]
        found = []
        for svc in self.ctx.nova.services():
            try:
                node = hostmap.node_for_host(svc.host, nodes, self.ctx.cfg.get("host_map") or {})
            except hostmap.HostMapError:
                continue
            found.append(Target(svc.host, node, svc))
        return found

    def states(self, targets: list[Target]) -> list[NodeState]:
        last = self.ctx.cluster.node_attribute(DONE_ATTRIBUTE)
        marks = self.ctx.cluster.node_attribute(MARK_ATTRIBUTE)
        return [NodeState(t.node, t.host, number(last.get(t.node)), number(marks.get(t.node)),
                          mark_owner(marks.get(t.node))) for t in targets]

    def foreign_mark(self, states: list[NodeState]) -> NodeState | None:
        """A node whose restart another roller has under way (a fresh mark, not this one's): two nodes must never
        be down at once. A stale one was left by a roller now gone: resumed. The daemon's roll takes a daemon's mark as its
        own at once (Pacemaker runs one daemon: that mark's roller is the one before it, gone in a failover)."""
        now = self.wall()

        def mine(s: NodeState) -> bool:
            return s.marked == self.own.get(s.node) or (self.owner == DAEMON and s.owner == DAEMON)
        return next((s for s in states if s.marked is not None and not mine(s)
                     and not stale_mark(s.marked, now, self.mark_limit)), None)

    def rival(self) -> NodeState | None:
        """Another roller's fresh mark on any node, read from the CIB now (not the states a pass began with)."""
        marks = self.ctx.cluster.node_attribute(MARK_ATTRIBUTE)
        return self.foreign_mark([NodeState(n, n, None, number(v), mark_owner(v)) for n, v in sorted(marks.items())])

    def wait_rival(self) -> None:
        """Until no other roller's fresh mark is left (bounded: a mark older than mark_limit is not fresh)."""
        end = self.ctx.clock() + self.mark_limit
        while self.rival() is not None and not self.stopped() and self.ctx.clock() < end:
            self.ctx.sleep(POLL)

    def unmark(self, node: str) -> None:
        self.ctx.cluster.set_node_attribute(node, MARK_ATTRIBUTE, None)
        self.own.pop(node, None)

    def abandon(self) -> None:
        """Interrupted (Ctrl-C, SIGTERM): the bans and marks of this roller's restarts in flight cleared, best effort
        (each call bounded), so the node is not left banned nor the next roll refused."""
        for node, own in list(self.own.items()):
            try:
                for resource in self.resources:
                    self.ctx.cluster.clear_ban(resource, node)
                if number(self.ctx.cluster.node_attribute(MARK_ATTRIBUTE).get(node)) == own:
                    self.unmark(node)
                self.ctx.out(f"{node}: interrupted: its ban and mark cleared")
            except pacemaker.PacemakerError as e:
                self.ctx.out(f"{node}: interrupted, not cleaned up ({e}): {cleanup_hint(node, self.resources)}")

    def event(self, target: Target, step: Step, servers: int = 0, detail: str = "") -> None:
        self.ctx.host_event(target, VERB, str(step), servers, detail)
        self.ctx.out(f"{target.host}: {step}" + (f": {detail}" if detail else ""))

    def wait_no_recovery(self, target: Target, limit: float | None) -> bool:
        """Until no recovery request is open (a PAUSED event when one is, RESUMED when they are closed, then the DC
        left to finish the rejoin); False when still paused after `limit` seconds (None: no bound) or stopped."""
        end = None if limit is None else self.ctx.clock() + limit
        while True:
            open_ = open_recoveries(self.ctx.cluster.requests())
            if not open_:
                break
            if not self.paused:
                self.paused = True
                self.event(target, Step.PAUSED, detail=f"recovery open on {', '.join(open_)}")
            if self.stopped() or (end is not None and self.ctx.clock() >= end):
                return False
            self.ctx.sleep(POLL)
        if self.paused:
            self.paused = False
            self.event(target, Step.RESUMED, detail="no recovery open")
            self.ctx.cluster.wait_settled(self.ctx.timeout)
        return True

    def node(self, target: Target, state: NodeState) -> Step | None:
        """Rejuvenate one node: RESTARTED, SKIPPED or FAILED (an event each); None when a recovery opened meanwhile
        or another roller began a node (nothing was done: pause or wait, then try again)."""
        ctx, node = self.ctx, target.node
        if state.marked is not None:            # a restart of ours interrupted: its ban may be left
            for resource in self.resources:
                ctx.cluster.clear_ban(resource, node)
            self.unmark(node)                   # undone: the node is as any other now
            ctx.cluster.wait_settled(ctx.timeout)
        missing = self.not_running(node)
        if missing:
            return self._skip(target, 0, f"{', '.join(missing)} not running on {node}")
        why = unhealthy(_service(ctx, target.host))
        if why:
            return self._skip(target, 0, why)
        end, servers, waited = ctx.clock() + self.task_wait, [], False
        while True:
            servers = ctx.nova.servers_on_host(target.host)
            tasks = busy(servers)
            if not tasks:
                break
            shown = ", ".join(f"{s.name} ({s.task_state})" for s in tasks[:5])
            if ctx.clock() >= end or self.stopped():
                return self._skip(target, len(servers), f"servers still in a task after {self.task_wait:g}s: "
                                                        f"{shown}")
            if not waited:
                waited = True
                self.event(target, Step.WAITING_TASKS, len(servers), shown)
            ctx.sleep(TASK_POLL)
        ctx.require_quorum(f"restarting services on {node}")
        if open_recoveries(ctx.cluster.requests()):
            return None
        # Another roller may have begun a node during the task wait: never two down at once. A check before the
        # write, and one after it for a rival that wrote meanwhile (the CIB orders the writes: of two marks both
        # see, the later one's roller withdraws).
        if self.rival() is not None:
            self.wait_rival()
            return None
        began = self.wall()
        self.own[node] = number(mark(began, self.owner))
        ctx.cluster.set_node_attribute(node, MARK_ATTRIBUTE, mark(began, self.owner))
        other = self.rival()
        if other is not None and (other.marked, other.owner) < (self.own[node], self.owner):
            self.unmark(node)
            self.wait_rival()
            return None
        self.event(target, Step.RESTARTING, len(servers), ", ".join(self.resources))
        try:
            for resource in self.resources:
                ctx.cluster.restart(resource, node, ctx.timeout)
        except pacemaker.PacemakerError as e:
            for resource in self.resources:        # never leave the node banned
                try:
                    ctx.cluster.clear_ban(resource, node)
                except pacemaker.PacemakerError as again:
                    LOG.warning("%s: ban of %s not cleared: %s", node, resource, again)
            self.unmark(node)
            return self._fail(target, len(servers), f"restart failed: {e}")
        since = self.wall()             # the stop is done: a heartbeat the old process sent while stopping is older
        ctx.cluster.wait_settled(ctx.timeout)
        end = ctx.clock() + ctx.timeout
        missing = []
        while True:
            if came_back(_service(ctx, target.host), since):
                missing = self.not_running(node)            # nova's word, and Pacemaker's: the start succeeded
                if not missing:
                    break
            if self.stopped():                  # the daemon stops: its mark left, its successor takes it over
                return None
            if ctx.clock() >= end:
                self.unmark(node)
                why = (f"{', '.join(missing)} not running on {node} after the restart" if missing else
                       "nova-compute not reported up with a heartbeat newer than the restart")
                return self._fail(target, len(servers), f"{why} within {ctx.timeout:g}s")
            ctx.sleep(POLL)
        done = self.wall()
        ctx.cluster.set_node_attribute(node, DONE_ATTRIBUTE, f"{done:.3f}")
        self.unmark(node)
        self.event(target, Step.RESTARTED, len(servers), f"nova-compute up again {done - began:.1f}s after the "
                                                         "restart began")
        return Step.RESTARTED

    def not_running(self, node: str) -> list[str]:
        return [r for r in self.resources if node not in self.ctx.cluster.running_on(r)]

    def _skip(self, target: Target, servers: int, why: str) -> Step:
        self.event(target, Step.SKIPPED, servers, why)
        return Step.SKIPPED

    def _fail(self, target: Target, servers: int, why: str) -> Step:
        self.event(target, Step.FAILED, servers, why)
        return Step.FAILED


def cleanup_hint(node: str, resources) -> str:
    """What an operator runs by hand after a roller was killed mid-restart: its ban, then its mark."""
    bans = "; ".join(f"crm_resource --clear --resource {r} --node {node}" for r in resources)
    return f"{bans}; crm_attribute --type nodes --node {node} --name {MARK_ATTRIBUTE} --delete"


@contextlib.contextmanager
def _terminated_as_exit():
    """SIGTERM raises SystemExit (143) while the command rolls, so its cleanup runs (Python's default just dies)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)
    before = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _service(ctx: Context, host: str):
    found = [s for s in ctx.nova.services(host) if s.host == host]
    return found[0] if len(found) == 1 else None


# --- crashup rejuvenate [NODE] ----------------------------------------------------------------------------------------

def rejuvenate(ctx: Context, name: str | None = None, dry_run: bool = False, wall=time.time) -> int:
    """Rejuvenate NODE (or every compute node, one at a time). Refused (exit 2, nothing changed): an unknown node, a
    node with an open recovery, no quorum, another rejuvenation under way. Exit 1 when a node was skipped or failed
    (a failure stops the roll: a node that did not come back is not followed by another going down)."""
    roll = Roll(ctx, wall=wall)
    if name is not None:
        target = find_host(ctx, name)
        if not target.node:
            raise Refused(f"{target.host}: no Pacemaker node maps to it: a rejuvenation restarts services through "
                          "Pacemaker only")
        refuse_open_recovery(ctx, target)
        targets = [target]
    else:
        targets = roll.targets()
    ctx.require_quorum("rejuvenating")
    states = ordered(roll.states(targets))
    other = roll.foreign_mark(roll.states(roll.targets()) if name is not None else states)    # on any node
    if other is not None:
        began = time.strftime("%H:%M:%S", time.localtime(other.marked))
        raise Refused(f"a rejuvenation of {other.node} is under way (since {began}): wait for it to finish; if its "
                      f"roller was killed, clean up by hand: {cleanup_hint(other.node, roll.resources)}")
    by_node = {t.node: t for t in targets}
    open_ = open_recoveries(ctx.cluster.requests())
    notes = {s.node: ("restart in flight: resumed" if s.marked is not None else "") for s in states}
    ctx.out(render(states, roll.resources, roll.wall(), notes) +
            (f"\n  paused first: recovery open on {', '.join(open_)}" if open_ else ""))
    if dry_run:
        return 0
    results: dict[str, Step] = {}
    try:
        with _terminated_as_exit():
            _roll_all(ctx, roll, states, by_node, results)
    except (KeyboardInterrupt, SystemExit):        # never leave a node banned nor a mark refusing the next run
        roll.abandon()
        raise
    summary = _done(results)
    if targets:
        ctx.host_event(targets[0], VERB, str(Step.FINISHED), 0, summary)
    ctx.out(f"rejuvenation finished: {summary}")
    return 0 if results and all(s is Step.RESTARTED for s in results.values()) and len(results) == len(states) else 1


def _roll_all(ctx: Context, roll: Roll, states: list[NodeState], by_node: dict, results: dict[str, Step]) -> None:
    for state in states:
        target = by_node[state.node]
        while True:
            halt_unless(lambda: ctx.require_quorum("rejuvenating"), _done(results))
            if not roll.wait_no_recovery(target, ctx.timeout):
                raise Halted(f"still paused after {ctx.timeout:g}s: a recovery is open; stopped after: "
                             f"{_done(results)}; run the command again to resume")
            try:
                step = roll.node(target, state)
            except Refused as e:                     # quorum lost between two checks: things may have changed
                raise Halted(f"{e}; stopped after: {_done(results)}") from None
            if step is not None:
                break
            state = dataclasses.replace(state, marked=None, owner="")   # its leftover was cleared the first time
        results[state.node] = step
        if step is Step.FAILED:
            break


def _done(results: dict[str, Step]) -> str:
    if not results:
        return "no node restarted"
    return ", ".join(f"{node} {step}" for node, step in results.items())


# --- the periodic roll (rejuvenation_interval), a thread beside the recovery daemon's watch ---------------------------

class Periodic:
    """One pass every PASS_PAUSE seconds: the next node whose last rejuvenation is `rejuvenation_interval` old is
    rejuvenated, unless a recovery is open (paused), quorum is lost, or another roller's restart is under way. What
    is done lives in the CIB (DONE_ATTRIBUTE, MARK_ATTRIBUTE), so the daemon that takes over after a failover goes
    on where this one stopped."""

    def __init__(self, cfg, cluster: pacemaker.Cluster, emitter, stop_event: threading.Event, nova_factory=None,
                 wall=time.time):
        self.cfg = cfg
        self.interval = float(cfg.get("rejuvenation_interval", 0))
        self.cluster = cluster
        self.emitter = emitter
        self.stop_event = stop_event
        self.nova_factory = nova_factory or (lambda: nova.Nova.from_config(cfg))
        self.wall = wall
        self.later: dict[str, float] = {}       # node -> not before (skipped: tried again later)
        self.halted_until = 0.0                 # a node failed to come back: no node goes down before this
        self._roll: Roll | None = None
        self.thread = threading.Thread(target=self.run, name="rejuvenation", daemon=True)

    def roll(self) -> Roll:
        if self._roll is None:
            ctx = Context(self.cfg, self.nova_factory(), self.cluster, self.emitter,
                          out=lambda line: LOG.info("%s", line), sleep=self.stop_event.wait)
            self._roll = Roll(ctx, wall=self.wall, stopped=self.stop_event.is_set, owner=DAEMON)
        return self._roll

    def run(self) -> None:
        LOG.info("rejuvenation: each compute node every %gs, one at a time", self.interval)
        while not self.stop_event.is_set():
            try:
                again = self.step()
            except Exception as e:                 # noqa: BLE001 - nova or the CIB unreachable: the next pass
                LOG.warning("rejuvenation pass failed: %s: %s", type(e).__name__, e)
                again = False
            self.stop_event.wait(POLL if again else PASS_PAUSE)

    def step(self) -> bool:
        """One pass; True when a node was handled (the next one may follow at once)."""
        if self.wall() < self.halted_until or not self.cluster.quorate():
            return False
        roll = self.roll()
        targets = {t.node: t for t in roll.targets()}
        states = roll.states(list(targets.values()))
        now = self.wall()
        if roll.foreign_mark(states) is not None:
            return False
        todo = [s for s in due(states, now, self.interval) if self.later.get(s.node, 0) <= now]
        if not todo:
            return False
        state = todo[0]
        if not roll.wait_no_recovery(targets[state.node], 0):
            return False                            # paused: looked at again next pass
        step = roll.node(targets[state.node], state)
        if step is Step.SKIPPED:
            self.later[state.node] = self.wall() + RETRY_LATER
        elif step is Step.FAILED:                   # as the command stops: no other node goes down after it
            self.halted_until = self.wall() + RETRY_LATER
        return step is not None


def start_periodic(cfg, cluster, emitter, stop_event: threading.Event, nova_factory=None) -> Periodic | None:
    """The recovery daemon's hook: the periodic roll's thread, started; None when rejuvenation_interval is 0."""
    if not float(cfg.get("rejuvenation_interval", 0) or 0):
        return None
    periodic = Periodic(cfg, cluster, emitter, stop_event, nova_factory)
    periodic.thread.start()
    return periodic


__all__ = ["Roll", "rejuvenate", "Periodic", "start_periodic"]
