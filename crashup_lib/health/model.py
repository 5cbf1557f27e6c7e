"""The Health Collector's vocabulary: what it is asked about (`Resource`), what a backend answers (`Observation`),
the two levels a backend answers at, the `Backend` contract every backend keeps, and `StaticBackend`, its trivial
implementation (tests, and the template of a cinder or neutron backend)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

from crashup_lib import log
from crashup_lib.rules import HOST_DOWN, UNKNOWN

HOST_UP = "host_up"             # a host-level answer only: nothing says the host is down (never a rules reality)
HOST_LEVEL = (HOST_UP, HOST_DOWN, UNKNOWN)
HOST, RESOURCE = "host", "resource"


class HealthError(Exception):
    """A configuration problem of the collector (no backend for a resource, libvirt-python missing): one line."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """What the collector is asked about. `record` holds the fields of the service's row the backends check
    (glance: size, checksum, os_hash_algo, os_hash_value, locations)."""
    service: str                  # nova, cinder, glance, neutron
    kind: str                     # the rules' kind: instance, instance_vm_state, volume, backup, image, port, ...
    id: str                       # the resource's UUID (nova: also the libvirt domain's UUID)
    host: str | None = None       # the host whose hypervisor, BMC and services speak for it
    name: str | None = None       # libvirt domain name (instance-0000000a), tried when the UUID is not found
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)

    def __str__(self) -> str:
        return f"{self.service} {self.kind} {self.id}" + (f" on {self.host}" if self.host else "")


@dataclasses.dataclass(frozen=True)
class Observation:
    reality: str                  # a rules reality (or, from a host backend alone, one of HOST_LEVEL)
    detail: str                   # one line: what was seen, or why it could not be
    source: str = ""              # which backend said it ("libvirt qemu+tcp://cmp1/system", "ipmi 10.0.0.5:623")
    tries: int = 1                # how many times the collector asked
    settled: bool = True          # False: unknown only because the deadline left no time for every retry


@dataclasses.dataclass(frozen=True)
class Guest:
    """One libvirt domain as listed on a host (LibvirtBackend.list_guests): nova names a guest by its UUID."""
    uuid: str
    name: str
    state: str                    # LIBVIRT_STATE_NAMES: running, shutoff, paused, ...


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """One regular file in a glance filesystem store directory (GlanceFileBackend.list_files)."""
    name: str                     # glance names an image's data file by the image id
    path: str
    size: int


error_line = log.error_line                 # an unknown answer's detail


class Backend(Protocol):
    """The contract every backend keeps (the ones of this package, and cinder's and neutron's to come).

    - `name`: shown in Observation.source and log lines.
    - `level`: HOST (answers HOST_UP, HOST_DOWN or UNKNOWN about `resource.host`) or RESOURCE (answers one of the
      realities of the resource's kind, `rules.kind_of(resource.service, resource.kind).reality_names`, with the
      meaning given there: e.g. cinder volume running = exists on its backend and in use; neutron port running =
      its device is wired and up on its binding host).
    - `timeout`: seconds one observe() may take; the collector abandons the call after that (unknown).
    - `bounds_itself` (optional, default False): True when SIGALRM can interrupt observe() (pure Python I/O); the
      collector then runs it inline under crashup_lib.deadline on the main thread rather than in a worker.
    - `observe(resource)`: one look, no retry of its own (the collector retries unknown answers). Returns an
      Observation; may raise any Exception when it cannot tell (the collector makes it unknown with the message as
      its one-line detail). Answers unknown rather than guessing: a wrong host_down or absent makes the sweep act.
      It must be safe to call from a worker thread, and may be abandoned mid-call.
    """
    name: str
    level: str
    timeout: float

    def observe(self, resource: Resource) -> Observation: ...


class StaticBackend:
    """Answers from a dict: resource id -> reality, or a list of realities given one per call (the last repeats).
    For tests, and as the template of a cinder or neutron backend."""

    def __init__(self, answers: Mapping[str, str | Sequence[str]], *, default: str = UNKNOWN,
                 level: str = RESOURCE, name: str = "static", timeout: float = 1.0):
        self.answers = {k: [v] if isinstance(v, str) else list(v) for k, v in answers.items()}
        self.default, self.level, self.name, self.timeout = default, level, name, timeout
        self.calls: list[str] = []

    def observe(self, resource: Resource) -> Observation:
        key = resource.host if self.level == HOST else resource.id
        self.calls.append(key)
        queue = self.answers.get(key)
        if not queue:
            return Observation(self.default, f"{key}: no answer recorded", self.name)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return Observation(answer, f"{key}: {answer}", self.name)
