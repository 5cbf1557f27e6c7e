#!/usr/bin/env python3
"""The CrashUp sweep's scan over 100,000 nova instance rows, on sqlite and on MariaDB (issue 7).

For each backend: a nova cell database made by nova's own migrations (tests/lab/schemas.py), filled with a
realistic instances table (50 hosts; mostly active; ~1 % stuck in a task from rules.stuck_states('nova',
'instance') for longer than recovery_stale_period; fresher tasks and deleted rows the scan must not pick), then
crashup_lib.sweep.nova.NovaSweeper.scan() timed over several runs.  Prints the medians, rows/s and the query plan
(EXPLAIN); never asserts a timing (exit 1 only if the scan finds the wrong rows).  Goal: scan <= 1 s.

    python bench/sweep.py [--rows 100000] [--runs 7] [--backend sqlite|mariadb|both] [--analyze]

Needs the schemas venv (make schemas-venv) and, for MariaDB, Debian's mariadb-server (make deps).
"""
from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import random
import statistics
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from crashup_lib import rules  # noqa: E402
from crashup_lib.sweep.db import Database, DbError, utcnow  # noqa: E402
from crashup_lib.sweep.nova import NovaSweeper  # noqa: E402
from crashup_lib.sweep.scan import cutoff  # noqa: E402
from tests.lab import mariadb, schemas  # noqa: E402

STALE_PERIOD = 600.0          # recovery_stale_period's default
HOSTS = [f"compute-{i:03d}" for i in range(1, 51)]
# the vm_state a task starts from (nova/compute/api.py check_instance_state), so rows look like nova's
TASK_VM_STATE = {"scheduling": "building", "block_device_mapping": "building", "networking": "building",
                 "spawning": "building", "powering-on": "stopped", "unpausing": "paused", "resuming": "suspended",
                 "unrescuing": "rescued", "unshelving": "shelved_offloaded", "resize_reverting": "resized",
                 "resize_confirming": "resized", "restoring": "soft-deleted"}
POWER = {"active": 1, "building": 0, "stopped": 4, "paused": 3, "suspended": 7, "rescued": 1, "resized": 1,
         "error": 0, "shelved_offloaded": 0, "soft-deleted": 4, "deleted": 0}
USER_DATA = "I2Nsb3VkLWNvbmZpZwpwYWNrYWdlczogW25naW54XQo=" * 12     # ~0.5 KB of base64 cloud-init, as many have


