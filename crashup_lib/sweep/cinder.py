"""cinder: volumes stuck in a status or a migration, backups stuck in a status.

The scan reads cinder's `volumes` (status per rules.stuck_states('cinder', 'volume'); migration_status per
'volume_migration': one row may be stuck in both, the second change then finds it moved on and leaves it to the
next sweep) and `backups`, not deleted, updated_at older than recovery_stale_period; for each volume, how many
attachments it keeps (`volume_attachment`, not deleted), which decides BY_ATTACHMENTS as cinder itself does.
Resets go through os-reset_status (volumes: status, attach_status, migration_status; backups: available|error);
what it cannot express (backup error_deleting) is a compare-and-swap on the row.
"""
from __future__ import annotations

from typing import Any, Mapping

from crashup_lib import rules
from crashup_lib.health import Resource
from crashup_lib.sweep.db import Database
from crashup_lib.sweep.scan import Stuck, stale_clause

VOLUME_COLUMNS = ("id", "status", "attach_status", "migration_status", "host", "updated_at", "created_at",
                  "deleted")
ATTACHMENT_COLUMNS = ("volume_id", "instance_uuid", "attached_host", "attach_status", "deleted")
BACKUP_COLUMNS = ("id", "volume_id", "status", "host", "updated_at", "created_at", "deleted")
#: the columns of a volume every change must still find as read, whichever kind it was found stuck as
VOLUME_GUARD = ("status", "attach_status", "migration_status", "updated_at")


class CinderSweeper:
    service = "cinder"

    def __init__(self, database: Database, api=None):
        """api: a CinderApi, or anything with its reset_status(kind, id, values)."""
        self.db, self.api = database, api

    def _volumes(self):
        return self.db.table("volumes", VOLUME_COLUMNS)

    def _backups(self):
        return self.db.table("backups", BACKUP_COLUMNS)

    def scan(self, before) -> list[Stuck]:
        import sqlalchemy as sa
        v = self._volumes()
        a = self.db.table("volume_attachment", ATTACHMENT_COLUMNS)
        statuses = rules.stuck_states("cinder", "volume")
        migrations = rules.stuck_states("cinder", "volume_migration")
        attachments = (sa.select(sa.func.count()).where(a.c.volume_id == v.c.id, a.c.deleted == sa.false())
                       .scalar_subquery().label("attachments"))
        query = (sa.select(*[v.c[c] for c in VOLUME_COLUMNS], attachments)
                 .where(v.c.deleted == sa.false(),
                        sa.or_(v.c.status.in_(statuses), v.c.migration_status.in_(migrations)),
                        stale_clause(sa, v.c.updated_at, v.c.created_at, before))
                 .order_by(v.c.updated_at, v.c.id))
        found: list[Stuck] = []
        for row in self.db.rows(query):
            extra = {c: row[c] for c in ("status", "attach_status", "migration_status")}
            extra["attachments"] = row["attachments"]
            expect = {c: row[c] for c in VOLUME_GUARD}
            for kind, column, states in (("volume", "status", statuses),
                                         ("volume_migration", "migration_status", migrations)):
                if row[column] in states:
                    found.append(Stuck("cinder", kind, row["id"], row[column], row["host"], row["updated_at"],
                                       extra, expect, self.db.name, self.db))
        b = self._backups()
        query = (sa.select(*[b.c[c] for c in BACKUP_COLUMNS])
                 .where(b.c.deleted == sa.false(), b.c.status.in_(rules.stuck_states("cinder", "backup")),
                        stale_clause(sa, b.c.updated_at, b.c.created_at, before))
                 .order_by(b.c.updated_at, b.c.id))
        found += [Stuck("cinder", "backup", row["id"], row["status"], row["host"], row["updated_at"],
                        {"volume_id": row["volume_id"]},
                        {"status": row["status"], "updated_at": row["updated_at"]}, self.db.name, self.db)
                  for row in self.db.rows(query)]
        return found

    def resource(self, stuck: Stuck) -> Resource:
        return Resource("cinder", stuck.kind, stuck.id, stuck.host, None, dict(stuck.extra))

    def _table(self, stuck: Stuck):
        return self._backups() if stuck.kind == "backup" else self._volumes()

    def _key(self, stuck: Stuck) -> dict[str, Any]:
        return {"id": stuck.id, "deleted": False}

    def unchanged(self, stuck: Stuck) -> bool:
        return self.db.matches(self._table(stuck), self._key(stuck), stuck.expect)

    def reset(self, stuck: Stuck, values: Mapping[str, Any]) -> None:
        if self.api is None:
            raise RuntimeError("cinder: no block-storage API client to reset the status with")
        self.api.reset_status(stuck.kind, stuck.id, values)

    def cas(self, stuck: Stuck, values: Mapping[str, Any]) -> bool:
        return self.db.cas_update(self._table(stuck), self._key(stuck), stuck.expect, values)

