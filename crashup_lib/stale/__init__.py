"""The CrashUp sweep: stale-task recovery for nova, cinder, glance and neutron.

The decision tables are crashup_lib.rules (plain data, no I/O); host recovery (recovery/repair.py) reads the same
tables.
"""
