"""What the sweep's scanners find: a resource stuck in a state for longer than recovery_stale_period.

Each service module (nova.py, cinder.py, glance.py, neutron.py) reads its own tables and returns `Stuck` records;
everything after the scan (observe, decide, fix) works on these alone.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Mapping

from crashup_lib import rules


@dataclasses.dataclass(frozen=True)
class Stuck:
    service: str                    # nova, cinder, glance, neutron
    kind: str                       # the rules' kind: instance, instance_vm_state, volume, backup, image, port, ...
    id: str                         # the resource's UUID
    state: str                      # the stuck state, the value of the kind's column (rules.kind_of().column)
    host: str | None                # the host the resource lives on, as its service records it
    updated_at: _dt.datetime | None  # as read: the compare-and-swap's guard (with `expect`)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)
    #: the columns a change must still find as read (the state column, updated_at, what the decision used)
    expect: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)
    where: str = ""                 # which database it was read from (e.g. 'nova cell1'), for logs
    db: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @property
    def column(self) -> str:
        return rules.kind_of(self.service, self.kind).column

    def __str__(self) -> str:
        return f"{self.service} {self.kind} {self.id}"

    def since(self) -> str:
        return self.updated_at.strftime("%Y-%m-%d %H:%M:%SZ") if self.updated_at else "its creation"


def cutoff(stale_period: float, now: _dt.datetime) -> _dt.datetime:
    """Rows last updated before this are stale (naive UTC, as the services store updated_at)."""
    return now - _dt.timedelta(seconds=stale_period)


def stale_clause(sa, updated_at, created_at, before: _dt.datetime):
    """updated_at older than `before`; a row never updated (NULL) counts from its creation. Written as an OR
    rather than coalesce() so the services' (state, updated_at) indexes stay usable."""
    return sa.or_(updated_at < before, sa.and_(updated_at.is_(None), created_at < before))
