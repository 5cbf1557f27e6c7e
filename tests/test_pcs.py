"""pcs-templates: inventory validation, the pcs commands, the script's quoting, the matching crashup.conf."""
import copy
import pathlib
import shlex

import pytest

from crashup_lib import cli, config, pcs

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "pcs-templates" / "inventory.example.yaml"

TWO = {
    "controllers": ["ctl1"],
    "computes": [
        {"name": "compute1", "remote_address": "10.0.0.11",
         "bmc": {"address": "10.1.0.11", "user": "admin", "password_file": "/etc/crashup/bmc-1"}},
        {"name": "compute2.example.com", "nova_host": "compute2", "remote_address": "10.0.0.12",
         "bmc": {"address": "10.1.0.12", "port": 6230, "user": "admin", "password_file": "/etc/crashup/bmc-2"}},
    ],
}


def inventory(**changes):
    data = copy.deepcopy(TWO)
    data.update(changes)
    return data


def write(tmp_path, text):
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return str(path)


def test_two_computes_give_the_lab_shaped_command_list():
    cmds = pcs.commands(pcs.parse(TWO))
    assert cmds == [
        ["resource", "create", "compute1", "ocf:pacemaker:remote", "server=10.0.0.11", "reconnect_interval=60s",
         "op", "monitor", "interval=5s", "timeout=5s", "op", "start", "timeout=60s", "--force"],
        ["resource", "create", "compute2.example.com", "ocf:pacemaker:remote", "server=10.0.0.12",
         "reconnect_interval=60s", "op", "monitor", "interval=5s", "timeout=5s", "op", "start", "timeout=60s",
         "--force"],
        ["stonith", "create", "ipmi-compute1", "fence_crashup_ipmi", "ip=10.1.0.11", "ipport=623", "username=admin",
         "password_file=/etc/crashup/bmc-1", "pcmk_host_list=compute1", "op", "monitor", "interval=60s"],
        ["stonith", "create", "ipmi-compute2.example.com", "fence_crashup_ipmi", "ip=10.1.0.12", "ipport=6230",
         "username=admin", "password_file=/etc/crashup/bmc-2", "pcmk_host_list=compute2.example.com",
         "op", "monitor", "interval=60s"],
        ["stonith", "create", "crashup-nova", "fence_crashup_nova", "config_file=/etc/crashup/crashup.conf",
         "pcmk_host_list=compute1 compute2.example.com", "op", "monitor", "interval=60s"],
        ["stonith", "level", "add", "1", "compute1", "ipmi-compute1", "crashup-nova"],
        ["stonith", "level", "add", "1", "compute2.example.com", "ipmi-compute2.example.com", "crashup-nova"],
        ["resource", "create", "crashup", "ocf:crashup:crashup", "config=/etc/crashup/crashup.conf",
         "state_dir=/run/crashup", "op", "monitor", "interval=10s", "timeout=20s", "--force"],
        ["constraint", "location", "add", "crashup-not-on-compute1", "crashup", "compute1",
         "--", "-INFINITY", "resource-discovery=never"],
        ["constraint", "location", "add", "crashup-not-on-compute2.example.com", "crashup", "compute2.example.com",
         "--", "-INFINITY", "resource-discovery=never"],
        ["resource", "create", "nova-compute", "ocf:crashup:nova-compute", "config=/etc/crashup/crashup.conf",
         "backend=systemd", "unit=nova-compute", "state_dir=/run/crashup",
         "op", "start", "timeout=120s", "op", "monitor", "interval=10s", "timeout=20s", "op", "stop", "timeout=60s",
         "meta", "failure-timeout=60s", "clone", "interleave=true", "--force"],
        ["constraint", "location", "add", "nova-compute-not-on-ctl1", "nova-compute-clone", "ctl1",
         "--", "-INFINITY", "resource-discovery=never"],
        ["constraint", "location", "nova-compute-clone", "rule", "id=nova-compute-held-during-recovery",
         "score=-INFINITY", "crashup-recovery-state", "eq", "pending", "or", "crashup-recovery-state", "eq",
         "recovering"],
        ["property", "set", "stonith-enabled=true", "concurrent-fencing=true"],
    ]


