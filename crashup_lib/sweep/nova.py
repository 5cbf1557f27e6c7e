"""nova: instances stuck in a task (or in vm_state building with none), in every cell database.

The scan reads nova's `instances` table of each cell (cell0 holds the instances that never got a host, cell1.. the
others): not deleted, task_state one of rules.stuck_states('nova', 'instance') or vm_state building with no task,
updated_at older than recovery_stale_period. Resets go through os-resetState (crashup_lib.nova's reset_state: it can
set vm_state active or error and clears the task); what it cannot express (clear the task and keep the vm_state,
vm_state stopped/paused/suspended/resized) is a compare-and-swap on the cell's row, guarded by task_state, vm_state
and updated_at as read.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from crashup_lib import rules
from crashup_lib.health import Resource
from crashup_lib.sweep.db import Database
from crashup_lib.sweep.scan import Stuck, stale_clause

COLUMNS = ("id", "uuid", "host", "node", "vm_state", "task_state", "power_state", "updated_at", "created_at",
           "deleted")
PLACEMENT_COLUMNS = ("uuid", "host", "vm_state", "task_state", "deleted", "deleted_at")
INSTANCE_NAME = "instance-%08x"     # nova's default instance_name_template: the libvirt domain's name


class NovaSweeper:
    service = "nova"

    def __init__(self, cells: Sequence[Database], api=None):
        """cells: each cell database (cell0 too); api: a crashup_lib.nova.Nova, or anything with its
        reset_state(server_id, state)."""
        self.cells, self.api = tuple(cells), api

    def scan(self, before) -> list[Stuck]:
        import sqlalchemy as sa
        tasks = rules.stuck_states("nova", "instance")
        vm_states = rules.stuck_states("nova", "instance_vm_state")
        found: list[Stuck] = []
        for cell in self.cells:
            t = cell.table("instances", COLUMNS)
            query = (sa.select(*[t.c[c] for c in COLUMNS])
                     .where(t.c.deleted == 0,
                            sa.or_(t.c.task_state.in_(tasks),
                                   sa.and_(t.c.task_state.is_(None), t.c.vm_state.in_(vm_states))),
                            stale_clause(sa, t.c.updated_at, t.c.created_at, before))
                     .order_by(t.c.updated_at, t.c.id))
            found += [self._stuck(cell, row) for row in cell.rows(query)]
        return found

    @staticmethod
    def _stuck(cell: Database, row: Mapping[str, Any]) -> Stuck:
        kind, state = ("instance", row["task_state"]) if row["task_state"] else ("instance_vm_state",
                                                                               row["vm_state"])
        extra = {"vm_state": row["vm_state"], "task_state": row["task_state"], "power_state": row["power_state"],
                 "node": row["node"], "name": INSTANCE_NAME % row["id"]}
        expect = {"task_state": row["task_state"], "vm_state": row["vm_state"], "updated_at": row["updated_at"]}
        return Stuck("nova", kind, row["uuid"], state, row["host"], row["updated_at"], extra, expect, cell.name,
                     cell)

    def resource(self, stuck: Stuck) -> Resource:
        return Resource("nova", stuck.kind, stuck.id, stuck.host, stuck.extra.get("name"), dict(stuck.extra))

    def _table(self, stuck: Stuck):
        return stuck.db.table("instances", COLUMNS)

    def unchanged(self, stuck: Stuck) -> bool:
        return stuck.db.matches(self._table(stuck), {"uuid": stuck.id, "deleted": 0}, stuck.expect)

    def reset(self, stuck: Stuck, values: Mapping[str, Any]) -> None:
        if self.api is None:
            raise RuntimeError("nova: no compute API client to reset the state with")
        if values.get("task_state") is not None or set(values) - {"vm_state", "task_state"}:
            raise ValueError(f"os-resetState cannot set {dict(values)}")     # rules.check() keeps this away
        self.api.reset_state(stuck.id, values["vm_state"])

    def cas(self, stuck: Stuck, values: Mapping[str, Any]) -> bool:
        return stuck.db.cas_update(self._table(stuck), {"uuid": stuck.id, "deleted": 0}, stuck.expect, values)

    # ------------------------------------------------------------------ what the orphan pass reads (sweep/orphans.py)
    def hosts(self) -> set[str]:
        """The hosts of the non-deleted instances of every cell."""
        return self._hosts_of("instances", PLACEMENT_COLUMNS)

    def compute_hosts(self) -> set[str]:
        """The hosts of the cells' compute nodes (a hypervisor with no instance left may still hold guests)."""
        return self._hosts_of("compute_nodes", ("host", "deleted"))

    def _hosts_of(self, table: str, columns: Sequence[str]) -> set[str]:
        import sqlalchemy as sa
        found: set[str] = set()
        for cell in self.cells:
            t = cell.table(table, columns)
            query = sa.select(t.c.host).where(t.c.deleted == 0, t.c.host.is_not(None)).distinct()
            found |= {r["host"] for r in cell.rows(query)}
        return found

    def placements(self, uuids) -> dict[str, list[dict[str, Any]]]:
        """uuid -> its instance rows in every cell, deleted ones too (PLACEMENT_COLUMNS)."""
        import sqlalchemy as sa
        uuids = sorted(set(uuids))
        found: dict[str, list[dict[str, Any]]] = {}
        for cell in self.cells:
            t = cell.table("instances", PLACEMENT_COLUMNS)
            for i in range(0, len(uuids), 500):             # bounded IN lists
                for row in cell.rows(sa.select(*[t.c[c] for c in PLACEMENT_COLUMNS])
                                     .where(t.c.uuid.in_(uuids[i:i + 500]))):
                    found.setdefault(row["uuid"], []).append(row)
        return found
