"""Inventory -> Pacemaker configuration: the `pcs` commands for instance HA, and the crashup.conf that goes with them.

One YAML inventory (pcs-templates/README.md) is the single source: `load` (crashup_lib.inventory) reads and validates
it into an Inventory, `commands` turns that into pcs argument lists, `script` into a shell script that applies them
to a copy of the CIB and pushes it once, `crashup_conf` into the matching crashup.conf. Everything but `load` is
pure. A bad inventory stops with one line naming the file, the key and the problem (InventoryError, a ConfigError:
exit 2 from the CLI). What is rendered is checked before it is returned (`_checked_*`): every argument one printable
line, every Pacemaker id created once, the script exactly the intended commands, the crashup.conf loadable by
crashup_lib.config with exactly the intended values; so even an Inventory built by hand cannot render unsafe text.
"""
from __future__ import annotations

import os
import shlex
import tempfile

from crashup_lib import config
from crashup_lib.fencing import isolation as fallback
from crashup_lib.isolation import timing as isolation_timing
from crashup_lib.inventory import (CONF_SECTIONS, PASSWORD_SOURCES, Bmc, Compute,  # noqa: F401 (the API)
                                   Inventory, InventoryError, NovaComputeAgent, Tuning, error, load, parse,
                                   text_problem)
#: the recovery request's state as a plain node attribute: the nova-compute clone's location rule reads it
from crashup_lib.pacemaker import STATE_ATTRIBUTE

NOVA_COMPUTE = "nova-compute"             # the clone's primitive; the clone is NOVA_COMPUTE + "-clone"
CRASHUP = "crashup"                       # the recovery daemon's resource
SWEEP = "crashup-sweep"                   # the CrashUp sweep's resource, when the inventory gives it a database
GUESTS = "crashup-guests"                 # the guest monitor's clone on compute nodes, when guests.guest_monitor
NOVA_FENCE = "crashup-nova"               # the shared fence_crashup_nova device
ISOLATION = fallback.GUARD_RESOURCE       # the isolation guard's clone on compute nodes, when isolation.enabled
FALLBACK_TIMEOUT_SLACK = 10               # Pacemaker's timeout of the fallback device beyond the agent's own deadline


# --- rendering -------------------------------------------------------------------------------------------------------

def _s(seconds: float) -> str:
    return f"{int(seconds)}s"


def _ipmi_device(node: str, b: Bmc, t: Tuning, *extra: str) -> list[str]:
    """A fence_crashup_ipmi device for one node; only the password's source (never a password read) is shown."""
    secret = next(f"{k}={getattr(b, k)}" for k in PASSWORD_SOURCES if getattr(b, k))
    return ["stonith", "create", f"ipmi-{node}", "fence_crashup_ipmi", f"ip={b.address}", f"ipport={b.port}",
            f"username={b.user}", secret, f"pcmk_host_list={node}", *extra,
            "op", "monitor", f"interval={_s(t.fence_monitor_interval)}"]


