"""The Health Collector's cinder backends: the question a stuck resource asks, cinder's service heartbeat, the
instance's host, the volume's connection to its guest (a fake reader, and libvirt's real test driver), the file
store of volumes and of backups; and the routes wiring.py builds from the configuration. No lab."""
import pytest
from hypothesis import given, strategies as st

from crashup_lib import config, health
from crashup_lib.cinder import VolumeService
from crashup_lib.health import cinder as hc
from crashup_lib.nova import NovaUnavailable, Service
from crashup_lib.rules import ABSENT, HOST_DOWN, RUNNING, SHUT_OFF, UNKNOWN
from crashup_lib.sweep import wiring

NO_SLEEP = lambda seconds: None  # noqa: E731
VOL, INST = "11111111-0000-4000-8000-00000000000a", "22222222-0000-4000-8000-00000000000b"


def volume(status, *, host="ctl1@lab#lab", attachments=0, instance=INST, instance_host="cmp1", vid=VOL, **more):
    """A Resource as sweep/cinder.py builds it: an attach task names the instance's host."""
    record = {"status": status, "attachments": attachments, "volume_host": host, **more}
    if status in hc.ATTACH_TASKS:
        record["instance_uuid"] = instance
        host = instance_host
    return health.Resource("cinder", "volume", vid, host, None, record)


class FakeCinderApi:
    """CinderApi.services(binary): VolumeService records, or an error (cinder not answering)."""
    timeout = 1.0

    def __init__(self, services=(), fail=None):
        self.records, self.fail, self.calls = list(services), fail, []

    def services(self, binary=None):
        self.calls.append(binary)
        if self.fail:
            raise self.fail
        return [s for s in self.records if binary is None or s.binary == binary]


def svc(host, state="up", binary="cinder-volume", status="enabled"):
    return VolumeService(binary, host, "nova", status, state, None)


class FakeNova:
    timeout = 1.0

    def __init__(self, states):
        self.states, self.asked = states, []

    def service(self, host, binary="nova-compute"):
        self.asked.append(host)
        state = self.states.get(host)
        if state is None:
            raise NovaUnavailable("service", host, "nova not answering")
        return Service("7", host, binary, "down" if state == "forced" else state, "enabled", state == "forced",
                       None, None)


class FakeGuests:
    """A GuestReader: {(host, instance): GuestDisks}; a host in `down` raises."""
    name, timeout = "fake guests", 1.0

    def __init__(self, guests, down=()):
        self.guests, self.down, self.asked = guests, set(down), []

    def guest_disks(self, host, instance_uuid):
        self.asked.append((host, instance_uuid))
        if host in self.down:
            raise ConnectionError(f"cannot connect to {host}")
        return self.guests.get((host, instance_uuid))


def observe(*backends, resource, **kw):
    return health.Collector({("cinder", resource.kind): backends}, resync_count=0, sleep=NO_SLEEP,
                            **kw).observe(resource)


# ------------------------------------------------------------------------------------------------- pure parts
def test_the_question_a_stuck_resource_asks():
    for status in ("attaching", "detaching", "reserved"):
        assert hc.question("volume", status) == hc.CONNECTION
    for status in ("creating", "deleting", "extending", "downloading", "uploading", "maintenance", None):
        assert hc.question("volume", status) == hc.VOLUME_STORE
    assert hc.question("volume_migration", "attaching") == hc.VOLUME_STORE   # the migration's, not the status's
    assert hc.question("backup", "creating") == hc.BACKUP_STORE


def test_service_host_drops_the_pool_only():
    assert hc.service_host("ctl1@lab#lab") == "ctl1@lab"
    assert hc.service_host("ctl1@lvm") == "ctl1@lvm"
    assert hc.service_host("ctl1") == "ctl1"
    assert hc.service_host(None) is None and hc.service_host("") is None and hc.service_host("#pool") is None


def test_the_attachment_an_attach_task_is_about():
    a = hc.Attachment(INST, "cmp1", "attaching")
    other = hc.Attachment("33333333-0000-4000-8000-000000000000", "cmp2", "attached")
    assert hc.task_attachment("attaching", [a]) == a
    assert hc.task_attachment("detaching", [hc.Attachment(INST, "cmp1", "attached")]).host == "cmp1"
    assert hc.task_attachment("attaching", [a, other]) == a                 # the one in the task's own state
    assert hc.task_attachment("detaching", [a, other]) is None              # cannot be told: unknown
    assert hc.task_attachment("attaching", [hc.Attachment(INST, None, "reserved")]) is None   # no host yet
    assert hc.task_attachment("attaching", []) is None


