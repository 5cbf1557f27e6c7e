"""Running the sweep: `crashup sweep --once | --dry-run | --daemon`.

Once (or a dry run): one round, its summary printed, exit 0, or 1 when a service or resource failed. The daemon
sweeps every recovery_interval_period (start to start) and never dies of one round's failure: one clear log line, the
next round. SIGTERM/SIGINT end it between two resources, never in the middle of a change. Under Pacemaker
(ocf:crashup:crashup daemon=sweep) it keeps its pid and a heartbeat in state_dir (presence.SWEEP): the heartbeat is
touched between resources and while waiting, so a sweep stuck beyond its bounded calls stops beating and gets
restarted. The events' emitter (its webhook/hook worker and the bus's publisher, which first replays what a previous
process left in the outbox) is closed on the way out, within EMITTER_CLOSE seconds: the bus's outbox keeps what the
broker did not take by then.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable

from crashup_lib import events, log
from crashup_lib.health import Collector
from crashup_lib.presence import SWEEP, Presence
from crashup_lib.sweep.sweep import Sweep, error_line, sweep_once
from crashup_lib.sweep.wiring import finders_from_config, routes_from_config, sweepers_from_config

_log = log.get("sweep")

HEARTBEAT_SLICE = 5.0      # the daemon's longest wait between two heartbeats, apart from one bounded call
EMITTER_CLOSE = 10.0       # seconds the events' background deliveries get when the sweep ends


def run(cfg, mode: str, *, out=None, state_dir: str | None = None) -> int:
    """`crashup sweep`: mode once, dry-run or daemon. 0 ok, 1 a service or resource failed (once), 2 config.
    state_dir (daemon): sweep.pid and sweep.heartbeat there, for Pacemaker's agent (ocf:crashup:crashup
    daemon=sweep); the heartbeat is touched between resources and while waiting, so a sweep stuck beyond its
    bounded calls stops beating and gets restarted."""
    out = out or sys.stdout
    daemon = mode == "daemon"
    under_systemd = bool(os.environ.get("INVOCATION_ID"))
    # the daemon's log is its stderr under systemd (journald); a one-off sweep shows its changes and errors there
    log.setup("crashup-sweep", stderr=True, syslog=not (daemon and under_systemd), debug=cfg.debug,
              stderr_level=logging.DEBUG if daemon else logging.WARNING)
    sweepers = sweepers_from_config(cfg)
    stop = threading.Event()
    presence = Presence(state_dir, *SWEEP) if daemon and state_dir else None
    beat = presence.beat if presence else (lambda: None)

    def wait(seconds: float) -> None:
        end = time.monotonic() + seconds
        while not stop.is_set() and (left := end - time.monotonic()) > 0:
            beat()
            stop.wait(min(left, HEARTBEAT_SLICE))

    def stopping() -> bool:
        beat()
        return stop.is_set()

    collector = Collector.from_config(cfg, routes_from_config(cfg), sleep=wait)
    finders = finders_from_config(cfg)
    # The orphans reported so far, kept in this process only, so the daemon reports each one once rather than every
    # round; a restarted daemon reports them once again (nothing is written anywhere: reporting is all it does).
    reported: set = set()
    dry_run = mode == "dry-run"
    emitter = None
    if not dry_run:
        emitter = events.Emitter.from_config(cfg, background=True)

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    def one_round() -> Sweep:
        result = sweep_once(sweepers, collector, emitter, stale_period=cfg.recovery_stale_period, dry_run=dry_run,
                            say=say, stopping=stopping, finders=finders, reported=reported)
        _log.info("%s", result.summary())             # the failures were logged as they came
        return result

    try:
        if not daemon:
            result = one_round()
            say(result.summary())
            return 0 if result.ok else 1
        if presence is None:
            return loop(one_round, cfg.recovery_interval_period, stop)
        with presence:
            return loop(one_round, cfg.recovery_interval_period, stop, wait=wait)
    finally:
        if emitter is not None:
            emitter.close(timeout=EMITTER_CLOSE)


def loop(one_round: Callable[[], Any], interval: float, stop: threading.Event,
         signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT), wait: Callable[[float], Any] | None = None) -> int:
    """Sweep every `interval` seconds (start to start) until SIGTERM/SIGINT; 0 on a stop."""
    def on_signal(signum, _frame):
        _log.info("sweep: %s: stopping after the current resource", signal.Signals(signum).name)
        stop.set()
    for s in signals:
        signal.signal(s, on_signal)
    _log.info("sweep: daemon started, a sweep every %gs", interval)
    while not stop.is_set():
        started = time.monotonic()
        try:
            one_round()
        except Exception as e:      # noqa: BLE001 - sweep_once catches per service; this is the last net
            _log.error("sweep: round failed: %s; next round in %gs", error_line(e), interval)
        (wait or stop.wait)(max(0.0, interval - (time.monotonic() - started)))
    _log.info("sweep: daemon stopped")
    return 0
