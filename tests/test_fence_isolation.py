"""fence_crashup_isolation, the fallback fencing level: the pure decision, the wait against a fake clock, and the agent
itself against a crm_mon on PATH that answers what the test says (the real path through crashup_lib.pacemaker)."""
import contextlib
import importlib.machinery
import importlib.util
import io
import logging
import os
import threading
import time
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from crashup_lib import log, pacemaker
from crashup_lib.fencing import isolation
from crashup_lib.fencing.isolation import Link, Step
from crashup_lib.isolation import timing
from tests.helpers import REPO, agent_env, run

AGENT = REPO / "fence" / "fence_crashup_isolation"
#: timings that make the agent's wait 1 + 0.1 + 0.1 + 1 + 0.3 = 2.5 s
FAST = {"isolation_timeout": "1", "probe_interval": "0.1", "probe_timeout": "0.1", "action_timeout": "1",
        "margin": "0.3"}
FAST_WAIT = 2.5


# --- the decision ------------------------------------------------------------------------------------------------------

def test_link_reads_the_node_list():
    nodes = [pacemaker.Node("ctl1", "member", True, False), pacemaker.Node("compute1", "remote", True, False),
             pacemaker.Node("compute2", "remote", False, True)]
    guarded = ["compute1", "compute2"]
    assert isolation.link("compute1", nodes, guarded) is Link.CONNECTED
    assert isolation.link("compute2", nodes, guarded) is Link.LOST
    assert isolation.link("compute2", nodes, ["compute1"]) is Link.UNGUARDED     # nothing there took it out
    assert isolation.link("compute3", nodes, guarded) is Link.UNKNOWN_NODE


@given(st.sampled_from(list(Link)), st.floats(0, 1e4), st.floats(0, 1e4))
def test_fenced_only_on_a_lost_reading_once_the_wait_is_over(reading, waited, wait):
    step = isolation.decide(reading, waited, wait)
    assert (step is Step.FENCED) == (reading is Link.LOST and waited >= wait)
    assert (step is Step.REFUSE) == (reading in (Link.CONNECTED, Link.UNGUARDED, Link.UNKNOWN_NODE))


def test_the_wait_is_the_guards_deadline_plus_the_margin():
    s = timing.parse({"isolation_timeout": "20", "probe_interval": "2", "probe_timeout": "5", "action_timeout": "30",
                      "margin": "10"})
    assert isolation.wait_for(s) == timing.deadline(s) + 10 == 67
    armed = timing.parse({"watchdog": "/dev/watchdog", "watchdog_timeout": "120", "margin": "10"})
    assert isolation.wait_for(armed) == 5 + 120 + 10          # the watchdog's reset is the later certainty


class Clock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def fence_with(readings, wait=30.0):
    """isolation.fence against a fake clock; `readings(t)` is the Link seen t seconds in."""
    clock = Clock()
    seen = []

    def read(node):
        seen.append(clock.now - 100)
        return readings(clock.now - 100)
    waited = isolation.fence("compute1", wait, read=read, clock=clock.monotonic, sleep=clock.sleep)
    return waited, seen


def test_a_lost_node_is_fenced_after_the_whole_wait_and_not_before():
    waited, seen = fence_with(lambda t: Link.LOST)
    assert waited >= 30 and seen[-1] >= 30 and all(t < 30 for t in seen[:-1])
    assert waited < 30 + isolation.POLL


def test_a_connected_node_is_refused_at_once():
    with pytest.raises(isolation.Refused, match="sees it connected"):
        fence_with(lambda t: Link.CONNECTED)


def test_a_node_reconnecting_during_the_wait_is_refused():
    with pytest.raises(isolation.Refused, match="sees it connected"):
        fence_with(lambda t: Link.CONNECTED if t > 12 else Link.LOST)


def test_an_unknown_node_is_refused():
    with pytest.raises(isolation.Refused, match="not a node of this cluster"):
        fence_with(lambda t: Link.UNKNOWN_NODE)


def test_no_reading_at_the_end_waits_on_rather_than_succeed():
    waited, seen = fence_with(lambda t: Link.UNREADABLE if t < 50 else Link.LOST)
    assert waited >= 50


