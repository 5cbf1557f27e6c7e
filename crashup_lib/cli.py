"""The `crashup` command. Each subcommand is a thin shell over the library; errors are one line and exit 1 or 2."""
from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time

from crashup_lib import __version__, config, log, proc
from crashup_lib.log import REDACTED, one_line, redact


def _load(args) -> config.Config:
    return config.load(getattr(args, "config", None))


def _config(args) -> int:
    if args.what == "sample":
        print(config.sample())
        return 0
    cfg = config.load(args.file)
    if args.what == "check":
        print(f"crashup: configuration OK ({args.file or config.DEFAULT_PATH})")
        return 0
    width = max(len(name) for name in cfg)
    for name in cfg:
        value = cfg[name]
        shown = " ".join(value) if isinstance(value, tuple) else value
        shown = redact(str(shown))                  # the sweep's database URLs may hold a password
        print(f"{name:<{width}}  {shown!s:<30}  {cfg.sources[name]}")
    return 0


def _daemon(args) -> int:
    from crashup_lib.recovery import daemon
    return daemon.main(_load(args), args.state_dir)


def _status(args) -> int:
    from crashup_lib import pacemaker
    requests = pacemaker.requests()
    nodes = {n.name: n for n in pacemaker.nodes()}
    print(f"{'node':<14}{'type':<8}{'online':<8}{'recovery':<12}{'mode':<8}{'fenced':<21}note")
    for name in sorted(set(nodes) | set(requests)):
        node, req = nodes.get(name), requests.get(name)
        fenced = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(req.fenced_at)) if req else ""
        print(f"{name:<14}{node.type if node else '?':<8}{('yes' if node and node.online else 'no'):<8}"
              f"{req.state if req else '-':<12}{req.mode if req else '':<8}{fenced:<21}{req.note if req else ''}")
    if args.instances:
        from crashup_lib import nova
        client = nova.Nova.from_config(_load(args))
        for name, req in sorted(requests.items()):
            if req.host:
                print(f"\ninstances still on {req.host}:")
                for s in client.servers_on_host(req.host):
                    print(f"  {s.id}  {s.name:<24}{s.status:<10}{s.task_state or ''}")
    return 0


def _plan(args) -> int:
    from crashup_lib import nova
    from crashup_lib.recovery import pipeline
    from crashup_lib import cinder
    cfg = _load(args)
    client = nova.Nova.from_config(cfg)
    block_storage = None
    if cfg.volume_checks:                       # the volumes each server has (unreadable: the plan shows ?)
        try:
            block_storage = cinder.CinderApi.from_config(cfg)
        except cinder.CinderError as e:
            print(f"crashup: volumes not read: {e}", file=sys.stderr)
    the_plan = pipeline.plan_for_host(client, args.host, cfg, target_host=args.target, skip_error=args.skip_error,
                                      cinder=block_storage)
    print(json.dumps(the_plan.to_dict(), indent=2) if args.json else the_plan.render())
    return 0


def _recover(args) -> int:
    """With the recovery daemon running (anywhere in the cluster), the request is its own: `--force` lifts the hold
    and this follows it; without one, the recovery runs here, in the foreground."""
    from crashup_lib import pacemaker, pcs
    from crashup_lib.maintenance import common
    from crashup_lib.recovery import daemon
    cfg = _load(args)
    cluster = pacemaker.Cluster()
    req = cluster.request(args.node)
    if req is None:
        raise pacemaker.PacemakerError(f"no recovery request for {args.node}: fencing records one")
    if args.force and req.open and not req.forced:   # past the storm guard or the notify hand-off, on purpose
        req = cluster.request(args.node) or req          # (read again: the daemon may have just moved it)
        if req.open:                                     # same state: a pending one still waits for its fencing
            req = req.moved_to(req.state, "resumed by the operator", forced=True)    # (moving clears the hold)
            cluster.write_request(req)
    if req.open and req.hold is pacemaker.Hold.STORM:
        print(f"{args.node}: held by the storm guard ({req.note}); `crashup recover {args.node} --force` to go on",
              file=sys.stderr)
        return 1
    where = cluster.running_on(pcs.CRASHUP) if req.open else set()
    if where:                                    # the daemon works on it: a second pipeline here would race it
        print(f"{args.node}: the recovery daemon on {', '.join(sorted(where))} runs it; following it", flush=True)
        try:
            req = common.follow_request(common.Context(cfg, None, cluster), args.node, req.fenced_at)
        except common.TimedOut as e:
            print(f"crashup: {e}", file=sys.stderr)
            return 1
        return 0 if not req.open or req.hold is pacemaker.Hold.NOTIFIED else 1
    runner = daemon.Daemon(cfg, state_dir="/run/crashup", cluster=cluster)
    try:
        progress = runner.recovery().recover(req)
    finally:
        runner.close_emitter()                   # its events reach the bus (or wait in the outbox) before we exit
    print(progress.summary)
    return 0 if not progress.request.open or progress.waiting else 1


