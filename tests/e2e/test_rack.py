"""A rack failure in the real lab with 24 compute nodes (issue 19): the lab's inventory puts them in racks of 8
(topology.RACK_SIZE, computes[].failure_domain -> crashup.conf's storm_domains), with the storm guard's shipped
limits (storm_max_hosts 2, storm_max_fraction 0.5, storm_max_domains 1).

- A whole rack (8 hosts) failing at once is one incident: every server comes back ACTIVE once elsewhere.
- Three hosts failing at once in two racks are held by the storm guard exactly as configured, and `crashup recover
  NODE --force` (the operator's command) lets each through: then recovered once too."""
import concurrent.futures
import subprocess
import time

import pytest

from tests.e2e.scenario import (assert_recovered_exactly_once, boot, daemon_stopped, delete_servers, journal,
                                own_lab, wait_request)
from tests.lab import topology

pytestmark = pytest.mark.lab

NODES = 24
PER_HOST = 2                    # servers on each failed host


@pytest.fixture(scope="module")
def lab():
    """The lab with 24 compute nodes for this module (the default lab's fixture is overridden)."""
    yield from own_lab(NODES, "")


def fail_at_once(lab, nodes):
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: lab.fail(n, "crash"), nodes))


def rejoin_all(lab, nodes):
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: lab.wait_rejoined(n, timeout=300), nodes))


def booted(lab, nodes, prefix, count=PER_HOST):
    return {n.name: boot(lab, n.nova_host, count, f"{prefix}-{n.name}") for n in nodes}


def test_a_whole_rack_failing_is_recovered_as_one_incident(lab):
    rack = [n for n in lab.nodes() if n.rack == "rack2"]
    assert len(rack) == topology.RACK_SIZE
    ids = booted(lab, rack, "rack")
    since = time.time()
    fail_at_once(lab, rack)
    for n in rack:
        req = wait_request(lab, n, ("done",), since, timeout=420)
        assert req.note.startswith(f"{PER_HOST} evacuated, 0 failed"), (n.name, req.note)
    for n in rack:
        assert_recovered_exactly_once(lab, n, ids[n.name])
    storms = [e for e in journal(lab, since) if e["type"] == "crashup.host.storm"]
    assert not storms, storms
    recovered = [e for e in journal(lab, since) if e["type"] == "crashup.host.recovered"]
    print(f"\nrack2 (8 hosts, {8 * PER_HOST} servers) recovered: last host done "
          f"{max(e['payload'].get('duration_s', 0) for e in recovered):.1f}s after its fencing")
    rejoin_all(lab, rack)
    delete_servers(lab)


def test_failures_across_two_racks_are_held_until_the_operator_forces_them(lab):
    spread = [lab.node("compute1"), lab.node("compute2"), lab.node("compute17")]      # rack1, rack1, rack3
    ids = booted(lab, spread, "spread", PER_HOST)
    since = time.time()
    # the guard counts the requests open when a pipeline looks, and a loaded controller fences one node at a time
    # (Pacemaker throttles its actions under load): without a daemon the three requests wait for it together, as
    # they would for a daemon whose controller was being replaced; it finds them all open
    with daemon_stopped():
        fail_at_once(lab, spread)
        for n in spread:
            wait_request(lab, n, ("pending",), since, timeout=300)
    limit = time.monotonic() + 120
    while True:
        storms = [e for e in journal(lab, since) if e["type"] == "crashup.host.storm"]
        if storms or time.monotonic() > limit:
            break
        time.sleep(0.5)
    assert storms, "no crashup.host.storm within 120s"
    assert storms[0]["payload"]["domains"] == ["rack1", "rack3"] and storms[0]["payload"]["limit"] == 2
    time.sleep(3)                                           # every pipeline has decided by now (a tick or two)
    held = [n for n in spread if (r := lab.recovery_request(n)) is not None and r.open and r.hold.value == "storm"]
    assert held == spread, [lab.recovery_request(n) for n in spread]
    for n in held:                                          # held exactly: nothing of theirs evacuated
        assert all(s.compute_host == n.nova_host for s in lab.connection().compute.servers(all_projects=True)
                   if s.id in ids[n.name])
    for n in held:
        done = subprocess.run([str(topology.REPO / ".venv/bin/crashup"), "--config", str(lab.CRASHUP_CONF),
                               "recover", n.name, "--force"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    for n in spread:
        req = wait_request(lab, n, ("done",), since, timeout=300)
        assert req.note.startswith(f"{PER_HOST} evacuated, 0 failed"), (n.name, req.note)
        assert_recovered_exactly_once(lab, n, ids[n.name])
    print(f"\nstorm guard held {', '.join(n.name for n in held)}; released with `crashup recover --force`")
    rejoin_all(lab, spread)
    delete_servers(lab)
