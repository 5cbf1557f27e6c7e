"""Every agent the project ships, through the validators Pacemaker's own tooling uses."""
import subprocess

import pytest
from lxml import etree

from tests.helpers import REPO, agent_env, run

OCF_AGENTS = sorted(p for p in (REPO / "agents").iterdir() if p.is_file())
FENCE_AGENTS = sorted((REPO / "fence").glob("fence_*"))


def test_there_are_agents_to_check():
    assert [p.name for p in OCF_AGENTS] == ["crashup", "nova-compute"]
    assert [p.name for p in FENCE_AGENTS] == ["fence_crashup_ipmi", "fence_crashup_isolation", "fence_crashup_nova"]


@pytest.mark.parametrize("agent", OCF_AGENTS, ids=lambda p: p.name)
def test_ocf_metadata_valid_for_pcs_and_ocf_tester(agent):
    result = run([agent, "meta-data"])
    assert result.returncode == 0
    etree.RelaxNG(etree.parse("/usr/share/pcs/data/ocf-1.1.rng")).assertValid(etree.fromstring(result.stdout.encode()))
    lint = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=result.stdout, text=True, capture_output=True,
                          cwd="/usr/share/resource-agents")
    assert lint.returncode == 0, lint.stderr


@pytest.mark.parametrize("agent", FENCE_AGENTS, ids=lambda p: p.name)
def test_fence_metadata_valid_against_fence_agents_schema(agent):
    result = run([agent], input="action=metadata\n")
    assert result.returncode == 0
    etree.RelaxNG(etree.parse("/usr/share/cluster/relaxng/metadata.rng")).assertValid(
        etree.fromstring(result.stdout.encode()))


def test_controller_agent_passes_ocf_tester(tmp_path):
    """ocf-tester runs the whole life cycle: the daemon really starts, beats, and stops (no cluster needed)."""
    result = run(["ocf-tester", "-n", "crashup", "-o", f"state_dir={tmp_path}/state",
                  "-o", f"config={tmp_path}/none.conf", REPO / "agents" / "crashup"],
                 env=agent_env(OCF_ROOT="/usr/lib/ocf"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_controller_agent_runs_the_sweep_under_ocf_tester(tmp_path):
    """daemon=sweep: the same life cycle for `crashup sweep --daemon`, beside a recovery daemon's files. Its database
    is missing: each round says so in one line and the daemon lives on (monitor stays 0)."""
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[sweep]\nnova_connection = sqlite:///{tmp_path}/missing.sqlite\n")
    result = run(["ocf-tester", "-n", "crashup-sweep", "-o", "daemon=sweep", "-o", f"state_dir={tmp_path}/state",
                  "-o", f"config={conf}", REPO / "agents" / "crashup"],
                 env=agent_env(OCF_ROOT="/usr/lib/ocf"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    no_db = tmp_path / "none.conf"
    no_db.write_text("[recovery]\nmode = auto\n")
    env = agent_env(OCF_RESKEY_daemon="sweep", OCF_RESKEY_config=str(no_db), OCF_RESKEY_state_dir=str(tmp_path))
    result = run([REPO / "agents" / "crashup", "validate-all"], env=env)
    assert result.returncode == 6 and "the sweep has no database to sweep" in result.stderr


@pytest.mark.parametrize("agent", FENCE_AGENTS, ids=lambda p: p.name)
@pytest.mark.parametrize("text", ["garbage\n", "action=frobnicate\n", "\x00\x01=\x02\n"])
def test_fence_agents_fail_cleanly_on_bad_input(agent, text):
    result = run([agent], input=text)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("Failed: ") == 1


def test_controller_agent_bad_parameter_is_named(tmp_path):
    env = agent_env(OCF_RESKEY_mode="sometimes", OCF_RESKEY_state_dir=str(tmp_path))
    result = run([REPO / "agents" / "crashup", "start"], env=env)
    assert result.returncode == 6 and "parameter mode='sometimes' is not allowed: expected one of '' (empty), auto, notify" in result.stderr


def test_controller_agent_bad_config_file_is_a_configuration_error(tmp_path):
    conf = tmp_path / "crashup.conf"
    conf.write_text("[recovery]\nmode = maybe\n")
    env = agent_env(OCF_RESKEY_config=str(conf), OCF_RESKEY_state_dir=str(tmp_path))
    result = run([REPO / "agents" / "crashup", "validate-all"], env=env)
    assert result.returncode == 6 and "config: mode = 'maybe'" in result.stderr
