"""Host recovery in the real lab: a compute node fails, it is fenced through its two-device level (IPMI, then
nova), and crashup's daemon brings its instances back elsewhere, exactly once; or hands them over (notify mode)."""
import hashlib
import hmac
import http.server
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from crashup_lib import events
from tests.e2e import scenario
from tests.e2e.scenario import (_epoch, assert_recovered_exactly_once, boot, daemon_stopped, delete_servers,
                                evacuations, journal, wait_request)
from tests.lab import pacemaker

pytestmark = pytest.mark.lab


# --- helpers -------------------------------------------------------------------------------------------------------


def validate(evs):
    import jsonschema
    schema = events.load_schema()
    for e in evs:
        jsonschema.validate(e, schema)


def rejoin_and_clean(lab, node):
    """After a test: the node rejoins (crashup's nova-compute agent brings it back) and its servers are deleted."""
    wait_request(lab, node, ("done", "released"))
    lab.wait_rejoined(node)
    pacemaker.wait_for(lab.all_online(lab.nodes()), 90, "every node online")
    delete_servers(lab)


@pytest.fixture(autouse=True)
def tidy(lab):
    """Whatever a test did or failed to do: faults cleared, daemon enabled, every recovery closed, every node back,
    no servers. One failing test must not leave the next one a different lab."""
    yield
    scenario.tidy_up(lab)


# --- tests ---------------------------------------------------------------------------------------------------------

def test_crashed_node_stuck_instance_repaired_and_all_evacuated_exactly_once(lab):
    node = lab.node("compute1")
    ids = boot(lab, node.nova_host, 4, "crash")
    # a reboot that never finished (written into nova's cell DB: a real stuck one needs nova-compute dead, and
    # Pacemaker's agent would restart it), then the host crashes for good
    lab.nova().set_instance_db(ids[0], task_state="rebooting")
    conn = lab.connection()
    assert conn.compute.get_server(ids[0]).task_state == "rebooting"
    since = time.time()
    lab.fail(node, "crash")
    req = wait_request(lab, node, ("done",), since)
    assert req.note.startswith("4 evacuated, 0 failed")
    assert_recovered_exactly_once(lab, node, ids)
    fence = pacemaker.status().fenced(node.name, since)
    assert fence, "no successful fencing recorded"
    evs = journal(lab, since)
    kinds = [e["type"] for e in evs]
    assert kinds.count("crashup.instance.evacuated") == 4 and kinds.count("crashup.host.recovered") == 1
    repaired = [e for e in evs if e["type"] == "crashup.instance.repaired"]
    assert [(e["payload"]["id"], e["payload"]["from_task_state"], e["payload"]["action"]) for e in repaired] == \
        [(ids[0], "rebooting", "reset-active")]
    assert kinds.index("crashup.instance.repaired") < kinds.index("crashup.instance.evacuated")
    validate(evs)
    # never before the power-off: every evacuation came after the BMC said off
    off_at = min(e["time"] for e in lab.power_log(node) if e["command"] == "off" and e["time"] >= since - 1)
    assert all(_epoch(e["time"]) > off_at for e in evs if e["type"] == "crashup.instance.evacuated")
    rejoin_and_clean(lab, node)


def test_silently_cut_node_is_fenced_and_recovered(lab):
    node = lab.node("compute2")
    ids = boot(lab, node.nova_host, 3, "cut")
    since = time.time()
    lab.fail(node, "net")
    req = wait_request(lab, node, ("done",), since)
    assert req.note.startswith("3 evacuated")
    assert_recovered_exactly_once(lab, node, ids)
    rejoin_and_clean(lab, node)


