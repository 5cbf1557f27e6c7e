"""The Health Collector: what reality says about a resource, as one of the CrashUp rules' realities.

The CrashUp sweep finds a resource stuck in a task, asks `Collector.observe(resource)` and hands the answer's
`reality` to `crashup_lib.rules.decide()`. Realities are the rules' own (running, paused, suspended,
shut_off, absent, host_down, unknown; what each means for each kind is `rules.kind_of(service, kind).realities`).

Shape: pure mappings (state codes -> reality) first, backends (the I/O) next, the collector last.

Backends have one of two levels:
- host: says whether the resource's host can still finish anything: HOST_UP, HOST_DOWN or UNKNOWN. IPMI power
  (`PowerBackend`: off -> host_down) and nova's service heartbeat (`NovaHeartbeatBackend`: down or forced down ->
  host_down). These never name a resource-level reality: a powered-on host says nothing about one guest.
- resource: says what the resource itself is: libvirt (`LibvirtBackend`), glance's filesystem store
  (`GlanceFileBackend`), and for cinder and neutron any object keeping the `Backend` contract (`StaticBackend` is the
  trivial one, by resource id).
Listings, for the sweep's orphan pass (what exists that no row describes): `LibvirtBackend.list_guests(host)` and
`GlanceFileBackend.list_files(datadir)`, under the same time bound as observe() (HealthError, one line, on failure).
A route (`Collector(routes=...)`, by (service, kind) or service) lists host backends then resource backends; the
answers are combined by `combine()`: any host_down wins (and the later backends are not asked: a powered-off host's
libvirt would only time out), else the first resource-level answer that is not unknown, else unknown.

Time bounds: every backend call is bounded by the backend's `timeout` (lowered to what is left of the nearest
`crashup_lib.deadline`), so a hung libvirt daemon, BMC or API never hangs the sweep; the answer is then unknown
("timed out"). Calls run in a worker thread joined with that timeout. libvirt needs it: its keepalive only starts
once virConnectOpen has returned, a TCP peer that accepts and never answers holds virConnectOpen forever, and no
signal gets it out (libvirt retries its poll() on EINTR without returning to Python). A thread left hanging is
abandoned (a daemon thread); while it hangs, further calls to the same endpoint answer unknown at once instead of
piling up threads. IPMI (pyghmi, pure Python) runs inline under crashup_lib.deadline's SIGALRM on the main thread
instead: an interrupted pyghmi call stops for good, an abandoned one would keep driving pyghmi's process-wide
session table while the next login uses it.

Retries: an unknown answer is asked again `recovery_resync_count` times, `recovery_resync_interval` seconds apart,
before it is accepted (`Observation.settled`); then the service applies the rules' unknown outcome. When the
nearest open deadline leaves no room for the next try the collector stops early and answers unknown with
settled=False: the service must not act on it (the rules apply unknown only after every try), it asks again at
the next sweep. The sleep function is injectable (tests are instant).

Errors never escape a backend call as tracebacks: any exception becomes an unknown answer whose `detail` is one
line (secrets redacted). DeadlineExceeded (a BaseException) is the caller's and passes through.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
import urllib.parse
from typing import Any, Callable, Mapping, Protocol, Sequence

from crashup_lib import deadline
from crashup_lib.log import redact
from crashup_lib.rules import ABSENT, HOST_DOWN, PAUSED, RUNNING, SHUT_OFF, SUSPENDED, UNKNOWN, kind_of

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


# ------------------------------------------------------------------------------------------------ pure mappings
# libvirt's virDomainState (a stable ABI: libvirt.VIR_DOMAIN_*), so the mapping needs no libvirt import.
VIR_DOMAIN_NOSTATE, VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED, VIR_DOMAIN_PAUSED, VIR_DOMAIN_SHUTDOWN, \
    VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_CRASHED, VIR_DOMAIN_PMSUSPENDED = range(8)
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_INVALID_ARG = 8

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
LIBVIRT_STATE_NAMES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")


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


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = redact(text)
    return text if len(text) <= 300 else text[:297] + "..."


# ----------------------------------------------------------------------------------------------------- backends
class Backend(Protocol):
    """The contract every backend keeps (the ones here, and cinder's and neutron's to come).

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


