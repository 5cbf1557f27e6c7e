"""Inventory -> Pacemaker configuration: the `pcs` commands for instance HA, and the crashup.conf that goes with them.

One YAML inventory (pcs-templates/README.md) is the single source: `load` reads and validates it into an Inventory,
`commands` turns that into pcs argument lists, `script` into a shell script that applies them to a copy of the CIB
and pushes it once, `crashup_conf` into the matching crashup.conf. Everything but `load` is pure. A bad inventory
stops with one line naming the file, the key and the problem (InventoryError, a ConfigError: exit 2 from the CLI).
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Any, Mapping

from crashup_lib import config, localservice
#: the recovery request's state as a plain node attribute: the nova-compute clone's location rule reads it
from crashup_lib.pacemaker import STATE_ATTRIBUTE
NOVA_COMPUTE = "nova-compute"             # the clone's primitive; the clone is NOVA_COMPUTE + "-clone"
CRASHUP = "crashup"                       # the recovery daemon's resource
SWEEP = "crashup-sweep"                   # the CrashUp sweep's resource, when the inventory gives it a database
NOVA_FENCE = "crashup-nova"               # the shared fence_crashup_nova device
#: config.py sections an inventory may carry, written to crashup.conf as they are ([pacemaker] host_map is derived)
CONF_SECTIONS = tuple(s for s in config.SECTIONS if s != "pacemaker")
PASSWORD_SOURCES = ("password_file", "password_script", "password")

#: Pacemaker ids: the remote resource is named as its node, device and constraint ids are built from node names
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class InventoryError(config.ConfigError):
    """An inventory problem, as the one line an operator needs (file, key, problem)."""


@dataclasses.dataclass(frozen=True)
class Bmc:
    address: str
    user: str
    port: int = 623
    password_file: str = ""
    password_script: str = ""
    password: str = ""                    # clear text: lands in the CIB (a warning says so)


@dataclasses.dataclass(frozen=True)
class Compute:
    name: str                             # Pacemaker node name == the remote connection resource's id
    nova_host: str
    remote_address: str                   # pacemaker_remote server
    bmc: Bmc
    remote_port: int | None = None        # None: pacemaker_remote's default (3121)


@dataclasses.dataclass(frozen=True)
class NovaComputeAgent:
    """Parameters of ocf:crashup:nova-compute (the clone has one set for every compute node)."""
    backend: str = "systemd"
    unit: str = "nova-compute"
    start_command: str = ""
    stop_command: str = ""
    status_command: str = ""
    libvirt_uri: str = ""
    heartbeat_cache: int | None = None    # None: the agent's default


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Operation timings in seconds; the defaults are production's, the lab sets shorter ones."""
    remote_monitor_interval: float = 20
    remote_monitor_timeout: float = 30
    remote_reconnect_interval: float = 60
    remote_start_timeout: float = 60
    crashup_monitor_interval: float = 10
    crashup_monitor_timeout: float = 20
    fence_monitor_interval: float = 60
    nova_compute_monitor_interval: float = 10
    nova_compute_monitor_timeout: float = 20
    nova_compute_start_timeout: float = 120
    nova_compute_stop_timeout: float = 60
    nova_compute_failure_timeout: float = 60


@dataclasses.dataclass(frozen=True)
class Inventory:
    controllers: tuple[str, ...]
    computes: tuple[Compute, ...]
    stonith_action: str = ""             # empty: Pacemaker's default
    config_file: str = config.DEFAULT_PATH
    state_dir: str = "/run/crashup"
    conf: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)   # {section: {option: raw}}
    nova_compute: NovaComputeAgent = NovaComputeAgent()
    tuning: Tuning = Tuning()
    source: str = "inventory"
    warnings: tuple[str, ...] = ()

    @property
    def sweeps(self) -> bool:
        """The inventory's [sweep] names a database: the sweep gets its own resource."""
        return any(v for k, v in self.conf.get("sweep", {}).items() if k.endswith(("_connection", "_connection_file")))

    @property
    def host_map(self) -> dict[str, str]:
        return {c.name: c.nova_host for c in self.computes if c.nova_host != c.name}


# --- reading ---------------------------------------------------------------------------------------------------------