def test_device_params_read_back_by_the_guards_parser():
    s = timing.parse({"enabled": "yes", "isolation_timeout": "22.5", "watchdog": "/dev/watchdog0",
                      "watchdog_timeout": "40", "margin": "7", "policy": "pause"})
    params = isolation.device_params(s)
    assert set(params) == set(isolation.TIMING) | {"deadline"}
    back = timing.parse({k: v for k, v in params.items() if k != "deadline"})
    assert timing.deadline(back) == timing.deadline(s) and back.margin == s.margin
    assert int(params["deadline"]) >= isolation.wait_for(s) + isolation.SLACK
    assert "watchdog" not in isolation.device_params(timing.Settings())      # no device: the parameter left out


# --- the agent -----------------------------------------------------------------------------------------------------------

def crm_mon_xml(nodes: dict[str, bool]) -> str:
    rows = "".join(f'<node name="{n}" id="{n}" online="{str(up).lower()}" type="remote" unclean="{str(not up).lower()}"/>'
                   for n, up in nodes.items())
    return (f'<pacemaker-result api-version="2.25" request="crm_mon"><nodes>'
            f'<node name="ctl1" id="1" online="true" type="member" unclean="false"/>{rows}</nodes>'
            f'<status code="0" message="OK"/></pacemaker-result>')


def locate_xml(nodes: list[str]) -> str:
    """crm_resource --locate --output-as=xml of the guard's clone running on `nodes`."""
    rows = "".join(f'<node state="started">{n}</node>' for n in nodes)
    return (f'<pacemaker-result api-version="2.25" request="crm_resource"><nodes resource="{isolation.GUARD_RESOURCE}">'
            f'{rows}</nodes><status code="0" message="OK"/></pacemaker-result>')


@pytest.fixture
def cluster(tmp_path):
    """A crm_mon first on PATH printing state.xml (rewrite it to change what the cluster sees), and a crm_resource
    whose --locate prints guard.xml (where the isolation guard runs: both nodes)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state.xml"
    state.write_text(crm_mon_xml({"compute1": False, "compute2": True}))
    guard = tmp_path / "guard.xml"
    guard.write_text(locate_xml(["compute1", "compute2"]))
    for tool, shown in (("crm_mon", state), ("crm_resource", guard)):
        (bin_dir / tool).write_text(f"#!/bin/sh\ncat {shown}\n")
        (bin_dir / tool).chmod(0o755)
    env = agent_env()
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return state, env


def fence(env, action, node="compute1", **extra):
    options = {"action": action, "plug": node, **FAST, **extra}
    return run([AGENT], input="".join(f"{k}={v}\n" for k, v in options.items()), env=env)


def test_metadata_valid_and_every_timing_setting_declared():
    result = run([AGENT], input="action=metadata\n")
    doc = etree.fromstring(result.stdout.encode())
    etree.RelaxNG(etree.parse("/usr/share/cluster/relaxng/metadata.rng")).assertValid(doc)
    names = {p.get("name") for p in doc.iter("parameter")}
    assert set(isolation.TIMING) | {"deadline", "plug", "port", "delay"} <= names
    actions = {a.get("name") for a in doc.iter("action")}
    assert {"on", "off", "reboot", "status", "monitor", "list", "metadata", "validate-all"} <= actions


def test_off_of_a_lost_node_waits_the_whole_time(cluster):
    _, env = cluster
    result = fence(env, "off")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Success: compute1 lost for") and result.elapsed >= FAST_WAIT


def test_a_lost_node_whose_guard_was_not_running_fails_at_once(cluster):
    state, env = cluster
    (state.parent / "guard.xml").write_text(locate_xml(["compute2"]))
    result = fence(env, "off")
    assert result.returncode == 1 and result.elapsed < FAST_WAIT
    assert "no isolation guard (crashup-isolation) was running there" in result.stderr


def test_reboot_of_a_connected_node_fails_at_once(cluster):
    _, env = cluster
    result = fence(env, "reboot", "compute2")
    assert result.returncode == 1 and result.elapsed < FAST_WAIT
    assert "Failed: compute2 cannot be fenced by isolation: the cluster sees it connected" in result.stderr


def test_a_node_reconnecting_during_the_wait_fails(cluster):
    state, env = cluster
    timer = threading.Timer(1.0, lambda: state.write_text(crm_mon_xml({"compute1": True})))
    timer.start()
    try:
        result = fence(env, "off")
    finally:
        timer.cancel()
    assert result.returncode == 1 and "sees it connected" in result.stderr


def test_a_cluster_that_does_not_answer_is_no_reading(cluster, monkeypatch):
    state, env = cluster
    monkeypatch.setenv("PATH", env["PATH"])
    assert isolation.read_link("compute1") is Link.LOST               # the real path: crm_mon, parsed
    state.write_text("<not xml")
    assert isolation.read_link("compute1") is Link.UNREADABLE         # then fence() waits on (see above)


def test_status_on_list_and_monitor(cluster):
    _, env = cluster
    assert fence(env, "status", "compute2").stdout == "Status: ON\n"
    unknown = fence(env, "status", "compute1")
    assert unknown.returncode == 1 and "whether its guard has acted is unknown" in unknown.stderr
    assert fence(env, "on").returncode == 0
    assert fence(env, "monitor").returncode == 0
    assert fence(env, "list").stdout.splitlines() == ["compute1,compute1", "compute2,compute2"]


def test_a_deadline_shorter_than_the_wait_is_refused_with_what_to_set():
    result = fence(agent_env(), "validate-all", deadline="50", isolation_timeout="60")
    assert result.returncode == 1
    assert "Failed: deadline 50s leaves no room for the wait of 61.5s (the guard's deadline plus margin): set deadline to at least 77s" in result.stderr


# --- option parsing: any values, one line or a valid wait ----------------------------------------------------------

def load_agent():
    loader = importlib.machinery.SourceFileLoader("fence_crashup_isolation", str(AGENT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module.IsolationFenceAgent


AGENT_CLASS = load_agent()


@pytest.fixture(scope="module")
def logfile(tmp_path_factory):
    """One file for the module: the agent's log handler, once made, stays on the file it was made for."""
    return tmp_path_factory.mktemp("log") / "agent.log"

