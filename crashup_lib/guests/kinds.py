"""Which libvirt events and domain states are guest failures (pure: libvirt's numbers, no libvirt import).

A failure has a kind: WATCHDOG (the guest's watchdog fired, whatever the hypervisor then did), PANIC (the guest
kernel panicked: CRASHED/PANICKED), KILLED (qemu died under the guest: STOPPED/FAILED, or a crash qemu reported as
STOPPED/CRASHED) and IO_ERROR (the guest's disk failed under it: IO_ERROR_REASON or SUSPENDED/IOERROR). Everything
else is not one: a shutdown from inside the guest, a destroy by nova or the operator, a save, a migration. The same
kinds are read from a domain's state and reason when reconciling (a failure while nobody listened is not lost),
except a watchdog whose action left the guest running (none, reset): only the event tells that one.
"""
from __future__ import annotations

import dataclasses
import enum

from crashup_lib import libvirt as lv


class Kind(str, enum.Enum):
    WATCHDOG = "watchdog"
    PANIC = "panic"
    KILLED = "killed"
    IO_ERROR = "io_error"


@dataclasses.dataclass(frozen=True)
class Failure:
    kind: Kind
    detail: str                  # one line: what libvirt said
    self_healed: bool = False    # the hypervisor already reset the guest (watchdog action reset)
    # the guest goes on in the same qemu (a watchdog whose action does not stop nor pause it): no state is left for
    # a reconcile to find and no later event ends it, so it is not kept as handled: the next failure is a new one
    running_on: bool = False


#: watchdog actions after which the guest runs on in the same qemu
RUNNING_ON = ("none", "reset", "debug", "inject-nmi")


def _name(table: tuple[str, ...], code: int) -> str:
    return table[code] if 0 <= code < len(table) else str(code)


def from_event(event: lv.GuestEvent) -> Failure | None:
    """The failure a libvirt event reports, or None."""
    if event.event_id == lv.EVENT_WATCHDOG:
        action = _name(lv.WATCHDOG_ACTIONS, event.code)
        return Failure(Kind.WATCHDOG, f"watchdog fired (action {action})", self_healed=action == "reset",
                       running_on=action in RUNNING_ON)
    if event.event_id == lv.EVENT_IO_ERROR_REASON:
        return Failure(Kind.IO_ERROR, f"I/O error ({event.reason or 'no reason'}; action "
                                      f"{_name(lv.IO_ERROR_ACTIONS, event.code)})")
    if event.event_id != lv.EVENT_LIFECYCLE:
        return None
    if event.code == lv.EVENT_CRASHED:
        return Failure(Kind.PANIC, "crashed (guest panicked)" if event.detail == lv.CRASHED_PANICKED
                       else f"crashed (detail {event.detail})")
    if event.code == lv.EVENT_STOPPED and event.detail == lv.STOPPED_FAILED:
        return Failure(Kind.KILLED, "stopped: qemu failed (killed or died)")
    if event.code == lv.EVENT_STOPPED and event.detail == lv.STOPPED_CRASHED:
        return Failure(Kind.KILLED, "stopped: guest crashed")
    if event.code == lv.EVENT_SUSPENDED and event.detail == lv.SUSPENDED_IOERROR:
        return Failure(Kind.IO_ERROR, "paused on an I/O error")
    if event.code == lv.EVENT_SUSPENDED and event.detail == lv.SUSPENDED_WATCHDOG:
        return Failure(Kind.WATCHDOG, "paused by its watchdog")
    return None


def from_state(state: int, reason: int) -> Failure | None:
    """The failure a domain's current state and reason show, or None (reconciling after a gap)."""
    if state == lv.VIR_DOMAIN_CRASHED:
        return Failure(Kind.PANIC, "crashed (guest panicked)" if reason == lv.VIR_DOMAIN_CRASHED_PANICKED
                       else f"crashed (reason {reason})")
    if state == lv.VIR_DOMAIN_SHUTOFF and reason == lv.VIR_DOMAIN_SHUTOFF_FAILED:
        return Failure(Kind.KILLED, "shut off: qemu failed (killed or died)")
    if state == lv.VIR_DOMAIN_SHUTOFF and reason == lv.VIR_DOMAIN_SHUTOFF_CRASHED:
        return Failure(Kind.KILLED, "shut off: guest crashed")
    if state == lv.VIR_DOMAIN_PAUSED and reason == lv.VIR_DOMAIN_PAUSED_IOERROR:
        return Failure(Kind.IO_ERROR, "paused on an I/O error")
    if state == lv.VIR_DOMAIN_PAUSED and reason == lv.VIR_DOMAIN_PAUSED_WATCHDOG:
        return Failure(Kind.WATCHDOG, "paused by its watchdog")
    if state == lv.VIR_DOMAIN_PAUSED and reason == lv.VIR_DOMAIN_PAUSED_CRASHED:
        return Failure(Kind.PANIC, "paused: guest crashed")
    return None


def is_fresh_start(event: lv.GuestEvent) -> bool:
    """The guest runs again (started, resumed, rebooted): a failure seen before it is over."""
    return event.event_id == lv.EVENT_REBOOT or (
        event.event_id == lv.EVENT_LIFECYCLE and event.code in (lv.EVENT_STARTED, lv.EVENT_RESUMED))


def is_running(state: int) -> bool:
    return state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED)
