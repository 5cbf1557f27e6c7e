"""Prometheus metrics: counters folded from the events journal, gauges from the CIB's recovery requests.

Why a textfile (node_exporter's textfile collector) and not an HTTP endpoint: no listening port on a controller
(nothing to secure, allocate or open in a firewall), node_exporter is there already where Prometheus is, and its
node_textfile_mtime_seconds tells a writer that stopped. Pacemaker runs the daemon on one controller at a time: the
daemon removes its file when it stops, so only the active controller exposes its gauges (an endpoint would have
Prometheus scrape every controller and see all but one down). The file is written (atomic rename) every
metrics_interval by a thread of its own; the daemon's 0.5 s watch only hands it the requests it read anyway.

Counters are derived from the journal (Tally, a pure fold over its events), not counted in the process: a daemon
restarted on the same controller reads the journal again and finds the same values. A journal rotated away, or a
failover to a controller with its own journal, lowers them: Prometheus takes that as a counter reset
(rate()/increase() are right; sum over instances when several controllers wrote some).
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import os
import threading
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from crashup_lib import events, log
from crashup_lib.pacemaker import Hold, RecoveryRequest
from crashup_lib.report.fields import epoch, event_time, number, text

LOG = log.get("metrics")
EVACUATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
RECOVERY_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
FOLLOW_POLL = 1.0          # seconds between the journal follower's looks at the journal
OVERLAP = 1024             # events remembered from the first read, to drop what the follower sees again
SWEEP_OUTCOMES = {events.RESOURCE_STALE_RECOVERED: "recovered", events.RESOURCE_STALE_UNRECOVERABLE: "unrecoverable",
                  events.RESOURCE_ORPHANED: "orphaned"}


class Histogram:
    def __init__(self, buckets: Iterable[float]):
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)          # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


@dataclasses.dataclass
class Tally:
    """What the journal says, counted. add() takes any event the journal reader gives (fields of the wrong kind
    are skipped, counted in unreadable), so it never fails on a line."""
    recoveries: collections.Counter = dataclasses.field(default_factory=collections.Counter)   # (mode, outcome)
    evacuations: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # outcome
    repairs: collections.Counter = dataclasses.field(default_factory=collections.Counter)      # action
    sweep: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (service, type, outcome)
    storms: int = 0
    unconfirmed: int = 0
    unreadable: int = 0
    broken_lines: int = 0
    evacuation_seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(EVACUATION_BUCKETS))
    recovery_seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(RECOVERY_BUCKETS))
    fenced: dict = dataclasses.field(default_factory=dict)      # host -> fencing time of its recovery under way

    def add(self, event: Mapping[str, Any]) -> None:
        kind, p = event.get("type"), event.get("payload")
        if not isinstance(p, dict):
            return
        if kind == events.HOST_FAILED:
            fenced, host = epoch(p.get("fenced_at")), text(p, "host")
            if fenced is None or host is None:
                self.unreadable += 1
            elif text(p, "mode") == "notify":
                self.recoveries["notify", "notified"] += 1
            else:
                self.fenced[host] = fenced
        elif kind == events.HOST_RECOVERED:
            self._recovered(event, p)
        elif kind == events.INSTANCE_EVACUATED:
            self.evacuations["evacuated"] += 1
            took = number(p, "duration_s")
            if took is not None:
                self.evacuation_seconds.observe(took)
        elif kind == events.INSTANCE_EVACUATION_FAILED:
            self.evacuations["failed"] += 1
        elif kind == events.INSTANCE_REPAIRED:
            self.repairs[text(p, "action") or "unknown"] += 1
        elif kind == events.HOST_STORM:
            self.storms += 1
        elif kind == events.HOST_FENCING_UNCONFIRMED:
            self.unconfirmed += 1
        elif kind in SWEEP_OUTCOMES:
            self.sweep[text(p, "service") or "unknown", text(p, "resource_type") or "unknown",
                       SWEEP_OUTCOMES[kind]] += 1

    def _recovered(self, event: Mapping[str, Any], p: Mapping[str, Any]) -> None:
        failed, host, at = number(p, "failed"), text(p, "host"), event_time(event)
        if failed is None or host is None or at is None:
            self.unreadable += 1
            return
        self.recoveries[text(p, "mode") or "auto", "partial" if failed else "complete"] += 1
        fenced = self.fenced.pop(host, None)
        # from the fencing (host.failed's fenced_at); duration_s when that host.failed is not in this journal
        took = at - fenced if fenced is not None and at >= fenced else number(p, "duration_s")
        if took is not None:
            self.recovery_seconds.observe(took)


def families(tally: Tally, requests: Mapping[str, RecoveryRequest] | None) -> list:
    """The metric families: the journal's counters, and the requests' gauges when the requests are known."""
    found = []
    c = CounterMetricFamily("crashup_recoveries", "Host recoveries ended (auto: complete or partial, i.e. some "
                            "evacuation failed; notify: handed over)", labels=("mode", "outcome"))
    for mode, outcome in (("auto", "complete"), ("auto", "partial"), ("notify", "notified")):
        c.add_metric((mode, outcome), tally.recoveries[mode, outcome])
    found.append(c)
    c = CounterMetricFamily("crashup_evacuations", "Server evacuations by outcome", labels=("outcome",))
    for outcome in ("evacuated", "failed"):
        c.add_metric((outcome,), tally.evacuations[outcome])
    found.append(c)
    found.append(tally.recovery_seconds.family("crashup_recovery_duration_seconds",
                                               "Seconds from a host's fencing to the end of its recovery (auto)"))
    found.append(tally.evacuation_seconds.family("crashup_evacuation_duration_seconds",
                                                 "Seconds from an evacuate call to the server's final state"))
    c = CounterMetricFamily("crashup_repairs", "Stale tasks of failed hosts' servers repaired", labels=("action",))
    for action in sorted(set(tally.repairs) | {"reset-active", "reset-error"}):
        c.add_metric((action,), tally.repairs[action])
    found.append(c)
    found.append(CounterMetricFamily("crashup_storm_guard_trips", "Times the storm guard stopped evacuation",
                                     value=tally.storms))
    found.append(CounterMetricFamily("crashup_fencing_unconfirmed", "Recoveries held: fencing not confirmed",
                                     value=tally.unconfirmed))
    c = CounterMetricFamily("crashup_sweep_findings", "Resources the sweep (or a recovery) found stuck or orphaned",
                            labels=("service", "resource_type", "outcome"))
    for key in sorted(tally.sweep):
        c.add_metric(key, tally.sweep[key])
    found.append(c)
    found.append(GaugeMetricFamily("crashup_journal_skipped_lines", "Journal lines that were not events, or events "
                                   "whose fields could not be read", value=tally.broken_lines + tally.unreadable))
    if requests is not None:
        held = collections.Counter(r.hold for r in requests.values() if r.open)
        g = GaugeMetricFamily("crashup_recovery_requests_open", "Open recovery requests by what holds them",
                              labels=("hold",))
        for hold in Hold:
            g.add_metric((hold.value,), held[hold])
        found.append(g)
        found.append(GaugeMetricFamily("crashup_storm_guard_held_hosts", "Hosts the storm guard holds now",
                                       value=held[Hold.STORM]))
    return found


class _Fixed:
    """A collector of families computed already (under the caller's lock)."""

    def __init__(self, found: list):
        self.found = found

    def collect(self):
        return iter(self.found)


def registry(tally: Tally, requests: Mapping[str, RecoveryRequest] | None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(families(tally, requests)))
    return reg


def exposition(tally: Tally, requests: Mapping[str, RecoveryRequest] | None) -> str:
    """The Prometheus text format (what `crashup metrics` prints)."""
    return generate_latest(registry(tally, requests)).decode("utf-8")


def fold(found: "events.Events") -> Tally:
    """A Tally of events read from a journal (events.read), its malformed lines counted."""
    tally = Tally()
    for event in found:
        tally.add(event)
    tally.broken_lines = found.broken
    return tally


class Exporter:
    """The recovery daemon's textfile: a follower thread folds the journal into a Tally, a writer thread writes
    the file every `interval` once the journal has been read to its end (never partial counters)."""

    def __init__(self, textfile: str, journal: str, interval: float):
        self.textfile, self.journal, self.interval = textfile, journal, interval
        self.tally = Tally()
        self._lock = threading.Lock()             # the tally (the follower folds, the writer reads)
        self._file_lock = threading.Lock()        # a write and the removal at close
        self._requests: Mapping[str, RecoveryRequest] | None = None
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._failing = ""

    @classmethod
    def from_config(cls, cfg) -> "Exporter | None":
        textfile = cfg.get("metrics_textfile", "")
        if not textfile:
            return None
        return cls(textfile, cfg.get("journal", ""), cfg.get("metrics_interval", 15.0))

    def requests_seen(self, found: Mapping[str, RecoveryRequest]) -> None:
        """The daemon's watch: the requests it just read (an assignment: nothing more on its hot path)."""
        self._requests = found

    def start(self) -> None:
        if self.journal:
            threading.Thread(target=self._follow, name="metrics-journal", daemon=True).start()
        else:
            LOG.warning("metrics: no [events] journal: only the recovery requests are exported")
            self._caught_up.set()
        threading.Thread(target=self._write_loop, name="metrics-textfile", daemon=True).start()

    def _follow(self) -> None:
        while True:
            try:
                # the follower first (its position is taken now), then the journal so far: an event appended in
                # between is in both, and dropped the second time by its id
                tail = events.follow(self.journal, from_start=False, poll_interval=FOLLOW_POLL)
                found = events.read(self.journal)
                break
            except OSError as e:
                LOG.warning("metrics: the journal cannot be read: %s; trying again in %gs", e, self.interval)
                if self._stop.wait(self.interval):
                    return
        overlap = {e["id"] for e in found[-OVERLAP:]}
        with self._lock:
            self.tally = fold(found)
        self._caught_up.set()
        for event in tail:
            if overlap and event["id"] in overlap:
                continue
            overlap = set()
            with self._lock:
                self.tally.add(event)
                self.tally.broken_lines = found.broken + tail.broken

    def _write_loop(self) -> None:
        while not self._caught_up.wait(self.interval):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            self.write()
            self._stop.wait(self.interval)

    def write(self) -> None:
        """The textfile, by an atomic rename; a failure is one warning (and one line when it works again)."""
        with self._lock:
            reg = registry(self.tally, self._requests)
        try:
            with self._file_lock:
                if self._stop.is_set():
                    return                        # closed meanwhile: the file stays removed
                write_to_textfile(self.textfile, reg)
        except OSError as e:
            if str(e) != self._failing:
                LOG.warning("metrics: %s cannot be written: %s", self.textfile, e)
            self._failing = str(e)
            return
        if self._failing:
            LOG.info("metrics: %s written again", self.textfile)
        self._failing = ""

    def close(self) -> None:
        """Stop, and remove the textfile: a controller whose daemon stopped exposes nothing (a failover moved it)."""
        with self._file_lock:
            self._stop.set()
        try:
            os.unlink(self.textfile)
        except FileNotFoundError:
            pass
        except OSError as e:
            LOG.warning("metrics: %s not removed: %s", self.textfile, e)

