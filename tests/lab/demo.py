"""`make demo`: the main job. Bring the lab up, boot servers on a compute node, crash it, and watch Pacemaker
fence it (IPMI power-off, then nova forced-down) and crashup bring its servers back on the other hosts, exactly once.

Printed as it happens, then a per-phase timeline. The lab is always brought down at the end, also on Ctrl-C.
"""
from __future__ import annotations

import datetime
import subprocess
import threading
import time

from tests.lab import lab, pacemaker
from tests.lab.nova_env import IMAGE_ID

SERVERS = 4
MARKER = "written by the demo before the crash"


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


class BusWatch:
    """When the lab has a notification bus: a consumer on it (what `crashup events --follow --bus` runs: a private
    queue bound to notifications.*) in a thread, holding the first crashup.host.failed of `host` and when it came."""

    def __init__(self, host: str):
        self.host = host
        self.arrived: tuple[float, dict] | None = None
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> "BusWatch | None":
        from crashup_lib import config
        cfg = config.load(str(lab.CRASHUP_CONF), env={})
        if not cfg.transport_url_file:
            return None
        self.thread = threading.Thread(target=self._run, args=(cfg,), name="demo-bus", daemon=True)
        self.thread.start()
        return self

    def _run(self, cfg) -> None:
        from crashup_lib.events import bus as events_bus
        try:
            for event in events_bus.follow(cfg, self.stop):
                if self.arrived is None and event["type"] == "crashup.host.failed" and event["subject"] == self.host:
                    self.arrived = (time.time(), event)
        except Exception as e:                  # noqa: BLE001 - the demo goes on without the bus
            self.error = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)


def boot_from_volume(victim) -> tuple:
    """One more server on the victim, booted from a cinder volume of the lab's real cinder (a file on its backend),
    with data written into the volume: (server id, volume id, the Volumes client)."""
    from tests.lab.volumes import Volumes
    volumes = Volumes.lab()
    root = volumes.create(bootable=True, name="demo-root")
    volumes.write_marker(root["id"], MARKER)
    server = volumes.boot_from_volume("demo-volume", root["id"], host=victim.nova_host)
    say(f"   demo-volume ACTIVE on {victim.name}, booted from cinder volume {root['id']} (data written into it)")
    return server["id"], root["id"], volumes


def volume_line(server_id: str, volume_id: str, volumes) -> str:
    """Where the volume-backed server's volume is attached now, and whether its data is still there."""
    vol = volumes.get(volume_id)
    hosts = ", ".join(f"{a['host_name']}" for a in vol["attachments"] if a["server_id"] == server_id) or "nowhere"
    kept = "kept" if volumes.read_marker(volume_id) == MARKER else "LOST"
    return f"demo-volume's cinder volume: {vol['status']}, attached on {hosts}; the data written before the crash: {kept}"


def main() -> int:
    victim = lab.topology.Node(1)
    if lab.read_state():
        say("a lab is already up: taking it down first")
        lab.down(quiet=True)
    say("1. bringing the lab up: corosync + Pacemaker (ctl1), 3 compute nodes under pacemaker_remote, real nova, "
        "one IPMI BMC per node")
    timeline: list[tuple[str, float]] = []
    bus: BusWatch | None = None
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
        volume = boot_from_volume(victim) if lab.read_state().get("cinder_url") else None

        bus = BusWatch(victim.nova_host).start() if lab.read_state().get("transport_url_file") else None
        said_bus = False

        def bus_line() -> None:
            nonlocal said_bus
            if bus is None or said_bus or bus.arrived is None:
                return
            said_bus = True
            at, event = bus.arrived
            fenced_at = datetime.datetime.fromisoformat(event["payload"]["fenced_at"].replace("Z", "+00:00"))
            delay = at - fenced_at.timestamp()
            timeline.append(("fenced -> a consumer on the bus holds crashup.host.failed", delay))
            say(f"   bus: crashup.host.failed ({len(event['payload']['instances'])} servers) held by a consumer on "
                f"the notification bus {delay:.2f}s after the fencing")

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
        timeline.append(("lost -> fenced (IPMI off confirmed, nova forced-down, request recorded)", fenced - lost))
        event = st.fenced(victim.name, since)[-1]
        say(f"   fenced: {event.action} of {victim.name} {event.state}, by {event.delegate}, "
            f"{fenced - lost:.2f}s after the loss")
        for entry in lab.power_log(victim):
            if entry["time"] >= since - 1:
                say(f"   BMC {victim.name}: power {entry['command']} ({entry['from']} -> {entry['to']})")
        say(f"\n5. crashup recovers {victim.name}: verify fencing, repair, evacuate (progress every second)")
        ids = {s.id for s in servers} | ({volume[0]} if volume else set())
        last = None
        while True:
            req = lab.recovery_request(victim)
            placed = {s.name: s.compute_host for s in conn.compute.servers(all_projects=True) if s.id in ids}
            moved = sum(1 for h in placed.values() if h != victim.nova_host)
            line = f"   request {req.state if req else '-'}: {moved}/{len(ids)} servers on other hosts"
            if line != last:
                say(line)
                last = line
            bus_line()
            if req is not None and req.fenced_at >= since and req.state == "done":
                break
            if time.monotonic() - fenced > 180:
                raise RuntimeError("recovery did not finish within 180s")
            time.sleep(1)
        recovered = time.monotonic()
        while bus is not None and bus.arrived is None and bus.error is None and time.monotonic() - recovered < 5:
            time.sleep(0.1)
        bus_line()
        if bus is not None and not said_bus:
            say(f"   bus: no crashup.host.failed seen on the notification bus ({bus.error or 'not within 5s'})")
        timeline.append(("fenced -> every server ACTIVE elsewhere (repair + evacuate)", recovered - fenced))
        for s in conn.compute.servers(all_projects=True):
            if s.id in ids:
                migrations = [m for m in conn.compute.migrations(migration_type="evacuation")
                              if m.server_id == s.id]
                say(f"   {s.name}: {s.status} on {s.compute_host} ({len(migrations)} evacuation)")
        if volume:
            say(f"   {volume_line(*volume)}")
        say(f"   crashup: {req.note}")

        say(f"\n6. {victim.name} rejoins: Pacemaker starts its nova-compute (ocf:crashup:nova-compute) only now that "
            "its recovery is done; the agent clears forced-down once nova-compute cleaned up the evacuated guests")
        lab.wait_rejoined(victim)
        pacemaker.wait_for(lab.all_online(lab.nodes()), 90, "every node online")
        back = time.monotonic()
        timeline.append(("recovered -> node back in nova and Pacemaker", back - recovered))
        say(f"   {victim.name} up and enabled in nova, online in Pacemaker; its hypervisor holds "
            f"{len(lab.nova().guests(victim.nova_host))} guests (the evacuated ones were destroyed)")
    finally:
        if bus is not None:
            bus.close()
        say("\n7. bringing the lab down")
        t = lab.down(quiet=True)
        timeline.append(("lab down", t.total))
    say("\ntimeline")
    for phase, seconds in timeline:
        say(f"  {seconds:7.2f}s  {phase}")
    return 0
