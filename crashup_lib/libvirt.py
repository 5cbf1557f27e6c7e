"""libvirt, as crashup reads it: the module (imported on first use, its stderr error handler silenced), libvirt's
stable numbers (domain states and reasons, event ids and details: a stable ABI, so pure code needs no libvirt import),
and `Watch`: one read-only connection kept open to a host's libvirtd, whose domain events arrive as typed
`GuestEvent`s and whose loss is noticed (close callback, keepalive) and followed by a reconnect with backoff.

Events come through libvirt's own event loop (virEventRegisterDefaultImpl, registered once per process, run by one
thread), never by polling. Every reconnect calls `on_connected(watch)` first, so the caller reconciles what happened
while it was not listening (`domains()` lists each domain's state and reason). Callbacks run in the loop thread and
must not block: hand the work to another thread.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

# virDomainState, and the reasons a domain gives for its state (virDomain<State>Reason)
VIR_DOMAIN_NOSTATE, VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED, VIR_DOMAIN_PAUSED, VIR_DOMAIN_SHUTDOWN, \
    VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_CRASHED, VIR_DOMAIN_PMSUSPENDED = range(8)
LIBVIRT_STATE_NAMES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")
VIR_DOMAIN_SHUTOFF_SHUTDOWN, VIR_DOMAIN_SHUTOFF_DESTROYED, VIR_DOMAIN_SHUTOFF_CRASHED = 1, 2, 3
VIR_DOMAIN_SHUTOFF_FAILED = 6
VIR_DOMAIN_CRASHED_PANICKED = 1
VIR_DOMAIN_PAUSED_IOERROR, VIR_DOMAIN_PAUSED_WATCHDOG, VIR_DOMAIN_PAUSED_CRASHED = 5, 6, 10
VIR_ERR_INVALID_ARG = 8
VIR_ERR_NO_DOMAIN = 42

# event ids (virDomainEventID) and the lifecycle events with their details
EVENT_LIFECYCLE, EVENT_REBOOT, EVENT_WATCHDOG, EVENT_IO_ERROR_REASON = 0, 1, 3, 6
LIFECYCLE_NAMES = ("defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended",
                   "crashed")
EVENT_STARTED, EVENT_SUSPENDED, EVENT_RESUMED, EVENT_STOPPED, EVENT_CRASHED = 2, 3, 4, 5, 8
STOPPED_SHUTDOWN, STOPPED_DESTROYED, STOPPED_CRASHED, STOPPED_FAILED = 0, 1, 2, 5
SUSPENDED_IOERROR, SUSPENDED_WATCHDOG = 2, 3
CRASHED_PANICKED = 0
WATCHDOG_ACTIONS = ("none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi")
IO_ERROR_ACTIONS = ("none", "pause", "report")

BACKOFF = (0.5, 10.0)        # seconds: the first pause before reconnecting, and the longest
KEEPALIVE = (5, 3)           # a ping every 5 s, 3 unanswered: a hung libvirtd is a lost connection within ~20 s
OPEN_TIMEOUT = 10.0          # seconds: virConnectOpen to a peer that accepts and never answers blocks forever


class LibvirtError(RuntimeError):
    """libvirt is missing or a call failed; one line."""


def libvirt_module():
    """libvirt-python, imported on first use, with its default error handler (a line on stderr per error)
    silenced: errors come back as exceptions, which become one-line details."""
    try:
        import libvirt
    except ImportError:
        raise LibvirtError("libvirt-python is not installed (pip install 'crashup[libvirt]')") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def error_line(e: Exception) -> str:
    """A libvirt error as one line (libvirt's messages may hold several)."""
    return " ".join(str(e).split()) or type(e).__name__


def state_name(state: int) -> str:
    return LIBVIRT_STATE_NAMES[state] if 0 <= state < len(LIBVIRT_STATE_NAMES) else f"state-{state}"


@dataclasses.dataclass(frozen=True)
class GuestEvent:
    """One domain event as libvirt reported it: `event_id` EVENT_LIFECYCLE (`code` the lifecycle event, `detail`
    its detail), EVENT_WATCHDOG (`code` the watchdog's action), EVENT_IO_ERROR_REASON (`code` the action, `reason`
    libvirt's text, e.g. enospc), EVENT_REBOOT. `at`: time.time() when it reached crashup."""
    uuid: str
    name: str
    event_id: int
    code: int = 0
    detail: int = 0
    reason: str = ""
    domain_id: int = -1
    at: float = 0.0


@dataclasses.dataclass(frozen=True)
class DomainState:
    uuid: str
    name: str
    state: int
    reason: int
    domain_id: int = -1          # the running qemu's id: a new one at every start (-1 when shut off)


class Watch:
    """A read-only connection to `uri`, kept open by a supervisor thread: on_event(GuestEvent) for each domain
    event, on_connected(watch) after every (re)connect, before events are trusted again; a lost connection is
    reopened after BACKOFF (doubling). `opener(uri)` opens a connection (default: libvirt.openReadOnly), so tests
    give it a fake. stop() ends it within `timeout`."""

    def __init__(self, uri: str, on_event: Callable[[GuestEvent], None],
                 on_connected: Callable[["Watch"], None], *, opener=None, backoff: tuple[float, float] = BACKOFF,
                 on_problem: Callable[[str], None] = lambda line: None, open_timeout: float = OPEN_TIMEOUT):
        self.uri = uri
        self.open_timeout = open_timeout
        self._hung: threading.Thread | None = None
        self.on_event, self.on_connected, self.on_problem = on_event, on_connected, on_problem
        self.backoff = backoff
        self._opener = opener
        self._lv = None
        self._conn = None
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.connects = 0

    # -- the connection ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._opener is None:
            self._lv = libvirt_module()
            _start_event_loop(self._lv)
            self._opener = self._lv.openReadOnly
        self._thread = threading.Thread(target=self._supervise, name="libvirt-watch", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        pause = self.backoff[0]
        while not self._stopping.is_set():
            try:
                self._connect()
                pause = self.backoff[0]
            except Exception as e:                     # noqa: BLE001 - libvirtd down or refusing: try again
                self.on_problem(f"libvirt {self.uri}: {error_line(e)}; connecting again in {pause:g}s")
                self._drop()
                self._stopping.wait(pause)
                pause = min(pause * 2, self.backoff[1])
                continue
            while not self._stopping.is_set() and not self._lost.wait(0.5):
                pass
            if not self._stopping.is_set():
                self.on_problem(f"libvirt {self.uri}: connection lost; connecting again")
                self._drop()
                self._stopping.wait(self.backoff[0])

    def _connect(self) -> None:
        self._lost.clear()
        conn = self._open()
        self._conn = conn
        try:
            conn.registerCloseCallback(lambda _c, _reason, _o: self._lost.set(), None)
        except Exception:                              # noqa: BLE001 - drivers without one (test://): keepalive
            pass
        try:
            conn.setKeepAlive(*KEEPALIVE)
        except Exception:                              # noqa: BLE001 - local drivers have no keepalive
            pass
        conn.domainEventRegisterAny(None, EVENT_LIFECYCLE, self._lifecycle, None)
        conn.domainEventRegisterAny(None, EVENT_REBOOT, self._reboot, None)
        conn.domainEventRegisterAny(None, EVENT_WATCHDOG, self._watchdog, None)
        conn.domainEventRegisterAny(None, EVENT_IO_ERROR_REASON, self._io_error, None)
        self.connects += 1
        self.on_connected(self)                        # reconcile what happened while we were not listening
        self.connected.set()

    def _open(self):
        """The opener within open_timeout (see bounded); one that hangs is abandoned, and no other is started while
        it still hangs."""
        if self._hung is not None and self._hung.is_alive():
            raise LibvirtError(f"an earlier open of {self.uri} still hangs")
        result, worker = _in_thread(lambda: self._opener(self.uri), self.open_timeout, "libvirt-open")
        if worker.is_alive():
            self._hung = worker
            raise LibvirtError(f"no answer within {self.open_timeout:g}s")
        return result()

    def _drop(self) -> None:
        self.connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:                          # noqa: BLE001 - already gone
                pass

    def lost(self) -> None:
        """Treat the connection as lost (a call on it failed): the supervisor reconnects and reconciles."""
        self._lost.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._lost.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._drop()

    # -- reading -----------------------------------------------------------------------------------------------------
    def domains(self) -> list[DomainState]:
        """Every domain of the host with its state and reason; LibvirtError (and the connection marked lost) when
        it cannot be listed."""
        conn = self._conn
        if conn is None:
            raise LibvirtError(f"libvirt {self.uri}: not connected")
        try:
            return read_domains(conn)
        except Exception as e:                         # noqa: BLE001
            self.lost()
            raise LibvirtError(f"libvirt {self.uri}: listing domains: {error_line(e)}") from None

    # -- callbacks (libvirt's event loop thread) --------------------------------------------------------------------
    def _emit(self, domain, event_id: int, code: int = 0, detail: int = 0, reason: str = "") -> None:
        try:
            event = GuestEvent(domain.UUIDString(), domain.name(), event_id, int(code), int(detail), str(reason),
                               _domain_id(domain), time.time())
        except Exception as e:                         # noqa: BLE001 - the domain went away meanwhile
            self.on_problem(f"libvirt {self.uri}: event {event_id} for a domain gone: {error_line(e)}")
            return
        try:
            self.on_event(event)
        except Exception as e:                         # noqa: BLE001 - never break libvirt's loop
            self.on_problem(f"libvirt {self.uri}: handling {event}: {type(e).__name__}: {e}")

    def _lifecycle(self, _conn, domain, event, detail, _opaque):
        self._emit(domain, EVENT_LIFECYCLE, event, detail)

    def _reboot(self, _conn, domain, _opaque):
        self._emit(domain, EVENT_REBOOT)

    def _watchdog(self, _conn, domain, action, _opaque):
        self._emit(domain, EVENT_WATCHDOG, action)

    def _io_error(self, _conn, domain, _src, _dev, action, reason, _opaque):
        self._emit(domain, EVENT_IO_ERROR_REASON, action, reason=reason)


def read_domains(conn) -> list[DomainState]:
    """Every domain of an open connection with its state and reason (one gone since the list was read: skipped)."""
    found = []
    for domain in conn.listAllDomains(0):
        try:
            state, reason = domain.state()
            found.append(DomainState(domain.UUIDString(), domain.name(), state, reason, _domain_id(domain)))
        except Exception as e:                         # noqa: BLE001 - re-raised unless the domain is gone
            if _code(e) != VIR_ERR_NO_DOMAIN:
                raise
    return found


def list_domains(uri: str, timeout: float = OPEN_TIMEOUT, opener=None) -> list[DomainState]:
    """Open `uri` read-only, list its domains, close: within `timeout` (bounded), LibvirtError (one line) else."""
    def run():
        conn = (opener or libvirt_module().openReadOnly)(uri)
        try:
            return read_domains(conn)
        finally:
            conn.close()
    result, worker = _in_thread(run, timeout, "libvirt-list")
    if worker.is_alive():
        raise LibvirtError(f"libvirt {uri}: no answer within {timeout:g}s")
    try:
        return result()
    except LibvirtError:
        raise
    except Exception as e:                             # noqa: BLE001 - one line
        raise LibvirtError(f"libvirt {uri}: {error_line(e)}") from None


def _in_thread(fn, timeout: float, name: str):
    """fn() in a daemon thread joined with `timeout`: libvirt blocks inside C (virConnectOpen to a peer that accepts
    and never answers blocks forever), where no signal gets it out, so a call that hangs is abandoned. Returns
    (result, thread): result() gives fn's value or raises its exception; the thread still alive means it hangs."""
    done: dict = {}

    def run():
        try:
            done["value"] = fn()
        except BaseException as e:                     # noqa: BLE001 - handed to the caller
            done["error"] = e
    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(timeout)

    def result():
        if "error" in done:
            raise done["error"]
        return done["value"]
    return result, worker


def _code(e: Exception) -> int | None:
    get = getattr(e, "get_error_code", None)
    return get() if callable(get) else None


def _domain_id(domain) -> int:
    try:
        return int(domain.ID())
    except Exception:                                  # noqa: BLE001 - shut off: no id
        return -1


_LOOP_LOCK = threading.Lock()
_LOOP_STARTED = False


def _start_event_loop(lv) -> None:
    """libvirt's default event loop, registered once per process (before any open) and run by one daemon thread."""
    global _LOOP_STARTED
    with _LOOP_LOCK:
        if _LOOP_STARTED:
            return
        lv.virEventRegisterDefaultImpl()

        def run():
            while True:
                lv.virEventRunDefaultImpl()
        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _LOOP_STARTED = True
