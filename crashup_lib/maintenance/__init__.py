"""The operator verbs (crashup drain, undrain, evacuate, restore, rejuvenate): planned maintenance and disaster recovery by hand,
on the same safety rules as host recovery.

  common.py         what they share: refusals (one line, exit 2, nothing changed), the host/node a verb acts on,
                    the quorum guard, progress lines and events, following a server until it settles
  drain.py          drain / undrain: the pure decisions per server, and the run
  evacuate_host.py  evacuate: fence a damaged host through Pacemaker; the recovery daemon evacuates it
  restore.py        restore: evacuate a server off its dead host if needed, then rebuild it from a backup image
  rejuvenate.py     rejuvenate: the rolling restart's pure decisions (which node next, wait, skip, pause)
  rejuvenate_steps.py  its steps through Pacemaker and nova, for the command and the recovery daemon's periodic roll
"""
