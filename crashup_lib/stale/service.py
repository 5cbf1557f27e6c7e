"""The CrashUp sweep: `crashup sweep --once | --dry-run | --daemon`.

One sweep, for each configured service: scan (rows in a stuck state, not updated for recovery_stale_period) -> for
each stuck resource: the Health Collector's observation (retried recovery_resync_count times while unknown); acted
on only once settled, else left to the next sweep -> the rules' outcome (fix.plan, pure) -> applied (fix.apply), or
in a dry run printed and nothing changed. The daemon sweeps every recovery_interval_period and never dies of one
service's failure (a database down, an API answering 500 or not at all): one clear log line, the next service, the
next round. SIGTERM ends it between two resources, never in the middle of a change.

After each service's stuck resources, its orphan pass (stale/orphans.py, nova and glance): what exists in the
managed environment that no row describes is reported, one crashup.resource.orphaned event and one log line each,
never deleted nor changed; a dry run prints "would report orphan ..." and emits nothing.

A resource the collector has no backend for (cinder and neutron until theirs exist, nova without libvirt_uri, glance
without glance_datadirs) is never changed: "no backend" is not the rules' `unknown`, which means a backend tried
recovery_resync_count times and could not tell.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from crashup_lib import config as _config
from crashup_lib import log
from crashup_lib.health import Collector, HealthError
from crashup_lib.presence import SWEEP, Presence
from crashup_lib.stale import fix, orphans as _orphans
from crashup_lib.stale.db import utcnow
from crashup_lib.stale.scan import cutoff

SERVICES = ("nova", "cinder", "glance", "neutron")
UNSETTLED, UNOBSERVED, FAILED, STOPPED = "unsettled", "unobserved", "failed", "stopped"

_log = log.get("sweep")


@dataclasses.dataclass
class Sweep:
    """What one sweep did: how many resources per outcome (the rules' action: reset, cas-update, error, skip, keep,
    report; and lost-race, unsettled, unobserved, failed), which services could not be swept."""
    dry_run: bool = False
    found: int = 0
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failed_services: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    orphans: int = 0                # found in this sweep
    orphans_known: int = 0          # of which reported already by an earlier round of this process

    @property
    def ok(self) -> bool:
        return not self.failed_services and not self.counts[FAILED]

    def summary(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())) or "nothing to do"
        failed = f"; could not sweep {', '.join(self.failed_services)}" if self.failed_services else ""
        orphans = ""
        if self.orphans:
            orphans = f"; {self.orphans} orphan{'s' if self.orphans > 1 else ''}" + (
                f" ({self.orphans_known} reported before)" if self.orphans_known else "")
        return (f"sweep{' (dry run)' if self.dry_run else ''}: {self.found} stuck: {counts}{orphans}{failed} "
                f"({self.seconds:.1f}s)")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return log.redact(text if len(text) <= 300 else text[:297] + "...")


def sweep_once(sweepers: Sequence[tuple[str, Callable[[], fix.Sweeper]]], collector: Collector, emitter=None, *,
               stale_period: float, dry_run: bool = False, now: _dt.datetime | None = None,
               say: Callable[[str], None] = print, stopping: Callable[[], bool] = lambda: False,
               finders: Mapping[str, Callable[..., list[_orphans.Orphan]]] | None = None,
               reported: set | None = None) -> Sweep:
    """One sweep over `sweepers` ((service, a function giving its Sweeper)); `say` prints a dry run's plan.
    finders: service -> its orphan finder (orphans.NovaOrphans, GlanceOrphans); reported: the keys of the orphans
    already reported (the daemon passes the same set every round; None: a fresh one)."""
    started = time.monotonic()
    result = Sweep(dry_run=dry_run)
    before = cutoff(stale_period, now or utcnow())
    for service, make in sweepers:
        if stopping():
            break
        try:
            sweeper = make()
            found = sweeper.scan(before)
        except Exception as e:      # noqa: BLE001 - DbError, a driver's error: the next service, the next round
            _log.error("sweep: %s: %s; next service", service, _one_line(e))
            result.failed_services.append(service)
            continue
        result.found += len(found)
        _log.info("sweep: %s: %d stuck for more than %gs", service, len(found), stale_period)
        for stuck in found:
            if stopping():
                break
            outcome = _one(stuck, sweeper, collector, emitter, dry_run, say, stopping)
            result.counts[outcome] += 1
        find = (finders or {}).get(service)
        if find is not None and not stopping():
            _orphan_pass(service, find, sweeper, before, emitter, dry_run, say, stopping, result,
                         reported if reported is not None else set())
    result.seconds = time.monotonic() - started
    return result


def _one(stuck, sweeper, collector, emitter, dry_run, say, stopping) -> str:
    """One stuck resource: observe, decide, apply (or print). Never raises: one line and the next resource."""
    prefix = "would " if dry_run else ""
    try:
        resource = sweeper.resource(stuck)
        try:
            seen = collector.observe(resource)
        except HealthError as e:
            _log.info("sweep: %s: left, not observed: %s", stuck, _one_line(e))
            if dry_run:
                say(f"{stuck} [{stuck.where}]: {prefix}leave: not observed: {_one_line(e)}")
            return UNOBSERVED
        if stopping():
            return STOPPED          # retries were cut short by the stop: what they said is not settled
        if not seen.settled:
            _log.info("sweep: %s: left to the next sweep, not settled: %s", stuck, seen.detail)
            if dry_run:
                say(f"{stuck} [{stuck.where}]: {prefix}leave to the next sweep: {seen.detail}")
            return UNSETTLED
        step = fix.plan(stuck, seen.reality, seen.detail)
        if dry_run:
            say(prefix + step.line())
            return step.outcome.action
        result = fix.apply(step, sweeper, emitter)
        return fix.LOST_RACE if result == fix.LOST_RACE else step.outcome.action
    except Exception as e:          # noqa: BLE001 - an API's 500 or timeout, a database gone: the next resource
        _log.error("sweep: %s: %s; left", stuck, _one_line(e))
        return FAILED


def _orphan_pass(service, find, sweeper, before, emitter, dry_run, say, stopping, result: Sweep,
                 reported: set) -> None:
    """One service's orphans: each reported once (a set of keys), or in a dry run printed. A failure is the
    service's, one line, like its scan's."""
    try:
        found = find(sweeper, before, stopping)
    except Exception as e:      # noqa: BLE001 - the database gone: one line, the next service
        _log.error("sweep: %s: orphans not looked for: %s; next service", service, _one_line(e))
        result.failed_services.append(f"{service} orphans")
        return
    for orphan in dict.fromkeys(found):          # once per sweep even if listed twice
        result.orphans += 1
        if dry_run:
            say(f"would report orphan {orphan.line()}")
        elif orphan.key in reported:
            result.orphans_known += 1
        elif _orphans.report(orphan, emitter):
            reported.add(orphan.key)


# ----------------------------------------------------------------------------------------------------- wiring
def connections(cfg, service: str) -> tuple[str, ...]:
    """The service's database URLs from <service>_connection or the file <service>_connection_file (URLs
    separated by blanks or lines, '#' comments). ConfigError, one line, when both are set or the file is bad."""
    inline, path = cfg[f"{service}_connection"], cfg[f"{service}_connection_file"]
    if inline and path:
        raise _config.ConfigError(f"config: set {service}_connection or {service}_connection_file, not both")
    if not path:
        return tuple(inline)
    text = _config.read_text(path, f"config: {service}_connection_file")
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    try:
        urls = _config.database_urls().parse(text)
    except ValueError as e:
        raise _config.ConfigError(f"config: {service}_connection_file = {path!r} holds something else than "
                                  f"{e}") from None
    if not urls:
        raise _config.ConfigError(f"config: {service}_connection_file = {path!r} holds no URL")
    return urls


class _Lazy:
    """An API client built on first use: a sweep that changes nothing through it (dry run, nothing stuck, no
    backend) needs no clouds.yaml; a failure to build it is then one resource's error, raised again next time."""

    def __init__(self, build: Callable[[], Any]):
        self._build, self._client = build, None

    def __getattr__(self, name: str):
        if self._client is None:
            self._client = self._build()
        return getattr(self._client, name)