INTERESTING = ["", "0", "0.1", "1", "2.5", "30", "3600", "3601", "-1", "nan", "inf", "1e3", "1_0", " 5 ", "none",
               "/dev/watchdog", "/dev/../x", "x" * 300, "\u0665", "10.1234"]
value = st.one_of(st.sampled_from(INTERESTING), st.text(max_size=12))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([*isolation.TIMING, "deadline"]), value, max_size=5))
def test_validate_all_accepts_what_the_guards_parser_accepts_or_says_one_line(logfile, options):
    logfile.write_text("")
    out, err = io.StringIO(), io.StringIO()
    data = "".join(f"{k}={v}\n" for k, v in {"action": "validate-all", "plug": "compute1", **options}.items())
    saved, secrets = logging.getLogger().handlers[:], set(log._secrets)
    try:
        with mock.patch.dict(os.environ, {"HA_LOGFILE": str(logfile), "HA_DEBUGLOG": ""}), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = AGENT_CLASS().run([], stdin=io.BytesIO(data.encode()))
    finally:
        logging.getLogger("crashup").handlers.clear()
        logging.getLogger().handlers[:] = saved
        log._secrets.clear()
        log._secrets.update(secrets)
    shown = err.getvalue() + logfile.read_text()         # the Failed line goes to stderr, or to the log handler's
    failed = {line[line.index("Failed: "):] for line in shown.splitlines() if "Failed: " in line}
    assert "Traceback" not in shown
    assert rc in (0, 1) and (rc == 0) == (not failed) and len(failed) <= 1
    if rc == 0:                    # accepted: the guard's parser reads the same values, and the deadline fits
        given_timing = {k: v.strip() for k, v in options.items() if k in isolation.TIMING}
        wait = isolation.wait_for(timing.parse(given_timing))
        assert float(options.get("deadline", "120")) >= isolation.action_deadline(wait)


def test_the_agent_never_answers_before_its_wait_even_when_the_node_is_lost_at_once(cluster):
    _, env = cluster
    start = time.monotonic()
    result = fence(env, "reboot", margin="1")
    assert result.returncode == 0 and time.monotonic() - start >= FAST_WAIT + 0.7
