#!/usr/bin/env python3
"""Controller lost mid-recovery (issue 14), in the lab with three controllers: a compute node with N servers
crashes; once a few are evacuated, the controller running crashup's recovery daemon crashes too.

Printed per run: failover (controller crash -> Pacemaker runs the daemon on another controller: detection, the
controller's fencing with its delay, the start), resume (controller crash -> the first event of the new daemon),
and the whole recovery (compute crash -> request done, from the request's own times); against the same recovery
without the loss, in the same lab. Every run also checks that no server was evacuated twice (nova's migration
records). BENCH_INSTANCES (30), BENCH_ROUNDS (2). Needs root and the machine's lab lock; brings the lab up and down.
"""
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.e2e.scenario import _epoch, boot, delete_servers, evacuations, journal, wait_request  # noqa: E402
from tests.lab import controllers, lab as lab_module, pacemaker  # noqa: E402

N = int(os.environ.get("BENCH_INSTANCES", "30"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
AFTER = 3                                   # evacuations done when the daemon's controller crashes


def wait(cond, timeout, what):
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        try:
            got = cond()
        except Exception:                   # noqa: BLE001 - a controller going away mid-call
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise SystemExit(f"bench: not {what} after {timeout}s")


def one(lab, node, lose: bool) -> dict:
    ids = boot(lab, node.nova_host, N, f"bench-{'lose' if lose else 'plain'}")
    since = time.time()
    lab.fail(node, "crash")
    out = {}
    if lose:
        wait(lambda: sum(e["type"] == "crashup.instance.evacuated" for e in journal(lab, since)) >= AFTER, 120,
             f"{AFTER} evacuated")
        holder = controllers.daemon_at()
        crashed_at, crashed = time.time(), time.monotonic()
        controllers.fail(controllers.controller(holder), "crash")
        wait(lambda: controllers.daemon_at() not in (None, holder), 120, "the daemon elsewhere")
        out["failover"] = time.monotonic() - crashed
        first = wait(lambda: next((e for e in journal(lab, crashed_at) if e["source"] != f"crashup@{holder}"), None),
                     120, "an event of the new daemon")
        out["resume"] = _epoch(first["time"]) - crashed_at
    req = wait_request(lab, node, ("done",), since, timeout=600)
    out["total"] = req.updated_at - since
    twice = [sid for sid, ms in evacuations(lab, ids).items()
             if len([m for m in ms if m.status not in ("failed", "error")]) != 1]
    assert not twice and req.note.startswith(f"{N} evacuated, 0 failed"), (twice, req.note)
    lab.wait_rejoined(node, timeout=180)
    for c in controllers.controllers():                  # the crashed one was fenced (rebooted): back in the cluster
        pacemaker.wait_for(lambda st, c=c: st.nodes[c.name].online, 120, f"{c.name} back")
    pacemaker.wait_for(lambda st: lab.all_online(lab.nodes())(st) and lab.all_started(st), 120, "all started")
    delete_servers(lab)
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("bench/controllers.py needs root (the lab)", file=sys.stderr)
        return 2
    print(f"controller lost mid-recovery: {N} servers, the daemon's controller crashed after {AFTER} evacuations, "
          f"{ROUNDS} rounds; lab fencing delay of a controller {controllers.LAB_FENCE_DELAY}s")
    t = lab_module.up(quiet=True, controllers=3)
    print(f"lab with 3 controllers up in {t.total:.1f}s")
    lab = lab_module
    runs = {"plain": [], "lose": []}
    try:
        for r in range(ROUNDS):
            for kind in ("plain", "lose"):
                node = lab.nodes()[(2 * r + (kind == "lose")) % len(lab.nodes())]
                got = one(lab, node, kind == "lose")
                runs[kind].append(got)
                print(f"  round {r + 1} {kind:5} {node.name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in got.items()),
                      flush=True)
    finally:
        lab_module.down(quiet=True)

    def med(kind, key):
        return statistics.median(x[key] for x in runs[kind])
    print(f"failover (controller crash -> daemon running elsewhere): median {med('lose', 'failover'):.1f}s")
    print(f"resume (controller crash -> the new daemon's first event): median {med('lose', 'resume'):.1f}s")
    print(f"whole recovery of {N} servers: {med('plain', 'total'):.1f}s without the loss, "
          f"{med('lose', 'total'):.1f}s with it (+{med('lose', 'total') - med('plain', 'total'):.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
