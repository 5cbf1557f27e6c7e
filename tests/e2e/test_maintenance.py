"""The operator verbs in the real lab (issue 18), through the `crashup` command as an operator types it: drain and
undrain of a host with running, stopped and volume-backed servers (interrupted and resumed), evacuate of a host that
is still up (fenced first), restore from a backup image (in place, and off a dead host), and bad input refused with
one line, exit 2, nothing changed."""
import os
import signal
import subprocess
import time

import pytest

from tests.e2e import scenario
from crashup_lib.recovery.evacuate import _ts
from tests.e2e.scenario import assert_recovered_exactly_once, evacuations, journal, wait_request

pytestmark = pytest.mark.lab
BACKUP_IMAGE = "a2459075-d96c-40d5-893e-577ff92e721c"     # another image of nova's in-process glance: "the backup"
NETWORK = "3cb9bc59-5699-4588-a4b1-b87f96708bc6"          # nova's in-process neutron's network_1


def crashup(lab, *args, timeout=240):
    argv = [str(lab.REPO / ".venv" / "bin" / "crashup"), "--config", str(lab.CRASHUP_CONF), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def refused(done, says):
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("crashup: ") and says in done.stderr, done.stderr


@pytest.fixture
def volumes(lab):
    from tests.lab.volumes import Volumes
    v = Volumes.lab()
    yield v
    scenario.tidy_up(lab)
    for vol in v.list():
        v.delete(vol["id"])


def service(lab, host):
    return next(s for s in lab.connection().compute.services() if s.host == host and s.binary == "nova-compute")


def server(v, sid):
    s = v.server(sid)
    return s["OS-EXT-SRV-ATTR:host"], s["status"], s.get("metadata", {})


def snapshot(v, ids):
    return {sid: server(v, sid) for sid in ids}


def addresses(v, sid):
    """The server's ports and their fixed IPs (os-interface: the lab's in-process neutron does not fill the server
    view's `addresses`)."""
    found = v.nova("GET", f"/servers/{sid}/os-interface")["interfaceAttachments"]
    return sorted((i["port_id"], tuple(ip["ip_address"] for ip in i["fixed_ips"])) for i in found)


def validate(evs):
    import jsonschema
    from crashup_lib import events
    schema = events.load_schema()
    for e in evs:
        jsonschema.validate(e, schema)


def test_drain_interrupted_resumed_then_undrain(lab, volumes):
    v, node = volumes, lab.node("compute1")
    host = node.nova_host
    moving = v.boot("drain-live", host=host)["id"]
    pinned = v.boot("drain-pinned", host=host)["id"]          # cannot live-migrate (say, a PCI device): stop it
    v.nova("PUT", f"/servers/{pinned}/metadata/crashup:drain", {"meta": {"crashup:drain": "stop"}})
    stopped = v.boot("drain-stopped", host=host)["id"]
    v.nova("POST", f"/servers/{stopped}/action", {"os-stop": None})
    v.wait_server(stopped, "SHUTOFF")
    root = v.create(bootable=True, name="drain-root")
    bfv = v.boot_from_volume("drain-bfv", root["id"], host=host)["id"]
    ids = [moving, pinned, stopped, bfv]
    since = time.time()

    plan = crashup(lab, "drain", host, "--dry-run")
    assert plan.returncode == 0 and "live-migrate" in plan.stdout and "stop" in plan.stdout, plan
    assert service(lab, host).status == "enabled" and all(server(v, s)[0] == host for s in ids)

    # interrupted: killed as soon as it has disabled the host and started moving the first server
    argv = [str(lab.REPO / ".venv" / "bin" / "crashup"), "--config", str(lab.CRASHUP_CONF), "drain", host]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    for line in first.stdout:
        if "migrating" in line:
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait(30)
    assert first.returncode == -signal.SIGKILL
    assert service(lab, host).disabled_reason == "crashup drain"

    resumed = crashup(lab, "drain", host)
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert "resuming" in resumed.stdout
    after = snapshot(v, ids)
    assert after[moving][0] != host and after[moving][1] == "ACTIVE"
    assert after[bfv][0] != host and after[bfv][1] == "ACTIVE"
    assert after[stopped][0] != host and after[stopped][1] == "SHUTOFF"           # cold-migrated, still stopped
    assert after[pinned][:2] == (host, "SHUTOFF") and after[pinned][2].get("crashup:drain_stopped") == host
    assert [a["host_name"] for a in v.attachments(root["id"])] == [after[bfv][0]]   # its volume followed it
    guests = lab.nova().guests()
    # on its new host's hypervisor, and on no other: never a guest on two hypervisors
    for sid in (moving, bfv, stopped):
        assert [h for h, held in guests.items() if sid in held] == [after[sid][0]], (sid, guests)

    undrained = crashup(lab, "undrain", host)
    assert undrained.returncode == 0, (undrained.stdout, undrained.stderr)
    assert service(lab, host).status == "enabled"
    final = snapshot(v, ids)
    assert final[pinned][:2] == (host, "ACTIVE") and "crashup:drain_stopped" not in final[pinned][2]
    assert final[stopped][1] == "SHUTOFF" and final[moving][1] == final[bfv][1] == "ACTIVE"
    evs = [e for e in journal(lab, since) if e["type"].endswith(".maintenance")]
    steps = [(e["payload"]["verb"], e["payload"].get("step") or e["payload"]["action"], e["payload"].get("outcome"))
             for e in evs]
    assert ("drain", "disabled", None) in steps and ("undrain", "start", "done") in steps
    assert ("drain", "stop", "done") in steps and ("drain", "finished", None) in steps
    validate(evs)


def test_evacuate_a_host_that_is_still_up_fences_it_first(lab, volumes):
    v, node = volumes, lab.node("compute2")
    ids = [v.boot(f"evac-{i}", host=node.nova_host)["id"] for i in range(2)]
    since = time.time()
    to = lab.node("compute3").nova_host
    done = crashup(lab, "evacuate", node.nova_host, "--to", to)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "recovery done: 2 evacuated" in done.stdout, done.stdout
    assert_recovered_exactly_once(lab, node, ids)
    assert {server(v, sid)[0] for sid in ids} == {to}
    off_at = min(e["time"] for e in lab.power_log(node) if e["command"] == "off" and e["time"] >= since - 1)
    created = [_ts(m.created_at) for ms in evacuations(lab, ids).values() for m in ms]
    assert created and min(created) >= int(off_at), (off_at, created)            # nova keeps whole seconds
    kinds = [(e["type"], e["payload"].get("step")) for e in journal(lab, since)]
    assert kinds.index(("crashup.host.maintenance", "fence_requested")) < kinds.index(("crashup.host.failed", None))
    wait_request(lab, node, ("done",), since)
    lab.wait_rejoined(node)


def test_restore_in_place_and_off_a_dead_host_keeps_id_addresses_and_volumes(lab, volumes):
    v, node = volumes, lab.node("compute3")
    created = v.nova("POST", "/servers", {"server": {"name": "restore-me", "flavorRef": "1",
                                                      "imageRef": scenario.IMAGE_ID, "host": node.nova_host,
                                                      "networks": [{"uuid": NETWORK}]}})["server"]
    sid = v.wait_server(created["id"], "ACTIVE")["id"]
    data = v.create(name="restore-data")
    v.attach(sid, data["id"])
    before = addresses(v, sid)
    assert before and before[0][1], before

    # its host runs it: refused, unchanged
    no = crashup(lab, "restore", sid, "--image", BACKUP_IMAGE)
    refused(no, "may still run server restore-me")
    assert v.server(sid)["image"]["id"] == scenario.IMAGE_ID

    ok = crashup(lab, "restore", sid, "--image", BACKUP_IMAGE, "--in-place")
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    after = v.server(sid)
    assert after["image"]["id"] == BACKUP_IMAGE and after["status"] == "ACTIVE"
    assert addresses(v, sid) == before
    assert [a["volumeId"] for a in v.server_volumes(sid)] == [data["id"]]

    # the host dies; notify mode hands it to the operator, who restores the server from the backup elsewhere
    with scenario.recovery_mode(lab, "notify"):
        since = time.time()
        lab.fail(node, "crash")
        req = wait_request(lab, node, ("recovering",), since)
        limit = time.monotonic() + 60
        while lab.recovery_request(node).hold.value != "notified" and time.monotonic() < limit:
            time.sleep(0.5)
        refused(crashup(lab, "drain", node.nova_host), "its recovery is open")
        back = crashup(lab, "restore", sid, "--image", scenario.IMAGE_ID)
        assert back.returncode == 0, (back.stdout, back.stderr)
        moved = v.server(sid)
        assert moved["OS-EXT-SRV-ATTR:host"] != node.nova_host and moved["status"] == "ACTIVE"
        assert moved["image"]["id"] == scenario.IMAGE_ID and addresses(v, sid) == before
        assert [a["host_name"] for a in v.attachments(data["id"])] == [moved["OS-EXT-SRV-ATTR:host"]]
        assert crashup(lab, "release", req.node).returncode == 0
    lab.wait_rejoined(node)


def test_bad_input_is_one_line_exit_2_and_changes_nothing(lab, volumes):
    v, node = volumes, lab.node("compute1")
    sid = v.boot("busy", host=node.nova_host)["id"]
    lab.nova().set_instance_db(sid, task_state="rebooting")
    before = server(v, sid)
    for verb in ("drain", "undrain", "evacuate"):
        refused(crashup(lab, verb, "nowhere-host"), "unknown host 'nowhere-host'")
    refused(crashup(lab, "drain", node.nova_host), "is in a task (rebooting)")
    refused(crashup(lab, "restore", sid, "--image", BACKUP_IMAGE, "--in-place"), "is in a task (rebooting)")
    refused(crashup(lab, "restore", "00000000-0000-0000-0000-000000000000", "--image", BACKUP_IMAGE), "unknown server")
    refused(crashup(lab, "evacuate", node.nova_host, "--to", node.nova_host), "that is the host being emptied")
    assert service(lab, node.nova_host).status == "enabled" and lab.recovery_request(node) is None or \
        not lab.recovery_request(node).open
    assert server(v, sid) == before and before[:2] == (node.nova_host, "REBOOT")
    lab.nova().set_instance_db(sid, task_state=None)
