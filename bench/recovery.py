#!/usr/bin/env python3
"""Host recovery in the lab: a compute node with N instances crashes; time to the last instance ACTIVE elsewhere.

Phases: detect (crash -> Pacemaker loses the node), fence (-> the fencing level succeeded: IPMI off confirmed,
nova forced-down, request recorded), recover (-> every instance ACTIVE on another host: repair + evacuate).
Baseline, in the same run, before and after (nova slows as its database grows, so their mean): nova's own time for
the same number of evacuations issued at once (8 client threads, source host already down and forced down), from
the first call to the last instance ACTIVE. crashup's overhead is
recover minus that baseline; the whole difference (total minus baseline) is printed too. The end is watched through
the lab's hypervisor, not by polling nova's API (which would slow nova's one process down in one run more than in the
other). Goal (issue 5): overhead <= 3 s for 50 instances. Needs root; brings the lab up and down.
"""
import collections
import concurrent.futures
import os
import pathlib
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.lab import lab, pacemaker  # noqa: E402
from tests.lab.nova_env import IMAGE_ID  # noqa: E402

N = int(os.environ.get("BENCH_INSTANCES", "50"))


def boot(conn, host, prefix, count=None):
    servers = [conn.compute.create_server(name=f"{prefix}-{i}", flavor_id="1", image_id=IMAGE_ID,
                                          networks="none", host=host) for i in range(N if count is None else count)]
    for s in servers:
        conn.compute.wait_for_server(s, status="ACTIVE", interval=0.5, wait=600)
    return {s.id for s in servers}


def wait_active_elsewhere(conn, ids, source, timeout=300):
    """When the last instance is ACTIVE away from `source` (a host, or a set of failed hosts). Watched through the
    fake hypervisor (the box's control API: a dict copy), not nova's API: polling servers/detail every 0.2 s would
    itself slow nova's single process down while it serves the evacuations, more in a run that watches from the
    failure on than in one that watches from its first call. nova's own view confirms it (every instance ACTIVE,
    no task) before the time counts."""
    box = lab.nova()
    sources = {source} if isinstance(source, str) else set(source)
    limit = time.monotonic() + timeout
    seen = None
    while time.monotonic() < limit:
        placed = {sid for host, guests in box.guests().items() if host not in sources for sid in guests}
        if ids <= placed:
            seen = time.monotonic()
            break
        time.sleep(0.1)
    while seen is not None and time.monotonic() < limit:
        servers = [s for s in conn.compute.servers(all_projects=True) if s.id in ids]
        if len(servers) == len(ids) and all(s.status == "ACTIVE" and s.compute_host not in sources
                                            and not s.task_state for s in servers):
            return seen
        if any(s.status == "ERROR" for s in servers):
            break
        time.sleep(0.2)
        seen = time.monotonic()              # nova was not done when the guests were: its own view counts
    states = collections.Counter((s.status, s.compute_host) for s in conn.compute.servers(all_projects=True)
                                 if s.id in ids)
    # the lab's nova runs on sqlite: under this load it now and then fails one rebuild with "database is locked"
    # (.lab/log/nova.log); that is nova's own failure, in either run: measure again
    raise RuntimeError(f"instances not all ACTIVE away from {source} within {timeout}s: {dict(states)}")


def delete_all(conn):
    servers = list(conn.compute.servers(all_projects=True))
    for s in servers:
        conn.compute.delete_server(s)
    for s in servers:
        conn.compute.wait_for_delete(s, interval=0.5, wait=300)


def baseline(conn, nodes, count=None):
    """nova alone: the same evacuations, all issued at once against already-down, forced-down hosts."""
    from crashup_lib import nova as nova_api
    import subprocess
    nodes = [nodes] if not isinstance(nodes, list) else nodes
    ids = set().union(*(boot(conn, n.nova_host, f"base-{n.name}", count) for n in nodes))
    bans = [["crm_resource", "--resource", f"{lab.NOVA_COMPUTE}-clone", "--node", n.name] for n in nodes]
    for ban in bans:
        subprocess.run(ban + ["--ban"], check=True, capture_output=True, timeout=60)  # its agent must not restart it
    for n in nodes:
        pacemaker.wait_for(lambda st: not lab.compute_running(st, n), 120, f"nova-compute stopped on {n.name}")
        lab.nova().stop_compute(n.nova_host, power_off=True)
    client = nova_api.Nova.from_config(__import__("crashup_lib.config", fromlist=["load"]).load(
        str(lab.CRASHUP_CONF)))
    for n in nodes:
        client.force_down(n.nova_host, True)
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda sid: client.evacuate(sid, microversion="2.94"), ids))
    calls = time.monotonic() - start
    end = wait_active_elsewhere(conn, ids, {n.nova_host for n in nodes})
    delete_all(conn)
    for n in nodes:
        lab.nova().start_compute(n.nova_host)             # back by hand, as an operator of nova alone would
        while True:
            try:
                client.force_down(n.nova_host, False)
                break
            except nova_api.NovaBadRequest:                # until nova-compute cleaned up the evacuated guests
                time.sleep(0.25)
    for ban in bans:
        subprocess.run(ban + ["--clear"], check=True, capture_output=True, timeout=60)
    for n in nodes:
        lab.wait_rejoined(n, timeout=300)
    return calls, end - start


