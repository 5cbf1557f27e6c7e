"""When and how a fenced compute host's nova-compute comes back: the decisions (pure), and the loop that drives them
(`Rejoin`, the compute-node agent's start, its collaborators injected so that every path has a fast unit test).

No VM may run twice: while the host's recovery request is open, its guests are being evacuated elsewhere, so
nova-compute stays down. Once the request is closed, nova enforces an order (notes/nova.md): nova-compute starts
first (its start-up destroys the evacuated guests and marks their migrations completed), and only then may
forced-down be cleared (nova answers 400 before that: asked again every NOVA_POLL); then the service is enabled, if
crashup disabled it. Only crashup's own marks are undone: forced-down without a crashup request, a service an
operator disabled, or one `crashup drain` disabled (DRAIN_REASON: the maintenance ends with `crashup undrain`), stay.

The OpenStack clients are never imported here: the caller passes `connect`, which builds the nova client when it is
first needed (after nova-compute was started on a fenced host, so they load while it boots).
"""
from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import time
from typing import Any, Callable, Mapping

from crashup_lib import hostmap, pacemaker, watchdog
from crashup_lib.localservice import LocalService, ServiceControlError, status_timeout
from crashup_lib.nova import NovaBadRequest, NovaError, NovaNotFound, Service
from crashup_lib.pacemaker import RecoveryRequest

#: disabled_reason prefix of services crashup disabled (and may enable again)
DISABLED_BY = "crashup"
#: the disabled reason of `crashup drain` (crashup_lib.maintenance): the operator's maintenance, which only
#: `crashup undrain` ends; a (re)start of nova-compute during the maintenance leaves it disabled
DRAIN_REASON = "crashup drain"
#: crashup drain's mark on a server it stopped (= the host): undrain starts it; the guest monitor never does
DRAIN_STOPPED = "crashup:drain_stopped"

REQUEST_POLL = 1.0              # seconds between reads of the recovery request while it is open
#: longest a start waits for an open recovery: the clone's location rule on crashup-recovery-state normally keeps
#: Pacemaker from starting it at all; a start blocking longer would hold up the cluster's next transition (another
#: node's fencing among them), so it fails instead and Pacemaker retries once the failure expires
HOLD_WAIT = 20.0
NOVA_POLL = 0.25                # seconds between reads of the service while it comes up


class Step(str, enum.Enum):
    """What to do next once nova-compute was started (next_step)."""
    WAIT = "wait"                            # poll again
    CLEAR_FORCED_DOWN = "clear-forced-down"
    ENABLE = "enable"
    UP = "up"                                # done: heartbeat fresh, not forced down, enabled (or someone else's)
    REFUSE = "refuse"                        # a state crashup must not undo


WAIT, CLEAR_FORCED_DOWN, ENABLE, UP, REFUSE = (Step.WAIT, Step.CLEAR_FORCED_DOWN, Step.ENABLE, Step.UP,
                                               Step.REFUSE)


def hold_reason(request) -> str | None:
    """Why nova-compute must stay down (the host's recovery is still open), or None when it may start."""
    if request is None or not request.open:
        return None
    note = f": {request.note}" if request.note else ""
    return f"recovery of {request.node} is still {request.state} ({request.mode} mode){note}"


def next_step(service, request, heartbeat_before: str | None) -> tuple[Step, str]:
    """After nova-compute was started: what to do next, and why. `service` is nova's record of the host's
    nova-compute (None until it registers), `heartbeat_before` its updated_at read before the start (a fresh
    heartbeat must differ from it)."""
    if service is None:
        return WAIT, "nova-compute has not registered its service yet"
    if service.forced_down:
        if request is None:
            return REFUSE, (f"the nova-compute service of {service.host} is forced down, but crashup never fenced "
                            f"this node: clear it yourself (openstack compute service set --up {service.host} "
                            "nova-compute)")
        return CLEAR_FORCED_DOWN, "forced down by the fencing of this node, whose recovery is finished"
    if service.state != "up" or (heartbeat_before is not None and service.updated_at == heartbeat_before):
        return WAIT, "no fresh heartbeat from nova-compute yet"
    if service.status == "disabled" and service.disabled_reason == DRAIN_REASON:
        return UP, f"heartbeat fresh; left disabled ({DRAIN_REASON}: crashup undrain enables it)"
    if service.status == "disabled" and (service.disabled_reason or "").startswith(DISABLED_BY):
        return ENABLE, f"disabled by crashup ({service.disabled_reason})"
    return UP, "heartbeat fresh" + ("" if service.status == "enabled" else
                                    f"; left disabled ({service.disabled_reason or 'no reason given'})")


