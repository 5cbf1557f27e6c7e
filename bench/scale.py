#!/usr/bin/env python3
"""Scale (issue 19): what crashup's recovery daemon costs while nothing fails, against the size of the fleet.

Synthetic (always): a CIB of N remote nodes (3, 12, 24, 1000; two of them with a recovery request) in a file, which
Pacemaker's own tools read through CIB_file. One watch tick's CIB read as the daemon does it (only the nodes that carry
a request: the CIB manager filters through an XPath) against the whole nodes section it read before: the tool's time
and the bytes the daemon then parses, median of BENCH_READS reads each.

Live (BENCH_LIVE, default "3,12,24"; "" to skip; needs root and the machine's lab lock, brings the lab up and down for
each N): the lab with N compute nodes, the daemon idle for BENCH_IDLE seconds: its CPU (its own and its tools', from
/proc) per second of wall time, its watch ticks per second (from its heartbeat) and so its cluster queries per second
(one a tick while nothing is open: the requests; quorum is asked only with work), and the time to see a request (BENCH_SEEN times: a request written with crm_attribute
for a node of the CIB that runs nothing -> the daemon's answer: see seen()); then one host's recovery (BENCH_PER_HOST
servers, default 5) against nova alone evacuating as many (bench/recovery.py's runs), and with 24 nodes a rack of 8
crashing at once against nova alone evacuating as many from 8 down hosts.
"""
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from crashup_lib import pacemaker  # noqa: E402
from tests.lab import topology  # noqa: E402
import recovery as host_recovery  # noqa: E402  bench/recovery.py: nova alone, and crashup's run, as it measures them
from tests.test_survey_cib import request as open_request, synthetic_cib  # noqa: E402

SIZES = (3, 12, 24, 1000)
READS = int(os.environ.get("BENCH_READS", "20"))
LIVE = [int(n) for n in os.environ.get("BENCH_LIVE", "3,12,24").split(",") if n.strip()]
IDLE = float(os.environ.get("BENCH_IDLE", "20"))
SEEN = int(os.environ.get("BENCH_SEEN", "5"))
PER_HOST = int(os.environ.get("BENCH_PER_HOST", "5"))
RACK = topology.RACK_SIZE
GHOST = "bench-ghost"              # a node of the CIB with no host behind it: its request fences nothing, moves nothing
WHOLE = ["cibadmin", "--query", "--scope", "nodes"]          # what the daemon read every tick before


def timed(argv: list[str], env: dict) -> tuple[float, int, float]:
    """The tool's wall time, its output's size, and the daemon's own share: parsing it (CPU seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    c0 = time.process_time()
    for _ in range(10):
        if done.stdout.strip():
            sum(1 for _ in ET.fromstring(done.stdout).iter("nvpair"))
    return took, len(done.stdout), (time.process_time() - c0) / 10


def synthetic() -> None:
    print(f"synthetic CIB (CIB_file), median of {READS} reads: the daemon's read now (XPath: the nodes with a "
          f"request) vs. before (the whole nodes section)")
    print(f"{'nodes':>6} {'now ms':>8} {'bytes':>7} {'parse ms':>9} {'before ms':>10} {'bytes':>7} {'parse ms':>9} "
          f"{'ratio tool':>11} {'ratio parse':>12}")
    now_argv = pacemaker.attributes_query((pacemaker.REQUEST_ATTRIBUTE, pacemaker.STATE_ATTRIBUTE))
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            path = pathlib.Path(tmp) / f"cib-{size}.xml"
            path.write_text(synthetic_cib(size, {f"compute{size // 3}": (open_request(f"compute{size // 3}").to_value(),
                                                                         "recovering"),
                                                 f"compute{size - 1}": (open_request(f"compute{size - 1}").to_value(),
                                                                        "recovering")}))
            env = dict(os.environ, CIB_file=str(path))
            now = [timed(now_argv, env) for _ in range(READS)]
            before = [timed(WHOLE, env) for _ in range(READS)]
            now_ms, before_ms = (statistics.median(r[0] for r in runs) * 1000 for runs in (now, before))
            now_p, before_p = (statistics.median(r[2] for r in runs) * 1000 for runs in (now, before))
            print(f"{size:>6} {now_ms:>8.1f} {now[0][1]:>7} {now_p:>9.2f} {before_ms:>10.1f} {before[0][1]:>7} "
                  f"{before_p:>9.2f} {now_ms / before_ms:>11.2f} {now_p / before_p:>12.3f}")


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime: the process's CPU and that of the children it waited for (its tools)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def idle(lab, seconds: float) -> tuple[float, float]:
    """CPU share and watch ticks per second of the lab's recovery daemon left alone for `seconds`."""
    pid = int((lab.DAEMON_DIR / "daemon.pid").read_text())
    beat = lab.DAEMON_DIR / "heartbeat"
    ticks, last = 0, beat.stat().st_mtime_ns
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.05)
        mtime = beat.stat().st_mtime_ns
        ticks, last = ticks + (mtime != last), mtime
    wall = time.monotonic() - t0
    return (cpu_seconds(pid) - cpu0) / wall, ticks / wall


