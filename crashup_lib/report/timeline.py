"""One recovery's timeline from the events journal: a pure function of the events (and the node's request).

A recovery, in the journal, is what the recovery pipeline emits for one host (recovery/pipeline.py):
  instance.repaired, host.storm, host.fencing_unconfirmed   before it hands the host over (may be none)
  host.failed      the recovery begins: its payload carries the fencing time (t = 0) and the instances
  instance.evacuated / instance.evacuation_failed            one per server (evacuated: duration_s back from
                                                             its time is the evacuate call)
  host.recovered   the end (auto mode; notify mode ends with `crashup release`, which emits nothing)
host.failed is emitted once per request, but at least once: a daemon stopped between it and saving its plan
says it again, with the same fencing time: the same recovery. A host.failed with another fencing time starts a new one. An event this reading cannot use (a field
absent or of the wrong kind) is counted in `skipped`, never fatal.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Iterable, Mapping

from crashup_lib import events
from crashup_lib.pacemaker import RecoveryRequest
from crashup_lib.report.fields import epoch, event_time, number, text

#: how far before the fencing time an early event (a repair, a storm) may be and still belong to the recovery:
#: the fencing time and the events' times come from different clocks' roundings
EARLY_SLACK = 2.0


class Kind(str, enum.Enum):
    """A milestone of a recovery."""
    FENCED = "fenced"                          # power off confirmed, request recorded (t = 0)
    UNCONFIRMED = "fencing_unconfirmed"        # Pacemaker's history did not confirm the fencing in time
    REPAIRED = "repaired"                      # a server's stale task reset before the evacuation
    STORM = "storm"                            # the storm guard held automatic evacuation
    BEGAN = "began"                            # host.failed: handed over (notify) or evacuation begins (auto)
    RECOVERED = "recovered"                    # host.recovered


class Outcome(str, enum.Enum):
    EVACUATED = "evacuated"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Mark:
    at: float                                  # epoch seconds
    kind: Kind
    label: str
    server_id: str = ""                        # a repair's server


@dataclasses.dataclass(frozen=True)
class Evacuation:
    server_id: str
    name: str
    outcome: Outcome
    start: float                               # the evacuate call (evacuated); the recovery's start (failed)
    end: float                                 # final state on the new host, or given up
    start_known: bool                          # False: a failure's first call is not in the journal
    target_host: str = ""
    detail: str = ""                           # power state and storage, or why it failed


@dataclasses.dataclass(frozen=True)
class Timeline:
    node: str
    host: str
    mode: str
    fenced_at: float                           # t = 0
    began_at: float
    instances: tuple[tuple[str, str], ...]     # (id, name) of every server on the host at the start
    marks: tuple[Mark, ...]
    evacuations: tuple[Evacuation, ...]
    recovered_at: float | None = None
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)   # host.recovered's evacuated/failed/...
    state: str = ""                            # the request's state, when it is this recovery's
    note: str = ""
    skipped: int = 0                           # events about it this reading could not use

    @property
    def end(self) -> float:
        times = [self.began_at, *(m.at for m in self.marks), *(e.end for e in self.evacuations)]
        return max(times + ([self.recovered_at] if self.recovered_at is not None else []))

    def since(self, at: float) -> float:
        """Seconds since the fencing."""
        return at - self.fenced_at


class NoRecovery(LookupError):
    """No recovery of the node in the journal (one line; `unknown` says the node is named nowhere at all)."""

    def __init__(self, line: str, unknown: bool = False):
        super().__init__(line)
        self.unknown = unknown


@dataclasses.dataclass
class _Open:
    node: str
    host: str
    mode: str
    fenced_at: float
    began_at: float
    instances: list[tuple[str, str]]
    marks: list[Mark]
    evacuations: dict[str, Evacuation] = dataclasses.field(default_factory=dict)
    skipped: int = 0

    def close(self, recovered_at: float | None = None, counts: Mapping[str, int] | None = None) -> Timeline:
        marks = sorted(self.marks, key=lambda m: m.at)
        evacs = sorted(self.evacuations.values(), key=lambda e: (e.start, e.end, e.name))
        return Timeline(self.node, self.host, self.mode, self.fenced_at, self.began_at, tuple(self.instances),
                        tuple(marks), tuple(evacs), recovered_at, dict(counts or {}), skipped=self.skipped)


def _instances(payload: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    items = payload.get("instances")
    if not isinstance(items, list):
        return None
    found = []
    for item in items:
        if isinstance(item, dict) and text(item, "id"):
            found.append((item["id"], item["name"] if isinstance(item.get("name"), str) else ""))
    return found


def _early_mark(event: Mapping[str, Any], at: float) -> tuple[str, Mark] | None:
    """(host or node it is about, its mark) for the events that come before host.failed."""
    p = event["payload"]
    if event["type"] == events.INSTANCE_REPAIRED and text(p, "host") and text(p, "id") and text(p, "action"):
        return p["host"], Mark(at, Kind.REPAIRED, f"{p['action']} (was {p.get('from_task_state') or '-'}, "
                                                  f"{p.get('from_vm_state') or '-'})", p["id"])
    if event["type"] == events.HOST_STORM and text(event, "subject"):
        return event["subject"], Mark(at, Kind.STORM, "storm guard: automatic evacuation stopped")
    if event["type"] == events.HOST_FENCING_UNCONFIRMED and text(p, "node"):
        return p["node"], Mark(at, Kind.UNCONFIRMED, f"fencing not confirmed: {text(p, 'reason') or '?'}")
    return None


_EARLY = (events.INSTANCE_REPAIRED, events.HOST_STORM, events.HOST_FENCING_UNCONFIRMED)
_MINE = (events.HOST_FAILED, events.HOST_RECOVERED, events.INSTANCE_EVACUATED, events.INSTANCE_EVACUATION_FAILED,
         *_EARLY)


def timelines(found: Iterable[Mapping[str, Any]]) -> list[Timeline]:
    """Every recovery in these events (journal order), finished or not, in the order they began."""
    done: list[Timeline] = []
    open_: dict[str, _Open] = {}                  # by nova host
    early: dict[str, list[Mark]] = {}             # by host or node: marks waiting for their host.failed
    for event in found:
        kind = event.get("type")
        payload = event.get("payload")
        at = event_time(event)
        if kind not in _MINE or not isinstance(payload, dict) or at is None:
            continue
        if kind in _EARLY:
            got = _early_mark(event, at)
            if got is not None:
                early.setdefault(got[0], []).append(got[1])
            continue
        if kind == events.HOST_FAILED:
            host, node, fenced = text(payload, "host"), text(payload, "node"), epoch(payload.get("fenced_at"))
            instances = _instances(payload)
            if host is None or node is None or fenced is None or instances is None:
                continue
            current = open_.get(host)
            if current is not None and abs(current.fenced_at - fenced) < 0.01:
                continue                          # a resumed recovery: the same one
            if current is not None:
                done.append(current.close())      # superseded: fenced again, or a notify recovery released
            marks = [Mark(fenced, Kind.FENCED, "fenced: power off confirmed, recovery request recorded")]
            for key in {host, node}:
                marks += [m for m in early.pop(key, []) if m.at >= fenced - EARLY_SLACK]
            marks.append(Mark(at, Kind.BEGAN, f"recovery began ({payload.get('mode')} mode): "
                                              f"{len(instances)} servers on the host"))
            open_[host] = _Open(node, host, text(payload, "mode") or "", fenced, at, instances, marks)
            continue
        source = text(payload, "source_host") or text(payload, "host")
        current = open_.get(source or "")
        if current is None:
            continue                              # its host.failed is not in this journal (rotated)
        if kind == events.HOST_RECOVERED:
            counts = {k: int(v) for k in ("evacuated", "failed", "skipped", "volumes_not_moved")
                      if (v := number(payload, k)) is not None}
            current.marks.append(Mark(at, Kind.RECOVERED, "recovered: " + ", ".join(f"{v} {k.replace('_', ' ')}"
                                                                                     for k, v in counts.items())))
            done.append(open_.pop(current.host).close(at, counts))
            continue
        evacuation = _evacuation(kind, payload, at, current.began_at)
        if evacuation is None:
            current.skipped += 1
        else:
            current.evacuations[evacuation.server_id] = evacuation
    done += [o.close() for o in open_.values()]
    return sorted(done, key=lambda t: t.fenced_at)


def _evacuation(kind: str, p: Mapping[str, Any], at: float, began_at: float) -> Evacuation | None:
    server_id = text(p, "id")
    if server_id is None:
        return None
    name = p["name"] if isinstance(p.get("name"), str) else ""
    if kind == events.INSTANCE_EVACUATED:
        took = number(p, "duration_s")
        if took is None:
            return None
        detail = ", ".join(f"{k} {p[k]}" for k in ("power_state", "storage") if text(p, k))
        return Evacuation(server_id, name, Outcome.EVACUATED, at - took, at, True, text(p, "target_host") or "",
                          detail)
    attempts = number(p, "attempts")
    return Evacuation(server_id, name, Outcome.FAILED, min(began_at, at), at, False, "",
                      f"{text(p, 'reason') or '?'} ({int(attempts) if attempts is not None else '?'} attempts)")


def named(found: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every node and host the journal's recovery events name (to tell an unknown node from one never recovered)."""
    names: set[str] = set()
    for event in found:
        payload = event.get("payload")
        if event.get("type") in _MINE and isinstance(payload, dict):
            names.update(v for k in ("node", "host", "source_host") if (v := text(payload, k)))
    return names


def select(found: list[Mapping[str, Any]], node: str, since: float | None = None,
           request: RecoveryRequest | None = None) -> Timeline:
    """The node's (Pacemaker node or nova host) latest recovery, or the first that began at or after `since`;
    with its request's state and note when the request is this recovery's. NoRecovery when there is none."""
    mine = [t for t in timelines(found) if node in (t.node, t.host)]
    if since is not None:
        mine = [t for t in mine if t.fenced_at >= since]
    if not mine:
        known = node in named(found) or request is not None
        when = f" since {events.rfc3339(since)}" if since is not None else ""
        raise NoRecovery(f"no recovery of {node}{when} in the journal" if known else
                         f"{node}: no such node in the journal's recoveries nor a recovery request in the CIB",
                         unknown=not known)
    chosen = mine[0] if since is not None else mine[-1]
    if request is not None and abs(request.fenced_at - chosen.fenced_at) < 0.01:
        chosen = dataclasses.replace(chosen, state=request.state, note=request.note)
    return chosen
