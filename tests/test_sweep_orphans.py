"""The sweep's orphan pass: guests libvirt has and nova does not place there, files glance's store has and glance does
not describe. Reported once (an event, a log line), never deleted; pure decisions; libvirt's real test driver, nova's
and glance's real schemas. No lab."""
import datetime as dt
import logging
import socket
import time
import uuid

import pytest

from crashup_lib import health
from crashup_lib.health import Guest, StoredFile
from crashup_lib.sweep import orphans
from crashup_lib.sweep.db import Database
from crashup_lib.sweep.glance import GlanceSweeper
from crashup_lib.sweep.nova import NovaSweeper
from crashup_lib.sweep.sweep import sweep_once
from tests.sweep_helpers import (FRESH, NOW, OLD, STALE, FakeCollector, Journal, Rows, add_instance,
                                 nova_cell_pristine, nova_cells, service_schema, validator, sweep_daemon)

__all__ = ["nova_cell_pristine", "nova_cells"]         # fixtures used by name
BEFORE = NOW - dt.timedelta(seconds=STALE)


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def logs(caplog):
    logging.getLogger("crashup").propagate = True       # another test's log.setup() may have turned it off
    caplog.set_level(logging.DEBUG, logger="crashup")
    return caplog


def lines(logs, level=logging.WARNING):
    return [r.getMessage() for r in logs.records if r.levelno >= level]


# ------------------------------------------------------------------------------------------------ pure decisions
def row(host="cmp1", deleted=0, deleted_at=None, vm_state="active", task_state=None):
    return {"host": host, "deleted": deleted, "deleted_at": deleted_at, "vm_state": vm_state, "task_state": task_state}


def test_nova_decision_by_rows():
    g = {name: Guest(new_id(), f"instance-{i:08x}", "running") for i, name in enumerate(
        ("here", "no_row", "deleted", "deleted_now", "elsewhere", "migrating", "resized", "no_host", "twice"))}
    rows = {
        g["here"].uuid: [row()],
        g["deleted"].uuid: [row(deleted=7, deleted_at=OLD)],
        g["deleted_now"].uuid: [row(deleted=8, deleted_at=FRESH)],
        g["elsewhere"].uuid: [row(host="cmp2")],
        g["migrating"].uuid: [row(host="cmp2", task_state="migrating")],
        g["resized"].uuid: [row(host="cmp2", vm_state="resized")],
        g["no_host"].uuid: [row(host=None, vm_state="shelved_offloaded")],
        g["twice"].uuid: [row(deleted=3, deleted_at=OLD), row()],        # deleted in one cell, live here in another
    }
    found = {o.id: o for o in orphans.nova_orphans({"cmp1"}, list(g.values()), rows, BEFORE)}
    assert set(found) == {g["no_row"].uuid, g["deleted"].uuid, g["elsewhere"].uuid, g["no_host"].uuid}
    assert "no instance row" in found[g["no_row"].uuid].reason
    assert "was deleted at 2025-01-31 10:00:00Z" in found[g["deleted"].uuid].reason
    elsewhere = found[g["elsewhere"].uuid].reason
    assert "nova places instance" in elsewhere and elsewhere.endswith(" on cmp2")
    assert "on no host" in found[g["no_host"].uuid].reason
    o = found[g["no_row"].uuid]
    assert (o.service, o.resource_type, o.state, o.where) == ("nova", "server", "running", "cmp1")
    assert o.reason.startswith(f"guest {g['no_row'].name} (running) on cmp1: ")
    assert o.payload() == {"service": "nova", "resource_type": "server", "id": o.id, "state": "running",
                           "action": "none", "reason": o.reason}


def test_nova_decision_hosts_sharing_a_uri():
    guest = Guest(new_id(), "instance-00000001", "shutoff")
    rows = {guest.uuid: [row(host="cmp2")]}
    assert orphans.nova_orphans({"cmp1", "cmp2"}, [guest], rows, BEFORE) == []
    (o,) = orphans.nova_orphans({"cmp1"}, [guest], rows, BEFORE)
    assert o.state == "shutoff"