def sweepers_from_config(cfg) -> list[tuple[str, Callable[[], fix.Sweeper]]]:
    """(service, factory) for each configured service; a factory's Sweeper is kept once built (reflected
    tables), a failing one is tried again next round. ConfigError when no service is configured."""
    from crashup_lib.stale.db import Database
    found = []
    timeout = cfg.db_timeout
    for service in SERVICES:
        urls = connections(cfg, service)
        if not urls:
            continue
        if service != "nova" and len(urls) > 1:
            raise _config.ConfigError(f"config: {service}_connection: one URL, not {len(urls)}")
        if service == "nova":
            def make(urls=urls):
                from crashup_lib import nova
                from crashup_lib.stale.nova import NovaSweeper
                cells = [Database(u, name=f"nova db {i}" if len(urls) > 1 else "nova db", timeout=timeout)
                         for i, u in enumerate(urls)]
                return NovaSweeper(cells, _Lazy(lambda: nova.Nova.from_config(cfg)))
        elif service == "cinder":
            def make(urls=urls):
                from crashup_lib.stale.cinder import CinderApi, CinderSweeper
                return CinderSweeper(Database(urls[0], name="cinder db", timeout=timeout),
                                     _Lazy(lambda: CinderApi.from_config(cfg)))
        elif service == "glance":
            def make(urls=urls):
                from crashup_lib.stale.glance import GlanceSweeper
                return GlanceSweeper(Database(urls[0], name="glance db", timeout=timeout))
        else:
            def make(urls=urls):
                from crashup_lib.stale.neutron import NeutronSweeper
                return NeutronSweeper(Database(urls[0], name="neutron db", timeout=timeout))
        found.append((service, _kept(make)))
    if not found:
        raise _config.ConfigError("config: the sweep has no database to sweep: set [sweep] nova_connection, "
                                  "cinder_connection, glance_connection or neutron_connection (or *_file)")
    return found


