"""fence_crashup_ipmi against the lab's BMC simulator: every action, both input styles, every fault."""
import pytest
from lxml import etree

from tests.helpers import REPO, BmcSim, agent_env, run

AGENT = REPO / "fence" / "fence_crashup_ipmi"


@pytest.fixture
def bmc(tmp_path):
    sim = BmcSim(tmp_path / "bmc")
    yield sim
    sim.stop()


def fence(bmc, action, *, log=None, **extra):
    options = dict(action=action, ip="127.0.0.1", ipport=bmc.port, username="admin", password=bmc.password,
                   port="compute1", nodename="compute1")
    options.update(extra)
    env = agent_env(**({"HA_LOGFILE": str(log)} if log else {}))
    return run([AGENT], input="".join(f"{k}={v}\n" for k, v in options.items()), env=env)


def commands(bmc):
    return [entry["command"] for entry in bmc.power_log()]


def test_metadata_valid_and_ipmilan_compatible():
    result = run([AGENT], input="action=metadata\n")
    doc = etree.fromstring(result.stdout.encode())
    etree.RelaxNG(etree.parse("/usr/share/cluster/relaxng/metadata.rng")).assertValid(doc)
    names = {p.get("name") for p in doc.iter("parameter")}
    assert {"ip", "ipaddr", "ipport", "username", "login", "password", "passwd", "password_script",
            "cipher", "privlvl", "lanplus", "power_timeout", "power_wait", "delay", "port", "plug"} <= names


def test_status_off_on_with_stdin(bmc):
    result = fence(bmc, "status")
    assert (result.returncode, result.stdout) == (0, "Status: ON\n")
    result = fence(bmc, "off")
    assert (result.returncode, result.stdout) == (0, "Success: Powered OFF\n")
    assert commands(bmc) == ["off"]                                  # exactly one off
    assert fence(bmc, "status").returncode == 2
    assert fence(bmc, "off").stdout == "Success: Already OFF\n"
    assert commands(bmc) == ["off"]
    result = fence(bmc, "on")
    assert (result.returncode, result.stdout) == (0, "Success: Powered ON\n")
    assert fence(bmc, "monitor").returncode == 0
    assert fence(bmc, "validate-all").returncode == 0


def test_reboot_is_off_confirmed_then_on_never_a_reset(bmc):
    result = fence(bmc, "reboot")
    assert (result.returncode, result.stdout) == (0, "Success: Rebooted\n")
    assert commands(bmc) == ["off", "on"]
    log = bmc.power_log()
    assert log[0]["to"] == "off" and log[1]["to"] == "on"


def test_command_line_input_with_password_file(bmc, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(bmc.password + "\n")
    argv = [AGENT, "-a", "127.0.0.1", "-u", str(bmc.port), "-l", "admin", "--password-file", str(pw), "-P"]
    result = run(argv + ["-o", "off"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "Success: Powered OFF\n", "")
    assert run(argv + ["-o", "status"]).returncode == 2
    assert run(argv + ["--action=on", "--cipher=3"]).returncode == 0
    assert commands(bmc) == ["off", "on"]


def test_wrong_password_fails_fast_without_leaking(bmc, tmp_path):
    log = tmp_path / "ha.log"
    result = fence(bmc, "off", log=log, password="Not-The-Pa55word")
    assert result.returncode == 1 and result.elapsed < 2
    assert "Failed: BMC 127.0.0.1:%d refused the login: wrong password for user 'admin'" % bmc.port \
        in result.stderr
    assert "Not-The-Pa55word" not in result.stderr + result.stdout + log.read_text()
    assert commands(bmc) == []


def test_unknown_user_fails_fast(bmc):
    result = fence(bmc, "status", username="mallory")
    assert result.returncode == 1 and result.elapsed < 2
    assert "refused the login: unknown user 'mallory'" in result.stderr


def test_nothing_listening_times_out_within_login_timeout(bmc):
    bmc.stop()
    result = fence(bmc, "off", login_timeout=2)
    assert result.returncode == 1 and result.elapsed < 3
    assert "Failed: Timed out" in result.stderr and f"127.0.0.1:{bmc.port}" in result.stderr


def test_bmc_hung_after_login(bmc):
    bmc.fault("hang")
    result = fence(bmc, "off", login_timeout=1)
    assert result.returncode == 1 and result.elapsed < 4
    assert "Failed: Timed out: BMC" in result.stderr and "did not answer" in result.stderr


def test_timeouts_hold_under_pacemaker_too(bmc):
    """fence-agents' fencing.py drops every timeout when PCMK_service=pacemaker-fenced; ours stay."""
    bmc.fault("hang")
    options = "".join(f"{k}={v}\n" for k, v in dict(action="off", ip="127.0.0.1", ipport=bmc.port,
                                                      username="admin", password=bmc.password,
                                                      login_timeout=30, deadline=2).items())
    result = run([AGENT], input=options, env=agent_env(PCMK_service="pacemaker-fenced"))
    assert result.returncode == 1 and result.elapsed < 3.5
    assert "Failed: Timed out: off did not finish within the 2s deadline" in result.stderr


def test_bmc_rejecting_the_command(bmc):
    bmc.fault("reject")
    result = fence(bmc, "off")
    assert result.returncode == 1 and result.elapsed < 2
    assert "rejected power off" in result.stderr and "0xd5" in result.stderr


def test_power_change_that_never_happens(bmc):
    bmc.fault("stuck")
    result = fence(bmc, "off", power_timeout=1)
    assert result.returncode == 1 and 1 <= result.elapsed < 3
    assert "Failed: Timed out waiting to power OFF" in result.stderr
    assert fence(bmc, "status").returncode == 0          # never reported OFF: the BMC never said so


def test_missing_credentials_are_named():
    result = run([AGENT], input="action=off\nip=127.0.0.1\nusername=admin\n")
    assert result.returncode == 1
    assert "Failed: You have to enter password, password_file or password_script" in result.stderr
    result = run([AGENT], input="action=off\nusername=admin\npassword=x\n")
    assert result.returncode == 1 and "Failed: You have to set ip" in result.stderr


def test_bad_cipher_is_refused_with_a_clear_line(bmc):
    result = fence(bmc, "status", cipher="0")
    assert result.returncode == 1 and "cipher suite '0' is not supported" in result.stderr
