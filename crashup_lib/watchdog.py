"""Is this node's nova-compute alive in nova's eyes? The heartbeat half of the compute-node agent's monitor.

A running process whose service nova sees down is stuck (hung on a lock, a dead RPC connection, a wedged
hypervisor call): Pacemaker should restart it. But a whole cloud whose computes all look down is a control-plane
failure (conductor, database, message bus), and restarting every nova-compute would not help: that is reported,
not acted on. nova's own clock decides "down" (its `state`), so the nodes' clocks never matter.

The verdict is cached in a small file: the monitor runs every few seconds on every node and must stay cheap, while
a nova check costs an import of the OpenStack clients and an API call. So nothing here imports them, nor
crashup_lib.nova: check_heartbeat is handed the call that lists the computes, and the errors that mean "nova could
not be asked".
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping

from crashup_lib import files, log


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


def check_heartbeat(path: str, host: str, computes: Callable[[], Iterable], logger, *,
                    unreachable: type[BaseException] | tuple[type[BaseException], ...] = (),
                    now: Callable[[], float] = time.time) -> Cache:
    """Ask nova (computes(): every nova-compute service it lists) for the verdict on `host`'s nova-compute, cache it
    at `path`, and return it. computes() raising one of `unreachable` (nova down, its cloud unreadable) says nothing
    about this host: a healthy verdict, "unchecked: why", cached like any other (never restart computes for a
    control-plane outage, nor ask nova again at every monitor)."""
    try:
        verdict = judge(host, computes(), now())
    except unreachable as e:
        return unchecked(path, str(e), logger, host=host, now=now)
    if not verdict.healthy:
        logger.warning("%s", verdict.reason)
    return _keep(path, Cache(host=host, checked_at=verdict.checked_at, healthy=verdict.healthy,
                             reason=verdict.reason))


def unchecked(path: str, why: str, logger, *, host: str | None = None,
              now: Callable[[], float] = time.time) -> Cache:
    """The verdict when nova could not be asked (`why`: nova unreachable, or with no host, crashup.conf unreadable:
    a typo there must not stop nova-compute on every node): healthy, cached, and warned about."""
    if host is None:
        logger.warning("heartbeat not checked: %s", why)
    else:
        logger.warning("heartbeat of %s not checked: %s", host, why)
    return _keep(path, Cache(host=host, checked_at=now(), healthy=True, reason=f"unchecked: {why}"))


def _keep(path: str, cache: Cache) -> Cache:
    write_cache(path, **cache.to_dict())
    return cache


# --- the cache: one JSON file per node in the agent's state folder --------------------------------------------------
#
# The file is only a saving: whatever is wrong with it (missing, torn, garbage, a field of the wrong type, too big,
# not a regular file) reads as no cache, and the monitor asks nova again and writes a good one.

CACHE_MAX = 4096            # bytes: a real cache is about 200; anything larger is not one, and is not read whole
REASON_MAX = 1024
_HOST = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,255}")   # one word of printable characters: it goes into commands


class Cache(collections.namedtuple("Cache", "checked_at healthy reason host", defaults=(None, True, "", None))):
    """A cached verdict, every field checked; NO_CACHE (checked_at None) when there is none to trust. A named tuple,
    not a dataclass: dataclasses costs every monitor ~5 ms of imports.

    .get(name, default) reads it like the dict it used to be, so the agent's cache.get("healthy", True) and
    cache.get("host") keep working: a field that is None gives the default."""
    __slots__ = ()

    def get(self, name: str, default: object = None) -> object:
        value = getattr(self, name, None) if name in self._fields else None
        return default if value is None else value

    def to_dict(self) -> dict:
        return {k: v for k, v in self._asdict().items() if v is not None}


NO_CACHE = Cache()


def cache_path(state_dir: str, node: str) -> str:
    return os.path.join(state_dir, f"nova-compute-{node}.json")


def _valid(data: object) -> Cache | None:
    """The Cache in a decoded file, or None when any field is missing or of the wrong type."""
    if not isinstance(data, dict):
        return None
    checked, healthy, reason, host = (data.get(k) for k in ("checked_at", "healthy", "reason", "host"))
    if isinstance(checked, bool) or not isinstance(checked, (int, float)) or not _finite(checked):
        return None
    if not isinstance(healthy, bool):
        return None
    if not isinstance(reason, str) or len(reason) > REASON_MAX or log.text_problem(reason):
        return None                                 # it becomes an OCF exit reason: one printable line
    if host is not None and not (isinstance(host, str) and _HOST.fullmatch(host)):
        return None
    return Cache(checked_at=float(checked), healthy=healthy, reason=reason, host=host)


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:                           # an int beyond any float: not a time
        return False


def read_cache(path: str) -> Cache:
    """The cached verdict, checked field by field; NO_CACHE when the file is missing or is not a good cache."""
    try:
        return _valid(json.loads(files.read_text(path, CACHE_MAX))) or NO_CACHE   # NaN, Infinity: refused by _valid
    except (ValueError, RecursionError):            # FileProblem, UnicodeDecodeError, JSONDecodeError
        return NO_CACHE


def write_cache(path: str, **fields) -> bool:
    """Replace the cache atomically (a monitor may read it at the same moment) with Cache's fields (an unknown name
    is a TypeError: a bug). The reason is made one printable line. False when not written: values read_cache would
    refuse, or a full or read-only disk; the old cache is removed then, so it is not trusted again. The cache is only
    a saving: a failed write costs a nova check at the next monitor, never the monitor."""
    Cache(**fields)
    if isinstance(fields.get("reason"), str):
        fields["reason"] = log.one_line(fields["reason"], REASON_MAX)
    cache = _valid(fields)
    tmp = f"{path}.{os.getpid()}"
    try:
        if cache is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(cache.to_dict(), f)
            os.replace(tmp, path)
            return True
    except OSError:
        forget(tmp)
    forget(path)
    return False


def forget(path: str) -> None:
    """Remove the cache (a stop does: the next start's process is judged afresh); none, or not ours to remove, is
    no failure."""
    try:
        os.unlink(path)
    except OSError:
        pass


def fresh(cache: Cache | Mapping[str, object], max_age: float, now: float | None = None) -> bool:
    """Was the verdict checked less than max_age seconds ago (and not in the future: a clock step re-checks)?"""
    checked = cache.get("checked_at")
    if isinstance(checked, bool) or not isinstance(checked, (int, float)):
        return False
    return 0 <= (time.time() if now is None else now) - checked < max_age