def test_glance_decision_by_rows():
    ids = {name: new_id() for name in ("none", "deleted", "deleted_now", "pending", "active", "killed")}
    files = [StoredFile(i, f"/store/{i}", 10) for i in ids.values()] + [
        StoredFile("lost+found", "/store/lost+found", 0), StoredFile("notes.txt", "/store/notes.txt", 3)]
    rows = {
        ids["deleted"]: {"status": "deleted", "deleted": True, "deleted_at": OLD, "updated_at": OLD},
        ids["deleted_now"]: {"status": "deleted", "deleted": True, "deleted_at": FRESH, "updated_at": FRESH},
        ids["pending"]: {"status": "pending_delete", "deleted": True, "deleted_at": OLD, "updated_at": OLD},
        ids["active"]: {"status": "active", "deleted": False, "deleted_at": None, "updated_at": OLD},
        ids["killed"]: {"status": "killed", "deleted": False, "deleted_at": None, "updated_at": OLD},
    }
    found = {o.id: o for o in orphans.glance_orphans("/store", files, rows, BEFORE)}
    assert set(found) == {ids["none"], ids["deleted"]}
    assert found[ids["none"]].reason == f"file /store/{ids['none']} (10 bytes): no image row in glance's database"
    assert "was deleted at 2025-01-31 10:00:00Z" in found[ids["deleted"]].reason
    assert (found[ids["none"]].resource_type, found[ids["none"]].where) == ("image", "/store")


def test_an_orphan_payload_is_valid_against_the_schema(tmp_path):
    journal = Journal(tmp_path / "events.jsonl")
    o = orphans.Orphan("glance", "image", new_id(), "stored", "/store", "file /store/x (1 bytes): no image row")
    assert orphans.report(o, journal.emitter)
    (event,) = journal.events()
    assert (event["type"], event["subject"]) == ("crashup.resource.orphaned", o.id)
    validator().validate(event)


# -------------------------------------------------------------------------------------------- nova, real libvirt
def node_xml(path, guests):
    """libvirt's test driver node: one domain per (name, uuid, runstate)."""
    domains = "".join(f"<domain type='test'><name>{name}</name><uuid>{uid}</uuid><memory>65536</memory>"
                      f"<vcpu>1</vcpu><os><type>hvm</type></os><test:runstate>{state}</test:runstate></domain>"
                      for name, uid, state in guests)
    path.write_text(f"<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>{domains}</node>")


@pytest.fixture
def nova_env(nova_cells, tmp_path):
    """cmp1 and cmp2 each with a test-driver hypervisor; cmp3 has an instance and no hypervisor to list."""
    pytest.importorskip("libvirt")
    cell = Rows(nova_cells[1])
    ids = {
        "here": add_instance(cell, host="cmp1"),
        "deleted": add_instance(cell, host="cmp1", deleted=1, deleted_at=OLD),
        "deleted_now": add_instance(cell, host="cmp1", deleted=1, deleted_at=FRESH),
        "elsewhere": add_instance(cell, host="cmp2"),
        "migrating": add_instance(cell, host="cmp2", task_state="migrating", updated_at=FRESH),   # not stuck
        "on_cmp2": add_instance(cell, host="cmp2"),
        "on_cmp3": add_instance(cell, host="cmp3"),
        "no_row": new_id(),
    }
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    node_xml(nodes / "cmp1.xml", [(f"instance-{i:08x}", ids[n], 1 if n != "deleted" else 5) for i, n in enumerate(
        ("here", "deleted", "deleted_now", "elsewhere", "migrating", "no_row"), start=1)])
    node_xml(nodes / "cmp2.xml", [("instance-00000010", ids["on_cmp2"], 1), ("instance-00000011", ids["migrating"], 1)])
    sweeper = NovaSweeper([Database(f"sqlite:///{p}", name=f"nova cell{i}", timeout=2)
                           for i, p in enumerate(nova_cells)])
    finder = orphans.NovaOrphans(health.LibvirtBackend(f"test://{nodes}/{{host}}.xml", timeout=5))
    yield sweeper, finder, cell, ids
    cell.close()


def dump(rows, table):
    with rows.engine.connect() as conn:
        return sorted((repr(tuple(r)) for r in conn.execute(rows.sa.select(rows.table(table)))))


def sweep(sweepers, finders, emitter=None, **kw):
    return sweep_once(sweepers, FakeCollector(), emitter, stale_period=STALE, now=NOW, finders=finders,
                      **kw)


def test_list_guests_on_the_test_driver(nova_env):
    _, finder, _, ids = nova_env
    guests = {g.uuid: g for g in finder.libvirt.list_guests("cmp1")}
    assert len(guests) == 6 and guests[ids["deleted"]].state == "shutoff"
    assert (guests[ids["here"]].name, guests[ids["here"]].state) == ("instance-00000001", "running")