def _release(args) -> int:
    from crashup_lib import pacemaker
    from crashup_lib.recovery import pipeline
    req = pipeline.release(args.node, pacemaker.Cluster())
    print(f"{args.node}: recovery {req.state}")
    return 0


def _maintenance(args) -> int:
    """drain, undrain, evacuate, restore, rejuvenate: a Refused is one line and exit 2 (nothing was changed)."""
    from crashup_lib import events, nova, pacemaker
    from crashup_lib.maintenance import common, drain, evacuate_host, rejuvenate_steps, restore
    cfg = _load(args)
    emitter = None if args.dry_run else events.Emitter.from_config(cfg)
    cluster = pacemaker.Cluster()
    ctx = common.Context(cfg, nova.Nova.from_config(cfg), cluster, emitter)
    try:
        if args.command == "rejuvenate":
            return rejuvenate_steps.rejuvenate(ctx, args.node, args.dry_run)
        if args.command == "drain":
            return drain.drain(ctx, args.host, args.dry_run)
        if args.command == "undrain":
            return drain.undrain(ctx, args.host, args.dry_run)
        if args.command == "evacuate":
            return evacuate_host.evacuate(ctx, args.host, args.to, args.dry_run, wait=not args.no_wait)
        return restore.restore(ctx, args.server, args.image, args.to, args.in_place, args.dry_run)
    except common.Refused as e:
        print(f"crashup: {one_line(redact(str(e)))}", file=sys.stderr)
        return 2
    finally:
        if emitter is not None:
            emitter.close(5.0)


