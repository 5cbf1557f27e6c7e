"""The CrashUp sweep on nova's real cell schema: scan, plan, apply (API or compare-and-swap), races, dry run,
unsettled observations, events, failures of one service, the daemon's loop."""
import datetime as dt
import logging
import os
import signal
import threading

import pytest

from crashup_lib import rules
from crashup_lib.health import Collector, Observation, StaticBackend
from crashup_lib.nova import NovaUnavailable
from crashup_lib.sweep import daemon, fix
from crashup_lib.sweep.db import Database, DbError
from crashup_lib.sweep.nova import NovaSweeper
from crashup_lib.sweep.scan import cutoff
from crashup_lib.sweep.sweep import sweep_once
from tests.sweep_helpers import (FRESH, NOW, OLD, STALE, FakeCollector, FakeNova, Journal, Rows, add_instance,
                                 nova_cell_pristine, nova_cells, validator)

__all__ = ["nova_cell_pristine", "nova_cells"]         # fixtures used by name


@pytest.fixture
def logs(caplog):
    logging.getLogger("crashup").propagate = True       # another test's log.setup() may have turned it off
    caplog.set_level(logging.DEBUG, logger="crashup")
    return caplog


@pytest.fixture
def cell(nova_cells):
    rows = Rows(nova_cells[1])
    yield rows
    rows.close()


@pytest.fixture
def nova(nova_cells):
    api = FakeNova()
    sweeper = NovaSweeper([Database(f"sqlite:///{p}", name=f"nova cell{i}", timeout=2)
                           for i, p in enumerate(nova_cells)], api)
    return sweeper, api


def scan(sweeper):
    return {s.id: s for s in sweeper.scan(cutoff(STALE, NOW))}


def sweep(sweeper, collector, emitter=None, **kw):
    return sweep_once([("nova", lambda: sweeper)], collector, emitter, stale_period=STALE, now=NOW, **kw)


# ------------------------------------------------------------------------------------------------------------- scan
def test_scan_finds_stuck_rows_older_than_the_stale_period_only(nova, cell, nova_cells):
    sweeper, _ = nova
    stuck = add_instance(cell, task_state="rebooting")
    fresh = add_instance(cell, task_state="rebooting", updated_at=FRESH)
    idle = add_instance(cell, task_state=None, vm_state="active")
    deleted = add_instance(cell, task_state="spawning", deleted=1)
    building = add_instance(cell, task_state=None, vm_state="building")
    never_updated = add_instance(cell, task_state="scheduling", vm_state="building", updated_at=None,
                                 created_at=OLD)
    young_never_updated = add_instance(cell, task_state="scheduling", updated_at=None, created_at=FRESH)
    unknown_task = add_instance(cell, task_state="some-future-task")
    cell0 = Rows(nova_cells[0])
    in_cell0 = add_instance(cell0, task_state="spawning", vm_state="building", host=None)
    cell0.close()

    found = scan(sweeper)
    assert set(found) == {stuck, building, never_updated, in_cell0}
    assert {fresh, idle, deleted, young_never_updated, unknown_task}.isdisjoint(found)
    s = found[stuck]
    assert (s.kind, s.state, s.host, s.where) == ("instance", "rebooting", "cmp1", "nova cell1")
    assert s.updated_at == OLD and s.extra["vm_state"] == "active" and s.extra["name"].startswith("instance-")
    assert (found[building].kind, found[building].state) == ("instance_vm_state", "building")
    assert found[never_updated].updated_at is None
    assert found[in_cell0].where == "nova cell0"


def test_scan_reads_only_the_columns_it_needs_and_names_a_missing_one(tmp_path):
    import sqlite3
    path = tmp_path / "not-nova.sqlite"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE instances (id INTEGER PRIMARY KEY, uuid TEXT, task_state TEXT)")
    sweeper = NovaSweeper([Database(f"sqlite:///{path}", name="nova cell1")])
    with pytest.raises(DbError, match=r"^nova cell1: table instances has no column host, node, vm_state"):
        sweeper.scan(NOW)


