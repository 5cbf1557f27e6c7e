"""The compute-node agent's start as a library loop (crashup_lib.rejoin.Rejoin), every path on a fake clock: the
CIB (a request read), this node's nova-compute (a LocalService) and nova (the client's service/services/force_down/
enable) are fakes of one small world, in which nova behaves as notes/nova.md says: nova-compute's first heartbeat
comes `boot` seconds after its start, and clearing forced-down is refused (400) until it has cleaned up the
evacuated guests, `cleanup` seconds after its start. The real path is tests/e2e/test_compute_agent.py (lab)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from crashup_lib import hostmap, localservice, pacemaker, rejoin, watchdog
from crashup_lib.nova import NovaBadRequest, NovaNotFound, NovaUnavailable, Service
from crashup_lib.pacemaker import RecoveryRequest

NODE = "compute1"
REPORT_INTERVAL = 1.0            # nova-compute's heartbeat period in this world
SERVICE_DOWN_TIME = 60.0         # nova's: a service is up while its last heartbeat is younger
OLD_BEAT = -10.0                 # the last heartbeat the host sent before it failed


def request(state="done", note=""):
    return RecoveryRequest(node=NODE, state=state, mode="auto", fenced_at=1.0, updated_at=2.0, note=note)


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg, *args):
        self.lines.append(msg % args)

    warning = info


class World:
    """One compute node and nova on a fake clock: `t` advances only by sleeping; everything done is in `calls`."""

    def __init__(self, *, requests=(None,), fenced=True, running=False, boot=2.0, cleanup=3.0, timeout=300.0,
                 registered=True, status="enabled", reason=None, others=("compute2",), host=NODE):
        self.t = 0.0
        self.deadline = timeout
        self.requests = list(requests)           # each CIB read answers the next (the last repeats); raised if an error
        self.running = running
        self.started_at = 0.0 if running else None
        self.boot, self.cleanup = boot, cleanup
        self.registered = registered
        self.forced_down = fenced
        self.status, self.reason = status, reason
        self.others = others
        self.host = host
        self.calls: list[tuple] = []
        self.sleeps: list[float] = []
        self.exits_at: float | None = None       # nova-compute dies at this time
        self.nova_down_until = 0.0               # nova answers nothing before
        self.connect_failures = 0                # connect() raises this many times first
        self.services_failures = 0               # services() raises this many times first
        self.start_fails: Exception | None = None
        self.status_fails: Exception | None = None

    # the collaborators -----------------------------------------------------------------------------------------
    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds

    def remaining(self):
        return max(self.deadline - self.t, 0.0)

    def read_request(self, node, timeout):
        assert node == NODE and 1.0 <= timeout <= 15.0
        self.calls.append(("cib",))
        answer = self.requests.pop(0) if len(self.requests) > 1 else self.requests[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def local(self, host):
        self.calls.append(("local", host))
        return LocalNovaCompute(self)

    def connect(self):
        self.calls.append(("connect",))
        if self.connect_failures:
            self.connect_failures -= 1
            raise NovaUnavailable("config", "cloud 'c'", "cannot connect to http://nova:8774: refused")
        return FakeNova(self)

    # nova's view -----------------------------------------------------------------------------------------------
    def alive(self):
        if self.exits_at is not None and self.t >= self.exits_at:
            self.running = False
        return self.running

    def last_beat(self) -> float:
        """A heartbeat every REPORT_INTERVAL from `boot` seconds after the start; before, the last one the host
        sent before it failed (OLD_BEAT)."""
        if self.alive() and self.t >= self.started_at + self.boot:
            first = self.started_at + self.boot
            return first + (self.t - first) // REPORT_INTERVAL * REPORT_INTERVAL
        return OLD_BEAT

    def record(self) -> Service:
        """nova's record: up while the last heartbeat is younger than SERVICE_DOWN_TIME, unless forced down."""
        beat = self.last_beat()
        up = self.t - beat < SERVICE_DOWN_TIME and not self.forced_down
        return Service(id="svc-1", host=self.host, binary="nova-compute", state="up" if up else "down",
                       status=self.status, forced_down=self.forced_down, disabled_reason=self.reason,
                       updated_at=f"beat@{beat:g}")

    def rejoin(self, **overrides) -> rejoin.Rejoin:
        self.log = Log()
        fields = dict(hint=self.host, local=self.local, connect=self.connect, remaining=self.remaining, log=self.log,
                      read_request=self.read_request, sleep=self.sleep, clock=lambda: self.t, now=lambda: 1000 + self.t)
        fields.update(overrides)
        return rejoin.Rejoin(NODE, **fields)


