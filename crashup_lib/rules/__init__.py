"""The CrashUp decision tables: (service, resource kind, stuck state, observed reality) -> outcome.

Plain data and pure functions, no I/O. The sweep's scanners look for `stuck_states()`, the Health Collector reports
one reality per resource, `decide()` gives the outcome and the fixers carry it out; host recovery
(repair.py) reads the nova rows with the reality `host_down`. Callers write `from crashup_lib import
rules` and `rules.decide(...)`, `rules.RUNNING`: the names below are the package's interface.

- model.py: the realities, the outcomes (Reset, CasUpdate, Error, Skip, Keep, Report, ByVmState), Kind and Rule.
- nova.py, cinder.py, glance.py, neutron.py: each service's rows, from the sources each names.
- tables.py: the tables assembled (RULES, KINDS) and what reads them: kind_of, rule_for, stuck_states, decide,
  via_api, check.
- docs.py: `python -m crashup_lib.rules.docs --markdown` renders docs/stale-rules.md from the tables (a test keeps
  the two equal). It is not imported here, so running it as a module does not import it twice.
"""
from crashup_lib.rules.glance import GLANCE_TRANSITIONS
from crashup_lib.rules.model import (ABSENT, ANY_STATE, BY_ATTACHMENTS, CORE_REALITIES, HOST_DOWN, PAUSED, RUNNING,
                                     SHUT_OFF, SUSPENDED, UNKNOWN, ByVmState, CasUpdate, Error, Keep, Kind, Outcome,
                                     Report, Reset, Rule, Skip, UnknownState, Values, fmt_values, values_of)
from crashup_lib.rules.nova import (ACTIVE, ACTIVE_THEN_SYNC, CLEAR_TASK, HOST_DOWN_RESET, NOVA_TASK_STATES,
                                    NOVA_VM_STATES, UNKNOWN_ERROR)
from crashup_lib.rules.tables import KINDS, RULES, check, decide, kind_of, rule_for, stuck_states, via_api
