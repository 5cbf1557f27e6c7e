"""The sweep acting on cinder, end to end on cinder's real schema (its own db sync): stuck volumes found, asked
about through the cinder backends (health/cinder.py, over fake boundaries: cinder's os-services, nova's heartbeat,
a guest reader, a directory as the volume store), and changed as the rules say through os-reset_status; a dry run
changes nothing, a racing update is left alone, a question nothing answers is never acted on."""
import uuid

import pytest

from crashup_lib import health
from crashup_lib.cinder import VolumeService
from crashup_lib.health import cinder as hc
from crashup_lib.rules import RUNNING, SHUT_OFF
from crashup_lib.sweep import fix
from crashup_lib.sweep.cinder import CinderSweeper
from crashup_lib.sweep.db import Database
from crashup_lib.sweep.scan import cutoff
from crashup_lib.sweep.sweep import sweep_once
from tests.sweep_helpers import NOW, OLD, STALE, Journal, Rows, service_schema, validator
from tests.test_health_cinder import FakeGuests, FakeNova

UP, DOWN = "ctl1@lab#lab", "ctl2@lab#lab"          # the volumes' hosts: cinder-volume up on ctl1, down on ctl2


def new_id() -> str:
    return str(uuid.uuid4())


class FakeCinderApi:
    """CinderApi's services() and reset_status(): the heartbeats given, the resets recorded."""
    timeout = 1.0

    def __init__(self):
        self.records = [VolumeService("cinder-volume", "ctl1@lab", "nova", "enabled", "up", None),
                        VolumeService("cinder-volume", "ctl2@lab", "nova", "enabled", "down", None)]
        self.calls: list[tuple[str, str, dict]] = []

    def services(self, binary=None):
        return [s for s in self.records if binary in (None, s.binary)]

    def reset_status(self, kind, resource_id, values):
        self.calls.append((kind, resource_id, dict(values)))


@pytest.fixture
def cinder(tmp_path):
    path = service_schema("cinder", tmp_path)
    rows = Rows(path)
    yield path, rows
    rows.close()


def add_volume(rows, status, *, host=UP, attach=None, attach_status=None, **more):
    """A volume row; attach: (instance, its host) of one attachment in attach_status (default: the volume's)."""
    vid = new_id()
    rows.add("volumes", id=vid, status=status, updated_at=OLD, created_at=OLD, deleted=False, host=host,
             volume_type_id=new_id(), use_quota=True, attach_status="attaching" if attach else "detached", **more)
    if attach:
        instance, instance_host = attach
        rows.add("volume_attachment", id=new_id(), volume_id=vid, attach_status=attach_status or status,
                 deleted=False, instance_uuid=instance, attached_host=instance_host)
    return vid


def world(tmp_path, guests, nova_states, api):
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    route = [hc.CinderServiceBackend(api), hc.InstanceHeartbeatBackend(health.NovaHeartbeatBackend(
             FakeNova(nova_states))), hc.VolumeConnectionBackend(guests), hc.VolumeFileBackend([str(share)])]
    collector = health.Collector({("cinder", "volume"): route, ("cinder", "volume_migration"): [route[0], route[3]]},
                                 resync_count=0)
    return share, collector


def test_stuck_volumes_end_where_the_rules_say(cinder, tmp_path):
    path, rows = cinder
    api = FakeCinderApi()
    i1, i2, i3 = new_id(), new_id(), new_id()
    v = {
        "created": add_volume(rows, "creating"),                             # on the store: available
        "never_created": add_volume(rows, "creating"),                       # nowhere: error, an alert
        "owner_down": add_volume(rows, "creating", host=DOWN),               # cinder-volume down: error
        "deleting": add_volume(rows, "deleting"),                            # error_deleting (deletable again)
        "deleting_owner_down": add_volume(rows, "deleting", host=DOWN),      # cinder-volume resumes it: left
        "attached": add_volume(rows, "attaching", attach=(i1, "cmp1")),      # the guest has it: in-use
        "not_attached": add_volume(rows, "attaching", attach=(i2, "cmp1")),  # the guest has not: available
        "still_attached": add_volume(rows, "detaching", attach=(i1, "cmp1"), attach_status="attached"),
        "fenced": add_volume(rows, "detaching", attach=(i3, "cmp2"), attach_status="attached"),   # evacuation's
        "no_host": add_volume(rows, "attaching"),                            # no attachment: unknown -> error
    }
    share, collector = world(tmp_path, FakeGuests({
        ("cmp1", i1): hc.GuestDisks(RUNNING, frozenset({v["attached"], v["still_attached"]})),
        ("cmp1", i2): hc.GuestDisks(SHUT_OFF, frozenset())}), {"cmp1": "up", "cmp2": "forced"}, api)
    for name in ("created", "deleting", "owner_down"):
        (share / f"volume-{v[name]}").write_bytes(b"")
    sweeper = CinderSweeper(Database(f"sqlite:///{path}", name="cinder db", timeout=2), api,
                            {hc.CONNECTION, hc.VOLUME_STORE})
    journal = Journal(tmp_path / "events.jsonl")

    result = sweep_once([("cinder", lambda: sweeper)], collector, journal.emitter, stale_period=STALE, now=NOW)

    assert result.found == len(v) and result.counts == {"reset": 5, "error": 3, "skip": 2}, result.summary()
    calls = {vid: values for _, vid, values in api.calls}
    assert calls == {
        v["created"]: {"status": "available"},
        v["never_created"]: {"status": "error"},
        v["owner_down"]: {"status": "error"},
        v["deleting"]: {"status": "error_deleting"},
        v["attached"]: {"status": "in-use", "attach_status": "attached"},
        v["not_attached"]: {"status": "available", "attach_status": "detached"},
        v["still_attached"]: {"status": "in-use", "attach_status": "attached"},
        v["no_host"]: {"status": "error"},
    }
    events = journal.events()
    assert {e["subject"] for e in events if e["type"] == fix.UNRECOVERABLE} == {
        v["never_created"], v["owner_down"], v["no_host"]}
    for event in events:
        validator().validate(event)