def _libvirt():
    """libvirt-python, imported on first use, with its default error handler (a line on stderr per error)
    silenced: errors come back as exceptions, which become one-line details."""
    try:
        import libvirt
    except ImportError:
        raise HealthError("health: libvirt-python is not installed (pip install 'crashup[libvirt]')") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


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
        self._lv = _libvirt()
        self._listing = _Bounded()       # list_guests' own bound (observe() is bounded by the collector)

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
            return Observation(UNKNOWN, f"cannot connect to {uri}: {_line(e)}", source)
        try:
            domain = self._lookup(conn, resource)
            if domain is None:
                return Observation(ABSENT, f"no domain {resource.id}" +
                                   (f" nor {resource.name}" if resource.name else "") + f" on {uri}", source)
            state, reason = domain.state()
            managed = state == VIR_DOMAIN_SHUTOFF and bool(domain.hasManagedSaveImage(0))
            reality = libvirt_reality(state, managed)
            shown = LIBVIRT_STATE_NAMES[state] if 0 <= state < len(LIBVIRT_STATE_NAMES) else f"state {state}"
            return Observation(reality, f"domain {domain.name()} is {shown} (reason {reason})"
                               + (" with a managed-save image" if managed else ""), source)
        except lv.libvirtError as e:
            return Observation(UNKNOWN, f"reading domain {resource.id} on {uri}: {_line(e)}", source)
        finally:
            try:
                conn.close()
            except lv.libvirtError:
                pass

    def list_guests(self, host: str | None) -> list[Guest]:
        """Every domain (running or only defined) of the host's libvirt, read-only, within `timeout` (a hung
        libvirtd is abandoned as observe() is: see _Bounded). HealthError, one line, when it cannot be listed."""
        uri = self.uri(host)
        return self._listing.call(f"{self.name} list:{uri}", lambda: self._list(uri),
                                  _time_left(self.timeout), f"{self.name} {uri}: listing guests")

    def _list(self, uri: str) -> list[Guest]:
        lv = self._lv
        conn = lv.openReadOnly(uri)
        try:
            guests = []
            for domain in conn.listAllDomains(0):
                try:
                    state = domain.state()[0]
                except lv.libvirtError as e:
                    if e.get_error_code() == VIR_ERR_NO_DOMAIN:
                        continue                # gone since the list was read
                    raise
                shown = LIBVIRT_STATE_NAMES[state] if 0 <= state < len(LIBVIRT_STATE_NAMES) else f"state-{state}"
                guests.append(Guest(domain.UUIDString(), domain.name(), shown))
            return guests
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
        from crashup_lib.ipmi import BmcError
        if not _IPMI_LOCK.acquire(timeout=self.timeout):
            return Observation(UNKNOWN, "an earlier IPMI call is still running", source)
        try:
            with bmc:
                power = bmc.power_state()
        except BmcError as e:
            return Observation(UNKNOWN, _line(e), source)
        finally:
            _IPMI_LOCK.release()
        return Observation(power_reality(power), f"host {resource.host} chassis power is {power}", source)


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


