"""Recovery that knows storage, with nova and cinder faked (tests/fakes.py): the plan's storage classes and the
local-disk policy, the repair of a volume the fenced host left attaching/detaching, the check that volumes followed
their server, and every cinder read bounded. No lab."""
import threading
import time

import pytest

from crashup_lib import cinder, config, events, pacemaker, repair
from crashup_lib import plan as P
from crashup_lib.recovery import pipeline, storage
from tests.fakes import FakeCinder, FakeCluster, FakeNova, server, volume

HOST = "compute1"


class Recorder:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)

    def of(self, kind):
        return [e["payload"] for e in self.events if e["type"] == kind]


def request(mode="auto", fenced_at=1000.0):
    return pacemaker.RecoveryRequest(node=HOST, state="pending", mode=mode, fenced_at=fenced_at, updated_at=fenced_at)


def recovery(nova, block_storage, **options):
    cfg = config.load(env={f"CRASHUP_{k.upper()}": str(v) for k, v in options.items()})
    return pipeline.Recovery(cfg, FakeCluster(), nova, Recorder(), clock=lambda: 2000.0, cinder=block_storage)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(storage, "SETTLE", 0.3)
    monkeypatch.setattr(storage, "SETTLE_POLL", 0.05)


def image_server(sid, **kw):
    return server(sid, image_id="img-1", **kw)


def agg(name, hosts, **metadata):
    from crashup_lib import nova
    return nova.Aggregate(1, name, tuple(hosts), metadata)


# --- the plan: what the evacuation keeps --------------------------------------------------------------------------

def test_the_plan_classes_each_disk_and_lists_the_volumes():
    servers = [server("bfv"), image_server("img"), image_server("img-vol")]
    p = P.build_plan(HOST, servers, volumes={"bfv": ("v1",), "img": (), "img-vol": ("v2", "v3")})
    assert {s.server_id: (s.storage, s.volumes) for s in p.steps} == {
        "bfv": (P.Storage.VOLUME, ("v1",)), "img": (P.Storage.LOCAL, ()), "img-vol": (P.Storage.LOCAL, ("v2", "v3"))}
    assert any(n.startswith("warning: 2 to evacuate have a local disk") for n in p.notes)
    assert "local disk: rebuilt from its image" in p.step("img").reason
    assert "local disk" not in p.step("bfv").reason
    data = p.to_dict()
    assert {s["server_id"]: s["storage"] for s in data["steps"]} == {"bfv": "volume", "img": "local",
                                                                     "img-vol": "local"}
    text = p.render()
    disks = text[text.index("Disks:"):].splitlines()
    assert disks[1].split() == ["NAME", "ID", "DISK", "VOLUMES"]
    assert [line.split() for line in disks[2:]] == [["bfv", "bfv", "volume", "v1"], ["img", "img", "local", "-"],
                                                    ["img-vol", "img-vol", "local", "v2", "v3"]]


def test_volumes_not_known_show_as_unknown():
    p = P.build_plan(HOST, [server("a"), server("b")], volumes={"a": ("v1",)})
    assert p.step("a").volumes == ("v1",) and p.step("b").volumes is None
    assert P.build_plan(HOST, [server("a")]).step("a").volumes is None
    assert "\nb     b   volume  ?\n" in P.build_plan(HOST, [server("a"), server("b")], volumes={"a": ()}).render()


@pytest.mark.parametrize("value, expected", [("true", P.Storage.SHARED), ("Yes", P.Storage.SHARED),
                                             ("false", P.Storage.LOCAL), ("", P.Storage.LOCAL)])
def test_shared_instance_storage_is_an_aggregate_of_the_failed_host(value, expected):
    aggregates = [agg("nfs", [HOST, "compute2"], **{P.SHARED_STORAGE_KEY: value})]
    p = P.build_plan(HOST, [image_server("img"), server("bfv")], aggregates=aggregates)
    assert p.step("img").storage is expected and p.step("bfv").storage is P.Storage.VOLUME
    assert any("local disk" in n for n in p.notes) is (expected is P.Storage.LOCAL)


