"""The CrashUp sweep acting on the lab's real cinder (tests/lab/cinder.py: cinder-api, -scheduler, -volume, the lab's
file driver): volumes left in creating, attaching, detaching and deleting by a cinder-volume that died end where the
rules say, observed through the cinder backends (health/cinder.py: cinder's os-services heartbeat, the volume files,
nova's heartbeat of the instance's host, the guest's disks), changed through cinder's os-reset_status; a dry run
changes nothing; a racing update is left alone.

The stuck states are cinder's own where cinder can leave them: a cinder attachment with a connector that nova never
completed (attaching), os-begin_detaching with nothing after it (detaching), a delete sent while cinder-volume is dead
(deleting). What no API can leave behind (a volume attached by nova whose completion was lost; a create that died) is
written to cinder's database, as tests/e2e/test_sweep.py does for nova's rows.

The guest's disks come from the lab's hypervisor (nova's fake driver in the nova box, tests/lab/hypervisor.py): the
volumes its guest holds connected, as libvirt's <serial> of a real host says (health.LibvirtVolumes)."""
import contextlib
import sqlite3
import time

import pytest

from crashup_lib import config, events, health
from crashup_lib.sweep import fix, wiring
from crashup_lib.sweep.sweep import sweep_once
from tests.e2e.scenario import delete_servers, journal
from tests.lab.hypervisor import FakeHypervisorBackend

pytestmark = pytest.mark.lab

STALE_PERIOD = 2                     # the rows are made just before: stuck after 2 s


def lab_cinder(lab):
    from tests.lab.volumes import Volumes
    cinder = lab.cinder()
    if cinder.pid("api") is None:
        pytest.fail("the lab has no cinder running (tests/lab/cinder.py): `python -m tests.lab status`")
    return cinder, Volumes.lab()


def sweep_config(lab, cinder):
    return config.load(str(lab.CRASHUP_CONF), env={}, overrides={
        "cinder_connection": cinder.db_url(), "cinder_volume_dirs": str(cinder.volume_dir),
        "recovery_stale_period": str(STALE_PERIOD), "recovery_resync_count": "1",
        "recovery_resync_interval": "0.5"})


def cinder_sweeper(cfg):
    """The sweep's cinder sweeper from the lab's configuration; the lab's hypervisor stands for libvirt_uri."""
    (make,) = [m for service, m in wiring.sweepers_from_config(cfg) if service == "cinder"]
    sweeper = make()
    sweeper.observed = frozenset({health.CONNECTION, health.VOLUME_STORE})
    return sweeper


def sweep(cfg, sweeper, guests, *, dry_run=False):
    said: list[str] = []
    emitter = None if dry_run else events.Emitter.from_config(cfg)
    try:
        result = sweep_once([("cinder", lambda: sweeper)],
                            health.Collector.from_config(cfg, wiring.cinder_routes(cfg, guests)), emitter,
                            stale_period=cfg.recovery_stale_period, dry_run=dry_run, say=said.append)
    finally:
        if emitter is not None:
            emitter.close(10)
    return result, said


def write_row(cinder, volume_id, **columns):
    """Columns of a volume's row in cinder's database (beside the running cinder)."""
    sets = ", ".join(f"{k} = ?" for k in columns)
    with contextlib.closing(sqlite3.connect(cinder.db_file, timeout=30)) as db, db:
        assert db.execute(f"UPDATE volumes SET {sets} WHERE id = ?", (*columns.values(), volume_id)).rowcount == 1


def read_rows(cinder, ids):
    with contextlib.closing(sqlite3.connect(f"file:{cinder.db_file}?mode=ro", uri=True, timeout=30)) as db:
        return {r[0]: r[1:] for r in db.execute(
            "SELECT id, status, attach_status, migration_status, updated_at, deleted FROM volumes WHERE id IN "
            f"({', '.join('?' * len(ids))})", list(ids))}


def connector(host):
    return {"host": host, "initiator": "fake", "ip": "127.0.0.1", "platform": "x86_64", "os_type": "linux",
            "multipath": False}


def cinder_attachment(volumes, volume_id, server_id, host):
    """A cinder attachment with the host's connector, as nova's attach starts one: cinder-volume makes the volume
    'attaching'; nothing completes it."""
    found = volumes.cinder("POST", "/attachments", {"attachment": {
        "volume_uuid": volume_id, "instance_uuid": server_id, "connector": connector(host)}})
    volumes.wait(volume_id, "attaching", 30)
    return found["attachment"]["id"]


def status(volumes, volume_id):
    v = volumes.get(volume_id)
    return v["status"], len(v["attachments"])


@pytest.fixture
def world(lab):
    """The lab's cinder with cinder-volume running at the start and the end; servers and volumes made by a test
    are gone after it."""
    cinder, volumes = lab_cinder(lab)
    made: list[str] = []
    yield cinder, volumes, made
    if cinder.pid("volume") is None:
        cinder.start_service("volume")
    delete_servers(lab)
    for vid in made:
        with contextlib.suppress(Exception):
            volumes.cinder("POST", f"/volumes/{vid}/action",
                           {"os-reset_status": {"status": "available", "attach_status": "detached"}})
        with contextlib.suppress(Exception):
            volumes.delete(vid)


