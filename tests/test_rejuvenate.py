"""Rejuvenation (issue 17): the pure decisions (rejuvenate.py) and the roll (rejuvenate_steps.py) against fakes of
Pacemaker and nova: one node at a time, each back in nova before the next, paused while any recovery is open,
never in the middle of a server's task, resumed from the CIB after an interruption, refusals that change nothing."""
import dataclasses
import datetime
import threading

import pytest
from hypothesis import given, strategies as st

from crashup_lib import config, events, nova, pacemaker
from crashup_lib.maintenance import rejuvenate as plan
from crashup_lib.maintenance import rejuvenate_steps as steps
from crashup_lib.maintenance.common import Context, Halted, Refused
from tests.fakes import COMPUTES, FakeCluster, FakeNova, server
from tests.test_maintenance_drain import Events

T0 = 1_800_000_000.0
CLONE = "nova-compute-clone"


class Clock:
    """One fake time for the monotonic clock, the wall clock and sleep; `on_sleep` hooks let the world move."""

    def __init__(self):
        self.now = T0
        self.on_sleep = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        for hook in list(self.on_sleep):
            hook()


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).replace(tzinfo=None).isoformat()


class Nova(FakeNova):
    """FakeNova whose services carry a heartbeat (updated_at) a restart renews."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.beats = {h: iso(T0 - 5) for h in self.hosts}

    def services(self, host=None, binary="nova-compute"):
        return [dataclasses.replace(s, updated_at=self.beats.get(s.host)) for s in super().services(host, binary)]


class Cluster(FakeCluster):
    """FakeCluster and what a roll adds: where each clone runs, node attributes, restarts (logged), bans."""

    def __init__(self, world: Clock, nova_: Nova, nodes=COMPUTES):
        super().__init__(nodes)
        self.world, self.nova = world, nova_
        self.running = {CLONE: set(nodes)}
        self.attrs: dict[str, dict[str, str]] = {}
        self.restarts, self.cleared = [], []
        self.restart_error = None
        self.comes_back = True
        self.down_now: set = set()          # nodes whose instance is stopped at this moment (never two)
        self.most_down = 0

    def running_on(self, resource):
        return set(self.running.get(resource, ()))

    def restart(self, resource, node, wait):
        if self.restart_error:
            raise self.restart_error
        self.down_now.add(node)
        self.most_down = max(self.most_down, len(self.down_now))
        self.restarts.append((resource, node, self.world.now))
        self.world.now += 2
        self.down_now.discard(node)
        if self.comes_back:
            self.nova.beats[node] = iso(self.world.now + 1)

    def clear_ban(self, resource, node):
        self.cleared.append((resource, node))

    def node_attribute(self, name):
        return {n: a[name] for n, a in self.attrs.items() if name in a}

    def set_node_attribute(self, node, name, value):
        if value is None:
            self.attrs.get(node, {}).pop(name, None)
        else:
            self.attrs.setdefault(node, {})[name] = value


def world(servers=(), cfg=None, nodes=COMPUTES):
    clock = Clock()
    nova_ = Nova(servers, hosts=nodes)
    cluster = Cluster(clock, nova_, nodes)
    emitter = Events()
    cfg = {"maintenance_timeout": 60, "rejuvenation_task_wait": 30, "rejuvenation_resources": (CLONE,),
           "rejuvenation_interval": 3600, **(cfg or {})}
    ctx = Context(cfg, nova_, cluster, emitter, out=lambda line: None, sleep=clock.sleep, clock=clock.clock)
    return ctx, clock, cluster, emitter


def steps_of(emitter):
    return [(e["subject"], e["payload"]["step"]) for e in emitter.seen]


def open_request(node, state="recovering"):
    return pacemaker.RecoveryRequest(node=node, state=state, mode="auto", fenced_at=T0, updated_at=T0)


def run(ctx, clock, name=None, dry_run=False):
    return steps.rejuvenate(ctx, name, dry_run, wall=clock.clock)


# --- the pure decisions ---------------------------------------------------------------------------------------------

def state(node, last=None, marked=None):
    return plan.NodeState(node, node, last, marked)


def test_due_takes_a_restart_in_flight_first_then_never_done_then_the_oldest_and_only_the_late():
    states = [state("a", last=T0 - 100), state("b", last=T0 - 5000), state("c"), state("d", last=T0 - 10, marked=T0),
              state("e", last=T0 - 9000)]
    assert [s.node for s in plan.due(states, T0, 3600)] == ["d", "c", "e", "b"]
    assert plan.due([state("a", last=T0 - 100)], T0, 3600) == []


def test_ordered_puts_a_resumed_node_first():
    assert [s.node for s in plan.ordered([state("b"), state("c", marked=T0), state("a")])] == ["c", "a", "b"]


@given(st.one_of(st.none(), st.text(max_size=30), st.floats(allow_nan=True).map(str)))
def test_number_never_raises_and_gives_a_non_negative_epoch_or_none(raw):
    found = plan.number(raw)
    assert found is None or found >= 0


def test_came_back_wants_up_not_forced_down_and_a_heartbeat_newer_than_the_restart():
    def svc(state="up", forced=False, beat=T0 + 1):
        return nova.Service("1", "h", "nova-compute", state, "enabled", forced, None, beat and iso(beat))
    assert plan.came_back(svc(), T0)
    assert not plan.came_back(svc(beat=T0 - 1), T0)           # the old process's last heartbeat
    assert not plan.came_back(svc(state="down"), T0)
    assert not plan.came_back(svc(forced=True), T0)
    assert not plan.came_back(svc(beat=None), T0) and not plan.came_back(None, T0)
    assert plan.unhealthy(svc(forced=True)) and plan.unhealthy(svc(state="down")) and plan.unhealthy(None)
    assert plan.unhealthy(svc()) is None


def test_open_recoveries_and_busy():
    reqs = {"a": open_request("a"), "b": dataclasses.replace(open_request("b"), state="done")}
    assert plan.open_recoveries(reqs) == ["a"]
    assert [s.id for s in plan.busy([server("x", task_state="rebooting"), server("y")])] == ["x"]


def test_the_options_default_to_off():
    cfg = config.load("/dev/null", env={})
    assert cfg.rejuvenation_interval == 0 and cfg.rejuvenation_resources == ("nova-compute-clone",)
    assert cfg.rejuvenation_task_wait == 300
    with pytest.raises(config.ConfigError, match="rejuvenation_resources"):
        config.load("/dev/null", env={"CRASHUP_REJUVENATION_RESOURCES": "a;b"})


# --- crashup rejuvenate ----------------------------------------------------------------------------------------------

def test_every_node_restarted_once_one_at_a_time_each_back_in_nova_before_the_next():
    ctx, clock, cluster, emitter = world([server("s1", host="compute2")])
    assert run(ctx, clock) == 0
    assert [n for _, n, _ in cluster.restarts] == list(COMPUTES) and cluster.most_down == 1
    assert steps_of(emitter) == [(h, s) for h in COMPUTES for s in ("restarting", "restarted")] + \
        [("compute1", "finished")]
    for node in COMPUTES:
        assert float(cluster.attrs[node][plan.DONE_ATTRIBUTE]) > T0 and plan.MARK_ATTRIBUTE not in cluster.attrs[node]
    assert all(e["payload"]["verb"] == "rejuvenate" for e in emitter.seen)
    assert cluster.saved == {}                                      # no recovery request, nothing fenced
    assert ctx.nova.evacuations == [] and ctx.nova.stops == []


def test_one_node_by_name_or_nova_host():
    ctx, clock, cluster, _ = world()
    assert run(ctx, clock, "compute2") == 0
    assert [n for _, n, _ in cluster.restarts] == ["compute2"]


def test_dry_run_changes_nothing():
    ctx, clock, cluster, emitter = world()
    lines = []
    ctx.out = lines.append
    assert run(ctx, clock, dry_run=True) == 0
    assert cluster.restarts == [] and cluster.attrs == {} and emitter.seen == []
    assert "compute1" in lines[0] and "one at a time" in lines[0]


@pytest.mark.parametrize("how, says", [
    ("unknown", "unknown host 'nowhere'"),
    ("open", "its recovery is open"),
    ("quorum", "no quorum"),
    ("marked", "a rejuvenation of compute3 is under way"),
])
def test_refusals_change_nothing(how, says):
    ctx, clock, cluster, emitter = world()
    name = "compute1"
    if how == "unknown":
        name = "nowhere"
    elif how == "open":
        cluster.saved["compute1"] = open_request("compute1")
    elif how == "quorum":
        cluster.has_quorum = False
    else:
        cluster.attrs["compute3"] = {plan.MARK_ATTRIBUTE: str(T0 - 10)}
    with pytest.raises(Refused, match=says):
        run(ctx, clock, name)
    assert cluster.restarts == [] and emitter.seen == [] and cluster.cleared == []


def test_pauses_while_any_recovery_is_open_and_resumes_after():
    ctx, clock, cluster, emitter = world()
    cluster.saved["compute3"] = open_request("compute3")
    restarts_while_open = []

    def close_later():
        if clock.now >= T0 + 20 and "compute3" in cluster.saved and cluster.saved["compute3"].open:
            restarts_while_open.append(len(cluster.restarts))
            cluster.saved["compute3"] = dataclasses.replace(cluster.saved["compute3"], state="done")
    clock.on_sleep.append(close_later)
    assert run(ctx, clock) == 0
    assert restarts_while_open == [0]                               # nothing restarted while it was open
    got = steps_of(emitter)
    assert got[:2] == [("compute1", "paused"), ("compute1", "resumed")] and len(cluster.restarts) == 3
    assert "settled" in cluster.refenced                            # the DC left to finish the rejoin first


def test_a_recovery_opening_mid_roll_pauses_the_next_node():
    ctx, clock, cluster, emitter = world()
    real_restart = cluster.restart

    def restart(resource, node, wait):
        real_restart(resource, node, wait)
        if node == "compute1":                                      # compute3 fails while compute1 restarts
            cluster.saved["compute3"] = open_request("compute3")
    cluster.restart = restart
    clock.on_sleep.append(lambda: clock.now > T0 + 60 and cluster.saved.update(
        compute3=dataclasses.replace(cluster.saved["compute3"], state="done")))
    assert run(ctx, clock) == 0
    got = steps_of(emitter)
    assert got.index(("compute2", "paused")) < got.index(("compute2", "resumed")) < got.index(("compute2",
                                                                                               "restarting"))
    assert all(t > T0 + 60 for _, n, t in cluster.restarts if n != "compute1")


def test_still_paused_after_the_bound_halts_with_exit_1_not_a_hang():
    ctx, clock, cluster, _ = world()
    cluster.saved["compute2"] = open_request("compute2", "pending")
    with pytest.raises(Halted, match="still paused after 60s"):
        run(ctx, clock)
    assert cluster.restarts == []


def test_waits_for_a_task_to_clear_then_restarts():
    ctx, clock, cluster, emitter = world([server("s1", host="compute1", task_state="rebooting")], nodes=("compute1",))
    clock.on_sleep.append(lambda: clock.now > T0 + 6 and ctx.nova._update("s1", task_state=None))
    assert run(ctx, clock) == 0
    assert steps_of(emitter)[:3] == [("compute1", "waiting_tasks"), ("compute1", "restarting"),
                                     ("compute1", "restarted")]
    assert cluster.restarts[0][2] > T0 + 6                          # not before the task cleared


def test_a_task_that_never_clears_skips_the_node_and_the_roll_goes_on():
    ctx, clock, cluster, emitter = world([server("s1", host="compute1", task_state="migrating")])
    assert run(ctx, clock) == 1
    assert [n for _, n, _ in cluster.restarts] == ["compute2", "compute3"]
    skipped = [e for e in emitter.seen if e["payload"]["step"] == "skipped"]
    assert [e["subject"] for e in skipped] == ["compute1"] and "migrating" in skipped[0]["payload"]["detail"]


def test_a_node_where_the_clone_does_not_run_or_nova_says_down_is_skipped():
    ctx, clock, cluster, emitter = world()
    cluster.running[CLONE].discard("compute1")
    ctx.nova.up = ("compute1", "compute3")
    assert run(ctx, clock) == 1
    assert [n for _, n, _ in cluster.restarts] == ["compute3"]
    assert [(e["subject"], e["payload"]["step"]) for e in emitter.seen if e["payload"]["step"] == "skipped"] == \
        [("compute1", "skipped"), ("compute2", "skipped")]


def test_a_failed_restart_clears_the_ban_and_stops_the_roll():
    ctx, clock, cluster, emitter = world()
    cluster.restart_error = pacemaker.PacemakerError("crm_resource --restart --resource failed (exit 1): boom")
    assert run(ctx, clock) == 1
    assert cluster.cleared == [(CLONE, "compute1")] and plan.MARK_ATTRIBUTE not in cluster.attrs.get("compute1", {})
    assert steps_of(emitter) == [("compute1", "restarting"), ("compute1", "failed"), ("compute1", "finished")]


def test_nova_compute_not_back_in_time_fails_and_stops_the_roll():
    ctx, clock, cluster, emitter = world()
    cluster.comes_back = False
    assert run(ctx, clock) == 1
    assert [n for _, n, _ in cluster.restarts] == ["compute1"]
    assert ("compute1", "failed") in steps_of(emitter) and clock.now < T0 + 200


def test_an_interrupted_restart_is_resumed_first_its_ban_cleared():
    ctx, clock, cluster, _ = world()
    cluster.attrs["compute2"] = {plan.MARK_ATTRIBUTE: str(T0 - 10_000)}       # stale: its roller is gone
    assert run(ctx, clock) == 0
    assert cluster.cleared == [(CLONE, "compute2")] and cluster.restarts[0][1] == "compute2"
    assert plan.MARK_ATTRIBUTE not in cluster.attrs["compute2"]


def test_quorum_lost_mid_roll_halts():
    ctx, clock, cluster, _ = world()
    real_restart = cluster.restart

    def restart(resource, node, wait):
        real_restart(resource, node, wait)
        cluster.has_quorum = False
    cluster.restart = restart
    with pytest.raises(Halted, match="no quorum.*compute1 restarted"):
        run(ctx, clock)
    assert len(cluster.restarts) == 1


def test_events_follow_the_schema():
    ctx, clock, cluster, emitter = world([server("s1", host="compute1", task_state="rebooting")])
    cluster.saved["compute3"] = open_request("compute3")
    clock.on_sleep.append(lambda: cluster.saved.update(compute3=dataclasses.replace(cluster.saved["compute3"],
                                                                                    state="done")))
    run(ctx, clock)
    kinds = {e["payload"]["step"] for e in emitter.seen}
    assert {"paused", "resumed", "waiting_tasks", "skipped", "restarting", "restarted", "finished"} <= kinds
    jsonschema = pytest.importorskip("jsonschema")
    schema = events.load_schema()
    for e in emitter.seen:
        jsonschema.validate(e, schema)


# --- the periodic roll ---------------------------------------------------------------------------------------------

def periodic(ctx, clock, cluster, emitter):
    p = steps.Periodic(ctx.cfg, cluster, emitter, threading.Event(), nova_factory=lambda: ctx.nova, wall=clock.clock)
    p.roll().ctx.sleep, p.roll().ctx.clock = clock.sleep, clock.clock
    return p


def test_periodic_one_node_a_pass_only_the_due_and_a_successor_resumes_from_the_cib():
    ctx, clock, cluster, emitter = world()
    cluster.attrs["compute3"] = {plan.DONE_ATTRIBUTE: str(T0 - 60)}          # rejuvenated a minute ago: not due
    first = periodic(ctx, clock, cluster, emitter)
    assert first.step() is True and [n for _, n, _ in cluster.restarts] == ["compute1"]
    # the controller fails over: a new daemon's roll goes on with compute2, not again with compute1
    second = periodic(ctx, clock, cluster, emitter)
    assert second.step() is True and second.step() is False
    assert [n for _, n, _ in cluster.restarts] == ["compute1", "compute2"]
    clock.now += 3600
    assert second.step() is True and cluster.restarts[-1][1] == "compute3"


def test_periodic_pauses_while_a_recovery_is_open():
    ctx, clock, cluster, emitter = world()
    cluster.saved["compute2"] = open_request("compute2")
    p = periodic(ctx, clock, cluster, emitter)
    assert p.step() is False and p.step() is False and cluster.restarts == []
    assert steps_of(emitter) == [("compute1", "paused")]                    # said once
    cluster.saved["compute2"] = dataclasses.replace(cluster.saved["compute2"], state="done")
    assert p.step() is True and steps_of(emitter)[1] == ("compute1", "resumed")


def test_periodic_waits_for_another_rollers_fresh_mark_and_backs_off_a_skipped_node():
    ctx, clock, cluster, emitter = world([server("s1", host="compute1", task_state="migrating")])
    cluster.attrs["compute3"] = {plan.MARK_ATTRIBUTE: str(T0 - 5)}
    p = periodic(ctx, clock, cluster, emitter)
    assert p.step() is False and cluster.restarts == []
    del cluster.attrs["compute3"]
    assert p.step() is True and steps_of(emitter)[-1] == ("compute1", "skipped")
    assert p.step() is True and cluster.restarts[-1][1] == "compute2"        # compute1 not tried again at once


def test_periodic_off_by_default_and_no_quorum_does_nothing():
    ctx, clock, cluster, emitter = world()
    assert steps.start_periodic({"rejuvenation_interval": 0}, cluster, emitter, threading.Event()) is None
    cluster.has_quorum = False
    assert periodic(ctx, clock, cluster, emitter).step() is False and cluster.restarts == []


def test_periodic_thread_stops_with_the_daemon():
    ctx, clock, cluster, emitter = world()
    stop = threading.Event()
    p = steps.start_periodic(ctx.cfg, cluster, emitter, stop, nova_factory=lambda: ctx.nova)
    stop.set()
    p.thread.join(5)
    assert not p.thread.is_alive()


def test_periodic_takes_over_its_predecessors_mark_at_once_but_the_command_waits_for_it():
    ctx, clock, cluster, emitter = world()
    cluster.attrs["compute2"] = {plan.MARK_ATTRIBUTE: plan.mark(T0 - 5, plan.DAEMON)}   # a failover mid-restart
    with pytest.raises(Refused, match="a rejuvenation of compute2 is under way"):
        run(ctx, clock)
    assert cluster.restarts == []
    p = periodic(ctx, clock, cluster, emitter)
    assert p.step() is True
    assert cluster.cleared == [(CLONE, "compute2")] and cluster.restarts[0][1] == "compute2"
    assert plan.MARK_ATTRIBUTE not in cluster.attrs["compute2"]


def test_marks_read_back():
    assert plan.number(plan.mark(T0, plan.DAEMON)) == T0 and plan.mark_owner(plan.mark(T0, plan.DAEMON)) == "daemon"
    assert plan.number("12.5") == 12.5 and plan.mark_owner("12.5") == "" and plan.number("inf") is None


def test_periodic_halts_for_an_hour_after_a_node_did_not_come_back():
    ctx, clock, cluster, emitter = world()
    cluster.comes_back = False
    p = periodic(ctx, clock, cluster, emitter)
    assert p.step() is True and steps_of(emitter)[-1] == ("compute1", "failed")
    cluster.comes_back = True
    assert p.step() is False and len(cluster.restarts) == 1               # nothing else goes down meanwhile
    clock.now += steps.RETRY_LATER
    assert p.step() is True and len(cluster.restarts) == 2


def test_a_resumed_node_that_is_then_skipped_keeps_no_mark():
    ctx, clock, cluster, emitter = world()
    cluster.attrs["compute1"] = {plan.MARK_ATTRIBUTE: plan.mark(T0 - 10_000, plan.COMMAND)}
    cluster.running[CLONE].discard("compute1")
    assert run(ctx, clock) == 1
    assert cluster.cleared == [(CLONE, "compute1")] and plan.MARK_ATTRIBUTE not in cluster.attrs["compute1"]
    assert ("compute1", "skipped") in steps_of(emitter) and [n for _, n, _ in cluster.restarts] == ["compute2",
                                                                                                   "compute3"]


# --- review fixes: a rival's mark written meanwhile, the heartbeat's epoch, an interrupted command -----------------

def test_a_daemon_mark_written_during_the_task_wait_is_waited_for_never_two_down():
    ctx, clock, cluster, emitter = world([server("s1", host="compute1", task_state="rebooting")])
    rival_down = []

    def daemon_rolls():                     # the task ends as the daemon's roll begins compute3
        if clock.now >= T0 + 4 and not rival_down:
            ctx.nova._update("s1", task_state=None)
            cluster.attrs["compute3"] = {plan.MARK_ATTRIBUTE: plan.mark(clock.now, plan.DAEMON)}
            rival_down.append(clock.now)
        if clock.now >= T0 + 30:
            cluster.attrs.get("compute3", {}).pop(plan.MARK_ATTRIBUTE, None)
    clock.on_sleep.append(daemon_rolls)
    assert run(ctx, clock, "compute1") == 0
    assert rival_down and cluster.restarts[0][2] >= T0 + 30             # not while the daemon's restart was on
    assert steps_of(emitter)[-3:] == [("compute1", "restarting"), ("compute1", "restarted"),
                                      ("compute1", "finished")]


def test_of_two_marks_written_at_once_the_later_ones_roller_withdraws():
    ctx, clock, cluster, _ = world(nodes=("compute1", "compute2"))
    real_set = cluster.set_node_attribute

    def set_attr(node, name, value):
        real_set(node, name, value)
        if name == plan.MARK_ATTRIBUTE and value and node == "compute1" and "compute2" not in cluster.attrs:
            cluster.attrs["compute2"] = {plan.MARK_ATTRIBUTE: plan.mark(clock.now - 0.5, plan.DAEMON)}   # the earlier
            clock.on_sleep.append(lambda: clock.now > T0 + 20 and cluster.attrs["compute2"].pop(
                plan.MARK_ATTRIBUTE, None))
    cluster.set_node_attribute = set_attr
    assert run(ctx, clock, "compute1") == 0
    assert [n for _, n, _ in cluster.restarts] == ["compute1"] and cluster.restarts[0][2] > T0 + 20


def test_a_heartbeat_sent_during_the_stop_is_not_the_new_process_coming_back():
    ctx, clock, cluster, emitter = world(nodes=("compute1",))

    def restart(resource, node, wait):
        cluster.restarts.append((resource, node, clock.now))
        clock.now += 1
        ctx.nova.beats[node] = iso(clock.now)      # the old process's last beat, while it stops
        clock.now += 1                              # and the new one never starts
    cluster.restart = restart
    assert run(ctx, clock) == 1
    assert ("compute1", "failed") in steps_of(emitter) and plan.DONE_ATTRIBUTE not in cluster.attrs["compute1"]


def test_a_start_pacemaker_did_not_complete_is_not_restarted():
    ctx, clock, cluster, emitter = world(nodes=("compute1",))
    real_restart = cluster.restart

    def restart(resource, node, wait):
        real_restart(resource, node, wait)
        cluster.running[CLONE].discard(node)        # nova saw a beat, but the start failed in Pacemaker
    cluster.restart = restart
    assert run(ctx, clock) == 1
    failed = [e for e in emitter.seen if e["payload"]["step"] == "failed"]
    assert failed and "not running on compute1" in failed[0]["payload"]["detail"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_command_clears_its_ban_and_mark_only_on_the_node_in_flight(interrupt):
    ctx, clock, cluster, _ = world()
    real_restart = cluster.restart

    def restart(resource, node, wait):
        if node == "compute2":
            raise interrupt()
        real_restart(resource, node, wait)
    cluster.restart = restart
    with pytest.raises(interrupt):
        run(ctx, clock)
    assert cluster.cleared == [(CLONE, "compute2")]
    assert not any(plan.MARK_ATTRIBUTE in a for a in cluster.attrs.values())
    ctx.cluster.restart = real_restart
    assert run(ctx, clock, "compute2") == 0                               # a re-run is not refused


def test_sigterm_mid_roll_exits_through_the_cleanup():
    import os
    import signal
    ctx, clock, cluster, _ = world()
    unhandled = []
    before = signal.signal(signal.SIGTERM, lambda *_: unhandled.append(1))   # so a missing handler fails, not kills
    real_restart = cluster.restart

    def restart(resource, node, wait):
        real_restart(resource, node, wait)
        os.kill(os.getpid(), signal.SIGTERM)
    cluster.restart = restart
    try:
        with pytest.raises(SystemExit) as got:
            run(ctx, clock)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert unhandled == [] and got.value.code == 143
    assert cluster.cleared == [(CLONE, "compute1")] and plan.MARK_ATTRIBUTE not in cluster.attrs["compute1"]


def test_the_refusal_says_how_to_clean_up_by_hand():
    ctx, clock, cluster, _ = world()
    cluster.attrs["compute3"] = {plan.MARK_ATTRIBUTE: plan.mark(T0 - 10, plan.COMMAND)}
    with pytest.raises(Refused) as got:
        run(ctx, clock)
    assert f"crm_resource --clear --resource {CLONE} --node compute3" in str(got.value)
    assert f"--node compute3 --name {plan.MARK_ATTRIBUTE} --delete" in str(got.value)


def test_periodic_backs_off_when_the_command_marks_a_node_during_its_task_wait():
    ctx, clock, cluster, emitter = world([server("s1", host="compute1", task_state="rebooting")])
    p = periodic(ctx, clock, cluster, emitter)

    def command_rolls():
        if clock.now >= T0 + 4 and "compute2" not in cluster.attrs:
            ctx.nova._update("s1", task_state=None)
            cluster.attrs["compute2"] = {plan.MARK_ATTRIBUTE: plan.mark(clock.now, plan.COMMAND)}
        if clock.now >= T0 + 30:
            cluster.attrs["compute2"].pop(plan.MARK_ATTRIBUTE, None)
    clock.on_sleep.append(command_rolls)
    assert p.step() is False and cluster.restarts == []                  # waited, then left it to the next pass
    assert p.step() is True and cluster.restarts[0][1] == "compute1" and cluster.restarts[0][2] >= T0 + 30
