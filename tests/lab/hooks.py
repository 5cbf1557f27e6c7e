"""What a BMC's power change does to its lab node (run by the BMC simulator: `python -m tests.lab.hooks off NODE`).

off: the host loses power: its pacemaker-remoted dies, its nova-compute stops and its guests are gone.
on:  the host boots (BOOT_SECONDS: no machine is back the instant its power is), its link comes up (a boot resets a cut NIC), a fresh /run, pacemaker-remoted starts. nova-compute
     is Pacemaker's to start (ocf:crashup:nova-compute), once the host's recovery is finished.
"""
import sys
import time

from tests.lab import lab, libvirtd, netns, pacemaker
from tests.lab.nova_env import NovaBoxError


BOOT_SECONDS = 3.0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("on", "off"):
        print("usage: python -m tests.lab.hooks on|off NODE", file=sys.stderr)
        return 2
    action, n = argv[0], lab.node(argv[1])
    if action == "off":
        pacemaker.kill_remoted(n)
        netns.kill_in_node(n, lab.CRASHUP_DAEMON)     # its guest monitor too
        if lab.guests_on():                  # its libvirtd and every qemu die with the host
            libvirtd.kill(n)
        try:
            lab.nova().stop_compute(n.nova_host, power_off=True)
        except NovaBoxError as e:
            print(f"hooks: nova-compute of {n.name}: {e}", file=sys.stderr)
    else:
        # An instant "boot" races Pacemaker itself: remoted back before the controller has processed the fencing
        # makes it probe through a connection it still thinks up ("Not connected to remote executor"), a failed
        # probe wants a stop, a stop that cannot run wants fencing: a loop no real host (minutes to boot) shows.
        time.sleep(BOOT_SECONDS)
        pacemaker.link(n, True)
        pacemaker.start_remoted(n, fresh_run=True)
        if lab.guests_on():                  # libvirtd is started at boot; its domains were defined, now shut off
            libvirtd.start(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
