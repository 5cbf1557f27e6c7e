"""The model of the CrashUp decision tables: realities, outcomes, kinds and rows (plain data, no I/O).

Realities (what the Health Collector observed, about what the stuck task works on; each kind says what it means):
running, shut_off, absent, host_down, unknown for every kind, and for nova instances also paused and suspended.
`unknown` is applied only after the collector failed `recovery_resync_count` times.

Outcomes:
- Reset: through the service's own API, which can only express some states (nova os-resetState: vm_state active
  or error, task_state cleared; cinder os-reset_status: volume status, attach_status, migration_status; backups
  available or error). `check()` refuses a Reset the API cannot express.
- CasUpdate: a compare-and-swap write on the service's database, applied only while the row's state and
  updated_at are still what the scan read.
- Error: to the kind's error state (through the API where it can express it) and a
  `crashup.resource.stale_unrecoverable` alert.
- Skip: left as it is (the service itself finishes it, or only a person can decide), reported in the sweep's log.
- Keep: nothing is wrong (host recovery: an instance already in a state evacuation accepts).
- Report: left as it is, with a `crashup.resource.orphaned` event (something exists the database does not
  describe).
- ByVmState (nova only): the outcome depends on the instance's vm_state (nova keeps the vm_state a task started
  from until the task ends).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

RUNNING, PAUSED, SUSPENDED, SHUT_OFF, ABSENT, HOST_DOWN, UNKNOWN = (
    "running", "paused", "suspended", "shut_off", "absent", "host_down", "unknown")
CORE_REALITIES = (RUNNING, SHUT_OFF, ABSENT, HOST_DOWN, UNKNOWN)
ANY_STATE = "*"                       # a kind's row for states the table does not name
BY_ATTACHMENTS = "@by-attachments"    # cinder: in-use if the volume keeps attachments, else available (cinder's own
                                      # volume_update_status_based_on_attachment); the fixer reads the attachments

Values = tuple[tuple[str, Any], ...]


def values_of(columns: dict[str, Any]) -> Values:
    """Columns and the values an outcome writes, as hashable data (sorted by column)."""
    return tuple(sorted(columns.items()))


def fmt_values(values: Values) -> str:
    """Values as the docs and check() show them: column=value, NULL for None."""
    shown = [(k, v) for k, v in values if (k, v) != ("task_state", None)] or values   # every nova outcome clears it
    return ", ".join(f"{k}={'NULL' if v is None else v}" for k, v in shown)


@dataclasses.dataclass(frozen=True)
class _Change:
    values: Values
    why: str = ""
    action: ClassVar[str] = ""
    verb: ClassVar[str] = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def short(self) -> str:
        return f"{self.verb} {fmt_values(self.values)}"


@dataclasses.dataclass(frozen=True)
class Reset(_Change):
    """Through the service's API (nova os-resetState, cinder os-reset_status)."""
    action: ClassVar[str] = "reset"
    verb: ClassVar[str] = "reset"


@dataclasses.dataclass(frozen=True)
class CasUpdate(_Change):
    """A compare-and-swap UPDATE on the service's database (state and updated_at as read)."""
    action: ClassVar[str] = "cas-update"
    verb: ClassVar[str] = "CAS"


@dataclasses.dataclass(frozen=True)
class Error:
    """To the kind's error state (values; empty: the kind's default) and a stale_unrecoverable alert."""
    why: str = ""
    values: Values = ()
    action: ClassVar[str] = "error"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def short(self) -> str:
        return f"**error** {fmt_values(self.values)}" if self.values else "**error**"


@dataclasses.dataclass(frozen=True)
class _Leave:
    why: str = ""
    action: ClassVar[str] = ""

    def short(self) -> str:
        return self.action


@dataclasses.dataclass(frozen=True)
class Skip(_Leave):
    """Left as it is (the service finishes it, or only a person can decide), logged."""
    action: ClassVar[str] = "skip"


@dataclasses.dataclass(frozen=True)
class Keep(_Leave):
    """Nothing is wrong."""
    action: ClassVar[str] = "keep"


@dataclasses.dataclass(frozen=True)
class Report(_Leave):
    """Left as it is, with a crashup.resource.orphaned event."""
    action: ClassVar[str] = "report"


Outcome = Reset | CasUpdate | Error | Skip | Keep | Report


@dataclasses.dataclass(frozen=True)
class ByVmState:
    """nova: the outcome for the instance's vm_state (the first case naming it, else `other`)."""
    cases: tuple[tuple[tuple[str, ...], Outcome], ...]
    other: Outcome
    label: str = ""                               # its name in the docs' tables (explained once under them)
    action: ClassVar[str] = "by-vm-state"

    def resolve(self, vm_state: str) -> Outcome:
        return next((o for states, o in self.cases if vm_state in states), self.other)

    def short(self) -> str:
        return self.label or self.expanded()

    def expanded(self) -> str:
        return "; ".join([f"{'/'.join(s)}: {o.short()}" for s, o in self.cases] + [f"else: {self.other.short()}"])


@dataclasses.dataclass(frozen=True)
class Kind:
    service: str
    kind: str
    column: str                                   # the column the stuck state is read from
    realities: tuple[tuple[str, str], ...]        # (reality, what it means for this kind)
    api: str                                      # the API that resets it ("" if none)
    api_columns: tuple[tuple[str, frozenset], ...]  # what that API can set, and to which values (None: NULL)
    error: Values                                 # what Error writes unless a row says otherwise

    @property
    def reality_names(self) -> tuple[str, ...]:
        return tuple(r for r, _ in self.realities)

    def api_can_set(self, values: Values) -> bool:
        allowed = dict(self.api_columns)
        return bool(allowed) and all(k in allowed and v in allowed[k] for k, v in values)


@dataclasses.dataclass(frozen=True)
class Rule:
    service: str
    kind: str
    state: str
    why: str
    outcomes: tuple[tuple[str, Outcome | ByVmState], ...]
    stuck: bool = True                            # the sweep scans for it (False: decided only when asked)

    def outcome(self, reality: str) -> Outcome | ByVmState:
        return dict(self.outcomes)[reality]


class UnknownState(KeyError):
    pass


def make_rows(service: str, kind: str, states: Iterable[str], why: str, realities: tuple[str, ...],
              default: Outcome | ByVmState, stuck: bool = True, **by_reality) -> list[Rule]:
    """One row per state, all with the same why: `default` for every reality but those named in by_reality."""
    unknown = set(by_reality) - set(realities)
    if unknown:
        raise ValueError(f"{service} {kind}: no such reality {sorted(unknown)}")
    outcomes = tuple((r, by_reality.get(r, default)) for r in realities)
    return [Rule(service, kind, s, why, outcomes, stuck) for s in states]