def test_a_dry_run_changes_nothing_and_says_why(cinder, tmp_path):
    path, rows = cinder
    api = FakeCinderApi()
    instance = new_id()
    attaching = add_volume(rows, "attaching", attach=(instance, "cmp1"))
    creating = add_volume(rows, "creating", host=DOWN)
    _, collector = world(tmp_path, FakeGuests({("cmp1", instance): hc.GuestDisks(RUNNING, frozenset())}),
                         {"cmp1": "up"}, api)
    sweeper = CinderSweeper(Database(f"sqlite:///{path}", name="cinder db", timeout=2), api)
    said = []

    result = sweep_once([("cinder", lambda: sweeper)], collector, None, stale_period=STALE, now=NOW, dry_run=True,
                        say=said.append)

    assert result.counts == {"reset": 1, "error": 1} and api.calls == []
    assert {rows.get("volumes", id=attaching)["status"], rows.get("volumes", id=creating)["status"]} == {
        "attaching", "creating"}
    text = "\n".join(said)
    assert f"cinder volume {attaching}" in text and "status=available" in text and "no disk of volume" in text
    assert "cinder-volume on ctl2@lab is down" in text


def test_a_racing_update_is_left_alone(cinder, tmp_path):
    """nova finishes the attach while the sweep looks at the guest: the row moved on, no reset is sent."""
    path, rows = cinder
    api = FakeCinderApi()
    instance = new_id()
    vid = add_volume(rows, "attaching", attach=(instance, "cmp1"))

    class Racing(FakeGuests):
        def guest_disks(self, host, instance_uuid):
            rows.set("volumes", {"id": vid}, status="in-use", attach_status="attached", updated_at=NOW)
            return hc.GuestDisks(RUNNING, frozenset())
    _, collector = world(tmp_path, Racing({}), {"cmp1": "up"}, api)
    sweeper = CinderSweeper(Database(f"sqlite:///{path}", name="cinder db", timeout=2), api)

    result = sweep_once([("cinder", lambda: sweeper)], collector, None, stale_period=STALE, now=NOW)

    assert result.counts == {fix.LOST_RACE: 1} and api.calls == []
    assert rows.get("volumes", id=vid)["status"] == "in-use"


def test_a_question_no_backend_answers_is_never_acted_on(cinder, tmp_path):
    """Without libvirt_uri (no connection reader) an attach task is unobserved, not unknown: never changed."""
    path, rows = cinder
    api = FakeCinderApi()
    attaching = add_volume(rows, "attaching", attach=(new_id(), "cmp1"))
    creating = add_volume(rows, "creating")
    share, collector = world(tmp_path, FakeGuests({}), {"cmp1": "up"}, api)
    (share / f"volume-{creating}").write_bytes(b"")
    sweeper = CinderSweeper(Database(f"sqlite:///{path}", name="cinder db", timeout=2), api, {hc.VOLUME_STORE})

    result = sweep_once([("cinder", lambda: sweeper)], collector, None, stale_period=STALE, now=NOW)

    assert result.counts == {"unobserved": 1, "reset": 1} and result.ok
    assert api.calls == [("volume", creating, {"status": "available"})]
    assert rows.get("volumes", id=attaching)["status"] == "attaching"


def test_the_scan_gives_the_backends_what_they_ask(cinder):
    path, rows = cinder
    instance = new_id()
    vid = add_volume(rows, "detaching", attach=(instance, "cmp1"), attach_status="attached")
    source = add_volume(rows, "available", migration_status="migrating")
    target = add_volume(rows, "available", migration_status=f"target:{source}")
    bid = new_id()
    rows.add("backups", id=bid, volume_id=vid, status="creating", updated_at=OLD, created_at=OLD, deleted=False,
             host="ctl1", container="c1", service_metadata="volume_x_backup_y")
    sweeper = CinderSweeper(Database(f"sqlite:///{path}", name="cinder db", timeout=2))
    found = {(s.id, s.kind): s for s in sweeper.scan(cutoff(STALE, NOW))}

    r = sweeper.resource(found[(vid, "volume")])
    assert (r.host, r.record["instance_uuid"], r.record["volume_host"]) == ("cmp1", instance, UP)
    m = sweeper.resource(found[(source, "volume_migration")])
    assert (m.host, m.record["migration_target"]) == (UP, target)
    b = sweeper.resource(found[(bid, "backup")])
    assert (b.host, b.record["container"], b.record["service_metadata"]) == ("ctl1", "c1", "volume_x_backup_y")
    with pytest.raises(health.HealthError, match="no backend observes the backup store"):
        CinderSweeper(sweeper.db, None, {hc.CONNECTION}).resource(found[(bid, "backup")])
