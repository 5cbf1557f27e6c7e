"""The fallback fencing level (fence/fence_crashup_isolation, docs/isolation.md "The fallback fencing level").

When a compute node's BMC cannot be reached, power fencing fails and nothing proves the node is off. What can be
proved is time: a node that has lost the cluster runs an isolation guard that stops nova-compute and destroys (or
pauses) its guests within `timing.deadline(settings)` of the loss. So this level claims the node fenced only once
that long plus a margin has passed since it was called (it is called after the loss: that errs on the safe side),
and only while the cluster does not see the node connected (a connected node's guard would not act) and lists the
node's guard as running there (a node without one has nothing that stops its guests).

The decision is pure (`decide`, over a typed `Link` reading and the time waited); `fence` runs it against the
cluster through crashup_lib.pacemaker, with the clock and the reader given (tests give fakes).
"""
from __future__ import annotations

import enum
import math
import time
from typing import Callable, Iterable

from crashup_lib import pacemaker
from crashup_lib.isolation import timing

POLL = 2.0                  # seconds between two readings of the cluster while waiting
READ_TIMEOUT = 10.0         # one reading (crm_mon) at most
#: the action's own deadline leaves this beyond the wait: the last reading, start-up, a loaded controller
SLACK = 15.0
#: the guard's settings that fix this level's wait: the fence device's parameters, named as the guard's
TIMING = timing.FENCE


#: the isolation guard's resource (a clone on every compute node; crashup pcs render creates it)
GUARD_RESOURCE = "crashup-isolation"


class Link(enum.Enum):
    """The node's connection as the cluster sees it."""
    CONNECTED = "connected"          # online: its guard sees a quorate cluster and does not act
    LOST = "lost"                    # known to the cluster, not online, its guard last seen running there
    UNGUARDED = "unguarded"          # not online, and no guard runs there (stopped, failed, never started)
    UNKNOWN_NODE = "unknown node"    # not a node of this cluster: nothing guards it
    UNREADABLE = "unreadable"        # the cluster's tools did not answer: no reading


class Step(enum.Enum):
    REFUSE = "refuse"                # fail now: success would be a lie
    WAIT = "wait"                    # not yet
    FENCED = "fenced"                # the guard has certainly acted


class Refused(Exception):
    """The node cannot be claimed fenced by this level; one line saying why."""


def link(node: str, nodes: Iterable[pacemaker.Node], guarded: Iterable[str]) -> Link:
    """The node's Link from the cluster's node list (crm_mon) and the nodes its guard runs on (an unclean node's
    resources still count as running there until it is fenced): online is connected, whatever else it says."""
    for n in nodes:
        if n.name == node:
            if n.online:
                return Link.CONNECTED
            return Link.LOST if node in set(guarded) else Link.UNGUARDED
    return Link.UNKNOWN_NODE


def decide(reading: Link, waited: float, wait: float) -> Step:
    """One reading taken `waited` seconds into a wait of `wait`: any reading that the node is connected, has no
    guard running or is not a node of this cluster refuses; only a reading that it is lost, taken once the wait is
    over, is fenced; no reading waits on (the agent's own deadline ends that as a failure, never as a success)."""
    if reading in (Link.CONNECTED, Link.UNGUARDED, Link.UNKNOWN_NODE):
        return Step.REFUSE
    if reading is Link.LOST and waited >= wait:
        return Step.FENCED
    return Step.WAIT


def wait_for(settings: timing.Settings) -> float:
    """Seconds this level waits from its start: the guard's certain time plus the margin."""
    return timing.deadline(settings) + settings.margin


def action_deadline(wait: float) -> int:
    """The whole seconds an action may take: the wait and the slack (the device's `deadline` parameter)."""
    return math.ceil(wait + SLACK)


def device_params(settings: timing.Settings) -> dict[str, str]:
    """A fence device's parameters for a guard with `settings`: the timing settings as the guard reads them
    (none left empty) and the action's deadline that fits the wait."""
    params = {k: v for k, v in timing.values(settings).items() if k in TIMING and v != ""}
    return {**params, "deadline": str(action_deadline(wait_for(settings)))}


def read_link(node: str, timeout: float = READ_TIMEOUT) -> Link:
    """The node's Link as the cluster sees it now; UNREADABLE when crm_mon or crm_resource fails or hangs."""
    try:
        return link(node, pacemaker.nodes(timeout), pacemaker.running_on(GUARD_RESOURCE, timeout))
    except pacemaker.PacemakerError:
        return Link.UNREADABLE


def fence(node: str, wait: float, *, read: Callable[[str], Link] = read_link, clock=time.monotonic,
          sleep=time.sleep, poll: float = POLL, note=lambda message: None) -> float:
    """Wait until the node's guard has certainly acted: `wait` seconds from now, the node never seen connected,
    and seen lost at the end. Returns the seconds waited; raises Refused at the first reading that refuses."""
    start = clock()
    last = None
    while True:
        reading = read(node)
        waited = clock() - start
        step = decide(reading, waited, wait)
        if step is Step.REFUSE:
            why = {Link.CONNECTED: "the cluster sees it connected: its isolation guard does not act",
                   Link.UNGUARDED: f"no isolation guard ({GUARD_RESOURCE}) was running there: nothing takes it out",
                   }.get(reading, "it is not a node of this cluster")
            raise Refused(f"{node} cannot be fenced by isolation: {why}")
        if step is Step.FENCED:
            return waited
        if reading is not last:
            note(f"{node}: {reading.value}, {max(wait - waited, 0):.0f}s of {wait:.0f}s left to wait")
            last = reading
        sleep(max(min(poll, wait - waited), 0.05))