def test_options_reach_the_commands():
    inv = pcs.parse(inventory(
        cluster={"stonith_action": "off"}, crashup={"config_file": "/etc/c/c.conf", "state_dir": "/run/c"},
        nova_compute={"backend": "command", "start_command": "/bin/ctl start {host}",
                      "stop_command": "/bin/ctl stop {host}", "status_command": "/bin/ctl status {node}",
                      "libvirt_uri": "qemu:///system", "heartbeat_cache": 5},
        tuning={"nova_compute_monitor_interval": 5, "nova_compute_failure_timeout": "20s",
                "remote_reconnect_interval": "5s", "fence_monitor_interval": "2m"}))
    cmds = pcs.commands(inv)
    clone = next(c for c in cmds if c[:3] == ["resource", "create", "nova-compute"])
    assert clone[4:13] == ["config=/etc/c/c.conf", "backend=command", "start_command=/bin/ctl start {host}",
                           "stop_command=/bin/ctl stop {host}", "status_command=/bin/ctl status {node}",
                           "libvirt_uri=qemu:///system", "heartbeat_cache=5", "state_dir=/run/c", "op"]
    assert "interval=5s" in clone and "failure-timeout=20s" in clone and "unit=nova-compute" not in clone
    assert "reconnect_interval=5s" in cmds[0] and "interval=120s" in cmds[2]
    assert cmds[-1] == ["property", "set", "stonith-enabled=true", "concurrent-fencing=true", "stonith-action=off"]
    assert "config_file=/etc/c/c.conf" in next(c for c in cmds if "crashup-nova" in c[2:3])


def test_a_sweep_database_adds_the_sweep_resource_beside_the_daemon():
    assert not any(pcs.SWEEP in c for c in pcs.commands(pcs.parse(TWO)))
    inv = pcs.parse(inventory(sweep={"nova_connection_file": "/etc/crashup/nova-db"}))
    cmds = pcs.commands(inv)
    assert ["resource", "create", "crashup-sweep", "ocf:crashup:crashup", "daemon=sweep",
            "config=/etc/crashup/crashup.conf", "state_dir=/run/crashup", "op", "monitor", "interval=10s",
            "timeout=20s", "--force"] in cmds
    kept_off = [c[5] for c in cmds if c[:3] == ["constraint", "location", "add"] and c[4] == "crashup-sweep"]
    assert kept_off == ["compute1", "compute2.example.com"]
    assert "nova_connection_file = /etc/crashup/nova-db" in pcs.crashup_conf(inv)


def test_script_quotes_odd_paths_and_parses_back_to_the_commands():
    inv = pcs.parse(inventory(crashup={"config_file": "/etc/my crash'up/$conf;x.conf"}))
    text = pcs.script(inv)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh" and "set -eu" in lines
    assert 'pcs cluster cib "$CIB"' in lines and lines[-1] == 'pcs cluster cib-push "$CIB" --config'
    applied = [shlex.split(line)[3:] for line in lines if line.startswith('pcs -f "$CIB" ')]
    assert applied == pcs.commands(inv)
    assert all(shlex.split(line)[:3] == ["pcs", "-f", "$CIB"] for line in lines if line.startswith("pcs -f"))
    assert "config_file=/etc/my crash'up/$conf;x.conf" in applied[4]


def test_password_file_and_script_keep_the_secret_out_and_clear_text_warns():
    inv = pcs.parse(inventory(bmc_defaults={"password_file": "/etc/crashup/bmc-secret"}))
    assert not inv.warnings and "hunter2" not in pcs.script(inv) + pcs.crashup_conf(inv)
    assert not any(a.startswith("password=") for c in pcs.commands(inv) for a in c)
    data = inventory()
    data["computes"][1]["bmc"] = {"address": "b", "user": "u", "password_script": "/bin/secret compute2"}
    assert "password_script=/bin/secret compute2" in pcs.commands(pcs.parse(data))[3]
    data["computes"][1]["bmc"] = {"address": "b", "user": "u", "password": "hunter2"}
    inv = pcs.parse(data)
    assert "password=hunter2" in pcs.commands(inv)[3]
    assert len(inv.warnings) == 1 and "in clear" in inv.warnings[0] and "computes[1].bmc.password" in inv.warnings[0]


def test_bmc_defaults_merge_and_a_node_own_password_source_replaces_the_default():
    data = inventory(bmc_defaults={"user": "root", "port": 6000, "password_file": "/etc/shared"})
    data["computes"][0]["bmc"] = {"address": "a", "password_script": "/bin/own"}
    data["computes"][1]["bmc"] = {"address": "b"}
    inv = pcs.parse(data)
    assert inv.computes[0].bmc == pcs.Bmc("a", "root", 6000, password_script="/bin/own")
    assert inv.computes[1].bmc == pcs.Bmc("b", "root", 6000, password_file="/etc/shared")