# --- the loop ---------------------------------------------------------------------------------------------------------

class RejoinError(Exception):
    """nova-compute is not back; one line (the start's exit reason)."""


class Held(RejoinError):
    """The recovery is still open, or its request cannot be read: nova-compute stays down."""


class Refused(RejoinError):
    """A mark crashup must not undo (forced down, but crashup never fenced this node)."""


class Exited(RejoinError):
    """nova-compute exited while nova was still to accept it."""


class NotUp(RejoinError):
    """The start's time ran out before nova accepted nova-compute."""


class Phase(enum.Enum):
    STARTING = "starting"        # never fenced: nova says first whether nova-compute may start; not started yet
    JOINING = "joining"          # nova-compute started: waiting for nova to accept it


class Pace(enum.Enum):
    """How soon the next step comes."""
    NOW = "now"                  # at once: something changed (started, forced-down cleared, enabled)
    POLL = "poll"                # after NOVA_POLL (nova refused to clear forced-down yet)
    CHECK = "check"              # after NOVA_POLL, once the local nova-compute is seen still running
    UP = "up"                    # no next step: nova accepted it


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a rejoin stands; each step makes a new one."""
    phase: Phase
    request: RecoveryRequest | None          # closed, or None: crashup never fenced this node
    service: LocalService | None = None      # this node's nova-compute, once its host is known
    nova: Any = None                         # the compute API client, once built
    host: str | None = None                  # the nova host, as nova lists it (then `service` is set too)
    before: str | None = None                # the service's updated_at before nova-compute booted
    last: str = "nova did not answer"        # why it is not up yet (the reason once up)


@dataclasses.dataclass
class Rejoin:
    """Brings this node's nova-compute back (the compute-node agent's start): waits while its recovery is open,
    starts it, then follows nova's order until nova accepts it.

    node: the Pacemaker node; hint: its nova host as known without nova (the nova_host parameter, the cache,
    host_map), used to start nova-compute before nova is asked; nova_host: the parameter ("" unless set; when set it
    is taken as is), host_map: crashup.conf's, to find the host in nova's list (hostmap.resolve);
    local(host) -> the node's nova-compute (LocalService); connect() -> a nova client (service(host), services(),
    force_down(host, down), enable(host); NovaError); remaining() -> seconds left of the start's timeout;
    read_request(node, timeout=...) -> the node's RecoveryRequest or None (PacemakerError when the CIB cannot be
    read); cache_path: the watchdog's cache, given its first verdict once nova accepted nova-compute."""
    node: str
    hint: str
    local: Callable[[str], LocalService]
    connect: Callable[[], Any]
    remaining: Callable[[], float]
    log: Any = logging.getLogger("crashup.rejoin")
    cache_path: str | None = None
    nova_host: str = ""
    host_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    read_request: Callable[..., RecoveryRequest | None] = pacemaker.request
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], float] = time.time

    def run(self) -> str:
        """Bring nova-compute back and say why it counts as up. Raises a RejoinError (one line); the local
        service's ServiceControlError (ServiceNotInstalled) when its status cannot be read; hostmap.HostMapError
        when nova's list does not tell this node's host."""
        request = self.wait_for_recovery()
        if request is None:
            progress = Progress(Phase.STARTING, None)
        else:
            # The rejoin after crashup's own fencing: nothing to refuse (the forced-down is crashup's), so
            # nova-compute starts now and the OpenStack clients load while it boots (its first heartbeat takes
            # seconds anyway).
            service = self.local(self.hint)
            if not self._running(service):
                self._start(service, "nova-compute started (recovery of %s %s); waiting for nova to accept it",
                            request.node, request.state)
            progress = Progress(Phase.JOINING, request, service=service)
        while self.remaining() > 2:
            progress, pace = self.advance(progress)
            if pace is Pace.UP:
                return progress.last
            if pace is Pace.CHECK and progress.phase is Phase.JOINING and not self._running(progress.service):
                raise Exited(f"nova-compute of {progress.host or self.hint} exited during its start "
                             f"({progress.last})")
            if pace is not Pace.NOW:
                self.sleep(NOVA_POLL)
        raise NotUp(f"nova-compute of {progress.host or self.node} not up before the start timeout: {progress.last}")

    def wait_for_recovery(self) -> RecoveryRequest | None:
        """The node's recovery request once it is closed (None: never fenced). Held when the start timeout is about
        to run out, or HOLD_WAIT has passed, with the request still open or the CIB unreadable: starting blind could
        run VMs twice."""
        give_up = self.clock() + HOLD_WAIT
        for tries in itertools.count():
            try:
                request = self.read_request(self.node, timeout=max(min(15.0, self.remaining() - 3), 1.0))
                hold = hold_reason(request)
            except pacemaker.PacemakerError as e:
                request, hold = None, f"cannot read the recovery request of {self.node} from the CIB: {e}"
            if hold is None:
                return request
            if self.remaining() < REQUEST_POLL + 5 or self.clock() > give_up:
                raise Held(f"{hold}; nova-compute stays down (Pacemaker retries the start once the failure expires)")
            if tries == 0:
                self.log.info("%s: nova-compute waits", hold)
            self.sleep(REQUEST_POLL)

    def advance(self, p: Progress) -> tuple[Progress, Pace]:
        """One step towards nova's acceptance: the new Progress, and when the next step comes."""
        try:
            if p.nova is None:
                p = dataclasses.replace(p, nova=self.connect())
            if p.host is None:
                host = self.nova_host or hostmap.resolve(self.node, [s.host for s in p.nova.services()],
                                                         self.host_map)
                p = dataclasses.replace(p, host=host, service=p.service or self.local(host))
            try:
                current = p.nova.service(p.host)
            except NovaNotFound:
                current = None
            if p.phase is Phase.STARTING:
                return self._start_unless_refused(p, current), Pace.NOW
            if p.before is None and current is not None and current.forced_down:
                p = dataclasses.replace(p, before=current.updated_at)   # a heartbeat must follow this one
            step, why = next_step(current, p.request, p.before)
            if step is UP:
                if self.cache_path:
                    watchdog.write_cache(self.cache_path, host=p.host, checked_at=self.now(), healthy=True,
                                         reason=why)
                self.log.info("nova-compute of %s up: %s", p.host, why)
                return dataclasses.replace(p, last=why), Pace.UP
            if step is REFUSE:
                raise Refused(why)
            if step is CLEAR_FORCED_DOWN:
                try:
                    p.nova.force_down(p.host, False)
                except NovaBadRequest as e:          # nova-compute has not cleaned up the evacuated guests yet
                    return dataclasses.replace(p, last=f"nova refuses to clear forced-down yet: "
                                                       f"{e.nova_message or e}"), Pace.POLL
                self.log.info("%s: forced-down cleared (%s)", p.host, why)
                return p, Pace.NOW
            if step is ENABLE:
                p.nova.enable(p.host)
                self.log.info("%s: service enabled (%s)", p.host, why)
                return p, Pace.NOW
            return dataclasses.replace(p, last=why), Pace.CHECK
        except NovaError as e:
            return dataclasses.replace(p, last=str(e)), Pace.CHECK

    def _start_unless_refused(self, p: Progress, current: Service | None) -> Progress:
        """Never fenced: a forced-down crashup did not set is refused before anything starts; else nova-compute
        starts unless it runs (then a heartbeat newer than the one nova has now must come)."""
        step, why = next_step(current, None, None)
        if step is REFUSE:
            raise Refused(why)
        running = self._running(p.service)
        if not running:
            self._start(p.service, "nova-compute of %s started; waiting for nova to accept it", p.host)
        return dataclasses.replace(p, phase=Phase.JOINING,
                                   before=current.updated_at if current is not None and not running else None)

    def _running(self, service: LocalService) -> bool:
        return service.running(status_timeout(self.remaining()))

    def _start(self, service: LocalService, message: str, *args) -> None:
        try:
            service.start(max(self.remaining() - 2, 1.0))
        except ServiceControlError as e:             # not installed included: the start failed (rc 1)
            raise RejoinError(str(e)) from None
        self.log.info(message, *args)
