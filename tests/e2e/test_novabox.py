"""The nova box over HTTP, as crashup's clients see it: openstacksdk and python-novaclient against a real nova 34
(tests/lab/novabox/server.py) on 127.0.0.1 with free ports, plus its control API (tests/lab/nova_env.NovaBox).

Needs the nova venv (tests/lab/nova_env.ensure_nova_venv(); the fixture installs it if missing, ~1-2 min once).
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import free_port, standalone_nova_box, wait_for

from tests.lab import nova_env
from tests.lab.nova_env import NovaBox, NovaBoxError

openstack = pytest.importorskip("openstack")
novaclient_client = pytest.importorskip("novaclient.client")
from keystoneauth1 import session as ks_session  # noqa: E402
from keystoneauth1 import token_endpoint  # noqa: E402
from novaclient import exceptions as nova_exc  # noqa: E402
from openstack import exceptions as sdk_exc  # noqa: E402

pytestmark = [pytest.mark.lab,
              # openstacksdk 4.x warns about its own internals on every call
              pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning")]

HOSTS = ["compute1", "compute2", "compute3"]
MV = "2.95"              # >= 2.74 (host= at boot), >= 2.53 (forced_down); evacuated servers end SHUTOFF
REPORT_INTERVAL = 2      # the lab's values: tighter ones make busy hosts look down on 2 cores
SERVICE_DOWN_TIME = 6


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = standalone_nova_box(tmp_path_factory, "novabox", HOSTS, REPORT_INTERVAL, SERVICE_DOWN_TIME)
    yield b
    t0 = time.monotonic()
    b.stop()
    assert time.monotonic() - t0 < 5, "the box took too long to stop"


@pytest.fixture(scope="module")
def session(box):
    return ks_session.Session(auth=token_endpoint.Token(box.url, nova_env.ADMIN_TOKEN))


@pytest.fixture(scope="module")
def sdk(session):
    return openstack.connection.Connection(session=session, compute_api_version=MV).compute


@pytest.fixture(scope="module")
def nova(session):
    return novaclient_client.Client(MV, session=session)


@pytest.fixture
def clean(box, sdk):
    """Every test starts and ends with all computes running, up, not forced down, no servers, no faults."""
    def reset():
        box.clear_faults()
        for host, running in box.get_state()["computes"].items():
            if not running:
                box.start_compute(host)
        for s in list(sdk.servers(all_projects=True)):
            sdk.delete_server(s)
        wait_for("no servers", lambda: not list(sdk.servers(all_projects=True)))
        for svc in sdk.services(binary="nova-compute"):
            if svc.is_forced_down:
                sdk.update_service_forced_down(svc, forced=False)
        wait_for("all computes up", lambda: all(s.state == "up" for s in sdk.services(binary="nova-compute")))
    reset()
    yield
    reset()


def compute_service(sdk, host):
    [svc] = [s for s in sdk.services(binary="nova-compute") if s.host == host]
    return svc


def boot(sdk, name, host):
    s = sdk.create_server(name=name, flavor_id="1", image_id=nova_env.IMAGE_ID, networks="none", host=host)
    return sdk.wait_for_server(s, status="ACTIVE", interval=0.3, wait=60)


# ----------------------------------------------------------------------------------------------------------------------
def test_one_up_compute_per_host(box, sdk, nova, clean):
    svcs = list(sdk.services(binary="nova-compute"))
    assert sorted(s.host for s in svcs) == HOSTS
    assert all(s.state == "up" and s.status == "enabled" and not s.is_forced_down for s in svcs)
    nc_svcs = nova.services.list(binary="nova-compute")
    assert sorted((s.host, s.state) for s in nc_svcs) == [(h, "up") for h in HOSTS]
    assert sorted(h.name for h in sdk.hypervisors()) == HOSTS
    st = box.get_state()
    assert st["computes"] == {h: True for h in HOSTS}
    assert st["hosts"] == HOSTS
    assert box.guests() == {h: [] for h in HOSTS}


def test_boot_on_chosen_host_and_guests_view(box, sdk, nova, clean):
    a = boot(sdk, "on-2", "compute2")
    b = boot(sdk, "on-3", "compute3")
    assert sdk.get_server(a.id).compute_host == "compute2"
    assert sdk.get_server(b.id).compute_host == "compute3"
    # server-side ?host= filter: openstacksdk compute_host=, novaclient search_opts host
    assert [s.id for s in sdk.servers(all_projects=True, compute_host="compute2")] == [a.id]
    assert [s.id for s in nova.servers.list(search_opts={"host": "compute3", "all_tenants": 1})] == [b.id]
    # the hypervisors' view
    assert box.guests("compute2") == [a.id]
    assert box.guests("compute3") == [b.id]
    assert box.guests("compute1") == []
    assert box.guests() == {"compute1": [], "compute2": [a.id], "compute3": [b.id]}
    full = box.control("GET", "computes/compute2/guests")
    assert full["running"] is True and full["power_states"] == {a.id: "running"}
    sdk.delete_server(a)
    wait_for("guest gone from compute2", lambda: box.guests("compute2") == [])


def test_stopped_compute_goes_down_and_comes_back(box, sdk, nova, clean):
    s = boot(sdk, "stays", "compute3")
    t0 = time.monotonic()
    box.stop_compute("compute3")                       # crash of nova-compute; the hypervisor keeps its guest
    assert box.get_state()["computes"]["compute3"] is False
    wait_for("compute3 down", lambda: compute_service(sdk, "compute3").state == "down",
             timeout=SERVICE_DOWN_TIME + 10)
    assert time.monotonic() - t0 >= SERVICE_DOWN_TIME - REPORT_INTERVAL - 1
    assert not compute_service(sdk, "compute3").is_forced_down
    assert box.guests("compute3") == [s.id]
    with pytest.raises(NovaBoxError, match="409"):
        box.stop_compute("compute3")
    box.start_compute("compute3")
    wait_for("compute3 up", lambda: compute_service(sdk, "compute3").state == "up", timeout=30)
    assert [x.state for x in nova.services.list(host="compute3", binary="nova-compute")] == ["up"]
    assert box.guests("compute3") == [s.id]
    assert sdk.get_server(s.id).status == "ACTIVE"


def test_force_down_and_evacuate(box, sdk, nova, clean):
    s = boot(sdk, "evac", "compute1")
    lost = box.stop_compute("compute1", power_off=True)        # a fenced host: its guests are gone
    assert lost["guests_lost"] == [s.id]
    assert box.guests("compute1") == []
    # nova refuses to evacuate while the source service still counts as up
    with pytest.raises(sdk_exc.HttpException) as e:
        sdk.evacuate_server(s)
    assert e.value.status_code == 400
    sdk.update_service_forced_down(compute_service(sdk, "compute1"), forced=True)
    svc = compute_service(sdk, "compute1")
    assert svc.is_forced_down and svc.state == "down"
    nova.servers.evacuate(s.id)
    moved = wait_for("server evacuated", lambda: (lambda x: x if x.status == "SHUTOFF" and x.task_state is None
                                                  and x.compute_host != "compute1" else None)(sdk.get_server(s.id)))
    assert moved.compute_host in ("compute2", "compute3")
    migs = list(sdk.migrations(migration_type="evacuation", server_id=s.id))
    assert len(migs) == 1
    assert (migs[0].source_compute, migs[0].dest_compute, migs[0].status) == ("compute1", moved.compute_host, "done")
    guests = box.guests()
    assert [h for h, g in guests.items() if s.id in g] == [moved.compute_host]
    # unfence order: nova refuses forced_down=false while 'done' evacuations remain for the host
    with pytest.raises(sdk_exc.HttpException):
        sdk.update_service_forced_down(compute_service(sdk, "compute1"), forced=False)
    box.start_compute("compute1")
    wait_for("evacuation completed by the source's restart",
             lambda: [m.status for m in sdk.migrations(migration_type="evacuation", server_id=s.id)] == ["completed"])
    sdk.update_service_forced_down(compute_service(sdk, "compute1"), forced=False)
    wait_for("compute1 up", lambda: compute_service(sdk, "compute1").state == "up", timeout=30)


def test_fault_500_once_then_gone(box, sdk, nova, clean):
    f = box.add_fault(r"^GET /v2\.1/servers/detail", status=500, count=1)
    assert f["count"] == 1 and box.faults() == [f]
    with pytest.raises(sdk_exc.HttpException) as e:
        list(sdk.servers(all_projects=True))
    assert e.value.status_code == 500
    assert box.faults() == []
    assert list(sdk.servers(all_projects=True)) == []     # gone: nova answers again
    # novaclient, two failures in a row, other calls not affected
    box.add_fault(r"^GET /v2\.1/os-services", status=503, count=2)
    assert sorted(h.name for h in sdk.hypervisors()) == HOSTS
    for _ in range(2):
        with pytest.raises(nova_exc.ClientException) as e2:
            nova.services.list()
        assert e2.value.code == 503
    assert len(nova.services.list(binary="nova-compute")) == len(HOSTS)


def test_fault_body_match_targets_one_action(box, sdk, nova, clean):
    s = boot(sdk, "act", "compute2")
    box.add_fault(r"^POST /v2\.1/servers/[^/]+/action$", status=500, body_match=r'"os-stop"')
    sdk.get_server(s.id)                                  # not matched
    nova.servers.lock(s.id)                               # an action, but not os-stop
    with pytest.raises(nova_exc.ClientException) as e:
        nova.servers.stop(s.id)
    assert e.value.code == 500
    nova.servers.stop(s.id)                               # gone
    sdk.wait_for_server(sdk.get_server(s.id), status="SHUTOFF", interval=0.3, wait=60)


def test_fault_delay(box, sdk, nova, clean):
    # slow API: answers after the delay, normally
    box.add_fault(r"^GET /v2\.1/os-services", status=None, delay=2.0)
    t0 = time.monotonic()
    assert len(nova.services.list(binary="nova-compute")) == len(HOSTS)
    assert time.monotonic() - t0 >= 2.0
    # hung then failing
    box.add_fault(r"^GET /v2\.1/servers/detail", status=500, delay=1.5)
    t0 = time.monotonic()
    with pytest.raises(sdk_exc.HttpException) as e:
        list(sdk.servers(all_projects=True))
    assert e.value.status_code == 500 and time.monotonic() - t0 >= 1.5
    # gone: fast again
    t0 = time.monotonic()
    list(sdk.servers(all_projects=True))
    nova.services.list()
    assert time.monotonic() - t0 < 1.5
    assert box.faults() == []


def test_fault_until_cleared_and_errors(box, sdk, clean):
    box.add_fault(r"^GET /v2\.1/flavors", status=500, count=-1)
    for _ in range(3):
        with pytest.raises(sdk_exc.HttpException):
            list(sdk.flavors())
    [f] = box.faults()
    assert f["hits"] == 3 and f["count"] == -1
    assert box.clear_faults() == 1
    assert list(sdk.flavors())
    with pytest.raises(NovaBoxError, match="400"):
        box.add_fault("(", status=500)                    # bad regex
    with pytest.raises(NovaBoxError, match="400"):
        box.add_fault("x", status=None, delay=0)          # neither status nor delay
    with pytest.raises(NovaBoxError, match="404"):
        box.guests("nosuchhost")
    with pytest.raises(NovaBoxError, match="400"):
        box.set_instance_db("x", display_name="no")


def test_instance_db_write(box, sdk, nova, clean):
    s = boot(sdk, "stale", "compute2")
    assert box.set_instance_db(s.id, task_state="migrating", updated_at="2020-01-01 00:00:00") == 1
    x = sdk.get_server(s.id)
    assert x.task_state == "migrating" and x.updated_at.startswith("2020-01-01")
    nova.servers.reset_state(s.id, "active")
    assert sdk.get_server(s.id).task_state is None


def test_auth_required(box):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(box.url + "/servers", timeout=10)
    assert e.value.code == 401
    with urllib.request.urlopen(box.url + "/", timeout=10) as r:       # version discovery is open
        assert r.status == 200


def test_busy_port_fails_fast_and_any_host_names(box, tmp_path):
    other = NovaBox()
    t0 = time.monotonic()
    with pytest.raises(NovaBoxError, match="cannot bind"):
        other.start("127.0.0.1", box.state["port"], free_port(), ["x"], tmp_path / "s1", tmp_path / "l1.log",
                    exit_with_parent=True)
    assert time.monotonic() - t0 < 10
    # a second box with one oddly named host and no placement port; ready, then SIGTERM exits quickly
    t0 = time.monotonic()
    st = other.start("127.0.0.1", free_port(), 0, ["hv-a.example.org"], tmp_path / "s2", tmp_path / "l2.log",
                     exit_with_parent=True)
    assert st["computes"] == {"hv-a.example.org": True} and st["placement_url"] is None
    assert time.monotonic() - t0 < 60
    assert (tmp_path / "s2" / "state.json").exists()
    # another process's view: attach by state dir
    peer = NovaBox.attach(tmp_path / "s2")
    assert peer.pid == other.pid and peer.running() and peer.url == other.url
    t0 = time.monotonic()
    assert peer.stop() is True
    assert time.monotonic() - t0 < 5
    assert not other.running()
    assert not (tmp_path / "s2" / "state.json").exists()
