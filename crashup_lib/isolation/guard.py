"""The isolation guard: one per compute node (Pacemaker's clone crashup-isolation, agents/crashup daemon=isolation).

Every probe_interval it asks whether a quorate cluster answers through this node's pacemaker_remote connection
(probe.py); decide.py turns the answers and the clock into healthy -> suspect -> isolated; on isolation act.py stops
nova-compute and destroys (or pauses) the guests, retried on every later look until all is done. The watchdog, when
configured, is armed at start, petted only while healthy and disarmed on a clean stop. What the guard sees is kept
in STATE_FILE in the state folder (for `crashup isolation`), its heartbeat beside it for the agent's monitor.
The state machine runs on time.monotonic (an NTP step backwards must not delay isolation); wall time is only the
view's `at` and `since`. main() refuses to start a guard that could not act (act.ready): Pacemaker's start fails.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import threading
import time

from crashup_lib import events, log
from crashup_lib import libvirt as lv
from crashup_lib.isolation import STATE_FILE, act, decide, probe
from crashup_lib.isolation.timing import Settings, deadline, values
from crashup_lib.isolation.watchdog import Watchdog, WatchdogError
from crashup_lib.localservice import LocalService
from crashup_lib.presence import ISOLATION, Presence

LOG = log.get("isolation")
EMITTER_CLOSE = 5.0


class Guard:
    def __init__(self, settings: Settings, *, node: str, host: str, service: LocalService | None, libvirt_uri: str,
                 state_dir: str, emitter=None, watchdog: Watchdog | None = None, prober=probe.timed,
                 isolate=act.isolate, clock=time.monotonic, wall=time.time, wait=None):
        self.settings, self.node, self.host = settings, node, host
        self.service, self.uri, self.state_dir = service, libvirt_uri, state_dir
        self.emitter, self.watchdog, self.prober, self.isolate, self.clock = emitter, watchdog, prober, isolate, clock
        self.wall = wall                                  # the view's times only; prober must use `clock`
        self.state = decide.start(clock())
        self.outcome: act.Outcome | None = None
        self.why = ""
        self.stop_event = threading.Event()
        self.wait = wait or self.stop_event.wait          # tests give a clock that moves when waited on

    def run(self, beat=lambda: None) -> None:
        s = self.settings
        LOG.info("isolation guard on %s: isolated after %gs without a quorate cluster (probe every %gs, %gs at "
                 "most), then %s its guests; certainly done %gs after the loss", self.node, s.isolation_timeout,
                 s.probe_interval, s.probe_timeout, s.policy.value, deadline(s))
        if self.watchdog is not None:
            self.watchdog.open()
        clean = False
        try:
            while not self.stop_event.is_set():
                self.step(beat)
            clean = True
        finally:
            if self.watchdog is not None:
                self.watchdog.close(disarm=clean)
            LOG.info("isolation guard stopped")

    def step(self, beat=lambda: None) -> decide.Step:
        """One probe, what it means, and the wait until the next (cut short when the suspicion times out)."""
        beat()
        answer, self.why, started, answered = self.prober(self.settings.probe_timeout)
        self.state, step = decide.observe(self.state, self.settings, answer, started, answered)
        self._after(step)
        # healthy: a pause between probes; otherwise the next probe as soon as the interval since this one's start
        # has passed (a hung crm_node already took its timeout): an outage ends for the guard as soon as possible
        due = answered + self.settings.probe_interval if answer is decide.Answer.QUORATE else \
            max(answered, started + self.settings.probe_interval)
        while not self.stop_event.is_set():
            now = self.clock()
            wake = decide.next_wake(self.state, self.settings, due)
            self.state, more = decide.tick(self.state, self.settings, now)    # the timeout first, then a probe
            if more is not decide.Step.NOTHING:
                self._after(more)
                step = more
                continue
            if now >= due:
                break
            beat()
            self.wait(min(max(wake - now, 0.01), 1.0))
        return step

    def _after(self, step: decide.Step) -> None:
        now = self.clock()
        if step is decide.Step.LOST:
            LOG.warning("isolation: no quorate cluster (%s); isolated in %gs unless it answers", self.why,
                        self.settings.isolation_timeout - self.state.lost_for(now))
        elif step is decide.Step.BLIP:
            LOG.info("isolation: the cluster answers again after %.1fs: a blip", now - self.state.since)
        elif step is decide.Step.BACK:
            LOG.warning("isolation: the cluster answers again; nova-compute stays stopped until Pacemaker starts it")
            self.outcome = None
        if self.state.phase is decide.Phase.ISOLATED and (self.outcome is None or not self.outcome.complete):
            self._isolate(now)
        if decide.pets(self.state) and self.watchdog is not None:
            try:
                self.watchdog.pet()
            except WatchdogError as e:
                LOG.error("%s", e)
        self._save(now)

    def _isolate(self, now: float) -> None:
        first = self.outcome is None
        lost_for = self.state.lost_for(now)
        if first:
            LOG.warning("isolation: no quorate cluster for %.1fs (%s): stopping nova-compute, %s the guests",
                        lost_for, self.why, "destroying" if self.settings.policy.value == "destroy" else "pausing")
        self.outcome = self.isolate(self.service, self.uri, self.settings.policy, self.settings.action_timeout)
        o = self.outcome
        LOG.warning("isolation: nova-compute %s; %d guests %s, %d failed%s", o.nova_compute, len(o.stopped),
                    self.settings.policy.value + "ed" if self.settings.policy.value == "destroy" else "paused",
                    len(o.failed), f"; libvirt: {o.problem}" if o.problem else "")
        if first or o.stopped:
            self._publish(events.HOST_ISOLATED, self.host, {
                "host": self.host, "node": self.node, "lost_for": round(lost_for, 1), "reason": self.why,
                "policy": self.settings.policy.value, "nova_compute": o.nova_compute, "guests": list(o.stopped),
                "failed": [{"id": u, "reason": why} for u, why in o.failed], "libvirt": o.problem,
                "complete": o.complete})

    def view(self, now: float) -> dict:
        """What the guard sees, as `crashup isolation` prints it."""
        o, at = self.outcome, self.wall()
        return {"node": self.node, "host": self.host, "phase": self.state.phase.value,
                "answer": self.state.answer.value, "reason": self.why, "since": at - (now - self.state.since),
                "lost_for": round(self.state.lost_for(now), 1), "at": at, "deadline": deadline(self.settings),
                "settings": values(self.settings), "watchdog_armed": self.watchdog is not None,
                "outcome": None if o is None else {"nova_compute": o.nova_compute, "guests": list(o.stopped),
                                                   "failed": [list(f) for f in o.failed], "libvirt": o.problem}}

    def _save(self, now: float) -> None:
        path = pathlib.Path(self.state_dir) / STATE_FILE
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.view(now)) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            LOG.debug("guard state %s not saved: %s", path, e)

    def _publish(self, type_: str, subject: str, payload: dict) -> None:
        if self.emitter is None:
            return
        try:
            self.emitter.publish(type_, subject, payload)
        except Exception as e:                      # noqa: BLE001 - the node's safety comes before the event
            LOG.error("%s: event %s not recorded: %s", subject, type_, e)

    def stop(self, *_):
        self.stop_event.set()


def main(cfg, settings: Settings, *, node: str, host: str, service: LocalService | None, libvirt_uri: str,
         state_dir: str) -> int:
    log.setup("crashup-isolation", stderr=False, debug=cfg.debug)
    why = act.ready(service, libvirt_uri, lv.OPEN_TIMEOUT)
    if why:                        # on stderr too: the agent's start reports the daemon's last line
        LOG.error("isolation guard not started: %s", why)
        print(f"crashup: isolation guard not started: {why}", file=sys.stderr)
        return 1
    emitter = events.Emitter.from_config(cfg, background=True)   # background: a cut-off webhook never blocks
    watchdog = Watchdog(settings.watchdog, settings.watchdog_timeout) if settings.watchdog else None
    guard = Guard(settings, node=node, host=host, service=service, libvirt_uri=libvirt_uri, state_dir=state_dir,
                  emitter=emitter, watchdog=watchdog)
    signal.signal(signal.SIGTERM, guard.stop)
    signal.signal(signal.SIGINT, guard.stop)
    try:
        with Presence(pathlib.Path(state_dir), *ISOLATION) as presence:
            guard.run(beat=presence.beat)
    except WatchdogError as e:
        LOG.error("%s", e)
        return 1
    finally:
        emitter.close(EMITTER_CLOSE)
    return 0