def test_nova_orphans_are_reported_once_and_nothing_changes(nova_env, tmp_path, logs):
    sweeper, finder, cell, ids = nova_env
    journal = Journal(tmp_path / "events.jsonl")
    before = dump(cell, "instances")

    result = sweep([("nova", lambda: sweeper)], {"nova": finder}, journal.emitter)

    events = journal.events()
    assert sorted(e["subject"] for e in events) == sorted([ids["no_row"], ids["deleted"], ids["elsewhere"]])
    v = validator()
    for event in events:
        assert event["type"] == "crashup.resource.orphaned" and event["payload"]["action"] == "none"
        assert event["payload"]["service"] == "nova" and "on cmp1" in event["payload"]["reason"]
        v.validate(event)
    by_id = {e["subject"]: e["payload"] for e in events}
    assert by_id[ids["deleted"]]["state"] == "shutoff" and "was deleted at" in by_id[ids["deleted"]]["reason"]
    assert "nova places instance" in by_id[ids["elsewhere"]]["reason"]
    assert dump(cell, "instances") == before                            # nothing in the database changed
    assert result.ok is True and (result.orphans, result.orphans_known) == (3, 0)
    assert "; 3 orphans" in result.summary()
    reported = [m for m in lines(logs) if m.startswith("sweep: orphan: ")]
    assert len(reported) == 3 and all("reported, left as it is" in m for m in reported)
    (unlisted,) = [m for m in lines(logs) if "not listed" in m]         # cmp3: no hypervisor to read
    assert unlisted.startswith("sweep: nova: guests of cmp3 not listed, orphans there unknown: ")
    assert "\n" not in unlisted


def test_compute_nodes_add_hosts_and_an_injected_source_too(nova_env, tmp_path):
    sweeper, finder, cell, ids = nova_env
    lonely = new_id()
    node_xml(tmp_path / "nodes" / "cmp4.xml", [("instance-00000020", lonely, 1)])   # no instance on cmp4
    assert {o.id for o in finder(sweeper, BEFORE)} == {ids["no_row"], ids["deleted"], ids["elsewhere"]}
    cell.add("compute_nodes", host="cmp4", deleted=0, vcpus=1, memory_mb=1, local_gb=1, vcpus_used=0,
             memory_mb_used=0, local_gb_used=0, hypervisor_type="QEMU", hypervisor_version=1, cpu_info="{}")
    assert sweeper.compute_hosts() == {"cmp4"}
    via_nodes = orphans.NovaOrphans(finder.libvirt, extra_hosts=lambda s: s.compute_hosts())
    assert lonely in {o.id for o in via_nodes(sweeper, BEFORE)}
    injected = orphans.NovaOrphans(finder.libvirt, extra_hosts=lambda s: ["cmp4"])
    assert lonely in {o.id for o in injected(sweeper, BEFORE)}


def test_the_daemons_next_round_does_not_report_again(nova_env, tmp_path):
    sweeper, finder, _, ids = nova_env
    journal = Journal(tmp_path / "events.jsonl")
    reported: set = set()
    first = sweep([("nova", lambda: sweeper)], {"nova": finder}, journal.emitter, reported=reported)
    second = sweep([("nova", lambda: sweeper)], {"nova": finder}, journal.emitter, reported=reported)
    assert len(journal.events()) == 3 and len(reported) == 3
    assert (first.orphans, first.orphans_known, second.orphans, second.orphans_known) == (3, 0, 3, 3)
    assert "3 orphans (3 reported before)" in second.summary()
    sweep([("nova", lambda: sweeper)], {"nova": finder}, journal.emitter)      # a new process: reported again
    assert len(journal.events()) == 6


def test_dry_run_prints_and_emits_nothing(nova_env, tmp_path):
    sweeper, finder, cell, ids = nova_env
    journal = Journal(tmp_path / "events.jsonl")
    said = []
    reported: set = set()
    result = sweep([("nova", lambda: sweeper)], {"nova": finder}, journal.emitter, dry_run=True, say=said.append,
                   reported=reported)
    assert journal.events() == [] and reported == set()
    assert len(said) == 3 and all(s.startswith("would report orphan nova server ") for s in said)
    assert {i for i in ids.values() if any(i in s for s in said)} == {ids["no_row"], ids["deleted"],
                                                                      ids["elsewhere"]}
    assert result.orphans == 3 and "dry run" in result.summary()


