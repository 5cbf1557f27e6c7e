#!/usr/bin/env python3
"""Silent host failures (issue 19): a power loss or a cut link sends the cluster nothing (no TCP reset), so Pacemaker
learns of it only when the node's connection monitor times out. How long until the node is fenced, with the timings
`crashup pcs render` ships and with tighter ones, idle and under full CPU load, and how often a loaded node that did
not fail is fenced anyway (the false positives).

For each timing set (remote_monitor_interval / remote_monitor_timeout of the inventory's `tuning`; the lab's other
timings stay): the lab with 3 compute nodes; BENCH_ROUNDS failures of each kind (`fail --how power`: the BMC powers
the node off, link first; `--how net`: the link goes down, the host runs on), each timed from the failure to the node
lost in Pacemaker (crm_mon) and to its fencing in the history; then the same with every core busy (2 spinning
processes a core, niced 0, like a guest-heavy host), and BENCH_LOAD seconds of that load with no failure, counting
fencings and lost nodes. Needs root and the machine's lab lock; brings the lab up and down for each set.
"""
import dataclasses
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from crashup_lib import inventory  # noqa: E402
from tests.lab import lab, pacemaker  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
LOAD = float(os.environ.get("BENCH_LOAD", "120"))
SHIPPED = {k: v for k, v in dataclasses.asdict(inventory.Tuning()).items() if k.startswith("remote_monitor")}
CANDIDATES = [{"remote_monitor_interval": i, "remote_monitor_timeout": t} for i, t in ((20, 30), (5, 5), (3, 3))]
SETS = {f"{s['remote_monitor_interval']:g} s / {s['remote_monitor_timeout']:g} s"
        + (" (shipped)" if s == SHIPPED else ""): s
        for s in ([SHIPPED] if SHIPPED not in CANDIDATES else []) + CANDIDATES}
HOWS = ("power", "net")


def one(node, how: str) -> tuple[float, float]:
    """(failure -> lost, failure -> fenced) in seconds; the node is back in the cluster, rejoined, on return."""
    since, t0 = time.time(), time.monotonic()
    if how == "power":                  # silent: the link goes with the power, no process death reaches the cluster
        pacemaker.link(node, False)
    lab.fail(node, how)
    pacemaker.wait_for(lambda st: not st.nodes[node.name].crm_online or st.nodes[node.name].unclean, 180,
                       f"{node.name} lost", interval=0.1)
    lost = time.monotonic() - t0
    pacemaker.wait_for(lambda st: st.fenced(node.name, since), 180, f"{node.name} fenced", interval=0.1)
    fenced = time.monotonic() - t0
    lab.wait_rejoined(node, timeout=300)                   # fenced with a reboot: the BMC's hook boots it again
    return lost, fenced


class Load:
    """Two spinning processes a core, for as long as it is held."""

    def __enter__(self):
        spin = [sys.executable, "-c", "while True: pass"]
        self.procs = [subprocess.Popen(spin) for _ in range(2 * (os.cpu_count() or 1))]
        return self

    def __exit__(self, *_):
        for p in self.procs:
            p.kill()
            p.wait()


def rounds(label: str, results: dict) -> None:
    nodes = lab.nodes()
    for r in range(ROUNDS):
        for how in HOWS:
            results.setdefault((label, how), []).append(one(nodes[r % len(nodes)], how))


def false_positives(seconds: float) -> tuple[int, int]:
    """(fencings, losses of a node) seen in `seconds` of load with no failure."""
    since, lost = time.time(), 0
    was = {n.name for n in lab.nodes()}
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        st = pacemaker.status(fencing=False)
        now = {name for name, n in st.nodes.items() if n.type == "remote" and n.crm_online and not n.unclean}
        lost += len(was - now)
        was = now
        time.sleep(1.0)
    st = pacemaker.status()
    return sum(len(st.fenced(n.name, since)) for n in lab.nodes()), lost


def main() -> None:
    table = []
    for name, tuning in SETS.items():
        if lab.read_state():
            lab.down(quiet=True)
        lab.up(quiet=True, tuning=tuning)
        results: dict = {}
        try:
            rounds("idle", results)
            with Load():
                rounds("loaded", results)
                fencings, losses = false_positives(LOAD)
        finally:
            lab.down(quiet=True)
        table.append((name, tuning, results, fencings, losses))
    print(f"silent failures, lab of 3 compute nodes, {ROUNDS} rounds of each; seconds from the failure "
          f"(median / max); false positives in {LOAD:g} s of full load with no failure")
    for name, tuning, results, fencings, losses in table:
        print(f"{name} (monitor every {tuning['remote_monitor_interval']:g} s, timeout "
              f"{tuning['remote_monitor_timeout']:g} s): false positives {fencings} fencings, {losses} nodes lost")
        for (load, how), got in sorted(results.items()):
            lost, fenced = [g[0] for g in got], [g[1] for g in got]
            print(f"  {load:<6} {how:<5}  lost {statistics.median(lost):6.1f} / {max(lost):6.1f}   "
                  f"fenced {statistics.median(fenced):6.1f} / {max(fenced):6.1f}")


if __name__ == "__main__":
    main()