def seen(lab) -> list[float]:
    """Seconds from a request's write to the daemon's answer to it, BENCH_SEEN times: a closed request whose state
    mirror lags (what a writer stopped between its two writes leaves), on a CIB node with no host behind it; the
    daemon puts the mirror right when it has seen the lag at two ticks in a row, so this is the time to see it
    plus one watch interval, and it moves nothing."""
    subprocess.run(["cibadmin", "--create", "--scope", "nodes", "--xml-text",
                    f'<node id="{GHOST}" uname="{GHOST}" type="remote"/>'], check=True, capture_output=True)
    took = []
    try:
        for _ in range(SEEN):
            closed = open_request(GHOST).moved_to("done", "bench")
            pacemaker.write_state_mirror(open_request(GHOST))           # "recovering": lags behind "done"
            written = time.monotonic()
            subprocess.run(["crm_attribute", "--type", "nodes", "--node", GHOST, "--name", pacemaker.REQUEST_ATTRIBUTE,
                            "--update", closed.to_value(), "--lifetime", "forever"], check=True, capture_output=True)
            while pacemaker.survey()[1]:
                if time.monotonic() - written > 10:
                    raise SystemExit("bench: the daemon did not put the state mirror right within 10 s")
                time.sleep(0.02)
            took.append(time.monotonic() - written)
    finally:
        for name in (pacemaker.REQUEST_ATTRIBUTE, pacemaker.STATE_ATTRIBUTE):
            subprocess.run(["crm_attribute", "--type", "nodes", "--node", GHOST, "--name", name, "--delete"],
                           check=False, capture_output=True)
        subprocess.run(["cibadmin", "--delete", "--scope", "nodes", "--xml-text", f'<node id="{GHOST}"/>'],
                       check=False, capture_output=True)
    return took


def overhead(lab, crashed: list, baseline_on: list) -> str:
    """crashup's recovery of `crashed` (crashing at once) against nova alone evacuating as many servers from as many
    down hosts (`baseline_on`), PER_HOST servers each: bench/recovery.py's two runs."""
    conn = lab.connection()
    _, nova_alone = host_recovery.baseline(conn, baseline_on, PER_HOST)
    detect, fence, recover, total = host_recovery.crashup_run(conn, crashed, PER_HOST)
    return (f"{len(crashed)} host(s) x {PER_HOST} servers: detect {detect:.2f} s, fence {fence:.2f} s, recover "
            f"{recover:.2f} s against nova alone {nova_alone:.2f} s: overhead {recover - nova_alone:+.2f} s "
            f"(total {total:.2f} s)")


def live() -> None:
    from tests.lab import lab
    print(f"\nlive lab, the daemon idle {IDLE:g} s; its answer to a request (seen at two ticks: time to see + one "
          f"tick): {SEEN} requests; recovery against nova alone, {PER_HOST} servers a host")
    rows, recoveries = [], []
    for count in LIVE:
        if lab.read_state():
            lab.down(quiet=True)
        lab.up(count, quiet=True)
        try:
            share, ticks = idle(lab, IDLE)
            took = seen(lab)
            rows.append((count, share, ticks, took))
            recoveries.append(f"{count:>3} nodes, {overhead(lab, [lab.node('compute1')], [lab.node('compute2')])}")
            if count >= 3 * RACK:
                rack2 = [n for n in lab.nodes() if n.rack == "rack2"]
                rack3 = [n for n in lab.nodes() if n.rack == "rack3"]
                recoveries.append(f"{count:>3} nodes, a rack: {overhead(lab, rack2, rack3)}")
        finally:
            lab.down(quiet=True)
    print(f"{'nodes':>6} {'daemon CPU %':>13} {'ticks/s':>8} {'queries/s':>10} {'answer median s':>16} "
          f"{'answer max s':>13}")
    for count, share, ticks, took in rows:
        print(f"{count:>6} {share * 100:>13.2f} {ticks:>8.2f} {ticks:>10.2f} {statistics.median(took):>16.3f} "
              f"{max(took):>13.3f}")
    for line in recoveries:
        print(line)


if __name__ == "__main__":
    synthetic()
    if LIVE:
        live()