# --------------------------------------------------------------------------------------------- plan: pure decisions
def test_plan_routes_each_outcome_as_the_rules_say(nova, cell):
    sweeper, _ = nova
    ids = {
        "reboot": add_instance(cell, task_state="rebooting"),
        "poweroff": add_instance(cell, task_state="powering-off"),
        "snapshot_stopped": add_instance(cell, task_state="image_snapshot", vm_state="stopped"),
        "spawn": add_instance(cell, task_state="spawning", vm_state="building"),
        "delete": add_instance(cell, task_state="deleting"),
    }
    found = scan(sweeper)
    plan = {name: fix.plan(found[i], reality) for (name, i), reality in zip(
        ids.items(), ("running", "shut_off", "running", "absent", "running"))}
    assert (plan["reboot"].route, plan["reboot"].values) == (fix.API, {"vm_state": "active", "task_state": None})
    assert (plan["poweroff"].route, plan["poweroff"].values) == (fix.DB, {"vm_state": "stopped",
                                                                          "task_state": None})
    assert (plan["snapshot_stopped"].route, plan["snapshot_stopped"].values) == (fix.DB, {"task_state": None})
    assert isinstance(plan["spawn"].outcome, rules.Error)
    assert (plan["spawn"].route, plan["spawn"].values, plan["spawn"].action) == (
        fix.API, {"vm_state": "error", "task_state": None}, "reset-error")
    assert isinstance(plan["delete"].outcome, rules.Skip) and not plan["delete"].changes


# ------------------------------------------------------------------------------------------------------------ apply
def test_each_outcome_is_applied_through_the_api_or_the_database(nova, cell, tmp_path, logs):
    sweeper, api = nova
    journal = Journal(tmp_path / "events.jsonl")
    reboot = add_instance(cell, task_state="rebooting")
    poweroff = add_instance(cell, task_state="powering-off")
    spawn = add_instance(cell, task_state="spawning", vm_state="building")
    delete = add_instance(cell, task_state="deleting")
    collector = FakeCollector({reboot: "running", poweroff: "shut_off", spawn: "absent", delete: "running"})

    result = sweep(sweeper, collector, journal.emitter)

    assert result.ok and result.found == 4
    assert result.counts == {"reset": 1, "cas-update": 1, "error": 1, "skip": 1}
    assert sorted(api.calls) == sorted([(reboot, "active"), (spawn, "error")])
    row = cell.get("instances", uuid=poweroff)
    assert (row["vm_state"], row["task_state"]) == ("stopped", None)
    assert row["updated_at"] > OLD                      # stamped now, as nova would
    assert cell.get("instances", uuid=delete)["task_state"] == "deleting"
    assert cell.get("instances", uuid=reboot)["task_state"] == "rebooting"   # the API (a fake here) changes it

    by_subject = {e["subject"]: e for e in journal.events()}
    assert set(by_subject) == {reboot, poweroff, spawn}          # a skip is only logged
    assert by_subject[reboot]["type"] == fix.RECOVERED and by_subject[reboot]["payload"]["action"] == "reset-state"
    assert by_subject[poweroff]["payload"]["action"] == "cas-update"
    error = by_subject[spawn]
    assert error["type"] == fix.UNRECOVERABLE and error["payload"]["resource_type"] == "server"
    assert error["payload"]["state"] == "spawning" and "absent" in error["payload"]["reason"]
    v = validator()
    for event in journal.events():
        v.validate(event)
    assert any("deleting" in r.getMessage() and "skip" in r.getMessage() for r in logs.records)