@given(st.lists(st.tuples(st.sampled_from([INST, "i2", None]), st.sampled_from(["cmp1", "cmp2", None]),
                          st.sampled_from(["attaching", "attached", "detaching", "reserved"])), max_size=4),
       st.sampled_from(["attaching", "detaching", "reserved"]))
def test_the_task_attachment_is_one_that_names_an_instance_and_its_host(rows, status):
    attachments = [hc.Attachment(*r) for r in rows]
    found = hc.task_attachment(status, attachments)
    if found is not None:
        assert found in attachments and found.instance_uuid and found.host
        pairs = {(a.instance_uuid, a.host) for a in attachments if a.instance_uuid and a.host}
        assert len(pairs) == 1 or found.attach_status == status


def test_volume_serials_from_a_domain_xml():
    xml = ("<domain><devices><disk type='file'><source file='/x'/><target dev='vda'/></disk>"
           f"<disk type='network'><serial>{VOL}</serial></disk><disk><serial> v2 </serial></disk>"
           "<interface type='bridge'><serial>not-a-disk</serial></interface></devices></domain>")
    assert hc.volume_serials(xml) == {VOL, "v2"}


# ------------------------------------------------------------------------------------------- host level
def test_cinder_volume_heartbeat_of_the_volumes_backend():
    api = FakeCinderApi([svc("ctl1@lab", "down"), svc("ctl2@lab", "up"), svc("ctl1", "up", "cinder-backup")])
    backend = hc.CinderServiceBackend(api)
    seen = observe(backend, resource=volume("creating"))
    assert seen.reality == HOST_DOWN and seen.detail == "cinder-volume on ctl1@lab is down"
    assert observe(backend, resource=volume("deleting", host="ctl2@lab#lab")).reality == UNKNOWN   # up: no answer
    assert backend.observe(volume("deleting", host="ctl2@lab#lab")).reality == health.HOST_UP
    assert backend.observe(volume("creating", host="ctl9@lab#lab")).reality == UNKNOWN   # no such service
    backup = health.Resource("cinder", "backup", "b1", "ctl1", None, {"status": "creating"})
    assert backend.observe(backup).reality == health.HOST_UP and api.calls[-1] == "cinder-backup"
    # a cluster: one service up finishes the task; mixed unknown states are unknown
    both = hc.CinderServiceBackend(FakeCinderApi([svc("ctl1@lab", "down"), svc("ctl1@lab", "up")]))
    assert both.observe(volume("creating")).reality == health.HOST_UP


def test_an_attach_task_is_not_cinder_volumes_and_is_not_asked():
    api = FakeCinderApi([svc("ctl1@lab", "down")])
    seen = hc.CinderServiceBackend(api).observe(volume("attaching"))
    assert seen.reality == health.HOST_UP and api.calls == []


def test_cinder_not_answering_is_unknown_in_one_line():
    api = FakeCinderApi(fail=RuntimeError("cinder services all: HTTP 503: down\nfor maintenance"))
    seen = observe(hc.CinderServiceBackend(api), resource=volume("creating"))
    assert seen.reality == UNKNOWN and "HTTP 503" in seen.detail and "\n" not in seen.detail


def test_the_instances_host_through_novas_heartbeat():
    nova = FakeNova({"cmp1": "forced", "cmp2": "up"})
    backend = hc.InstanceHeartbeatBackend(health.NovaHeartbeatBackend(nova))
    assert observe(backend, resource=volume("attaching")).reality == HOST_DOWN
    assert backend.observe(volume("detaching", instance_host="cmp2")).reality == health.HOST_UP
    assert backend.observe(volume("creating")).reality == health.HOST_UP and nova.asked == ["cmp1", "cmp2"]
    assert backend.observe(volume("attaching", instance_host=None)).reality == UNKNOWN
    assert observe(backend, resource=volume("attaching", instance_host="cmp3")).reality == UNKNOWN


# ------------------------------------------------------------------------------------------ connections
def test_the_volumes_connection_to_its_guest():
    guests = FakeGuests({("cmp1", INST): hc.GuestDisks(RUNNING, frozenset({VOL})),
                         ("cmp2", INST): hc.GuestDisks(SHUT_OFF, frozenset({VOL})),
                         ("cmp3", INST): hc.GuestDisks(RUNNING, frozenset({"another"})),
                         ("cmp5", INST): hc.GuestDisks(UNKNOWN, frozenset({VOL}))}, down={"cmp6"})
    backend = hc.VolumeConnectionBackend(guests)
    expect = {"cmp1": RUNNING, "cmp2": SHUT_OFF, "cmp3": ABSENT, "cmp4": ABSENT, "cmp5": UNKNOWN, "cmp6": UNKNOWN}
    for host, reality in expect.items():
        seen = observe(backend, resource=volume("attaching", instance_host=host))
        assert seen.reality == reality, (host, seen)
    assert "cannot connect to cmp6" in observe(backend, resource=volume("detaching", instance_host="cmp6")).detail
    assert backend.observe(volume("attaching", instance=None)).reality == UNKNOWN
    asked = len(guests.asked)
    assert backend.observe(volume("creating")).reality == UNKNOWN and len(guests.asked) == asked