class LocalNovaCompute(localservice.LocalService):
    def __init__(self, world):
        super().__init__("nova-compute", ["start"], ["stop"], ["status"])
        self.world = world

    def running(self, timeout):
        assert 0.5 <= timeout <= 10.0
        if self.world.status_fails:
            raise self.world.status_fails
        return self.world.alive()

    def start(self, timeout):
        self.world.calls.append(("start",))
        if self.world.start_fails:
            raise self.world.start_fails
        self.world.running, self.world.started_at = True, self.world.t


class FakeNova:
    def __init__(self, world):
        self.world = world

    def _answer(self, call, target=None):
        if self.world.t < self.world.nova_down_until:
            raise NovaUnavailable(call, target, "no answer within 2s from http://nova:8774")

    def services(self):
        self._answer("services")
        self.world.calls.append(("services",))
        if self.world.services_failures:
            self.world.services_failures -= 1
            raise NovaUnavailable("services", None, "HTTP 503: try later")
        mine = [self.world.record()] if self.world.registered else []
        return mine + [dataclasses.replace(self.world.record(), host=h, state="up", forced_down=False)
                       for h in self.world.others]

    def service(self, host):
        self._answer("service", host)
        assert host == self.world.host
        if not self.world.registered:
            raise NovaNotFound("service", host, f"no nova-compute service on host {host!r}")
        return self.world.record()

    def force_down(self, host, down):
        self._answer("force_up", host)
        assert host == self.world.host and down is False
        self.world.calls.append(("force_down", host, down))
        w = self.world
        if not w.alive() or w.t < w.started_at + w.cleanup:
            raise NovaBadRequest("force_up", host, "HTTP 400: Cannot clear forced_down", status=400,
                                 nova_message="Cannot clear forced_down: 2 evacuations not completed")
        w.forced_down = False

    def enable(self, host):
        self._answer("enable", host)
        self.world.calls.append(("enable", host))
        self.world.status, self.world.reason = "enabled", None


def actions(world):
    """What changed anything, in order."""
    return [c for c in world.calls if c[0] in ("start", "force_down", "enable")]


# --- the hold -------------------------------------------------------------------------------------------------------

def test_an_open_recovery_holds_the_start_until_it_closes():
    world = World(requests=[request("pending"), request("recovering", "2 of 9"), request("recovering"), request()])
    why = world.rejoin().run()
    assert why == "heartbeat fresh"
    assert world.calls[:4] == [("cib",)] * 4 and world.sleeps[:3] == [rejoin.REQUEST_POLL] * 3
    assert actions(world)[0] == ("start",) and world.started_at == 3.0      # only after the request closed
    assert [line for line in world.log.lines if "waits" in line] == \
        ["recovery of compute1 is still pending (auto mode): nova-compute waits"]     # said once


def test_a_recovery_still_open_after_hold_wait_fails_the_start_and_starts_nothing():
    world = World(requests=[request("recovering", "2 of 9 evacuated")])
    with pytest.raises(rejoin.Held) as e:
        world.rejoin().run()
    assert str(e.value) == ("recovery of compute1 is still recovering (auto mode): 2 of 9 evacuated; nova-compute "
                            "stays down (Pacemaker retries the start once the failure expires)")
    assert world.t == pytest.approx(rejoin.HOLD_WAIT + rejoin.REQUEST_POLL)
    assert set(world.sleeps) == {rejoin.REQUEST_POLL} and actions(world) == []
    assert ("connect",) not in world.calls                     # nova is not even asked


def test_a_short_start_timeout_gives_up_before_pacemaker_kills_it():
    world = World(requests=[request("pending")], timeout=9.0)
    with pytest.raises(rejoin.Held):
        world.rejoin().run()
    assert world.remaining() >= 5 and world.t == 4.0 and actions(world) == []


def test_an_unreadable_cib_is_a_hold_never_a_blind_start():
    world = World(requests=[pacemaker.PacemakerError("cibadmin --query --scope failed (exit 102): no CIB")])
    with pytest.raises(rejoin.Held, match="^cannot read the recovery request of compute1 from the CIB: cibadmin "):
        world.rejoin().run()
    assert actions(world) == []