def make_rows(n: int, now: dt.datetime, seed: int = 7) -> tuple[list[dict], int]:
    """n instance rows and how many of them the scan must find."""
    rng = random.Random(seed)
    tasks = rules.stuck_states("nova", "instance")
    stale_vm = set(rules.stuck_states("nova", "instance_vm_state"))
    before = cutoff(STALE_PERIOD, now)
    rows, expected = [], 0
    for i in range(1, n + 1):
        host = rng.choice(HOSTS)
        created = now - dt.timedelta(seconds=rng.uniform(3600, 365 * 86400))
        updated = min(now, created + dt.timedelta(seconds=rng.uniform(60, 90 * 86400)))
        task, deleted, deleted_at = None, 0, None
        r = rng.random()
        if r < 0.05:                                   # deleted (nova: deleted = id); a tenth kept a stale task
            vm = "deleted"
            deleted, deleted_at = i, updated
            if rng.random() < 0.1:
                task = "deleting"
                updated = now - dt.timedelta(seconds=rng.uniform(STALE_PERIOD + 60, 3 * 86400))
        elif r < 0.06:                                 # stuck: a task older than the stale period
            task = rng.choice(tasks)
            vm = TASK_VM_STATE.get(task, "active")
            updated = now - dt.timedelta(seconds=rng.uniform(STALE_PERIOD + 60, 3 * 86400))
            if rng.random() < 0.05:                    # never updated since it was created
                created, updated = updated, None
        elif r < 0.065:                                # a task in progress: must not be picked
            task = rng.choice(tasks)
            vm = TASK_VM_STATE.get(task, "active")
            updated = now - dt.timedelta(seconds=rng.uniform(0, STALE_PERIOD - 60))
        elif r < 0.066:                                # building with no task for too long: picked
            vm = "building"
            updated = now - dt.timedelta(seconds=rng.uniform(STALE_PERIOD + 60, 86400))
        else:
            vm = rng.choices(("active", "stopped", "error", "shelved_offloaded", "paused"),
                             (90, 7, 1, 1.5, 0.5))[0]
        if deleted == 0 and (updated or created) < before and (task in tasks or (task is None and vm in stale_vm)):
            expected += 1
        rows.append({
            "id": i, "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "created_at": created, "updated_at": updated, "deleted_at": deleted_at, "deleted": deleted,
            "user_id": f"user{rng.randrange(2000):04d}", "project_id": f"{rng.randrange(500):032x}",
            "image_ref": "155d900f-4e14-4e4c-a73d-069cbf4541e6", "hostname": f"vm-{i}", "display_name": f"vm-{i}",
            "host": None if vm == "shelved_offloaded" else host,
            "node": None if vm == "shelved_offloaded" else f"{host}.example.org", "launched_on": host,
            "vm_state": vm, "task_state": task, "power_state": POWER.get(vm, 0),
            "memory_mb": rng.choice((512, 2048, 4096, 8192)), "vcpus": rng.choice((1, 2, 4, 8)), "root_gb": 20,
            "ephemeral_gb": 0, "instance_type_id": rng.randrange(1, 12), "availability_zone": "nova",
            "reservation_id": f"r-{rng.getrandbits(32):08x}", "launch_index": 0, "locked": False, "cleaned": 0,
            "hidden": False, "launched_at": created if vm != "building" else None, "config_drive": "",
            "user_data": USER_DATA if rng.random() < 0.3 else None, "compute_id": HOSTS.index(host) + 1,
        })
    return rows, expected


def fill(url: str, rows: list[dict], batch: int = 5000) -> float:
    """Bulk insert (executemany per batch, one transaction per batch); returns seconds."""
    engine = sa.create_engine(url)
    try:
        table = sa.Table("instances", sa.MetaData(), autoload_with=engine)
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            with engine.begin() as conn:
                conn.execute(table.insert(), rows[i:i + batch])
        return time.perf_counter() - t0
    finally:
        engine.dispose()


def explain(db: Database, run) -> list[str]:
    """The last query on `instances` that `run()` sent (its SQL as the driver got it, caught at the cursor), run
    under EXPLAIN."""
    seen: list = []

    def catch(conn, cursor, statement, parameters, context, executemany):
        if "FROM instances" in statement and not statement.lstrip().upper().startswith("EXPLAIN"):
            seen.append((statement, parameters))
    sa.event.listen(db.engine, "before_cursor_execute", catch)
    try:
        run()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", catch)
    return _plan(db, *seen[-1])


def reference_query(db: Database, before: dt.datetime):
    """Not the sweep's: the plain query of the issue (task_state IN (...) AND updated_at < cutoff AND deleted = 0),
    which nova's index instances_task_state_updated_at_idx (task_state, updated_at) can serve; timed and explained
    beside the scanner's to show what its OR branches (updated_at NULL, vm_state building) cost."""
    t = db.table("instances", ("uuid", "host", "vm_state", "task_state", "updated_at", "deleted"))
    return (sa.select(t.c.uuid, t.c.host, t.c.vm_state, t.c.task_state, t.c.updated_at)
            .where(t.c.task_state.in_(rules.stuck_states("nova", "instance")), t.c.updated_at < before,
                   t.c.deleted == 0))


def _plan(db: Database, statement, params) -> list[str]:
    prefix = "EXPLAIN QUERY PLAN " if db.engine.dialect.name == "sqlite" else "EXPLAIN "
    with db.engine.connect() as conn:
        result = conn.exec_driver_sql(prefix + statement, params)
        names = list(result.keys())
        return [", ".join(f"{k}={v}" for k, v in zip(names, row) if v is not None and k not in ("parent", "notused"))
                for row in result]


