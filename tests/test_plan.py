"""The pure planner: which instances, in what order, to where (crashup_lib/plan.py)."""
import dataclasses
import json
import random

import pytest

from crashup_lib import config, nova
from crashup_lib.recovery import pipeline
from crashup_lib import plan as P
from tests.fakes import FakeNova, server

HOST = "compute-1"


def srv(sid, name=None, *, extra_specs=None, project="p1", host=HOST, **fields):
    """A server as nova.Nova returns it (admin view)."""
    return server(sid, name=name or sid, host=host, project_id=project,
                  flavor={"original_name": "m1", "extra_specs": extra_specs or {}}, **fields)


def svc(host, state="up", status="enabled", forced_down=False, binary="nova-compute"):
    return nova.Service(f"svc-{host}", host, binary, state, status, forced_down, None, None)


def agg(name, metadata, hosts=(HOST,)):
    return nova.Aggregate(id=len(name), name=name, hosts=tuple(hosts), metadata=metadata)


HOSTS = [svc(HOST, state="down", forced_down=True), svc("compute-2"), svc("compute-3"),
         svc("compute-4", state="down"), svc("compute-5", status="disabled"), svc("compute-6", forced_down=True)]


def plan(instances, **kw):
    kw.setdefault("services", HOSTS)
    return P.build_plan(HOST, instances, **kw)


def ids(items):
    return [i.server_id for i in items]


def codes(p):
    return {s.server_id: s.code for s in p.skipped}


# --- evacuable ---------------------------------------------------------------------------------------------------

def test_untagged_host_evacuates_everything():
    p = plan([srv("a"), srv("b", status="SHUTOFF")])
    assert p.filter_mode == "all"
    assert ids(p.steps) == ["a", "b"] and not p.skipped
    assert all("nothing on the host is tagged" in s.reason for s in p.steps)
    assert any("all are evacuable" in n for n in p.notes)


@pytest.mark.parametrize("tagged, source", [
    (dict(metadata={"evacuable": "true"}), "server metadata evacuable=true"),
    (dict(metadata={"evacuable": "Yes"}), "server metadata evacuable=Yes"),
    (dict(tags=["evacuable"]), "server tag evacuable"),
    (dict(extra_specs={"evacuable": "True"}), "flavor extra spec evacuable=True"),
    (dict(extra_specs={"aggregate_instance_extra_specs:evacuable": "true"}),
     "flavor extra spec aggregate_instance_extra_specs:evacuable=true"),
    (dict(extra_specs={"trait:CUSTOM_EVACUABLE": "required"}), "flavor extra spec trait:CUSTOM_EVACUABLE=required"),
    (dict(extra_specs={"trait:evacuable": "true"}), "flavor extra spec trait:evacuable=true"),
    (dict(image_properties={"evacuable": "1"}), "image property evacuable=1"),
])
def test_each_tag_source_marks_an_instance_and_others_are_left(tagged, source):
    p = plan([srv("tagged", **tagged), srv("plain")])
    assert p.filter_mode == "tagged"
    assert ids(p.steps) == ["tagged"]
    assert p.steps[0].reason.startswith(f"tagged: {source}")
    assert codes(p) == {"plain": "not_tagged"}


@pytest.mark.parametrize("untagged", [
    dict(extra_specs={"evacuable": "false"}),
    dict(extra_specs={"trait:CUSTOM_EVACUABLE": "forbidden"}),
    dict(extra_specs={"non-evacuable": "true"}),            # no substring matching
    dict(tags=["not-evacuable"]),
    dict(metadata={"evacuable": "maybe"}),
])
def test_things_that_do_not_tag(untagged):
    p = plan([srv("x", **untagged), srv("t", tags=["evacuable"])])
    assert ids(p.steps) == ["t"]
    assert codes(p) == {"x": "not_tagged"}


def test_aggregate_tag_makes_every_instance_of_the_host_evacuable():
    aggs = [agg("plain", {"ssd": "true"}), agg("ha", {"evacuable": "true"}), agg("other", {"evacuable": "no"})]
    p = plan([srv("a"), srv("b", extra_specs={"evacuable": "true"})], aggregates=aggs)
    assert p.filter_mode == "tagged"
    assert ids(p.steps) == ["a", "b"]
    assert "aggregate ha evacuable=true" in p.step("a").reason
    assert "flavor extra spec" in p.step("b").reason      # the instance's own tag is named first


