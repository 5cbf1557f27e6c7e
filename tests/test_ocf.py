"""The OCF framework, through a real agent process, checked by Pacemaker's and pcs's own validators."""
import json
import signal
import subprocess
import sys
import time

import pytest
from lxml import etree

from tests.helpers import REPO, TEST_AGENTS, agent_env, run

DUMMY = TEST_AGENTS / "ocf_dummy"
OCF_11_RNG = "/usr/share/pcs/data/ocf-1.1.rng"
RA_DTD_DIR = "/usr/share/resource-agents"


def env_for(tmp_path, **params):
    extra = {f"OCF_RESKEY_{k}": str(v) for k, v in params.items()}
    return agent_env(OCF_ROOT="/usr/lib/ocf", OCF_RESOURCE_INSTANCE="d1", HA_LOGFILE=str(tmp_path / "ha.log"),
                     **extra)


def test_metadata_is_valid_ocf_1_1_and_ocf_1_0_dtd():
    result = run([DUMMY, "meta-data"])
    assert result.returncode == 0
    doc = etree.fromstring(result.stdout.encode())
    etree.RelaxNG(etree.parse(OCF_11_RNG)).assertValid(doc)
    # ocf-tester's own check: xmllint --valid against ra-api-1.dtd, from the DTD's folder
    lint = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=result.stdout, text=True,
                          capture_output=True, cwd=RA_DTD_DIR)
    assert lint.returncode == 0, lint.stderr
    names = [p.get("name") for p in doc.iter("parameter")]
    assert names == ["state", "fake_delay", "mode"]
    assert doc.find("parameters/parameter[@name='state']").get("required") == "1"
    actions = {a.get("name"): a.attrib for a in doc.iter("action")}
    assert actions["monitor"]["interval"] == "10s" and actions["start"]["timeout"] == "20s"
    assert "Allowed values: fast, careful." in doc.find("parameters/parameter[@name='mode']/longdesc").text


