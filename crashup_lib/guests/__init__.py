"""The node-side guest monitor (docs/guests.md): guest failures seen through libvirt's events, acted on through nova.

  kinds.py    pure: a libvirt event or domain state -> a Failure (watchdog, panic, killed, io_error) or None
  policy.py   pure: which policy (notify, reboot, none) applies to a server, and from which of its keys
  decide.py   pure: (failure, policy, nova's view, the node's state, recent reboots) -> an Action
  monitor.py  the service: libvirt events and reconciles -> decisions -> nova calls and events; state on disk
"""