def test_a_row_changed_between_scan_and_fix_is_not_overwritten(nova, cell, logs):
    sweeper, api = nova
    by_cas = add_instance(cell, task_state="powering-off")
    by_api = add_instance(cell, task_state="rebooting")
    task_changed = add_instance(cell, task_state="powering-off")
    found = scan(sweeper)
    # nova moves on meanwhile: a new save (updated_at), a new task
    cell.set("instances", {"uuid": by_cas}, updated_at=NOW)
    cell.set("instances", {"uuid": by_api}, task_state="rebooting_hard")
    cell.set("instances", {"uuid": task_changed}, task_state="powering-on")

    results = [fix.apply(fix.plan(found[by_cas], "shut_off"), sweeper),
               fix.apply(fix.plan(found[by_api], "running"), sweeper),
               fix.apply(fix.plan(found[task_changed], "shut_off"), sweeper)]

    assert results == [fix.LOST_RACE] * 3
    assert api.calls == []
    row = cell.get("instances", uuid=by_cas)
    assert (row["vm_state"], row["task_state"], row["updated_at"]) == ("active", "powering-off", NOW)
    assert cell.get("instances", uuid=task_changed)["task_state"] == "powering-on"
    assert sum("changed since read, left" in r.getMessage() for r in logs.records) == 3


def test_the_compare_and_swap_matches_a_null_updated_at(nova, cell):
    sweeper, _ = nova
    never = add_instance(cell, task_state="powering-off", updated_at=None, created_at=OLD)
    (stuck,) = scan(sweeper).values()
    assert stuck.updated_at is None
    assert fix.apply(fix.plan(stuck, "shut_off"), sweeper) == fix.CHANGED
    row = cell.get("instances", uuid=never)
    assert row["task_state"] is None and row["updated_at"] is not None


def test_dry_run_changes_no_row_and_calls_no_api(nova, cell, tmp_path):
    sweeper, api = nova
    journal = Journal(tmp_path / "events.jsonl")
    reboot = add_instance(cell, task_state="rebooting")
    poweroff = add_instance(cell, task_state="powering-off")
    before = {u: cell.get("instances", uuid=u) for u in (reboot, poweroff)}
    lines = []

    result = sweep(sweeper, FakeCollector({reboot: "running", poweroff: "shut_off"}), journal.emitter,
                   dry_run=True, say=lines.append)

    assert api.calls == [] and journal.events() == []
    assert {u: cell.get("instances", uuid=u) for u in before} == before
    assert result.counts == {"reset": 1, "cas-update": 1} and result.dry_run
    assert len(lines) == 2 and all(line.startswith("would ") for line in lines)
    assert any(reboot in line and "vm_state=active" in line and "os-resetState" in line for line in lines)
    assert any(poweroff in line and "vm_state=stopped" in line and "(CAS)" in line for line in lines)
    assert "dry run" in result.summary()


def test_an_unsettled_observation_causes_no_action(nova, cell):
    sweeper, api = nova
    spawn = add_instance(cell, task_state="spawning", vm_state="building")
    poweroff = add_instance(cell, task_state="powering-off")
    collector = FakeCollector(default="unknown", settled=False)
    result = sweep(sweeper, collector)
    assert result.counts == {"unsettled": 2}
    assert api.calls == []
    assert cell.get("instances", uuid=spawn)["vm_state"] == "building"
    assert cell.get("instances", uuid=poweroff)["task_state"] == "powering-off"


def test_a_real_collector_retries_unknown_then_the_rules_unknown_outcome_applies(nova, cell):
    sweeper, api = nova
    spawn = add_instance(cell, task_state="spawning", vm_state="building")
    backend = StaticBackend({}, default="unknown")
    slept = []
    collector = Collector({"nova": [backend]}, resync_count=2, resync_interval=5, sleep=slept.append)
    result = sweep(sweeper, collector)
    assert len(backend.calls) == 3 and slept == [5, 5]
    assert result.counts == {"error": 1} and api.calls == [(spawn, "error")]


def test_a_resource_with_no_backend_is_left(nova, cell):
    sweeper, api = nova
    add_instance(cell, task_state="spawning", vm_state="building")
    result = sweep(sweeper, Collector({"glance": [StaticBackend({})]}))
    assert result.counts == {"unobserved": 1} and api.calls == []


def test_an_orphan_is_reported_never_deleted(tmp_path):
    journal = Journal(tmp_path / "events.jsonl")
    stuck = fix.Stuck("glance", "image", "img-1", "queued", None, OLD, {}, {"status": "queued"}, "glance db")
    step = fix.plan(stuck, "running", "data in the store")

    class Refuses:
        def unchanged(self, s):
            raise AssertionError("a report reads nothing")
        reset = cas = unchanged

    assert isinstance(step.outcome, rules.Report) and not step.changes
    assert fix.apply(step, Refuses(), journal.emitter) == fix.REPORTED
    (event,) = journal.events()
    assert event["type"] == fix.ORPHANED and event["payload"]["action"] == "none"
    validator().validate(event)