@pytest.fixture(scope="module")
def libvirt_node(tmp_path_factory):
    pytest.importorskip("libvirt")
    disks = (f"<devices><disk type='file' device='disk'><source file='/tmp/x'/><target dev='vdb'/>"
             f"<serial>{VOL}</serial></disk></devices>")
    domains = "".join(
        f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory><vcpu>1</vcpu>"
        f"<os><type>hvm</type></os><test:runstate>{state}</test:runstate>{extra}</domain>"
        for name, uuid, state, extra in (("with", INST, 1, disks),
                                         ("off", "22222222-0000-4000-8000-0000000000cc", 5, disks),
                                         ("without", "22222222-0000-4000-8000-0000000000dd", 1, "")))
    path = tmp_path_factory.mktemp("libvirt") / "node.xml"
    path.write_text(f"<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>{domains}</node>")
    return f"test://{path}"


def test_libvirt_guest_disks_by_serial(libvirt_node):
    reader = hc.LibvirtVolumes(lambda host: libvirt_node)
    assert reader.guest_disks("cmp1", INST) == hc.GuestDisks(RUNNING, frozenset({VOL}))
    assert reader.guest_disks("cmp1", "22222222-0000-4000-8000-0000000000cc").reality == SHUT_OFF
    assert reader.guest_disks("cmp1", "22222222-0000-4000-8000-0000000000dd").volumes == frozenset()
    assert reader.guest_disks("cmp1", "22222222-0000-4000-8000-0000000000ff") is None
    backend = hc.VolumeConnectionBackend(reader)
    assert observe(backend, resource=volume("detaching")).reality == RUNNING
    assert observe(backend, resource=volume("attaching", instance="22222222-0000-4000-8000-0000000000dd")
                   ).reality == ABSENT
    bad = hc.VolumeConnectionBackend(hc.LibvirtVolumes("test:///nonexistent/{host}.xml", timeout=5))
    seen = observe(bad, resource=volume("attaching"))
    assert seen.reality == UNKNOWN and "\n" not in seen.detail


# ------------------------------------------------------------------------------------------------ the stores
def test_volume_files(tmp_path):
    share1, share2 = tmp_path / "share1", tmp_path / "share2"
    share1.mkdir()
    share2.mkdir()
    (share2 / f"volume-{VOL}").write_bytes(b"data")
    backend = hc.VolumeFileBackend([str(share1), str(share2)])
    assert observe(backend, resource=volume("creating")).reality == SHUT_OFF
    assert observe(backend, resource=volume("extending", attachments=1)).reality == RUNNING
    gone = observe(backend, resource=volume("deleting", vid="33333333-0000-4000-8000-000000000000"))
    assert gone.reality == ABSENT and "no volume-33333333" in gone.detail
    assert backend.observe(volume("attaching")).reality == UNKNOWN          # not its question
    migration = health.Resource("cinder", "volume_migration", "src", "ctl1@lab#lab", None,
                                {"status": "available", "migration_target": VOL})
    assert observe(backend, resource=migration).reality == SHUT_OFF
    no_target = health.Resource("cinder", "volume_migration", "src", "ctl1@lab#lab", None, {"status": "available"})
    assert observe(backend, resource=no_target).reality == ABSENT
    gone_target = health.Resource("cinder", "volume_migration", "src", None, None, {"migration_target": "x"})
    assert observe(backend, resource=gone_target).reality == ABSENT


def test_a_share_not_mounted_is_unknown_never_absent(tmp_path):
    (tmp_path / "share1").mkdir()
    backend = hc.VolumeFileBackend([str(tmp_path / "share1"), str(tmp_path / "not-mounted")])
    seen = observe(backend, resource=volume("creating"))
    assert seen.reality == UNKNOWN and "not-mounted" in seen.detail
    assert hc.VolumeFileBackend([]).observe(volume("creating")).reality == UNKNOWN


