#!/usr/bin/env python3
"""fence_crashup_ipmi against Debian's fence_ipmilan: same BMC simulator, same stdin, runs interleaved.

Whole-process wall time for `status` and a confirmed `off` (the node powered back on, untimed, between runs), with
each tool's defaults (fence_ipmilan: power_wait=2, as operators run it). Prints medians and the ratio ours/theirs.
Goals (issue 4): status <= 1.0x, off <= 0.15x.
"""
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import BmcSim, agent_env  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "9"))
OURS = str(REPO / "fence" / "fence_crashup_ipmi")
THEIRS = shutil.which("fence_ipmilan") or "/usr/sbin/fence_ipmilan"


def timed(agent, stdin, env):
    start = time.perf_counter()
    done = subprocess.run([agent], input=stdin, env=env, capture_output=True, text=True)
    return (time.perf_counter() - start) * 1000, done.returncode


def main():
    env = agent_env()
    with tempfile.TemporaryDirectory() as tmp:
        bmc = BmcSim(pathlib.Path(tmp) / "bmc")
        try:
            base = f"ip=127.0.0.1\nipport={bmc.port}\nusername=admin\npassword={bmc.password}\nlanplus=1\n"
            results = {}
            for action in ("status", "off"):
                for agent in (OURS, THEIRS):                     # warm-up: page cache, pyc files
                    timed(agent, base + f"action={action}\n", env)
                    timed(OURS, base + "action=on\n", env)
                samples = {OURS: [], THEIRS: []}
                for _ in range(RUNS):
                    for agent in (OURS, THEIRS):
                        ms, rc = timed(agent, base + f"action={action}\n", env)
                        if rc not in (0, 2):
                            raise SystemExit(f"{pathlib.Path(agent).name} {action} failed (exit {rc})")
                        samples[agent].append(ms)
                        if action == "off":
                            timed(OURS, base + "action=on\n", env)
                results[action] = samples
            offs = [e for e in bmc.power_log() if e["command"] not in ("off", "on")]
        finally:
            bmc.stop()
    print(f"whole-process wall time, {RUNS} interleaved runs each, same BMC simulator and stdin")
    print(f"{'action':<8}{'fence_crashup_ipmi':>20}{'fence_ipmilan':>16}{'ratio':>8}   goal")
    for action, goal in (("status", 1.0), ("off", 0.15)):
        ours, theirs = (statistics.median(results[action][a]) for a in (OURS, THEIRS))
        ratio = ours / theirs
        print(f"{action:<8}{ours:>17.1f} ms{theirs:>13.1f} ms{ratio:>8.3f}   <= {goal}  "
              f"{'met' if ratio <= goal else 'NOT met'}")
    print(f"power commands other than on/off seen by the BMC: {len(offs)}")


if __name__ == "__main__":
    main()