@pytest.mark.parametrize("change, expected", [
    ({"computes": []}, "computes: expected a non-empty list, got a list"),
    ({"controlers": ["ctl1"]}, "controlers: unknown key (did you mean controllers?)"),
    ({"recovery": {"mode": "sometimes"}}, "recovery.mode: 'sometimes' is not allowed: expected one of auto, notify"),
    ({"recovery": {"storm_max_host": 3}}, "recovery.storm_max_host: unknown key (did you mean storm_max_hosts?)"),
    ({"evacuation": {"mode": "auto"}}, "evacuation.mode: unknown key"),
    ({"openstack": {"clouds_file": "clouds.yaml"}}, "openstack.clouds_file: 'clouds.yaml' is not allowed"),
    ({"pacemaker": {"host_map": "a:b"}}, "pacemaker: not set here: host_map is derived"),
    ({"cluster": {"stonith_action": "poweroff"}}, "cluster.stonith_action: 'poweroff' is not allowed"),
    ({"controllers": ["ctl1", "compute1"]}, "controllers/computes: node name 'compute1' appears twice"),
    ({"controllers": ["1ctl"]}, "controllers[0]: '1ctl' is not usable as a Pacemaker node name"),
    ({"nova_compute": {"backend": "upstart"}}, "nova_compute.backend: 'upstart' is not allowed"),
    ({"nova_compute": {"backend": "command", "start_command": "x"}},
     "nova_compute: backend command needs stop_command, status_command"),
    ({"nova_compute": {"backend": "command", "start_command": "x {hots}", "stop_command": "y",
                       "status_command": "z"}}, "nova_compute.start_command: placeholder {hots} is not one of"),
    ({"tuning": {"remote_start_timeout": "soon"}}, "tuning.remote_start_timeout: 'soon' is not allowed"),
    ({"tuning": {"remote_start_timeout": "1.5s"}}, "expected whole seconds"),
    ({"crashup": {"config_file": "crashup.conf"}}, "crashup.config_file: 'crashup.conf' is not an absolute path"),
])
def test_bad_inventories_fail_with_one_line_naming_the_key(change, expected):
    with pytest.raises(pcs.InventoryError) as e:
        pcs.parse(inventory(**change), source="inv.yaml")
    assert str(e.value).startswith("inventory: inv.yaml: ") and expected in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bmc, expected", [
    ({"address": "a", "user": "u"}, "computes[0].bmc: expected exactly one of password_file"),
    ({"address": "a", "user": "u", "password": "p", "password_file": "/f"}, "got password_file, password"),
    ({"address": "a", "user": "u", "password_file": "rel"}, "computes[0].bmc.password_file: 'rel' is not an abs"),
    ({"address": "a", "password_file": "/f"}, "computes[0].bmc.user: required (here or in bmc_defaults)"),
    ({"address": "a", "user": "u", "password_file": "/f", "port": 70000}, "computes[0].bmc.port: expected an int"),
    ({"address": "a", "user": "u", "password_file": "/f", "pass": "x"}, "computes[0].bmc.pass: unknown key"),
])
def test_bad_bmc_entries(bmc, expected):
    data = inventory()
    data["computes"][0]["bmc"] = bmc
    with pytest.raises(pcs.InventoryError, match=None) as e:
        pcs.parse(data)
    assert expected in str(e.value)


def test_duplicate_nova_hosts_are_refused():
    data = inventory()
    data["computes"][1]["nova_host"] = "compute1"
    with pytest.raises(pcs.InventoryError, match="nova_host 'compute1' appears twice"):
        pcs.parse(data)


def test_yaml_problems_name_the_file_and_line(tmp_path):
    with pytest.raises(pcs.InventoryError, match=r"inventory: .*inventory.yaml: not valid YAML: line \d+: .*expected"):
        pcs.load(write(tmp_path, "controllers: [ctl1]\ncomputes: [\n"))
    with pytest.raises(pcs.InventoryError, match=r"line 2: key 'controllers' given twice"):
        pcs.load(write(tmp_path, "controllers: [ctl1]\ncontrollers: [ctl2]\n"))
    with pytest.raises(pcs.InventoryError, match="no such file"):
        pcs.load(str(tmp_path / "missing.yaml"))
    with pytest.raises(pcs.InventoryError, match=r"inventory.yaml: the top level: expected a mapping, got a list"):
        pcs.load(write(tmp_path, "- a\n"))