def test_false_aggregate_tag_does_not_count():
    p = plan([srv("a")], aggregates=[agg("x", {"evacuable": "false"})])
    assert p.filter_mode == "all" and ids(p.steps) == ["a"]


def test_only_the_failed_host_s_aggregates_count():
    p = plan([srv("a")], aggregates=[agg("ha", {"evacuable": "true"}, hosts=("compute-2",))])
    assert p.filter_mode == "all" and "aggregate" not in p.step("a").reason


def test_metadata_false_opts_out_even_when_all_are_evacuable_and_over_other_tags():
    p = plan([srv("a"), srv("out", metadata={"evacuable": "False"})])
    assert p.filter_mode == "all" and ids(p.steps) == ["a"]
    assert codes(p) == {"out": "opted_out"}
    assert "evacuable=False" in p.skipped[0].reason
    p = plan([srv("t", tags=["evacuable"]), srv("out", metadata={"evacuable": "no"}, extra_specs={"evacuable": "1"})],
             aggregates=[agg("ha", {"evacuable": "yes"})])
    assert ids(p.steps) == ["t"] and codes(p) == {"out": "opted_out"}


def test_an_opt_out_alone_does_not_switch_tagging_on():
    p = plan([srv("a"), srv("b", metadata={"evacuable": "off"})])
    assert p.filter_mode == "all" and ids(p.steps) == ["a"]


def test_the_tag_name_is_the_policy_s():
    policy = P.Policy(evacuable_tag="HA_Enabled")                # Masakari's metadata key
    p = plan([srv("m", metadata={"HA_Enabled": "True"}), srv("e", extra_specs={"evacuable": "true"})], policy=policy)
    assert ids(p.steps) == ["m"] and codes(p) == {"e": "not_tagged"}
    p = plan([srv("t", extra_specs={"trait:CUSTOM_HA_ENABLED": "required"}), srv("x")], policy=policy)
    assert ids(p.steps) == ["t"]


# --- skipped states ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, code", [
    (dict(status="DELETED", vm_state="deleted"), "deleting"),
    (dict(status="SOFT_DELETED", vm_state="soft-delete"), "deleting"),
    (dict(status="ACTIVE", task_state="deleting"), "deleting"),
    (dict(status="SHELVED_OFFLOADED", vm_state="shelved_offloaded", host=None), "shelved"),
    (dict(status="SHELVED", vm_state="shelved"), "shelved"),
    (dict(status="REBUILD", vm_state="active", task_state="rebuild_spawning"), "in_progress"),
    (dict(host="compute-2"), "already_moved"),
])
def test_skipped_states(kw, code):
    p = plan([srv("x", **kw), srv("ok")])
    assert ids(p.steps) == ["ok"]
    assert codes(p) == {"x": code}


def test_error_instances_are_evacuated_unless_skip_error():
    servers = [srv("e", status="ERROR"), srv("ok")]
    p = plan(servers)
    assert ids(p.steps) == ["e", "ok"] and p.step("e").state == "error"
    p = plan(servers, policy=P.Policy(skip_error=True))
    assert ids(p.steps) == ["ok"] and codes(p) == {"e": "error"}


def test_an_instance_with_no_host_known_is_taken_as_on_the_failed_host():
    p = plan([srv("x", host=None)])
    assert ids(p.steps) == ["x"]


# --- idempotency -------------------------------------------------------------------------------------------------