def test_an_aggregate_the_failed_host_is_not_in_does_not_share_its_storage():
    p = P.build_plan(HOST, [image_server("img")], aggregates=[agg("nfs", ["compute2"], **{P.SHARED_STORAGE_KEY: "1"})])
    assert p.step("img").storage is P.Storage.LOCAL


def test_local_disks_stay_when_the_policy_says_so():
    policy = P.Policy(evacuate_local_disk=False)
    aggregates = [agg("other", [HOST])]
    p = P.build_plan(HOST, [image_server("img"), server("bfv"), image_server("gone", host="compute2")],
                     aggregates=aggregates, policy=policy)
    assert [s.server_id for s in p.steps] == ["bfv"]
    assert [(s.server_id, s.code) for s in p.skipped] == [("gone", "already_moved"), ("img", "local_disk")]
    assert not any("local disk" in n for n in p.notes)
    shared = P.build_plan(HOST, [image_server("img")], policy=policy,
                          aggregates=[agg("nfs", [HOST], **{P.SHARED_STORAGE_KEY: "true"})])
    assert [s.server_id for s in shared.steps] == ["img"]


def test_the_policy_comes_from_the_configuration():
    assert P.Policy.from_config(config.load(env={})).evacuate_local_disk is True
    assert P.Policy.from_config(config.load(env={"CRASHUP_EVACUATE_LOCAL_DISK": "no"})).evacuate_local_disk is False
    with pytest.raises(config.ConfigError, match="evacuate_local_disk"):
        config.load(env={"CRASHUP_EVACUATE_LOCAL_DISK": "maybe"})
    assert config.load(env={"CRASHUP_VOLUME_CHECKS": "off"}).volume_checks is False


# --- the repair of a volume the fenced host left half attached -------------------------------------------------------

def att(vid, sid="s", status="attached", host=None):
    return cinder.Attachment(f"a-{vid}-{sid}", sid, host, None, vid, status)


@pytest.mark.parametrize("status, records, action, values", [
    ("attaching", [att("v", status="attaching")], "reset-in-use", {"status": "in-use", "attach_status": "attached"}),
    ("attaching", [att("v", status="reserved")], "reset-in-use", {"status": "in-use", "attach_status": "attached"}),
    ("detaching", [att("v")], "reset-in-use", {"status": "in-use", "attach_status": "attached"}),
    ("attaching", [], "reset-available", {"status": "available", "attach_status": "detached"}),
    ("attaching", [att("other-volume")], "reset-available", {"status": "available", "attach_status": "detached"}),
])
def test_a_volume_stuck_on_the_fenced_host_is_set_so_evacuation_can_attach_it(status, records, action, values):
    decision = repair.decide_volume("s", volume("v", status=status), records)
    assert decision.action == action and dict(decision.values) == values
    assert decision.reason.startswith(f"{status} on the fenced host, so that nova's evacuation can attach it anew")
    block_storage = FakeCinder([volume("v", status=status)])
    for r in records:
        block_storage.attach(r.volume_id, r.server_id, HOST, r.status)
    repair.apply_volume(block_storage, decision)
    assert block_storage.resets == [("volume", "v", values)]


@pytest.mark.parametrize("status", ["in-use", "available", "reserved", "error", "deleting", "creating"])
def test_other_volumes_are_not_this_repairs_business(status):
    assert repair.decide_volume("s", volume("v", status=status), [att("v")]) is None


def test_a_multiattach_volume_is_left_for_a_person():
    decision = repair.decide_volume("s", volume("v", status="attaching", multiattach=True), [att("v")])
    assert decision.action == "skip" and decision.values == () and "multiattach" in decision.reason
    block_storage = FakeCinder([volume("v", status="attaching", multiattach=True)])
    repair.apply_volume(block_storage, decision)
    assert block_storage.resets == []


