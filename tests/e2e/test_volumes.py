"""Host recovery with volumes, in the real lab against its real cinder (issue 15): boot-from-volume servers,
image-backed servers with an attached volume and plain servers on a host that crashes all come back ACTIVE elsewhere,
each volume attached to the same server on its new host with the data written before the failure, nothing
evacuated twice, and the host rejoins with its old attachments gone. A volume left `attaching` on the failed host is
repaired before its server is evacuated.

One lab for the module (tests/e2e/conftest.py); test_recovery's clean-up after each test, then every volume deleted.
"""
import time

import pytest

from crashup_lib import events
from tests.e2e.scenario import GuestWatch, boot, evacuations, journal, tidy_up, wait_request

pytestmark = pytest.mark.lab


@pytest.fixture
def volumes(lab):
    from tests.lab.volumes import Volumes
    v = Volumes.lab()
    yield v
    tidy_up(lab)                                 # servers deleted first: their volumes are then available
    for vol in v.list():
        v.delete(vol["id"])


def servers_with_volumes(v, host, prefix):
    """On `host`: two servers booted from volumes, two image-backed ones with a data volume each, a marker written
    into every volume (as a guest would write to its disk). Returns ({server id: [volume ids]}, {volume id: marker})."""
    held, markers = {}, {}
    for i in range(2):
        root = v.create(bootable=True, name=f"{prefix}-root-{i}")
        server = v.boot_from_volume(f"{prefix}-bfv-{i}", root["id"], host=host)
        held[server["id"]] = [root["id"]]
    for i in range(2):
        server = v.boot(f"{prefix}-img-{i}", host=host)
        data = v.create(name=f"{prefix}-data-{i}")
        v.attach(server["id"], data["id"])
        held[server["id"]] = [data["id"]]
    for vols in held.values():
        for vid in vols:
            markers[vid] = f"written on {host} before the failure: {vid}"
            v.write_marker(vid, markers[vid])
    return held, markers


def crash(lab, node, ids):
    """The node crashes; returns (crash time, the done request) once its recovery is done; no server of `ids` was
    ever seen on two hypervisors at once."""
    watch = GuestWatch(lab, ids).start()
    try:
        since = time.time()
        lab.fail(node, "crash")
        req = wait_request(lab, node, ("done",), since, timeout=240)
    finally:
        watch.stop()
    assert watch.samples > 0 and not watch.doubles, watch.doubles
    return since, req


def assert_attached_on_new_hosts(v, held, markers, failed_host):
    for sid, vols in held.items():
        server = v.wait_server(sid, "ACTIVE", 60)
        host = server["OS-EXT-SRV-ATTR:host"]
        assert host != failed_host, (sid, host)
        assert sorted(a["volumeId"] for a in v.server_volumes(sid)) == sorted(vols)
        for vid in vols:
            vol = v.get(vid)
            assert vol["status"] == "in-use", (vid, vol["status"])
            assert [(a["server_id"], a["host_name"]) for a in vol["attachments"]] == [(sid, host)], vol["attachments"]
            assert v.read_marker(vid) == markers[vid]                       # the data survived the evacuation


def test_volume_backed_image_backed_with_a_volume_and_plain_servers_all_come_back_with_their_data(lab, volumes):
    node = lab.node("compute1")
    held, markers = servers_with_volumes(volumes, node.nova_host, "vols")
    plain = boot(lab, node.nova_host, 2, "vols-plain")
    ids = list(held) + plain

    since, req = crash(lab, node, ids)

    assert req.note.startswith(f"{len(ids)} evacuated"), req.note
    assert_attached_on_new_hosts(volumes, held, markers, node.nova_host)
    for sid in plain:
        assert volumes.wait_server(sid, "ACTIVE", 60)["OS-EXT-SRV-ATTR:host"] != node.nova_host
    assert all(len(m) == 1 for m in evacuations(lab, ids).values()), evacuations(lab, ids)   # none twice
    # the plan's word on each disk, in the events: volume-backed ones keep theirs, the others are rebuilt
    evacuated = {e["payload"]["id"]: e["payload"] for e in journal(lab, since)
                 if e["type"] == events.INSTANCE_EVACUATED}
    assert set(evacuated) == set(ids)
    storage = {sid: evacuated[sid].get("storage") for sid in ids}
    assert storage == {**{sid: "volume" for sid in list(held)[:2]},
                       **{sid: "local" for sid in list(held)[2:] + plain}}, storage
    for sid, vols in held.items():                # crashup's own check: each volume followed its server
        assert [(v["id"], v["moved"]) for v in evacuated[sid]["volumes"]] == [(vid, True) for vid in vols]
    recovered = next(e for e in journal(lab, since) if e["type"] == events.HOST_RECOVERED)["payload"]
    assert not recovered.get("volumes_not_moved"), recovered
    for e in journal(lab, since):
        events.check_payload(e["type"], e["payload"])

    lab.wait_rejoined(node)                      # back, and nova-compute's start-up cleaned what the evacuation left
    for vols in held.values():
        for vid in vols:
            records = volumes.attachment_records(vid)
            assert len(records) == 1 and records[0]["status"] == "attached", records
            assert [a["host_name"] for a in volumes.attachments(vid)] != [node.nova_host]


def test_a_volume_left_attaching_on_the_failed_host_is_repaired_before_its_server_is_evacuated(lab, volumes):
    node = lab.node("compute2")
    server = volumes.boot("stuck-img", host=node.nova_host)
    data = volumes.create(name="stuck-data")
    volumes.attach(server["id"], data["id"])
    volumes.write_marker(data["id"], "stuck but safe")
    # what a host that died in the middle of an attach leaves: the volume says attaching
    volumes.cinder("POST", f"/volumes/{data['id']}/action", {"os-reset_status": {"status": "attaching"}})
    assert volumes.get(data["id"])["status"] == "attaching"

    since, req = crash(lab, node, [server["id"]])

    assert req.note.startswith("1 evacuated"), req.note
    assert_attached_on_new_hosts(volumes, {server["id"]: [data["id"]]}, {data["id"]: "stuck but safe"},
                                 node.nova_host)
    kinds = [(e["type"], e["payload"].get("id")) for e in journal(lab, since)]
    # repaired by the cinder rules (a stale_recovered event for the volume), before nova was asked to evacuate
    repaired = kinds.index((events.RESOURCE_STALE_RECOVERED, data["id"]))
    assert repaired < kinds.index((events.INSTANCE_EVACUATED, server["id"])), kinds