def test_a_half_evacuated_host_plans_only_the_remaining_ones():
    servers = [srv(f"s{i}", metadata={"crashup:priority": str(i % 3)}, extra_specs={"evacuable": "true"})
               for i in range(6)] + [srv("untagged")]
    first = plan(servers, policy=P.Policy(reserved_hosts=("compute-2",)))
    assert len(first.steps) == 6 and codes(first) == {"untagged": "not_tagged"}
    moved = {s.server_id for s in first.waves[0].steps}
    resumed_input = [dataclasses.replace(s, host="compute-2") if s.id in moved else s for s in servers]
    resumed = plan(resumed_input, policy=P.Policy(reserved_hosts=("compute-2",)))
    assert set(ids(resumed.steps)) == {s.server_id for s in first.steps} - moved
    assert {k for k, v in codes(resumed).items() if v == "already_moved"} == moved
    assert ids(resumed.steps) == [i for i in ids(first.steps) if i not in moved]     # same order
    assert resumed.filter_mode == "tagged" and codes(resumed)["untagged"] == "not_tagged"
    assert P.build_plan(HOST, resumed_input, services=HOSTS, policy=P.Policy(reserved_hosts=("compute-2",))) == resumed


def test_resuming_when_all_tagged_ones_left_keeps_the_first_filter_mode():
    # nova's ?host= listing no longer returns the moved ones: without them, tagging would look unused
    remaining = [srv("untagged")]
    assert plan(remaining).filter_mode == "all"
    p = plan(remaining, filter_mode="tagged")
    assert not p.steps and codes(p) == {"untagged": "not_tagged"}


def test_input_order_does_not_matter():
    servers = [srv(f"s{i:02}", name=f"vm-{i % 4}", metadata={"crashup:priority": str(i % 3),
                                                              **({"crashup:group": "g"} if i % 5 == 0 else {})})
               for i in range(20)]
    expected = plan(servers, policy=P.Policy(reserved_hosts=("compute-2", "compute-3")))
    rng = random.Random(7)
    for _ in range(10):
        shuffled = servers[:]
        rng.shuffle(shuffled)
        assert plan(shuffled, policy=P.Policy(reserved_hosts=("compute-2", "compute-3"))) == expected


# --- priority, groups, waves -------------------------------------------------------------------------------------

def test_priorities_make_waves_highest_first_and_order_by_name_then_id():
    servers = [srv("id-3", "web", metadata={"crashup:priority": "0"}),
               srv("id-2", "db", metadata={"crashup:priority": "10"}),
               srv("id-1", "app", metadata={"crashup:priority": " 5 "}),
               srv("id-9", "app", metadata={"crashup:priority": "5"}),
               srv("id-0", "app", metadata={"crashup:priority": "5"}),
               srv("id-5", "low", metadata={"crashup:priority": "-2"}),
               srv("id-4", "cache")]
    p = plan(servers)
    assert [(w.index, w.priority, ids(w.steps)) for w in p.waves] == [
        (0, 10, ["id-2"]), (1, 5, ["id-0", "id-1", "id-9"]), (2, 0, ["id-4", "id-3"]), (3, -2, ["id-5"])]
    assert ids(p.steps) == [i for w in p.waves for i in ids(w.steps)]
    assert [s.wave for s in p.steps] == [0, 1, 1, 1, 2, 2, 3]


def test_a_bad_priority_counts_as_zero_and_says_so():
    p = plan([srv("a", metadata={"crashup:priority": "high"}), srv("b", metadata={"crashup:priority": "1"})])
    assert ids(p.steps) == ["b", "a"]
    assert p.step("a").priority == 0
    assert "crashup:priority='high' is not an integer: 0 used" in p.step("a").reason


def test_a_restart_group_shares_one_wave_at_its_highest_priority():
    servers = [srv("db", metadata={"crashup:priority": "9", "crashup:group": "shop"}),
               srv("web", metadata={"crashup:group": "shop"}),
               srv("cache", metadata={"crashup:priority": "1", "crashup:group": "shop"}),
               srv("mid", metadata={"crashup:priority": "5"}),
               srv("other", metadata={"crashup:group": "solo"})]
    p = plan(servers)
    assert [(w.priority, ids(w.steps), w.groups) for w in p.waves] == [
        (9, ["cache", "db", "web"], ("shop",)), (5, ["mid"], ()), (0, ["other"], ("solo",))]
    assert p.step("web").priority == 9 and p.step("web").group == "shop"
    assert "priority 9 from group shop (own 0)" in p.step("web").reason
    assert "from group" not in p.step("db").reason


