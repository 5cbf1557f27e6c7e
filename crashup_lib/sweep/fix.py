"""From a stuck resource and what reality says, to the change (pure `plan`), then the change itself (`apply`).

plan(): the rules' outcome with its values made concrete (BY_ATTACHMENTS from the attachments the scan read) and
its route: the service's API where it can express the values (rules.via_api), else a compare-and-swap on the
database; no route for what changes nothing. This is all a dry run shows.

apply(): the only I/O, through the service module (a `Sweeper`):
- API: the row is read again first; if it moved on since the scan, nothing is called (the API itself has no
  compare-and-swap: os-resetState would overwrite a task that started meanwhile).
- database: one compare-and-swap UPDATE; 0 rows means the row moved on: left, logged, nothing else.
- Error: the kind's error state by the same routes, and a crashup.resource.stale_unrecoverable event.
- Report: a crashup.resource.orphaned event, nothing changed or deleted. Skip/Keep: logged only.
Every change emits crashup.resource.stale_recovered (or stale_unrecoverable) and is logged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

from crashup_lib import events, log, rules
from crashup_lib.sweep.scan import Stuck

API, DB = "api", "db"
CHANGED, LOST_RACE, LEFT, REPORTED = "changed", "lost-race", "left", "reported"
RECOVERED, UNRECOVERABLE, ORPHANED = (events.RESOURCE_STALE_RECOVERED, events.RESOURCE_STALE_UNRECOVERABLE,
                                      events.RESOURCE_ORPHANED)
#: the events' resource_type: the API's word for what the rules' kind is about
RESOURCE_TYPES = {"instance": "server", "instance_vm_state": "server", "volume_migration": "volume"}

_log = log.get("sweep")


class Sweeper(Protocol):
    """What a service module gives the sweep (nova.py, cinder.py, glance.py, neutron.py)."""
    service: str

    def scan(self, before) -> Sequence[Stuck]: ...          # rows in stuck states, updated before `before`
    def resource(self, stuck: Stuck): ...                   # the health.Resource the collector is asked about
    def unchanged(self, stuck: Stuck) -> bool: ...          # the row still holds stuck.expect
    def reset(self, stuck: Stuck, values: Mapping[str, Any]) -> None: ...   # through the service's API
    def cas(self, stuck: Stuck, values: Mapping[str, Any]) -> bool: ...     # compare-and-swap on its database


@dataclasses.dataclass(frozen=True)
class Step:
    stuck: Stuck
    reality: str
    detail: str                      # what the Health Collector saw (one line)
    outcome: rules.Outcome
    route: str                       # API, DB, or "" (nothing changes)
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.route)

    @property
    def action(self) -> str:
        """The event's action word."""
        if isinstance(self.outcome, rules.Error):
            return "reset-error" if self.route == API else "cas-error"
        if self.route:
            return "reset-state" if self.route == API else "cas-update"
        return "none"

    def target(self) -> str:
        if not self.values:
            return self.outcome.action
        shown = ", ".join(f"{k}={'NULL' if v is None else v}" for k, v in sorted(self.values.items()))
        how = rules.kind_of(self.stuck.service, self.stuck.kind).api if self.route == API else "CAS"
        return f"{self.outcome.action} {shown} ({how})"

    def reason(self) -> str:
        """One line: how long, what reality showed, why this outcome."""
        s = self.stuck
        return " ".join(f"{s.column} {s.state} since {s.since()}; observed {self.reality} ({self.detail}); "
                        f"{self.outcome.why}".split())

    def line(self) -> str:
        s = self.stuck
        where = f" on {s.host}" if s.host else ""
        return f"{s}{where} [{s.where}]: {self.target()}: {self.reason()}"


def concrete(values: Mapping[str, Any], stuck: Stuck) -> dict[str, Any]:
    """An outcome's values with BY_ATTACHMENTS resolved as cinder does (volume_update_status_based_on_attachment):
    in-use while the volume keeps attachments, else available."""
    return {k: (("in-use" if stuck.extra.get("attachments") else "available") if v == rules.BY_ATTACHMENTS else v)
            for k, v in values.items()}


def plan(stuck: Stuck, reality: str, detail: str = "") -> Step:
    """Pure: the step for a stuck resource and the reality the Health Collector settled on."""
    outcome = rules.decide(stuck.service, stuck.kind, stuck.state, reality, vm_state=stuck.extra.get("vm_state"))
    if isinstance(outcome, (rules.Reset, rules.CasUpdate, rules.Error)):
        route = API if rules.via_api(stuck.service, stuck.kind, outcome) else DB
        return Step(stuck, reality, detail, outcome, route, concrete(outcome.as_dict(), stuck))
    return Step(stuck, reality, detail, outcome, "")


def _emit(emitter, type_: str, step: Step) -> None:
    if emitter is None:
        return
    s = step.stuck
    payload = {"service": s.service, "resource_type": RESOURCE_TYPES.get(s.kind, s.kind), "id": s.id,
               "state": s.state, "action": step.action, "reason": step.reason()}
    try:
        emitter.publish(type_, s.id, payload)
    except Exception as e:          # noqa: BLE001 - the change is made; a lost event must not stop the sweep
        _log.error("sweep: %s: the %s event was not recorded: %s", s, type_, log.redact(str(e)))


def apply(step: Step, sweeper: Sweeper, emitter=None) -> str:
    """Carry out one step; CHANGED, LOST_RACE, LEFT or REPORTED. Errors of the API or database raise (the
    caller logs one line and goes on)."""
    s = step.stuck
    if isinstance(step.outcome, rules.Report):
        _log.warning("sweep: %s: reported, left as it is: %s", s, step.reason())
        _emit(emitter, ORPHANED, step)
        return REPORTED
    if not step.route:
        _log.info("sweep: %s: %s: %s", s, step.outcome.action, step.reason())
        return LEFT
    if step.route == API:
        done = sweeper.unchanged(s)
        if done:
            sweeper.reset(s, step.values)
    else:
        done = sweeper.cas(s, step.values)
    if not done:
        _log.info("sweep: %s: changed since read, left", s)
        return LOST_RACE
    error = isinstance(step.outcome, rules.Error)
    (_log.error if error else _log.warning)("sweep: %s: %s: %s", s, step.target(), step.reason())
    _emit(emitter, UNRECOVERABLE if error else RECOVERED, step)
    return CHANGED
