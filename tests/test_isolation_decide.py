"""crashup_lib.isolation.decide: the guard's state machine, alone and driven by the guard's own loop on a fake clock."""
from __future__ import annotations

from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from crashup_lib.isolation import decide
from crashup_lib.isolation.decide import Answer, Phase, Step
from crashup_lib.isolation.guard import Guard
from crashup_lib.isolation.timing import Settings, deadline

S = Settings(enabled=True, isolation_timeout=10, probe_interval=1, probe_timeout=3, action_timeout=5)
Q, NO, INQ = Answer.QUORATE, Answer.NO_ANSWER, Answer.INQUORATE


def test_a_loss_is_suspect_first_then_isolated_once_it_lasts_the_timeout():
    s = decide.start(0)
    s, step = decide.observe(s, S, Q, 1, 1.1)                # a good probe that started at 1
    assert (s.phase, s.since, step) == (Phase.HEALTHY, 1, Step.NOTHING)
    s, step = decide.observe(s, S, NO, 2, 5)                 # the next one timed out
    assert (s.phase, step) == (Phase.SUSPECT, Step.LOST)
    assert s.lost_for(5) == 4 and decide.pets(s) is False
    assert decide.tick(s, S, 10.9) == (s, Step.NOTHING)
    s, step = decide.tick(s, S, 11)                          # 10 s after the last good probe started
    assert (s.phase, step) == (Phase.ISOLATED, Step.ISOLATE)
    assert decide.observe(s, S, NO, 12, 15) == (s, Step.NOTHING)     # acting again is the guard's retry, not a step
    back, step = decide.observe(s, S, Q, 16, 16.1)
    assert (back.phase, back.since, step) == (Phase.HEALTHY, 16, Step.BACK) and decide.pets(back)


def test_a_blip_within_the_grace_never_counts_and_an_inquorate_answer_is_a_loss():
    s = decide.start(0)
    s, step = decide.observe(s, S, INQ, 1, 1.1)
    assert (s.phase, s.answer, step) == (Phase.SUSPECT, INQ, Step.LOST)
    s, step = decide.observe(s, S, Q, 9, 9.2)
    assert (s.phase, s.since, step) == (Phase.HEALTHY, 9, Step.BLIP)


def test_a_probe_that_takes_past_the_timeout_isolates_when_it_answers():
    s = decide.start(0)
    s, _ = decide.observe(s, S, NO, 1, 4)
    s, step = decide.observe(s, S, NO, 8, 11)
    assert (s.phase, step) == (Phase.ISOLATED, Step.ISOLATE)


def test_the_loop_wakes_up_at_the_timeout_not_at_the_next_probe():
    s, _ = decide.observe(decide.start(0), S, NO, 1, 4)
    assert decide.next_wake(s, S, 100) == 10
    assert decide.next_wake(decide.start(0), S, 100) == 100


# --- the guard's loop on a simulated link: property tests -----------------------------------------------------------

class Sim:
    """A fake clock and a link that is down over given spans; the probe answers at once when up, and takes the probe
    timeout when down (crm_node hangs on a cut link: docs/isolation.md)."""

    def __init__(self, downs, settings=S, up_probe=0.05):
        self.t, self.downs, self.settings, self.up_probe = 0.0, downs, settings, up_probe
        self.acted: list[float] = []

    def down(self, t):
        return any(a <= t < b for a, b in self.downs)

    def probe(self, timeout):
        started = self.t
        if self.down(started):
            self.t += timeout
            return NO, "timed out", started, self.t
        self.t += self.up_probe
        return (NO, "cut", started, self.t) if self.down(self.t) else (Q, "", started, self.t)

    def isolate(self, *_):
        from crashup_lib.isolation.act import Outcome
        self.acted.append(self.t)
        self.t += self.settings.action_timeout       # the longest an action takes
        return Outcome("stopped")

    def wait(self, seconds):
        self.t += seconds

    def run(self, until):
        g = Guard(self.settings, node="n", host="h", service=None, libvirt_uri="test:///default", state_dir="/nonexistent",
                  prober=self.probe, isolate=self.isolate, clock=lambda: self.t, wait=self.wait)
        g.state = decide.start(self.t)
        while self.t < until:
            g.step()
        return g


spans = st.lists(st.tuples(st.floats(0, 200), st.floats(0.1, 40)), max_size=6).map(
    lambda xs: sorted((round(a, 2), round(a + d, 2)) for a, d in xs))


@hsettings(max_examples=300, deadline=None)
@given(spans)
def test_outages_shorter_than_the_grace_never_isolate(downs):
    merged = []
    for a, b in downs:
        if merged and a <= merged[-1][1] + S.probe_interval + S.probe_timeout:      # too close to be apart
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    short = [(a, b) for a, b in merged if b - a < S.isolation_timeout - S.probe_interval - S.probe_timeout - 0.1]
    sim = Sim(short)
    sim.run(260)
    assert sim.acted == []


@hsettings(max_examples=300, deadline=None)
@given(st.floats(0.5, 100), st.floats(0, 30), st.floats(0.1, 2.5), st.floats(0.1, 2.5))
def test_a_lasting_loss_is_acted_on_by_the_deadline(loss, blip_before, interval, timeout):
    s = Settings(enabled=True, isolation_timeout=10, probe_interval=round(interval, 2), probe_timeout=round(timeout, 2),
                 action_timeout=5)
    downs = [(max(loss - blip_before - 5, 0), max(loss - blip_before - 4.9, 0)), (loss, 10_000)]
    sim = Sim(downs, s)
    g = sim.run(loss + deadline(s) + 10)
    assert sim.acted, "never acted"
    assert sim.acted[0] + s.action_timeout <= loss + deadline(s) + 1e-6      # the fallback fence level's promise
    assert g.state.phase is Phase.ISOLATED and len(sim.acted) == 1
