"""The Health Collector: pure mappings, libvirt's real test driver, IPMI against the BMC simulator, nova heartbeats,
glance's filesystem store, retries and time bounds. No lab."""
import hashlib
import socket
import threading
import time

import pytest

from crashup_lib import config, deadline, health, ipmi, rules
from crashup_lib.nova import NovaUnavailable, Service
from crashup_lib.rules import ABSENT, HOST_DOWN, PAUSED, RUNNING, SHUT_OFF, SUSPENDED, UNKNOWN
from tests.helpers import BmcSim, free_port, wait_for

NO_SLEEP = lambda seconds: None  # noqa: E731

# One domain per state the rules need, on libvirt's real test driver (runstate: virDomainState codes).
DOMAINS = {
    "run": ("11111111-0000-4000-8000-000000000001", 1, False),
    "blocked": ("11111111-0000-4000-8000-000000000002", 2, False),
    "paused": ("11111111-0000-4000-8000-000000000003", 3, False),
    "off": ("11111111-0000-4000-8000-000000000005", 5, False),
    "saved": ("11111111-0000-4000-8000-000000000006", 5, True),
    "crashed": ("11111111-0000-4000-8000-000000000007", 6, False),
    "pmsuspended": ("11111111-0000-4000-8000-000000000008", 7, False),
}
EXPECTED = {"run": RUNNING, "blocked": RUNNING, "paused": PAUSED, "off": SHUT_OFF, "saved": SUSPENDED,
            "crashed": SHUT_OFF, "pmsuspended": SUSPENDED}
MISSING = "11111111-0000-4000-8000-0000000000ff"


@pytest.fixture(scope="module")
def node_xml(tmp_path_factory):
    domains = "".join(
        f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory><vcpu>1</vcpu>"
        f"<os><type>hvm</type></os><test:runstate>{state}</test:runstate>"
        + ("<test:hasmanagedsave>yes</test:hasmanagedsave>" if saved else "") + "</domain>"
        for name, (uuid, state, saved) in DOMAINS.items())
    path = tmp_path_factory.mktemp("libvirt") / "node.xml"
    path.write_text(f"<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>{domains}</node>")
    return f"test://{path}"


def instance(uuid, host="cmp1", name=None):
    return health.Resource("nova", "instance", uuid, host=host, name=name)


def collector(*backends, **kw):
    kw.setdefault("sleep", NO_SLEEP)
    return health.Collector({"nova": backends}, **kw)


# ------------------------------------------------------------------------------------------------ pure mappings
def test_libvirt_mapping_follows_nova_and_covers_every_state():
    assert [health.libvirt_reality(s) for s in range(8)] == [
        UNKNOWN, RUNNING, RUNNING, PAUSED, SHUT_OFF, SHUT_OFF, SHUT_OFF, SUSPENDED]
    assert health.libvirt_reality(health.VIR_DOMAIN_SHUTOFF, managed_save=True) == SUSPENDED
    assert health.libvirt_reality(health.VIR_DOMAIN_RUNNING, managed_save=True) == RUNNING
    assert health.libvirt_reality(99) == UNKNOWN
    nova_realities = rules.kind_of("nova", "instance").reality_names
    assert set(health.LIBVIRT_REALITIES.values()) <= set(nova_realities)


def test_libvirt_constants_are_libvirts():
    import libvirt
    assert (health.VIR_DOMAIN_NOSTATE, health.VIR_DOMAIN_RUNNING, health.VIR_DOMAIN_BLOCKED, health.VIR_DOMAIN_PAUSED,
            health.VIR_DOMAIN_SHUTDOWN, health.VIR_DOMAIN_SHUTOFF, health.VIR_DOMAIN_CRASHED,
            health.VIR_DOMAIN_PMSUSPENDED) == (
        libvirt.VIR_DOMAIN_NOSTATE, libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED,
        libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED,
        libvirt.VIR_DOMAIN_PMSUSPENDED)
    assert (health.VIR_ERR_NO_DOMAIN, health.VIR_ERR_INVALID_ARG) == (libvirt.VIR_ERR_NO_DOMAIN,
                                                                      libvirt.VIR_ERR_INVALID_ARG)