def test_a_skipped_member_does_not_lift_its_group():
    servers = [srv("gone", host="compute-2", metadata={"crashup:priority": "9", "crashup:group": "g"}),
               srv("left", metadata={"crashup:group": "g"})]
    p = plan(servers)
    assert p.step("left").priority == 0


def test_an_empty_plan():
    p = plan([])
    assert p.empty and p.waves == () and p.steps == ()
    assert "Nothing to evacuate." in p.render()


# --- after and prepare -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, microversion, keep, prepare, after", [
    (dict(status="ACTIVE"), "2.95", True, "none", "start"),
    (dict(status="ACTIVE"), None, True, "none", "start"),                # latest
    (dict(status="ACTIVE"), "2.100", True, "none", "start"),
    (dict(status="ACTIVE"), "2.94", True, "none", "none"),
    (dict(status="ACTIVE"), "2.95", False, "none", "none"),
    (dict(status="SHUTOFF"), "2.95", True, "none", "none"),
    (dict(status="SHUTOFF"), "2.68", True, "none", "none"),
    (dict(status="ERROR"), "2.95", True, "none", "none"),               # its wanted power state is unknown
    (dict(status="ACTIVE", task_state="rebooting"), "2.95", True, "reset-active", "start"),
    (dict(status="ACTIVE", task_state="rebooting"), "2.68", True, "reset-active", "none"),
    (dict(status="SHUTOFF", task_state="powering-on"), "2.68", True, "reset-error", "stop"),
    (dict(status="SHUTOFF", task_state="powering-on"), "2.95", True, "reset-error", "none"),
    (dict(status="SHUTOFF", task_state="powering-on"), "2.68", False, "reset-error", "none"),
    (dict(status="PAUSED"), "2.95", True, "reset-error", "none"),
    (dict(status="VERIFY_RESIZE", vm_state="resized"), "2.95", True, "reset-error", "none"),
])
def test_prepare_and_after(kw, microversion, keep, prepare, after):
    p = plan([srv("x", **kw)], microversion=microversion, policy=P.Policy(keep_power_state=keep))
    step = p.step("x")
    assert (step.prepare, step.after) == (prepare, after)
    assert p.microversion == (microversion or "latest")
    if after == "start":
        assert "it was ACTIVE" in step.reason and "leaves it SHUTOFF" in step.reason


# --- targets -----------------------------------------------------------------------------------------------------

def test_the_scheduler_chooses_without_reserved_or_target_hosts():
    p = plan([srv("a"), srv("b")])
    assert [s.target for s in p.steps] == [None, None]


def test_target_host_for_every_step():
    p = plan([srv("a"), srv("b")], policy=P.Policy(target_host="compute-3", reserved_hosts=("compute-2",)))
    assert [s.target for s in p.steps] == ["compute-3", "compute-3"]


@pytest.mark.parametrize("target, message", [
    (HOST, "target host compute-1 is the failed host"),
    ("compute-9", "target host compute-9 is not a known compute host"),
    ("compute-4", "target host compute-4 cannot take instances: down"),
    ("compute-5", "target host compute-5 cannot take instances: disabled"),
    ("compute-6", "target host compute-6 cannot take instances: forced down"),
])
def test_an_unusable_target_host_is_a_plan_error(target, message):
    with pytest.raises(P.PlanError, match=message) as err:
        plan([srv("a")], policy=P.Policy(target_host=target))
    assert isinstance(err.value, ValueError)


def test_reserved_hosts_round_robin_over_the_usable_ones_in_order():
    reserved = ("compute-4", HOST, "compute-3", "compute-5", "compute-9", "compute-6", "compute-2")
    p = plan([srv(f"s{i}") for i in range(5)], policy=P.Policy(reserved_hosts=reserved))
    assert [s.target for s in p.steps] == ["compute-3", "compute-2", "compute-3", "compute-2", "compute-3"]
    assert p.notes[1:] == ("reserved host compute-4 is down: not used",
                           "reserved host compute-1 is the failed host: not used",
                           "reserved host compute-5 is disabled: not used",
                           "reserved host compute-9 is not a known compute host: not used",
                           "reserved host compute-6 is forced down: not used")