def load(path: str) -> Inventory:
    """Read and validate a YAML inventory file. Raises InventoryError (one line) on any problem."""
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML 1.2 booleans: only true/false are; `stonith_action: off` stays the word off."""
        yaml_implicit_resolvers = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise InventoryError(f"inventory: {path}: line {key_node.start_mark.line + 1}: "
                                     f"key {key!r} given twice")
            seen.add(key)
        return loader.construct_mapping(node, deep)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=Loader)
    except FileNotFoundError:
        raise InventoryError(f"inventory: {path}: no such file") from None
    except PermissionError:
        raise InventoryError(f"inventory: {path}: permission denied") from None
    except yaml.YAMLError as e:
        where = f"line {e.problem_mark.line + 1}: " if getattr(e, "problem_mark", None) else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InventoryError(f"inventory: {path}: not valid YAML: {where}{what}") from None
    return parse(data, source=path)


def parse(data: Any, source: str = "inventory") -> Inventory:
    """Validate an inventory already read into Python data (a mapping, as YAML gives). Pure."""
    return _Reader(source).inventory(data)


class _Reader:
    def __init__(self, source: str):
        self.source = source
        self.warnings: list[str] = []

    def fail(self, key: str, problem: str):
        raise InventoryError(f"inventory: {self.source}: {key or 'the top level'}: {problem}")

    # -- shapes
    def mapping(self, value, key: str, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {_shown(value)}")
        for k in value:
            if k not in known:
                self.fail(f"{key}.{k}" if key else str(k),
                          f"unknown key{config._suggest(str(k), known)}; known: {', '.join(known)}")
        for k in required:
            if value.get(k) in (None, ""):
                self.fail(f"{key}.{k}" if key else k, "required")
        return value

    def sequence(self, value, key: str) -> list:
        if not isinstance(value, list) or not value:
            self.fail(key, f"expected a non-empty list, got {_shown(value)}")
        return value

    def text(self, value, key: str, default: str = "") -> str:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(key, f"expected text, got {_shown(value)}")
        value = str(value).strip()
        if "\n" in value:
            self.fail(key, "expected one line of text")
        return value

    def name(self, value, key: str) -> str:
        value = self.text(value, key)
        if not _ID.fullmatch(value):
            self.fail(key, f"{value!r} is not usable as a Pacemaker node name and resource id "
                           "(a letter or _, then letters, digits, _.-)")
        return value

    def path(self, value, key: str, default: str = "") -> str:
        value = self.text(value, key, default)
        if value and not value.startswith("/"):
            self.fail(key, f"{value!r} is not an absolute path")
        return value

    def integer(self, value, key: str, low: int, high: int | None = None, default: int | None = None) -> int | None:
        if value is None:
            return default
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            self.fail(key, f"expected an integer from {low}" + (f" to {high}" if high is not None else " up")
                      + f", got {_shown(value)}")
        return number

    def kind(self, value, key: str, kind: config.Kind) -> str:
        """A crashup.conf value as the file will hold it, checked by the option's own kind."""
        if isinstance(value, bool):
            raw = "yes" if value else "no"
        elif isinstance(value, list):
            raw = ", ".join(self.text(v, key) for v in value)
        else:
            raw = self.text(value, key)
        try:
            kind.parse(raw)
        except ValueError as e:
            self.fail(key, f"{raw!r} is not allowed: expected {e}")
        return raw

    # -- the parts
    def inventory(self, data) -> Inventory:
        top = self.mapping(data, "", ("cluster", "controllers", "computes", "bmc_defaults", "crashup",
                                      "nova_compute", "tuning", "pacemaker") + CONF_SECTIONS,
                           required=("controllers", "computes"))
        if "pacemaker" in top:
            self.fail("pacemaker", "not set here: host_map is derived from each compute's nova_host")
        cluster = self.mapping(top.get("cluster"), "cluster", ("stonith_action",))
        action = self.text(cluster.get("stonith_action"), "cluster.stonith_action")
        if action not in ("", "off", "reboot"):
            self.fail("cluster.stonith_action", f"{action!r} is not allowed: expected off or reboot")
        controllers = tuple(self.name(c, f"controllers[{i}]")
                            for i, c in enumerate(self.sequence(top["controllers"], "controllers")))
        bmc_defaults = self.mapping(top.get("bmc_defaults"), "bmc_defaults", _BMC_KEYS)
        computes = tuple(self.compute(c, f"computes[{i}]", bmc_defaults)
                         for i, c in enumerate(self.sequence(top["computes"], "computes")))
        self.unique([*controllers, *(c.name for c in computes)], "node name", "controllers/computes")
        self.unique([c.nova_host for c in computes], "nova_host", "computes")
        crashup = self.mapping(top.get("crashup"), "crashup", ("config_file", "state_dir"))
        return Inventory(
            controllers=controllers, computes=computes, stonith_action=action,
            config_file=self.path(crashup.get("config_file"), "crashup.config_file", config.DEFAULT_PATH),
            state_dir=self.path(crashup.get("state_dir"), "crashup.state_dir", "/run/crashup"),
            conf=self.conf(top), nova_compute=self.nova_compute(top.get("nova_compute")),
            tuning=self.tuning(top.get("tuning")), source=self.source, warnings=tuple(self.warnings))

    def unique(self, names: list[str], what: str, key: str) -> None:
        seen = set()
        for n in names:
            if n in seen:
                self.fail(key, f"{what} {n!r} appears twice")
            seen.add(n)

    def compute(self, value, key: str, bmc_defaults: dict) -> Compute:
        c = self.mapping(value, key, ("name", "nova_host", "remote_address", "remote_port", "bmc"),
                         required=("name", "bmc"))
        name = self.name(c["name"], f"{key}.name")
        return Compute(name=name, nova_host=self.text(c.get("nova_host"), f"{key}.nova_host", name),
                       remote_address=self.text(c.get("remote_address"), f"{key}.remote_address", name),
                       remote_port=self.integer(c.get("remote_port"), f"{key}.remote_port", 1, 65535),
                       bmc=self.bmc(c["bmc"], f"{key}.bmc", bmc_defaults, name))

    def bmc(self, value, key: str, defaults: dict, node: str) -> Bmc:
        own = self.mapping(value, key, _BMC_KEYS)
        merged = {k: v for k, v in defaults.items() if not (k in PASSWORD_SOURCES and
                                                              any(s in own for s in PASSWORD_SOURCES))}
        merged.update(own)
        for k in ("address", "user"):
            if merged.get(k) in (None, ""):
                self.fail(f"{key}.{k}", "required (here or in bmc_defaults)")
        sources = [s for s in PASSWORD_SOURCES if merged.get(s) not in (None, "")]
        if len(sources) != 1:
            self.fail(key, "expected exactly one of password_file (preferred), password_script, password"
                           + (f"; got {', '.join(sources)}" if sources else ""))
        if sources == ["password"]:
            self.warnings.append(f"inventory: {self.source}: {key}.password: the BMC password of {node} is "
                                 "stored in the CIB in clear; prefer password_file or password_script")
        return Bmc(address=self.text(merged["address"], f"{key}.address"),
                   user=self.text(merged["user"], f"{key}.user"),
                   port=self.integer(merged.get("port"), f"{key}.port", 1, 65535, 623),
                   password_file=self.path(merged.get("password_file"), f"{key}.password_file"),
                   password_script=self.text(merged.get("password_script"), f"{key}.password_script"),
                   password=self.text(merged.get("password"), f"{key}.password"))

    def conf(self, top: dict) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for section in CONF_SECTIONS:
            names = tuple(o.name for o in config.OPTIONS if o.section == section)
            options = self.mapping(top.get(section), section, names)
            found[section] = {k: self.kind(v, f"{section}.{k}", config.BY_NAME[k].kind)
                              for k, v in options.items() if v is not None}
        return {s: opts for s, opts in found.items() if opts}

    def nova_compute(self, value) -> NovaComputeAgent:
        fields = tuple(f.name for f in dataclasses.fields(NovaComputeAgent))
        n = self.mapping(value, "nova_compute", fields)
        agent = NovaComputeAgent(
            backend=self.text(n.get("backend"), "nova_compute.backend", "systemd"),
            unit=self.text(n.get("unit"), "nova_compute.unit", "nova-compute"),
            **{k: self.text(n.get(k), f"nova_compute.{k}") for k in ("start_command", "stop_command",
                                                                     "status_command", "libvirt_uri")},
            heartbeat_cache=self.integer(n.get("heartbeat_cache"), "nova_compute.heartbeat_cache", 0))
        if agent.backend not in localservice.BACKENDS:
            self.fail("nova_compute.backend", f"{agent.backend!r} is not allowed: expected "
                                              f"{' or '.join(localservice.BACKENDS)}")
        if agent.backend == "command":
            try:
                localservice.commands(NOVA_COMPUTE, agent.start_command, agent.stop_command, agent.status_command,
                                      host="host", node="node")
            except ValueError as e:
                self.fail("nova_compute", str(e))
        return agent

    def tuning(self, value) -> Tuning:
        fields = tuple(f.name for f in dataclasses.fields(Tuning))
        t = self.mapping(value, "tuning", fields)
        seconds = config.duration(1)
        out = {}
        for k, v in t.items():
            raw = self.kind(v, f"tuning.{k}", seconds)
            value = seconds.parse(raw)
            if value != int(value):
                self.fail(f"tuning.{k}", f"{raw!r} is not allowed: expected whole seconds")
            out[k] = value
        return Tuning(**out)