# --- the pipeline: before, during and after the evacuations ----------------------------------------------------------

def cloud(*stuck, **servers_volumes):
    """A FakeCinder with volume `vid` attached to server `sid` on HOST for each sid=vid (or sid=(vid, ...)); the
    volumes in `stuck` are left attaching by the fenced host."""
    block_storage = FakeCinder()
    for sid, vids in servers_volumes.items():
        for vid in (vids,) if isinstance(vids, str) else vids:
            status = "attaching" if vid in stuck else "in-use"
            block_storage._volumes[vid] = volume(vid, status=status)
            block_storage.attach(vid, sid, HOST, "attaching" if vid in stuck else "attached")
    return block_storage


def test_volumes_follow_their_servers_and_the_events_say_so():
    block_storage = cloud(bfv="root-1", img="data-1")
    nova = FakeNova([server("bfv"), image_server("img"), image_server("plain")], cinder=block_storage)
    rec = recovery(nova, block_storage)
    step = rec.recover(request())
    assert step.request.state == "done" and step.request.note == "3 evacuated, 0 failed, 0 skipped"
    evacuated = {e["id"]: e for e in rec.emitter.of(events.INSTANCE_EVACUATED)}
    assert {k: e["storage"] for k, e in evacuated.items()} == {"bfv": "volume", "img": "local", "plain": "local"}
    target = evacuated["bfv"]["target_host"]
    assert evacuated["bfv"]["volumes"] == [{"id": "root-1", "moved": True, "hosts": [target], "status": "in-use"}]
    assert evacuated["img"]["volumes"][0]["moved"] is True and "volumes" not in evacuated["plain"]
    recovered = rec.emitter.of(events.HOST_RECOVERED)[-1]
    assert recovered["volumes_not_moved"] == 0 and recovered["left_on_host"] == []
    # nova's own records are untouched by crashup: the volumes moved because nova moved them
    assert block_storage.resets == [] and {r.host_name for r in block_storage.records} == {target}


def test_a_volume_left_attaching_is_repaired_before_its_server_is_evacuated():
    block_storage = cloud("root-1", bfv="root-1")
    nova = FakeNova([server("bfv")], cinder=block_storage)
    order = []
    real_reset, real_evacuate = block_storage.reset_status, nova.evacuate
    block_storage.reset_status = lambda *a: order.append("reset") or real_reset(*a)
    nova.evacuate = lambda *a, **kw: order.append("evacuate") or real_evacuate(*a, **kw)
    rec = recovery(nova, block_storage)
    step = rec.recover(request())
    assert order == ["reset", "evacuate"] and step.request.note == "1 evacuated, 0 failed, 0 skipped"
    assert block_storage.resets == [("volume", "root-1", {"status": "in-use", "attach_status": "attached"})]
    repaired = rec.emitter.of(events.RESOURCE_STALE_RECOVERED)
    assert [(r["service"], r["resource_type"], r["id"], r["state"], r["action"]) for r in repaired] == [
        ("cinder", "volume", "root-1", "attaching", "reset-in-use")]
    assert "server bfv on failed host compute1" in repaired[0]["reason"]
    assert rec.emitter.of(events.INSTANCE_EVACUATED)[0]["volumes"][0]["moved"] is True


def test_without_the_repair_nova_s_evacuation_of_that_server_fails():
    """What the repair is for: the same cloud with volume_checks off."""
    block_storage = cloud("root-1", bfv="root-1")
    nova = FakeNova([server("bfv")], cinder=block_storage)
    rec = recovery(nova, block_storage, volume_checks="no")
    step = rec.recover(request())
    assert step.request.note == "0 evacuated, 1 failed, 0 skipped" and block_storage.calls == []


