"""pcs-templates against the real pcs and Pacemaker tools: every rendered command applied with `pcs -f FILE` to an
empty CIB in a file, the result checked by crm_verify and read back. No cluster is needed and none is touched: every
tool works on the file (pcs -f, crm_verify -x, crm_simulate -x), never on a live CIB.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from crashup_lib import pcs
from tests.helpers import agent_env

pytestmark = pytest.mark.lab

REPO = pathlib.Path(__file__).resolve().parents[2]
COMPUTES = ["compute1", "compute2.example.com", "compute3"]
CONTROLLER = "ctl1"
ODD_CONF = "/etc/crash up/it's $HOME;.conf"           # quoting: spaces, a quote, a $ and a ; reach pcs intact
CTL = "/usr/local/bin/compute ctl"


def inventory() -> pcs.Inventory:
    return pcs.parse({
        "cluster": {"stonith_action": "off"},
        "controllers": [CONTROLLER],
        "bmc_defaults": {"user": "admin", "password_file": "/etc/crashup/bmc password"},
        "computes": [
            {"name": "compute1", "remote_address": "10.200.0.11", "bmc": {"address": "127.0.0.1", "port": 6231}},
            {"name": "compute2.example.com", "nova_host": "compute2", "remote_address": "10.200.0.12",
             "bmc": {"address": "127.0.0.1", "port": 6232, "password_script": "/usr/local/bin/secret compute2"}},
            {"name": "compute3", "remote_address": "10.200.0.13", "bmc": {"address": "127.0.0.1", "port": 6233}},
        ],
        "crashup": {"config_file": ODD_CONF},
        "recovery": {"mode": "notify"},
        "sweep": {"nova_connection_file": "/etc/crashup/nova-db"},     # the sweep gets its own resource
        "nova_compute": {"backend": "command", "start_command": f"'{CTL}' start {{host}}",
                         "stop_command": f"'{CTL}' stop {{host}}", "status_command": f"'{CTL}' status {{host}}",
                         "heartbeat_cache": 5},
        "tuning": {"nova_compute_failure_timeout": "20s", "remote_reconnect_interval": "5s"},
    }, source="test inventory")


def run(argv, cib: pathlib.Path, check=True) -> subprocess.CompletedProcess:
    # CIB_file points every Pacemaker tool at the file: even a command without -f/-x could not reach a live CIB
    env = dict(os.environ, CIB_file=str(cib))
    cp = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    if check and cp.returncode != 0:
        pytest.fail(f"{' '.join(argv)}: exit {cp.returncode}: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


@pytest.fixture(scope="module")
def cib(tmp_path_factory) -> pathlib.Path:
    for tool in ("pcs", "cibadmin", "crm_verify", "crm_simulate"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make deps)")
    path = tmp_path_factory.mktemp("pcs") / "cib.xml"
    path.write_text(run(["cibadmin", "--empty"], path).stdout)
    # a cluster's CIB knows its corosync members: the controller, as `pcs cluster setup` leaves it
    run(["cibadmin", "--create", "--scope", "nodes", "--xml-text", f'<node id="1" uname="{CONTROLLER}"/>'], path)
    missing = [a for a in ("fence_crashup_ipmi", "fence_crashup_nova") if not pathlib.Path("/usr/sbin", a).exists()]
    for args in pcs.commands(inventory()):
        if missing and args[:2] == ["stonith", "create"]:
            args = [*args, "--force"]                    # pcs checks fence agents' metadata in /usr/sbin
        run(["pcs", "-f", str(path), *args], path)
    return path


def xml(path):
    from lxml import etree
    return etree.parse(str(path)).getroot()


def params(element) -> dict[str, str]:
    return {nv.get("name"): nv.get("value") for nv in element.findall("instance_attributes/nvpair")}


def ops(element) -> dict[str, dict[str, str]]:
    return {op.get("name"): dict(op.attrib) for op in element.findall("operations/op")}


def as_running_cluster(cib: pathlib.Path, tmp_path) -> pathlib.Path:
    """The file as a quorate cluster's CIB: the controller online, the compute nodes seen and down. An empty status
    makes Pacemaker warn of no quorum and unseen (unclean) nodes, which says nothing about the configuration."""
    from lxml import etree
    root = xml(cib)
    root.set("have-quorum", "1")
    status = root.find("status")
    etree.SubElement(status, "node_state", id="1", uname=CONTROLLER, in_ccm="true", crmd="online", join="member",
                     expected="member")
    for name in COMPUTES:
        etree.SubElement(status, "node_state", id=name, uname=name, remote_node="true", in_ccm="false",
                         crmd="offline", join="down", expected="down")
    path = tmp_path / "running.xml"
    path.write_bytes(etree.tostring(root))
    return path


def test_crm_verify_passes_without_warnings(cib, tmp_path):
    running = as_running_cluster(cib, tmp_path)
    cp = run(["crm_verify", "--xml-file", str(running), "-V"], running, check=False)
    assert cp.returncode == 0 and not cp.stderr.strip() and not cp.stdout.strip(), cp.stderr + cp.stdout
    cp = run(["crm_verify", "--xml-file", str(cib)], cib, check=False)
    assert "rror" not in cp.stderr + cp.stdout                  # the raw file: status warnings only


def simulate(cib: pathlib.Path) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """crm_simulate's plan for the file: {(resource, node)} started, {(resource, node)} probed."""
    out = run(["crm_simulate", "--xml-file", str(cib), "--simulate"], cib).stdout
    starts, probes = set(), set()
    for line in out.splitlines():
        words = line.replace("(", " ").replace(")", " ").split()
        if words[1:2] == ["Start"]:                          # "* Start      crashup      (      ctl1 )"
            starts.add((words[2].split(":")[0], words[3]))
        elif words[1:3] == ["Resource", "action:"] and words[4:6] == ["monitor", "on"]:     # a probe
            probes.add((words[3].split(":")[0], words[6]))
    return starts, probes


