"""The whole lab, as every end-to-end test sees it: Pacemaker with real IPMI fencing, nova, BMC simulators."""
import os
import subprocess
import time

import pytest

from tests.lab import pacemaker
from tests.lab.nova_env import IMAGE_ID

pytestmark = pytest.mark.lab


def wait_all_online(lab, timeout=90):
    return pacemaker.wait_for(lab.all_online(lab.nodes()), timeout, "every compute node back online")


def test_cluster_is_up_with_real_fencing(lab):
    st = pacemaker.status()
    assert st.dc == "ctl1" and st.quorate
    assert sorted(n for n, s in st.nodes.items() if s.type == "remote" and s.online) == \
        ["compute1", "compute2", "compute3"]
    for n in lab.nodes():
        device = st.resources[f"ipmi-{n.name}"]
        assert device.agent == "stonith:fence_crashup_ipmi" and device.active


def test_one_up_nova_compute_per_node_through_clouds_yaml(lab):
    conn = lab.connection()
    services = {s.host: s for s in conn.compute.services() if s.binary == "nova-compute"}
    assert sorted(services) == [n.nova_host for n in lab.nodes()]
    assert all(s.state == "up" and s.status == "enabled" for s in services.values())
    from novaclient import client
    novaclient = client.Client("2.95", session=lab.cloud_config().get_session())
    assert len(novaclient.hypervisors.list()) == 3


def test_nova_api_reachable_from_inside_every_node(lab):
    probe = "import json,urllib.request; print(json.load(urllib.request.urlopen('%s/'))['version']['id'])" \
        % lab.topology.nova_url()
    for n in lab.nodes():
        result = pacemaker.run_in_node(n, ["python3", "-c", probe])
        assert (result.returncode, result.stdout.strip()) == (0, "v2.1"), result.stderr
        assert pacemaker.run_in_node(n, ["hostname"]).stdout.strip() == n.name


def test_server_boots_on_a_chosen_node(lab):
    conn = lab.connection()
    server = conn.compute.create_server(name="e2e-boot", flavor_id="1", image_id=IMAGE_ID, networks="none",
                                        host="compute2")
    server = conn.compute.wait_for_server(server, status="ACTIVE", interval=0.3, wait=60)
    assert server.compute_host == "compute2"
    assert server.id in lab.nova().guests("compute2")
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.3, wait=60)


def test_ipmitool_talks_to_the_lab_bmcs(lab):
    env = dict(os.environ, IPMI_PASSWORD=lab.bmc_password_file().read_text().strip())
    for n in lab.nodes():
        out = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "17", "-H", "127.0.0.1", "-p", str(n.bmc_port),
                              "-U", "admin", "-E", "power", "status"], env=env, capture_output=True, text=True,
                             timeout=30)
        assert out.stdout.strip() == "Chassis Power is on", out.stderr


def fence_events_since(target, since):
    return pacemaker.status().fenced(target, since)


def test_stonith_admin_fence_powers_the_right_node_off_through_its_bmc(lab):
    target, bystanders = lab.node("compute3"), [lab.node("compute1"), lab.node("compute2")]
    before = {n.name: len(lab.power_log(n)) for n in lab.nodes()}
    since = time.time()
    result = subprocess.run(["stonith_admin", "--fence", target.name, "--timeout", "60"], capture_output=True,
                            text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    entries = lab.power_log(target)[before[target.name]:]
    assert entries[0]["command"] == "off" and entries[0]["to"] == "off"
    assert not any(e["command"] in ("reset", "cycle") for e in entries)
    assert all(len(lab.power_log(n)) == before[n.name] for n in bystanders)      # nobody else touched
    assert any(e.action == "off" for e in fence_events_since(target.name, since))
    wait_all_online(lab)


@pytest.mark.parametrize("node_name, how", [("compute1", "crash"), ("compute2", "net"), ("compute3", "power")])
def test_a_failed_node_is_seen_lost_fenced_through_ipmi_and_comes_back(lab, node_name, how):
    target = lab.node(node_name)
    before = len(lab.power_log(target))
    since = time.time()
    lab.fail(target, how)
    st = pacemaker.wait_for(lambda s: s.fenced(target.name, since), 60, f"{target.name} fenced after {how}")
    assert any(e.state == "success" for e in st.fenced(target.name, since))
    commands = [e["command"] for e in lab.power_log(target)[before:]]
    assert "off" in commands and not {"reset", "cycle"} & set(commands)       # off, confirmed, then on
    if how != "power":                      # the BMC was asked for exactly one off: by fencing
        assert commands.count("off") == 1
    # the host boots again, but nova-compute stays down until its (here empty) recovery is done and it rejoins
    limit = time.monotonic() + 60
    while (lab.recovery_request(target) is None or lab.recovery_request(target).open) and time.monotonic() < limit:
        time.sleep(0.5)
    assert lab.recovery_request(target).state == "done"
    lab.wait_rejoined(target)
    wait_all_online(lab)
    assert lab.nova().get_state()["computes"][target.nova_host] is True


def test_pacemaker_validates_crashups_installed_agents(lab):
    result = subprocess.run(["crm_resource", "--validate", "--class", "ocf", "--provider", "crashup", "--agent",
                             "crashup", "--option", f"config={lab.CRASHUP_CONF}"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for agent in ("fence_crashup_ipmi", "fence_crashup_nova"):
        meta = subprocess.run(["stonith_admin", "--metadata", "--agent", agent], capture_output=True, text=True,
                              timeout=60)
        assert meta.returncode == 0 and f'<resource-agent name="{agent}"' in meta.stdout