# ------------------------------------------------------------------------------------------------------- failures
def test_an_api_failure_is_one_line_and_the_next_resource_goes_on(nova, cell, logs):
    sweeper, _ = nova
    sweeper.api = FakeNova(fail=NovaUnavailable("reset_state", "x", "HTTP 500: boom", status=500))
    add_instance(cell, task_state="rebooting")
    poweroff = add_instance(cell, task_state="powering-off")
    collector = FakeCollector(default="running")
    collector.answers[poweroff] = "shut_off"
    result = sweep(sweeper, collector)
    assert result.counts == {"failed": 1, "cas-update": 1} and not result.ok
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "HTTP 500: boom; left" in errors[0] and "\n" not in errors[0]
    assert cell.get("instances", uuid=poweroff)["vm_state"] == "stopped"


def test_a_service_that_fails_is_logged_and_the_next_one_is_swept(nova, cell, logs):
    sweeper, _ = nova
    poweroff = add_instance(cell, task_state="powering-off")

    def down():
        raise DbError("cinder db: query: (2003, \"Can't connect to MySQL server on '10.0.0.9' (timed out)\")")
    result = sweep_once([("cinder", down), ("nova", lambda: sweeper)], FakeCollector(default="shut_off"),
                        stale_period=STALE, now=NOW)
    assert result.failed_services == ["cinder"] and result.counts == {"cas-update": 1}
    assert cell.get("instances", uuid=poweroff)["vm_state"] == "stopped"
    (line,) = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]
    assert line.startswith("sweep: cinder: cinder db: query:") and line.endswith("; next service")
    assert "could not sweep cinder" in result.summary()


def test_a_locked_database_gives_one_line_within_its_timeout(nova_cells):
    import sqlite3
    import time
    holder = sqlite3.connect(nova_cells[1], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sweeper = NovaSweeper([Database(f"sqlite:///{nova_cells[1]}", name="nova cell1", timeout=1)])
        started = time.monotonic()
        with pytest.raises(DbError) as e:
            sweeper.scan(NOW)
        took = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "database is locked" in str(e.value) and str(e.value).startswith("nova cell1:")
    assert "\n" not in str(e.value) and "[SQL" not in str(e.value)
    assert 0.9 <= took < 5


# ---------------------------------------------------------------------------------------------------------- daemon
def test_the_daemon_loops_until_sigterm_and_survives_a_failing_round(logs):
    stop = threading.Event()
    rounds = []

    def one_round():
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("boom")
        if len(rounds) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert daemon.loop(one_round, 0.01, stop) == 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert len(rounds) == 3
    assert any("round failed: boom" in r.getMessage() for r in logs.records)


def test_stop_during_a_sweep_acts_on_nothing_more(nova, cell):
    sweeper, api = nova
    for _ in range(3):
        add_instance(cell, task_state="rebooting")
    stop = threading.Event()

    class StopsOnFirst(FakeCollector):
        def observe(self, resource):
            stop.set()                      # SIGTERM arrives while the first resource is being observed
            return super().observe(resource)

    result = sweep(sweeper, StopsOnFirst(default="running"), stopping=stop.is_set)
    assert result.counts == {"stopped": 1} and api.calls == []


def test_observation_time_is_what_the_rules_reason_names():
    stuck = fix.Stuck("nova", "instance", "u1", "rebooting", "cmp1", OLD, {"vm_state": "active"}, {}, "nova cell1")
    step = fix.plan(stuck, "running", "domain instance-00000001 is running")
    assert step.reason().startswith("task_state rebooting since 2025-01-31 10:00:00Z; observed running "
                                    "(domain instance-00000001 is running);")
    assert Observation("running", "").settled
    assert dt.datetime(2025, 1, 31, 11, 50) == cutoff(STALE, NOW)