def test_the_scheduler_runs_the_daemon_on_controllers_and_nova_compute_on_computes(cib, tmp_path):
    starts, probes = simulate(as_running_cluster(cib, tmp_path))
    on_controller = [*COMPUTES, "crashup", "crashup-sweep", "crashup-nova", *(f"ipmi-{c}" for c in COMPUTES)]
    assert starts == {(r, CONTROLLER) for r in on_controller} | {("nova-compute", c) for c in COMPUTES}
    for daemon in ("crashup", "crashup-sweep"):                             # resource-discovery=never
        assert {n for r, n in probes if r == daemon} == {CONTROLLER}
    assert {n for r, n in probes if r == "nova-compute"} == set(COMPUTES)


def test_nova_compute_is_held_off_a_node_whose_recovery_is_open(cib, tmp_path):
    from lxml import etree
    running = as_running_cluster(cib, tmp_path)
    root = xml(running)
    node = etree.SubElement(root.find("configuration/nodes"), "node", id="compute3", uname="compute3", type="remote")
    attrs = etree.SubElement(node, "instance_attributes", id="nodes-compute3")
    etree.SubElement(attrs, "nvpair", id="nodes-compute3-state", name=pcs.STATE_ATTRIBUTE, value="recovering")
    running.write_bytes(etree.tostring(root))
    starts, _ = simulate(running)
    assert {n for r, n in starts if r == "nova-compute"} == {"compute1", "compute2.example.com"}
    assert ("compute3", CONTROLLER) in starts                              # its connection comes up all the same