def test_volumes_left_by_a_dead_cinder_volume_end_where_the_rules_say(lab, world):
    cinder, volumes, made = world
    host = lab.node("compute1").nova_host
    server = volumes.boot("sweep-cinder", host)["id"]

    def volume():
        made.append(volumes.create()["id"])
        return made[-1]
    # attached by nova, its completion lost: attaching, connected to the guest -> in-use
    attached = volume()
    volumes.attach(server, attached)
    # cinder's attachment with a connector that nova never finished: attaching, not connected -> available
    not_attached = volume()
    cinder_attachment(volumes, not_attached, server, host)
    # attached by nova, os-begin_detaching and nothing after: detaching, still connected -> in-use
    still_attached = volume()
    volumes.attach(server, still_attached)
    volumes.cinder("POST", f"/volumes/{still_attached}/action", {"os-begin_detaching": {}})
    # attached in cinder only, its detach begun: detaching, not connected -> available
    detached = volume()
    attachment = cinder_attachment(volumes, detached, server, host)
    volumes.cinder("POST", f"/attachments/{attachment}/action", {"os-complete": None})
    volumes.wait(detached, "in-use", 30)
    volumes.cinder("POST", f"/volumes/{detached}/action", {"os-begin_detaching": {}})
    # a create that died with cinder-volume (the volume's file is there): creating, its owner down -> error
    creating = volume()
    deleting = volume()

    assert cinder.kill_service("volume")
    cinder.wait_service("volume", up=False, timeout=60)
    write_row(cinder, attached, status="attaching", attach_status="attaching")
    write_row(cinder, creating, status="creating")
    volumes.cinder("DELETE", f"/volumes/{deleting}")           # the delete waits for the dead cinder-volume
    volumes.wait(deleting, "deleting", 30)
    ids = [attached, not_attached, still_attached, detached, creating, deleting]
    assert [volumes.get(v)["status"] for v in ids] == ["attaching", "attaching", "detaching", "detaching",
                                                        "creating", "deleting"]
    time.sleep(STALE_PERIOD + 0.5)
    cfg = sweep_config(lab, cinder)
    guests = FakeHypervisorBackend(lab.nova())

    before = read_rows(cinder, ids)
    result, said = sweep(cfg, cinder_sweeper(cfg), guests, dry_run=True)
    assert result.found == len(ids) and all(line.startswith("would ") for line in said), said
    assert result.counts == {"reset": 4, "error": 1, "skip": 1}, result.summary()
    assert read_rows(cinder, ids) == before                    # a dry run changes nothing

    since = time.time()
    result, _ = sweep(cfg, cinder_sweeper(cfg), guests)

    assert result.ok and result.counts == {"reset": 4, "error": 1, "skip": 1}, result.summary()
    assert status(volumes, attached) == ("in-use", 1)
    assert status(volumes, not_attached) == ("available", 0)   # os-reset_status dropped the attachment too
    assert status(volumes, still_attached) == ("in-use", 1)
    assert status(volumes, detached) == ("available", 0)
    assert volumes.get(creating)["status"] == "error"
    assert volumes.get(deleting)["status"] == "deleting"       # left: cinder-volume resumes it
    assert {(host, server)} == set(guests.disks_asked)               # the instance's host, about the instance
    got = {e["payload"]["id"]: (e["type"], e["payload"]["action"]) for e in journal(lab, since)
           if e["payload"].get("service") == "cinder"}
    assert got == {attached: (fix.RECOVERED, "reset-state"), not_attached: (fix.RECOVERED, "reset-state"),
                   still_attached: (fix.RECOVERED, "reset-state"), detached: (fix.RECOVERED, "reset-state"),
                   creating: (fix.UNRECOVERABLE, "reset-error")}

    # cinder-volume back: it finishes the delete the sweep left to it
    cinder.start_service("volume")
    limit = time.monotonic() + 60
    while deleting in {v["id"] for v in volumes.list()} and time.monotonic() < limit:
        time.sleep(0.2)
    assert deleting not in {v["id"] for v in volumes.list()} and not cinder.volume_path(deleting).exists()
    made.remove(deleting)

    # with cinder-volume up, the store decides: a create whose volume is there -> available, one whose file is
    # gone -> error, a delete that died -> error_deleting (deletable again)
    created, lost, undeleted = volume(), volume(), volume()
    cinder.volume_path(lost).unlink()
    for vid in (created, lost):
        write_row(cinder, vid, status="creating")
    write_row(cinder, undeleted, status="deleting")
    time.sleep(STALE_PERIOD + 0.5)
    result, _ = sweep(cfg, cinder_sweeper(cfg), guests)
    assert result.ok and result.counts == {"reset": 2, "error": 1}, result.summary()
    assert [volumes.get(v)["status"] for v in (created, lost, undeleted)] == ["available", "error",
                                                                              "error_deleting"]


def test_a_racing_update_is_left_alone(lab, world):
    """The attach completes (cinder's os-complete) while the sweep looks at the guest: the row moved on since the
    scan, so no reset is sent and the volume stays in-use."""
    cinder, volumes, made = world
    host = lab.node("compute2").nova_host
    server = volumes.boot("sweep-cinder-race", host)["id"]
    made.append(volumes.create()["id"])
    vid = made[-1]
    attachment = cinder_attachment(volumes, vid, server, host)
    time.sleep(STALE_PERIOD + 0.5)

    class Racing(FakeHypervisorBackend):
        def guest_disks(self, host, instance_uuid):
            volumes.cinder("POST", f"/attachments/{attachment}/action", {"os-complete": None})
            volumes.wait(vid, "in-use", 30)
            return super().guest_disks(host, instance_uuid)   # the guest has no such volume: "absent" -> available
    cfg = sweep_config(lab, cinder)

    result, _ = sweep(cfg, cinder_sweeper(cfg), Racing(lab.nova()))

    assert result.counts == {fix.LOST_RACE: 1}, result.summary()
    assert status(volumes, vid) == ("in-use", 1)
