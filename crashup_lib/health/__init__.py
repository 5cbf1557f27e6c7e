"""The Health Collector: what reality says about a resource, as one of the CrashUp rules' realities.

The CrashUp sweep finds a resource stuck in a task, asks `Collector.observe(resource)` and hands the answer's
`reality` to `crashup_lib.rules.decide()`. Realities are the rules' own (running, paused, suspended,
shut_off, absent, host_down, unknown; what each means for each kind is `rules.kind_of(service, kind).realities`).

Layout, lowest first (each module imports only those above it):
- model.py: `Resource`, `Observation`, `Guest`, `StoredFile`, `HealthError`, the levels, the `Backend` contract
  and `StaticBackend`;
- realities.py: the pure mappings (libvirt state, chassis power, heartbeat, image data -> reality; `combine()`);
- bound.py: the time bound of every backend call (worker thread, or inline under a deadline);
- libvirt.py, ipmi.py, nova.py, glance.py, cinder.py: the backends (the I/O);
- collector.py: the `Collector` (routes, combination, retries).
Callers use this package's names (`health.Collector`, `health.Resource`, ...), not its modules.

Backends have one of two levels:
- host: says whether the resource's host can still finish anything: HOST_UP, HOST_DOWN or UNKNOWN. IPMI power
  (`PowerBackend`: off -> host_down) and nova's service heartbeat (`NovaHeartbeatBackend`: down or forced down ->
  host_down). These never name a resource-level reality: a powered-on host says nothing about one guest.
- resource: says what the resource itself is: libvirt (`LibvirtBackend`), glance's filesystem store
  (`GlanceFileBackend`), cinder's file-backed volume and backup stores (`VolumeFileBackend`, `BackupFileBackend`)
  and a volume's connection to its instance's guest (`VolumeConnectionBackend` over a `GuestReader`:
  `LibvirtVolumes`), and for neutron any object keeping the `Backend` contract (`StaticBackend` is the trivial one,
  by resource id).
cinder's backends answer by the question a stuck resource asks (`health.cinder.question`): an attach task is the
instance's host's (host level `InstanceHeartbeatBackend`, nova's heartbeat), any other volume task cinder-volume's
(host level `CinderServiceBackend`, cinder's os-services), a backup cinder-backup's; a backend asked another
question answers HOST_UP or unknown, so one route per kind serves every task (health/cinder.py).
Listings, for the sweep's orphan pass (what exists that no row describes): `LibvirtBackend.list_guests(host)` and
`GlanceFileBackend.list_files(datadir)`, under the same time bound as observe() (HealthError, one line, on failure).
A route (`Collector(routes=...)`, by (service, kind) or service) lists host backends then resource backends; the
answers are combined by `combine()`: any host_down wins (and the later backends are not asked: a powered-off host's
libvirt would only time out), else the first resource-level answer that is not unknown, else unknown.
Every backend call is bounded in time (bound.py); an unknown answer is asked again `recovery_resync_count` times
(collector.py); errors never escape a backend call as tracebacks: they become unknown answers with a one-line detail.
"""
from crashup_lib.health.model import (HOST, HOST_LEVEL, HOST_UP, RESOURCE, Backend, Guest, HealthError, Observation,
                                      Resource, StaticBackend, StoredFile)
from crashup_lib.health.realities import (LIBVIRT_REALITIES, LIBVIRT_STATE_NAMES, VIR_DOMAIN_BLOCKED,
                                          VIR_DOMAIN_CRASHED, VIR_DOMAIN_NOSTATE, VIR_DOMAIN_PAUSED,
                                          VIR_DOMAIN_PMSUSPENDED, VIR_DOMAIN_RUNNING, VIR_DOMAIN_SHUTDOWN,
                                          VIR_DOMAIN_SHUTOFF, VIR_ERR_INVALID_ARG, VIR_ERR_NO_DOMAIN, combine,
                                          heartbeat_reality, image_data_reality, libvirt_reality, power_reality)
from crashup_lib.health.libvirt import LibvirtBackend
from crashup_lib.health.ipmi import PowerBackend
from crashup_lib.health.nova import NovaHeartbeatBackend
from crashup_lib.health.glance import GlanceFileBackend
from crashup_lib.health.cinder import (BACKUP_STORE, CONNECTION, VOLUME_STORE, BackupFileBackend, CinderServiceBackend,
                                       GuestDisks, GuestReader, InstanceHeartbeatBackend, LibvirtVolumes,
                                       VolumeConnectionBackend, VolumeFileBackend)
from crashup_lib.health.collector import Collector
from crashup_lib.rules import ABSENT, HOST_DOWN, PAUSED, RUNNING, SHUT_OFF, SUSPENDED, UNKNOWN  # the realities

__all__ = [
    "HOST", "HOST_LEVEL", "HOST_UP", "RESOURCE", "Backend", "Guest", "HealthError", "Observation", "Resource",
    "StaticBackend", "StoredFile",
    "LIBVIRT_REALITIES", "LIBVIRT_STATE_NAMES", "VIR_DOMAIN_BLOCKED", "VIR_DOMAIN_CRASHED", "VIR_DOMAIN_NOSTATE",
    "VIR_DOMAIN_PAUSED", "VIR_DOMAIN_PMSUSPENDED", "VIR_DOMAIN_RUNNING", "VIR_DOMAIN_SHUTDOWN", "VIR_DOMAIN_SHUTOFF",
    "VIR_ERR_INVALID_ARG", "VIR_ERR_NO_DOMAIN", "combine", "heartbeat_reality", "image_data_reality",
    "libvirt_reality", "power_reality",
    "LibvirtBackend", "PowerBackend", "NovaHeartbeatBackend", "GlanceFileBackend", "Collector",
    "BACKUP_STORE", "CONNECTION", "VOLUME_STORE", "BackupFileBackend", "CinderServiceBackend", "GuestDisks",
    "GuestReader", "InstanceHeartbeatBackend", "LibvirtVolumes", "VolumeConnectionBackend", "VolumeFileBackend",
    "ABSENT", "HOST_DOWN", "PAUSED", "RUNNING", "SHUT_OFF", "SUSPENDED", "UNKNOWN",
]