class GlanceFileBackend:
    """glance's filesystem store: the image's data file in `datadirs` (glance's filesystem_store_datadir(s): the
    file is named by the image id) or at a file:// location of the record, checked against the record's size and
    digest (os_hash_algo/os_hash_value, else the md5 `checksum`); the staging area (`staging_dir`, glance's
    node_staging_uri, default file:///tmp/staging/) for uploads and imports that did not finish.
    A location in another store (rbd://, swift+...) cannot be told from here: unknown.
    `verify_digest=False` checks sizes only (hashing a large image reads all of it: give the timeout room)."""
    level = RESOURCE

    def __init__(self, datadirs: Sequence[str] = ("/var/lib/glance/images",), *, staging_dir: str | None =
                 "/tmp/staging", verify_digest: bool = True, timeout: float = 60.0, name: str = "glance-file"):
        self.datadirs, self.staging_dir = tuple(datadirs), staging_dir
        self.verify_digest, self.timeout, self.name = verify_digest, timeout, name
        self._listing = _Bounded()

    def list_files(self, datadir: str) -> list[StoredFile]:
        """The regular files of one store directory, within `timeout` (an NFS store can hang). HealthError, one
        line, when it cannot be listed."""
        return self._listing.call(f"{self.name} list:{datadir}", lambda: _files(datadir), _time_left(self.timeout),
                                  f"{self.name} {datadir}: listing files")

    def _candidates(self, resource: Resource) -> list[str]:
        paths = []
        for location in resource.record.get("locations") or ():
            url = location.get("url") if isinstance(location, Mapping) else str(location)
            parsed = urllib.parse.urlparse(url or "")
            if parsed.scheme != "file":
                raise HealthError(f"image location {redact(url)!r} is not in a filesystem store")
            paths.append(urllib.parse.unquote(parsed.path))
        return paths or [os.path.join(d, resource.id) for d in self.datadirs]

    def observe(self, resource: Resource) -> Observation:
        record = resource.record
        expected = record.get("size")
        paths = [p for p in self._candidates(resource) if os.path.isfile(p)]
        staged = bool(self.staging_dir) and os.path.isfile(os.path.join(self.staging_dir, resource.id))
        stored = os.path.getsize(paths[0]) if paths else None
        digest_ok = None
        if stored is not None and stored == expected and self.verify_digest:
            digest_ok = _digest_matches(paths[0], record)
        reality = image_data_reality(stored, staged, expected, digest_ok)
        if paths:
            seen = f"{paths[0]}: {stored} bytes (recorded {expected})"
            seen += {None: "", True: ", digest matches", False: ", digest differs"}[digest_ok]
        else:
            seen = "no data in " + ", ".join(self._candidates(resource))
        if staged:
            seen += f"; staged in {self.staging_dir}"
        return Observation(reality, seen, self.name)


def _files(directory: str) -> list[StoredFile]:
    with os.scandir(directory) as entries:
        return [StoredFile(e.name, e.path, e.stat(follow_symlinks=False).st_size) for e in entries
                if e.is_file(follow_symlinks=False)]


