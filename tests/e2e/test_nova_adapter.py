"""crashup_lib.nova against a real nova 34 (its own nova box on 127.0.0.1, free ports; no Pacemaker, no full lab).

Needs the nova venv (tests/lab/nova_env.ensure_nova_venv(); the fixture installs it if missing, ~1-2 min once).
"""
from __future__ import annotations

import datetime
import time

import pytest

from tests.helpers import free_port, standalone_nova_box, wait_for
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint

from crashup_lib import config
from crashup_lib import nova as nova_mod
from crashup_lib.nova import (EVACUATE_KEEP_POWER, Nova, NovaBadRequest, NovaConflict, NovaError, NovaNotFound,
                              NovaUnavailable)
from tests.lab import nova_env

pytestmark = pytest.mark.lab

HOSTS = ["compute1", "compute2", "compute3"]
REPORT_INTERVAL = 2      # the lab's values: tighter ones make nova see busy hosts down on a loaded 2-core machine
SERVICE_DOWN_TIME = 6
BOOT_MV = "2.74"          # host= at boot (2.74), networks "none" (2.37), tags at boot (2.52)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = standalone_nova_box(tmp_path_factory, "novabox-adapter", HOSTS, REPORT_INTERVAL, SERVICE_DOWN_TIME)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def session(box):
    return ks_session.Session(auth=token_endpoint.Token(box.url, nova_env.ADMIN_TOKEN))


@pytest.fixture(scope="module")
def nova(session):
    return Nova(session, timeout=20)


@pytest.fixture(scope="module")
def api(box, session):
    """Raw compute API for the test's own set-up (booting, flavors, aggregates)."""
    def call(method, path, body=None, mv=BOOT_MV):
        r = session.request(box.url + path, method, json=body, headers={"OpenStack-API-Version": f"compute {mv}"})
        return r.json() if r.content else None
    return call


@pytest.fixture
def clean(box, nova, api):
    """Every test starts and ends with all computes running, up, enabled, not forced down, no servers, no faults."""
    def reset():
        box.clear_faults()
        for host, running in box.get_state()["computes"].items():
            if not running:
                box.start_compute(host)
        for s in api("GET", "/servers?all_tenants=1")["servers"]:
            api("DELETE", f"/servers/{s['id']}")
        wait_for("no servers", lambda: not api("GET", "/servers?all_tenants=1")["servers"])
        for svc in nova.services():
            if svc.forced_down:
                def force_up(host=svc.host):
                    try:        # refused while the restarted compute has not completed its evacuations yet
                        return nova.force_down(host, False)
                    except NovaBadRequest:
                        return None
                wait_for(f"{svc.host} force-up accepted", force_up)
            if svc.status != "enabled":
                nova.enable(svc.host)
        wait_for("all computes up", lambda: all(s.state == "up" for s in nova.services()), timeout=30)
    reset()
    yield
    reset()


def boot(api, nova, name, host, flavor="1", **extra):
    body = {"name": name, "flavorRef": flavor, "imageRef": nova_env.IMAGE_ID, "networks": "none", "host": host,
            **extra}
    sid = api("POST", "/servers", {"server": body})["server"]["id"]
    return wait_for(f"{name} ACTIVE", lambda: (lambda s: s if s.status == "ACTIVE" else None)(nova.server(sid)))


def settled(nova, sid, status, away_from=None):
    """The server once its evacuation or action is over: in `status`, no task in progress (and, for an evacuation,
    no longer on `away_from`); else None."""
    s = nova.server(sid)
    done = s.status == status and s.task_state is None and (away_from is None or s.host != away_from)
    return s if done else None


# ----------------------------------------------------------------------------------------------------------------------
def test_services_and_one_service(nova, clean):
    svcs = nova.services()
    assert sorted(s.host for s in svcs) == HOSTS
    assert all(s.binary == "nova-compute" and s.state == "up" and s.status == "enabled" and not s.forced_down
               for s in svcs)
    assert all(len(s.id) == 36 for s in svcs)            # 2.53+: UUIDs
    [one] = nova.services(host="compute2")
    assert nova.service("compute2") == one and one.host == "compute2"
    assert {s.binary for s in nova.services(binary=None)} > {"nova-compute"}
    with pytest.raises(NovaNotFound) as e:
        nova.service("compute9")
    assert str(e.value) == "nova service compute9: no nova-compute service on host 'compute9'"