_BMC_KEYS = ("address", "port", "user") + PASSWORD_SOURCES


def _shown(value) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


# --- rendering -------------------------------------------------------------------------------------------------------

def _s(seconds: float) -> str:
    return f"{int(seconds)}s"


def commands(inv: Inventory) -> list[list[str]]:
    """The pcs commands (each an argument list after `pcs`) that configure instance HA on an empty cluster."""
    t = inv.tuning
    names = [c.name for c in inv.computes]
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
        b = c.bmc
        secret = next(f"{k}={getattr(b, k)}" for k in PASSWORD_SOURCES if getattr(b, k))
        cmds.append(["stonith", "create", f"ipmi-{c.name}", "fence_crashup_ipmi", f"ip={b.address}",
                     f"ipport={b.port}", f"username={b.user}", secret, f"pcmk_host_list={c.name}",
                     "op", "monitor", f"interval={_s(t.fence_monitor_interval)}"])
    cmds.append(["stonith", "create", NOVA_FENCE, "fence_crashup_nova", f"config_file={inv.config_file}",
                 f"pcmk_host_list={' '.join(names)}", "op", "monitor", f"interval={_s(t.fence_monitor_interval)}"])
    for c in inv.computes:     # power off first, then nova: both must succeed
        cmds.append(["stonith", "level", "add", "1", c.name, f"ipmi-{c.name}", NOVA_FENCE])
    # ocf:crashup:* with --force: nova-compute is installed on compute nodes, not where pcs runs
    cmds.append(["resource", "create", CRASHUP, "ocf:crashup:crashup", f"config={inv.config_file}",
                 f"state_dir={inv.state_dir}", "op", "monitor", f"interval={_s(t.crashup_monitor_interval)}",
                 f"timeout={_s(t.crashup_monitor_timeout)}", "--force"])
    daemons = [CRASHUP]
    if inv.sweeps:             # the same agent runs the sweep: its own pid and heartbeat in the same state_dir
        cmds.append(["resource", "create", SWEEP, "ocf:crashup:crashup", "daemon=sweep", f"config={inv.config_file}",
                     f"state_dir={inv.state_dir}", "op", "monitor", f"interval={_s(t.crashup_monitor_interval)}",
                     f"timeout={_s(t.crashup_monitor_timeout)}", "--force"])
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
    cmds.append(["property", "set", "stonith-enabled=true",
                 *([f"stonith-action={inv.stonith_action}"] if inv.stonith_action else [])])
    return cmds


