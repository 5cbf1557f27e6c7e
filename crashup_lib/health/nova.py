"""The nova heartbeat backend: the nova-compute service of a resource's host, a host-level answer."""
from __future__ import annotations

from crashup_lib.health.model import HOST, Observation, Resource
from crashup_lib.health.realities import heartbeat_reality
from crashup_lib.rules import UNKNOWN


class NovaHeartbeatBackend:
    """The nova-compute service of the resource's host (crashup_lib.nova.Nova, or anything with its service()):
    forced down or down -> host_down, up -> host up; nova not answering, or no such service -> unknown."""
    level = HOST

    def __init__(self, nova, *, binary: str = "nova-compute", timeout: float | None = None, name: str = "nova"):
        self.nova, self.binary, self.name = nova, binary, name
        # nova.Nova bounds each call itself (api_timeout); ours is a backstop just above it
        self.timeout = timeout if timeout is not None else float(getattr(nova, "timeout", 30.0)) + 5.0

    def observe(self, resource: Resource) -> Observation:
        if not resource.host:
            return Observation(UNKNOWN, "no host to ask nova about", self.name)
        service = self.nova.service(resource.host, self.binary)
        reality = heartbeat_reality(service.state, service.forced_down)
        return Observation(reality, f"{self.binary} on {resource.host} is {service.state}"
                           + (" (forced down)" if service.forced_down else ""), f"{self.name} service {service.id}")
