"""The guest monitor: one per compute node (Pacemaker's clone crashup-guests, agents/crashup daemon=guests).

libvirt's events (crashup_lib.libvirt.Watch: its event loop, not polling) and, on every (re)connect, the state of
every domain (a failure while nobody listened is not lost) become Failures (kinds.py); each is decided once
(decide.py) from the server's policy (policy.py), nova's view of the server and of this node, and the reboots already
made; then crashup.instance.guest_failed is emitted and nova asked to act (HARD reboot, or stop a crash-looping guest
with crashup.instance.guest_left_down). nova stays the source of truth: crashup never starts or destroys a domain
itself. The libvirt threads only queue what they saw; the main thread decides and calls nova (each call bounded by
api_timeout) and beats the heartbeat the agent's monitor reads. What was handled, and the reboots, are kept in
guest_state_file (state.py), so a restarted monitor does not act twice on one failure.
"""
from __future__ import annotations

import dataclasses
import pathlib
import queue
import re
import signal
import socket
import threading
import time

from crashup_lib import events, log, nova
from crashup_lib import libvirt as lv
from crashup_lib.config import ConfigError
from crashup_lib.guests import kinds, policy, state
from crashup_lib.guests.decide import Action, Node, decide
from crashup_lib.presence import GUESTS, Presence
from crashup_lib.rejoin import DRAIN_STOPPED

LOG = log.get("guests")
BEAT = 1.0                   # seconds: the longest the main loop waits between heartbeats when idle
RETRY_PAUSE = 5.0            # seconds between looks at a failure nova could not be asked about
RETRIES = 24                 # ... that many times (two minutes), then it waits for the next reconcile
FOLLOW_PAUSE = 1.0           # seconds between looks at a server nova was busy with when crashup asked to reboot it
FOLLOW_FOR = 120.0           # ... for that long at most
EMITTER_CLOSE = 5.0
URI = re.compile(r"[a-z][a-z0-9+]*://[^\s]*")


@dataclasses.dataclass(frozen=True)
class Seen:
    """A failure to decide on: which domain, what, how it was seen (event or reconcile), when it reached us."""
    uuid: str
    name: str
    failure: kinds.Failure
    domain_id: int
    seen: str
    at: float
    tries: int = 0


def own_host(cfg, node: str | None = None) -> str:
    """This node's nova host: guest_host, else host_map's entry for the Pacemaker node, else the node's name, else
    the hostname as nova's own default (socket.gethostname())."""
    return cfg.guest_host or (cfg.host_map or {}).get(node or "", "") or node or socket.gethostname()


def libvirt_uri(cfg, host: str) -> str:
    """guest_libvirt_uri with {host} filled in; ConfigError (one line) when it is not a libvirt URI."""
    uri = cfg.guest_libvirt_uri.replace("{host}", host)
    if not URI.fullmatch(uri):
        raise ConfigError(f"config: guest_libvirt_uri = {cfg.guest_libvirt_uri!r} is not a libvirt URI "
                          "(driver[+transport]://[host]/path, e.g. qemu:///system)")
    return uri