def test_a_multiattach_volume_left_attaching_is_reported_not_changed():
    block_storage = cloud("shared-1", bfv="shared-1")
    block_storage._volumes["shared-1"] = volume("shared-1", status="attaching", multiattach=True)
    rec = recovery(FakeNova([server("bfv")], cinder=block_storage), block_storage)
    rec.recover(request())
    assert block_storage.resets == []
    alerts = rec.emitter.of(events.RESOURCE_STALE_UNRECOVERABLE)
    assert [(a["id"], a["action"]) for a in alerts] == [("shared-1", "none")] and "multiattach" in alerts[0]["reason"]


def test_a_repair_cinder_refuses_is_an_alert_and_the_recovery_goes_on():
    block_storage = cloud("root-1", bfv="root-1")
    block_storage.failures["reset_status"] = cinder.CinderError("reset_status", "root-1", "HTTP 400: no", 400)
    rec = recovery(FakeNova([server("bfv"), server("other")], cinder=block_storage), block_storage)
    step = rec.recover(request())
    assert step.request.state == "done" and "1 evacuated, 1 failed" in step.request.note
    alert = rec.emitter.of(events.RESOURCE_STALE_UNRECOVERABLE)[0]
    assert alert["action"] == "none" and alert["reason"].endswith("reset-in-use failed: cinder reset_status root-1: "
                                                                  "HTTP 400: no")


def test_volumes_that_did_not_follow_are_reported_after_a_bounded_wait():
    block_storage = cloud(bfv="root-1")
    nova = FakeNova([server("bfv"), server("plain")])        # not linked: cinder keeps the old attachment
    rec = recovery(nova, block_storage)
    started = time.monotonic()
    step = rec.recover(request())
    assert time.monotonic() - started < storage.SETTLE + 1
    state = rec.emitter.of(events.INSTANCE_EVACUATED)
    bfv = next(e for e in state if e["id"] == "bfv")
    assert bfv["volumes"] == [{"id": "root-1", "moved": False, "hosts": [HOST], "status": "in-use"}]
    assert rec.emitter.of(events.HOST_RECOVERED)[-1]["volumes_not_moved"] == 1
    assert step.request.note.endswith(", 1 volumes not moved")
    reads = [c for c in block_storage.calls if c == ("volume", "root-1")]
    assert 3 <= len(reads) <= storage.SETTLE / storage.SETTLE_POLL + 3     # retried, and bounded


def test_a_volume_still_settling_is_read_again_until_it_has_moved():
    block_storage = cloud(bfv="root-1")
    block_storage.moves_to_settle = 2                       # the old attachment shows for two more reads
    rec = recovery(FakeNova([server("bfv")], cinder=block_storage), block_storage)
    rec.recover(request())
    assert rec.emitter.of(events.INSTANCE_EVACUATED)[0]["volumes"][0]["moved"] is True
    assert rec.emitter.of(events.HOST_RECOVERED)[-1]["volumes_not_moved"] == 0


def test_a_slow_check_does_not_hold_up_the_other_evacuations(monkeypatch):
    monkeypatch.setattr(storage, "SETTLE", 1.0)
    block_storage = cloud(slow="root-1")
    nova = FakeNova([server("slow")] + [image_server(f"s{i}") for i in range(5)])   # slow is not linked: no move
    rec = recovery(nova, block_storage)
    rec.recover(request())
    kinds = [(e["type"], e["payload"].get("id")) for e in rec.emitter.events]
    evacuated = [i for t, i in kinds if t == events.INSTANCE_EVACUATED]
    assert evacuated[-1] == "slow" and len(evacuated) == 6      # the five others went out while it was checked
    assert kinds[-1][0] == events.HOST_RECOVERED                # and the host's summary waited for it


