"""What the guest monitor does about one guest failure (pure: decisions are data).

decide(failure, chosen policy, nova's server, this node, the reboots already made in the window, the limit) ->
a Decision: NOTIFY (an event), REBOOT (nova HARD reboot, and an event), LEAVE_DOWN (the guest fails again and again:
nova stop, and an ERROR event), IGNORE (nothing; the reason is logged). The order of the checks is the point:
  1. not crashup's to act on: no nova server; the server is no longer on this host (evacuated, migrated); this
     host's nova-compute forced down (it is being fenced or recovered: host recovery owns its guests, no double
     action); a task in progress (nova is doing something to it, a stop included); nova says it is not active
     (stopped, shelved, paused, in error... by the operator or nova);
  2. the policy: none -> IGNORE, notify -> NOTIFY;
  3. reboot: the crash-loop limit (max_reboots in the window) -> LEAVE_DOWN; a watchdog the hypervisor already
     reset, or an I/O error (the disk under it is the problem, a reboot meets it again) -> NOTIFY; else REBOOT.
"""
from __future__ import annotations

import dataclasses
import enum

from crashup_lib.guests.kinds import Failure, Kind
from crashup_lib.guests.policy import Policy


class Action(str, enum.Enum):
    NOTIFY = "notify"
    REBOOT = "reboot"
    LEAVE_DOWN = "leave_down"
    IGNORE = "ignore"


@dataclasses.dataclass(frozen=True)
class Node:
    host: str                    # this node's nova host
    forced_down: bool            # its nova-compute is forced down: a host recovery owns it


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    reason: str                  # one line


def decide(failure: Failure, policy: Policy, server, node: Node, recent_reboots: int,
           max_reboots: int) -> Decision:
    """`server`: the nova.Server of the domain, or None when nova has none."""
    if server is None:
        return Decision(Action.IGNORE, "no nova server with this uuid")
    if server.host != node.host:
        return Decision(Action.IGNORE, f"nova places it on {server.host or 'no host'}, not {node.host}: left to "
                                       "whatever moved it (host recovery, a migration)")
    if node.forced_down:
        return Decision(Action.IGNORE, f"nova-compute on {node.host} is forced down: left to host recovery")
    if server.task_state:
        return Decision(Action.IGNORE, f"nova task {server.task_state} in progress")
    if server.vm_state != "active":
        return Decision(Action.IGNORE, f"nova vm_state is {server.vm_state or 'unknown'}, not active")
    if policy is Policy.NONE:
        return Decision(Action.IGNORE, "policy none")
    if policy is Policy.NOTIFY:
        return Decision(Action.NOTIFY, "policy notify")
    if recent_reboots >= max_reboots:
        return Decision(Action.LEAVE_DOWN, f"rebooted {recent_reboots} times within the window (limit "
                                           f"{max_reboots}): a crash loop, left stopped")
    if failure.self_healed:
        return Decision(Action.NOTIFY, "the hypervisor already reset it (watchdog action reset)")
    if failure.kind is Kind.IO_ERROR:
        return Decision(Action.NOTIFY, "an I/O error: a reboot would meet the same disk")
    return Decision(Action.REBOOT, "policy reboot")
