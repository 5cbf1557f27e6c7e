"""agents/nova-compute as Pacemaker runs it (a fresh process, parameters in the environment), with its two outside
boundaries faked: the CIB (a `cibadmin` on PATH answering a recovery request) and the local service (commands on a
flag file); and in this process with nova faked too, for the start's wiring and exit codes (every path of the
rejoin itself: tests/test_rejoin.py). The real path, with Pacemaker, nova and fencing, is
tests/e2e/test_compute_agent.py."""
import contextlib
import importlib.machinery
import importlib.util
import io
import json
import time

import pytest

from crashup_lib.nova import NovaUnavailable, Service
from tests.helpers import REPO, agent_env, run

AGENT = REPO / "agents" / "nova-compute"


@pytest.fixture
def node(tmp_path):
    """A compute node: a flag file for "nova-compute runs", a cibadmin that answers this node's request."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cib = tmp_path / "nodes.xml"
    cib.write_text("<nodes/>")
    (bin_dir / "cibadmin").write_text(f"#!/bin/sh\ncat {cib}\n")
    (bin_dir / "cibadmin").chmod(0o755)
    flag = tmp_path / "running"

    class Node:
        path = tmp_path
        running = flag

        @staticmethod
        def request(state):
            value = json.dumps({"state": state, "mode": "auto", "fenced_at": time.time(), "note": "2 of 9 evacuated"})
            cib.write_text(f"<nodes><node id='compute1' uname='compute1'><instance_attributes id='a'>"
                           f"<nvpair id='n' name='crashup-recovery' value='{value.replace(chr(39), '&apos;')}'/>"
                           f"</instance_attributes></node></nodes>")

        @staticmethod
        def env(**extra):
            params = dict(backend="command", start_command=f"touch {flag}", stop_command=f"rm -f {flag}",
                          status_command=f"test -e {flag}", state_dir=str(tmp_path / "state"),
                          config=str(tmp_path / "none.conf"))
            params.update({k: v for k, v in extra.items() if not k.startswith("OCF_")})
            env = agent_env(**{f"OCF_RESKEY_{k}": v for k, v in params.items()},
                            OCF_RESKEY_CRM_meta_on_node="compute1",
                            **{k: v for k, v in extra.items() if k.startswith("OCF_")})
            env["PATH"] = f"{bin_dir}:{env['PATH']}"
            return env
    return Node


def test_start_waits_for_an_open_recovery_then_fails_cleanly_within_its_timeout(node):
    node.request("recovering")
    result = run([AGENT, "start"], env=node.env(OCF_RESKEY_CRM_meta_timeout="9000"))
    assert result.returncode == 1, result.stderr
    assert "ocf-exit-reason:recovery of compute1 is still recovering (auto mode): 2 of 9 evacuated; nova-compute " \
           "stays down" in result.stderr
    assert result.elapsed < 9 and "Traceback" not in result.stderr
    assert not node.running.exists()                     # never started while the guests are being evacuated


def test_start_refuses_when_the_cib_cannot_be_read(node):
    (node.path / "bin" / "cibadmin").write_text("#!/bin/sh\necho 'Could not connect to the CIB' >&2\nexit 102\n")
    result = run([AGENT, "start"], env=node.env(OCF_RESKEY_CRM_meta_timeout="7000"))
    assert result.returncode == 1
    assert "cannot read the recovery request of compute1 from the CIB" in result.stderr
    assert not node.running.exists()


def test_monitor_reports_process_state_and_a_probe_never_asks_nova(node):
    assert run([AGENT, "monitor"], env=node.env()).returncode == 7
    node.running.touch()
    # a probe: no config, no clouds.yaml, no nova: only what runs
    probe = run([AGENT, "monitor"], env=node.env(OCF_RESKEY_CRM_meta_interval="0"))
    assert probe.returncode == 0, probe.stderr


def test_monitor_acts_on_a_cached_stuck_verdict_and_reuses_a_healthy_one(node):
    node.running.touch()
    state = node.path / "state"
    state.mkdir()
    cache = state / "nova-compute-compute1.json"
    env = node.env(OCF_RESKEY_CRM_meta_interval="10000", OCF_RESKEY_heartbeat_cache="60")
    cache.write_text(json.dumps({"host": "compute1", "checked_at": time.time(), "healthy": False,
                                 "reason": "nova-compute of compute1 is running but nova sees no heartbeat: stuck"}))
    stuck = run([AGENT, "monitor"], env=env)
    assert stuck.returncode == 1 and "ocf-exit-reason:nova-compute of compute1 is running but nova sees no " \
                                     "heartbeat: stuck" in stuck.stderr
    cache.write_text(json.dumps({"host": "compute1", "checked_at": time.time(), "healthy": True, "reason": "ok"}))
    assert run([AGENT, "monitor"], env=env).returncode == 0
    # the stop forgets the verdict: the next process is judged afresh
    assert run([AGENT, "stop"], env=env).returncode == 0 and not node.running.exists() and not cache.exists()
    assert run([AGENT, "stop"], env=env).returncode == 0                 # idempotent


def test_an_unreachable_nova_never_fails_the_monitor(node, tmp_path):
    """nova down says nothing about this host: restarting every compute for a control-plane outage is wrong."""
    node.running.touch()
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  c:\n    auth_type: token_endpoint\n    auth: {endpoint: 'http://127.0.0.1:9/v2.1', "
                      "token: 'admin:admin'}\n")
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[openstack]\ncloud = c\nclouds_file = {clouds}\napi_timeout = 2\n")
    env = node.env(config=str(conf), OCF_RESKEY_CRM_meta_interval="10000", OCF_RESKEY_CRM_meta_timeout="10000")
    result = run([AGENT, "monitor"], env=env)
    assert result.returncode == 0, result.stderr
    assert "heartbeat of compute1 not checked: nova" in result.stderr and "Traceback" not in result.stderr
    cache = json.loads((tmp_path / "state" / "nova-compute-compute1.json").read_text())
    assert cache["healthy"] and cache["reason"].startswith("unchecked")        # not asked again for a while


@pytest.mark.parametrize("params, message", [
    ({"start_command": ""}, "backend command needs start_command"),
    ({"status_command": "ctl {hots}"}, "placeholder {hots} is not one of {host}, {node}"),
    ({"backend": "upstart"}, "parameter backend='upstart' is not allowed: expected one of systemd, command"),
    ({"heartbeat_cache": "soon"}, "heartbeat_cache"),
])
def test_bad_parameters_are_named(node, params, message):
    result = run([AGENT, "validate-all"], env=node.env(**params))
    assert result.returncode in (2, 6) and message in result.stderr and "Traceback" not in result.stderr


def test_a_broken_configuration_never_makes_the_monitor_a_hard_error(node, tmp_path):
    """rc 6 from a monitor stops the resource on every node: a typo in crashup.conf must not take nova down."""
    node.running.touch()
    conf = tmp_path / "crashup.conf"
    conf.write_text("[recovery]\nmode = sometimes\n")
    env = node.env(config=str(conf), OCF_RESKEY_CRM_meta_interval="10000")
    result = run([AGENT, "monitor"], env=env)
    assert result.returncode == 0 and "heartbeat not checked: " in result.stderr and "mode" in result.stderr
    stop = run([AGENT, "stop"], env=env)                 # a failed stop would get the node fenced
    assert stop.returncode == 0 and not node.running.exists()


# --- in this process, nova faked: the start's wiring and its exit codes ----------------------------------------------

class Nova:
    """nova as the start sees it: this node's nova-compute is up (with a heartbeat newer than before its start)
    while the flag file exists."""

    def __init__(self, flag, hosts=("compute1", "compute2"), forced_down=False, down=False):
        self.flag, self.hosts, self.forced_down, self.down = flag, hosts, forced_down, down

    def _record(self, host):
        running = self.flag.exists() and host == "compute1"
        return Service(id=host, host=host, binary="nova-compute", state="up" if running or host != "compute1"
                       else "down", status="enabled", forced_down=self.forced_down and host == "compute1",
                       disabled_reason=None, updated_at="T1" if running else "T0")

    def services(self):
        if self.down:
            raise NovaUnavailable("services", None, "cannot connect to http://nova:8774: refused")
        return [self._record(h) for h in self.hosts]

    def service(self, host):
        return self._record(host)


@pytest.fixture
def in_process(node, monkeypatch):
    """(start(nova, **params) -> (rc, stderr), the node): the agent's start run in this process with `nova` for
    the compute API."""
    loader = importlib.machinery.SourceFileLoader("agent_nova_compute_in_process", str(AGENT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    monkeypatch.setenv("PATH", node.env()["PATH"])                  # the fake cibadmin

    def start(nova, **params):
        monkeypatch.setattr(module, "_nova", lambda ctx, cfg: nova)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = module.agent.run(["start"], env=node.env(**{"OCF_RESKEY_CRM_meta_timeout": "8000", **params}))
        return rc, err.getvalue()
    return start


def test_start_never_fenced_starts_nova_compute_and_caches_the_first_verdict(node, in_process):
    rc, err = in_process(Nova(node.running))
    assert rc == 0, err
    assert node.running.exists()
    cache = json.loads((node.path / "state" / "nova-compute-compute1.json").read_text())
    assert cache["host"] == "compute1" and cache["healthy"] is True and cache["reason"] == "heartbeat fresh"


def test_start_refuses_a_forced_down_crashup_did_not_set_and_starts_nothing(node, in_process):
    rc, err = in_process(Nova(node.running, forced_down=True))
    assert rc == 1 and "ocf-exit-reason:the nova-compute service of compute1 is forced down, but crashup never " \
                       "fenced this node" in err
    assert not node.running.exists()


def test_start_names_an_ambiguous_host_as_a_configuration_error(node, in_process):
    rc, err = in_process(Nova(node.running, hosts=("compute1.a.org", "compute1.b.org")))
    assert rc == 6 and "ocf-exit-reason:" in err and "compute1.a.org" in err and not node.running.exists()


def test_start_with_nova_unreachable_ends_before_its_timeout_naming_nova(node, in_process):
    started = time.monotonic()
    rc, err = in_process(Nova(node.running, down=True), OCF_RESKEY_CRM_meta_timeout="4000")
    assert rc == 1 and "ocf-exit-reason:nova-compute of compute1 not up before the start timeout: nova services: " \
                       "cannot connect" in err
    assert time.monotonic() - started < 4 and "Traceback" not in err
