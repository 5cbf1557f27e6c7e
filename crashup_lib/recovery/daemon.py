"""The recovery daemon: watches the CIB for open recovery requests and runs each one's pipeline in a worker.

Pacemaker keeps one instance running (agents/crashup). Requests live in the CIB, not here, so a daemon that dies
loses nothing: the next one finds every open request on its first look and resumes it. The CIB is read every
`WATCH_INTERVAL` seconds (one cibadmin query, ~15 ms), which is how a new request is seen within a second of fencing.
A heartbeat file, touched every round, lets the agent's monitor tell a live daemon from a stuck one cheaply.
The events' emitter is built when the daemon starts (the bus's publisher then replays what a previous process left
in its outbox) and closed when it stops, within EMITTER_CLOSE seconds: what the broker did not take by then stays in
the outbox for the next daemon.
"""
from __future__ import annotations

import pathlib
import signal
import threading

from crashup_lib import cinder, events, log, metrics, nova, pacemaker
from crashup_lib.maintenance import rejuvenate_steps
from crashup_lib.presence import RECOVERY, Presence
from crashup_lib.recovery.pipeline import Recovery

LOG = log.get("daemon")
WATCH_INTERVAL = 0.5
RETRY_PAUSE = 2.0
FENCING_POLL = 0.25
EMITTER_CLOSE = 5.0        # seconds a stopping daemon gives the bus's publisher (Pacemaker's stop allows 30)


