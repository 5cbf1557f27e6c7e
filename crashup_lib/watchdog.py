"""Is this node's nova-compute alive in nova's eyes? The heartbeat half of the compute-node agent's monitor.

A running process whose service nova sees down is stuck (hung on a lock, a dead RPC connection, a wedged
hypervisor call): Pacemaker should restart it. But a whole cloud whose computes all look down is a control-plane
failure (conductor, database, message bus), and restarting every nova-compute would not help: that is reported,
not acted on. nova's own clock decides "down" (its `state`), so the nodes' clocks never matter.

The verdict is cached in a small file: the monitor runs every few seconds on every node and must stay cheap, while
a nova check costs an import of the OpenStack clients and an API call.
"""
from __future__ import annotations

import json
import os
import time


class Verdict:
    __slots__ = ("healthy", "reason", "checked_at")

    def __init__(self, healthy: bool, reason: str, checked_at: float):
        self.healthy = healthy
        self.reason = reason
        self.checked_at = checked_at

    def __repr__(self) -> str:
        return f"Verdict({self.healthy}, {self.reason!r})"


def judge(host: str, computes, now: float) -> Verdict:
    """From every nova-compute service nova lists (crashup_lib.nova.Service), the verdict on `host`'s."""
    own = [s for s in computes if s.host == host]
    if not own:
        return Verdict(True, f"nova lists no nova-compute service for host {host!r} yet", now)
    svc = own[0]
    if svc.forced_down:
        return Verdict(True, f"{host}: service forced down, its heartbeat is not judged", now)
    if svc.state == "up":
        return Verdict(True, f"{host}: heartbeat fresh", now)
    if not any(s.state == "up" and not s.forced_down for s in computes if s.host != host):
        return Verdict(True, "nova sees every nova-compute down: a control-plane problem, not this host's", now)
    return Verdict(False, f"nova-compute of {host} is running but nova sees no heartbeat since "
                          f"{svc.updated_at or 'ever'}: stuck", now)


# --- the cache: one JSON file per node in the agent's state folder --------------------------------------------------

def cache_path(state_dir: str, node: str) -> str:
    return os.path.join(state_dir, f"nova-compute-{node}.json")


def read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache(path: str, **data) -> None:
    """Replace the cache atomically (a monitor may read it at the same moment)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def fresh(cache: dict, max_age: float, now: float | None = None) -> bool:
    checked = cache.get("checked_at")
    return isinstance(checked, (int, float)) and 0 <= (now or time.time()) - checked < max_age
