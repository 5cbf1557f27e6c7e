"""The fence-agent framework, through a real agent process, against the fence-agents contract and schema."""
import os
import stat

import pytest
from lxml import etree

from tests.helpers import TEST_AGENTS, agent_env, run

AGENT = TEST_AGENTS / "fence_dummy_power"
FENCE_RNG = "/usr/share/cluster/relaxng/metadata.rng"
PASSWORD = "secret-pw"


def stdin(**options) -> str:
    return "".join(f"{k}={v}\n" for k, v in options.items())


@pytest.fixture
def device(tmp_path):
    folder = tmp_path / "device"
    folder.mkdir()
    return folder


def power_log(device):
    path = device / "log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def fence(device, **options):
    options.setdefault("folder", device)
    options.setdefault("password", PASSWORD)
    return run([AGENT], input=stdin(**options), env=agent_env(HA_LOGFILE=str(device.parent / "ha.log")))


def test_metadata_valid_against_fence_agents_schema():
    result = run([AGENT], input="action=metadata\n")
    assert result.returncode == 0
    doc = etree.fromstring(result.stdout.encode())
    etree.RelaxNG(etree.parse(FENCE_RNG)).assertValid(doc)
    params = {p.get("name"): p for p in doc.iter("parameter")}
    # Pacemaker passes the target as `port` when the metadata has it: keep it, deprecated, as fence-agents do
    assert params["port"].get("deprecated") == "1" and params["plug"].get("obsoletes") == "port"
    assert params["ipaddr"].get("deprecated") == "1" and params["password"].get("obsoletes") == "passwd"
    assert params["action"].find("content").get("default") == "reboot"
    actions = [a.get("name") for a in doc.iter("action")]
    assert actions == ["on", "off", "reboot", "status", "monitor", "list", "list-status", "metadata",
                       "validate-all"]
    assert doc.find("actions/action[@name='on']").get("automatic") == "0"
    assert run([AGENT, "-o", "meta-data"]).stdout == result.stdout


def test_status_off_on_reboot_semantics(device):
    result = fence(device, action="status", port="n1")
    assert (result.returncode, result.stdout) == (0, "Status: ON\n")
    result = fence(device, action="off", port="n1")
    assert (result.returncode, result.stdout) == (0, "Success: Powered OFF\n")
    assert fence(device, action="status", port="n1").returncode == 2
    result = fence(device, action="off", port="n1")          # read first: no second power command
    assert (result.returncode, result.stdout) == (0, "Success: Already OFF\n")
    assert power_log(device) == ["n1 off"]
    assert fence(device, action="reboot", port="n1").stdout == "Success: Rebooted\n"
    assert fence(device, action="reboot", port="n1").returncode == 0
    assert power_log(device) == ["n1 off", "n1 on", "n1 off", "n1 on"]   # off, confirmed, then on: never a cycle
    assert fence(device, action="monitor").returncode == 0


def test_default_action_is_reboot(device):
    assert fence(device, port="n2").stdout == "Success: Rebooted\n"


def test_stdin_aliases_dashes_quotes_comments(device):
    text = f'# Pacemaker-style input\n\npower-timeout="5"\nplug="n3"\naction=off\nfolder={device}\n' \
           f'passwd={PASSWORD}\nnodename=n3\nnodeid=3\n'
    result = run([AGENT], input=text)
    assert result.returncode == 0, result.stderr
    assert power_log(device) == ["n3 off"]
    assert "Ignoring unknown option" not in result.stderr     # nodename and nodeid are Pacemaker's, not unknown


def test_nodename_is_the_target_when_no_port(device):
    assert fence(device, action="off", nodename="n4").returncode == 0
    assert power_log(device) == ["n4 off"]


def test_unknown_option_is_warned_and_ignored(device):
    result = fence(device, action="status", port="n1", colour="blue")
    assert result.returncode == 0 and "Parse error: Ignoring unknown option 'colour'" in result.stderr


def test_command_line_input(device, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    result = run([AGENT, "-o", "status", "-n", "n1", "--folder", device, "--password-file", pw])
    assert (result.returncode, result.stdout, result.stderr) == (0, "Status: ON\n", "")
    result = run([AGENT, "--action=status", "--plug=n1", f"--folder={device}", "-p", PASSWORD])
    assert result.returncode == 0
    assert "visible to every user of this host" in result.stderr and PASSWORD not in result.stderr
    result = run([AGENT, "--frobnicate"])
    assert result.returncode == 1 and "Failed: cannot read the options: Parse error: option --frobnicate" \
        in result.stderr


@pytest.mark.parametrize("text", ["garbage without equals\n", "\x00\x01\x02=\xff\n", "=\n==\n", "action\n"])
def test_garbage_stdin_fails_cleanly(text):
    result = run([AGENT], input=text)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("Failed: ") == 1


def test_binary_garbage_stdin_fails_cleanly():
    result = run([AGENT], input=os.urandom(256).decode("latin-1"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert all(line.isprintable() for line in result.stderr.splitlines())


def test_unrecognised_action(device):
    result = fence(device, action="explode", port="n1")
    assert result.returncode == 1
    assert "Failed: Unrecognised action 'explode'" in result.stderr


def test_bad_typed_option(device):
    result = fence(device, action="off", port="n1", power_timeout="forever")
    assert result.returncode == 1 and "Failed: option power_timeout='forever' is not a number of seconds from 0 to " \
        "600" in result.stderr


def test_deadline_ends_a_hung_device_with_timed_out(device):
    result = fence(device, action="off", port="n1", hang=1, deadline=1)
    assert result.returncode == 1
    assert "Failed: Timed out: off did not finish within the 1s deadline" in result.stderr
    assert result.elapsed < 3


def test_power_change_that_never_happens_times_out(device):
    result = fence(device, action="off", port="n1", stuck=1, power_timeout=1)
    assert result.returncode == 1
    assert "Failed: Timed out waiting to power OFF" in result.stderr
    assert 1 <= result.elapsed < 4


def test_validate_all(device):
    assert fence(device, action="validate-all", port="n1").returncode == 0
    result = fence(device, action="validate-all", port="n1", folder=device / "missing")
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_password_file_and_script_never_leak(device, tmp_path):
    secret = "Zq9-very-secret"
    script = tmp_path / "getpw"
    script.write_text(f"#!/bin/sh\necho {secret}\nexit 3\n")
    script.chmod(stat.S_IRWXU)
    log_file = tmp_path / "ha.log"
    result = run([AGENT], input=stdin(action="off", port="n1", folder=device, password_script=script, verbose=1),
                 env=agent_env(HA_LOGFILE=str(log_file)))
    assert result.returncode == 1 and "Failed: the password script '" in result.stderr
    assert "' exited with status 3" in result.stderr
    wrong = run([AGENT], input=stdin(action="status", port="n1", folder=device, password=secret, verbose=1,
                                     login_timeout=f"x{secret}"), env=agent_env(HA_LOGFILE=str(log_file)))
    assert wrong.returncode == 1
    for text in (result.stdout, result.stderr, wrong.stdout, wrong.stderr, log_file.read_text()):
        assert secret not in text
    missing = fence(device, action="status", port="n1", password="", password_file=tmp_path / "nope")
    assert missing.returncode == 1 and "Failed: cannot read the password file '" in missing.stderr
    assert "': no such file" in missing.stderr          # not blanked out as a password


def test_list_prints_plugs(device):
    (device / "a.power").write_text("on")
    (device / "b.power").write_text("off")
    assert fence(device, action="list").stdout == "a,a\nb,b\n"
