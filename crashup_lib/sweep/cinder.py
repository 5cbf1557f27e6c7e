"""cinder: volumes stuck in a status or a migration, backups stuck in a status.

The scan reads cinder's `volumes` (status per rules.stuck_states('cinder', 'volume'); migration_status per
'volume_migration': one row may be stuck in both, the second change then finds it moved on and leaves it to the
next sweep) and `backups`, not deleted, updated_at older than recovery_stale_period; for each volume, how many
attachments it keeps (`volume_attachment`, not deleted), which decides BY_ATTACHMENTS as cinder itself does.
Resets go through os-reset_status (volumes: status, attach_status, migration_status; backups: available|error);
what it cannot express (backup error_deleting) is a compare-and-swap on the row.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping

from crashup_lib import rules
from crashup_lib.health import HealthError, Resource
from crashup_lib.health import cinder as observe
from crashup_lib.sweep.db import Database
from crashup_lib.sweep.scan import Stuck, stale_clause

VOLUME_COLUMNS = ("id", "status", "attach_status", "migration_status", "host", "updated_at", "created_at",
                  "deleted")
ATTACHMENT_COLUMNS = ("volume_id", "instance_uuid", "attached_host", "attach_status", "deleted")
BACKUP_COLUMNS = ("id", "volume_id", "status", "host", "container", "service_metadata", "updated_at", "created_at",
                  "deleted")
TARGET = "target:"                      # a migration's destination volume has migration_status target:<source id>
#: the columns of a volume every change must still find as read, whichever kind it was found stuck as
VOLUME_GUARD = ("status", "attach_status", "migration_status", "updated_at")


class CinderSweeper:
    service = "cinder"

    def __init__(self, database: Database, api=None, observed: Collection[str] | None = None):
        """api: a CinderApi, or anything with its reset_status(kind, id, values). observed: the questions
        (health.cinder.CONNECTION, VOLUME_STORE, BACKUP_STORE) some backend answers; None: all."""
        self.db, self.api = database, api
        self.observed = None if observed is None else frozenset(observed)

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
        rows = self.db.rows(query)
        attached = self._attachments([r["id"] for r in rows if r["attachments"]])
        targets = self._targets([r["id"] for r in rows if r["migration_status"] in migrations])
        for row in rows:
            extra = {c: row[c] for c in ("status", "attach_status", "migration_status")}
            extra["attachments"] = row["attachments"]
            extra["volume_host"] = row["host"]
            extra["attached"] = attached.get(row["id"], ())
            extra["migration_target"] = targets.get(row["id"])
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
                        {c: row[c] for c in ("volume_id", "status", "container", "service_metadata")},
                        {"status": row["status"], "updated_at": row["updated_at"]}, self.db.name, self.db)
                  for row in self.db.rows(query)]
        return found

    def _attachments(self, ids) -> dict[str, tuple[observe.Attachment, ...]]:
        """volume id -> its attachments (not deleted), for the volumes that keep some."""
        import sqlalchemy as sa
        a = self.db.table("volume_attachment", ATTACHMENT_COLUMNS)
        found: dict[str, list] = {}
        for i in range(0, len(ids), 500):                # bounded IN lists
            query = (sa.select(a.c.volume_id, a.c.instance_uuid, a.c.attached_host, a.c.attach_status)
                     .where(a.c.volume_id.in_(ids[i:i + 500]), a.c.deleted == sa.false()))
            for r in self.db.rows(query):
                found.setdefault(r["volume_id"], []).append(
                    observe.Attachment(r["instance_uuid"], r["attached_host"], r["attach_status"]))
        return {k: tuple(v) for k, v in found.items()}

    def _targets(self, ids) -> dict[str, str]:
        """A migrating volume's id -> its destination volume's (the row cinder made with migration_status
        target:<source id>, not deleted)."""
        import sqlalchemy as sa
        v = self._volumes()
        found: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            query = sa.select(v.c.id, v.c.migration_status).where(
                v.c.migration_status.in_([TARGET + x for x in ids[i:i + 500]]), v.c.deleted == sa.false())
            for r in self.db.rows(query):
                found[r["migration_status"][len(TARGET):]] = r["id"]
        return found

    def resource(self, stuck: Stuck) -> Resource:
        """What the Health Collector is asked (see the module's docstring); HealthError when no backend answers."""
        record = dict(stuck.extra)
        asked = observe.question(stuck.kind, record.get("status"))
        if self.observed is not None and asked not in self.observed:
            raise HealthError(f"health: no backend observes the {asked} of cinder {stuck.kind}s "
                              f"({stuck.state})")
        host = stuck.host
        if asked == observe.CONNECTION:
            attachment = observe.task_attachment(record.get("status"), record.get("attached", ()))
            host = attachment.host if attachment else None
            record["instance_uuid"] = attachment.instance_uuid if attachment else None
        return Resource("cinder", stuck.kind, stuck.id, host, None, record)

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

