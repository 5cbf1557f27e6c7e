"""The CrashUp sweep: stale-task recovery for nova, cinder, glance and neutron.

rules.py holds the decision tables (plain data, no I/O); host recovery (recovery/repair.py) reads the same tables.
Nothing is imported here, so `python -m crashup_lib.stale.rules` runs without a double import.
"""
