"""One round of the CrashUp sweep: scan, decide, fix, report.

For each configured service: scan (rows in a stuck state, not updated for recovery_stale_period) -> for each stuck
resource: the Health Collector's observation (retried recovery_resync_count times while unknown); acted on only once
settled, else left to the next sweep -> the rules' outcome (fix.plan, pure) -> applied (fix.apply), or in a dry run
printed and nothing changed. One service's failure (a database down, an API answering 500 or not at all) is one
clear log line and the next service; one resource's failure, one line and the next resource. `stopping()` ends the
round between two resources, never in the middle of a change.

After each service's stuck resources, its orphan pass (sweep/orphans.py, nova and glance): what exists in the
managed environment that no row describes is reported, one crashup.resource.orphaned event and one log line each,
never deleted nor changed; a dry run prints "would report orphan ..." and emits nothing.

A resource the collector has no backend for (neutron until its own exists, nova without libvirt_uri, glance without
glance_datadirs, cinder volumes without cinder_volume_dirs, or stuck attaching/detaching without libvirt_uri, backups
without cinder_backup_dirs) is never changed: "no backend" is not the rules' `unknown`, which means a backend tried
recovery_resync_count times and could not tell.

What to sweep comes from wiring.py (configuration -> sweepers, backends, finders); daemon.py runs rounds.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import time
from typing import Callable, Mapping, Sequence

from crashup_lib import log
from crashup_lib.health import Collector, HealthError
from crashup_lib.sweep import fix, orphans as _orphans
from crashup_lib.sweep.db import utcnow
from crashup_lib.sweep.scan import cutoff

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


error_line = log.error_line


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
            _log.error("sweep: %s: %s; next service", service, error_line(e))
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
        try:
            seen = collector.observe(sweeper.resource(stuck))
        except HealthError as e:        # no backend for it (its route, or the question it asks): never changed
            _log.info("sweep: %s: left, not observed: %s", stuck, error_line(e))
            if dry_run:
                say(f"{stuck} [{stuck.where}]: {prefix}leave: not observed: {error_line(e)}")
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
        _log.error("sweep: %s: %s; left", stuck, error_line(e))
        return FAILED


def _orphan_pass(service, find, sweeper, before, emitter, dry_run, say, stopping, result: Sweep,
                 reported: set) -> None:
    """One service's orphans: each reported once (a set of keys), or in a dry run printed. A failure is the
    service's, one line, like its scan's."""
    try:
        found = find(sweeper, before, stopping)
    except Exception as e:      # noqa: BLE001 - the database gone: one line, the next service
        _log.error("sweep: %s: orphans not looked for: %s; next service", service, error_line(e))
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

