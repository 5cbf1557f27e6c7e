"""glance: images stuck in a status (saving, uploading, importing, pending_delete; queued is looked at, and left).

The scan reads glance's `images` with status per rules.stuck_states('glance', 'image') and updated_at older than
recovery_stale_period, with what the Health Collector's store backend checks (size, checksum, os_hash_*, the
image's `image_locations`). Images are not deleted but for pending_delete: glance marks those deleted when it
schedules the delayed delete, and its scrubber finishes them. glance has no API that sets a status: every change is
a compare-and-swap on the row; one that marks it deleted also stamps deleted_at, as glance's own image_destroy.
"""
from __future__ import annotations

from typing import Any, Mapping

from crashup_lib import rules
from crashup_lib.health import Resource
from crashup_lib.sweep.db import Database, utcnow
from crashup_lib.sweep.scan import Stuck, stale_clause

IMAGE_COLUMNS = ("id", "status", "size", "checksum", "os_hash_algo", "os_hash_value", "updated_at", "created_at",
                 "deleted", "deleted_at")
LOCATION_COLUMNS = ("image_id", "value", "deleted")
DELETED_ON_SCHEDULE = ("pending_delete",)      # glance marks these rows deleted already


class GlanceSweeper:
    service = "glance"

    def __init__(self, database: Database):
        self.db = database

    def _images(self):
        return self.db.table("images", IMAGE_COLUMNS)

    def scan(self, before) -> list[Stuck]:
        import sqlalchemy as sa
        t = self._images()
        loc = self.db.table("image_locations", LOCATION_COLUMNS)
        states = rules.stuck_states("glance", "image")
        query = (sa.select(*[t.c[c] for c in IMAGE_COLUMNS])
                 .where(t.c.status.in_(states),
                        sa.or_(t.c.deleted == sa.false(), t.c.status.in_(DELETED_ON_SCHEDULE)),
                        stale_clause(sa, t.c.updated_at, t.c.created_at, before))
                 .order_by(t.c.updated_at, t.c.id))
        rows = self.db.rows(query)
        locations: dict[str, list[dict]] = {}
        if rows:
            ids = [r["id"] for r in rows]
            for i in range(0, len(ids), 500):            # bounded IN lists
                query = sa.select(loc.c.image_id, loc.c.value).where(loc.c.image_id.in_(ids[i:i + 500]),
                                                                     loc.c.deleted == sa.false())
                for r in self.db.rows(query):
                    locations.setdefault(r["image_id"], []).append({"url": r["value"]})
        found = []
        for row in rows:
            extra = {c: row[c] for c in ("size", "checksum", "os_hash_algo", "os_hash_value", "deleted")}
            extra["locations"] = locations.get(row["id"], [])
            expect = {"status": row["status"], "deleted": row["deleted"], "updated_at": row["updated_at"]}
            found.append(Stuck("glance", "image", row["id"], row["status"], None, row["updated_at"], extra, expect,
                               self.db.name, self.db))
        return found

    def resource(self, stuck: Stuck) -> Resource:
        return Resource("glance", "image", stuck.id, None, None, dict(stuck.extra))

    def unchanged(self, stuck: Stuck) -> bool:
        return self.db.matches(self._images(), {"id": stuck.id}, stuck.expect)

    def reset(self, stuck: Stuck, values: Mapping[str, Any]) -> None:
        raise RuntimeError("glance has no API that sets an image's status")     # rules: api "" for images

    def cas(self, stuck: Stuck, values: Mapping[str, Any]) -> bool:
        values = dict(values)
        now = utcnow()
        if values.get("deleted") and not stuck.extra.get("deleted"):
            values.setdefault("deleted_at", now)
        return self.db.cas_update(self._images(), {"id": stuck.id}, stuck.expect, values, now=now)

    def image_rows(self, ids) -> dict[str, dict[str, Any]]:
        """id -> its image row, deleted ones too (the orphan pass, sweep/orphans.py)."""
        import sqlalchemy as sa
        t = self._images()
        ids = sorted(set(ids))
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):                   # bounded IN lists
            for row in self.db.rows(sa.select(t.c.id, t.c.status, t.c.deleted, t.c.deleted_at, t.c.updated_at)
                                    .where(t.c.id.in_(ids[i:i + 500]))):
                found[row["id"]] = row
        return found
