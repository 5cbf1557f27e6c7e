"""When and how a fenced compute host's nova-compute comes back (pure decisions; the agent does the I/O).

No VM may run twice: while the host's recovery request is open, its guests are being evacuated elsewhere, so
nova-compute stays down. Once the request is closed, nova enforces an order (notes/nova.md): nova-compute starts
first (its start-up destroys the evacuated guests and marks their migrations completed), and only then may
forced-down be cleared (nova answers 400 before that); then the service is enabled, if crashup disabled it. Only
crashup's own marks are undone: forced-down without a crashup request, or a service an operator disabled, stay.
"""
from __future__ import annotations

#: disabled_reason prefix of services crashup disabled (and may enable again)
DISABLED_BY = "crashup"

WAIT = "wait"                      # poll again
CLEAR_FORCED_DOWN = "clear-forced-down"
ENABLE = "enable"
UP = "up"                          # done: heartbeat fresh, not forced down, enabled (or disabled by someone else)
REFUSE = "refuse"                  # a state crashup must not undo


def hold_reason(request) -> str | None:
    """Why nova-compute must stay down (the host's recovery is still open), or None when it may start."""
    if request is None or not request.open:
        return None
    note = f": {request.note}" if request.note else ""
    return f"recovery of {request.node} is still {request.state} ({request.mode} mode){note}"


def next_step(service, request, heartbeat_before: str | None) -> tuple[str, str]:
    """After nova-compute was started: what to do next, and why. `service` is nova's record of the host's
    nova-compute (None until it registers), `heartbeat_before` its updated_at read before the start (a fresh
    heartbeat must differ from it)."""
    if service is None:
        return WAIT, "nova-compute has not registered its service yet"
    if service.forced_down:
        if request is None:
            return REFUSE, (f"the nova-compute service of {service.host} is forced down, but crashup never fenced "
                            f"this node: clear it yourself (openstack compute service set --up {service.host} "
                            "nova-compute)")
        return CLEAR_FORCED_DOWN, "forced down by the fencing of this node, whose recovery is finished"
    if service.state != "up" or (heartbeat_before is not None and service.updated_at == heartbeat_before):
        return WAIT, "no fresh heartbeat from nova-compute yet"
    if service.status == "disabled" and (service.disabled_reason or "").startswith(DISABLED_BY):
        return ENABLE, f"disabled by crashup ({service.disabled_reason})"
    return UP, "heartbeat fresh" + ("" if service.status == "enabled" else
                                    f"; left disabled ({service.disabled_reason or 'no reason given'})")
