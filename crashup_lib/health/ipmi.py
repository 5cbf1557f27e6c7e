"""The IPMI power backend: chassis power of a resource's host through its BMC (crashup_lib.ipmi), a host-level
answer."""
from __future__ import annotations

import threading
from typing import Any, Callable

from crashup_lib.health.model import HOST, Observation, Resource, error_line
from crashup_lib.health.realities import power_reality
from crashup_lib.ipmi import BmcError
from crashup_lib.rules import UNKNOWN

_IPMI_LOCK = threading.Lock()


class PowerBackend:
    """Chassis power of the resource's host over IPMI (crashup_lib.ipmi): off -> host_down, on -> host up,
    no answer -> unknown. `bmc_for(host)` builds the ipmi.Bmc for a host (None: no BMC known, unknown).
    pyghmi's session table is shared by the process and was not made for parallel logins: one IPMI call at a time
    (a lock), run inline under a deadline on the main thread (`bounds_itself`)."""
    level = HOST
    bounds_itself = True

    def __init__(self, bmc_for: Callable[[str], Any], *, timeout: float = 12.0, name: str = "ipmi"):
        self.bmc_for, self.timeout, self.name = bmc_for, timeout, name

    def observe(self, resource: Resource) -> Observation:
        bmc = self.bmc_for(resource.host) if resource.host else None
        if bmc is None:
            return Observation(UNKNOWN, f"no BMC known for host {resource.host}", self.name)
        source = f"{self.name} {bmc.where}"
        if not _IPMI_LOCK.acquire(timeout=self.timeout):
            return Observation(UNKNOWN, "an earlier IPMI call is still running", source)
        try:
            with bmc:
                power = bmc.power_state()
        except BmcError as e:
            return Observation(UNKNOWN, error_line(e), source)
        finally:
            _IPMI_LOCK.release()
        return Observation(power_reality(power), f"host {resource.host} chassis power is {power}", source)
