"""The isolation guard (docs/isolation.md): a compute node cut off from the cluster takes itself out.

`timing` (the settings and the one deadline, a leaf: the fallback fence agent imports it), `decide` (the pure state
machine), `probe` (the health test), `act` (stop nova-compute, destroy or pause the guests), `watchdog` (the
device), `guard` (the daemon loop).
"""

#: what the guard sees, beside its pid and heartbeat files (crashup_lib.presence.ISOLATION) in the state folder
STATE_FILE = "isolation.json"