class _Receiver(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def notify_mode(lab, tmp_path):
    """Switch crashup to notify mode with all three sinks: journal, signed webhook, command hook."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = tmp_path / "webhook.key"
    secret.write_text("hook-signing-key\n")
    hook_out = tmp_path / "hook.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {hook_out}\necho >> {hook_out}\n")
    hook.chmod(0o755)
    conf = lab.CRASHUP_CONF.read_text()
    lab.CRASHUP_CONF.write_text(conf.replace("mode = auto", "mode = notify") +
                                f"webhook_url = http://127.0.0.1:{server.server_port}/crashup\n"
                                f"webhook_secret_file = {secret}\nhook_command = {hook}\n")
    subprocess.run(["crm_resource", "--restart", "--resource", "crashup", "--timeout", "60s"], check=True,
                   capture_output=True, timeout=90)
    _Receiver.received = []
    yield {"received": _Receiver.received, "hook_out": hook_out, "key": b"hook-signing-key"}
    lab.CRASHUP_CONF.write_text(conf)
    subprocess.run(["crm_resource", "--restart", "--resource", "crashup", "--timeout", "60s"], check=True,
                   capture_output=True, timeout=90)
    server.shutdown()


def test_notify_mode_hands_the_host_over_and_evacuates_nothing(lab, notify_mode):
    node = lab.node("compute3")
    ids = boot(lab, node.nova_host, 2, "notify")
    since = time.time()
    lab.fail(node, "crash")
    wait_request(lab, node, ("recovering",), since)
    limit = time.monotonic() + 60
    while lab.recovery_request(node).note != "notified: waiting for release" and time.monotonic() < limit:
        time.sleep(0.5)
    failed = [e for e in journal(lab, since) if e["type"] == "crashup.host.failed"]
    assert len(failed) == 1 and failed[0]["payload"]["mode"] == "notify"
    assert sorted(i["id"] for i in failed[0]["payload"]["instances"]) == sorted(ids)
    validate(failed)
    # the same event at the webhook, signed, and at the command hook
    limit = time.monotonic() + 20
    while not notify_mode["received"] and time.monotonic() < limit:
        time.sleep(0.2)
    headers, body = notify_mode["received"][0]
    assert json.loads(body)["id"] == failed[0]["id"] and headers["X-Crashup-Event"] == "crashup.host.failed"
    expected = "sha256=" + hmac.new(notify_mode["key"], body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Crashup-Signature"], expected)
    assert json.loads(notify_mode["hook_out"].read_text().splitlines()[0])["id"] == failed[0]["id"]
    # nothing is evacuated, and the host stays down until released: back online, but Pacemaker keeps its
    # nova-compute stopped (the clone's rule on the request's state)
    pacemaker.wait_for(lambda st: st.nodes[node.name].online, 90, f"{node.name} back online")
    time.sleep(3)
    assert all(not m for m in evacuations(lab, ids).values())
    assert lab.recovery_request(node).open and lab.nova().get_state()["computes"][node.nova_host] is False
    assert not lab.compute_running(pacemaker.status(), node)
    crashup = [str(lab.REPO / ".venv" / "bin" / "crashup"), "--config", str(lab.CRASHUP_CONF)]
    plan = subprocess.run(crashup + ["plan", node.nova_host, "--json"], capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert sorted(step["server_id"] for step in json.loads(plan.stdout)["steps"]) == sorted(ids)
    listed = subprocess.run(crashup + ["events"], capture_output=True, text=True, timeout=60)
    assert "crashup.host.failed" in listed.stdout and node.nova_host in listed.stdout
    status = subprocess.run(crashup + ["status"], capture_output=True, text=True, timeout=60)
    assert any(line.startswith(node.name) and "recovering" in line and "notify" in line
               for line in status.stdout.splitlines()), status.stdout
    result = subprocess.run(crashup + ["release", node.name], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "recovery released" in result.stdout
    rejoin_and_clean(lab, node)


def test_daemon_killed_mid_recovery_the_next_one_finishes_without_duplicates(lab):
    node = lab.node("compute1")
    ids = boot(lab, node.nova_host, 30, "many")
    since = time.time()
    lab.fail(node, "crash")
    limit = time.monotonic() + 120
    while time.monotonic() < limit:
        done = [e for e in journal(lab, since) if e["type"] == "crashup.instance.evacuated"]
        if len(done) >= 3:
            break
        time.sleep(0.2)
    pid = int((lab.DAEMON_DIR / "daemon.pid").read_text())
    os.kill(pid, signal.SIGKILL)                         # Pacemaker's monitor notices, and starts a new one
    req = wait_request(lab, node, ("done",), since, timeout=300)
    assert req.note.startswith("30 evacuated, 0 failed")
    assert int((lab.DAEMON_DIR / "daemon.pid").read_text()) != pid
    assert_recovered_exactly_once(lab, node, ids)
    rejoin_and_clean(lab, node)


def test_nova_failing_during_evacuation_is_retried_then_reported(lab):
    node = lab.node("compute2")
    ids = boot(lab, node.nova_host, 2, "flaky")
    box = lab.nova()
    # the first two evacuate calls answer 500: retried (without a target) and they land
    box.add_fault(r"POST .*/servers/.*/action", status=500, count=2, body_match="evacuate")
    since = time.time()
    lab.fail(node, "crash")
    req = wait_request(lab, node, ("done",), since)
    assert req.note.startswith("2 evacuated, 0 failed")
    assert_recovered_exactly_once(lab, node, ids)
    rejoin_and_clean(lab, node)
    # an evacuate that always fails: bounded attempts, then reported, nothing lost
    ids = boot(lab, node.nova_host, 1, "doomed")
    box.add_fault(r"POST .*/servers/.*/action", status=500, count=-1, body_match="evacuate")
    since = time.time()
    try:
        lab.fail(node, "crash")
        req = wait_request(lab, node, ("done",), since)
    finally:
        box.clear_faults()
    assert req.note.startswith("0 evacuated, 1 failed")
    failed = [e for e in journal(lab, since) if e["type"] == "crashup.instance.evacuation_failed"]
    assert [e["payload"]["id"] for e in failed] == ids and failed[0]["payload"]["attempts"] == 3
    rejoin_and_clean(lab, node)


def test_open_request_survives_a_full_cluster_restart_and_gets_finished(lab):
    node = lab.node("compute3")
    with daemon_stopped():
        ids = boot(lab, node.nova_host, 2, "restart")
        since = time.time()
        lab.fail(node, "crash")
        before = wait_request(lab, node, ("pending",), since)
        pacemaker.restart()                             # the whole cluster stops and starts again
        pacemaker.wait_for(lambda st: st.dc == "ctl1", 60, "a DC after the restart")
        after = lab.recovery_request(node)
        assert after is not None and after.open and after.fenced_at >= before.fenced_at
        assert all(not m for m in evacuations(lab, ids).values())
    req = wait_request(lab, node, ("done",), since)
    assert req.note.startswith("2 evacuated, 0 failed")
    assert_recovered_exactly_once(lab, node, ids)
    rejoin_and_clean(lab, node)


def fence_nova(lab, node, action):
    text = f"action={action}\nport={node.name}\nnodename={node.name}\nconfig_file={lab.CRASHUP_CONF}\n"
    return subprocess.run(["/usr/sbin/fence_crashup_nova"], input=text, capture_output=True, text=True, timeout=60)


def test_fence_nova_status_and_unfencing_follow_the_recovery(lab):
    node = lab.node("compute2")
    # the nova-compute agent would bring the host back as soon as its recovery is done: kept off it here, so that
    # fencing's own "on" meets the state nova refuses
    ban = ["crm_resource", "--resource", f"{lab.NOVA_COMPUTE}-clone", "--node", node.name]
    try:
        with daemon_stopped():
            ids = boot(lab, node.nova_host, 1, "unfence")
            subprocess.run(ban + ["--ban"], check=True, capture_output=True, timeout=60)
            since = time.time()
            lab.fail(node, "crash")
            wait_request(lab, node, ("pending",), since)
            assert fence_nova(lab, node, "status").returncode == 2            # OFF: forced down
            on = fence_nova(lab, node, "on")
            assert on.returncode == 0 and "stays forced down" in on.stdout     # recovery open: never unfenced
            assert next(s for s in lab.connection().compute.services()
                        if s.host == node.nova_host and s.binary == "nova-compute").is_forced_down
        wait_request(lab, node, ("done",), since)
        assert_recovered_exactly_once(lab, node, ids)
        on = fence_nova(lab, node, "on")               # done, but nova refuses until the host has cleaned up
        assert on.returncode == 0 and "kept until its nova-compute has cleaned up" in on.stdout
    finally:
        subprocess.run(ban + ["--clear"], check=True, capture_output=True, timeout=60)
    rejoin_and_clean(lab, node)
    assert fence_nova(lab, node, "status").returncode == 0                # ON again


def test_nova_timing_out_during_evacuation_never_evacuates_twice(lab):
    """An evacuate call that times out may still be carried out by nova: the retry must not make it twice."""
    node = lab.node("compute3")
    ids = boot(lab, node.nova_host, 1, "slow")
    box = lab.nova()
    box.add_fault(r"POST .*/servers/.*/action", status=None, delay=23, count=1, body_match="evacuate")
    since = time.time()
    try:
        lab.fail(node, "crash")
        req = wait_request(lab, node, ("done",), since, timeout=240)
    finally:
        box.clear_faults()
    assert req.note.startswith("1 evacuated, 0 failed")
    time.sleep(25)                                     # the delayed original call reaches nova too, late
    assert_recovered_exactly_once(lab, node, ids)
    rejoin_and_clean(lab, node)