def test_a_hung_libvirt_is_bounded_one_line_and_no_report(nova_cells, tmp_path, logs):
    pytest.importorskip("libvirt")
    cell = Rows(nova_cells[1])
    add_instance(cell, host="127.0.0.1")
    cell.close()
    sweeper = NovaSweeper([Database(f"sqlite:///{p}", timeout=2) for p in nova_cells])
    journal = Journal(tmp_path / "events.jsonl")
    with socket.socket() as listener:               # accepts, never answers: virConnectOpen would wait forever
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        finder = orphans.NovaOrphans(health.LibvirtBackend(f"qemu+tcp://{{host}}:{port}/system", timeout=0.5))
        started = time.monotonic()
        result = sweep([("nova", lambda: sweeper)], {"nova": finder}, journal.emitter)
        assert time.monotonic() - started < 3
        result2 = sweep([("nova", lambda: sweeper)], {"nova": finder}, journal.emitter)   # still hung: at once
    assert journal.events() == [] and result.orphans == result2.orphans == 0 and result.ok
    unlisted = [m for m in lines(logs) if "not listed" in m]
    assert len(unlisted) == 2 and "timed out after 0.5s" in unlisted[0] and "still hanging" in unlisted[1]


def test_a_failing_orphan_pass_is_the_services_failure_only(nova_env, logs):
    sweeper, finder, _, _ = nova_env

    def broken(_sweeper, _before, _stopping):
        raise RuntimeError("nova cell1: query: database is locked")
    result = sweep([("nova", lambda: sweeper)], {"nova": broken})
    assert result.failed_services == ["nova orphans"] and not result.ok
    (line,) = [m for m in lines(logs, logging.ERROR)]
    assert line == "sweep: nova: orphans not looked for: nova cell1: query: database is locked; next service"


# ---------------------------------------------------------------------------------------- glance, real schema
@pytest.fixture
def glance_env(tmp_path):
    path = service_schema("glance", tmp_path)
    rows = Rows(path)
    store = tmp_path / "images"
    store.mkdir()
    yield GlanceSweeper(Database(f"sqlite:///{path}", name="glance db", timeout=2)), rows, store
    rows.close()


def image(rows, status, *, deleted=False, deleted_at=None):
    iid = new_id()
    rows.add("images", id=iid, status=status, updated_at=OLD, created_at=OLD, deleted=deleted, deleted_at=deleted_at,
             size=3, min_disk=0, min_ram=0, protected=False, visibility="shared", os_hidden=False)
    return iid


def test_glance_store_orphans_are_reported_never_removed(glance_env, tmp_path, logs):
    sweeper, rows, store = glance_env
    ids = {"none": new_id(), "pending": image(rows, "pending_delete", deleted=True, deleted_at=OLD),
           "deleted": image(rows, "deleted", deleted=True, deleted_at=OLD), "active": image(rows, "active")}
    for iid in ids.values():
        (store / iid).write_bytes(b"abc")
    (store / "README").write_text("not an image")
    before = dump(rows, "images")
    journal = Journal(tmp_path / "events.jsonl")
    finder = orphans.GlanceOrphans(health.GlanceFileBackend([str(store), str(tmp_path / "missing")]))

    result = sweep([("glance", lambda: sweeper)], {"glance": finder}, journal.emitter)

    events = journal.events()
    assert sorted(e["subject"] for e in events) == sorted([ids["none"], ids["deleted"]])
    for event in events:
        assert event["payload"]["resource_type"] == "image" and event["payload"]["state"] == "stored"
        validator().validate(event)
    assert all((store / iid).exists() for iid in ids.values())          # never deleted
    assert dump(rows, "images") == before
    assert result.orphans == 2 and result.ok
    (unlisted,) = [m for m in lines(logs) if "not listed" in m]
    assert unlisted.startswith(f"sweep: glance: files of {tmp_path}/missing not listed") and "No such file" in unlisted


# ------------------------------------------------------------------------------------- the daemon, end to end
def test_the_daemon_reports_an_orphan_once_across_rounds(tmp_path):
    """`crashup sweep --daemon` in its own process: two rounds, one event (the set lives in the process)."""
    path = service_schema("glance", tmp_path)
    store = tmp_path / "images"
    store.mkdir()
    orphan = new_id()
    (store / orphan).write_bytes(b"abc")
    journal = tmp_path / "ev.jsonl"
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[events]\njournal = {journal}\n[sweep]\nglance_connection = sqlite:///{path}\n"
                    f"glance_datadirs = {store}\nlibvirt_uri =\n[recovery]\nrecovery_interval_period = 1\n")
    text = sweep_daemon(tmp_path, conf, "1 orphan")
    assert "1 orphan (1 reported before)" in text and "Traceback" not in text
    assert text.count("sweep: orphan: glance image") == 1
    from crashup_lib import events
    assert [e["subject"] for e in events.read(str(journal))] == [orphan]
    assert (store / orphan).exists()
