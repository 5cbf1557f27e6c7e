"""What end-to-end scenarios share: booting servers on a host, waiting for a recovery request, reading the event
journal and nova's evacuation records, switching the recovery daemon off."""
import contextlib
import subprocess
import time

from crashup_lib import events
from tests.lab.nova_env import IMAGE_ID


def set_daemon(enabled: bool, check: bool = True):
    subprocess.run(["pcs", "resource", "enable" if enabled else "disable", "crashup", "--wait=60"], check=check,
                   capture_output=True, timeout=90)


@contextlib.contextmanager
def daemon_stopped():
    """No recovery daemon inside the block: recovery requests can only wait."""
    set_daemon(False)
    try:
        yield
    finally:
        set_daemon(True)


def boot(lab, host, count, prefix):
    """Boot `count` servers on `host`. A build the scheduler refused because a just-rejoined host's first heartbeat
    had not reached it yet is tried again once (test set-up, not what is tested)."""
    import openstack.exceptions
    conn = lab.connection()

    def create(i):
        return conn.compute.create_server(name=f"{prefix}-{i}", flavor_id="1", image_id=IMAGE_ID, networks="none",
                                          host=host)
    servers = [create(i) for i in range(count)]
    ids = []
    for i, s in enumerate(servers):
        try:
            conn.compute.wait_for_server(s, status="ACTIVE", interval=0.3, wait=180)
        except openstack.exceptions.ResourceFailure:
            conn.compute.delete_server(s)
            time.sleep(3)
            s = create(i)
            conn.compute.wait_for_server(s, status="ACTIVE", interval=0.3, wait=180)
        ids.append(s.id)
    return ids


def wait_request(lab, node, states, since=0.0, timeout=180):
    """The node's recovery request once it is in one of `states`, recorded by a fencing after `since`."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        req = lab.recovery_request(node)
        if req is not None and req.state in states and req.fenced_at >= since:
            return req
        time.sleep(0.5)
    raise AssertionError(f"{node.name}: recovery request not {states} after {timeout}s: {lab.recovery_request(node)}")


def journal(lab, since=0.0):
    return [e for e in events.read(str(lab.JOURNAL)) if _epoch(e["time"]) >= since]


def _epoch(text):
    import datetime
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def evacuations(lab, server_ids):
    conn = lab.connection()
    found = {sid: [] for sid in server_ids}
    for m in conn.compute.migrations(migration_type="evacuation"):
        if m.server_id in found:
            found[m.server_id].append(m)
    return found




def delete_servers(lab):
    """Every server deleted, and gone."""
    conn = lab.connection()
    servers = list(conn.compute.servers(all_projects=True))
    for s in servers:
        conn.compute.delete_server(s)
    for s in servers:
        conn.compute.wait_for_delete(s, interval=0.3, wait=120)
