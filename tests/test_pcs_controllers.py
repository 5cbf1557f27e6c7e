"""pcs-templates with several controllers (issue 14): controller fencing from their BMCs, quorum, stickiness."""
import copy
import shlex

import pytest

from crashup_lib import log, pcs

BMC = {"user": "admin", "password_file": "/etc/crashup/bmc"}
THREE = {
    "bmc_defaults": BMC,
    "controllers": [{"name": f"ctl{i}", "bmc": {"address": f"10.2.0.{i}"}} for i in (1, 2, 3)],
    "computes": [{"name": "compute1", "remote_address": "10.0.0.11", "bmc": {"address": "10.1.0.11"}}],
}


def three(**changes):
    data = copy.deepcopy(THREE)
    data.update(changes)
    return data


def by_verb(cmds, *prefix):
    return [c for c in cmds if c[:len(prefix)] == list(prefix)]


def test_each_controller_gets_its_fence_device_never_run_on_itself_with_a_delay():
    inv = pcs.parse(three())
    assert inv.controllers == ("ctl1", "ctl2", "ctl3") and not inv.warnings
    cmds = pcs.commands(inv)
    for i in (1, 2, 3):
        name = f"ctl{i}"
        assert ["stonith", "create", f"ipmi-{name}", "fence_crashup_ipmi", f"ip=10.2.0.{i}", "ipport=623",
                "username=admin", "password_file=/etc/crashup/bmc", f"pcmk_host_list={name}",
                "pcmk_delay_base=15s", "op", "monitor", "interval=60s"] in cmds
        assert ["constraint", "location", "add", f"ipmi-{name}-not-on-{name}", f"ipmi-{name}", name,
                "--", "-INFINITY"] in cmds
    # the compute's device has no delay: a compute node is fenced at once
    assert not any(a.startswith("pcmk_delay") for c in cmds if "ipmi-compute1" in c for a in c)
    assert by_verb(cmds, "property", "set") == [["property", "set", "stonith-enabled=true", "concurrent-fencing=true",
                                                 "no-quorum-policy=stop"]]
    crashup = by_verb(cmds, "resource", "create", "crashup")[0]
    assert crashup[crashup.index("meta"):] == ["meta", "resource-stickiness=100", "--force"]


def test_the_delay_is_tunable_and_the_script_checks_out():
    inv = pcs.parse(three(tuning={"controller_fence_delay": "5s"}))
    assert all("pcmk_delay_base=5s" in c for c in pcs.commands(inv) if c[:2] == ["stonith", "create"]
               and c[2].startswith("ipmi-ctl"))
    text = pcs.script(inv)
    assert "pcs -f \"$CIB\" " + shlex.join(["property", "set", "stonith-enabled=true", "concurrent-fencing=true",
                                           "no-quorum-policy=stop"]) in text


def test_one_controller_renders_as_before():
    data = three(controllers=["ctl1"])
    cmds = pcs.commands(pcs.parse(data))
    assert by_verb(cmds, "property", "set") == [["property", "set", "stonith-enabled=true", "concurrent-fencing=true"]]
    assert not any("ipmi-ctl1" in c for c in cmds) and not any("resource-stickiness=100" in c for c in cmds)


def test_a_controller_with_its_bmc_alone_is_fenced_too():
    data = three(controllers=[{"name": "ctl1", "bmc": {"address": "10.2.0.1"}}])
    cmds = pcs.commands(pcs.parse(data))
    assert by_verb(cmds, "stonith", "create", "ipmi-ctl1") and ["property", "set", "stonith-enabled=true", "concurrent-fencing=true"] in cmds


def test_several_controllers_without_bmcs_are_warned_about():
    inv = pcs.parse(three(controllers=["ctl1", "ctl2", {"name": "ctl3", "bmc": {"address": "10.2.0.3"}}]))
    assert len(inv.warnings) == 1 and "cannot be fenced" in inv.warnings[0]
    assert by_verb(pcs.commands(inv), "stonith", "create", "ipmi-ctl3")


@pytest.mark.parametrize("controllers,problem", [
    ([{"name": "ctl1"}], "controllers[0].bmc: required"),
    ([{"bmc": {"address": "10.2.0.1"}}], "controllers[0].name: required"),
    ([{"name": "ctl1", "bmc": {"address": "10.2.0.1"}, "role": "dc"}], "controllers[0].role: unknown key"),
    ([{"name": "1ctl", "bmc": {"address": "10.2.0.1"}}], "controllers[0].name: '1ctl' is not usable"),
    ([{"name": "ctl1", "bmc": {"address": "a b"}}], "controllers[0].bmc.address: "),
    ([{"name": "compute1", "bmc": {"address": "10.2.0.1"}}], "node name 'compute1' appears twice"),
    ([{"name": "ctl1", "bmc": {"address": "10.2.0.1", "password_script": "x", "password": "y"}}], "expected exactly one of"),
])
def test_bad_controller_entries_are_one_line(controllers, problem):
    with pytest.raises(pcs.InventoryError) as e:
        pcs.parse(three(controllers=controllers))
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_a_controller_bmc_password_never_shows():
    data = three(bmc_defaults={"user": "admin"},
                 controllers=[{"name": "ctl1", "bmc": {"address": "10.2.0.1", "password": "ctl-s3cret-pw"}},
                              {"name": "ctl2", "bmc": {"address": "bad address", "password": "ctl-s3cret-pw"}}],
                 computes=[{"name": "compute1", "bmc": {"address": "10.1.0.11", "password": "c-s3cret-pw"}}])
    with pytest.raises(pcs.InventoryError) as e:
        pcs.parse(data)
    assert "ctl-s3cret-pw" not in str(e.value)
    assert log.redact("ctl-s3cret-pw") != "ctl-s3cret-pw"