def test_backup_files(tmp_path):
    store = tmp_path / "backups"
    (store / "c1").mkdir(parents=True)
    (store / "c1" / "volume_x_backup_1_metadata").write_text("{}")
    (store / "c1" / "volume_x_backup_1-00001").write_bytes(b"z")
    (store / "c1" / "volume_x_backup_2-00001").write_bytes(b"z")
    backend = hc.BackupFileBackend([str(store)])

    def backup(container, prefix):
        return health.Resource("cinder", "backup", "b", "ctl1", None,
                               {"status": "creating", "container": container, "service_metadata": prefix})
    assert observe(backend, resource=backup("c1", "volume_x_backup_1")).reality == RUNNING
    assert observe(backend, resource=backup("c1", "volume_x_backup_2")).reality == SHUT_OFF
    assert observe(backend, resource=backup("c1", "volume_x_backup_3")).reality == ABSENT
    assert observe(backend, resource=backup("c2", "volume_x_backup_1")).reality == ABSENT
    assert observe(backend, resource=backup(None, "volume_x_backup_1")).reality == UNKNOWN
    assert observe(backend, resource=backup("../etc", "passwd")).reality == UNKNOWN
    assert observe(hc.BackupFileBackend([str(tmp_path / "nope")]), resource=backup("c1", "x")).reality == UNKNOWN


# ----------------------------------------------------------------------------------------- a whole route
def test_a_route_answers_each_task_by_its_owner(tmp_path):
    """cinder-volume down decides a create, not an attach; the instance's host down decides an attach."""
    share = tmp_path / "share"
    share.mkdir()
    (share / f"volume-{VOL}").write_bytes(b"")
    api = FakeCinderApi([svc("ctl1@lab", "down")])
    nova = FakeNova({"cmp1": "up", "cmp2": "forced"})
    guests = FakeGuests({("cmp1", INST): hc.GuestDisks(RUNNING, frozenset({VOL}))})
    route = [hc.CinderServiceBackend(api), hc.InstanceHeartbeatBackend(health.NovaHeartbeatBackend(nova)),
             hc.VolumeConnectionBackend(guests), hc.VolumeFileBackend([str(share)])]
    c = health.Collector({("cinder", "volume"): route}, resync_count=0, sleep=NO_SLEEP)
    assert c.observe(volume("creating")).reality == HOST_DOWN
    assert guests.asked == [] and nova.asked == []                  # nothing behind a down host is asked
    seen = c.observe(volume("attaching"))
    assert seen.reality == RUNNING and "has the volume" in seen.detail
    assert c.observe(volume("detaching", instance_host="cmp2")).reality == HOST_DOWN
    api.records = [svc("ctl1@lab", "up")]
    assert c.observe(volume("creating")).reality == SHUT_OFF


# ------------------------------------------------------------------------------------------------- wiring
def cfg(tmp_path, **sweep):
    text = "[sweep]\n" + "".join(f"{k} = {v}\n" for k, v in sweep.items())
    path = tmp_path / "crashup.conf"
    path.write_text(text)
    return config.load(str(path), env={})


def test_wiring_routes_cinder_by_what_is_configured(tmp_path, libvirt_node):
    bare = cfg(tmp_path, libvirt_uri="")
    assert not any(isinstance(k, tuple) and k[0] == "cinder" for k in wiring.routes_from_config(bare))
    assert wiring.cinder_observed(bare) == frozenset()

    full = cfg(tmp_path, libvirt_uri=libvirt_node, cinder_volume_dirs=str(tmp_path),
               cinder_backup_dirs=str(tmp_path))
    routes = wiring.routes_from_config(full)
    kinds = {k: [type(b).__name__ for b in v] for k, v in routes.items() if k[0] == "cinder"}
    assert kinds == {
        ("cinder", "volume"): ["CinderServiceBackend", "InstanceHeartbeatBackend", "VolumeConnectionBackend",
                               "VolumeFileBackend"],
        ("cinder", "volume_migration"): ["CinderServiceBackend", "VolumeFileBackend"],
        ("cinder", "backup"): ["CinderServiceBackend", "BackupFileBackend"]}
    assert wiring.cinder_observed(full) == {health.CONNECTION, health.VOLUME_STORE, health.BACKUP_STORE}

    files_only = cfg(tmp_path, libvirt_uri="", cinder_volume_dirs=str(tmp_path))
    assert [type(b).__name__ for b in wiring.routes_from_config(files_only)[("cinder", "volume")]] == [
        "CinderServiceBackend", "VolumeFileBackend"]
    assert wiring.cinder_observed(files_only) == {health.VOLUME_STORE}


def test_the_options_are_checked(tmp_path):
    c = cfg(tmp_path, cinder_volume_dirs="/srv/a, /srv/b")
    assert c.cinder_volume_dirs == ("/srv/a", "/srv/b") and c.cinder_backup_dirs == ()
