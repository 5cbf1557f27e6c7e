"""The storm guard's decision (crashup_lib/storm.py) per failure domain, the pipeline's use of it, and where the
domains come from (crashup.conf's storm_domains, rendered from the inventory's computes[].failure_domain)."""
import pathlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crashup_lib import config, inventory, pcs, storm
from crashup_lib.pacemaker import Hold
from tests.fakes import FakeCluster, FakeNova
from tests.test_pipeline import recovery, request, server

RACKS = {f"compute{i}": f"rack{(i - 1) // 8 + 1}" for i in range(1, 25)}       # 24 nodes, 3 racks of 8


def limits(domains=None, max_hosts=2, fraction=0.5, max_domains=1):
    return storm.Limits(max_hosts, fraction, max_domains, domains or {})


@pytest.mark.parametrize("failed, computes, tripped", [
    (["c1"], 3, False), (["c1", "c2"], 24, False), (["c1", "c2", "c3"], 24, True),      # more than max_hosts
    (["c1", "c2"], 3, True),                                                            # more than half of 3
    (["c1", "c1", "c2"], 24, False),                                                    # a node counts once
])
def test_without_domains_the_host_and_fraction_limits_hold(failed, computes, tripped):
    found = storm.decide(failed, computes, limits())
    assert (found is not None) == tripped
    if found:
        assert found.hosts == tuple(sorted(set(failed))) and found.domains == ()


def test_a_whole_rack_of_eight_failing_is_one_incident():
    rack2 = [n for n, r in RACKS.items() if r == "rack2"]
    assert storm.decide(rack2, 24, limits(RACKS)) is None
    # the same eight without domains: held
    assert storm.decide(rack2, 24, limits()).limit == 2


def test_failures_across_racks_past_the_host_limit_are_held_with_their_domains():
    found = storm.decide(["compute1", "compute2", "compute9"], 24, limits(RACKS))
    assert found.domains == ("rack1", "rack2") and found.limit == 2 and "2 failure domains" in found.reason
    # two domains allowed: the same passes
    assert storm.decide(["compute1", "compute2", "compute9"], 24, limits(RACKS, max_domains=2)) is None
    # few enough hosts pass whatever their domains
    assert storm.decide(["compute1", "compute9"], 24, limits(RACKS)) is None


def test_a_node_without_a_domain_is_a_domain_of_its_own():
    domains = {"compute1": "rack1", "compute2": "rack1"}
    found = storm.decide(["compute1", "compute2", "compute3"], 24, limits(domains))
    assert found.domains == ("host:compute3", "rack1")


def test_the_fraction_stops_even_one_rack():
    racks = {f"compute{i}": "big" for i in range(1, 25)}
    found = storm.decide([f"compute{i}" for i in range(1, 14)], 24, limits(racks))       # 13 of 24 > 0.5
    assert found is not None and found.limit == 12 and found.domains == ("big",)


nodes = st.lists(st.sampled_from(sorted(RACKS)), min_size=1, max_size=24)


@settings(max_examples=300, deadline=None)
@given(failed=nodes, max_hosts=st.integers(1, 30), fraction=st.floats(0.01, 1.0), max_domains=st.integers(1, 4))
def test_domains_only_ever_let_more_through_and_order_does_not_matter(failed, max_hosts, fraction, max_domains):
    plain = storm.decide(failed, 24, limits(None, max_hosts, fraction, max_domains))
    ranked = storm.decide(failed, 24, limits(RACKS, max_hosts, fraction, max_domains))
    if plain is None:
        assert ranked is None
    assert storm.decide(list(reversed(failed)), 24, limits(RACKS, max_hosts, fraction, max_domains)) == ranked
    if ranked is not None:
        assert len(ranked.hosts) > ranked.limit


@pytest.mark.parametrize("raw, problem", [("compute1", "'node1:rack1;node2:rack1;node3:rack2' (a node once)"),
                                          ("compute1:a;compute1:b", "(a node once)")])