def test_a_cib_read_that_fails_once_is_read_again():
    world = World(requests=[pacemaker.PacemakerError("Timed out"), request()])
    assert world.rejoin().run() == "heartbeat fresh"
    assert world.sleeps[0] == rejoin.REQUEST_POLL and actions(world)[0] == ("start",)


# --- after crashup's fencing: nova's order ----------------------------------------------------------------------------

def test_after_fencing_start_then_clear_forced_down_once_nova_accepts_then_enable(tmp_path):
    world = World(requests=[request()], boot=1.0, cleanup=2.0, status="disabled", reason="crashup: host failed")
    cache = tmp_path / "nova-compute-compute1.json"
    assert world.rejoin(cache_path=str(cache)).run() == "heartbeat fresh"
    # nova-compute first, forced-down cleared (400s while the guests are cleaned up), enabled last
    assert actions(world)[0] == ("start",) and actions(world)[-2:] == [("force_down", NODE, False), ("enable", NODE)]
    refused = [c for c in actions(world) if c[0] == "force_down"][:-1]
    assert refused and all(s == rejoin.NOVA_POLL for s in world.sleeps)
    assert world.t >= world.cleanup and not world.forced_down and world.status == "enabled"
    assert ("connect",) in world.calls and world.calls.index(("connect",)) > world.calls.index(("start",))
    assert [line for line in world.log.lines if "cleared" in line or "enabled" in line] == [
        "compute1: forced-down cleared (forced down by the fencing of this node, whose recovery is finished)",
        "compute1: service enabled (disabled by crashup (crashup: host failed))"]
    saved = json.loads(cache.read_text())
    assert saved == {"host": NODE, "checked_at": 1000 + world.t, "healthy": True, "reason": "heartbeat fresh"}
    assert watchdog.fresh(watchdog.read_cache(str(cache)), 30, now=1000 + world.t)


def test_400_until_nova_compute_cleaned_up_is_retried_every_nova_poll():
    world = World(requests=[request()], boot=0.0, cleanup=2.0)
    progress = rejoin.Progress(rejoin.Phase.JOINING, request(), service=LocalNovaCompute(world))
    job = world.rejoin()
    LocalNovaCompute(world).start(5)
    progress, pace = job.advance(progress)
    assert pace is rejoin.Pace.POLL and world.forced_down
    assert progress.last == "nova refuses to clear forced-down yet: Cannot clear forced_down: 2 evacuations not " \
                            "completed"
    assert progress.host == NODE and progress.before == "beat@0"          # the heartbeat read while it booted
    world.t = 2.0
    progress, pace = job.advance(progress)
    assert pace is rejoin.Pace.NOW and not world.forced_down
    progress, pace = job.advance(progress)
    assert pace is rejoin.Pace.UP and progress.last == "heartbeat fresh"


def test_a_heartbeat_older_than_the_start_is_not_taken_for_a_fresh_one():
    """Once forced-down is cleared, nova calls the service up on the heartbeat the host sent before it failed
    (younger than service_down_time): the record read while nova-compute booted holds it, up needs a newer one."""
    world = World(requests=[request()], boot=5.0, cleanup=0.0, fenced=True)
    world.rejoin().run()
    assert world.t == 5.0
    world.t, world.running = 0.0, False
    stale = dataclasses.replace(world.record(), forced_down=False, state="up")
    assert rejoin.next_step(stale, request(), None)[0] is rejoin.UP            # what it would be taken for
    assert rejoin.next_step(stale, request(), stale.updated_at)[0] is rejoin.WAIT


def test_a_nova_compute_already_running_after_fencing_is_not_started_again():
    world = World(requests=[request()], running=True)
    assert world.rejoin().run() == "heartbeat fresh"
    assert ("start",) not in world.calls


def test_nova_compute_exiting_during_its_start_fails_it():
    world = World(requests=[request()], cleanup=1.0, boot=10.0)
    world.exits_at = 4.0
    with pytest.raises(rejoin.Exited) as e:
        world.rejoin().run()
    assert str(e.value) == "nova-compute of compute1 exited during its start (no fresh heartbeat from nova-compute " \
                           "yet)"
    assert world.t == 4.0 and not world.forced_down


