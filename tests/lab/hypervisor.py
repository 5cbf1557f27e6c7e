"""The lab's hypervisor as a Health Collector backend.

The lab's computes run nova's fake virt driver inside the nova box, so there is no libvirt to ask: this backend reads
the same fake hypervisor nova-compute drives (GET /novabox/computes/<host>/guests) and answers like
crashup_lib.health.LibvirtBackend does for a real host: running / paused / suspended / shut_off from the guest's
power state, absent when the hypervisor does not hold it, unknown when the host's nova-compute (the lab's stand-in
for libvirtd) is not running. It keeps the health.Backend contract, so the sweep under test is the real one; and it
lists a host's guests as health.LibvirtBackend does (`uri`, `list_guests`), for the sweep's orphan pass, and the
volumes connected to a guest (`guest_disks`, a health GuestReader, for volumes stuck attaching or detaching).
"""
from __future__ import annotations

from crashup_lib import health
from crashup_lib.rules import ABSENT, PAUSED, RUNNING, SHUT_OFF, SUSPENDED, UNKNOWN

# the box names the fake driver's nova.compute.power_state per guest; read as nova reads libvirt's (health/realities.py)
POWER_REALITIES = {"running": RUNNING, "paused": PAUSED, "shutdown": SHUT_OFF, "crashed": SHUT_OFF,
                   "suspended": SUSPENDED}
#: the same power states in libvirt's words (health.LIBVIRT_STATE_NAMES), as a listing of a real host shows them
LIBVIRT_STATES = {"running": "running", "paused": "paused", "shutdown": "shutoff", "crashed": "crashed",
                  "suspended": "pmsuspended"}


class FakeHypervisorBackend:
    level = health.RESOURCE

    def __init__(self, box, *, timeout: float = 10.0, name: str = "lab hypervisor"):
        self.box, self.timeout, self.name = box, timeout, name
        self.calls: list[str] = []
        self.disks_asked: list[tuple[str, str]] = []

    def observe(self, resource: health.Resource) -> health.Observation:
        self.calls.append(resource.id)
        if not resource.host:
            return health.Observation(UNKNOWN, "no host", self.name)
        view = self.box.control("GET", f"computes/{resource.host}/guests")
        if not view.get("running"):
            return health.Observation(UNKNOWN, f"{resource.host}: hypervisor not answering", self.name)
        power = view.get("power_states", {}).get(resource.id)
        if power is None:
            return health.Observation(ABSENT, f"{resource.host}: no guest {resource.id}", self.name)
        reality = POWER_REALITIES.get(power, UNKNOWN)
        return health.Observation(reality, f"{resource.host}: guest power state {power}", self.name)

    def guest_disks(self, host: str, instance_uuid: str):
        """The guest and the volumes connected to it on the host's fake hypervisor, as a health.GuestReader answers
        (what libvirt's domain XML says of a real guest): None when the host holds no such guest."""
        self.disks_asked.append((host, instance_uuid))
        view = self.box.control("GET", f"computes/{host}/guests")
        if not view.get("running"):
            raise health.HealthError(f"{host}: hypervisor not answering")
        power = view.get("power_states", {}).get(instance_uuid)
        if power is None:
            return None
        return health.GuestDisks(POWER_REALITIES.get(power, UNKNOWN), frozenset(view.get("volumes", {}).get(instance_uuid, ())))

    def uri(self, host: str) -> str:
        """One hypervisor per nova host, as a libvirt URI with {host} gives."""
        return f"lab+novabox://{host}"

    def list_guests(self, host: str) -> list[health.Guest]:
        """The guests the host's fake hypervisor holds; HealthError when it does not answer (unknown, not empty)."""
        view = self.box.control("GET", f"computes/{host}/guests")
        if not view.get("running"):
            raise health.HealthError(f"{host}: hypervisor not answering")
        return [health.Guest(uuid, uuid, LIBVIRT_STATES.get(power, "nostate"))
                for uuid, power in sorted(view.get("power_states", {}).items())]
