"""The sweep's cinder and glance scanners and fixers on the real schemas (made by their own db sync), neutron's on
its tables as neutron names them."""
import uuid

import pytest

from crashup_lib.health import Collector, GlanceFileBackend
from crashup_lib.sweep import fix
from crashup_lib.sweep.cinder import CinderSweeper
from crashup_lib.sweep.db import Database
from crashup_lib.sweep.glance import GlanceSweeper
from crashup_lib.sweep.neutron import NeutronSweeper
from crashup_lib.sweep.scan import cutoff
from crashup_lib.sweep.sweep import sweep_once
from tests.sweep_helpers import (FRESH, NOW, OLD, STALE, FakeCinder, FakeCollector, Journal, Rows, make_neutron,
                                 service_schema, validator)


def new_id() -> str:
    return str(uuid.uuid4())


def by_id(sweeper):
    found = {}
    for s in sweeper.scan(cutoff(STALE, NOW)):
        found.setdefault(s.id, []).append(s)
    return found


# ---------------------------------------------------------------------------------------------------------- cinder
@pytest.fixture
def cinder(tmp_path):
    path = service_schema("cinder", tmp_path)
    rows = Rows(path)
    api = FakeCinder()
    yield CinderSweeper(Database(f"sqlite:///{path}", name="cinder db", timeout=2), api), api, rows
    rows.close()


def volume(rows, status, *, updated_at=OLD, attachments=0, deleted=False, **more):
    vid = new_id()
    rows.add("volumes", id=vid, status=status, updated_at=updated_at, created_at=OLD, deleted=deleted,
             host="ctl1@lvm#lvm", volume_type_id=new_id(), use_quota=True, **more)
    for _ in range(attachments):
        rows.add("volume_attachment", id=new_id(), volume_id=vid, attach_status="attached", deleted=False,
                 instance_uuid=new_id(), attached_host="cmp1")
    return vid


def backup(rows, status, *, updated_at=OLD):
    bid = new_id()
    rows.add("backups", id=bid, volume_id=new_id(), status=status, updated_at=updated_at, created_at=OLD,
             deleted=False, host="ctl1")
    return bid


def test_cinder_scan_finds_stuck_volumes_migrations_and_backups(cinder):
    sweeper, _, rows = cinder
    attaching = volume(rows, "attaching", attach_status="attaching")
    fresh = volume(rows, "attaching", updated_at=FRESH)
    idle = volume(rows, "available")
    gone = volume(rows, "deleting", deleted=True)
    transfer = volume(rows, "awaiting-transfer")                 # waits as long as it takes: not stuck
    migrating = volume(rows, "maintenance", migration_status="migrating", attachments=2)
    creating_backup = backup(rows, "creating")
    ok_backup = backup(rows, "available")

    found = by_id(sweeper)
    assert set(found) == {attaching, migrating, creating_backup}
    assert {fresh, idle, gone, transfer, ok_backup}.isdisjoint(found)
    assert sorted((s.kind, s.state) for s in found[migrating]) == [("volume", "maintenance"),
                                                                    ("volume_migration", "migrating")]
    assert found[migrating][0].extra["attachments"] == 2
    (a,) = found[attaching]
    assert (a.host, a.extra["attachments"], a.expect["attach_status"]) == ("ctl1@lvm#lvm", 0, "attaching")
    assert found[creating_backup][0].kind == "backup"


def test_cinder_outcomes_through_os_reset_status_or_the_database(cinder, tmp_path):
    sweeper, api, rows = cinder
    journal = Journal(tmp_path / "events.jsonl")
    attaching = volume(rows, "attaching")
    uploading_attached = volume(rows, "uploading", attachments=1)
    uploading_alone = volume(rows, "uploading")
    deleting_backup = backup(rows, "deleting")
    creating_backup = backup(rows, "creating")
    collector = FakeCollector({attaching: "absent", uploading_attached: "running", uploading_alone: "shut_off",
                               deleting_backup: "running", creating_backup: "absent"})

    result = sweep_once([("cinder", lambda: sweeper)], collector, journal.emitter, stale_period=STALE,
                        now=NOW)

    assert result.ok and result.counts == {"reset": 3, "cas-update": 1, "error": 1}
    assert sorted(api.calls, key=str) == sorted([
        ("volume", attaching, {"status": "available", "attach_status": "detached"}),
        ("volume", uploading_attached, {"status": "in-use"}),          # BY_ATTACHMENTS, as cinder decides it
        ("volume", uploading_alone, {"status": "available"}),
        ("backup", creating_backup, {"status": "error"}),
    ], key=str)
    assert rows.get("backups", id=deleting_backup)["status"] == "error_deleting"    # not expressible by the API
    types = {e["subject"]: e["type"] for e in journal.events()}
    assert types[creating_backup] == fix.UNRECOVERABLE and types[deleting_backup] == fix.RECOVERED
    v = validator()
    for event in journal.events():
        v.validate(event)


