"""The libvirt backend: a guest's state from the libvirt of its host, read-only (`observe`), and every guest of a
host (`list_guests`, for the sweep's orphan pass). libvirt-python is imported when a backend is built."""
from __future__ import annotations

from typing import Callable

from crashup_lib import libvirt
from crashup_lib.health.bound import Bounded, time_left
from crashup_lib.health.model import RESOURCE, Guest, HealthError, Observation, Resource, error_line
from crashup_lib.health.realities import VIR_DOMAIN_SHUTOFF, VIR_ERR_INVALID_ARG, VIR_ERR_NO_DOMAIN, libvirt_reality
from crashup_lib.rules import ABSENT, UNKNOWN


def libvirt_module():
    """libvirt-python (crashup_lib.libvirt.libvirt_module), its absence a HealthError."""
    try:
        return libvirt.libvirt_module()
    except libvirt.LibvirtError as e:
        raise HealthError(f"health: {e}") from None


class LibvirtBackend:
    """A guest's state from the libvirt of its host, read-only: by UUID (nova's instance UUID is the domain's),
    then by `resource.name`. No such domain -> absent; the connection failing -> unknown.

    `uri`: a libvirt URI, `{host}` replaced by the resource's host (e.g. 'qemu+tcp://{host}/system',
    'qemu+ssh://nova@{host}/system?keyfile=...'), or a function host -> URI.
    """
    level = RESOURCE

    def __init__(self, uri: str | Callable[[str | None], str] = "qemu:///system", *, timeout: float = 10.0,
                 name: str = "libvirt"):
        self._uri = uri
        self.timeout, self.name = timeout, name
        self._lv = libvirt_module()
        self._listing = Bounded()       # list_guests' own bound (observe() is bounded by the collector)

    def uri(self, host: str | None) -> str:
        if callable(self._uri):
            return self._uri(host)
        if "{host}" in self._uri and not host:
            raise HealthError(f"health: libvirt URI {self._uri!r} needs the resource's host")
        return self._uri.replace("{host}", host or "")

    def observe(self, resource: Resource) -> Observation:
        lv = self._lv
        uri = self.uri(resource.host)
        source = f"{self.name} {uri}"
        try:
            conn = lv.openReadOnly(uri)
        except lv.libvirtError as e:
            return Observation(UNKNOWN, f"cannot connect to {uri}: {error_line(e)}", source)
        try:
            domain = self._lookup(conn, resource)
            if domain is None:
                return Observation(ABSENT, f"no domain {resource.id}" +
                                   (f" nor {resource.name}" if resource.name else "") + f" on {uri}", source)
            state, reason = domain.state()
            managed = state == VIR_DOMAIN_SHUTOFF and bool(domain.hasManagedSaveImage(0))
            reality = libvirt_reality(state, managed)
            shown = libvirt.state_name(state)
            return Observation(reality, f"domain {domain.name()} is {shown} (reason {reason})"
                               + (" with a managed-save image" if managed else ""), source)
        except lv.libvirtError as e:
            return Observation(UNKNOWN, f"reading domain {resource.id} on {uri}: {error_line(e)}", source)
        finally:
            try:
                conn.close()
            except lv.libvirtError:
                pass

    def list_guests(self, host: str | None) -> list[Guest]:
        """Every domain (running or only defined) of the host's libvirt, read-only, within `timeout` (a hung
        libvirtd is abandoned as observe() is: see bound.py). HealthError, one line, when it cannot be listed."""
        uri = self.uri(host)
        return self._listing.call(f"{self.name} list:{uri}", lambda: self._list(uri),
                                  time_left(self.timeout), f"{self.name} {uri}: listing guests")

    def _list(self, uri: str) -> list[Guest]:
        lv = self._lv
        conn = lv.openReadOnly(uri)
        try:
            return [Guest(d.uuid, d.name, libvirt.state_name(d.state)) for d in libvirt.read_domains(conn)]
        finally:
            try:
                conn.close()
            except lv.libvirtError:
                pass

    def _lookup(self, conn, resource: Resource):
        lv = self._lv
        attempts = [(conn.lookupByUUIDString, resource.id)]
        if resource.name:
            attempts.append((conn.lookupByName, resource.name))
        for lookup, key in attempts:
            try:
                return lookup(key)
            except lv.libvirtError as e:
                # not found, or not a UUID at all (an id that is not one cannot name a domain): try the next
                if e.get_error_code() not in (VIR_ERR_NO_DOMAIN, VIR_ERR_INVALID_ARG):
                    raise
        return None