def test_cinder_unreachable_stops_the_reads_and_the_evacuations_go_ahead():
    block_storage = cloud(a="v1", b="v2", c="v3")
    block_storage.failures["attachments"] = cinder.CinderError("attachments", "a", "cannot connect",
                                                               unavailable=True)
    nova = FakeNova([server("a"), server("b"), server("c")], cinder=block_storage)
    rec = recovery(nova, block_storage, concurrency=1)
    step = rec.recover(request())
    assert step.request.note == "3 evacuated, 0 failed, 0 skipped"
    assert len(block_storage.calls) == 1                     # the first failure stopped the rest
    assert all("volumes" not in e for e in rec.emitter.of(events.INSTANCE_EVACUATED))   # not known: not checked


def test_gathering_is_bounded_as_a_whole():
    block_storage = cloud(**{f"s{i}": f"v{i}" for i in range(6)})
    real = block_storage.attachments
    block_storage.attachments = lambda sid: time.sleep(0.3) or real(sid)
    started = time.monotonic()
    found = storage.gather(block_storage, [f"s{i}" for i in range(6)], concurrency=2, budget=0.45)
    assert time.monotonic() - started < 0.8
    assert 1 <= len(found) < 6 and all(sv.volume_ids == (f"v{sid[1:]}",) for sid, sv in found.items())


def test_a_broken_cinder_client_is_a_warning_not_a_stopped_recovery():
    block_storage = cloud(a="v1")
    block_storage.failures["attachments"] = RuntimeError("bug")
    assert storage.gather(block_storage, ["a"]) == {}
    assert storage.gather(None, ["a"]) == {} and storage.gather(block_storage, []) == {}


def test_check_moved_states():
    v = cinder.Volume("v", "in-use", "attached", None, None, False, 1,
                      (cinder.Attachment("a1", "s", "new", None, "v"), cinder.Attachment("a2", "s", "old", None, "v"),
                       cinder.Attachment("a3", "x", "old", None, "v")))
    assert storage.state_of(v, "v", "s", "old", "new") == storage.VolumeState("v", False, ("new", "old"), "in-use")
    assert storage.state_of(v, "v", "x", "old", "new").moved is False
    assert storage.state_of(None, "v", "s", "old", "new") == storage.VolumeState("v", False, (), "gone")
    only_new = cinder.Volume("v", "in-use", "attached", None, None, False, 1, v.attachments[:1])
    assert storage.state_of(only_new, "v", "s", "old", "new").moved is True


def test_unknown_volumes_are_read_after_the_evacuation():
    block_storage = cloud(s="v1")
    block_storage.server_moved("s", "compute2")
    states = storage.check_moved(block_storage, "s", None, HOST, "compute2", settle=0)
    assert states == [storage.VolumeState("v1", True, ("compute2",), "in-use")]
    block_storage.failures["volumes_of"] = cinder.CinderError("volumes_of", "s", "cannot connect", unavailable=True)
    assert storage.check_moved(block_storage, "s", None, HOST, "compute2", settle=0) == []


def test_an_unreachable_cinder_after_the_evacuation_is_moved_unknown():
    block_storage = cloud(s=("v1", "v2"))
    block_storage.failures["volume"] = cinder.CinderError("volume", "v1", "no answer", unavailable=True)
    states = storage.check_moved(block_storage, "s", ("v1", "v2"), HOST, "compute2", settle=5)
    assert [(s.id, s.moved) for s in states] == [("v1", None), ("v2", None)]
    assert block_storage.calls == [("volume", "v1")]            # no retries against a cinder that is not there


# --- local disks left on the host ------------------------------------------------------------------------------------

def test_local_disk_servers_left_on_the_host_do_not_hold_its_release():
    block_storage = cloud()
    nova = FakeNova([server("bfv"), image_server("img")], cinder=block_storage)
    rec = recovery(nova, block_storage, evacuate_local_disk="no")
    step = rec.recover(request())
    assert step.request.state == "done" and not step.waiting
    assert step.request.note == "1 evacuated, 0 failed, 1 skipped, 1 left on the host (local disk)"
    assert [sid for sid, _, _ in nova.evacuations] == ["bfv"] and nova.server("img").host == HOST
    left = rec.emitter.of(events.HOST_RECOVERED)[-1]["left_on_host"]
    assert [(x["id"], x["name"]) for x in left] == [("img", "img")] and "local disk" in left[0]["reason"]


