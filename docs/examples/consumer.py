#!/usr/bin/env python3
"""Custom recovery, an example (docs/custom-recovery.md): a consumer of crashup's notifications that recovers a
failed host's servers its own way, then releases the host.

With crashup in mode `notify`, a fenced host's servers are left where they are and crashup publishes
`crashup.host.failed` (INFO) on the notification bus; the host stays down until `crashup release NODE`. This consumer:
  1. receives the notification on a queue of its own (durable: what is published while it is away waits for it;
     name it in crashup.conf's [events] notification_queues so crashup binds it again itself after a broker
     restart), and drops one it has already handled (by the event's id: delivery is at least once);
  2. decides: only the servers that were ACTIVE are evacuated, each to the up and enabled compute host that has
     the fewest servers (counting those it just placed); SHUTOFF and ERROR servers stay for their owners;
  3. evacuates them through crashup's nova client (a server already off the failed host is skipped: running it
     twice after a crash of this consumer does no harm) and waits until each runs on its new host;
  4. releases the host (`crashup release NODE`): only then may it rejoin (nova-compute would destroy the evacuated
     guests' leftovers), so a server never runs twice.

    docs/examples/consumer.py [--config /etc/crashup/crashup.conf] [--queue crashup-custom-recovery] [--dry-run]

It reads crashup.conf: [events] transport_url_file, control_exchange, notification_topics for the bus; [openstack]
for nova. Ctrl-C or SIGTERM ends it. plan() and recover() are plain functions (tests/test_bus.py runs them).
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))       # run from a checkout

from crashup_lib import bus, config, nova  # noqa: E402
from crashup_lib.events.bus import event_from_body  # noqa: E402

LOG = logging.getLogger("custom-recovery")
WAIT = 600.0                # seconds an evacuation may take to show the server running on its new host


def plan(event: dict, services: list, load: dict[str, int]) -> list[tuple[str, str]]:
    """(server id, target host) for each server of the failed host to evacuate: the ACTIVE ones, each to the up,
    enabled compute host with the fewest servers (`load`: servers per host, counting those placed here)."""
    failed = event["payload"]["host"]
    hosts = [s.host for s in services if s.state == "up" and s.status == "enabled" and s.host != failed]
    if not hosts:
        raise RuntimeError(f"no compute host up to take the servers of {failed}")
    load = {h: load.get(h, 0) for h in hosts}
    chosen = []
    for server in event["payload"]["instances"]:
        if server["status"] != "ACTIVE":
            continue
        target = min(hosts, key=lambda h: (load[h], h))
        load[target] += 1
        chosen.append((server["id"], target))
    return chosen


def recover(event: dict, client, release, *, dry_run: bool = False, wait: float = WAIT,
            sleep=time.sleep) -> list[str]:
    """Evacuate what plan() says, wait until each server runs on its target, then release the host. Returns what
    was done, one line each."""
    failed, node = event["payload"]["host"], event["payload"]["node"]
    services = client.services()
    load = {s.host: len(client.servers_on_host(s.host)) for s in services if s.host != failed}
    done = []
    moving = []
    for server_id, target in plan(event, services, load):
        if client.server(server_id).host != failed:          # moved already (a redelivery, another hand)
            done.append(f"{server_id}: not on {failed} any more, skipped")
            continue
        done.append(f"{server_id}: evacuate to {target}" + (" (dry run)" if dry_run else ""))
        if not dry_run:
            client.evacuate(server_id, target, microversion=nova.evacuate_microversion(True))  # stays ACTIVE
            moving.append((server_id, target))
    end = time.monotonic() + wait
    while moving:
        server = client.server(moving[0][0])
        if server.host == moving[0][1] and server.task_state is None and server.status in ("ACTIVE", "SHUTOFF"):
            moving.pop(0)
        elif server.status == "ERROR" or time.monotonic() > end:
            raise RuntimeError(f"{server.id}: evacuation did not end well ({server.status}, {server.task_state}); "
                               f"{node} stays held: release it yourself once the servers are safe")
        else:
            sleep(2.0)
    if not dry_run:
        release(node)
        done.append(f"{node}: released")
    return done


def release_with_crashup(node: str) -> None:
    """`crashup release NODE` (the crashup on PATH, else this Python's)."""
    command = ["crashup"] if shutil.which("crashup") else [sys.executable, "-m", "crashup_lib.cli"]
    subprocess.run([*command, "release", node], check=True, timeout=60, stdin=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="crashup.conf (default: $CRASHUP_CONFIG or /etc/crashup/crashup.conf)")
    p.add_argument("--queue", default="crashup-custom-recovery", help="this consumer's own (durable) queue")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = config.load(args.config)
    url = bus.read_transport_url(cfg.transport_url_file)
    client = nova.Nova.from_config(cfg)
    seen: set[str] = set()          # keep it in your own store if a redelivery after a restart must be dropped too
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def on_body(body: bytes) -> None:
        event = event_from_body(body)
        if event is None or event["type"] != "crashup.host.failed" or event["payload"].get("mode") != "notify":
            return
        if event["id"] in seen:
            LOG.info("%s: event %s seen already, dropped", event["subject"], event["id"])
            return
        LOG.info("%s failed (%d servers): recovering", event["subject"], len(event["payload"]["instances"]))
        for line in recover(event, client, release_with_crashup, dry_run=args.dry_run):
            LOG.info("%s", line)
        seen.add(event["id"])

    keys = [f"{topic}.info" for topic in cfg.notification_topics]
    bus.consume(url, cfg.control_exchange, keys, on_body, stop, queue=args.queue,
                on_state=lambda state, line: LOG.warning("bus %s: %s", state, line))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (config.ConfigError, bus.BusError, nova.NovaError) as e:
        print(f"consumer: {e}", file=sys.stderr)
        sys.exit(1)