def _digest_matches(path: str, record: Mapping[str, Any]) -> bool | None:
    algo, wanted = record.get("os_hash_algo"), record.get("os_hash_value")
    if not (algo and wanted):
        algo, wanted = "md5", record.get("checksum")
    if not wanted:
        return None
    h = hashlib.new(algo, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == wanted


# ---------------------------------------------------------------------------------------------------- the bound
class _Bounded:
    """Runs one backend call within `timeout`, as one of two ways:
    - in a daemon worker thread joined with the timeout (the default: libvirt blocks inside C, where no signal
      reaches it). One call at a time per key: while an abandoned call still hangs on an endpoint, the next call
      to it answers at once instead of adding a thread;
    - inline under crashup_lib.deadline, for backends that say `bounds_itself` (pure Python that SIGALRM
      interrupts, like pyghmi), when called on the main thread: an interrupted call stops for good, where an
      abandoned worker would go on driving pyghmi's shared session table under the next call's feet."""

    def __init__(self):
        self._hung: dict[str, tuple[threading.Thread, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, fn: Callable[[], Observation], timeout: float, what: str,
                 inline: bool = False) -> Observation:
        if inline and threading.current_thread() is threading.main_thread():
            return self._inline(fn, timeout, what)
        try:
            return self.call(key, fn, timeout, what)
        except HealthError as e:
            return Observation(UNKNOWN, str(e))

    def call(self, key: str, fn: Callable[[], Any], timeout: float, what: str) -> Any:
        """fn() in a daemon worker joined with `timeout`: its value, or HealthError (one line starting with
        `what`) when it timed out, still hangs since an earlier call, or raised."""
        with self._lock:
            previous, after = self._hung.get(key, (None, 0.0))
            if previous is not None and previous.is_alive():
                raise HealthError(f"{what}: timed out after {after:g}s and is still hanging")
            self._hung.pop(key, None)
        box: list = []

        def run():
            try:
                box.append(("ok", fn()))
            except Exception as e:          # becomes an unknown answer; BaseExceptions stay in the worker
                box.append(("error", e))

        worker = threading.Thread(target=run, name=f"health {key}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            with self._lock:
                self._hung[key] = (worker, timeout)
            raise HealthError(f"{what}: timed out after {timeout:g}s")
        if not box:
            raise HealthError(f"{what}: the call ended without an answer")
        status, value = box[0]
        if status == "error":
            raise HealthError(f"{what}: {_line(value)}")
        return value

    @staticmethod
    def _inline(fn, timeout: float, what: str) -> Observation:
        if timeout <= 0:
            return Observation(UNKNOWN, f"{what}: no time left")
        try:
            with deadline.deadline(timeout, what):
                return fn()
        except deadline.DeadlineExceeded as e:
            if e.what != what:
                raise                       # an outer deadline: the caller's
            return Observation(UNKNOWN, f"{what}: timed out after {timeout:g}s")
        except Exception as e:
            return Observation(UNKNOWN, f"{what}: {_line(e)}")


def _time_left(timeout: float) -> float:
    """A call's bound: its own timeout, lowered to answer before the nearest crashup_lib.deadline fires."""
    left = deadline.remaining()
    if left is None:
        return timeout
    return max(0.0, min(timeout, left - min(0.5, left / 10)))


# ------------------------------------------------------------------------------------------------ the collector
class Collector:
    """Asks each resource's route of backends, retrying unknown answers (see the module's docstring).

    routes: {(service, kind) or service: [backends, host-level first]}.
    """

    def __init__(self, routes: Mapping[tuple[str, str] | str, Sequence[Backend]], *, resync_count: int = 3,
                 resync_interval: float = 10.0, sleep: Callable[[float], None] = time.sleep):
        self.routes = {k: tuple(v) for k, v in routes.items()}
        self.resync_count, self.resync_interval, self.sleep = resync_count, resync_interval, sleep
        self._bounded = _Bounded()

    @classmethod
    def from_config(cls, cfg, routes, **kw) -> "Collector":
        return cls(routes, resync_count=cfg.recovery_resync_count, resync_interval=cfg.recovery_resync_interval,
                   **kw)

    def route(self, resource: Resource) -> tuple[Backend, ...]:
        found = self.routes.get((resource.service, resource.kind)) or self.routes.get(resource.service)
        if not found:
            raise HealthError(f"health: no backend for {resource.service} {resource.kind}")
        return found

    def observe(self, resource: Resource) -> Observation:
        """The reality, after up to 1 + resync_count tries while it is unknown."""
        backends = self.route(resource)
        tries = 0
        while True:
            tries += 1
            seen = self.observe_once(resource, backends)
            if seen.reality != UNKNOWN or tries > self.resync_count:
                return dataclasses.replace(seen, tries=tries)
            left = deadline.remaining()
            if left is not None and left < self.resync_interval + min(b.timeout for b in backends):
                return dataclasses.replace(seen, tries=tries, settled=False,
                                           detail=f"{seen.detail}; no time left for try {tries + 1}")
            self.sleep(self.resync_interval)

    def observe_once(self, resource: Resource, backends: Sequence[Backend] | None = None) -> Observation:
        """One pass over the route, no retry."""
        answers: list[tuple[str, str]] = []
        seen: list[Observation] = []
        for backend in backends or self.route(resource):
            obs = self._ask(backend, resource)
            answers.append((backend.level, obs.reality))
            seen.append(obs)
            if backend.level == HOST and obs.reality == HOST_DOWN:
                break                                    # nothing behind a down host answers
        reality = combine(answers)
        if reality == HOST_DOWN:
            why = next(o for (level, a), o in zip(answers, seen) if level == HOST and a == HOST_DOWN)
        else:
            why = next((o for (level, a), o in zip(answers, seen) if level == RESOURCE and a == reality), None)
        if why is None:                                   # unknown: every answer says why
            return Observation(UNKNOWN, "; ".join(f"{o.source or '?'}: {o.detail}" for o in seen),
                               ", ".join(o.source for o in seen if o.source))
        return Observation(reality, why.detail, why.source)

    def _ask(self, backend: Backend, resource: Resource) -> Observation:
        timeout = _time_left(backend.timeout)
        key = f"{backend.name}:{resource.host or ''}" if backend.level == HOST or resource.host else \
            f"{backend.name}:{resource.id}"
        obs = self._bounded(key, lambda: backend.observe(resource), timeout, f"{backend.name} about {resource}",
                            inline=getattr(backend, "bounds_itself", False))
        if not obs.source:
            obs = dataclasses.replace(obs, source=backend.name)
        allowed = HOST_LEVEL if backend.level == HOST else kind_of(resource.service, resource.kind).reality_names
        if obs.reality not in allowed:
            return Observation(UNKNOWN, f"{backend.name} answered {obs.reality!r}, not one of {', '.join(allowed)}",
                               obs.source)
        return obs
