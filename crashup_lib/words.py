"""Boolean words as Pacemaker and fence-agents accept them (ocf_is_true, fencing.py). Kept import-free."""

TRUE_WORDS = ("1", "yes", "true", "on", "y")
FALSE_WORDS = ("0", "no", "false", "off", "n")