def test_power_and_heartbeat_mappings():
    assert health.power_reality("off") == HOST_DOWN
    assert health.power_reality("on") == health.HOST_UP
    assert health.power_reality(None) == UNKNOWN
    assert health.heartbeat_reality("up", False) == health.HOST_UP
    assert health.heartbeat_reality("down", False) == HOST_DOWN
    assert health.heartbeat_reality("up", True) == HOST_DOWN
    assert health.heartbeat_reality("", False) == UNKNOWN


def test_image_data_mapping():
    m = health.image_data_reality
    assert m(100, False, 100, True) == RUNNING
    assert m(100, False, 100, None) == RUNNING           # no digest recorded: the size decides
    assert m(100, False, 100, False) == SHUT_OFF
    assert m(50, False, 100, None) == SHUT_OFF
    assert m(100, False, None, None) == SHUT_OFF         # no size recorded: never trusted complete
    assert m(None, True, 100, None) == SHUT_OFF          # only in staging
    assert m(None, False, 100, None) == ABSENT


def test_combine():
    H, R = health.HOST, health.RESOURCE
    assert health.combine([(H, health.HOST_UP), (R, RUNNING)]) == RUNNING
    assert health.combine([(H, UNKNOWN), (R, PAUSED)]) == PAUSED        # an unreachable BMC hides nothing
    assert health.combine([(H, health.HOST_UP), (H, HOST_DOWN), (R, RUNNING)]) == HOST_DOWN
    assert health.combine([(H, health.HOST_UP), (R, UNKNOWN)]) == UNKNOWN
    assert health.combine([(H, health.HOST_UP)]) == UNKNOWN              # up says nothing about the resource
    assert health.combine([(R, UNKNOWN), (R, ABSENT)]) == ABSENT


# ----------------------------------------------------------------------------------------------------- libvirt
@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_libvirt_test_driver_states(node_xml, name):
    seen = collector(health.LibvirtBackend(node_xml)).observe(instance(DOMAINS[name][0]))
    assert seen.reality == EXPECTED[name], seen
    assert seen.tries == 1 and seen.settled and seen.source == f"libvirt {node_xml}"
    assert f"domain {name} is" in seen.detail


def test_libvirt_absent_by_uuid_then_found_by_name(node_xml):
    c = collector(health.LibvirtBackend(node_xml))
    seen = c.observe(instance(MISSING))
    assert (seen.reality, seen.tries) == (ABSENT, 1) and MISSING in seen.detail
    assert c.observe(instance(MISSING, name="paused")).reality == PAUSED
    assert c.observe(instance("not-a-uuid", name="nope")).reality == ABSENT


def test_libvirt_default_driver_and_host_in_uri():
    backend = health.LibvirtBackend("test:///default?host={host}")
    assert backend.uri("cmp7") == "test:///default?host=cmp7"
    seen = collector(backend).observe(instance("6695eb01-f6a4-8304-79aa-97f2502e193f", host="cmp7"))
    assert seen.reality == RUNNING and "domain test is running" in seen.detail
    c = collector(health.LibvirtBackend("qemu+tcp://{host}/system"))
    seen = c.observe(instance(MISSING, host=None))
    assert seen.reality == UNKNOWN and "needs the resource's host" in seen.detail


def test_libvirt_connection_refused_is_unknown_after_every_try(capfd):
    port = free_port()
    sleeps = []
    c = collector(health.LibvirtBackend(f"qemu+tcp://127.0.0.1:{port}/system"), resync_count=3,
                  resync_interval=7, sleep=sleeps.append)
    seen = c.observe(instance(MISSING))
    assert (seen.reality, seen.tries, seen.settled) == (UNKNOWN, 4, True)
    assert sleeps == [7, 7, 7]
    assert "Connection refused" in seen.detail and "\n" not in seen.detail
    out, err = capfd.readouterr()
    assert "libvirt" not in err and "Traceback" not in err + out       # libvirt's own stderr lines are silenced


