"""The CrashUp sweep: stale-task recovery for nova, cinder, glance and neutron.

The decision tables are crashup_lib.rules (plain data, no I/O); host recovery (repair.py) reads the same
tables.

Layout, lowest first (each module imports only those above it):
- db.py: the services' databases (SQLAlchemy Core, bounded in time, compare-and-swap UPDATE);
- scan.py: `Stuck`, what a scanner finds; the stale cutoff;
- nova.py, cinder.py, glance.py, neutron.py: each service's scanner and fixer (a `fix.Sweeper`);
- fix.py: a stuck resource and its reality -> the step (pure `plan`), then the change (`apply`);
- orphans.py: what exists with no row describing it (reported, never changed);
- sweep.py: one round: scan, observe, decide, fix, report (`sweep_once`);
- wiring.py: configuration -> sweepers, Health Collector routes, orphan finders;
- daemon.py: `crashup sweep --once | --dry-run | --daemon` (`run`), the daemon's loop, heartbeat and signals.
"""