def test_cinder_a_leftover_migration_is_reported_and_a_moved_row_left(cinder, tmp_path):
    sweeper, api, rows = cinder
    journal = Journal(tmp_path / "events.jsonl")
    migrating = volume(rows, "available", migration_status="migrating")
    attaching = volume(rows, "attaching")
    found = by_id(sweeper)
    rows.set("volumes", {"id": attaching}, status="in-use", updated_at=NOW)     # nova finished meanwhile

    assert fix.apply(fix.plan(found[migrating][0], "running"), sweeper, journal.emitter) == fix.REPORTED
    assert fix.apply(fix.plan(found[attaching][0], "absent"), sweeper, journal.emitter) == fix.LOST_RACE
    assert api.calls == []
    assert rows.get("volumes", id=migrating)["migration_status"] == "migrating"
    (event,) = journal.events()
    assert (event["type"], event["payload"]["resource_type"]) == (fix.ORPHANED, "volume")


# ---------------------------------------------------------------------------------------------------------- glance
@pytest.fixture
def glance(tmp_path):
    path = service_schema("glance", tmp_path)
    rows = Rows(path)
    yield GlanceSweeper(Database(f"sqlite:///{path}", name="glance db", timeout=2)), rows
    rows.close()


def image(rows, status, *, updated_at=OLD, deleted=False, size=None, locations=()):
    iid = new_id()
    rows.add("images", id=iid, status=status, updated_at=updated_at, created_at=OLD, deleted=deleted, size=size,
             min_disk=0, min_ram=0, protected=False, visibility="shared", os_hidden=False)
    for url in locations:
        rows.add("image_locations", image_id=iid, value=url, created_at=OLD, deleted=False, status="active")
    return iid


def test_glance_scan_finds_stuck_images_with_their_locations(glance):
    sweeper, rows = glance
    saving = image(rows, "saving", size=3, locations=["file:///var/lib/glance/images/x"])
    queued = image(rows, "queued")
    pending = image(rows, "pending_delete", deleted=True)       # glance marks these deleted when it schedules them
    deleted_saving = image(rows, "saving", deleted=True)
    fresh = image(rows, "saving", updated_at=FRESH)
    active = image(rows, "active")
    found = by_id(sweeper)
    assert set(found) == {saving, queued, pending}
    assert {deleted_saving, fresh, active}.isdisjoint(found)
    assert found[saving][0].extra["locations"] == [{"url": "file:///var/lib/glance/images/x"}]
    assert found[saving][0].extra["size"] == 3


def test_glance_outcomes_are_compare_and_swap_writes_checked_on_the_store(glance, tmp_path):
    sweeper, rows = glance
    journal = Journal(tmp_path / "events.jsonl")
    store, staging = tmp_path / "images", tmp_path / "staging"
    store.mkdir()
    staging.mkdir()
    saving = image(rows, "saving")                               # no data anywhere: killed, an alert
    importing = image(rows, "importing")                         # staged only: back to queued
    (staging / importing).write_bytes(b"partial")
    pending = image(rows, "pending_delete", deleted=True)        # scrubbed already: the record's last step
    queued = image(rows, "queued", size=4)                       # data in the store, the record still queued
    (store / queued).write_bytes(b"data")
    collector = Collector({"glance": [GlanceFileBackend([str(store)], staging_dir=str(staging))]}, resync_count=0)

    result = sweep_once([("glance", lambda: sweeper)], collector, journal.emitter, stale_period=STALE,
                        now=NOW)

    assert result.ok and result.counts == {"error": 1, "cas-update": 2, "report": 1}
    assert rows.get("images", id=saving)["status"] == "killed"
    assert rows.get("images", id=importing)["status"] == "queued"
    done = rows.get("images", id=pending)
    assert (done["status"], done["deleted"]) == ("deleted", True) and done["updated_at"] > OLD
    assert rows.get("images", id=queued)["status"] == "queued"             # reported, never changed
    types = {e["subject"]: (e["type"], e["payload"]["action"]) for e in journal.events()}
    assert types == {saving: (fix.UNRECOVERABLE, "cas-error"), importing: (fix.RECOVERED, "cas-update"),
                     pending: (fix.RECOVERED, "cas-update"), queued: (fix.ORPHANED, "none")}
    v = validator()
    for event in journal.events():
        v.validate(event)


