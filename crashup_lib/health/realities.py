"""Pure mappings from what a backend observed to a reality: libvirt domain states (as nova reads them), a BMC's
chassis power, nova's service heartbeat, glance image data; and `combine()`, the answers of a route -> one reality.
No I/O: the backends (libvirt.py, ipmi.py, nova.py, glance.py) call these, tests call them directly."""
from __future__ import annotations

from typing import Sequence

from crashup_lib.health.model import HOST, HOST_UP, RESOURCE
from crashup_lib.rules import ABSENT, HOST_DOWN, PAUSED, RUNNING, SHUT_OFF, SUSPENDED, UNKNOWN

# libvirt's virDomainState (a stable ABI, kept in crashup_lib.libvirt), so the mapping needs no libvirt import.
from crashup_lib.libvirt import (LIBVIRT_STATE_NAMES, VIR_DOMAIN_BLOCKED, VIR_DOMAIN_CRASHED,
                                 VIR_DOMAIN_NOSTATE, VIR_DOMAIN_PAUSED, VIR_DOMAIN_PMSUSPENDED, VIR_DOMAIN_RUNNING,
                                 VIR_DOMAIN_SHUTDOWN, VIR_DOMAIN_SHUTOFF, VIR_ERR_INVALID_ARG, VIR_ERR_NO_DOMAIN)

__all__ = ["LIBVIRT_REALITIES", "LIBVIRT_STATE_NAMES", "VIR_DOMAIN_BLOCKED", "VIR_DOMAIN_CRASHED", "VIR_DOMAIN_NOSTATE",
           "VIR_DOMAIN_PAUSED", "VIR_DOMAIN_PMSUSPENDED", "VIR_DOMAIN_RUNNING", "VIR_DOMAIN_SHUTDOWN",
           "VIR_DOMAIN_SHUTOFF", "VIR_ERR_INVALID_ARG", "VIR_ERR_NO_DOMAIN", "combine", "heartbeat_reality",
           "image_data_reality", "libvirt_reality", "power_reality"]

#: nova's own reading (nova/virt/libvirt/guest.py LIBVIRT_POWER_STATE), so a reality means what nova's power_state
#: would: BLOCKED is running, SHUTDOWN (being shut down) is SHUTDOWN for nova, hence shut_off, CRASHED is shut_off
#: (rules: "SHUTDOWN, CRASHED"), PMSUSPENDED is SUSPENDED. NOSTATE tells nothing: unknown (asked again).
LIBVIRT_REALITIES = {
    VIR_DOMAIN_NOSTATE: UNKNOWN,
    VIR_DOMAIN_RUNNING: RUNNING,
    VIR_DOMAIN_BLOCKED: RUNNING,
    VIR_DOMAIN_PAUSED: PAUSED,
    VIR_DOMAIN_SHUTDOWN: SHUT_OFF,
    VIR_DOMAIN_SHUTOFF: SHUT_OFF,
    VIR_DOMAIN_CRASHED: SHUT_OFF,
    VIR_DOMAIN_PMSUSPENDED: SUSPENDED,
}


def libvirt_reality(state: int, managed_save: bool = False) -> str:
    """A libvirt domain state -> reality. Both ways a guest can be suspended count as `suspended`: guest-initiated
    PMSUSPENDED, and a shut-off domain with a managed-save image, which is what nova's suspend leaves on libvirt
    (it calls virDomainManagedSave; the next start resumes from the image). A plain shut-off domain is shut_off."""
    if state == VIR_DOMAIN_SHUTOFF and managed_save:
        return SUSPENDED
    return LIBVIRT_REALITIES.get(state, UNKNOWN)


def power_reality(power: str | None) -> str:
    """A BMC's chassis power ('on', 'off', None when it could not be read) -> a host-level answer."""
    return {"off": HOST_DOWN, "on": HOST_UP}.get(power or "", UNKNOWN)


def heartbeat_reality(state: str, forced_down: bool) -> str:
    """nova's service record -> a host-level answer: forced down or no heartbeat is host_down (nothing there
    finishes a task); up is HOST_UP."""
    if forced_down or state == "down":
        return HOST_DOWN
    return HOST_UP if state == "up" else UNKNOWN


def image_data_reality(stored_size: int | None, staged: bool, expected_size: int | None,
                       digest_ok: bool | None) -> str:
    """glance image data -> reality (rules: running = complete in its store, size and checksum as recorded;
    shut_off = partial, in the store or only in staging; absent = nowhere). Data whose record has no size cannot be
    trusted complete: shut_off. `digest_ok` None: no digest recorded (or not verified)."""
    if stored_size is None:
        return SHUT_OFF if staged else ABSENT
    if expected_size is None or stored_size != expected_size or digest_ok is False:
        return SHUT_OFF
    return RUNNING


def combine(answers: Sequence[tuple[str, str]]) -> str:
    """(level, answer) in route order -> the reality: any host_down wins, else the first resource answer that is
    not unknown, else unknown (a host that is up says nothing about the resource)."""
    if any(level == HOST and answer == HOST_DOWN for level, answer in answers):
        return HOST_DOWN
    return next((a for level, a in answers if level == RESOURCE and a != UNKNOWN), UNKNOWN)
