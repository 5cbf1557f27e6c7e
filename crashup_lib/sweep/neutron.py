"""neutron: ports stuck in BUILD, routers stuck in ALLOCATING.

neutron keeps every resource's timestamps and revision in `standardattributes` (ports.standard_attr_id,
routers.standard_attr_id); a port's host is its ACTIVE binding (`ml2_port_bindings`). Rows are deleted for real,
there is no deleted column. The status is not settable through the API (allow_put False), so every change is a
compare-and-swap in one transaction: the standard attributes row while updated_at and revision_number are as read
(stamped now, revision bumped, as neutron does on every change, so clients' If-Match revisions see it), then the
resource row while its status is as read; either finding the row moved on rolls both back.
"""
from __future__ import annotations

from typing import Any, Mapping

from crashup_lib import rules
from crashup_lib.health import Resource
from crashup_lib.sweep.db import Database, update, utcnow
from crashup_lib.sweep.scan import Stuck, stale_clause

TABLES = {"port": ("ports", ("id", "status", "device_id", "device_owner", "standard_attr_id")),
          "router": ("routers", ("id", "status", "standard_attr_id"))}
STANDARD_COLUMNS = ("id", "created_at", "updated_at", "revision_number")
BINDING_COLUMNS = ("port_id", "host", "status")


class NeutronSweeper:
    service = "neutron"

    def __init__(self, database: Database):
        self.db = database

    def _table(self, kind: str):
        name, columns = TABLES[kind]
        return self.db.table(name, columns)

    def _standard(self):
        return self.db.table("standardattributes", STANDARD_COLUMNS)

    def scan(self, before) -> list[Stuck]:
        import sqlalchemy as sa
        sa_t = self._standard()
        found: list[Stuck] = []
        for kind, (_, columns) in TABLES.items():
            t = self._table(kind)
            selected = [t.c[c] for c in columns] + [sa_t.c.updated_at, sa_t.c.revision_number]
            joined = t.join(sa_t, sa_t.c.id == t.c.standard_attr_id)
            if kind == "port":
                b = self.db.table("ml2_port_bindings", BINDING_COLUMNS)
                joined = joined.outerjoin(b, sa.and_(b.c.port_id == t.c.id, b.c.status == "ACTIVE"))
                selected.append(b.c.host)
            query = (sa.select(*selected).select_from(joined)
                     .where(t.c.status.in_(rules.stuck_states("neutron", kind)),
                            stale_clause(sa, sa_t.c.updated_at, sa_t.c.created_at, before))
                     .order_by(sa_t.c.updated_at, t.c.id))
            for row in self.db.rows(query):
                extra = {c: row[c] for c in columns if c not in ("id", "status")}
                extra["revision_number"] = row["revision_number"]
                expect = {"status": row["status"], "updated_at": row["updated_at"],
                          "revision_number": row["revision_number"]}
                found.append(Stuck("neutron", kind, row["id"], row["status"], row.get("host"), row["updated_at"],
                                   extra, expect, self.db.name, self.db))
        return found

    def resource(self, stuck: Stuck) -> Resource:
        return Resource("neutron", stuck.kind, stuck.id, stuck.host, None, dict(stuck.extra))

    def unchanged(self, stuck: Stuck) -> bool:
        import sqlalchemy as sa
        t, sa_t = self._table(stuck.kind), self._standard()
        e = stuck.expect
        query = (sa.select(sa.func.count()).select_from(t.join(sa_t, sa_t.c.id == t.c.standard_attr_id))
                 .where(t.c.id == stuck.id, t.c.status == e["status"],
                        sa_t.c.updated_at.is_not_distinct_from(e["updated_at"]),
                        sa_t.c.revision_number == e["revision_number"]))
        return self.db.scalar(query) == 1

    def reset(self, stuck: Stuck, values: Mapping[str, Any]) -> None:
        raise RuntimeError("neutron has no API that sets a port's or router's status")   # allow_put False

    def cas(self, stuck: Stuck, values: Mapping[str, Any]) -> bool:
        t, sa_t = self._table(stuck.kind), self._standard()
        e = stuck.expect
        try:
            with self.db.begin() as conn:
                if update(conn, sa_t, {"id": stuck.extra["standard_attr_id"]},
                          {"updated_at": e["updated_at"], "revision_number": e["revision_number"]},
                          {"revision_number": sa_t.c.revision_number + 1}, now=utcnow()) != 1:
                    raise _Moved
                if update(conn, t, {"id": stuck.id}, {"status": e["status"]}, values, stamp=None) != 1:
                    raise _Moved                      # rolls the stamp back too
        except _Moved:
            return False
        return True


class _Moved(Exception):
    """The row moved on since the scan: the transaction is rolled back."""