def commands(inv: Inventory) -> list[list[str]]:
    """The pcs commands (each an argument list after `pcs`) that configure instance HA on an empty cluster.

    Several controllers: each with a BMC gets its fence device, never run on the controller it fences, whose fencing
    waits `controller_fence_delay` (pcmk_delay_base): a controller cut off from the others loses quorum and, with
    no-quorum-policy=stop, stops crashup's daemons itself before the majority powers it off, and only then do they
    start on the majority's side (Pacemaker recovers a lost node's resources only once it is fenced). The daemons
    stick where they run (resource-stickiness): a controller coming back does not pull them over mid-recovery."""
    t = inv.tuning
    names = [c.name for c in inv.computes]
    several = len(inv.controllers) > 1
    cmds: list[list[str]] = []
    for c in inv.computes:
        # --force: pcs wants `pcs cluster node add-remote`, which needs pcsd on the node; a resource is enough
        cmds.append(["resource", "create", c.name, "ocf:pacemaker:remote", f"server={c.remote_address}",
                     *([f"port={c.remote_port}"] if c.remote_port else []),
                     f"reconnect_interval={_s(t.remote_reconnect_interval)}",
                     "op", "monitor", f"interval={_s(t.remote_monitor_interval)}",
                     f"timeout={_s(t.remote_monitor_timeout)}",
                     "op", "start", f"timeout={_s(t.remote_start_timeout)}", "--force"])
    for c in inv.computes:
        cmds.append(_ipmi_device(c.name, c.bmc, t))
    for name, b in inv.controller_bmcs.items():
        cmds.append(_ipmi_device(name, b, t, f"pcmk_delay_base={_s(t.controller_fence_delay)}"))
        cmds.append(["constraint", "location", "add", f"ipmi-{name}-not-on-{name}", f"ipmi-{name}", name,
                     "--", "-INFINITY"])
    # one device for every compute, one action at a time (its ~0.5 s each serialize a rack's fencings): never
    # pcmk_action_limit > 1. Pacemaker 2.1.5's fencer merges an identical request (stonith_admin's off and the
    # controller's reboot, both at one node) into the one that finished first and frees it while its agent still
    # runs: with two agents running at once it segfaulted (lab, 2026-12-02), losing the fence history
    cmds.append(["stonith", "create", NOVA_FENCE, "fence_crashup_nova", f"config_file={inv.config_file}",
                 f"pcmk_host_list={' '.join(names)}",
                 "op", "monitor", f"interval={_s(t.fence_monitor_interval)}"])
    for c in inv.computes:     # power off first, then nova: both must succeed
        cmds.append(["stonith", "level", "add", "1", c.name, f"ipmi-{c.name}", NOVA_FENCE])
    if inv.isolation.enabled:
        cmds += _fallback_fencing(inv)
    # ocf:crashup:* with --force: nova-compute is installed on compute nodes, not where pcs runs
    sticky = ["meta", "resource-stickiness=100"] if several else []
    cmds.append(["resource", "create", CRASHUP, "ocf:crashup:crashup", f"config={inv.config_file}",
                 f"state_dir={inv.state_dir}", "op", "monitor", f"interval={_s(t.crashup_monitor_interval)}",
                 f"timeout={_s(t.crashup_monitor_timeout)}", *sticky, "--force"])
    daemons = [CRASHUP]
    if inv.sweeps:             # the same agent runs the sweep: its own pid and heartbeat in the same state_dir
        cmds.append(["resource", "create", SWEEP, "ocf:crashup:crashup", "daemon=sweep", f"config={inv.config_file}",
                     f"state_dir={inv.state_dir}", "op", "monitor", f"interval={_s(t.crashup_monitor_interval)}",
                     f"timeout={_s(t.crashup_monitor_timeout)}", *sticky, "--force"])
        daemons.append(SWEEP)
    for daemon in daemons:     # never run nor probed on a compute node: the daemons belong on controllers
        for name in names:
            cmds.append(["constraint", "location", "add", f"{daemon}-not-on-{name}", daemon, name,
                         "--", "-INFINITY", "resource-discovery=never"])
    n = inv.nova_compute
    params = [f"config={inv.config_file}", f"backend={n.backend}"]
    params += [f"unit={n.unit}"] if n.backend == "systemd" else [
        f"start_command={n.start_command}", f"stop_command={n.stop_command}", f"status_command={n.status_command}"]
    params += [f"libvirt_uri={n.libvirt_uri}"] if n.libvirt_uri else []
    params += [f"heartbeat_cache={n.heartbeat_cache}"] if n.heartbeat_cache is not None else []
    params += [f"state_dir={inv.state_dir}"]
    cmds.append(["resource", "create", NOVA_COMPUTE, "ocf:crashup:nova-compute", *params,
                 "op", "start", f"timeout={_s(t.nova_compute_start_timeout)}",
                 "op", "monitor", f"interval={_s(t.nova_compute_monitor_interval)}",
                 f"timeout={_s(t.nova_compute_monitor_timeout)}",
                 "op", "stop", f"timeout={_s(t.nova_compute_stop_timeout)}",
                 "meta", f"failure-timeout={_s(t.nova_compute_failure_timeout)}",
                 "clone", "interleave=true", "--force"])
    for name in inv.controllers:
        cmds.append(["constraint", "location", "add", f"{NOVA_COMPUTE}-not-on-{name}", f"{NOVA_COMPUTE}-clone",
                     name, "--", "-INFINITY", "resource-discovery=never"])
    # held off a node while its recovery is open: Pacemaker does not even schedule the start
    cmds.append(["constraint", "location", f"{NOVA_COMPUTE}-clone", "rule", f"id={NOVA_COMPUTE}-held-during-recovery",
                 "score=-INFINITY", STATE_ATTRIBUTE, "eq", "pending", "or", STATE_ATTRIBUTE, "eq", "recovering"])
    if guest_monitor(inv):
        cmds += _guests(inv)
    if inv.isolation.enabled:
        cmds += _isolation_guard(inv)
    # concurrent-fencing: the hosts of a failed rack are fenced at once, not one after the other (Pacemaker 2.1.5's
    # default is false: measured, 8 hosts took 8 fencings' time before the last one's recovery could start)
    cmds.append(["property", "set", "stonith-enabled=true", "concurrent-fencing=true",
                 *([f"stonith-action={inv.stonith_action}"] if inv.stonith_action else []),
                 *(["no-quorum-policy=stop"] if several else [])])
    return _checked_commands(inv, cmds)


