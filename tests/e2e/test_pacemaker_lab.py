"""The real Pacemaker lab (tests/lab/pacemaker.py): ctl1 + 3 pacemaker-remoted nodes, fenced by fence_dummy.

Root only; one cluster per machine, so these refuse to run while another lab is up (up_controller names the daemons).
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import time

import pytest

from tests.lab import netns, pacemaker as pcmk, topology

pytestmark = pytest.mark.lab

NODES = topology.nodes(3)
NAMES = [n.name for n in NODES]


def all_online(names=NAMES):
    def pred(st: pcmk.Status) -> bool:
        return st.dc == topology.CONTROLLER and all(st.nodes[n].online for n in names)
    pred.__name__ = f"{', '.join(names)} online with {topology.CONTROLLER} DC"
    return pred


def config_commands() -> list[list[str]]:
    cmds = [["stonith", "create", "fence-dummy", "fence_dummy", "type=file",
             f"status_file={topology.RUN_DIR}/fence_dummy.status",
             f"pcmk_host_list={' '.join(NAMES)}", "op", "monitor", "interval=60s"]]
    for n in NODES:
        cmds.append(["resource", "create", n.name, "ocf:pacemaker:remote", f"server={n.address}",
                     "reconnect_interval=5s", "op", "monitor", "interval=5s", "op", "start", "timeout=20s",
                     "--force"])      # pcs wants `cluster node add-remote` (pcsd) otherwise
    return cmds


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the Pacemaker lab needs root")
    pcmk.install()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        timings.update({f"controller.{k}": v for k, v in pcmk.up_controller().items()})
        for n in NODES:
            pcmk.add_node(n)
        timings["nodes_listening"] = round(time.monotonic() - t0, 2)
        pcmk.push_config(config_commands())
        timings["config_pushed"] = round(time.monotonic() - t0, 2)
        pcmk.wait_for(all_online(), 60)
        timings["nodes_online"] = round(time.monotonic() - t0, 2)
    except pcmk.LabBusy:
        raise                                   # someone else's cluster (or a leftover lab): hands off
    except BaseException:
        pcmk.down()
        raise
    print(f"\nlab bring-up (s since start): {json.dumps(timings)}")
    yield timings
    t = time.monotonic()
    pcmk.down()
    print(f"\nlab teardown: {time.monotonic() - t:.2f}s")


def test_controller_dc_and_nodes_online(lab):
    st = pcmk.status()
    assert st.dc == topology.CONTROLLER and st.quorate
    assert st.nodes[topology.CONTROLLER].type == "member"
    for n in NAMES:
        assert st.nodes[n].type == "remote" and st.nodes[n].online, st.nodes[n]
        conn = st.resources[n]
        assert (conn.agent, conn.role, conn.nodes) == ("ocf:pacemaker:remote", "Started", [topology.CONTROLLER])
    assert st.resources["fence-dummy"].active


def test_each_node_has_its_hostname_and_own_run(lab):
    for n in NODES:
        assert pcmk.run_in_node(n, ["hostname"], check=True).stdout.strip() == n.name
        assert pcmk.run_in_node(n, ["ip", "-4", "-o", "addr", "show"], check=True).stdout.count(n.address) == 1
    probe = "/run/crlab-probe"
    first, *others = NODES
    pcmk.run_in_node(first, ["sh", "-c", f"echo {first.name} > {probe}"], check=True)
    try:
        assert pcmk.run_in_node(first, ["cat", probe]).stdout.strip() == first.name
        for n in others:
            assert pcmk.run_in_node(n, ["test", "-e", probe]).returncode == 1, f"{n.name} sees {first.name}'s /run"
        assert not pathlib.Path(probe).exists(), "the host sees a node's /run"
    finally:
        pcmk.run_in_node(first, ["rm", "-f", probe])


def test_crm_node_inside_node_says_its_name(lab):
    for n in NODES:
        cp = pcmk.run_in_node(n, ["crm_node", "-n"])
        assert cp.returncode == 0 and cp.stdout.strip() == n.name, cp


def test_nodes_reach_the_host_and_each_other(lab):
    """TCP from inside a node to a listener on the bridge address (where the lab's nova API listens) and to
    another node."""
    with socket.create_server((topology.BRIDGE_ADDR, 0)) as srv:
        port = srv.getsockname()[1]
        code = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()"
        cp = pcmk.run_in_node(NODES[0], ["/usr/bin/python3", "-c", code, topology.BRIDGE_ADDR, str(port)])
        assert cp.returncode == 0, cp.stderr
    cp = pcmk.run_in_node(NODES[0], ["ping", "-c1", "-W2", NODES[1].address])
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_refuses_a_second_controller(lab):
    with pytest.raises(pcmk.LabBusy, match="already running: .*corosync"):
        pcmk.up_controller()


def test_killed_remoted_is_fenced_and_comes_back(lab):
    node = NODES[0]
    since = time.time()
    assert pcmk.kill_remoted(node) and not pcmk.remoted_running(node)
    t = time.monotonic()
    st = pcmk.wait_for(lambda s: s.fenced(node.name, since) and not s.nodes[node.name].online, 60,
                       f"{node.name} fenced")
    fenced_after = time.monotonic() - t
    assert [e.action for e in st.fenced(node.name, since)] == ["reboot"]
    assert all(st.nodes[n].online for n in NAMES if n != node.name)
    pcmk.start_remoted(node)
    pcmk.wait_for(all_online(), 60)
    print(f"\nremoted kill: fenced after {fenced_after:.2f}s, online again {time.monotonic() - t:.2f}s after kill")


def test_cut_link_is_fenced_and_comes_back(lab):
    node = NODES[1]
    since = time.time()
    pcmk.link(node, False)
    t = time.monotonic()
    try:
        st = pcmk.wait_for(lambda s: s.fenced(node.name, since) and not s.nodes[node.name].online, 90,
                           f"{node.name} fenced after its link went down")
        fenced_after = time.monotonic() - t
        assert pcmk.remoted_running(node)          # nothing crashed: the cluster just lost it
        assert all(st.nodes[n].online for n in NAMES if n != node.name)
    finally:
        pcmk.link(node, True)
    pcmk.wait_for(all_online(), 90)
    print(f"\nlink down: fenced after {fenced_after:.2f}s, online again {time.monotonic() - t:.2f}s after the cut")


def test_down_leaves_nothing(lab):
    t = time.monotonic()
    pcmk.down()
    took = time.monotonic() - t
    assert not netns.pids_named(pcmk.DAEMONS), netns.pids_named(pcmk.DAEMONS)
    assert not [ns for ns in netns.netns_list() if ns.startswith("crlab")]
    links = netns.run(["ip", "-o", "link", "show"]).stdout
    assert "crlab" not in links
    assert not topology.RUN_DIR.exists()
    assert not list(pcmk.CIB_DIR.glob("cib*")) and not pcmk.CIB_MARKER.exists()
    assert not pcmk._lab_wrote_conf()
    assert pcmk.remoted_path().exists() and topology.LOG_DIR.exists()     # kept
    t2 = time.monotonic()
    pcmk.down()                                     # idempotent, and cheap when nothing runs
    print(f"\ndown: {took:.2f}s; again with nothing up: {time.monotonic() - t2:.2f}s")
