import pytest

from crashup_lib import config
from crashup_lib.hostmap import HostMapError, node_for_host, resolve

HOSTS = ["compute1", "compute2", "compute3"]
FQDN_HOSTS = ["compute1.example.org", "compute2.example.org"]


# --- resolve: node -> nova host --------------------------------------------------------------------------------------
def test_exact_match():
    assert resolve("compute2", HOSTS, {}) == "compute2"
    assert resolve("compute2", HOSTS, None) == "compute2"


def test_fqdn_node_to_short_host():
    assert resolve("compute1.example.org", HOSTS, {}) == "compute1"


def test_short_node_to_fqdn_host():
    assert resolve("compute2", FQDN_HOSTS, {}) == "compute2.example.org"


def test_short_name_match_ignores_case():
    assert resolve("Compute1.Example.org", HOSTS, {}) == "compute1"
    assert resolve("COMPUTE2", FQDN_HOSTS, {}) == "compute2.example.org"


def test_exact_beats_short_name():
    assert resolve("compute1", ["compute1.example.org", "compute1"], {}) == "compute1"


def test_two_different_fqdns_do_not_match_by_short_name():
    with pytest.raises(HostMapError, match="matches no nova-compute host"):
        resolve("compute1.site-a.org", ["compute1.site-b.org"], {})


def test_explicit_map_wins():
    explicit = {"node-a": "compute3", "compute1": "compute2"}
    assert resolve("node-a", HOSTS, explicit) == "compute3"
    assert resolve("compute1", HOSTS, explicit) == "compute2"      # even over an exact name


def test_explicit_map_must_name_a_known_host():
    with pytest.raises(HostMapError) as e:
        resolve("node-a", HOSTS, {"node-a": "compute9"})
    msg = str(e.value)
    assert "'node-a'" in msg and "'compute9'" in msg and "compute1, compute2, compute3" in msg
    assert "\n" not in msg


def test_host_claimed_by_another_node_is_not_matched_by_name():
    explicit = {"node-a": "compute1"}
    with pytest.raises(HostMapError) as e:
        resolve("compute1", HOSTS, explicit)
    assert "'compute1' is mapped to node 'node-a'" in str(e.value)
    with pytest.raises(HostMapError):
        resolve("compute1.example.org", HOSTS, explicit)


def test_ambiguous_short_name_refused_naming_candidates():
    hosts = ["compute1.site-a.org", "compute1.site-b.org", "compute2"]
    with pytest.raises(HostMapError) as e:
        resolve("compute1", hosts, {})
    msg = str(e.value)
    assert "several" in msg and "compute1.site-a.org, compute1.site-b.org" in msg and "host_map" in msg
    # the explicit map settles it
    assert resolve("compute1", hosts, {"compute1": "compute1.site-b.org"}) == "compute1.site-b.org"


def test_ambiguous_by_case():
    with pytest.raises(HostMapError, match="several.*COMPUTE1, compute1"):
        resolve("compute1.example.org", ["compute1", "COMPUTE1"], {})


def test_unknown_node_names_known_hosts():
    with pytest.raises(HostMapError) as e:
        resolve("storage7", HOSTS, {})
    msg = str(e.value)
    assert "'storage7'" in msg and "known hosts: compute1, compute2, compute3" in msg


def test_no_hosts_at_all():
    with pytest.raises(HostMapError, match=r"known hosts: \(none\)"):
        resolve("compute1", [], {})


def test_hosts_may_be_any_iterable_with_duplicates():
    assert resolve("compute1.x", (h for h in ["compute1", "compute1"]), {}) == "compute1"


# --- node_for_host: nova host -> node --------------------------------------------------------------------------------
NODES = ["compute1", "compute2", "compute3"]
FQDN_NODES = ["compute1.example.org", "compute2.example.org"]


def test_reverse_exact_and_fqdn_both_ways():
    assert node_for_host("compute3", NODES, {}) == "compute3"
    assert node_for_host("compute1", FQDN_NODES, {}) == "compute1.example.org"
    assert node_for_host("compute2.example.org", NODES, {}) == "compute2"


def test_reverse_explicit():
    explicit = {"node-a": "compute3"}
    assert node_for_host("compute3", NODES + ["node-a"], explicit) == "node-a"
    # node compute3 is not the one for host compute3 when the map gives that host to node-a
    with pytest.raises(HostMapError, match="no such Pacemaker node"):
        node_for_host("compute3", NODES, explicit)


def test_reverse_node_mapped_elsewhere_is_not_matched_by_name():
    with pytest.raises(HostMapError) as e:
        node_for_host("compute1", NODES, {"compute1": "compute2"})
    assert "'compute1' is mapped to host 'compute2'" in str(e.value)


def test_reverse_two_nodes_mapped_to_one_host():
    with pytest.raises(HostMapError, match="several nodes to host 'compute1': a, b"):
        node_for_host("compute1", ["a", "b"], {"a": "compute1", "b": "compute1"})


def test_reverse_ambiguous_and_unknown():
    with pytest.raises(HostMapError, match="several Pacemaker nodes.*compute1.a.org, compute1.b.org"):
        node_for_host("compute1", ["compute1.a.org", "compute1.b.org"], {})
    with pytest.raises(HostMapError, match="known nodes: compute1, compute2, compute3"):
        node_for_host("compute9", NODES, {})


def test_round_trip_with_mixed_names():
    nodes = ["compute1.example.org", "compute2", "ctl-node-7"]
    hosts = ["compute1", "compute2.example.org", "hv7"]
    explicit = {"ctl-node-7": "hv7"}
    for node in nodes:
        host = resolve(node, hosts, explicit)
        assert node_for_host(host, nodes, explicit) == node
    assert [resolve(n, hosts, explicit) for n in nodes] == hosts


def test_with_the_config_option_syntax():
    explicit = config.parse_host_map("compute1.example.org:hv-1; compute2.example.org:hv-2")
    assert resolve("compute2.example.org", ["hv-1", "hv-2"], explicit) == "hv-2"
    assert node_for_host("hv-1", ["compute1.example.org", "compute2.example.org"], explicit) == \
        "compute1.example.org"