def guest_monitor(inv: Inventory) -> bool:
    """The inventory's guests.guest_monitor is true: the guest monitor gets its clone on the compute nodes."""
    raw = inv.conf.get("guests", {}).get("guest_monitor")
    return bool(raw) and config.BY_NAME["guest_monitor"].kind.parse(raw)


def _guests(inv: Inventory) -> list[list[str]]:
    """The guest monitor: a clone of the crashup agent (daemon=guests) on every compute node, never run nor probed
    on a controller, started after nova-compute and only where it runs: it acts through nova's API, and a node
    whose nova-compute is held down (its recovery open) is host recovery's, not the guest monitor's."""
    t = inv.tuning
    clone = f"{GUESTS}-clone"
    cmds = [["resource", "create", GUESTS, "ocf:crashup:crashup", "daemon=guests", f"config={inv.config_file}",
             f"state_dir={inv.state_dir}", "op", "monitor", f"interval={_s(t.crashup_monitor_interval)}",
             f"timeout={_s(t.crashup_monitor_timeout)}", "clone", "interleave=true", "--force"]]
    cmds += [["constraint", "location", "add", f"{GUESTS}-not-on-{name}", clone, name, "--", "-INFINITY",
              "resource-discovery=never"] for name in inv.controllers]
    cmds.append(["constraint", "order", "start", f"{NOVA_COMPUTE}-clone", "then", "start", clone])
    cmds.append(["constraint", "colocation", "add", clone, "with", f"{NOVA_COMPUTE}-clone", "INFINITY"])
    return cmds


def _isolation_guard(inv: Inventory) -> list[list[str]]:
    """The isolation guard (docs/isolation.md): a clone of the crashup agent (daemon=isolation) on every compute
    node, never run nor probed on a controller, independent of nova-compute (a node whose nova-compute is held
    still has guests to stop). Its timings are the inventory's `isolation:` section, the same the fallback fence
    device gets; it stops nova-compute the way the nova-compute clone is configured to."""
    t, n = inv.tuning, inv.nova_compute
    clone = f"{ISOLATION}-clone"
    settings = {k: v for k, v in isolation_timing.values(inv.isolation).items()
                if k in isolation_timing.GUARD and v != ""}
    service = [f"nova_compute_unit={n.unit}"] if n.backend == "systemd" else [
        f"nova_compute_stop_command={n.stop_command}", f"nova_compute_status_command={n.status_command}"]
    cmds = [["resource", "create", ISOLATION, "ocf:crashup:crashup", "daemon=isolation", f"config={inv.config_file}",
             f"state_dir={inv.state_dir}", *(f"{k}={v}" for k, v in settings.items()), *service,
             "op", "monitor", f"interval={_s(t.crashup_monitor_interval)}", f"timeout={_s(t.crashup_monitor_timeout)}",
             "clone", "interleave=true", "--force"]]
    cmds += [["constraint", "location", "add", f"{ISOLATION}-not-on-{name}", clone, name, "--", "-INFINITY",
              "resource-discovery=never"] for name in inv.controllers]
    return cmds


def _fallback_fencing(inv: Inventory) -> list[list[str]]:
    """The fallback level (docs/isolation.md): when a node's BMC cannot be reached, fence_crashup_isolation waits
    until the node's isolation guard has certainly acted, then fence_crashup_nova records the recovery as in level
    1. The device gets the guard's own settings (its deadline follows from them) and a timeout above its wait; one
    device per node, since each action waits a minute or more and a device runs one action at a time."""
    params = fallback.device_params(inv.isolation)
    timeout = _s(int(params["deadline"]) + FALLBACK_TIMEOUT_SLACK)
    cmds = []
    for c in inv.computes:
        cmds.append(["stonith", "create", f"isolation-{c.name}", "fence_crashup_isolation",
                     *(f"{k}={v}" for k, v in params.items()), f"pcmk_host_list={c.name}",
                     f"pcmk_off_timeout={timeout}", f"pcmk_reboot_timeout={timeout}",
                     "op", "monitor", f"interval={_s(inv.tuning.fence_monitor_interval)}"])
    for c in inv.computes:     # after level 1 has failed: the guard's time, then nova as in level 1
        cmds.append(["stonith", "level", "add", "2", c.name, f"isolation-{c.name}", NOVA_FENCE])
    return cmds