def script(inv: Inventory) -> str:
    """A shell script applying `commands` to a copy of the live CIB, then pushing it in one step."""
    lines = ["#!/bin/sh",
             f"# crashup: Pacemaker configuration for OpenStack instance HA, rendered from {inv.source}",
             "# by `crashup pcs render`. Every command changes a copy of the CIB; one cib-push replaces the live",
             "# configuration at the end, so a failing command leaves the cluster as it was.",
             "set -eu",
             'CIB=$(mktemp "${TMPDIR:-/tmp}/crashup-cib.XXXXXX")',
             'trap \'rm -f "$CIB"\' EXIT',
             'pcs cluster cib "$CIB"']
    for args in commands(inv):
        lines.append('pcs -f "$CIB" ' + shlex.join(args))
    lines.append('pcs cluster cib-push "$CIB" --config')
    return "\n".join(lines) + "\n"


def crashup_conf(inv: Inventory) -> str:
    """The crashup.conf matching the inventory: its policy and OpenStack sections, host_map where names differ."""
    sections = {s: dict(opts) for s, opts in inv.conf.items()}
    if inv.host_map:
        sections["pacemaker"] = {"host_map": ";".join(f"{n}:{h}" for n, h in inv.host_map.items())}
    lines = [f"# crashup configuration rendered from {inv.source} by `crashup pcs render --conf`:",
             "# change the inventory and render again. Options not set here keep their defaults."]
    for section in config.SECTIONS:
        if sections.get(section):
            lines += ["", f"[{section}]"] + [f"{k} = {v}" for k, v in sections[section].items()]
    return "\n".join(lines) + "\n"