def _events(args) -> int:
    from crashup_lib import events
    cfg = _load(args)
    if args.bus:
        return _events_bus(args, cfg)
    if not cfg.journal:
        print("crashup: no journal configured ([events] journal)", file=sys.stderr)
        return 2
    stream = events.follow(cfg.journal, from_start=not args.new) if args.follow else events.read(cfg.journal)
    signal.signal(signal.SIGTERM, _interrupted)     # a follower's normal end, like Ctrl-C (which a background
    try:                                            # shell may have set to be ignored)
        for event in stream:
            print(json.dumps(event) if args.json else events.listing(event), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _events_bus(args, cfg) -> int:
    """`crashup events --follow --bus`: the crashup events arriving on the notification bus, each once, from now on
    (a private queue bound to <topic>.* on the control exchange), until Ctrl-C or SIGTERM."""
    from crashup_lib import bus
    from crashup_lib.events import bus as events_bus
    from crashup_lib.events import listing
    if not args.follow or args.new:
        print("crashup: --bus goes with --follow, not --new (the bus has no history: it shows events from now on)",
              file=sys.stderr)
        return 2
    if not cfg.transport_url_file:
        print("crashup: no bus configured ([events] transport_url_file)", file=sys.stderr)
        return 2

    def on_state(state: str, line: str) -> None:
        print(f"crashup: bus {'lost' if state == 'lost' else 'back'}: {one_line(redact(line))}", file=sys.stderr,
              flush=True)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        for event in events_bus.follow(cfg, on_state=on_state):
            print(json.dumps(event) if args.json else listing(event), flush=True)
    except KeyboardInterrupt:
        pass
    except bus.BusError as e:
        print(f"crashup: {one_line(redact(str(e)))}", file=sys.stderr)
        return 1
    return 0


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def _since(raw: str) -> float:
    """--since: an ISO 8601 date-time (UTC unless it says otherwise), or a duration ago (30m, 2h, 7d is 168h)."""
    import datetime
    try:
        return time.time() - config.duration().parse(raw)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise config.ConfigError(f"--since {log.shown(raw)}: expected a date-time (2026-12-01T17:30:00Z) or a "
                                 "duration ago (30m, 2h)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _report(args) -> int:
    """`crashup report NODE`: one recovery's timeline as text, and as an SVG picture (--svg FILE)."""
    from crashup_lib import events, pacemaker
    from crashup_lib.report import svg, text, timeline
    cfg = _load(args)
    since = _since(args.since) if args.since is not None else None
    if not cfg.journal:
        print("crashup: no journal configured ([events] journal)", file=sys.stderr)
        return 2
    found = events.read(cfg.journal)
    try:
        request = pacemaker.request(args.node, timeout=5)
    except pacemaker.PacemakerError:
        request = None                          # the journal alone tells the timeline (e.g. on a standby)
    try:
        chosen = timeline.select(found, args.node, since, request)
    except timeline.NoRecovery as e:
        print(f"crashup: {one_line(str(e))}", file=sys.stderr)
        return 2 if e.unknown else 1
    print(text.render(chosen))
    if args.svg:
        with open(args.svg, "w", encoding="utf-8") as f:
            f.write(svg.render(chosen))
        print(f"picture: {args.svg}")
    return 0


def _metrics(args) -> int:
    """`crashup metrics`: the Prometheus text the daemon's textfile holds, from the journal and the CIB now."""
    from crashup_lib import events, metrics, pacemaker
    cfg = _load(args)
    tally = metrics.fold(events.read(cfg.journal)) if cfg.journal else metrics.Tally()
    try:
        requests, rc = pacemaker.requests(), 0
    except pacemaker.PacemakerError as e:       # the journal's counters still say something
        print(f"crashup: recovery requests not read: {one_line(str(e))}", file=sys.stderr)
        requests, rc = None, 1
    sys.stdout.write(metrics.exposition(tally, requests))
    return rc


def _sweep(args) -> int:
    from crashup_lib.sweep import daemon
    mode = "daemon" if args.daemon else "dry-run" if args.dry_run else "once"
    if args.state_dir and mode != "daemon":
        print("crashup: --state-dir goes with --daemon", file=sys.stderr)
        return 2
    return daemon.run(_load(args), mode, state_dir=args.state_dir)


def _guests(args) -> int:
    """`crashup guests`: this node's guests, their failures and policies; --daemon: the guest monitor."""
    cfg = _load(args)
    from crashup_lib.guests import monitor
    host = monitor.own_host(cfg, args.node)
    if args.daemon:
        return monitor.main(cfg, args.state_dir or "/run/crashup", args.node)
    if args.state_dir:
        print("crashup: --state-dir goes with --daemon", file=sys.stderr)
        return 2
    from crashup_lib import nova
    from crashup_lib.guests import show
    client = None if args.no_nova else nova.Nova.from_config(cfg)
    found = show.rows(cfg, host, client)
    print(json.dumps(found, indent=2) if args.json else show.render(found))
    return 0


def _isolation(args) -> int:
    """`crashup isolation`: the guard's view and the cluster's answer now; --daemon: the isolation guard."""
    cfg = _load(args)
    from crashup_lib.isolation import act, guard, show, timing
    pairs = [s.partition("=") for s in args.set or []]
    try:
        if any(not eq for _, eq, _ in pairs):
            raise timing.SettingsError("--set takes NAME=VALUE")
        settings = timing.parse({k: v for k, _, v in pairs})
    except timing.SettingsError as e:
        raise config.ConfigError(str(e)) from None
    if not args.daemon:
        return show.main(args.state_dir or "/run/crashup", settings, args.json)
    from crashup_lib.guests import monitor
    host = monitor.own_host(cfg, args.node)
    node = args.node or host
    try:
        service = act.nova_compute(args.nova_unit, args.nova_stop_command, args.nova_status_command, host=host,
                                   node=node)
    except ValueError as e:
        raise config.ConfigError(f"isolation: nova-compute: {e}") from None
    uri = args.libvirt_uri.replace("{host}", host) if args.libvirt_uri else monitor.libvirt_uri(cfg, host)
    return guard.main(cfg, settings, node=node, host=host, service=service, libvirt_uri=uri,
                      state_dir=args.state_dir or "/run/crashup")


def _pcs(args) -> int:
    from crashup_lib import pcs
    inv = pcs.load(args.inventory)
    for warning in inv.warnings:
        print(f"crashup: warning: {warning}", file=sys.stderr)
    if args.conf:
        if args.action == "apply":
            print("crashup: --conf goes with render: apply changes only the CIB", file=sys.stderr)
            return 2
        print(pcs.crashup_conf(inv), end="")
        return 0
    if args.action == "apply" or args.apply:
        return apply_pcs(pcs.commands(inv))
    print(pcs.script(inv), end="")
    return 0


PCS_TIMEOUT = 120          # seconds, each pcs / cibadmin call of `crashup pcs apply`
CIB_LIMIT = 256 * 1024 * 1024   # bytes of `cibadmin -Q`: a CIB of thousands of nodes, and never more


def _masked(arg: str) -> str:
    """A pcs argument as it may be shown: a clear BMC password (password=..., passwd=...) is not."""
    name, sep, _ = arg.partition("=")
    return f"{name}={REDACTED}" if sep and re.fullmatch(r"(?i)(password|passwd|.*_secret)", name) else arg


def apply_pcs(commands: list[list[str]], run=None) -> int:
    """Each command on a copy of the live CIB (`pcs -f COPY`), then one `pcs cluster cib-push COPY --config`. A failing
    command ends it with one line naming the command, before the push: the live CIB stays as it was."""
    import os
    import shlex
    import tempfile

    def bounded(argv):                          # a hung pcs or CIB must not hang the command
        try:
            return proc.run(argv, PCS_TIMEOUT, limit=CIB_LIMIT)
        except proc.NotInstalled:
            return proc.Done(127, "", f"Error: {argv[0]} not found")
        except proc.TimedOut:
            return proc.Done(124, "", f"Error: no answer within {PCS_TIMEOUT}s")
    run = run or bounded

    def said(cp) -> str:                        # pcs's first "Error: ..." line, else the first line it said
        lines = (cp.stderr or cp.stdout or "").strip().splitlines()
        lines = [line for line in lines if line.startswith("Error")] or lines
        return f": {one_line(redact(lines[0].strip()), 300)}" if lines else ""
    with tempfile.TemporaryDirectory(prefix="crashup-pcs-") as tmp:     # 0700: the copy may hold a clear password
        copy = os.path.join(tmp, "cib.xml")
        cp = run(["cibadmin", "-Q"])
        if cp.returncode != 0:
            print(f"crashup: cibadmin -Q failed (exit {cp.returncode}){said(cp)}", file=sys.stderr)
            return 1
        with open(copy, "w") as f:
            f.write(cp.stdout)
        for i, args in enumerate(commands, 1):
            cp = run(["pcs", "-f", copy, *args])
            if cp.returncode != 0:
                shown = shlex.join(_masked(a) for a in args)
                print(redact(f"crashup: command {i}/{len(commands)} failed (exit {cp.returncode}), nothing pushed: "
                             f"pcs {shown}{said(cp)}"), file=sys.stderr)
                return 1
        cp = run(["pcs", "cluster", "cib-push", copy, "--config"])
        if cp.returncode != 0:
            print(f"crashup: pcs cluster cib-push failed (exit {cp.returncode}){said(cp)}", file=sys.stderr)
            return 1
    print(f"crashup: {len(commands)} pcs commands applied to a copy of the CIB and pushed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crashup", description="OpenStack compute HA and recovery for Pacemaker")
    parser.add_argument("--version", action="version", version=f"crashup {__version__}")
    parser.add_argument("--config", help=f"configuration file (default: $CRASHUP_CONFIG or {config.DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="check or show the configuration, or print a commented sample")
    p.add_argument("what", choices=("check", "show", "sample"))
    p.add_argument("--file", help="configuration file to read")
    p.set_defaults(run=_config)
    p = sub.add_parser("daemon", help="run the recovery daemon in the foreground (Pacemaker's agent does this)")
    p.add_argument("--state-dir", default="/run/crashup")
    p.set_defaults(run=_daemon)
    p = sub.add_parser("status", help="compute nodes and their recovery requests")
    p.add_argument("--instances", action="store_true", help="also list instances still on each failed host")
    p.set_defaults(run=_status)
    p = sub.add_parser("plan", help="dry run: what recovering HOST would do, in order")
    p.add_argument("host", help="nova host of the failed node")
    p.add_argument("--target", help="evacuate everything to this host")
    p.add_argument("--skip-error", action="store_true", help="leave instances in ERROR where they are")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_plan)
    p = sub.add_parser("recover", help="run a node's recovery now (followed when the recovery daemon runs it)")
    p.add_argument("node", help="Pacemaker node name")
    p.add_argument("--force", action="store_true", help="go on past the storm guard or notify hand-off")
    p.set_defaults(run=_recover)
    p = sub.add_parser("release", help="mark a node's recovery finished (notify mode): the host may rejoin")
    p.add_argument("node", help="Pacemaker node name")
    p.set_defaults(run=_release)
    p = sub.add_parser("drain", help="planned maintenance: disable HOST, live-migrate (else cold-migrate or stop, "
                                     "[maintenance] drain_policy) its servers until nothing runs there")
    p.add_argument("host", help="nova host (or its Pacemaker node)")
    p = sub.add_parser("undrain", help="after maintenance: enable HOST, start the servers the drain stopped")
    p.add_argument("host", help="nova host (or its Pacemaker node)")
    p = sub.add_parser("evacuate", help="a damaged host still partly up: fence it through Pacemaker; the recovery "
                                        "daemon evacuates it")
    p.add_argument("host", help="nova host (or its Pacemaker node)")
    p.add_argument("--to", help="evacuate everything to this host")
    p.add_argument("--no-wait", action="store_true", help="return once fenced, without following the recovery")
    p = sub.add_parser("restore", help="rebuild SERVER from a backup image, keeping its id, addresses and volumes "
                                       "(evacuated first when its host is dead and fenced)")
    p.add_argument("server", help="nova server id")
    p.add_argument("--image", required=True, help="the backup image (glance id)")
    p.add_argument("--to", help="when it is evacuated: to this host")
    p.add_argument("--in-place", action="store_true", help="its host is healthy: rebuild it where it is")
    for name in ("drain", "undrain", "evacuate", "restore"):
        p = sub.choices[name]
        p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
        p.set_defaults(run=_maintenance)
    p = sub.add_parser("rejuvenate", help="restart the compute nodes' nova-compute (rejuvenation_resources) through "
                                          "Pacemaker, one node at a time, each back up in nova before the next")
    p.add_argument("node", nargs="?", help="only this Pacemaker node (or nova host); default: every compute node")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.set_defaults(run=_maintenance)
    p = sub.add_parser("events", help="print the event journal")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--new", action="store_true", help="with --follow: only events from now on")
    p.add_argument("--bus", action="store_true", help="with --follow: read the notification bus instead of the "
                                                      "journal ([events] transport_url_file)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_events)
    p = sub.add_parser("report", help="one recovery's timeline (fencing, repairs, each server's evacuation, the "
                                      "end) as text, and as an SVG picture")
    p.add_argument("node", help="Pacemaker node (or nova host)")
    p.add_argument("--svg", metavar="FILE", help="also draw the timeline into FILE (SVG)")
    p.add_argument("--since", metavar="TIME", help="the first recovery fenced at or after TIME (2026-12-01T17:30Z, "
                                                   "or a duration ago: 2h); default: the latest")
    p.set_defaults(run=_report)
    p = sub.add_parser("metrics", help="print the Prometheus metrics (the journal's counters, the open requests)")
    p.set_defaults(run=_metrics)
    p = sub.add_parser("sweep", help="CrashUp: fix resources stuck in a task (nova, cinder, glance, neutron)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--once", action="store_true", help="one sweep, then exit (1 if a service or resource failed)")
    g.add_argument("--dry-run", action="store_true", help="one sweep that prints what it would do, changing nothing")
    g.add_argument("--daemon", action="store_true", help="a sweep every recovery_interval_period until SIGTERM")
    p.add_argument("--state-dir", help="with --daemon: keep sweep.pid and sweep.heartbeat here (Pacemaker's agent "
                                       "ocf:crashup:crashup daemon=sweep watches them)")
    p.set_defaults(run=_sweep)
    p = sub.add_parser("guests", help="this compute node's guests, their failures and policies (docs/guests.md)")
    p.add_argument("--daemon", action="store_true", help="run the guest monitor until SIGTERM (Pacemaker's agent "
                                                         "ocf:crashup:crashup daemon=guests does this)")
    p.add_argument("--state-dir", help="with --daemon: keep guests.pid and guests.heartbeat here")
    p.add_argument("--node", help="this node's Pacemaker name (its nova host through host_map), unless "
                                  "[guests] guest_host says")
    p.add_argument("--no-nova", action="store_true", help="list libvirt's view only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_guests)
    p = sub.add_parser("isolation", help="this compute node's isolation guard: what it sees, and whether a quorate "
                                         "cluster answers now (docs/isolation.md)")
    p.add_argument("--daemon", action="store_true", help="run the isolation guard until SIGTERM (Pacemaker's agent "
                                                         "ocf:crashup:crashup daemon=isolation does this)")
    p.add_argument("--state-dir", help="the guard's pid, heartbeat and state files (default /run/crashup)")
    p.add_argument("--node", help="with --daemon: this node's Pacemaker name (default: the host name)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="an isolation setting (isolation_timeout, probe_interval, probe_timeout, action_timeout, "
                        "watchdog, watchdog_timeout, policy); repeat it")
    p.add_argument("--nova-unit", default="nova-compute", help="nova-compute's systemd unit")
    p.add_argument("--nova-stop-command", default="", help="instead: the command stopping nova-compute ({host}, {node})")
    p.add_argument("--nova-status-command", default="", help="... and the one telling whether it runs")
    p.add_argument("--libvirt-uri", default="", help="the guests' libvirt ({host}); default [guests] guest_libvirt_uri")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_isolation)
    p = sub.add_parser("pcs", help="Pacemaker configuration from an inventory (pcs-templates/README.md)")
    p.add_argument("action", choices=("render", "apply"),
                   help="render: print the pcs script (or with --conf, the crashup.conf); apply: apply it now")
    p.add_argument("inventory", help="inventory file (YAML)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--conf", action="store_true", help="print the crashup.conf that matches the inventory")
    g.add_argument("--apply", action="store_true", help="same as `crashup pcs apply`")
    p.set_defaults(run=_pcs)
    for stream in (sys.stdout, sys.stderr):     # an odd byte in a name must not turn into UnicodeEncodeError
        stream.reconfigure(errors="backslashreplace")
    args = parser.parse_args(argv)
    if args.command == "config" and args.file is None:
        args.file = args.config
    # libraries' warnings (keystoneauth's carry an auth_url) pass the redactor; daemons set up their own logging
    log.setup("crashup", stderr=True, syslog=False, stderr_level=logging.WARNING)
    try:
        return args.run(args)
    except config.ConfigError as e:             # already redacted where it was phrased (a key path may say
        print(f"crashup: {one_line(str(e))}", file=sys.stderr)     # "password: must be...", not a secret)
        return 2
    except BrokenPipeError:                     # `crashup events | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:                      # a clear line, never a traceback
        print(one_line(redact(f"crashup: {type(e).__name__}: {e}")), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
