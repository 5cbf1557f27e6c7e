"""crashup: OpenStack compute high availability and recovery for Pacemaker."""

__version__ = "0.1.0"
