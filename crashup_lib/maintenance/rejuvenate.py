"""Rejuvenation, the decisions: which compute node's services a rolling restart takes next, and whether it may go.

A rejuvenation restarts the Pacemaker clones `rejuvenation_resources` (nova-compute's, and libvirtd's where
Pacemaker runs it) on one compute node at a time, through Pacemaker, and waits for nova to report that node's
nova-compute up with a heartbeat newer than the restart before it takes the next one. It never acts while any
recovery request is open (it pauses, and resumes once they are closed), never on a node whose servers are in a task
(it waits, bounded, then skips the node), and never from a partition without quorum.

Its progress lives in the CIB, as persistent node attributes beside the recovery requests: DONE_ATTRIBUTE = the
epoch of the node's last completed rejuvenation, MARK_ATTRIBUTE = the epoch a restart began and has not been seen
through yet. So a controller failover in the middle of a roll resumes it (the nodes done keep their epoch and are
not due; a marked node is finished first, its leftover ban cleared) rather than restarting it.

Everything here is pure (what the cluster and nova say in, data out); rejuvenate_steps.py does the I/O.
"""
from __future__ import annotations

import dataclasses
import enum

from crashup_lib.report.fields import epoch

VERB = "rejuvenate"                                 # the verb of its crashup.host.maintenance events
DONE_ATTRIBUTE = "crashup-rejuvenated"              # epoch of the node's last completed rejuvenation
MARK_ATTRIBUTE = "crashup-rejuvenating"             # "<epoch> <owner>": a restart began, until it is seen through
DAEMON = "daemon"           # the owner of the periodic roll's marks: Pacemaker runs one daemon, so one is its own
COMMAND = "command"         # the owner of `crashup rejuvenate`'s marks


class Step(enum.StrEnum):
    """The `step` of each crashup.host.maintenance event a rejuvenation emits."""
    WAITING_TASKS = "waiting_tasks"     # servers of the node are in a task: waiting for them to clear
    RESTARTING = "restarting"           # Pacemaker asked to restart the node's clones
    RESTARTED = "restarted"             # nova reports the node's nova-compute up again, heartbeat newer
    SKIPPED = "skipped"                 # not restarted (busy servers, not running there, down in nova)
    FAILED = "failed"                   # the restart failed, or nova-compute did not come back in time
    PAUSED = "paused"                   # a recovery request is open: nothing restarts until it closes
    RESUMED = "resumed"                 # every recovery request closed: the roll goes on
    FINISHED = "finished"               # the roll is over (crashup rejuvenate)


@dataclasses.dataclass(frozen=True)
class NodeState:
    """A compute node as a rejuvenation sees it."""
    node: str                           # Pacemaker node
    host: str                           # its nova host
    last: float | None                  # DONE_ATTRIBUTE (None: never rejuvenated)
    marked: float | None                # MARK_ATTRIBUTE's epoch (None: no restart in flight)
    owner: str = ""                     # MARK_ATTRIBUTE's owner: DAEMON or COMMAND


def number(value: str | None) -> float | None:
    """An attribute's epoch (its first word); None when absent or unreadable (an unreadable one is never set)."""
    try:
        found = float(value.split()[0]) if value and value.split() else None
    except ValueError:
        return None
    return found if found is not None and 0 <= found < float("inf") else None


def mark(epoch_: float, owner: str) -> str:
    return f"{epoch_:.3f} {owner}"


def mark_owner(value: str | None) -> str:
    words = (value or "").split()
    return words[1] if len(words) > 1 else ""


def due(states: list[NodeState], now: float, interval: float) -> list[NodeState]:
    """The nodes a periodic rejuvenation takes, in order: a restart in flight first (resumed), then those never
    rejuvenated, then the oldest; only those whose last rejuvenation is at least `interval` old."""
    def late(s: NodeState) -> bool:
        return s.marked is not None or s.last is None or now - s.last >= interval
    return sorted((s for s in states if late(s)),
                  key=lambda s: (s.marked is None, s.last is not None, s.last or 0.0, s.node))


def ordered(states: list[NodeState]) -> list[NodeState]:
    """Every node for `crashup rejuvenate` (all of them): a restart in flight first, then by name."""
    return sorted(states, key=lambda s: (s.marked is None, s.node))


def open_recoveries(requests: dict) -> list[str]:
    """The nodes whose recovery request is open: while there is any, a rejuvenation restarts nothing."""
    return sorted(node for node, req in requests.items() if req.open)


def busy(servers) -> list:
    """The servers in a task: a restart of their nova-compute would cut it short."""
    return [s for s in servers if s.task_state]


def stale_mark(marked: float | None, now: float, limit: float) -> bool:
    """A mark older than a whole restart's bounds: its roller is gone (a failover, a killed command)."""
    return marked is not None and now - marked > limit


def came_back(service, since: float) -> bool:
    """nova reports the node's nova-compute up, not forced down, with a heartbeat newer than `since` (the epoch the
    restart's stop was over: a beat the old process sent while stopping is older): the new process is heartbeating."""
    if service is None or service.state != "up" or service.forced_down:
        return False
    beat = epoch(service.updated_at) if service.updated_at else None
    return beat is not None and beat > since


def unhealthy(service) -> str | None:
    """Why a node's nova-compute is not restarted now (a rejuvenation restarts healthy services only: a dead or stuck
    one is the watchdog's or the recovery's)."""
    if service is None:
        return "nova has no nova-compute service there"
    if service.forced_down:
        return "its nova-compute is forced down (fenced?)"
    if service.state != "up":
        return "its nova-compute is down in nova"
    return None


def render(states: list[NodeState], resources, now: float, notes: dict[str, str]) -> str:
    """The plan `crashup rejuvenate --dry-run` prints: one node per line, in the order it would go."""
    head = f"rejuvenate {len(states)} compute nodes, one at a time: restart {', '.join(resources)} through Pacemaker"
    rows = []
    for s in states:
        last = "never" if s.last is None else f"{(now - s.last) / 3600:.1f}h ago"
        rows.append(f"  {s.node:<16} {s.host:<24} last {last:<12} {notes.get(s.node, '')}".rstrip())
    return "\n".join([head, *rows]) if rows else head + "\n  no compute node"


__all__ = ["VERB", "DONE_ATTRIBUTE", "MARK_ATTRIBUTE", "DAEMON", "COMMAND", "Step", "NodeState", "number", "mark",
           "mark_owner", "due", "ordered",
           "open_recoveries", "busy", "stale_mark", "came_back", "unhealthy", "render"]
