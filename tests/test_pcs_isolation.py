"""The inventory's `isolation:` section and the fallback fencing level `crashup pcs render` makes of it: read by the
guard's own parser, rendered as a second level after power fencing, and accepted by pcs and crm_verify."""
import copy
import os
import shutil
import subprocess
import sys

import pytest
from lxml import etree

from crashup_lib import pcs
from crashup_lib.fencing import isolation as fallback
from crashup_lib.isolation import timing
from tests.helpers import REPO, agent_env
from tests.test_pcs import TWO

ENABLED = {"enabled": "yes", "isolation_timeout": "20", "probe_interval": "2", "probe_timeout": "5",
           "action_timeout": "15", "margin": "10"}


def inventory(isolation=None, computes=None):
    data = copy.deepcopy(TWO)
    if computes is not None:
        data["computes"] = data["computes"][:computes]
    if isolation is not None:
        data["isolation"] = isolation
    return pcs.parse(data, "inv.yaml")


def stonith(cmds):
    return [c for c in cmds if c[0] == "stonith"]


def test_without_isolation_nothing_changes():
    assert pcs.commands(inventory()) == pcs.commands(inventory({"enabled": "no", "isolation_timeout": "99"}))
    assert not any("fence_crashup_isolation" in c for c in pcs.commands(inventory()))
    assert inventory().isolation == timing.Settings()


def test_enabled_adds_a_device_per_node_and_a_second_level_after_power():
    cmds = pcs.commands(inventory(ENABLED))
    devices = {c[2]: c for c in stonith(cmds) if c[1] == "create"}
    levels = [c[3:] for c in stonith(cmds) if c[1] == "level"]
    assert levels == [["1", "compute1", "ipmi-compute1", "crashup-nova"],
                      ["1", "compute2.example.com", "ipmi-compute2.example.com", "crashup-nova"],
                      ["2", "compute1", "isolation-compute1", "crashup-nova"],
                      ["2", "compute2.example.com", "isolation-compute2.example.com", "crashup-nova"]]
    wait = 2 + 5 + 20 + 15 + 10
    for name in ("compute1", "compute2.example.com"):
        c = devices[f"isolation-{name}"]
        assert c[3] == "fence_crashup_isolation"
        params = dict(a.split("=", 1) for a in c[4:c.index("op")])
        assert params == {"isolation_timeout": "20", "probe_interval": "2", "probe_timeout": "5",
                          "action_timeout": "15", "watchdog_timeout": "0", "margin": "10",
                          "deadline": str(wait + int(fallback.SLACK)), "pcmk_host_list": name,
                          "pcmk_off_timeout": f"{wait + int(fallback.SLACK) + pcs.FALLBACK_TIMEOUT_SLACK}s",
                          "pcmk_reboot_timeout": f"{wait + int(fallback.SLACK) + pcs.FALLBACK_TIMEOUT_SLACK}s"}
        # what the device reads back is what the guard runs with: the same deadline
        back = timing.parse({k: v for k, v in params.items() if k in fallback.TIMING})
        assert fallback.wait_for(back) == wait


def test_a_watchdog_lengthens_the_wait_to_its_reset():
    s = {**ENABLED, "watchdog": "/dev/watchdog", "watchdog_timeout": "120"}
    cmds = pcs.commands(inventory(s))
    device = next(c for c in stonith(cmds) if c[2] == "isolation-compute1")
    assert "watchdog=/dev/watchdog" in device and f"deadline={5 + 120 + 10 + int(fallback.SLACK)}" in device


@pytest.mark.parametrize("section, expected", [
    # the values are the guard's parser's to judge (tests/test_isolation_timing.py): its line, with the file's name
    ({"enabled": "maybe"}, "inventory: inv.yaml: isolation: enabled: 'maybe' is not true or false"),
    ({"timeout": "3"}, "inventory: inv.yaml: isolation.timeout: unknown key"),
    ({"margin": ["1"]}, "inventory: inv.yaml: isolation.margin: expected text, got a list"),
    ("yes", "inventory: inv.yaml: isolation: expected a mapping"),
])
def test_bad_isolation_sections_are_one_line(section, expected):
    with pytest.raises(pcs.InventoryError) as e:
        inventory(section)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_yaml_words_reach_the_guards_parser(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text((REPO / "pcs-templates" / "inventory.example.yaml").read_text() +
                    "isolation:\n  enabled: yes\n  watchdog: none\n  policy: pause\n  isolation_timeout: 45\n")
    inv = pcs.load(str(path))
    assert inv.isolation == timing.Settings(enabled=True, isolation_timeout=45.0, policy=timing.Policy.PAUSE)


# --- Pacemaker's own tools on the rendered commands ------------------------------------------------------------------

def run(argv, cib, check=True):
    env = dict(os.environ, CIB_file=str(cib))          # every tool on the file, never a live CIB
    cp = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    if check and cp.returncode != 0:
        pytest.fail(f"{' '.join(argv)}: exit {cp.returncode}: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def test_pcs_and_crm_verify_accept_the_fallback_level(tmp_path):
    for tool in ("pcs", "cibadmin", "crm_verify"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make deps)")
    cib = tmp_path / "cib.xml"
    cib.write_text(run(["cibadmin", "--empty"], cib).stdout)
    run(["cibadmin", "--create", "--scope", "nodes", "--xml-text", '<node id="1" uname="ctl1"/>'], cib)
    installed = all(os.path.exists(f"/usr/sbin/{a}") for a in ("fence_crashup_ipmi", "fence_crashup_nova",
                                                                "fence_crashup_isolation"))
    for args in pcs.commands(inventory(ENABLED, computes=1)):
        if not installed and args[:2] == ["stonith", "create"]:
            args = [*args, "--force"]                  # pcs reads fence agents' metadata from /usr/sbin
        run(["pcs", "-f", str(cib), *args], cib)
    root = etree.parse(str(cib)).getroot()
    root.set("have-quorum", "1")                        # as a quorate cluster: the controller up, compute1 down
    status = root.find("status")
    etree.SubElement(status, "node_state", id="1", uname="ctl1", in_ccm="true", crmd="online", join="member",
                     expected="member")
    etree.SubElement(status, "node_state", id="compute1", uname="compute1", remote_node="true", in_ccm="false",
                     crmd="offline", join="down", expected="down")
    running = tmp_path / "running.xml"
    running.write_bytes(etree.tostring(root))
    cp = run(["crm_verify", "--xml-file", str(running), "-V"], running, check=False)
    assert cp.returncode == 0 and not (cp.stderr + cp.stdout).strip(), cp.stderr + cp.stdout
    levels = sorted((lv.get("index"), lv.get("target"), lv.get("devices")) for lv in root.iter("fencing-level"))
    assert levels == [("1", "compute1", "ipmi-compute1,crashup-nova"),
                      ("2", "compute1", "isolation-compute1,crashup-nova")]
    # every parameter rendered is one the agent declares (pcs could not check it with --force)
    meta = subprocess.run([sys.executable, str(REPO / "fence" / "fence_crashup_isolation"), "-o", "metadata"],
                          capture_output=True, timeout=30, env=agent_env())
    declared = {p.get("name") for p in etree.fromstring(meta.stdout).iter("parameter")}
    device = next(p for p in root.iter("primitive") if p.get("id") == "isolation-compute1")
    rendered = {nv.get("name") for nv in device.findall("instance_attributes/nvpair")}
    assert {n for n in rendered if not n.startswith("pcmk_")} <= declared