def crashup_run(conn, nodes, count=None):
    """Fenced with stonith-action=off: in the lab every node shares the same 2 cores, and a node rebooting and
    rejoining during the evacuations (probes, remoted, hooks) slows nova itself; a real failed host shares nothing.
    Several nodes crash at once (a rack): detect and fence count to the last of them."""
    import subprocess
    nodes = [nodes] if not isinstance(nodes, list) else nodes
    subprocess.run(["pcs", "property", "set", "stonith-action=off"], check=True, capture_output=True, timeout=60)
    ids = set().union(*(boot(conn, n.nova_host, f"ha-{n.name}", count) for n in nodes))
    since = time.time()
    # the lab's crash stops the node's nova-compute inside the box after killing its remoted (that stop takes a
    # second or more): watched from the kill on, not after the lab's own bookkeeping
    crash = time.monotonic()
    crashers = [threading.Thread(target=lab.fail, args=(n, "crash")) for n in nodes]
    for t in crashers:
        t.start()
    pacemaker.wait_for(lambda st: not any(st.nodes[n.name].online for n in nodes), 120, "the nodes lost",
                       interval=0.1)
    lost = time.monotonic()
    for t in crashers:
        t.join()
    pacemaker.wait_for(lambda st: all(st.fenced(n.name, since) for n in nodes), 180, "the nodes fenced",
                       interval=0.1)
    fenced = time.monotonic()
    end = wait_active_elsewhere(conn, ids, {n.nova_host for n in nodes})
    deadline = time.monotonic() + 120
    while any(lab.recovery_request(n).state != "done" for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    delete_all(conn)
    for n in nodes:
        with lab.bmc(n) as bmc:                        # the operator powers the repaired host back on
            bmc.set_power("on")
    pacemaker.wait_for(lab.all_online(lab.nodes()), 300, "every node online")
    for n in nodes:
        lab.wait_rejoined(n, timeout=300)
    subprocess.run(["pcs", "property", "set", "stonith-action=reboot"], check=True, capture_output=True, timeout=60)
    return lost - crash, fenced - lost, end - fenced, end - crash


def main():
    if lab.read_state():
        lab.down(quiet=True)
    try:
        lab.up(quiet=True)
        conn = lab.connection()
        # nova slows as its sqlite database grows: the baseline runs before and after, and their mean counts
        calls_before, before = baseline(conn, lab.node("compute2"))
        detect, fence, recover, total = crashup_run(conn, lab.node("compute1"))
        calls_after, after = baseline(conn, lab.node("compute3"))
        calls, nova_time = (calls_before + calls_after) / 2, (before + after) / 2
    finally:
        lab.down(quiet=True)
    print(f"host recovery, {N} instances, lab of 3 compute nodes (one process of real nova, 2 cores)")
    print(f"  detect  crash -> node lost in Pacemaker            {detect:7.2f} s")
    print(f"  fence   lost -> IPMI off + nova forced-down        {fence:7.2f} s   (stonith-action=off)")
    print(f"  recover fenced -> last instance ACTIVE elsewhere   {recover:7.2f} s   (verify, repair, evacuate)")
    print(f"  total   crash -> last instance ACTIVE              {total:7.2f} s")
    print(f"  nova alone: {N} evacuations issued at once -> last ACTIVE {nova_time:7.2f} s "
          f"(mean of {before:.2f} s before and {after:.2f} s after; calls took {calls:.2f} s)")
    overhead = recover - nova_time
    print(f"  crashup overhead (recover - nova alone)            {overhead:7.2f} s   goal <= 3 s: "
          f"{'met' if overhead <= 3 else 'NOT met'}")
    # detect is Pacemaker seeing the connection drop, fence mostly the BMC powering off (the lab's hook takes the
    # node down); both are in the whole difference too
    print(f"  whole difference (total - nova alone)              {total - nova_time:7.2f} s   "
          f"(detect + fence + overhead)")


if __name__ == "__main__":
    main()