def test_glance_a_deleted_flag_set_by_the_sweep_stamps_deleted_at(glance):
    sweeper, rows = glance
    pending = image(rows, "pending_delete", deleted=False)      # an older glance that had not marked it
    (stuck,) = by_id(sweeper)[pending]
    assert fix.apply(fix.plan(stuck, "absent"), sweeper) == fix.CHANGED
    row = rows.get("images", id=pending)
    assert row["deleted"] is True and row["deleted_at"] is not None


def test_glance_a_moved_row_is_left(glance):
    sweeper, rows = glance
    saving = image(rows, "saving")
    (stuck,) = by_id(sweeper)[saving]
    rows.set("images", {"id": saving}, status="active", updated_at=NOW)
    assert fix.apply(fix.plan(stuck, "absent"), sweeper) == fix.LOST_RACE
    assert rows.get("images", id=saving)["status"] == "active"


# --------------------------------------------------------------------------------------------------------- neutron
@pytest.fixture
def neutron(tmp_path):
    path = make_neutron(tmp_path / "neutron.sqlite")
    rows = Rows(path)
    yield NeutronSweeper(Database(f"sqlite:///{path}", name="neutron db", timeout=2)), rows
    rows.close()


_sa_ids = iter(range(1, 10_000))


def port(rows, status, *, updated_at=OLD, host="cmp1"):
    pid, sa_id = new_id(), next(_sa_ids)
    rows.add("standardattributes", id=sa_id, resource_type="ports", revision_number=3, created_at=OLD,
             updated_at=updated_at)
    rows.add("ports", id=pid, network_id=new_id(), mac_address="fa:16:3e:00:00:01", admin_state_up=True,
             status=status, device_id=new_id(), device_owner="compute:nova", standard_attr_id=sa_id)
    if host:
        rows.add("ml2_port_bindings", port_id=pid, host=host, vif_type="ovs", status="ACTIVE")
        rows.add("ml2_port_bindings", port_id=pid, host="cmp-dest", vif_type="ovs", status="INACTIVE")
    return pid, sa_id


def router(rows, status):
    rid, sa_id = new_id(), next(_sa_ids)
    rows.add("standardattributes", id=sa_id, resource_type="routers", revision_number=1, created_at=OLD,
             updated_at=OLD)
    rows.add("routers", id=rid, status=status, standard_attr_id=sa_id)
    return rid, sa_id


def test_neutron_ports_and_routers_by_compare_and_swap_with_their_standard_attributes(neutron):
    sweeper, rows = neutron
    (build, build_sa), (fresh, _) = port(rows, "BUILD"), port(rows, "BUILD", updated_at=FRESH)
    (active, _), (allocating, _) = port(rows, "ACTIVE"), router(rows, "ALLOCATING")
    found = by_id(sweeper)
    assert set(found) == {build, allocating} and {fresh, active}.isdisjoint(found)
    assert found[build][0].host == "cmp1"                       # the ACTIVE binding, not the migration target

    result = sweep_once([("neutron", lambda: sweeper)],
                        FakeCollector({build: "running", allocating: "absent"}), stale_period=STALE,
                        now=NOW)

    assert result.counts == {"cas-update": 1, "error": 1}
    assert rows.get("ports", id=build)["status"] == "ACTIVE"
    assert rows.get("routers", id=allocating)["status"] == "ERROR"
    stamp = rows.get("standardattributes", id=build_sa)
    assert stamp["revision_number"] == 4 and stamp["updated_at"] > OLD


def test_neutron_a_moved_port_is_left_and_nothing_is_half_written(neutron):
    sweeper, rows = neutron
    pid, sa_id = port(rows, "BUILD")
    other, other_sa = port(rows, "BUILD")
    found = by_id(sweeper)
    rows.set("standardattributes", {"id": sa_id}, updated_at=NOW, revision_number=4)    # the agent reported
    rows.set("ports", {"id": other}, status="DOWN")          # status moved, standard attributes not (yet)
    assert fix.apply(fix.plan(found[pid][0], "running"), sweeper) == fix.LOST_RACE
    assert fix.apply(fix.plan(found[other][0], "running"), sweeper) == fix.LOST_RACE
    assert rows.get("ports", id=pid)["status"] == "BUILD"
    assert rows.get("ports", id=other)["status"] == "DOWN"
    assert rows.get("standardattributes", id=other_sa)["revision_number"] == 3      # rolled back with the port
