"""crashup_lib.isolation.timing: the settings parser (one line for a bad value, never a traceback) and deadline()."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashup_lib.isolation import timing
from crashup_lib.isolation.timing import Policy, Settings, SettingsError


def test_defaults_and_the_deadline_is_the_sum_of_the_guards_steps():
    s = timing.parse({})
    assert s == Settings() and not s.enabled
    assert timing.deadline(s) == 2 + 5 + 60 + 30
    s = timing.parse({"enabled": "yes", "isolation_timeout": "10", "probe_interval": "1", "probe_timeout": "3",
                      "action_timeout": "10", "margin": "5", "policy": "Pause", "watchdog": "none"})
    assert (s.enabled, s.policy, s.watchdog, s.margin, timing.deadline(s)) == (True, Policy.PAUSE, "", 5, 24)


def test_an_armed_watchdog_counts_when_it_is_the_slower():
    s = timing.parse({"watchdog": "/dev/watchdog", "watchdog_timeout": "120"})
    assert timing.deadline(s) == 5 + 120                       # a hung guard: its last pet, then the timeout
    s = timing.parse({"watchdog": "/dev/watchdog", "watchdog_timeout": "70"})
    assert timing.deadline(s) == 97


@pytest.mark.parametrize("values, says", [
    ({"isolation_timeout": "0"}, "isolation_timeout: 0 is not between 1 and 3600 seconds"),
    ({"probe_timeout": "5s"}, "probe_timeout: '5s' is not a number of seconds"),
    ({"probe_timeout": "1e3"}, "not a number of seconds"),
    ({"policy": "kill"}, "policy: 'kill' is not destroy or pause"),
    ({"enabled": "maybe"}, "enabled: 'maybe' is not true or false"),
    ({"watchdog": "dev/watchdog"}, "watchdog: 'dev/watchdog' is not a device path"),
    ({"watchdog": "/dev/../etc/passwd"}, "is not a device path"),
    ({"watchdog": "/dev/watchdog"}, "watchdog needs a watchdog_timeout"),
    ({"watchdog": "/dev/watchdog", "watchdog_timeout": "67"}, "must exceed isolation_timeout + probe_interval + "
                                                                "probe_timeout (67s)"),
    ({"isolation_timeot": "5"}, "unknown setting 'isolation_timeot'"),
    ({"isolation_timeout": "11"}, "isolation_timeout 11s must be at least probe_interval + probe_timeout + the "
                                  "longer of the two (12s)"),
])
def test_a_bad_setting_is_one_line_naming_it(values, says):
    with pytest.raises(SettingsError) as e:
        timing.parse(values)
    assert says in str(e.value) and "\n" not in str(e.value)


@given(st.dictionaries(st.sampled_from(sorted(timing.FIELDS) + ["other"]), st.text(max_size=30), max_size=6))
def test_any_text_parses_or_is_one_settings_error(values):
    try:
        s = timing.parse(values)
    except SettingsError as e:
        assert "\n" not in str(e) and str(e).startswith("isolation: ")
    else:
        assert timing.deadline(s) > 0 and timing.parse(timing.values(s)) == s


numbers = st.decimals(min_value="0.1", max_value="9.9", places=3).map(str)     # the grace holds a lost probe


@given(st.booleans(), numbers, numbers, numbers, st.sampled_from(list(Policy)), st.sampled_from(["", "/dev/watchdog"]))
def test_values_round_trip_through_parse(enabled, interval, timeout, action, policy, device):
    s = Settings(enabled=enabled, isolation_timeout=30, probe_interval=float(interval), probe_timeout=float(timeout),
                 action_timeout=max(float(action), 1), policy=policy, watchdog=device,
                 watchdog_timeout=1300 if device else 0)
    assert timing.parse(timing.values(s)) == s