def test_round_robin_follows_plan_order_across_waves():
    servers = [srv("late"), srv("first", metadata={"crashup:priority": "1"})]
    p = plan(servers, policy=P.Policy(reserved_hosts=("compute-2", "compute-3")))
    assert [(s.server_id, s.target) for s in p.steps] == [("first", "compute-2"), ("late", "compute-3")]


def test_no_usable_reserved_host_leaves_it_to_the_scheduler():
    p = plan([srv("a")], policy=P.Policy(reserved_hosts=("compute-4", "compute-5")))
    assert p.steps[0].target is None
    assert p.notes[-1] == "no reserved host is usable: nova's scheduler chooses"


def test_services_of_other_binaries_do_not_count_as_compute_hosts():
    hosts = [svc("ctl", binary="nova-conductor"), svc("compute-2")]
    with pytest.raises(P.PlanError, match="not a known compute host"):
        plan([srv("a")], services=hosts, policy=P.Policy(target_host="ctl"))
    hosts = [svc("both", binary="nova-scheduler"), svc("both", state="down")]
    with pytest.raises(P.PlanError, match="down"):
        plan([srv("a")], services=hosts, policy=P.Policy(target_host="both"))


# --- impossible input --------------------------------------------------------------------------------------------

def test_impossible_input_is_a_plan_error():
    with pytest.raises(P.PlanError, match="listed twice"):
        plan([srv("a"), srv("a")])
    with pytest.raises(P.PlanError, match="microversion"):
        plan([srv("a")], microversion="two")
    with pytest.raises(P.PlanError, match="filter_mode"):
        plan([srv("a")], filter_mode="some")
    with pytest.raises(P.PlanError, match="no failed host"):
        P.build_plan("", [])


# --- from nova -------------------------------------------------------------------------------------------------

def test_plan_for_host_plans_from_nova_s_own_records():
    fake = FakeNova([srv("a", status="SHUTOFF"), srv("b", metadata={"crashup:priority": "2"})],
                    hosts=(HOST, "compute-2"), aggregates=[agg("ha", {"evacuable": "true"}, hosts=(HOST,))])
    cfg = config.load(path=None, env={}, overrides={"reserved_hosts": "compute-2", "keep_power_state": "no"})
    p = pipeline.plan_for_host(fake, HOST, cfg)
    assert ids(p.steps) == ["b", "a"] and p.filter_mode == "tagged" and p.microversion == nova.EVACUATE_STOPPED
    assert [s.target for s in p.steps] == ["compute-2", "compute-2"]
    p = pipeline.plan_for_host(fake, HOST, config.load(path=None, env={}), target_host="compute-2")
    assert p.microversion == nova.EVACUATE_KEEP_POWER


@pytest.mark.parametrize("microversion, stopped", [
    (None, True), ("latest", True), ("2.95", True), ("2.100", True), ("3.0", True), ("2.94", False),
    ("2.14", False), (" 2.95 ", True)])
def test_nova_says_which_microversions_leave_evacuated_servers_stopped(microversion, stopped):
    assert nova.evacuate_leaves_stopped(microversion) is stopped
    assert nova.evacuate_leaves_stopped(nova.evacuate_microversion(True)) is False
    assert nova.evacuate_leaves_stopped(nova.evacuate_microversion(False)) is True
    with pytest.raises(ValueError, match="'X.Y' or 'latest'"):
        nova.evacuate_leaves_stopped("two")


def test_policy_from_config():
    cfg = config.load(path=None, env={}, overrides={"reserved_hosts": "compute-3, compute-2", "evacuable_tag": "ha",
                                                     "keep_power_state": "no"})
    policy = P.Policy.from_config(cfg, skip_error=True, target_host="compute-2")
    assert policy == P.Policy(evacuable_tag="ha", reserved_hosts=("compute-3", "compute-2"), keep_power_state=False,
                              skip_error=True, target_host="compute-2")


# --- outputs -----------------------------------------------------------------------------------------------------

