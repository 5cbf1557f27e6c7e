"""The lab's command line: python -m tests.lab up|down|status|fail|power|bmc-fault|nova-fault|guest|demo"""
import argparse
import sys

from tests.lab import controllers, guests, lab, topology
from tests.lab.netns import LabError
from tests.lab.nova_env import NovaBoxError, NovaEnvError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab",
                                description="crashup's local lab: Pacemaker, nova, cinder, BMCs, RabbitMQ")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the whole lab up")
    up.add_argument("--nodes", type=int, default=topology.DEFAULT_NODES, choices=range(1, topology.MAX_NODES + 1),
                    metavar=f"1-{topology.MAX_NODES}")
    up.add_argument("--controllers", type=int, default=1, choices=(1, 3, 5),
                    help="1: ctl1 on the host (default); 3 or 5: each in its own namespaces, fenced by its BMC")
    up.add_argument("--guests", action="store_true",
                    help="real guests possible: a libvirtd per compute node; servers of a flavor with extra spec "
                         "lab:guest=qemu are qemu domains (tests/lab/guests.py)")
    up.add_argument("--guest-monitor", action="store_true",
                    help="--guests, and crashup's guest monitor (crashup guests --daemon) cloned on every compute node")
    up.add_argument("--isolation", action="store_true",
                    help="the inventory's isolation section (lab.LAB_ISOLATION): the isolation guard's clone and the "
                         "fallback fencing level fence_crashup_isolation (docs/isolation.md); implies --guests")
    sub.add_parser("down", help="stop everything and remove what the lab made (logs stay)")
    sub.add_parser("status", help="cluster, BMC, bus, cinder and nova state")
    crm = sub.add_parser("crm", help="run a command inside a controller (several controllers): crm ctl2 -- crm_mon -1")
    crm.add_argument("controller")
    crm.add_argument("cmd", nargs=argparse.REMAINDER)
    f = sub.add_parser("fail", help="fail a compute node (--how crash|net|power), the bus (fail bus --how "
                                    "stop|freeze|start) or a cinder service (fail cinder-volume --how kill|start)")
    f.add_argument("node", help="a compute node, `bus` for the RabbitMQ broker, or cinder-api|cinder-scheduler|"
                                "cinder-volume")
    f.add_argument("--how", choices=tuple(dict.fromkeys(lab.FAILURES + lab.BUS_FAILURES + lab.CINDER_FAILURES
                                                        + controllers.FAILURES)),
                   help="a node: crash (default), net, power; the bus: stop (SIGKILL, default), freeze (SIGSTOP), "
                        "start (SIGCONT a frozen broker, start a stopped one); a cinder service: kill (SIGKILL, "
                        "default), start; a controller (ctlN, several controllers): crash (default), net (cut off), "
                        "heal (link back), stop (clean shutdown), boot")
    pw = sub.add_parser("power", help="power a node on or off through its BMC")
    pw.add_argument("node")
    pw.add_argument("state", choices=("on", "off"))
    bf = sub.add_parser("bmc-fault", help="make a BMC slow/hung/rejecting/stuck, or healthy again")
    bf.add_argument("node")
    bf.add_argument("fault", nargs="*", help="slow SECONDS | hang | reject | stuck | (nothing: healthy)")
    nf = sub.add_parser("nova-fault", help="make nova API requests fail or hang, or clear faults")
    nf.add_argument("--match", help="regex on 'METHOD PATH'; omit to clear all faults")
    nf.add_argument("--status", type=int, default=500)
    nf.add_argument("--delay", type=float, default=0.0)
    nf.add_argument("--count", type=int, default=1)
    g = sub.add_parser("guest", help="fail a real guest (lab up --guests): --how watchdog|panic|kill|run")
    g.add_argument("server", help="the server's uuid (= its domain's)")
    g.add_argument("--how", choices=guests.HOWS, required=True,
                   help="watchdog: stop petting the watchdog; panic: kernel panic (pvpanic); kill: SIGKILL its "
                        "qemu; run: back to normal")
    sub.add_parser("demo", help="the main job: a compute node fails and is fenced, live")
    args = p.parse_args(argv)
    try:
        if args.command == "up":
            print(f"lab up: {'ctl1' if args.controllers == 1 else f'{args.controllers} controllers'} + {args.nodes} "
                  "compute nodes")
            t = lab.up(args.nodes, controllers=args.controllers, guests=args.guests,
                       guest_monitor=args.guest_monitor, isolation=args.isolation)
            print(f"lab up in {t.total:.1f}s; export OS_CLIENT_CONFIG_FILE={lab.CLOUDS_YAML} (cloud {lab.CLOUD})")
        elif args.command == "down":
            print("lab down")
            t = lab.down()
            print(f"lab down in {t.total:.1f}s")
        elif args.command == "status":
            print(lab.status_text())
        elif args.command == "crm":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                p.error("crm CTL -- COMMAND...: no command")
            return controllers.main(["crm", args.controller, "--", *cmd])
        elif args.command == "fail" and controllers.read_state() and args.node.startswith("ctl"):
            how = args.how or "crash"
            if how not in controllers.FAILURES:
                p.error(f"fail {args.node}: a controller takes --how {', '.join(controllers.FAILURES)}")
            print(controllers.fail(controllers.controller(args.node), how))
        elif args.command == "fail" and args.node == "bus":
            how = args.how or "stop"
            if how not in lab.BUS_FAILURES:
                p.error(f"fail bus: --how {how} is not for the bus; it takes {', '.join(lab.BUS_FAILURES)}")
            print(lab.fail_bus(how))
        elif args.command == "fail" and args.node.startswith("cinder-"):
            how = args.how or "kill"
            if how not in lab.CINDER_FAILURES:
                p.error(f"fail {args.node}: a cinder service takes --how {' or '.join(lab.CINDER_FAILURES)}")
            print(lab.fail_cinder(args.node, how))
        elif args.command == "fail":
            how = args.how or "crash"
            if how not in lab.FAILURES:
                p.error(f"fail {args.node}: --how {how} is not for a node; a node takes {', '.join(lab.FAILURES)}")
            lab.fail(lab.node(args.node), how)
            print(f"{args.node}: failed ({how})")
        elif args.command == "power":
            with lab.bmc(lab.node(args.node)) as session:
                session.set_power(args.state)
            print(f"{args.node}: power {args.state} requested")
        elif args.command == "bmc-fault":
            lab.bmc_fault(lab.node(args.node), " ".join(args.fault))
            print(f"{args.node}: BMC fault {' '.join(args.fault) or 'cleared'}")
        elif args.command == "nova-fault":
            if args.match:
                print(lab.nova().add_fault(args.match, status=args.status or None, delay=args.delay,
                                           count=args.count))
            else:
                print(f"cleared {lab.nova().clear_faults()} nova faults")
        elif args.command == "guest":
            if not lab.guests_on():
                raise LabError("the lab has no real guests: `python -m tests.lab up --guests`")
            print(guests.inject(args.server, args.how))
        elif args.command == "demo":
            from tests.lab import demo
            return demo.main()
    except (LabError, NovaBoxError, NovaEnvError) as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