def _timed(fn, runs: int) -> tuple[float, float, float, object]:
    out = fn()                                              # warm-up: reflection, page cache, buffer pool
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times), out


def bench(label: str, url: str, rows: list[dict], expected: int, now: dt.datetime, runs: int,
          schema_s: float, analyze: bool) -> bool:
    fill_s = fill(url, rows)
    db = Database(url, name=f"nova cell1 ({label})")
    if analyze:                 # planner statistics; nova never runs ANALYZE, InnoDB samples by itself
        with db.begin() as conn:
            conn.exec_driver_sql("ANALYZE" if db.engine.dialect.name == "sqlite" else "ANALYZE TABLE instances")
        label += ", after ANALYZE"
    sweeper = NovaSweeper([db])
    before = cutoff(STALE_PERIOD, now)
    med, lo, hi, found = _timed(lambda: sweeper.scan(before), runs)
    print(f"\n{label}: {len(rows):,} instances; nova schema by nova's migrations in {schema_s:.1f} s; "
          f"bulk insert {fill_s:.1f} s ({len(rows) / fill_s:,.0f} rows/s)")
    print(f"  scan  NovaSweeper.scan(): median {med * 1000:.1f} ms (min {lo * 1000:.1f}, max {hi * 1000:.1f}, "
          f"n={runs}) = {len(rows) / med:,.0f} table rows/s; found {len(found)} stuck (expected {expected})")
    for line in explain(db, lambda: sweeper.scan(before)):
        print(f"    plan  {line}")
    ref = reference_query(db, before)
    rmed, rlo, rhi, rfound = _timed(lambda: db.rows(ref), runs)
    print(f"  reference query (task_state IN .. AND updated_at < cutoff AND deleted = 0, not the sweep's): "
          f"median {rmed * 1000:.1f} ms (min {rlo * 1000:.1f}, max {rhi * 1000:.1f}) = {len(rows) / rmed:,.0f} "
          f"table rows/s; {len(rfound)} rows")
    for line in explain(db, lambda: db.rows(ref)):
        print(f"    plan  {line}")
    db.engine.dispose()
    if len(found) != expected:
        print(f"  WRONG: the scan found {len(found)} rows, the data holds {expected}", file=sys.stderr)
    return len(found) == expected


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--backend", choices=("sqlite", "mariadb", "both"), default="both")
    p.add_argument("--analyze", action="store_true", help="run ANALYZE after the bulk insert (planner statistics)")
    a = p.parse_args(argv)
    if not schemas.venv_is_current():
        print(f"bench: schemas venv {schemas.VENV} missing or out of date: make schemas-venv", file=sys.stderr)
        return 1
    now = utcnow()
    t0 = time.perf_counter()
    rows, expected = make_rows(a.rows, now)
    print(f"{a.rows:,} rows generated in {time.perf_counter() - t0:.1f} s: {expected} stuck longer than "
          f"{STALE_PERIOD:.0f} s; goal: scan <= 1 s")
    ok = True
    try:
        if a.backend in ("sqlite", "both"):
            with tempfile.TemporaryDirectory(prefix="crashup-bench-") as tmp:
                t0 = time.perf_counter()
                path = schemas.sqlite_schema("nova", tmp)          # cached after the first run: ~0 s
                ok &= bench("sqlite", f"sqlite:///{path}", rows, expected, now, a.runs, time.perf_counter() - t0,
                            a.analyze)
        if a.backend in ("mariadb", "both"):
            why = mariadb.available()
            if why:
                print(f"\nmariadb: skipped: {why}")
            else:
                with mariadb.MariaDB() as server:
                    t0 = time.perf_counter()
                    url = server.create_database("nova_cell1")
                    schemas.make_schema("nova", url)
                    version = server.query("SELECT VERSION();")[0][0]
                    ok &= bench(f"MariaDB {version.split('-')[0]}", url, rows, expected, now, a.runs,
                                time.perf_counter() - t0, a.analyze)
    except (schemas.SchemaError, mariadb.MariaDBError, DbError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except sa.exc.SQLAlchemyError as e:         # the bulk insert's own engine; the driver's line names no password
        print(f"bench: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
