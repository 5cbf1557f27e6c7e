"""crashup_lib.guests.policy (which policy a server gets, from where) and decide (what is done about a failure)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashup_lib import nova
from crashup_lib.guests import policy
from crashup_lib.guests.decide import Action, Node, decide
from crashup_lib.guests.kinds import Failure, Kind
from crashup_lib.guests.policy import Policy

UUID = "11111111-2222-4333-8444-555555555555"


def server(metadata=None, extra_specs=None, image_properties=None, *, host="compute1", vm_state="active",
           task_state=None):
    return nova.Server(UUID, "web-1", "ACTIVE", task_state, vm_state, 1, host,
                       flavor={"original_name": "m1", "extra_specs": extra_specs or {}}, image_id="img",
                       metadata=metadata or {}, image_properties=image_properties or {})


KEY, IMAGE_KEY = "crashup:guest_failure_policy", "crashup_guest_failure_policy"


@pytest.mark.parametrize("metadata, specs, image, expected", [
    ({}, {}, {}, (Policy.NOTIFY, "default")),
    ({}, {}, {IMAGE_KEY: "reboot"}, (Policy.REBOOT, "image")),
    ({}, {KEY: "none"}, {IMAGE_KEY: "reboot"}, (Policy.NONE, "flavor")),
    ({KEY: "reboot"}, {KEY: "none"}, {IMAGE_KEY: "notify"}, (Policy.REBOOT, "server metadata")),
    ({KEY: " Reboot "}, {}, {}, (Policy.REBOOT, "server metadata")),
])
def test_the_most_specific_source_wins(metadata, specs, image, expected):
    chosen = policy.choose(server(metadata, specs, image), "notify")
    assert (chosen.policy, chosen.source) == expected and chosen.problems == ()


def test_a_value_that_is_no_policy_is_skipped_with_one_line_and_the_next_source_decides():
    chosen = policy.choose(server({KEY: "reboot-please\nnow"}, {KEY: "reboot"}), "none")
    assert (chosen.policy, chosen.source) == (Policy.REBOOT, "flavor")
    assert len(chosen.problems) == 1 and "server metadata" in chosen.problems[0]
    assert "\n" not in chosen.problems[0]


def test_the_default_applies_when_the_server_carries_none_and_the_flavor_has_no_extra_specs():
    s = nova.Server(UUID, "web-1", "ACTIVE", None, "active", 1, "compute1", flavor={})
    assert policy.choose(s, "reboot") == policy.Chosen(Policy.REBOOT, "default")


@given(st.one_of(st.text(max_size=20), st.none(), st.integers(), st.booleans()))
def test_parse_takes_exactly_the_three_words(value):
    found = policy.parse(value)
    words = {"notify", "reboot", "none"}
    if isinstance(value, str) and value.strip().lower() in words:
        assert found is Policy(value.strip().lower())
    else:
        assert found is None


@given(st.dictionaries(st.sampled_from([KEY, "other"]), st.text(max_size=12), max_size=2),
       st.dictionaries(st.sampled_from([KEY, "hw:watchdog_action"]), st.text(max_size=12), max_size=2),
       st.dictionaries(st.sampled_from([IMAGE_KEY, "hw_watchdog_action"]), st.text(max_size=12), max_size=2),
       st.sampled_from(list(Policy)))
def test_choose_always_answers_one_policy_from_the_first_valid_source(metadata, specs, image, default):
    chosen = policy.choose(server(metadata, specs, image), default)
    valid = [(where, policy.parse(m.get(k))) for where, k, m in
             (("server metadata", KEY, metadata), ("flavor", KEY, specs), ("image", IMAGE_KEY, image))
             if policy.parse(m.get(k)) is not None]
    assert (chosen.policy, chosen.source) == (valid[0][1], valid[0][0]) if valid else (default, "default")


# --- decide ------------------------------------------------------------------------------------------------------

PANIC = Failure(Kind.PANIC, "crashed (guest panicked)")
HERE = Node("compute1", forced_down=False)


@pytest.mark.parametrize("the_server, node, expected", [
    (None, HERE, "no nova server"),
    (server(host="compute2"), HERE, "not compute1"),                  # evacuated or migrated: not ours any more
    (server(), Node("compute1", forced_down=True), "left to host recovery"),
    (server(task_state="powering-off"), HERE, "task powering-off"),   # a nova stop in progress
    (server(task_state="rebooting_hard"), HERE, "task rebooting_hard"),
    (server(vm_state="stopped"), HERE, "vm_state is stopped"),        # the operator stopped it
])
def test_what_is_not_the_monitors_to_act_on_is_ignored_whatever_the_policy(the_server, node, expected):
    for p in Policy:
        d = decide(PANIC, p, the_server, node, 0, 3)
        assert d.action is Action.IGNORE and expected in d.reason


@pytest.mark.parametrize("failure, p, reboots, action", [
    (PANIC, Policy.NONE, 0, Action.IGNORE),
    (PANIC, Policy.NOTIFY, 0, Action.NOTIFY),
    (PANIC, Policy.NOTIFY, 9, Action.NOTIFY),                          # notify never reboots, so never loops
    (PANIC, Policy.REBOOT, 0, Action.REBOOT),
    (PANIC, Policy.REBOOT, 2, Action.REBOOT),
    (PANIC, Policy.REBOOT, 3, Action.LEAVE_DOWN),                      # max_reboots 3 made: a crash loop
    (Failure(Kind.KILLED, "x"), Policy.REBOOT, 0, Action.REBOOT),
    (Failure(Kind.WATCHDOG, "x"), Policy.REBOOT, 0, Action.REBOOT),
    (Failure(Kind.WATCHDOG, "x", self_healed=True), Policy.REBOOT, 0, Action.NOTIFY),   # no second reboot
    (Failure(Kind.IO_ERROR, "x"), Policy.REBOOT, 0, Action.NOTIFY),
])
def test_the_policy_and_the_crash_loop_limit(failure, p, reboots, action):
    assert decide(failure, p, server(), HERE, reboots, 3).action is action