def test_hung_libvirt_endpoint_is_bounded_in_time():
    """A TCP peer that accepts and never answers holds virConnectOpen forever: the worker's join bounds it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"qemu+tcp://127.0.0.1:{listener.getsockname()[1]}/system"
        c = collector(health.LibvirtBackend(uri, timeout=0.5), resync_count=2)
        start = time.monotonic()
        seen = c.observe(instance(MISSING))
        elapsed = time.monotonic() - start
        assert elapsed < 1.5, elapsed                        # one timeout; the retries find the call still hung
        assert (seen.reality, seen.tries) == (UNKNOWN, 3)
        assert "timed out after 0.5s" in seen.detail or "still hanging" in seen.detail
        hung = [t for t in threading.enumerate() if t.name == "health libvirt:cmp1"]
        assert len(hung) == 1 and hung[0].daemon             # no thread piled up per retry


def test_deadline_bounds_the_call_and_stops_retries_early():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"qemu+tcp://127.0.0.1:{listener.getsockname()[1]}/system"
        c = collector(health.LibvirtBackend(uri, timeout=30, name="libvirt-dl"), resync_count=3,
                      resync_interval=10)
        start = time.monotonic()
        with deadline.deadline(2.0, "sweep"):
            seen = c.observe(instance(MISSING))
        assert time.monotonic() - start < 2.0
        assert (seen.reality, seen.tries, seen.settled) == (UNKNOWN, 1, False)
        assert "no time left for try 2" in seen.detail


# -------------------------------------------------------------------------------------------------------- IPMI
@pytest.fixture
def bmc(tmp_path):
    sim = BmcSim(tmp_path / "bmc")
    yield sim
    sim.stop()


def power_backend(sim, port=None, timeout=5.0):
    def bmc_for(host):
        if host != "cmp1":
            return None
        return ipmi.Bmc("127.0.0.1", "admin", sim.password, port=port or sim.port, timeout=2)
    return health.PowerBackend(bmc_for, timeout=timeout)


def test_ipmi_on_then_off(bmc, node_xml):
    uuid = DOMAINS["paused"][0]
    c = collector(power_backend(bmc), health.LibvirtBackend(node_xml))
    seen = c.observe(instance(uuid))
    assert seen.reality == PAUSED                            # host up: the hypervisor speaks for the guest
    with ipmi.Bmc("127.0.0.1", "admin", bmc.password, port=bmc.port) as b:
        b.set_power("off")
        wait_for("power off", lambda: b.power_state() == "off", timeout=10, interval=0.1)
    seen = c.observe(instance(uuid))
    assert (seen.reality, seen.source) == (HOST_DOWN, f"ipmi 127.0.0.1:{bmc.port}")
    assert "chassis power is off" in seen.detail


def test_ipmi_unreachable_is_unknown_and_bounded(bmc, node_xml):
    port = free_port()                                       # nothing listens there
    c = collector(power_backend(bmc, port=port, timeout=1.0), resync_count=0)
    start = time.monotonic()
    seen = c.observe(instance(MISSING))
    assert time.monotonic() - start < 2.0
    assert (seen.reality, seen.tries) == (UNKNOWN, 1) and "\n" not in seen.detail
    # the hypervisor still answers when only the BMC cannot
    c = collector(power_backend(bmc, port=free_port(), timeout=1.0), health.LibvirtBackend(node_xml))
    assert c.observe(instance(DOMAINS["run"][0])).reality == RUNNING


def test_ipmi_hung_after_login_is_interrupted_and_pyghmi_stays_usable(bmc, node_xml):
    bmc.fault("hang")                                        # logins succeed, then no command is answered
    c = collector(power_backend(bmc, timeout=1.0), resync_count=0)
    start = time.monotonic()
    seen = c.observe(instance(MISSING))
    assert time.monotonic() - start < 1.5
    assert seen.reality == UNKNOWN and "timed out after 1s" in seen.detail
    bmc.fault("")
    c = collector(power_backend(bmc), health.LibvirtBackend(node_xml))
    assert c.observe(instance(DOMAINS["crashed"][0])).reality == SHUT_OFF


def test_ipmi_off_the_main_thread(bmc):
    c = collector(power_backend(bmc))
    found = []
    worker = threading.Thread(target=lambda: found.append(c.observe_once(instance(MISSING))))
    worker.start()
    worker.join(10)
    assert found and found[0].reality == UNKNOWN               # host up, no hypervisor asked: nothing known
    assert "chassis power is on" in found[0].detail


def test_ipmi_wrong_password_is_one_line_unknown(bmc):
    backend = health.PowerBackend(lambda host: ipmi.Bmc("127.0.0.1", "admin", "wrong-secret", port=bmc.port,
                                                        timeout=2))
    seen = collector(backend, resync_count=0).observe(instance(MISSING))
    assert seen.reality == UNKNOWN and "refused the login" in seen.detail
    assert "wrong-secret" not in seen.detail and "\n" not in seen.detail


def test_no_bmc_known_is_unknown():
    seen = collector(power_backend(None), resync_count=0).observe(instance(MISSING, host="cmp9"))
    assert seen.reality == UNKNOWN and "no BMC known for host cmp9" in seen.detail


# -------------------------------------------------------------------------------------------------------- nova
class FakeNova:
    """The boundary: nova.Nova.service(host, binary), answering from a dict of Service records or errors."""
    timeout = 1.0

    def __init__(self, answers):
        self.answers = answers
        self.calls = 0

    def service(self, host, binary="nova-compute"):
        self.calls += 1
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        state, forced = answer
        return Service(f"id-{host}", host, binary, state, "enabled", forced, None, None)


def test_nova_heartbeat(node_xml):
    nova = FakeNova({"up": ("up", False), "down": ("down", False), "forced": ("down", True),
                     "err": NovaUnavailable("service", "err", "HTTP 503: try later", status=503)})
    c = collector(health.NovaHeartbeatBackend(nova), health.LibvirtBackend(node_xml), resync_count=2)
    run = DOMAINS["run"][0]
    assert c.observe(instance(run, host="up")).reality == RUNNING
    seen = c.observe(instance(run, host="down"))
    assert (seen.reality, seen.source, seen.detail) == (HOST_DOWN, "nova service id-down",
                                                         "nova-compute on down is down")
    assert c.observe(instance(run, host="forced")).detail == "nova-compute on forced is down (forced down)"
    seen = c.observe(instance(run, host="err"))               # nova unavailable: libvirt still answers
    assert seen.reality == RUNNING
    nova.calls = 0
    seen = collector(health.NovaHeartbeatBackend(nova), resync_count=2).observe(instance(run, host="err"))
    assert (seen.reality, seen.tries, nova.calls) == (UNKNOWN, 3, 3)
    assert seen.detail == "nova: nova about nova instance %s on err: nova service err: HTTP 503: try later" % run


def test_host_down_short_circuits_the_hypervisor():
    hypervisor = health.StaticBackend({MISSING: RUNNING})
    c = collector(health.NovaHeartbeatBackend(FakeNova({"cmp1": ("down", False)})), hypervisor)
    assert c.observe(instance(MISSING)).reality == HOST_DOWN
    assert hypervisor.calls == []


# ------------------------------------------------------------------------------------------------------ glance
def image(uuid, **record):
    return health.Resource("glance", "image", uuid, record=record)


def test_glance_filesystem_store(tmp_path):
    store, staging = tmp_path / "images", tmp_path / "staging"
    store.mkdir()
    staging.mkdir()
    data = b"qcow2" * 1000
    (store / "img-complete").write_bytes(data)
    (store / "img-partial").write_bytes(data[:100])
    (staging / "img-staged").write_bytes(data[:10])
    md5, sha = hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()
    c = health.Collector({"glance": [health.GlanceFileBackend([str(store)], staging_dir=str(staging))]},
                         resync_count=0, sleep=NO_SLEEP)
    assert c.observe(image("img-complete", size=len(data), checksum=md5)).reality == RUNNING
    assert c.observe(image("img-complete", size=len(data), os_hash_algo="sha512", os_hash_value=sha)).reality \
        == RUNNING
    seen = c.observe(image("img-complete", size=len(data), checksum="0" * 32))
    assert seen.reality == SHUT_OFF and "digest differs" in seen.detail
    assert c.observe(image("img-complete")).reality == SHUT_OFF          # saving: no size recorded
    assert c.observe(image("img-partial", size=len(data), checksum=md5)).reality == SHUT_OFF
    seen = c.observe(image("img-staged", size=len(data)))
    assert seen.reality == SHUT_OFF and "staged" in seen.detail
    seen = c.observe(image("img-none", size=len(data)))
    assert seen.reality == ABSENT and "no data in" in seen.detail
    located = image("anything", size=len(data), checksum=md5,
                    locations=[{"url": f"file://{store}/img-complete", "metadata": {}}])
    assert c.observe(located).reality == RUNNING
    seen = c.observe(image("x", locations=[{"url": "rbd://fsid/images/x/snap"}]))
    assert seen.reality == UNKNOWN and "not in a filesystem store" in seen.detail


def test_glance_outcomes_from_observed_data(tmp_path):
    (tmp_path / "img").write_bytes(b"x")
    c = health.Collector({"glance": [health.GlanceFileBackend([str(tmp_path)], staging_dir=None)]},
                         resync_count=0, sleep=NO_SLEEP)
    gone = c.observe(image("gone", size=1)).reality
    assert rules.decide("glance", "image", "pending_delete", gone).action == "cas-update"
    present = c.observe(image("img", size=1)).reality
    assert rules.decide("glance", "image", "queued", present).action == "report"


# ---------------------------------------------------------------------------- cinder/neutron contract, retries
def test_static_backend_routes_and_kinds():
    volumes = health.StaticBackend({"vol-1": RUNNING, "vol-2": "host_up"})
    ports = health.StaticBackend({"port-1": SHUT_OFF}, name="neutron-static")
    c = health.Collector({("cinder", "volume"): [volumes], "neutron": [ports]}, resync_count=0, sleep=NO_SLEEP)
    assert c.observe(health.Resource("cinder", "volume", "vol-1")).reality == RUNNING
    seen = c.observe(health.Resource("cinder", "volume", "vol-2"))       # not a cinder volume reality
    assert seen.reality == UNKNOWN and "answered 'host_up', not one of running" in seen.detail
    assert c.observe(health.Resource("neutron", "port", "port-1")).source == "neutron-static"
    with pytest.raises(health.HealthError, match="no backend for cinder backup"):
        c.observe(health.Resource("cinder", "backup", "b-1"))


def test_unknown_is_asked_again_then_accepted():
    sleeps = []
    backend = health.StaticBackend({"vol": [UNKNOWN, UNKNOWN, RUNNING]})
    c = health.Collector({"cinder": [backend]}, resync_count=3, resync_interval=10, sleep=sleeps.append)
    seen = c.observe(health.Resource("cinder", "volume", "vol"))
    assert (seen.reality, seen.tries, seen.settled, sleeps) == (RUNNING, 3, True, [10, 10])
    backend = health.StaticBackend({"vol": UNKNOWN})
    sleeps.clear()
    c = health.Collector({"cinder": [backend]}, resync_count=2, resync_interval=0.5, sleep=sleeps.append)
    seen = c.observe(health.Resource("cinder", "volume", "vol"))
    assert (seen.reality, seen.tries, seen.settled, len(backend.calls), sleeps) == (UNKNOWN, 3, True, 3, [0.5, 0.5])
    c = health.Collector({"cinder": [health.StaticBackend({"vol": UNKNOWN})]}, resync_count=0, sleep=sleeps.append)
    assert c.observe(health.Resource("cinder", "volume", "vol")).tries == 1


def test_from_config_reads_the_crashup_flags():
    cfg = config.load(path="/dev/null", env={"CRASHUP_RECOVERY_RESYNC_COUNT": "5",
                                             "CRASHUP_RECOVERY_RESYNC_INTERVAL": "2s"})
    c = health.Collector.from_config(cfg, {"cinder": [health.StaticBackend({})]}, sleep=NO_SLEEP)
    assert (c.resync_count, c.resync_interval) == (5, 2.0)
    assert c.observe(health.Resource("cinder", "volume", "v")).tries == 6


def test_a_backend_that_raises_gives_one_line_never_a_traceback(capfd):
    class Broken:
        name, level, timeout = "broken", health.RESOURCE, 1.0

        def observe(self, resource):
            raise RuntimeError("first line\n  Traceback (most recent call last):\n  deep inside password=hunter2")

    seen = health.Collector({"neutron": [Broken()]}, resync_count=1, sleep=NO_SLEEP).observe(
        health.Resource("neutron", "router", "r-1"))
    assert (seen.reality, seen.tries) == (UNKNOWN, 2)
    assert "\n" not in seen.detail and "hunter2" not in seen.detail and "first line" in seen.detail
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_a_hung_backend_of_any_kind_is_bounded():
    release = threading.Event()

    class Hung:
        name, level, timeout = "hung", health.RESOURCE, 0.3

        def observe(self, resource):
            release.wait(30)
            return health.Observation(RUNNING, "late")

    c = health.Collector({"cinder": [Hung()]}, resync_count=1, sleep=NO_SLEEP)
    start = time.monotonic()
    seen = c.observe(health.Resource("cinder", "volume", "v"))
    assert time.monotonic() - start < 1.0
    assert seen.reality == UNKNOWN and "timed out after 0.3s" in seen.detail
    release.set()
    wait_for("the abandoned call to end", lambda: not [t for t in threading.enumerate() if t.name == "health hung:v"],
             timeout=5, interval=0.05)
    assert c.observe(health.Resource("cinder", "volume", "v")).reality == RUNNING   # answers again once it ended