def _kept(make: Callable[[], fix.Sweeper]) -> Callable[[], fix.Sweeper]:
    box: list = []

    def get():
        if not box:
            box.append(make())
        return box[0]
    return get


def routes_from_config(cfg) -> dict:
    """The Health Collector's backends per service, from [sweep] and [openstack]. Only resource-level backends
    make a route (a host that is up says nothing about a guest)."""
    from crashup_lib import health
    routes: dict = {}
    if cfg.libvirt_uri:
        try:
            from crashup_lib import nova
            heartbeat = health.NovaHeartbeatBackend(_Lazy(lambda: nova.Nova.from_config(cfg)),
                                                    timeout=cfg.api_timeout + 5)
            routes["nova"] = [heartbeat, health.LibvirtBackend(cfg.libvirt_uri)]
        except HealthError as e:
            _log.warning("sweep: nova instances are not observed: %s", _one_line(e))
    if cfg.glance_datadirs:
        routes["glance"] = [health.GlanceFileBackend(cfg.glance_datadirs)]
    return routes


def finders_from_config(cfg) -> dict:
    """The orphan finders per service: nova through libvirt_uri (the hosts of the instances and of the compute
    nodes), glance through glance_datadirs. None for a service whose listing is not configured."""
    from crashup_lib import health
    finders: dict = {}
    if cfg.libvirt_uri:
        try:
            finders["nova"] = _orphans.NovaOrphans(health.LibvirtBackend(cfg.libvirt_uri),
                                                   extra_hosts=lambda sweeper: sweeper.compute_hosts())
        except HealthError as e:
            _log.warning("sweep: nova guests are not listed for orphans: %s", _one_line(e))
    if cfg.glance_datadirs:
        finders["glance"] = _orphans.GlanceOrphans(health.GlanceFileBackend(cfg.glance_datadirs))
    return finders


# ----------------------------------------------------------------------------------------------------- running
HEARTBEAT_SLICE = 5.0      # the daemon's longest wait between two heartbeats, apart from one bounded call


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
        from crashup_lib.recovery import events
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
            emitter.close(timeout=10)


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
            _log.error("sweep: round failed: %s; next round in %gs", _one_line(e), interval)
        (wait or stop.wait)(max(0.0, interval - (time.monotonic() - started)))
    _log.info("sweep: daemon stopped")
    return 0