def test_resources_fencing_and_constraints_read_back(cib):
    root = xml(cib)
    conf = root.find("configuration")
    prims = {p.get("id"): p for p in conf.iter("primitive")}
    for i, name in enumerate(COMPUTES, 1):
        remote = prims[name]
        assert (remote.get("class"), remote.get("provider"), remote.get("type")) == ("ocf", "pacemaker", "remote")
        assert params(remote) == {"server": f"10.200.0.1{i}", "reconnect_interval": "5s"}
        assert (ops(remote)["monitor"]["interval"], ops(remote)["monitor"]["timeout"]) == ("5s", "5s")   # shipped
        assert ops(remote)["start"]["timeout"] == "60s"
        ipmi = prims[f"ipmi-{name}"]
        assert (ipmi.get("class"), ipmi.get("type")) == ("stonith", "fence_crashup_ipmi")
        p = params(ipmi)
        assert p["ip"] == "127.0.0.1" and p["ipport"] == str(6230 + i) and p["pcmk_host_list"] == name
        assert "password" not in p and ("password_script" in p) == (i == 2)
        assert p.get("password_file", "/etc/crashup/bmc password") == "/etc/crashup/bmc password"
    nova_fence = prims["crashup-nova"]
    # no pcmk_action_limit: two of its agents at once crash Pacemaker 2.1.5's fencer (crashup_lib/pcs.py)
    assert params(nova_fence) == {"config_file": ODD_CONF, "pcmk_host_list": " ".join(COMPUTES)}

    levels = {lv.get("target"): lv for lv in conf.find("fencing-topology")}
    assert set(levels) == set(COMPUTES)
    assert all(lv.get("index") == "1" and lv.get("devices") == f"ipmi-{t},crashup-nova" for t, lv in levels.items())

    crashup = prims["crashup"]
    assert (crashup.get("provider"), crashup.get("type")) == ("crashup", "crashup")
    assert params(crashup) == {"config": ODD_CONF, "state_dir": "/run/crashup"}
    sweep = prims["crashup-sweep"]
    assert (sweep.get("provider"), sweep.get("type")) == ("crashup", "crashup")
    assert params(sweep) == {"daemon": "sweep", "config": ODD_CONF, "state_dir": "/run/crashup"}

    clone = conf.find("resources/clone")
    assert clone.get("id") == "nova-compute-clone"
    assert {nv.get("name"): nv.get("value") for nv in clone.findall("meta_attributes/nvpair")} == {
        "interleave": "true"}
    nc = clone.find("primitive")
    assert (nc.get("id"), nc.get("provider"), nc.get("type")) == ("nova-compute", "crashup", "nova-compute")
    assert params(nc) == {"config": ODD_CONF, "backend": "command", "start_command": f"'{CTL}' start {{host}}",
                          "stop_command": f"'{CTL}' stop {{host}}", "status_command": f"'{CTL}' status {{host}}",
                          "heartbeat_cache": "5", "state_dir": "/run/crashup"}
    assert {nv.get("name"): nv.get("value") for nv in nc.findall("meta_attributes/nvpair")} == {
        "failure-timeout": "20s"}
    o = ops(nc)
    assert (o["start"]["timeout"], o["monitor"]["interval"], o["monitor"]["timeout"], o["stop"]["timeout"]) == (
        "120s", "10s", "20s", "60s")

    locations = {loc.get("id"): loc for loc in conf.iter("rsc_location")}
    for daemon in ("crashup", "crashup-sweep"):
        for name in COMPUTES:
            loc = locations[f"{daemon}-not-on-{name}"]
            assert (loc.get("rsc"), loc.get("node"), loc.get("score"), loc.get("resource-discovery")) == (
                daemon, name, "-INFINITY", "never")
    loc = locations[f"nova-compute-not-on-{CONTROLLER}"]
    assert (loc.get("rsc"), loc.get("node"), loc.get("score"), loc.get("resource-discovery")) == (
        "nova-compute-clone", CONTROLLER, "-INFINITY", "never")
    rule = next(loc for loc in locations.values() if loc.find("rule") is not None).find("rule")
    assert rule.get("score") == "-INFINITY" and rule.get("boolean-op") == "or"
    assert sorted(e.get("value") for e in rule.iter("expression")) == ["pending", "recovering"]
    assert {e.get("attribute") for e in rule.iter("expression")} == {pcs.STATE_ATTRIBUTE}

    props = {nv.get("name"): nv.get("value") for nv in conf.find("crm_config").iter("nvpair")}
    assert props == {"stonith-enabled": "true", "concurrent-fencing": "true", "stonith-action": "off"}


def _metadata_parameters(argv) -> set[str]:
    from lxml import etree
    cp = subprocess.run(argv, capture_output=True, timeout=30, env=agent_env())
    assert cp.returncode == 0, cp.stderr
    return {p.get("name") for p in etree.fromstring(cp.stdout).iter("parameter")}


def test_every_rendered_parameter_is_one_the_agent_declares(cib):
    """pcs takes ocf:crashup:* with --force (nova-compute is installed on compute nodes, not where pcs runs), so it
    cannot check their parameters: this does, against the agents in this checkout."""
    declared = {
        "crashup": _metadata_parameters([sys.executable, str(REPO / "agents" / "crashup"), "meta-data"]),
        "nova-compute": _metadata_parameters([sys.executable, str(REPO / "agents" / "nova-compute"), "meta-data"]),
        "fence_crashup_ipmi": _metadata_parameters([sys.executable, str(REPO / "fence" / "fence_crashup_ipmi"),
                                                    "-o", "metadata"]),
        "fence_crashup_nova": _metadata_parameters([sys.executable, str(REPO / "fence" / "fence_crashup_nova"),
                                                    "-o", "metadata"]),
    }
    checked = 0
    for prim in xml(cib).iter("primitive"):
        if prim.get("type") in declared:
            rendered = {n for n in params(prim) if not n.startswith("pcmk_")}
            assert rendered <= declared[prim.get("type")], (prim.get("id"), rendered - declared[prim.get("type")])
            checked += 1
    assert checked == 4 + len(COMPUTES)          # crashup, crashup-sweep, crashup-nova, nova-compute, ipmi-*
