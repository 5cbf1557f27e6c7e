"""`make demo`: bring the lab up, boot servers on a compute node, crash it, and watch Pacemaker fence it over IPMI.

Printed as it happens, then a per-phase timeline. The lab is always brought down at the end, also on Ctrl-C.
(Evacuation of the instances joins this demo with host recovery, issue 5.)
"""
from __future__ import annotations

import subprocess
import time

from tests.lab import lab, pacemaker
from tests.lab.nova_env import IMAGE_ID

SERVERS = 4


def say(text: str) -> None:
    print(text, flush=True)


def validate_agents() -> None:
    """The installed agents' metadata through the validators Pacemaker's tooling ships."""
    for target in sorted(lab.SBIN_DIR.glob("fence_crashup_*")) + sorted(lab.OCF_DIR.glob("*")):
        if target.parent == lab.SBIN_DIR:
            meta = subprocess.run([str(target)], input="action=metadata\n", capture_output=True, text=True)
            schema = "/usr/share/cluster/relaxng/metadata.rng"
        else:
            meta = subprocess.run([str(target), "meta-data"], capture_output=True, text=True)
            schema = "/usr/share/pcs/data/ocf-1.1.rng"
        lint = subprocess.run(["xmllint", "--noout", "--relaxng", schema, "-"], input=meta.stdout,
                              capture_output=True, text=True)
        say(f"  {target}: metadata {'valid' if lint.returncode == 0 else 'INVALID'} against {schema}")


def main() -> int:
    victim = lab.topology.Node(1)
    if lab.read_state():
        say("a lab is already up: taking it down first")
        lab.down(quiet=True)
    say("1. bringing the lab up: corosync + Pacemaker (ctl1), 3 compute nodes under pacemaker_remote, real nova, "
        "one IPMI BMC per node")
    timeline: list[tuple[str, float]] = []
    try:
        t = lab.up()
        timeline.append(("lab up", t.total))
        say("\n2. crashup's agents, as Pacemaker found them")
        validate_agents()

        say(f"\n3. booting {SERVERS} servers on {victim.name}")
        conn = lab.connection()
        start = time.monotonic()
        servers = [conn.compute.create_server(name=f"demo-{i}", flavor_id="1", image_id=IMAGE_ID,
                                              networks="none", host=victim.nova_host) for i in range(SERVERS)]
        for s in servers:
            conn.compute.wait_for_server(s, status="ACTIVE", interval=0.3, wait=120)
        timeline.append((f"{SERVERS} servers ACTIVE on {victim.name}", time.monotonic() - start))
        say(f"   {SERVERS} servers ACTIVE on {victim.name}: {', '.join(s.name for s in servers)}")

        say(f"\n4. {victim.name} crashes (pacemaker-remoted and nova-compute die with the host)")
        since = time.time()
        crash = time.monotonic()
        lab.fail(victim, "crash")
        st = pacemaker.wait_for(lambda s: not s.nodes[victim.name].online, 60, f"{victim.name} seen lost")
        lost = time.monotonic()
        timeline.append(("crash -> Pacemaker sees the node lost", lost - crash))
        say(f"   Pacemaker lost {victim.name} after {lost - crash:.2f}s")
        st = pacemaker.wait_for(lambda s: s.fenced(victim.name, since), 60, f"{victim.name} fenced")
        fenced = time.monotonic()
        timeline.append(("lost -> fenced (fence_crashup_ipmi, confirmed off)", fenced - lost))
        event = st.fenced(victim.name, since)[-1]
        say(f"   fenced: {event.action} of {victim.name} {event.state}, by {event.delegate}, "
            f"{fenced - lost:.2f}s after the loss")
        for entry in lab.power_log(victim):
            if entry["time"] >= since - 1:
                say(f"   BMC {victim.name}: power {entry['command']} ({entry['from']} -> {entry['to']})")
        on_dead_host = [s for s in conn.compute.servers(all_projects=True, compute_host=victim.nova_host)]
        say(f"   nova: {len(on_dead_host)} servers still recorded on {victim.name}; their evacuation is crashup's "
            f"host recovery (issue 5)")

        say(f"\n5. {victim.name} boots again (fencing was a reboot) and rejoins")
        pacemaker.wait_for(lab.all_online(lab.nodes()), 90, "every node online")
        back = time.monotonic()
        timeline.append(("fenced -> node back online", back - fenced))
        say(f"   {victim.name} online again {back - fenced:.2f}s after fencing")
    finally:
        say("\n6. bringing the lab down")
        t = lab.down(quiet=True)
        timeline.append(("lab down", t.total))
    say("\ntimeline")
    for phase, seconds in timeline:
        say(f"  {seconds:7.2f}s  {phase}")
    return 0