class Monitor:
    def __init__(self, cfg, host: str, *, nova_factory=None, emitter=None, opener=None, clock=time.time,
                 state_path: str | None = None):
        self.cfg, self.host, self.clock = cfg, host, clock
        self.uri = libvirt_uri(cfg, host)
        self.state_path = cfg.guest_state_file if state_path is None else state_path
        self.state, problem = state.load(self.state_path)
        if problem:
            LOG.warning("%s", problem)
        self.queue: queue.Queue = queue.Queue()
        self.later: list[tuple[float, Seen]] = []
        self.following: list[tuple[float, float, Seen, str]] = []    # (next look, give up at, failure, name)
        self.stop_event = threading.Event()
        self.watch = lv.Watch(self.uri, self._on_event, self._on_connected, opener=opener,
                              on_problem=lambda line: LOG.warning("%s", line))
        self._nova_factory = nova_factory or (lambda: nova.Nova.from_config(cfg))
        self._nova = None
        self._nova_lock = threading.Lock()
        self.emitter = emitter
        self.beat = lambda: None    # run()'s heartbeat, also beaten between two failures (each a few nova calls)

    # -- the libvirt threads: queue only ----------------------------------------------------------------------------
    def _on_event(self, event: lv.GuestEvent) -> None:
        self.queue.put(("event", event))

    def _on_connected(self, watch: lv.Watch) -> None:
        self.queue.put(("reconcile", watch.domains(), self.clock()))

    # -- the main thread ---------------------------------------------------------------------------------------------
    def run(self, beat=lambda: None) -> None:
        LOG.info("guest monitor started on %s (%s, default policy %s, at most %d reboots in %gs)", self.host,
                 self.uri, self.cfg.guest_failure_policy, self.cfg.guest_max_reboots, self.cfg.guest_reboot_window)
        self.beat = beat
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        self.watch.start()
        try:
            while not self.stop_event.is_set():
                beat()
                self.step(BEAT)
        finally:
            self.watch.stop()
            LOG.info("guest monitor stopped")

    def step(self, timeout: float) -> bool:
        """Handle one queued item (waiting up to `timeout`) and any retry that is due; whether an item came."""
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            item = None
        try:
            if item is not None and item[0] == "event":
                self._event(item[1])
            elif item is not None:
                self._reconcile(item[1], item[2])
            self._retry_due()
        except Exception as e:                      # noqa: BLE001 - one guest's surprise must not stop the others
            LOG.error("handling %s failed: %s: %s", item[0] if item else "retries", type(e).__name__, e)
            LOG.debug("details", exc_info=True)
        return item is not None

    def stop(self, *_):
        self.stop_event.set()

    def _event(self, event: lv.GuestEvent) -> None:
        if kinds.is_fresh_start(event):
            self._ran_again(event.uuid)
            return
        failure = kinds.from_event(event)
        if failure is not None:
            self.examine(Seen(event.uuid, event.name, failure, event.domain_id, "event", event.at))

    def _reconcile(self, domains: list[lv.DomainState], at: float) -> None:
        LOG.info("libvirt %s: %d domains; reconciling their states", self.uri, len(domains))
        for d in domains:
            self.beat()
            done = self.state.handled.get(d.uuid)
            if kinds.is_running(d.state):
                if done is not None and done.domain_id != d.domain_id:      # a new qemu since: it ran again
                    self._ran_again(d.uuid)
                continue
            failure = kinds.from_state(d.state, d.reason)
            if failure is None:
                continue
            seen = Seen(d.uuid, d.name, failure, d.domain_id, "reconcile", at)
            if done is not None and done.pending:      # a reboot nova never took (a restart since): follow it up
                self._follow(seen, d.name, time.monotonic() + FOLLOW_FOR)
            else:
                self.examine(seen)
        self.state.prune(self.clock(), self.cfg.guest_reboot_window, {d.uuid for d in domains})
        self._save()

    def _ran_again(self, uuid: str) -> None:
        """The guest runs again: its last failure is over; started by someone after crashup left it down, its
        crash-loop counter starts afresh."""
        changed = self.state.handled.pop(uuid, None) is not None
        self.following = [f for f in self.following if f[2].uuid != uuid]     # nothing left to follow up
        if uuid in self.state.left_down:
            self.state.left_down.discard(uuid)
            self.state.reboots.pop(uuid, None)
            changed = True
        if changed:
            self._save()

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = [seen for when, seen in self.later if when <= now]
        self.later = [(when, seen) for when, seen in self.later if when > now]
        for seen in due:
            self.beat()
            self.examine(seen)
        follow = [f for f in self.following if f[0] <= now]
        self.following = [f for f in self.following if f[0] > now]
        for _, give_up, seen, name in follow:
            self.beat()
            self._follow(seen, name, give_up)

    # -- one failure ---------------------------------------------------------------------------------------------
    def examine(self, seen: Seen) -> Action | None:
        """Decide on one failure once, record it, emit, act. None when it was already handled or must wait."""
        if seen.uuid in self.state.handled:
            LOG.debug("%s: %s already handled", seen.uuid, seen.failure.detail)
            return None
        try:
            client = self.nova()
            try:
                server = client.server(seen.uuid)
            except nova.NovaNotFound:
                server = None
            forced_down = self._forced_down(client) if server is not None else False
        except Exception as e:                      # noqa: BLE001 - nova or its configuration: ask again later
            self._later(seen, f"{type(e).__name__}: {e}")
            return None
        chosen = policy.choose(server, self.cfg.guest_failure_policy) if server is not None else \
            policy.Chosen(policy.Policy(self.cfg.guest_failure_policy), "default")
        for problem in chosen.problems:
            LOG.warning("%s: %s", seen.uuid, problem)
        now = self.clock()
        window, limit = self.cfg.guest_reboot_window, self.cfg.guest_max_reboots
        recent = self.state.recent_reboots(seen.uuid, now, window)
        decision = decide(seen.failure, chosen.policy, server, Node(self.host, forced_down), recent, limit)
        # recorded before acting: a monitor killed in between does not act twice (nova's own state tells the rest)
        if not seen.failure.running_on:
            self.state.handled[seen.uuid] = state.Handled(seen.failure.kind.value, seen.domain_id, now,
                                                          pending=decision.action is Action.REBOOT)
        if decision.action is Action.REBOOT:
            self.state.reboots.setdefault(seen.uuid, []).append(now)
            recent += 1
        if decision.action is Action.LEAVE_DOWN:
            self.state.left_down.add(seen.uuid)
        self._save()
        name = server.name if server is not None else seen.name
        if decision.action is Action.IGNORE:
            LOG.info("%s (%s): %s, seen by %s: left alone: %s", seen.uuid, name, seen.failure.detail, seen.seen,
                     decision.reason)
            return decision.action
        LOG.warning("%s (%s): %s, seen by %s: %s (%s, policy %s from %s)", seen.uuid, name, seen.failure.detail,
                    seen.seen, decision.action.value, decision.reason, chosen.policy.value, chosen.source)
        self._publish(events.INSTANCE_GUEST_FAILED, seen.uuid, {
            "id": seen.uuid, "name": name, "host": self.host, "kind": seen.failure.kind.value,
            "detail": seen.failure.detail, "policy": chosen.policy.value, "policy_source": chosen.source,
            "action": decision.action.value, "attempt": recent, "seen": seen.seen,
            "reported_at": events.rfc3339(seen.at)})
        self._act(seen, name, decision.action, recent)
        return decision.action

    def _forced_down(self, client) -> bool:
        """Whether this host's nova-compute is forced down (no such service: not, and decide() then finds the
        server's host is not this one)."""
        try:
            return client.service(self.host).forced_down
        except nova.NovaNotFound:
            return False

    def _act(self, seen: Seen, name: str, action: Action, reboots: int) -> None:
        client = self.nova()
        if action is Action.REBOOT:
            self._reboot(seen, name, time.monotonic() + FOLLOW_FOR)
        elif action is Action.LEAVE_DOWN:
            detail = seen.failure.detail
            try:
                client.stop(seen.uuid)
            except nova.NovaError as e:
                LOG.error("%s (%s): stopping the crash-looping guest failed: %s", seen.uuid, name, e)
                detail = f"{detail}; nova stop failed: {e}"
            self._publish(events.INSTANCE_GUEST_LEFT_DOWN, seen.uuid, {
                "id": seen.uuid, "name": name, "host": self.host, "kind": seen.failure.kind.value,
                "detail": log.one_line(detail, 500), "reboots": reboots,
                "window_s": self.cfg.guest_reboot_window})

    def _reboot(self, seen: Seen, name: str, give_up: float) -> None:
        """A HARD reboot; when nova is busy with the server (409: its own power-state sync may be stopping a guest
        that died, as nova's libvirt driver reports a stop 15 s late, a fake or older driver at once), follow it
        until the task ends (_follow)."""
        try:
            self.nova().reboot(seen.uuid, hard=True)
        except nova.NovaConflict as e:
            LOG.info("%s (%s): nova is busy with it (%s): the reboot waits for its task", seen.uuid, name, e)
            self._follow_later(seen, name, give_up, str(e))
        except nova.NovaNotFound:
            LOG.info("%s (%s): deleted meanwhile", seen.uuid, name)
            self._taken(seen)
        except nova.NovaBadRequest as e:             # a refusal for good: asking again gets the same answer
            LOG.error("%s (%s): the HARD reboot failed: %s", seen.uuid, name, e)
            self._taken(seen)
        except nova.NovaError as e:                  # down, or an answer that may hide an accepted reboot: look
            LOG.warning("%s (%s): the HARD reboot was not taken (%s): looking again", seen.uuid, name, e)
            self._follow_later(seen, name, give_up, str(e))
        else:
            self._taken(seen)

    def _pending(self, uuid: str) -> bool:
        done = self.state.handled.get(uuid)
        return done is not None and done.pending

    def _taken(self, seen: Seen) -> None:
        """nova took the action (or there is nothing left to act on): a restart no longer follows it up."""
        done = self.state.handled.get(seen.uuid)
        if done is not None and done.pending:
            done.pending = False
            self._save()

    def _follow(self, seen: Seen, name: str, give_up: float) -> None:
        """The reboot of a failed guest that nova was busy with: once nova's task ended, a server nova stopped
        (after the failure: its power-state sync) is started, an active one not running is rebooted, a running
        one is left as it is."""
        try:
            client = self.nova()
            server = client.server(seen.uuid)
            if server.task_state:
                self._follow_later(seen, name, give_up, f"task {server.task_state}")
                return
            # what decide() asked before the first try holds still: on this host, the host not being recovered,
            # not stopped on purpose by crashup's drain
            gone = server.host != self.host and f"nova places it on {server.host or 'no host'}" or \
                self._forced_down(client) and f"nova-compute on {self.host} forced down" or \
                server.metadata.get(DRAIN_STOPPED) and "stopped by crashup drain"
            if gone:
                LOG.info("%s (%s): not rebooted: %s", seen.uuid, name, gone)
                self._taken(seen)
            elif server.vm_state == "stopped":
                LOG.warning("%s (%s): nova stopped it after its failure: starting it (policy reboot)", seen.uuid,
                            name)
                client.start(seen.uuid)
                self._taken(seen)
            elif server.vm_state == "active" and (server.power_state != 1 or self._pending(seen.uuid)):
                self._reboot(seen, name, give_up)      # pending: no fresh start seen since (nova's view may lag)
            else:
                LOG.info("%s (%s): left as nova has it now (%s, power state %s)", seen.uuid, name, server.vm_state,
                         server.power_state)
                self._taken(seen)
        except nova.NovaNotFound:
            LOG.info("%s (%s): deleted meanwhile", seen.uuid, name)
            self._taken(seen)
        except nova.NovaConflict as e:
            self._follow_later(seen, name, give_up, str(e))
        except Exception as e:                      # noqa: BLE001 - nova unreachable: look again
            self._follow_later(seen, name, give_up, f"{type(e).__name__}: {e}")

    def _follow_later(self, seen: Seen, name: str, give_up: float, why: str) -> None:
        if time.monotonic() >= give_up:
            LOG.error("%s (%s): not rebooted: nova still busy with it after %gs (%s)", seen.uuid, name, FOLLOW_FOR,
                      why)
            return
        self.following.append((time.monotonic() + FOLLOW_PAUSE, give_up, seen, name))

    def _later(self, seen: Seen, why: str) -> None:
        if seen.tries + 1 >= RETRIES:
            LOG.error("%s: %s: nova could not be asked for %gs (%s); left until the next reconcile", seen.uuid,
                      seen.failure.detail, RETRIES * RETRY_PAUSE, why)
            return
        LOG.warning("%s: %s: cannot ask nova (%s); again in %gs", seen.uuid, seen.failure.detail, why, RETRY_PAUSE)
        self.later.append((time.monotonic() + RETRY_PAUSE, dataclasses.replace(seen, tries=seen.tries + 1)))

    # -- clients and records -----------------------------------------------------------------------------------------
    def nova(self):
        with self._nova_lock:
            if self._nova is None:
                self._nova = self._nova_factory()
            return self._nova

    def _warm_up(self) -> None:
        """Build the nova client now (its imports cost ~0.5 s) and check this host is nova's."""
        try:
            self.nova().service(self.host)
        except nova.NovaNotFound:
            LOG.error("no nova-compute service on host %r: set [guests] guest_host to this node's nova host; "
                      "until then every failure here is left alone", self.host)
        except Exception as e:                      # noqa: BLE001 - the first failure builds it again, and says why
            LOG.warning("nova not reached at start: %s", e)

    def _publish(self, type_: str, subject: str, payload: dict) -> None:
        if self.emitter is None:
            return
        try:
            self.emitter.publish(type_, subject, payload)
        except Exception as e:                      # noqa: BLE001 - a full disk must not stop the action
            LOG.error("%s: event %s not recorded: %s", subject, type_, e)

    def _save(self) -> None:
        try:
            state.save(self.state_path, self.state)
        except OSError as e:
            LOG.error("guest state %s not saved: %s", self.state_path, e)


def main(cfg, state_dir: str, node: str | None = None) -> int:
    log.setup("crashup-guests", stderr=False, debug=cfg.debug)
    host = own_host(cfg, node)
    emitter = events.Emitter.from_config(cfg, background=True)   # a bad [events] option stops here, with one line
    monitor = Monitor(cfg, host, emitter=emitter)
    signal.signal(signal.SIGTERM, monitor.stop)
    signal.signal(signal.SIGINT, monitor.stop)
    try:
        with Presence(pathlib.Path(state_dir), *GUESTS) as presence:
            monitor.run(beat=presence.beat)
    finally:
        if emitter.close(EMITTER_CLOSE) is False:
            LOG.warning("events: delivery still going on after %gs at stop; the bus's outbox keeps the rest",
                        EMITTER_CLOSE)
    return 0