def test_the_events_recovery_emits_follow_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    block_storage = cloud("root-1", bfv="root-1", img="data-1")
    block_storage._volumes["m"] = volume("m", status="attaching", multiattach=True)
    block_storage.attach("m", "img", HOST, "attaching")
    rec = recovery(FakeNova([server("bfv"), image_server("img"), image_server("x")], cinder=block_storage),
                   block_storage, evacuate_local_disk="yes")
    rec.recover(request())
    validator = jsonschema.Draft202012Validator(events.load_schema())
    for event in rec.emitter.events:
        validator.validate(event)
    assert {e["type"] for e in rec.emitter.events} >= {events.RESOURCE_STALE_RECOVERED,
                                                       events.RESOURCE_STALE_UNRECOVERABLE, events.INSTANCE_EVACUATED}


def test_the_fake_has_only_the_real_methods_with_their_parameters():
    import inspect
    for name, method in inspect.getmembers(FakeCinder, inspect.isfunction):
        if not name.startswith("_") and hasattr(cinder.CinderApi, name):
            assert list(inspect.signature(method).parameters) == \
                list(inspect.signature(getattr(cinder.CinderApi, name)).parameters), name
    assert {n for n, _ in inspect.getmembers(FakeCinder, inspect.isfunction) if not n.startswith("_")} - \
        set(dir(cinder.CinderApi)) == {"attach", "server_moved"}                 # the fake world's own levers


def test_emits_from_the_check_threads_are_serialised():
    block_storage = cloud(**{f"s{i}": f"v{i}" for i in range(8)})
    nova = FakeNova([server(f"s{i}") for i in range(8)], cinder=block_storage)
    rec = recovery(nova, block_storage)
    inside = []
    lock = threading.Lock()

    def emit(event):
        if not lock.acquire(blocking=False):
            inside.append("overlap")
            return
        try:
            time.sleep(0.005)
            rec.emitter.events.append(event)
        finally:
            lock.release()
    rec.emitter.emit = emit
    rec.recover(request())
    assert inside == [] and len(rec.emitter.of(events.INSTANCE_EVACUATED)) == 8


def test_the_volumes_of_a_server_being_evacuated_are_nova_s_business():
    """A resumed recovery: nova may be attaching them on the new host right now (attaching is then its work)."""
    import datetime
    from crashup_lib import nova as nova_api
    block_storage = cloud("v-flight", "v-task", flight="v-flight", task="v-task")
    nova = FakeNova([server("flight"), server("task", task_state="rebuild_block_device_mapping")],
                    cinder=block_storage)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    nova._migrations.append(nova_api.Migration(99, "flight", HOST, "compute2", "pre-migrating", "evacuation", now, now))
    rec = recovery(nova, block_storage)
    rec._repair_volumes(HOST, storage.gather(block_storage, ["flight", "task"]), nova.servers_on_host(HOST), 1000.0)
    assert block_storage.resets == [] and rec.emitter.events == []
    nova.failures["migrations"] = nova_api.NovaUnavailable("migrations", HOST, "no answer")
    nova._migrations.clear()
    rec._repair_volumes(HOST, storage.gather(block_storage, ["flight"]), nova.servers_on_host(HOST), 1000.0)
    assert block_storage.resets == []                      # not knowing what nova does: nothing is changed
    del nova.failures["migrations"]
    rec._repair_volumes(HOST, storage.gather(block_storage, ["flight"]), nova.servers_on_host(HOST), 1000.0)
    assert [r[1] for r in block_storage.resets] == ["v-flight"]