def test_while_nova_refuses_to_clear_forced_down_the_process_is_not_checked():
    """As the agent always did: a 400 is asked again after NOVA_POLL without a status command in between; a
    nova-compute that died meanwhile ends in the start timeout, naming nova's refusal."""
    world = World(requests=[request()], cleanup=1000.0, timeout=20.0)
    world.exits_at = 4.0
    with pytest.raises(rejoin.NotUp, match="nova refuses to clear forced-down yet"):
        world.rejoin().run()


def test_nova_compute_that_never_comes_up_fails_before_the_timeout_naming_why():
    world = World(requests=[request()], boot=1000.0, cleanup=1000.0, timeout=30.0)
    with pytest.raises(rejoin.NotUp) as e:
        world.rejoin().run()
    assert str(e.value) == "nova-compute of compute1 not up before the start timeout: nova refuses to clear " \
                           "forced-down yet: Cannot clear forced_down: 2 evacuations not completed"
    assert world.remaining() <= 2 and world.running


def test_an_unregistered_service_is_waited_for():
    world = World(requests=[None], registered=False, fenced=False, timeout=10.0)
    with pytest.raises(rejoin.NotUp, match="not up before the start timeout: nova-compute has not registered"):
        world.rejoin(nova_host=NODE).run()
    assert world.running                                       # started: its registration is what it waits for


# --- nova errors ------------------------------------------------------------------------------------------------------

def test_nova_unreachable_is_retried_while_nova_compute_boots():
    world = World(requests=[request()], boot=1.0, cleanup=1.0)
    world.connect_failures = 3
    world.nova_down_until = 3.0
    assert world.rejoin().run() == "heartbeat fresh"
    assert world.calls.count(("connect",)) == 4 and world.t >= 3.0 and not world.forced_down


def test_nova_unreachable_until_the_timeout_names_novas_error():
    world = World(requests=[request()], timeout=20.0)
    world.nova_down_until = 1000.0
    with pytest.raises(rejoin.NotUp, match="not up before the start timeout: nova services: no answer within 2s"):
        world.rejoin().run()
    assert world.calls.count(("connect",)) == 1                # the client is built once


def test_a_failed_host_lookup_is_done_again_never_skipped():
    """The agent's loop used to go on after services() failed with the client built but no host: it then asked
    nova for the service of host None (every compute's), forever."""
    world = World(requests=[None], fenced=False)
    world.services_failures = 1
    job = world.rejoin()
    progress, pace = job.advance(rejoin.Progress(rejoin.Phase.STARTING, None))
    assert pace is rejoin.Pace.CHECK and progress.nova is not None and progress.host is None
    assert progress.service is None and progress.last == "nova services: HTTP 503: try later"
    progress, pace = job.advance(progress)
    assert progress.host == NODE and progress.service is not None and progress.phase is rejoin.Phase.JOINING
    assert world.calls.count(("connect",)) == 1                # the client is kept


def test_a_nova_error_while_enabling_is_retried(monkeypatch):
    world = World(requests=[request()], status="disabled", reason="crashup: host failed", boot=0.0, cleanup=0.0)
    fails = iter([True, False])
    enable = FakeNova.enable

    def flaky(self, host):
        if next(fails):
            raise NovaUnavailable("enable", host, "HTTP 503: busy")
        enable(self, host)
    monkeypatch.setattr(FakeNova, "enable", flaky)
    assert world.rejoin().run() == "heartbeat fresh"
    assert world.status == "enabled" and rejoin.NOVA_POLL in world.sleeps


# --- never fenced by crashup ------------------------------------------------------------------------------------------

def test_never_fenced_nova_is_asked_first_then_nova_compute_starts():
    world = World(requests=[None], fenced=False, boot=1.0)
    assert world.rejoin().run() == "heartbeat fresh"
    first_start = world.calls.index(("start",))
    assert world.calls.index(("connect",)) < first_start and ("force_down", NODE, False) not in world.calls
    assert world.t >= 1.0                                      # the heartbeat of the new process, not the old one
    assert "nova-compute of compute1 started; waiting for nova to accept it" in world.log.lines


