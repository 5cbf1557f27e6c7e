"""What an isolated node does to itself: stop nova-compute, then destroy (or pause) every guest, within the action
timeout, so that its servers can safely run elsewhere.

nova-compute through crashup_lib.localservice (the same backends as the nova-compute agent: a systemd unit or the
operator's commands); the guests listed through crashup_lib.libvirt and stopped with `virsh destroy|suspend`, each
call bounded (a hung libvirtd cannot hold the guard: its virsh is killed). nova-compute goes first, so that it
cannot report or restart anything, but the guests are stopped whatever happened to it: they are what must not run
twice.
"""
from __future__ import annotations

import dataclasses
import shutil
import time

from crashup_lib import libvirt as lv
from crashup_lib import localservice, log, proc
from crashup_lib.isolation.timing import Policy
from crashup_lib.localservice import LocalService, ServiceControlError, ServiceNotInstalled

LOG = log.get("isolation")
ACTIVE = (1, 2, 3, 7)            # running, blocked, paused, pmsuspended: a qemu process that holds the disks
RUNS = (1, 2)                    # running, blocked: what pausing still has to stop


@dataclasses.dataclass(frozen=True)
class Outcome:
    nova_compute: str                                  # "stopped", or why not (one line)
    stopped: tuple[str, ...] = ()                      # uuids destroyed or paused now
    failed: tuple[tuple[str, str], ...] = ()           # (uuid, why)
    problem: str = ""                                  # libvirt could not be asked (one line)

    @property
    def complete(self) -> bool:
        return self.nova_compute == "stopped" and not self.failed and not self.problem


def targets(domains: list[lv.DomainState], policy: Policy) -> list[lv.DomainState]:
    """The domains the policy still has to stop: every active one (destroy), or every running one (pause)."""
    wanted = ACTIVE if policy is Policy.DESTROY else RUNS
    return [d for d in domains if d.state in wanted]


def isolate(service: LocalService | None, uri: str, policy: Policy, timeout: float, *, clock=time.monotonic,
            lister=lv.list_domains, runner=proc.run) -> Outcome:
    """Stop nova-compute (half the time at most), then the guests, all within `timeout` seconds."""
    end = clock() + timeout
    if service is None:
        nova_compute = "stopped"
    else:
        half = clock() + timeout / 2
        try:
            service.ensure_stopped(lambda: max(half - clock(), 0.0))
            nova_compute = "stopped"
        except ServiceControlError as e:
            nova_compute = log.one_line(str(e), 200)
            LOG.error("isolation: nova-compute: %s", nova_compute)
    return dataclasses.replace(guests(uri, policy, lambda: max(end - clock(), 0.0), lister=lister, runner=runner),
                               nova_compute=nova_compute)


def guests(uri: str, policy: Policy, remaining, *, lister=lv.list_domains, runner=proc.run) -> Outcome:
    """Destroy or pause every guest libvirt at `uri` has active, and look again: what still runs is failed."""
    verb = "destroy" if policy is Policy.DESTROY else "suspend"
    try:
        todo = targets(lister(uri, max(min(remaining(), lv.OPEN_TIMEOUT), 0.5)), policy)
    except lv.LibvirtError as e:
        return Outcome("", problem=log.one_line(str(e), 200))
    stopped, failed = [], {}
    for d in todo:
        try:
            done = runner(["virsh", "--connect", uri, verb, d.uuid], max(remaining() - 1, 0.5))
            if done.returncode == 0:
                stopped.append(d.uuid)
                LOG.warning("isolation: %s %s (%s)", verb, d.name, d.uuid)
            else:
                failed[d.uuid] = f"virsh {verb} exit {done.returncode}: {done.last_line()}"
        except proc.ProcError as e:
            failed[d.uuid] = str(e)
    try:
        left = {d.uuid for d in targets(lister(uri, max(min(remaining(), lv.OPEN_TIMEOUT), 0.5)), policy)}
    except lv.LibvirtError as e:
        return Outcome("", tuple(stopped), tuple(failed.items()), log.one_line(str(e), 200))
    for uuid in left:
        failed.setdefault(uuid, f"still active after virsh {verb}")
    stopped = [u for u in stopped if u not in left]
    for uuid, why in failed.items():
        LOG.error("isolation: guest %s: %s", uuid, why)
    return Outcome("", tuple(stopped), tuple(failed.items()))


def missing(service: LocalService | None, *, which=shutil.which) -> str:
    """What the guard would lack to act, checked without running anything (one line), or "": virsh on PATH and
    nova-compute's stop and status commands installed."""
    if which("virsh") is None:
        return "virsh not found on PATH: the guests could not be stopped"
    try:
        if service is not None:
            service.check_installed()
    except ServiceNotInstalled as e:
        return f"nova-compute could not be stopped: {e}"
    return ""


def ready(service: LocalService | None, uri: str, timeout: float, *, lister=lv.list_domains,
          which=shutil.which) -> str:
    """missing(), then whether libvirt at `uri` lists its domains within `timeout` seconds: what stops the guard
    from acting (one line), or "". A guard that cannot act must not start: the fallback fencing level counts on it."""
    why = missing(service, which=which)
    if why:
        return why
    try:
        lister(uri, timeout)
    except lv.LibvirtError as e:
        return f"the guests could not be listed: {log.one_line(str(e), 200)}"
    return ""


def nova_compute(unit: str, stop_command: str = "", status_command: str = "", *, host: str,
                 node: str) -> LocalService:
    """How this node's nova-compute is stopped: the nova-compute agent's backends (its systemd unit, or the
    operator's stop and status commands, {host} and {node} filled in); ValueError (one line) for a bad command."""
    if not stop_command and not status_command:
        return localservice.systemd(unit)
    if not (stop_command and status_command):
        raise ValueError("nova-compute's stop_command and status_command go together")
    stop = localservice.command_argv(stop_command, host=host, node=node)
    return LocalService("nova-compute", stop, stop, localservice.command_argv(status_command, host=host, node=node))