class Daemon:
    def __init__(self, cfg, *, state_dir: str, cluster: pacemaker.Cluster | None = None, nova_factory=None,
                 emitter=None, cinder_factory=None):
        self.cfg = cfg
        self.cluster = cluster or pacemaker.Cluster()
        self.state_dir = pathlib.Path(state_dir)
        self.heartbeat = self.state_dir / RECOVERY[1]
        self.stop_event = threading.Event()
        self.workers: dict[str, threading.Thread] = {}
        self.lagging: set = set()                  # requests whose state mirror lagged at the last tick
        self.inquorate = False                     # the partition had no quorum at the last tick
        self._nova_factory = nova_factory
        self._cinder_factory = cinder_factory
        self._emitter = emitter
        self._recovery = None
        self._recovery_lock = threading.Lock()
        self._emitter_lock = threading.Lock()
        self.metrics: metrics.Exporter | None = None   # [metrics] metrics_textfile: made by run()

    def recovery(self):
        """The pipeline with its clients, made once, shared by the workers (building clients costs time)."""
        with self._recovery_lock:
            return self._make_recovery()

    def emitter(self):
        """The events' emitter, built from the configuration once (ConfigError for a bad [events] option)."""
        with self._emitter_lock:
            if self._emitter is None:
                self._emitter = events.Emitter.from_config(self.cfg)
            return self._emitter

    def _make_recovery(self):
        if self._recovery is None:
            if self._nova_factory is None:
                self._nova_factory = lambda: nova.Nova.from_config(self.cfg)
            self._recovery = Recovery(self.cfg, self.cluster, self._nova_factory(), self.emitter(),
                                      cinder=self._cinder())
        return self._recovery

    def _warm_up(self) -> None:
        """Build the clients now, beside the watch: the first failed host does not wait for their imports (~0.5 s)."""
        try:
            self.recovery()
        except Exception as e:                    # noqa: BLE001 - the first request builds them again, and says why
            LOG.debug("clients not built at start: %s", e)

    def _cinder(self):
        """The block-storage client when volume_checks is on (None without: recovery then ignores volumes)."""
        if not self.cfg.get("volume_checks", True):
            return None
        if self._cinder_factory is not None:
            return self._cinder_factory()
        try:
            return cinder.CinderApi.from_config(self.cfg)
        except cinder.CinderError as e:
            LOG.warning("volumes not read during recoveries: %s", e)
            return None

    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.emitter()                            # now: the bus's outbox is replayed from the start
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        self.metrics = metrics.Exporter.from_config(self.cfg)
        if self.metrics is not None:
            self.metrics.start()                  # its own threads: the watch only hands it the requests
        # rejuvenation_interval: the periodic roll in a thread of its own (a roll never delays the watch)
        self.rejuvenation = rejuvenate_steps.start_periodic(self.cfg, self.cluster, self.emitter(), self.stop_event)
        try:
            self._watch()
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self.close_emitter()

    def close_emitter(self) -> None:
        """Stop the events' deliveries within EMITTER_CLOSE seconds (what the bus did not take stays in its outbox)."""
        with self._emitter_lock:
            emitter, self._emitter = self._emitter, None
        close = getattr(emitter, "close", None)
        if callable(close) and close(EMITTER_CLOSE) is False:
            LOG.warning("events: delivery still going on after %gs at stop; the bus's outbox keeps the rest",
                        EMITTER_CLOSE)

    def _watch(self) -> None:
        LOG.info("recovery daemon started (mode %s, watching the CIB every %gs)", self.cfg.mode, WATCH_INTERVAL)
        while not self.stop_event.is_set():
            try:
                self.tick()
            except pacemaker.PacemakerError as e:
                LOG.warning("reading recovery requests failed: %s", e)
            self.heartbeat.touch()
            self.stop_event.wait(WATCH_INTERVAL)
        for worker in self.workers.values():
            worker.join(timeout=5)
        LOG.info("recovery daemon stopped")

    def tick(self) -> None:
        """One look at the CIB. Quorum is asked only when there is something to act on: an idle tick is one query
        (the requests), whatever the fleet's size (the CIB manager filters them: pacemaker.survey)."""
        found, lagging = self.cluster.survey()
        if self.metrics is not None:
            self.metrics.requests_seen(found)
        # a lag seen twice in a row is a writer that stopped between its two writes, not one still writing
        stuck = [req for req in lagging if req in self.lagging]
        self.lagging = set(lagging)
        idle = [node for node, req in found.items()
                if req.open and (node not in self.workers or not self.workers[node].is_alive())]
        if not (stuck or idle or self.inquorate):
            return
        if not self.cluster.quorate():            # cut off: the majority's daemon recovers; Pacemaker stops this one
            if not self.inquorate:
                LOG.warning("no quorum: acting on no recovery request until the cluster is whole again")
            self.inquorate = True
            return
        if self.inquorate:
            LOG.info("quorum back: watching recovery requests again")
        self.inquorate = False
        for req in stuck:
            LOG.info("%s: state mirror set to %s (a writer stopped between its two writes)", req.node, req.state)
            self.cluster.write_state_mirror(req)
        for node in idle:
            req = found[node]
            LOG.info("%s: open recovery request (%s, %s): starting its pipeline", node, req.state, req.mode)
            worker = threading.Thread(target=self._work, args=(node,), name=f"recover-{node}", daemon=True)
            self.workers[node] = worker
            worker.start()

    def _work(self, node: str) -> None:
        """Run the node's pipeline until its request is closed; errors are retried, never dropped."""
        while not self.stop_event.is_set():
            try:
                req = self.cluster.request(node)
                if req is None or not req.open:
                    return
                if not self.cluster.quorate():        # the watch starts it again once quorum is back
                    LOG.warning("%s: no quorum: its recovery waits for the majority", node)
                    return
                progress = self.recovery().recover(req)
                LOG.info("%s", progress.summary)
                if not progress.request.open:
                    return
                if progress.request.state == "pending":      # fencing about to be confirmed: look again soon
                    self.stop_event.wait(FENCING_POLL)
                    continue
            except Exception as e:                 # nova down, CIB busy: the request stays, we try again
                LOG.warning("%s: recovery step failed: %s: %s; retrying in %gs", node, type(e).__name__, e,
                            RETRY_PAUSE)
                LOG.debug("details", exc_info=True)
            self.stop_event.wait(RETRY_PAUSE)

    def stop(self, *_):
        self.stop_event.set()


def main(cfg, state_dir: str) -> int:
    log.setup("crashup-daemon", stderr=False, debug=cfg.debug)
    daemon = Daemon(cfg, state_dir=state_dir)
    daemon.emitter()                              # a bad [events] option stops here, with one line
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    with Presence(pathlib.Path(state_dir), *RECOVERY):
        daemon.run()
    return 0