def test_storm_domains_syntax_is_one_clear_line(raw, problem):
    with pytest.raises(config.ConfigError, match=r"storm_domains") as info:
        config.load(env={"CRASHUP_STORM_DOMAINS": raw})
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_the_pipeline_evacuates_a_rack_and_holds_a_spread_with_its_domains():
    cluster = FakeCluster(nodes=sorted(RACKS))
    for node in ("compute2", "compute3"):
        cluster.saved[node] = request(node, fenced_at=1990.0)
    domains = ";".join(f"{n}:{r}" for n, r in RACKS.items())
    rack = recovery(cluster, FakeNova([server("a")]), storm_domains=domains)
    step = rack.recover(request(fenced_at=1995.0))
    assert not step.request.open and not [e for e in rack.emitter.events if e["type"] == "crashup.host.storm"]

    cluster = FakeCluster(nodes=sorted(RACKS))
    for node in ("compute2", "compute9"):
        cluster.saved[node] = request(node, fenced_at=1990.0)
    spread = recovery(cluster, FakeNova([server("a")]), storm_domains=domains)
    step = spread.recover(request(fenced_at=1995.0))
    assert step.waiting and step.request.hold is Hold.STORM
    payload = next(e["payload"] for e in spread.emitter.events if e["type"] == "crashup.host.storm")
    assert payload["domains"] == ["rack1", "rack2"] and payload["hosts"] == ["compute1", "compute2", "compute9"]


EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "pcs-templates" / "inventory.example.yaml"


def inventory_with(tmp_path, domains: dict, extra: str = ""):
    text = EXAMPLE.read_text()
    for name, domain in domains.items():
        text = re.sub(rf"(?m)^(  - name: {name}\b.*)$", rf"\1\n    failure_domain: {domain}", text, count=1)
    path = tmp_path / "inventory.yaml"
    path.write_text(text.replace("  storm_max_hosts: 2\n", f"  storm_max_hosts: 2\n{extra}"))
    return inventory.load(str(path))


def test_the_inventory_renders_failure_domains_into_crashup_conf(tmp_path):
    inv = inventory_with(tmp_path, {"compute1": "rack-a", "compute2": "rack-b"})
    assert inv.failure_domains == {"compute1": "rack-a", "compute2": "rack-b"}
    conf = tmp_path / "crashup.conf"
    conf.write_text(pcs.crashup_conf(inv))
    assert config.load(str(conf), env={}).storm_domains == {"compute1": "rack-a", "compute2": "rack-b"}


@pytest.mark.parametrize("domains, extra, problem", [
    ({"compute1": "rack-a"}, "  storm_domains: compute1:x\n", "recovery.storm_domains: not set here"),
    ({"compute1": "'rack a'"}, "", r"computes\[0\]\.failure_domain: 'rack a' is not usable as a failure domain"),
])
def test_bad_failure_domains_are_one_clear_line(tmp_path, domains, extra, problem):
    with pytest.raises(inventory.InventoryError, match=problem):
        inventory_with(tmp_path, domains, extra)


def test_the_operators_force_gets_past_the_guard_for_good_while_the_storm_lasts():
    cluster = FakeCluster()
    for node in ("compute2", "compute3"):
        cluster.saved[node] = request(node, fenced_at=1990.0)
    nova = FakeNova([server("a")])
    rec = recovery(cluster, nova, storm_max_hosts=2, storm_max_fraction=1.0)
    held = rec.recover(request(fenced_at=1995.0)).request
    assert held.hold is Hold.STORM and nova.evacuations == []
    # what `crashup recover --force` writes: the same failures are still in the window, yet it is let through
    forced = held.moved_to("recovering", "resumed by the operator", forced=True)
    assert type(forced).from_value(forced.node, forced.to_value()).forced
    done = rec.recover(forced)
    assert not done.request.open and [sid for sid, *_ in nova.evacuations] == ["a"]
    assert "forced" not in request().to_value()                 # written only when set: older readers unaffected