def test_yaml_off_and_no_stay_words(tmp_path):
    inv = pcs.load(write(tmp_path, "cluster: {stonith_action: off}\ncontrollers: [no]\ncomputes:\n"
                                   "  - {name: c1, bmc: {address: a, user: u, password_file: /f}}\n"
                                   "evacuation: {keep_power_state: no}\n"))
    assert inv.stonith_action == "off" and inv.controllers == ("no",)
    assert inv.conf["evacuation"]["keep_power_state"] == "no"


def test_conf_parses_back_with_the_policy_and_a_derived_host_map(tmp_path):
    data = inventory(openstack={"cloud": "ha", "clouds_file": "/etc/openstack/clouds.yaml", "api_timeout": 20},
                     recovery={"mode": "notify", "storm_window": "10m"},
                     evacuation={"keep_power_state": False, "reserved_hosts": ["spare1", "spare2"]},
                     events={"journal": "/var/log/crashup.jsonl"}, logging={"debug": True})
    path = tmp_path / "crashup.conf"
    path.write_text(pcs.crashup_conf(pcs.parse(data)))
    cfg = config.load(str(path), env={})
    assert (cfg.cloud, cfg.clouds_file, cfg.api_timeout) == ("ha", "/etc/openstack/clouds.yaml", 20.0)
    assert (cfg.mode, cfg.storm_window, cfg.keep_power_state) == ("notify", 600.0, False)
    assert cfg.reserved_hosts == ("spare1", "spare2") and cfg.journal == "/var/log/crashup.jsonl" and cfg.debug
    assert cfg.host_map == {"compute2.example.com": "compute2"}
    assert cfg.sources["concurrency"] == "default"


def test_conf_without_policy_is_all_defaults(tmp_path):
    path = tmp_path / "crashup.conf"
    path.write_text(pcs.crashup_conf(pcs.parse(inventory(computes=TWO["computes"][:1]))))
    cfg = config.load(str(path), env={})
    assert all(source == "default" for source in cfg.sources.values())


def test_example_inventory_renders():
    inv = pcs.load(str(EXAMPLE))
    assert [c.name for c in inv.computes] == ["compute1", "compute2"] and not inv.warnings
    assert inv.host_map == {"compute1": "compute1.cloud.example.com", "compute2": "compute2.cloud.example.com"}


def test_cli_render_conf_and_errors(tmp_path, capsys):
    assert cli.main(["pcs", "render", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/sh\n") and "stonith level add 1 compute2 ipmi-compute2 crashup-nova" in out
    assert cli.main(["pcs", "render", str(EXAMPLE), "--conf"]) == 0
    assert "[pacemaker]\nhost_map = compute1:" in capsys.readouterr().out
    bad = write(tmp_path, "controllers: [ctl1]\ncomputes: [{name: c1, bmc: {address: a, user: u}}]\n")
    assert cli.main(["pcs", "render", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "computes[0].bmc: expected exactly one of password_file" in err
    clear = write(tmp_path, "controllers: [ctl1]\ncomputes: [{name: c1, bmc: {address: a, user: u, password: p}}]\n")
    assert cli.main(["pcs", "render", clear]) == 0
    assert "warning:" in capsys.readouterr().err


class FakeRun:
    """Records argv; `pcs -f` fails on the command containing `fail_on`."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, argv):
        import subprocess
        self.calls.append(argv)
        if self.fail_on and self.fail_on in argv:
            return subprocess.CompletedProcess(argv, 1, "", "Warning: x\nError: unable to create it\n")
        return subprocess.CompletedProcess(argv, 0, "<cib/>" if argv[0] == "cibadmin" else "", "")


def test_apply_uses_a_copy_and_pushes_once(capsys):
    run = FakeRun()
    cmds = pcs.commands(pcs.parse(TWO))
    assert cli.apply_pcs(cmds, run=run) == 0
    assert run.calls[0] == ["cibadmin", "-Q"]
    copy_path = run.calls[1][2]
    assert [c[:3] for c in run.calls[1:-1]] == [["pcs", "-f", copy_path]] * len(cmds)
    assert [c[3:] for c in run.calls[1:-1]] == cmds
    assert run.calls[-1] == ["pcs", "cluster", "cib-push", copy_path, "--config"]
    assert not pathlib.Path(copy_path).exists()


def test_apply_stops_at_a_failing_command_without_pushing(capsys):
    run = FakeRun(fail_on="ipmi-compute2.example.com")
    assert cli.apply_pcs(pcs.commands(pcs.parse(TWO)), run=run) == 1
    assert not any("cib-push" in c for c in run.calls)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "command 4/14 failed (exit 1), nothing pushed: pcs stonith create ipmi-compute2.example.com" in err
    assert err.rstrip().endswith("Error: unable to create it")
