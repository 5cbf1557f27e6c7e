"""The CrashUp decision tables assembled, and what reads them: (service, resource kind, stuck state, observed
reality) -> outcome.

Pure functions, no I/O. The sweep's scanners look for `stuck_states()`, the Health Collector reports one reality
per resource, `decide()` gives the outcome and the fixers carry it out; host recovery (repair.py) reads
the nova rows with the reality `host_down`. `check()` keeps the tables consistent.
"""
from __future__ import annotations

import dataclasses

from crashup_lib.rules.cinder import CINDER_KINDS, CINDER_RULES
from crashup_lib.rules.glance import GLANCE_KINDS, GLANCE_RULES, GLANCE_TRANSITIONS
from crashup_lib.rules.model import (ANY_STATE, CORE_REALITIES, HOST_DOWN, ByVmState, CasUpdate, Error, Keep, Kind,
                                     Outcome, Reset, Rule, Skip, UnknownState, fmt_values)
from crashup_lib.rules.neutron import NEUTRON_KINDS, NEUTRON_RULES
from crashup_lib.rules.nova import NOVA_KINDS, NOVA_RULES, NOVA_TASK_STATES, NOVA_VM_STATES

KINDS: tuple[Kind, ...] = NOVA_KINDS + CINDER_KINDS + GLANCE_KINDS + NEUTRON_KINDS
RULES: tuple[Rule, ...] = tuple(NOVA_RULES + CINDER_RULES + GLANCE_RULES + NEUTRON_RULES)
_KINDS = {(k.service, k.kind): k for k in KINDS}
_INDEX = {(r.service, r.kind, r.state): r for r in RULES}


# ------------------------------------------------------------------------------------------------------ functions
def kind_of(service: str, kind: str) -> Kind:
    try:
        return _KINDS[(service, kind)]
    except KeyError:
        raise UnknownState(f"no rules for {service} {kind}") from None


def rule_for(service: str, kind: str, state: str) -> Rule:
    """The row for a state, or the kind's row for states it does not name."""
    kind_of(service, kind)
    rule = _INDEX.get((service, kind, state)) or _INDEX.get((service, kind, ANY_STATE))
    if rule is None:
        raise UnknownState(f"no rule for {service} {kind} {state!r}")
    return rule


def stuck_states(service: str, kind: str) -> tuple[str, ...]:
    """The states the sweep's scanner looks for (older than recovery_stale_period)."""
    kind_of(service, kind)
    return tuple(r.state for r in RULES if (r.service, r.kind) == (service, kind) and r.stuck
                 and r.state != ANY_STATE)


def decide(service: str, kind: str, state: str, reality: str, *, vm_state: str | None = None) -> Outcome:
    """The outcome for a resource stuck in `state` given what the Health Collector observed. nova rows may depend
    on the vm_state (ValueError without it). The outcome's why is filled in from the row; Error's values from the
    kind."""
    k = kind_of(service, kind)
    if reality not in k.reality_names:
        raise ValueError(f"{service} {kind}: reality {reality!r} is not one of {', '.join(k.reality_names)}")
    rule = rule_for(service, kind, state)
    outcome = rule.outcome(reality)
    if isinstance(outcome, ByVmState):
        if vm_state is None:
            raise ValueError(f"{service} {kind} {state} {reality}: the outcome depends on the vm_state")
        outcome = outcome.resolve(vm_state)
    return _complete(k, rule, outcome)


def _complete(k: Kind, rule: Rule, outcome: Outcome) -> Outcome:
    if isinstance(outcome, Error) and not outcome.values:
        outcome = dataclasses.replace(outcome, values=k.error)
    if not outcome.why:
        outcome = dataclasses.replace(outcome, why=rule.why)
    return outcome


def via_api(service: str, kind: str, outcome: Outcome) -> bool:
    """Whether the service's API can carry out a Reset or Error (else: a CAS write on its database)."""
    return isinstance(outcome, (Reset, Error)) and kind_of(service, kind).api_can_set(
        outcome.values or kind_of(service, kind).error)


def _concrete(outcome: Outcome | ByVmState) -> list[tuple[str | None, Outcome]]:
    if isinstance(outcome, ByVmState):
        return [(vm, outcome.resolve(vm)) for vm in NOVA_VM_STATES]
    return [(None, outcome)]


def check() -> list[str]:
    """Problems in the tables (empty: consistent): every row has an outcome for each of its kind's realities, no
    Reset the API cannot express, host recovery's rows (nova, host_down) need no database, glance moves only
    along its own transitions, and every nova task state is covered."""
    problems = []
    seen = set()
    for k in KINDS:
        missing = set(CORE_REALITIES) - set(k.reality_names)
        if missing:
            problems.append(f"{k.service} {k.kind}: realities lack {sorted(missing)}")
    for r in RULES:
        key = (r.service, r.kind, r.state)
        if key in seen:
            problems.append(f"{key}: two rows")
        seen.add(key)
        if (r.service, r.kind) not in _KINDS:
            problems.append(f"{key}: no such kind")
            continue
        k = _KINDS[(r.service, r.kind)]
        if not r.why:
            problems.append(f"{key}: no why")
        if tuple(x for x, _ in r.outcomes) != k.reality_names:
            problems.append(f"{key}: outcomes for {[x for x, _ in r.outcomes]}, realities are {k.reality_names}")
        for reality, raw in r.outcomes:
            if isinstance(raw, ByVmState) and r.service != "nova":
                problems.append(f"{key} {reality}: ByVmState outside nova")
            for vm_state, o in _concrete(raw):
                where = f"{key} {reality}" + (f" (vm_state {vm_state})" if vm_state else "")
                o = _complete(k, r, o)
                if isinstance(o, Reset) and not k.api_can_set(o.values):
                    problems.append(f"{where}: {k.api or 'no API'} cannot set {fmt_values(o.values)}")
                if r.service == "nova" and reality == HOST_DOWN and not (
                        isinstance(o, (Skip, Keep)) or (isinstance(o, (Reset, Error)) and k.api_can_set(o.values))):
                    problems.append(f"{where}: host recovery has only the API, not {o.short()}")
                if r.service == "glance" and isinstance(o, (CasUpdate, Error)) and r.state != ANY_STATE:
                    to = o.as_dict().get("status")
                    if to not in GLANCE_TRANSITIONS.get(r.state, ()):
                        problems.append(f"{where}: glance does not go from {r.state} to {to}")
    for state in NOVA_TASK_STATES:
        if ("nova", "instance", state) not in _INDEX:
            problems.append(f"nova task_state {state}: no row")
    for state in NOVA_VM_STATES:
        if ("nova", "instance_vm_state", state) not in _INDEX:
            problems.append(f"nova vm_state {state}: no row")
    return problems