def test_ocf_tester_passes(tmp_path):
    result = run(["ocf-tester", "-n", "d1", "-o", f"state={tmp_path}/state", DUMMY],
                 env=agent_env(OCF_ROOT="/usr/lib/ocf"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout


def test_lifecycle_and_exit_codes(tmp_path):
    env = env_for(tmp_path, state=tmp_path / "state")
    assert run([DUMMY, "monitor"], env=env).returncode == 7
    assert run([DUMMY, "start"], env=env).returncode == 0
    assert run([DUMMY, "monitor"], env=env).returncode == 0
    assert run([DUMMY, "stop"], env=env).returncode == 0
    assert run([DUMMY, "stop"], env=env).returncode == 0
    assert run([DUMMY, "validate-all"], env=env).returncode == 0
    assert "started" in (tmp_path / "ha.log").read_text()


def test_unknown_action_exits_3_with_reason(tmp_path):
    result = run([DUMMY, "frobnicate"], env=env_for(tmp_path, state=tmp_path / "s"))
    assert result.returncode == 3
    assert "ocf-exit-reason:action 'frobnicate' is not implemented by ocf_dummy" in result.stderr


def test_no_action_is_a_usage_error():
    result = run([DUMMY])
    assert result.returncode == 2 and "usage: ocf_dummy {" in result.stderr


@pytest.mark.parametrize("action, interval, expected", [
    ("start", "0", 6), ("monitor", "10000", 6), ("validate-all", "0", 6),
    ("monitor", "0", 7),          # a probe: nothing this configuration could have started
    ("stop", "0", 0),             # a failed stop would get the node fenced for a configuration typo
])
def test_missing_required_parameter(tmp_path, action, interval, expected):
    env = env_for(tmp_path)
    env["OCF_RESKEY_CRM_meta_interval"] = interval
    result = run([DUMMY, action], env=env)
    assert result.returncode == expected
    assert "required parameter state is not set" in (result.stderr + (tmp_path / "ha.log").read_text())
    if expected == 6:
        assert "ocf-exit-reason:required parameter state is not set" in result.stderr


def test_badly_typed_parameter_names_it(tmp_path):
    result = run([DUMMY, "start"], env=env_for(tmp_path, state=tmp_path / "s", fake_delay="soon"))
    assert result.returncode == 6
    assert "parameter fake_delay='soon' is not allowed: expected an integer" in result.stderr
    result = run([DUMMY, "start"], env=env_for(tmp_path, state=tmp_path / "s", mode="reckless"))
    assert result.returncode == 6 and "one of fast, careful" in result.stderr


def test_validator_runs_on_start_and_validate_all(tmp_path):
    env = env_for(tmp_path, state="/nonexistent/dir/state")
    for action in ("start", "validate-all"):
        result = run([DUMMY, action], env=env)
        assert result.returncode == 6 and "state folder /nonexistent/dir does not exist" in result.stderr


def test_crm_meta_timeout_is_a_hard_deadline(tmp_path):
    env = env_for(tmp_path, state=tmp_path / "s", fake_delay=30)
    env["OCF_RESKEY_CRM_meta_timeout"] = "2000"
    result = run([DUMMY, "start"], env=env)
    assert result.returncode == 1
    assert "ocf_dummy start timed out after 1.8s" in result.stderr
    assert result.elapsed < 2.0          # before Pacemaker's own kill at 2 s


def test_sigterm_ends_the_action_cleanly(tmp_path):
    env = env_for(tmp_path, state=tmp_path / "s", fake_delay=30)
    proc = subprocess.Popen([str(DUMMY), "start"], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1 and "interrupted by SIGTERM" in err and "Traceback" not in err


def _imported_modules(argv, env):
    env = dict(env, PYTHONPROFILEIMPORTTIME="1")
    result = run(argv, env=env)
    return result, {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}


@pytest.mark.parametrize("action", ["monitor", "meta-data"])
def test_startup_is_lean(tmp_path, action):
    """An agent's monitor runs every few seconds on every node: no OpenStack or IPMI client, no lxml in monitor."""
    result, modules = _imported_modules([DUMMY, action], env_for(tmp_path, state=tmp_path / "s"))
    assert result.returncode in (0, 7)
    heavy = {"openstack", "novaclient", "keystoneauth1", "pyghmi", "requests"}
    if action == "monitor":
        heavy.add("lxml")
    assert not {m.split(".")[0] for m in modules} & heavy


# What the shipped agents' everyday actions may load of crashup_lib: every monitor on every node pays for each module.
# The start paths (the CIB, nova, crashup.conf, host names) load the rest when they need it.
LEAN = {"crashup_lib", "crashup_lib.ocf", "crashup_lib.log", "crashup_lib.deadline", "crashup_lib.words",
        "crashup_lib.proc"}
LEAN_BY_AGENT = {"nova-compute": LEAN | {"crashup_lib.localservice", "crashup_lib.watchdog", "crashup_lib.files"},
                 "crashup": LEAN | {"crashup_lib.presence"}}
HEAVY = {"openstack", "novaclient", "keystoneauth1", "pyghmi", "requests", "lxml", "yaml", "sqlalchemy"}


@pytest.fixture
def idle_nova_compute(tmp_path):
    """nova-compute running (a flag file), its heartbeat verdict fresh in the cache: a monitor asks nova nothing."""
    flag = tmp_path / "running"
    flag.touch()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "nova-compute-compute1.json").write_text(json.dumps(
        {"host": "compute1", "checked_at": time.time(), "healthy": True, "reason": "compute1: heartbeat fresh"}))
    return agent_env(OCF_RESKEY_backend="command", OCF_RESKEY_start_command=f"touch {flag}",
                     OCF_RESKEY_stop_command=f"rm -f {flag}", OCF_RESKEY_status_command=f"test -e {flag}",
                     OCF_RESKEY_state_dir=str(tmp_path / "state"), OCF_RESKEY_config=str(tmp_path / "none.conf"),
                     OCF_RESKEY_heartbeat_cache="3600", OCF_RESKEY_CRM_meta_on_node="compute1",
                     OCF_RESKEY_CRM_meta_interval="10000")


@pytest.fixture
def idle_crashup(tmp_path):
    """A recovery daemon as the agent sees it: a live process that looks like `crashup_lib.cli daemon`, its pid
    file, a fresh heartbeat."""
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "crashup_lib.cli", "daemon"])
    (tmp_path / "daemon.pid").write_text(f"{daemon.pid}\n")
    (tmp_path / "heartbeat").touch()
    yield agent_env(OCF_RESKEY_state_dir=str(tmp_path), OCF_RESKEY_config=str(tmp_path / "none.conf"),
                    OCF_RESKEY_CRM_meta_interval="10000")
    daemon.kill()
    daemon.wait()


@pytest.mark.parametrize("agent, action", [("nova-compute", "monitor"), ("nova-compute", "stop"),
                                           ("crashup", "monitor")])
def test_shipped_agents_idle_actions_load_only_lean_modules(request, agent, action):
    env = request.getfixturevalue("idle_nova_compute" if agent == "nova-compute" else "idle_crashup")
    result, modules = _imported_modules([REPO / "agents" / agent, action], env)
    assert result.returncode == 0, result.stderr
    ours = {m for m in modules if m.split(".")[0] == "crashup_lib"}
    assert ours <= LEAN_BY_AGENT[agent], sorted(ours - LEAN_BY_AGENT[agent])
    assert not {m.split(".")[0] for m in modules} & HEAVY