def _created_ids(cmds: list[list[str]]):
    """The Pacemaker ids the commands create: resources, devices, the clone, constraints and the rule."""
    for c in cmds:
        if c[1] == "create":
            yield c[2]
            if "clone" in c:
                yield c[2] + "-clone"
        if c[:3] == ["constraint", "location", "add"]:
            yield c[3]
        yield from (a[3:] for a in c if a.startswith("id="))


def _checked_commands(inv: Inventory, cmds: list[list[str]]) -> list[list[str]]:
    """Every argument one line of printable text, every Pacemaker id created once."""
    for c in cmds:
        for arg in c:
            if not isinstance(arg, str) or not arg or text_problem(arg):
                raise error(inv.source, f"pcs {c[0]} {c[1]}", "an argument is empty or not one line of printable text")
    seen = set()
    for id_ in _created_ids(cmds):
        if id_ in seen:      # a node named like one of crashup's own ids, or ipmi-<another node>
            raise error(inv.source, "computes", f"the Pacemaker id {id_!r} would be created twice: rename the node")
        seen.add(id_)
    return cmds


def script(inv: Inventory) -> str:
    """A shell script applying `commands` to a copy of the live CIB, then pushing it in one step."""
    cmds = commands(inv)
    lines = ["#!/bin/sh",
             f"# crashup: Pacemaker configuration for OpenStack instance HA, rendered from {inv.source}",
             "# by `crashup pcs render`. Every command changes a copy of the CIB; one cib-push replaces the live",
             "# configuration at the end, so a failing command leaves the cluster as it was.",
             "set -eu",
             'CIB=$(mktemp "${TMPDIR:-/tmp}/crashup-cib.XXXXXX")',
             'trap \'rm -f "$CIB"\' EXIT',
             'pcs cluster cib "$CIB"']
    lines += ['pcs -f "$CIB" ' + shlex.join(args) for args in cmds]
    lines.append('pcs cluster cib-push "$CIB" --config')
    return _checked_script(inv, "\n".join(lines) + "\n", lines, cmds)


def _checked_script(inv: Inventory, text: str, lines: list[str], cmds: list[list[str]]) -> str:
    """Exactly the lines built (no hidden line break, no control character), each command shell-splitting back to
    its argument list: what runs is what was meant."""
    if text.splitlines() != lines or text_problem(text.replace("\n", "")):
        raise error(inv.source, None, "the rendered script would hold other lines than the intended ones")
    applied = [shlex.split(line) for line in lines if line.startswith("pcs -f ")]
    if applied != [["pcs", "-f", "$CIB", *args] for args in cmds]:
        raise error(inv.source, None, "the rendered script would not run the intended pcs commands")
    return text


def crashup_conf(inv: Inventory) -> str:
    """The crashup.conf matching the inventory: its policy and OpenStack sections, host_map where names differ."""
    sections = {s: dict(opts) for s, opts in inv.conf.items()}
    if inv.host_map:
        sections["pacemaker"] = {"host_map": ";".join(f"{n}:{h}" for n, h in inv.host_map.items())}
    if inv.failure_domains:
        sections.setdefault("recovery", {})["storm_domains"] = ";".join(f"{n}:{d}" for n, d
                                                                        in inv.failure_domains.items())
    lines = [f"# crashup configuration rendered from {inv.source} by `crashup pcs render --conf`:",
             "# change the inventory and render again. Options not set here keep their defaults."]
    for section in config.SECTIONS:
        if sections.get(section):
            lines += ["", f"[{section}]"] + [f"{k} = {v}" for k, v in sections[section].items()]
    return _checked_conf(inv, "\n".join(lines) + "\n", sections)


def _checked_conf(inv: Inventory, text: str, sections: dict[str, dict[str, str]]) -> str:
    """crashup_lib.config's own reader must load the file and find exactly the options written, with their values."""
    with tempfile.TemporaryDirectory(prefix="crashup-conf-") as tmp:     # 0700: [sweep] URLs may hold a password
        path = os.path.join(tmp, "crashup.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            cfg = config.load(path, env={})
        except config.ConfigError as e:
            raise error(inv.source, None, f"the rendered crashup.conf does not load: {e}") from None
    wanted = {k: config.BY_NAME[k].kind.parse(v) for options in sections.values() for k, v in options.items()}
    got = {k: cfg[k] for k, source in cfg.sources.items() if source != "default"}
    if got != wanted:
        differ = sorted(k for k in wanted.keys() | got.keys() if k not in wanted or k not in got or wanted[k] != got[k])
        raise error(inv.source, None, "the rendered crashup.conf does not read back as intended: " + ", ".join(differ))
    return text
