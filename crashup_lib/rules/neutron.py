"""The neutron rows of the CrashUp decision tables: ports and routers.

Sources read (the real state machine, the version the lab and the issue name): neutron-lib 5.0.1
neutron_lib/constants.py (PORT_STATUS_*, ROUTER_STATUS_*, FLOATINGIP_STATUS_*),
neutron_lib/api/definitions/port.py (status: allow_put False, so no API can set it), neutron 29.0.0
neutron/plugins/ml2/rpc.py (BUILD while the L2 agent wires the port).
"""
from __future__ import annotations

from crashup_lib.rules.model import (ABSENT, CORE_REALITIES, HOST_DOWN, RUNNING, SHUT_OFF, UNKNOWN, CasUpdate,
                                     Error, Kind, Skip, make_rows, values_of)

NEUTRON_KINDS: tuple[Kind, ...] = (
    Kind("neutron", "port", "status", (
        (RUNNING, "the port's device is wired and up on its binding host"),
        (SHUT_OFF, "the device is wired, link down"),
        (ABSENT, "no device for the port on its binding host"),
        (HOST_DOWN, "the binding host is fenced or its L2 agent is dead"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "", (), values_of({"status": "ERROR"})),               # neutron-lib port.py: status allow_put False
    Kind("neutron", "router", "status", (
        (RUNNING, "an alive L3 agent hosts the router and its namespace is up"),
        (SHUT_OFF, "scheduled to an L3 agent, not set up there yet"),
        (ABSENT, "no L3 agent hosts it"),
        (HOST_DOWN, "the hosting L3 agent's host is down"),
        (UNKNOWN, "the Health Collector could not tell, recovery_resync_count times")),
        "", (), values_of({"status": "ERROR"})),
)

_DOWN = CasUpdate(values_of({"status": "DOWN"}))
NEUTRON_RULES = [
    *make_rows("neutron", "port", ("BUILD",),
               "the L2 agent wires the port in BUILD and reports it up (ACTIVE) or down (DOWN) (ml2/rpc.py); "
               "status is not settable through the API (allow_put False): CAS",
               CORE_REALITIES, _DOWN, running=CasUpdate(values_of({"status": "ACTIVE"})),
               unknown=Skip("left BUILD: the L2 agent moves it when it reports")),
    *make_rows("neutron", "router", ("ALLOCATING",),
               "ALLOCATING until an L3 agent takes the router (neutron 29 no longer sets it; old rows keep it)",
               CORE_REALITIES, Skip(), running=CasUpdate(values_of({"status": "ACTIVE"})),
               absent=Error("no L3 agent hosts the router"), host_down=Error("its L3 agent's host is down")),
    # floating IPs have no transitional status (neutron_lib FLOATINGIP_STATUS_*: ACTIVE, DOWN, ERROR); networks'
    # BUILD is not used by ML2.
]