def test_never_fenced_but_forced_down_is_refused_before_anything_starts():
    world = World(requests=[None], fenced=True)
    with pytest.raises(rejoin.Refused, match=r"crashup never fenced this node: clear it yourself \(openstack "
                                             r"compute service set --up compute1 nova-compute\)"):
        world.rejoin().run()
    assert actions(world) == [] and world.sleeps == []


def test_never_fenced_and_already_running_is_up_at_once():
    world = World(requests=[None], fenced=False, running=True, boot=0.0)
    assert world.rejoin().run() == "heartbeat fresh"
    assert actions(world) == [] and world.sleeps == []


def test_a_service_an_operator_disabled_stays_disabled():
    world = World(requests=[request()], status="disabled", reason="maintenance", boot=0.0, cleanup=0.0)
    assert world.rejoin().run() == "heartbeat fresh; left disabled (maintenance)"
    assert ("enable", NODE) not in world.calls



@pytest.mark.parametrize("requests", [[None], [request()]])
def test_a_drained_host_stays_disabled_when_nova_compute_starts(requests):
    """`crashup drain` disabled it for the operator's maintenance (the host rebooted meanwhile): only `crashup
    undrain` enables it, never the agent's start, fenced before or not."""
    drained = Service("1", NODE, "nova-compute", "up", "disabled", False, rejoin.DRAIN_REASON, "beat@1")
    assert rejoin.next_step(drained, None, None) == (
        rejoin.UP, "heartbeat fresh; left disabled (crashup drain: crashup undrain enables it)")
    world = World(requests=requests, fenced=requests != [None], status="disabled", reason=rejoin.DRAIN_REASON,
                  boot=0.0, cleanup=0.0)
    assert world.rejoin().run().endswith("left disabled (crashup drain: crashup undrain enables it)")
    assert ("enable", NODE) not in world.calls

# --- host names -------------------------------------------------------------------------------------------------------

def test_the_host_is_found_in_novas_list_and_the_local_service_built_for_it():
    world = World(requests=[None], fenced=False, host="compute1.example.org")
    job = world.rejoin(hint=NODE)
    assert job.run() == "heartbeat fresh"
    assert ("local", "compute1.example.org") in world.calls and ("services",) in world.calls


def test_the_nova_host_parameter_is_taken_as_is():
    world = World(requests=[None], fenced=False, host="cmp-01")
    assert world.rejoin(nova_host="cmp-01", hint="cmp-01").run() == "heartbeat fresh"
    assert ("services",) not in world.calls


def test_an_ambiguous_host_is_a_configuration_error():
    world = World(requests=[None], fenced=False, others=("compute1.a.org", "compute1.b.org"), host="other")
    with pytest.raises(hostmap.HostMapError):
        world.rejoin().run()


def test_after_fencing_the_service_is_started_with_the_hint_before_nova_is_asked():
    world = World(requests=[request()], host="compute1.example.org")
    world.rejoin(hint="compute1.example.org").run()
    assert world.calls.index(("local", "compute1.example.org")) < world.calls.index(("connect",))
    assert world.calls.count(("local", "compute1.example.org")) == 1          # the same service, not a second one


# --- the local service ------------------------------------------------------------------------------------------------

def test_a_start_command_that_fails_fails_the_start_with_its_line():
    world = World(requests=[request()])
    world.start_fails = localservice.ServiceNotInstalled("start of nova-compute: /opt/ctl not found")
    with pytest.raises(rejoin.RejoinError, match="^start of nova-compute: /opt/ctl not found$") as e:
        world.rejoin().run()
    assert type(e.value) is rejoin.RejoinError                 # a failed start (rc 1), whatever the cause


def test_a_status_command_not_installed_is_the_services_own_error():
    """The agent maps it to ERR_INSTALLED (a probe then says not running): rejoin does not swallow it."""
    world = World(requests=[request()])
    world.status_fails = localservice.ServiceNotInstalled("status of nova-compute: /opt/ctl not found")
    with pytest.raises(localservice.ServiceNotInstalled):
        world.rejoin().run()


# --- the decisions --------------------------------------------------------------------------------------------------

def test_steps_are_typed_and_still_compare_as_their_words():
    assert rejoin.WAIT is rejoin.Step.WAIT and rejoin.Step.CLEAR_FORCED_DOWN == "clear-forced-down"
    step, _ = rejoin.next_step(None, None, None)
    assert step is rejoin.Step.WAIT