def test_microversion_read_once(box, session, nova):
    n = Nova(session, timeout=20)
    assert n.max_microversion == nova.max_microversion
    assert tuple(map(int, n.max_microversion.split("."))) >= (2, 95)
    # the version document is read once: with it failing from now on, calls still work
    box.add_fault(r"^GET /v2\.1/?$", status=500, count=-1)
    try:
        assert len(n.services()) == len(HOSTS)
        with pytest.raises(NovaUnavailable, match="HTTP 500"):
            Nova(session, timeout=20).services()      # a fresh client must read it, and says why it cannot
    finally:
        box.clear_faults()
    with pytest.raises(NovaError, match=r"nova evacuate x: needs compute API microversion >= 2.14; asked for 2.13"):
        n.evacuate("x", microversion="2.13")


def test_force_down_disable_enable(nova, clean):
    t0 = time.monotonic()
    svc = nova.force_down("compute3", True)
    assert svc.host == "compute3" and svc.forced_down
    assert nova.service("compute3").state == "down"      # at once, no wait for service_down_time
    assert time.monotonic() - t0 < SERVICE_DOWN_TIME
    svc = nova.force_down("compute3", False)
    assert not svc.forced_down
    wait_for("compute3 up", lambda: nova.service("compute3").state == "up", timeout=10)
    svc = nova.disable("compute2", "crashup: host failed")
    assert (svc.status, svc.disabled_reason) == ("disabled", "crashup: host failed")
    assert nova.service("compute2").status == "disabled"
    assert nova.enable("compute2").status == "enabled"
    with pytest.raises(NovaNotFound, match="nova force_down compute9: no nova-compute service"):
        nova.force_down("compute9")


def test_servers_on_host(nova, api, clean, monkeypatch):
    api("POST", "/flavors", {"flavor": {"name": "evac.tiny", "id": "evac1", "ram": 512, "vcpus": 1, "disk": 1}})
    api("POST", "/flavors/evac1/os-extra_specs", {"extra_specs": {"evacuable": "true"}})
    try:
        a = boot(api, nova, "a", "compute1", flavor="evac1", metadata={"evacuable": "yes"}, tags=["t1"])
        b = boot(api, nova, "b", "compute1")
        c = boot(api, nova, "c", "compute1")
        d = boot(api, nova, "d", "compute2")
    finally:
        api("DELETE", "/flavors/evac1")                   # servers keep their embedded copy
    on1 = nova.servers_on_host("compute1")
    assert sorted(s.id for s in on1) == sorted([a.id, b.id, c.id])
    assert [s.id for s in nova.servers_on_host("compute2")] == [d.id]
    assert nova.servers_on_host("compute3") == []
    assert nova.servers_on_host("nosuchhost") == []
    sa = nova.server(a.id)
    assert sa.flavor["extra_specs"] == {"evacuable": "true"} and sa.flavor["original_name"] == "evac.tiny"
    assert sa.metadata == {"evacuable": "yes"} and sa.tags == ("t1",)
    assert (sa.host, sa.vm_state, sa.power_state, sa.task_state) == ("compute1", "active", 1, None)
    assert sa.image_id == nova_env.IMAGE_ID and sa.project_id == "admin" and sa.updated_at
    assert {s.id: s for s in on1}[a.id] == sa and hash(sa)  # plain, comparable, hashable records
    # every page is read: 3 servers in pages of 2
    monkeypatch.setattr(nova_mod, "PAGE", 2)
    assert sorted(s.id for s in nova.servers_on_host("compute1")) == sorted([a.id, b.id, c.id])


def test_not_found(nova):
    with pytest.raises(NovaNotFound) as e:
        nova.server("0b5a0a4e-0000-4000-8000-000000000000")
    assert e.value.status == 404 and "HTTP 404" in str(e.value) and "could not be found" in str(e.value)


def test_evacuate_refused_while_source_up(nova, api, clean):
    s = boot(api, nova, "up", "compute2")
    wait_for("compute2 up", lambda: nova.service("compute2").state == "up", timeout=10)
    with pytest.raises(NovaBadRequest) as e:
        nova.evacuate(s.id)
    msg = str(e.value)
    assert msg == f"nova evacuate {s.id}: HTTP 400: Compute service of compute2 is still in use."
    assert e.value.status == 400 and e.value.request_id.startswith("req-")
    assert nova.migrations(server_id=s.id) == []


