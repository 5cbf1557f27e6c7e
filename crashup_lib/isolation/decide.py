"""The guard's state machine, pure: healthy -> suspect (since) -> isolated, from probe answers and the clock.

`since` is when the last good probe STARTED: its answer crossed the link, so the loss came after that moment, and
every duration is measured from it (never later than the loss: the guard errs on acting early, which is what the
fallback fence level's wait relies on, timing.deadline). A probe answered good before isolation_timeout has
passed ends the suspicion: a blip shorter than that grace never counts. Once isolated, the guard has acted; a
good probe after that says the node is back (its nova-compute stays stopped until Pacemaker starts it).
"""
from __future__ import annotations

import dataclasses
import enum

from crashup_lib.isolation.timing import Settings


class Phase(enum.Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    ISOLATED = "isolated"


class Answer(enum.Enum):
    QUORATE = "quorate"                   # the cluster answered through remoted's proxy, and it has quorum
    INQUORATE = "inquorate"               # it answered without quorum: not a cluster to stay up for
    NO_ANSWER = "no-answer"               # the probe failed or timed out: cut off (or remoted gone)


class Step(enum.Enum):
    NOTHING = "nothing"
    LOST = "lost"                         # healthy -> suspect: log it, stop petting the watchdog
    BLIP = "blip"                         # suspect -> healthy within the grace
    ISOLATE = "isolate"                   # suspect -> isolated: act now (stop nova-compute, guests)
    BACK = "back"                         # isolated -> healthy: the cluster answers again


@dataclasses.dataclass(frozen=True)
class State:
    phase: Phase
    since: float                          # start of the last good probe
    answer: Answer = Answer.QUORATE       # the last probe's answer

    def lost_for(self, now: float) -> float:
        return 0.0 if self.phase is Phase.HEALTHY else max(0.0, now - self.since)


def start(now: float) -> State:
    """The guard's first state: Pacemaker has just started it on this node, so the node was connected then."""
    return State(Phase.HEALTHY, now)


def observe(state: State, settings: Settings, answer: Answer, started: float, now: float) -> tuple[State, Step]:
    """The state after a probe that started at `started` and answered `answer` at `now`."""
    if answer is Answer.QUORATE:
        fresh = State(Phase.HEALTHY, max(started, state.since), answer)
        if state.phase is Phase.SUSPECT:
            return fresh, Step.BLIP
        if state.phase is Phase.ISOLATED:
            return fresh, Step.BACK
        return fresh, Step.NOTHING
    if state.phase is Phase.HEALTHY:
        state = State(Phase.SUSPECT, state.since, answer)
        after, step = tick(state, settings, now)
        return after, (Step.LOST if step is Step.NOTHING else step)
    return tick(dataclasses.replace(state, answer=answer), settings, now)


def tick(state: State, settings: Settings, now: float) -> tuple[State, Step]:
    """The state at `now` with no new answer: a suspicion older than isolation_timeout isolates."""
    if state.phase is Phase.SUSPECT and now >= state.since + settings.isolation_timeout:     # as next_wake says
        return dataclasses.replace(state, phase=Phase.ISOLATED), Step.ISOLATE
    return state, Step.NOTHING


def pets(state: State) -> bool:
    """Whether the watchdog is petted in this state: only while healthy, as sbd does (a guard that hangs, or a
    node cut off for longer than the watchdog's timeout, is reset by the device)."""
    return state.phase is Phase.HEALTHY


def next_wake(state: State, settings: Settings, probe_due: float) -> float:
    """When the loop must next look: the next probe, or earlier the moment a suspicion reaches the timeout."""
    if state.phase is Phase.SUSPECT:
        return min(probe_due, state.since + settings.isolation_timeout)
    return probe_due