def _sample():
    servers = [srv("11111111-aaaa", "db-1", metadata={"crashup:priority": "10", "crashup:group": "db"},
                   extra_specs={"evacuable": "true"}),
               srv("22222222-bbbb", "web-1", status="SHUTOFF", extra_specs={"evacuable": "true"}),
               srv("33333333-cccc", "junk"),
               srv("44444444-dddd", "broken", status="ERROR", tags=["evacuable"])]
    return plan(servers, microversion="2.95", policy=P.Policy(reserved_hosts=("compute-2", "compute-4")))


def test_plan_is_frozen():
    p = _sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.host = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.steps[0].target = "x"


def test_render_is_a_readable_table():
    text = _sample().render()
    lines = text.splitlines()
    assert lines[0] == ("Plan for compute-1: 3 to evacuate in 2 waves, 1 skipped; filter: instances tagged "
                        "'evacuable'; nova microversion 2.95")
    header = lines[2]
    assert header.split() == ["WAVE", "PRIO", "NAME", "ID", "GROUP", "STATE", "TARGET", "PREPARE", "AFTER", "REASON"]
    rows = [line.split(None, 9) for line in lines[3:6]]
    assert [r[:9] for r in rows] == [
        ["1", "10", "db-1", "11111111-aaaa", "db", "active", "compute-2", "none", "start"],
        ["2", "0", "broken", "44444444-dddd", "-", "error", "compute-2", "none", "none"],
        ["2", "0", "web-1", "22222222-bbbb", "-", "stopped", "compute-2", "none", "none"]]
    assert rows[0][9].startswith("tagged: flavor extra spec evacuable=true")
    # columns line up: every value starts where its header does
    for column in ("NAME", "TARGET", "REASON"):
        at = header.index(column)
        assert all(line[at - 2:at] == "  " and line[at] != " " for line in lines[3:6])
    assert lines[6:9] == ["", "Skipped:", "NAME  ID             CODE        REASON"]
    assert lines[9].split(None, 3) == ["junk", "33333333-cccc", "not_tagged", "not tagged (tagging is in use on "
                                                                               "this host)"]
    assert lines[10:12] == ["", "Notes:"] and "compute-4 is down" in lines[12]
    assert text.endswith("\n")


def test_render_shows_the_scheduler_and_all_mode():
    text = plan([srv("a")], microversion="2.68").render()
    assert "(scheduler)" in text and "filter: all instances (none tagged 'evacuable')" in text
    assert "1 wave," in text


def test_to_dict_is_json_serialisable_and_complete():
    p = _sample()
    data = json.loads(json.dumps(p.to_dict()))
    assert data["version"] == 1 and data["host"] == HOST and data["filter_mode"] == "tagged"
    assert data["microversion"] == "2.95" and data["evacuable_tag"] == "evacuable"
    assert [s["server_id"] for s in data["steps"]] == ids(p.steps)
    assert data["steps"][0] == {"server_id": "11111111-aaaa", "name": "db-1", "priority": 10, "group": "db",
                                "target": "compute-2", "after": "start", "prepare": "none",
                                "reason": p.steps[0].reason, "wave": 0, "project_id": "p1", "state": "active",
                                "storage": p.steps[0].storage.value, "volumes": None}
    assert data["waves"] == [{"index": 0, "priority": 10, "groups": ["db"], "steps": ["11111111-aaaa"]},
                             {"index": 1, "priority": 0, "groups": [], "steps": ["44444444-dddd", "22222222-bbbb"]}]
    assert data["skipped"] == [{"server_id": "33333333-cccc", "name": "junk", "code": "not_tagged",
                                "reason": "not tagged (tagging is in use on this host)"}]
    assert data["notes"] == ["reserved host compute-4 is down: not used"]


def test_rule_tables_are_data():
    assert [code for code, _, _ in P.SKIP_RULES] == ["already_moved", "deleting", "shelved", "in_progress", "error",
                                                     "opted_out", "not_tagged", "local_disk"]
    assert [name for name, _ in P.TAG_SOURCES] == ["server metadata", "server tag", "flavor extra spec",
                                                   "image property"]
    assert set(P.AFTER.values()) <= set(P.AFTER_ACTIONS)