def test_evacuate_after_fencing(box, nova, api, clean):
    stopped = boot(api, nova, "stopped-2.95", "compute1")
    active = boot(api, nova, "active-2.68", "compute1")
    targeted = boot(api, nova, "to-compute3", "compute1")
    other = boot(api, nova, "other", "compute2")
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    lost = box.stop_compute("compute1", power_off=True)        # fenced: power off, the guests are gone
    # (a superset: a server deleted while its host briefly looked down is deleted from nova's DB only, as in
    # production, and its guest stays on the fake hypervisor)
    assert set(lost["guests_lost"]) >= {stopped.id, active.id, targeted.id}
    nova.force_down("compute1", True)
    nova.evacuate(stopped.id)                                   # default: 2.95, ends SHUTOFF
    nova.evacuate(active.id, microversion="2.68")               # ends as it was: ACTIVE
    nova.evacuate(targeted.id, target_host="compute3", microversion=EVACUATE_KEEP_POWER)
    s1 = wait_for("2.95 evacuation", lambda: settled(nova, stopped.id, "SHUTOFF", away_from="compute1"))
    s2 = wait_for("2.68 evacuation", lambda: settled(nova, active.id, "ACTIVE", away_from="compute1"))
    s3 = wait_for("targeted evacuation", lambda: settled(nova, targeted.id, "ACTIVE", away_from="compute1"))
    assert s1.host in ("compute2", "compute3") and s2.host in ("compute2", "compute3") and s3.host == "compute3"
    assert (s1.power_state, s2.power_state) == (4, 1)
    guests = box.guests()
    for s in (s1, s2, s3):
        assert [h for h, g in guests.items() if s.id in g] == [s.host]
        [m] = nova.migrations(server_id=s.id)                 # exactly one evacuation record per server
        assert (m.migration_type, m.source_compute, m.dest_compute, m.status) == \
            ("evacuation", "compute1", s.host, "done")
    assert sorted(m.server_id for m in nova.migrations(source_compute="compute1")) == \
        sorted([stopped.id, active.id, targeted.id])
    assert len(nova.migrations(source_compute="compute1", changes_since=since)) == 3
    assert nova.migrations(source_compute="compute1", changes_since=datetime.datetime(2999, 1, 1)) == []
    assert nova.migrations(server_id=other.id, migration_type=None) == []
    assert [s.id for s in nova.servers_on_host("compute1")] == []
    # unfence order: nova refuses to clear forced_down while `done` evacuations remain...
    with pytest.raises(NovaBadRequest) as e:
        nova.force_down("compute1", False)
    assert "nova force_up compute1: HTTP 400: Unable to force up host compute1 as `done` evacuation" in str(e.value)
    # ...until the source's nova-compute has started and marked them `completed`
    box.start_compute("compute1")
    wait_for("evacuations completed", lambda: all(m.status == "completed"
                                                  for m in nova.migrations(source_compute="compute1")))
    assert not nova.force_down("compute1", False).forced_down
    wait_for("compute1 up", lambda: nova.service("compute1").state == "up", timeout=20)
    assert box.guests("compute1") == []


def test_reset_state_stop_start(box, nova, api, clean):
    s = boot(api, nova, "stuck", "compute2")
    assert box.set_instance_db(s.id, task_state="rebooting") == 1
    assert nova.server(s.id).task_state == "rebooting"
    nova.reset_state(s.id, "error")
    x = nova.server(s.id)
    assert (x.status, x.vm_state, x.task_state) == ("ERROR", "error", None)
    nova.reset_state(s.id, "active")
    x = nova.server(s.id)
    assert (x.status, x.vm_state, x.task_state) == ("ACTIVE", "active", None)
    with pytest.raises(ValueError):
        nova.reset_state(s.id, "stopped")
    with pytest.raises(NovaConflict) as e:                   # already running
        nova.start(s.id)
    assert e.value.status == 409 and str(e.value).startswith(f"nova start {s.id}: HTTP 409: ")
    nova.stop(s.id)
    wait_for("SHUTOFF", lambda: settled(nova, s.id, "SHUTOFF"))
    nova.start(s.id)
    wait_for("ACTIVE", lambda: settled(nova, s.id, "ACTIVE"))


def test_aggregates(nova, api):
    agg = api("POST", "/os-aggregates", {"aggregate": {"name": "evac-agg"}}, mv="2.41")["aggregate"]
    try:
        api("POST", f"/os-aggregates/{agg['id']}/action", {"add_host": {"host": "compute2"}}, mv="2.41")
        api("POST", f"/os-aggregates/{agg['id']}/action", {"set_metadata": {"metadata": {"evacuable": "true"}}},
            mv="2.41")
        [a] = [a for a in nova.aggregates() if a.name == "evac-agg"]
        assert a.hosts == ("compute2",) and a.metadata == {"evacuable": "true"}
    finally:
        api("POST", f"/os-aggregates/{agg['id']}/action", {"remove_host": {"host": "compute2"}}, mv="2.41")
        api("DELETE", f"/os-aggregates/{agg['id']}", mv="2.41")


def test_500_is_unavailable_in_one_line(box, nova, api, clean):
    box.add_fault(r"^GET /v2\.1/os-services", status=500)
    with pytest.raises(NovaUnavailable) as e:
        nova.services()
    msg = str(e.value)
    assert msg.startswith("nova services: HTTP 500: novabox injected fault")
    assert "\n" not in msg and nova_env.ADMIN_TOKEN not in msg and e.value.status == 500
    assert e.value.__cause__ is None and e.value.__context__ is None      # nothing chained to print
    # an evacuate that nova never saw
    s = boot(api, nova, "f", "compute2")
    box.add_fault(r"^POST /v2\.1/servers/[^/]+/action$", status=503, body_match=r'"evacuate"')
    with pytest.raises(NovaUnavailable, match=f"nova evacuate {s.id}: HTTP 503"):
        nova.evacuate(s.id)
    assert nova.migrations(server_id=s.id) == [] and nova.server(s.id).host == "compute2"


def test_slow_answer_bounded_by_timeout(box, session, nova, clean):
    quick = Nova(session, timeout=1.0)
    quick.max_microversion
    box.add_fault(r"^GET /v2\.1/servers/detail", status=None, delay=6.0)
    t0 = time.monotonic()
    with pytest.raises(NovaUnavailable) as e:
        quick.servers_on_host("compute1")
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 2.0, elapsed
    assert str(e.value).startswith("nova servers_on_host compute1: no answer within 1s from http://127.0.0.1:")
    # the bound covers the whole call: a look-up and a PUT of 0.7 s each exceed 1 s in all
    box.clear_faults()
    box.add_fault(r"^(GET|PUT) /v2\.1/os-services", status=None, delay=0.7, count=2)
    t0 = time.monotonic()
    with pytest.raises(NovaUnavailable, match="nova force_down compute3: no answer within 1s"):
        quick.force_down("compute3")
    assert time.monotonic() - t0 < 1.5
    # a timeout says nothing of the outcome: the slow PUT still reached nova after we gave up
    wait_for("the late PUT applied", lambda: nova.service("compute3").forced_down, timeout=5)


def test_connection_refused_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}/v2.1"          # nobody listens there
    n = Nova(ks_session.Session(auth=token_endpoint.Token(url, nova_env.ADMIN_TOKEN)), timeout=5)
    t0 = time.monotonic()
    with pytest.raises(NovaUnavailable) as e:
        n.services()
    assert time.monotonic() - t0 < 1.0
    assert str(e.value) == f"nova services: cannot connect to {url}: [Errno 111] Connection refused"


def test_from_config(box, tmp_path, monkeypatch):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n"
                      "  crashup-test:\n"
                      "    auth_type: admin_token\n"
                      "    auth:\n"
                      f"      endpoint: {box.url}\n"
                      f"      token: {nova_env.ADMIN_TOKEN}\n"
                      f"    compute_endpoint_override: {box.url}\n"
                      "    region_name: RegionOne\n")
    conf = tmp_path / "crashup.conf"
    conf.write_text("[openstack]\ncloud = crashup-test\napi_timeout = 7\ninterface = internal\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    cfg = config.load(str(conf), env={})
    n = Nova.from_config(cfg)
    assert n.timeout == 7.0
    assert sorted(s.host for s in n.services()) == HOSTS
    cfg = config.load(str(conf), env={"CRASHUP_CLOUD": "nosuchcloud"})
    with pytest.raises(NovaError) as e:
        Nova.from_config(cfg)
    assert str(e.value).startswith(f"nova config cloud 'nosuchcloud': cannot load it from {clouds}:")
