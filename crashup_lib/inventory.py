"""The inventory (pcs-templates/README.md): read, checked, as typed data for crashup_lib.pcs to render.

Untrusted text in, never a surprise out. The file is read bounded (config.read_text: a regular file of at most
1 MiB, UTF-8) and its YAML is composed from the parser's events by `compose`, which makes only mappings, lists and
strings: no YAML 1.1 typing (`0700`, `12:30:45`, `no`, `1e3`, `~` stay the text written; a number is read only where
the inventory asks for one), no tags but !!str/!!map/!!seq, no aliases (no expansion bombs), bounded nesting, text
keys given once. Every text value is one printable line (no control characters nor line separators) without spaces
around it; names and addresses keep to what Pacemaker, nova and a shell word need. Any problem is an InventoryError:
one line naming the file, the key and the problem, values shown redacted and clipped, passwords never shown (and
registered as secrets before anything is checked).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

from crashup_lib import config, localservice, log
from crashup_lib.isolation import timing

MAX_DEPTH = 16                            # the schema needs 4 levels: anything deeper is not an inventory
MAX_TEXT = 4096                           # one value; also keeps what an error echoes small
MAX_MESSAGE = 480                         # an error line, whatever it echoes
#: config.py sections an inventory may carry, written to crashup.conf as they are ([pacemaker] host_map is derived)
CONF_SECTIONS = tuple(s for s in config.SECTIONS if s != "pacemaker")
PASSWORD_SOURCES = ("password_file", "password_script", "password")
#: options whose value may hold a password (database URLs): never echoed in an error
SECRET_OPTIONS = frozenset(o.name for o in config.OPTIONS if o.name.endswith("_connection"))

#: Pacemaker ids: the remote resource is named as its node, device and constraint ids are built from node names
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,252}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")           # nova's service host
_ADDRESS = re.compile(r"(?!-)[A-Za-z0-9_.:%-]{1,253}")              # host name, IPv4, IPv6 (zone)
_UNIT = re.compile(r"(?!-)[A-Za-z0-9@_.:\\-]{1,255}")               # a systemd unit name, never an option
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")                       # 0700 is refused: YAML 1.1 reads it as octal


def text_problem(value: str) -> str | None:
    """Why `value` cannot be an inventory text (log's rule for one line of text, and no tab either: each value
    becomes one shell word, one pcs argument or one INI value), or None."""
    return log.text_problem(value) or ("text without tabs" if "\t" in value else None)


class InventoryError(config.ConfigError):
    """An inventory problem, as the one line an operator needs (file, key, problem): one printable line of bounded
    length whatever it was built from. Values in it are redacted where they are shown (`_shown`, `error`)."""

    def __init__(self, message: str):
        super().__init__(log.one_line(message.replace("\t", "\\t"), MAX_MESSAGE))


def error(source: str, key: str | None, problem: str) -> InventoryError:
    """The InventoryError for a problem of `source` (at `key`), the problem redacted."""
    shown = source if len(source) <= 160 else "..." + source[-157:]      # the file name is at the end
    return InventoryError(f"inventory: {shown}: " + (f"{key}: " if key is not None else "") + log.redact(problem))


def _shown(value) -> str:
    """A value as an error may show it: redacted, clipped, one line; containers and odd types only by their kind."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return log.shown(value, 60)
    if isinstance(value, (bool, float)) or (isinstance(value, int) and abs(value) < 10 ** 18):
        return repr(value)
    return f"a {type(value).__name__}"


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
    failure_domain: str = ""              # rack, power feed, switch: crashup.conf's [recovery] storm_domains


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
    #: a silent host failure (power loss, cut link: no TCP reset) is seen only when the connection's monitor times
    #: out: fenced within 9.5-12.2 s at 5 s / 5 s, 40-49 s at 20 s / 30 s; no false positive under full CPU load
    #: (bench/silent.py, README "Detection")
    remote_monitor_interval: float = 5
    remote_monitor_timeout: float = 5
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
    #: a controller's fencing waits this long (pcmk_delay_base): one cut off from the others has lost quorum and
    #: stopped crashup's daemons by then (no-quorum-policy=stop), before the majority powers it off
    controller_fence_delay: float = 15


@dataclasses.dataclass(frozen=True)
class Inventory:
    controllers: tuple[str, ...]
    computes: tuple[Compute, ...]
    controller_bmcs: Mapping[str, Bmc] = dataclasses.field(default_factory=dict)   # {controller: its BMC}
    stonith_action: str = ""             # empty: Pacemaker's default
    config_file: str = config.DEFAULT_PATH
    state_dir: str = "/run/crashup"
    conf: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)   # {section: {option: raw}}
    nova_compute: NovaComputeAgent = NovaComputeAgent()
    tuning: Tuning = Tuning()
    #: the `isolation:` section (docs/isolation.md): one source for the guard's clone and the fallback fencing level
    isolation: timing.Settings = timing.Settings()
    source: str = "inventory"
    warnings: tuple[str, ...] = ()

    @property
    def sweeps(self) -> bool:
        """The inventory's [sweep] names a database: the sweep gets its own resource."""
        return any(v for k, v in self.conf.get("sweep", {}).items() if k.endswith(("_connection", "_connection_file")))

    @property
    def host_map(self) -> dict[str, str]:
        return {c.name: c.nova_host for c in self.computes if c.nova_host != c.name}

    @property
    def failure_domains(self) -> dict[str, str]:
        return {c.name: c.failure_domain for c in self.computes if c.failure_domain}


# --- reading ---------------------------------------------------------------------------------------------------------

def load(path: str) -> Inventory:
    """Read and validate a YAML inventory file. Raises InventoryError (one line) on any problem."""
    _check_source(path)
    return parse(compose(read(path), path), source=path)


def _check_source(source: str) -> None:
    """The file's name is shown in errors and in the rendered files' first comment: one printable line."""
    if text_problem(source):
        raise error(source, None, "the file name has a control character: rename the file")


def read(path: str) -> str:
    """The file's text (config.read_text: bounded, a regular file, UTF-8), every failure an InventoryError."""
    try:
        return config.read_text(path, "inventory")
    except config.ConfigError as e:
        raise InventoryError(str(e)) from None


_STR, _SEQ, _MAP = (f"tag:yaml.org,2002:{t}" for t in ("str", "seq", "map"))
_NO_KEY = object()


def compose(text: str, source: str = "inventory") -> Any:
    """YAML text -> None, or nested dicts, lists and strings, from the parser's events (no recursion, no YAML
    typing). An empty plain value (`key:`) is None: nothing given."""
    import yaml

    def refuse(event, problem: str):
        raise error(source, None, f"line {event.start_mark.line + 1}: {problem}")

    def add(value, event):
        if not stack:
            if documents:
                refuse(event, "a second YAML document: an inventory is one")
            documents.append(value)
        elif isinstance(stack[-1][0], list):
            stack[-1][0].append(value)
        elif stack[-1][1] is _NO_KEY:           # a mapping's key: text, once
            if not isinstance(value, str):
                refuse(event, f"a key must be text, not {_shown(value)}")
            if value in stack[-1][0]:
                refuse(event, f"key {_shown(value)} given twice")
            stack[-1][1] = value
        else:
            stack[-1][0][stack[-1][1]], stack[-1][1] = value, _NO_KEY

    def tagged(event, allowed: str):
        if event.tag not in (None, "!", allowed):
            refuse(event, "tags (!!int, !name...) are not supported: write the value without one")

    documents: list = []
    stack: list[list] = []                      # [open container, its pending key]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)           # libyaml: 1 MiB in well under a second
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent):
                refuse(event, "aliases (*name) are not supported: write the value out (bmc_defaults shares BMC keys)")
            elif isinstance(event, yaml.ScalarEvent):
                tagged(event, _STR)
                if len(event.value) > MAX_TEXT:
                    refuse(event, f"a value longer than {MAX_TEXT} characters")
                add(None if event.value == "" and event.implicit[0] else event.value, event)
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                is_map = isinstance(event, yaml.MappingStartEvent)
                tagged(event, _MAP if is_map else _SEQ)
                if len(stack) >= MAX_DEPTH:
                    refuse(event, f"nested more than {MAX_DEPTH} levels deep")
                container: dict | list = {} if is_map else []
                add(container, event)
                stack.append([container, _NO_KEY])
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                stack.pop()
    except yaml.MarkedYAMLError as e:
        where = f"line {e.problem_mark.line + 1}: " if e.problem_mark else ""
        raise error(source, None, f"not valid YAML: {where}{e.problem or e.context or 'unreadable'}") from None
    except yaml.YAMLError as e:                  # ReaderError: a character YAML refuses, named in its first line
        raise error(source, None, f"not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeError:                         # only a caller's str can hold a lone surrogate: read() decodes
        raise error(source, None, "not valid YAML: not encodable as UTF-8") from None
    return documents[0] if documents else None


def parse(data: Any, source: str = "inventory") -> Inventory:
    """Validate an inventory already read into Python data (a mapping, as `compose` gives). Pure but for
    registering its passwords as secrets, before anything else, so that no message can show one."""
    _check_source(source)
    _register_secrets(data)
    return _Reader(source).inventory(data)


def _register_secrets(data) -> None:
    """Every `password` value and the password in every `*_connection` URL, wherever it sits (even misplaced)."""
    todo = [(data, 0)]
    while todo:
        node, depth = todo.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in children:
            if isinstance(v, (dict, list)) and depth < MAX_DEPTH:
                todo.append((v, depth + 1))
            words = v if isinstance(v, list) else [v]
            for word in (w for w in words if isinstance(w, str)):
                if k == "password":
                    log.register_secret(word)
                elif isinstance(k, str) and k.endswith("_connection"):
                    for url in word.split():
                        log.register_secret(config.url_password(url))


class _Reader:
    def __init__(self, source: str):
        self.source = source
        self.warnings: list[str] = []

    def fail(self, key: str, problem: str):
        raise error(self.source, key or "the top level", problem)

    # -- shapes
    def mapping(self, value, key: str, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {_shown(value)}")
        for k in value:
            if k not in known:
                label = log.one_line(log.redact(k), 60) if isinstance(k, str) else _shown(k)
                hint = config._suggest(k[:60], known) if isinstance(k, str) else ""
                self.fail(f"{key}.{label}" if key else label, f"unknown key{hint}; known: {', '.join(known)}")
        for k in required:
            if value.get(k) in (None, ""):
                self.fail(f"{key}.{k}" if key else k, "required")
        return value

    def sequence(self, value, key: str) -> list:
        if not isinstance(value, list) or not value:
            self.fail(key, f"expected a non-empty list, got {_shown(value)}")
        return value

    def text(self, value, key: str, default: str = "") -> str:
        """Text exactly as given, or refused: never echoed (it may be a password)."""
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10 ** 18:
            value = str(value)                  # Python callers' numbers; YAML gives only strings
        if not isinstance(value, str):
            self.fail(key, f"expected text, got {_KINDS.get(type(value)) or _shown(value)}")
        if len(value) > MAX_TEXT:
            self.fail(key, f"longer than {MAX_TEXT} characters")
        problem = text_problem(value)
        if problem:
            self.fail(key, f"not allowed: expected {problem}")
        if value != value.strip():
            self.fail(key, "spaces around the text: write it without them")
        return value

    def matching(self, value, key: str, pattern: re.Pattern, what: str, default: str = "") -> str:
        value = self.text(value, key, default)
        if not pattern.fullmatch(value):
            self.fail(key, f"{_shown(value)} is not usable as {what}")
        return value

    def name(self, value, key: str) -> str:
        return self.matching(value, key, _ID, "a Pacemaker node name and resource id "
                                              "(a letter or _, then letters, digits, _.-)")

    def path(self, value, key: str, default: str = "") -> str:
        value = self.text(value, key, default)
        if value and not value.startswith("/"):
            self.fail(key, f"{_shown(value)} is not an absolute path")
        return value

    def integer(self, value, key: str, low: int, high: int, default: int | None = None) -> int | None:
        if value is None:
            return default
        number = value if isinstance(value, int) and not isinstance(value, bool) else \
            int(value) if isinstance(value, str) and _DECIMAL.fullmatch(value) else None
        if number is None or not low <= number <= high:
            self.fail(key, f"expected an integer from {low} to {high} (decimal, no leading zero), "
                           f"got {_shown(value)}")
        return number

    def kind(self, value, key: str, kind: config.Kind, secret: bool = False) -> str:
        """A crashup.conf value as the file will hold it, checked by the option's own kind."""
        if isinstance(value, bool) and kind is config.BOOLEAN:
            raw = "yes" if value else "no"
        elif isinstance(value, float) and math.isfinite(value):
            raw = repr(value)                   # Python callers' numbers; YAML gives only strings
        elif isinstance(value, list):
            items = tuple(self.text(v, key) for v in value)
            raw = " ".join(items)
        else:
            raw = self.text(value, key)
        try:
            parsed = kind.parse(raw)
        except ValueError as e:
            self.fail(key, f"{'the value' if secret else _shown(raw)} is not allowed: expected {e}")
        if isinstance(value, list) and not isinstance(parsed, tuple):
            self.fail(key, f"expected one value, got a list: expected {kind.describe}")
        if isinstance(value, list) and parsed != items:
            self.fail(key, "each list item must be one word (no spaces nor commas)")
        return raw

    # -- the parts
    def inventory(self, data) -> Inventory:
        top = self.mapping(data, "", ("cluster", "controllers", "computes", "bmc_defaults", "crashup",
                                      "nova_compute", "tuning", "pacemaker", "isolation") + CONF_SECTIONS,
                           required=("controllers", "computes"))
        if "pacemaker" in top:
            self.fail("pacemaker", "not set here: host_map is derived from each compute's nova_host")
        cluster = self.mapping(top.get("cluster"), "cluster", ("stonith_action",))
        action = self.text(cluster.get("stonith_action"), "cluster.stonith_action")
        if action not in ("", "off", "reboot"):
            self.fail("cluster.stonith_action", f"{_shown(action)} is not allowed: expected off or reboot")
        bmc_defaults = self.mapping(top.get("bmc_defaults"), "bmc_defaults", _BMC_KEYS)
        controllers, controller_bmcs = [], {}
        for i, c in enumerate(self.sequence(top["controllers"], "controllers")):
            key = f"controllers[{i}]"
            if isinstance(c, dict):             # {name, bmc}: the controller is fenced through its BMC
                c = self.mapping(c, key, ("name", "bmc"), required=("name", "bmc"))
                controllers.append(self.name(c["name"], f"{key}.name"))
                controller_bmcs[controllers[-1]] = self.bmc(c["bmc"], f"{key}.bmc", bmc_defaults, controllers[-1])
            else:
                controllers.append(self.name(c, key))
        if len(controllers) > 1 and len(controller_bmcs) < len(controllers):
            self.warnings.append(f"inventory: {self.source}: controllers: a controller without a bmc cannot be "
                                 "fenced: when it is lost, Pacemaker cannot move crashup's daemons off it")
        computes = tuple(self.compute(c, f"computes[{i}]", bmc_defaults)
                         for i, c in enumerate(self.sequence(top["computes"], "computes")))
        self.unique([*controllers, *(c.name for c in computes)], "node name", "controllers/computes")
        self.unique([c.nova_host for c in computes], "nova_host", "computes")
        if any(c.failure_domain for c in computes) and "storm_domains" in (top.get("recovery") or {}):
            self.fail("recovery.storm_domains", "not set here when computes carry failure_domain: it is derived")
        crashup = self.mapping(top.get("crashup"), "crashup", ("config_file", "state_dir"))
        return Inventory(
            controllers=tuple(controllers), controller_bmcs=controller_bmcs, computes=computes, stonith_action=action,
            config_file=self.path(crashup.get("config_file"), "crashup.config_file", config.DEFAULT_PATH),
            state_dir=self.path(crashup.get("state_dir"), "crashup.state_dir", "/run/crashup"),
            conf=self.conf(top), nova_compute=self.nova_compute(top.get("nova_compute")),
            tuning=self.tuning(top.get("tuning")), isolation=self.isolation(top.get("isolation")),
            source=self.source, warnings=tuple(self.warnings))

    def unique(self, names: list[str], what: str, key: str) -> None:
        seen = set()
        for n in names:
            if n in seen:
                self.fail(key, f"{what} {_shown(n)} appears twice")
            seen.add(n)

    def compute(self, value, key: str, bmc_defaults: dict) -> Compute:
        c = self.mapping(value, key, ("name", "nova_host", "remote_address", "remote_port", "bmc", "failure_domain"),
                         required=("name", "bmc"))
        name = self.name(c["name"], f"{key}.name")
        return Compute(name=name,
                       nova_host=self.matching(c.get("nova_host"), f"{key}.nova_host", _HOST,
                                               "a nova host (letters, digits, _.-)", name),
                       remote_address=self.matching(c.get("remote_address"), f"{key}.remote_address", _ADDRESS,
                                                    "an address (a host name or IP address)", name),
                       remote_port=self.integer(c.get("remote_port"), f"{key}.remote_port", 1, 65535),
                       bmc=self.bmc(c["bmc"], f"{key}.bmc", bmc_defaults, name),
                       failure_domain="" if c.get("failure_domain") is None else self.matching(
                           c["failure_domain"], f"{key}.failure_domain", _HOST, "a failure domain (letters, digits, _.-)"))

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
        return Bmc(address=self.matching(merged["address"], f"{key}.address", _ADDRESS,
                                         "an address (a host name or IP address)"),
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
            found[section] = {k: self.kind(v, f"{section}.{k}", config.BY_NAME[k].kind, k in SECRET_OPTIONS)
                              for k, v in options.items() if v is not None}
        return {s: opts for s, opts in found.items() if opts}

    def nova_compute(self, value) -> NovaComputeAgent:
        fields = tuple(f.name for f in dataclasses.fields(NovaComputeAgent))
        n = self.mapping(value, "nova_compute", fields)
        agent = NovaComputeAgent(
            backend=self.text(n.get("backend"), "nova_compute.backend", "systemd"),
            unit=self.matching(n.get("unit"), "nova_compute.unit", _UNIT, "a systemd unit name", "nova-compute"),
            **{k: self.text(n.get(k), f"nova_compute.{k}") for k in (*_COMMANDS, "libvirt_uri")},
            heartbeat_cache=self.integer(n.get("heartbeat_cache"), "nova_compute.heartbeat_cache", 0, 86400))
        if agent.backend not in localservice.BACKENDS:
            self.fail("nova_compute.backend", f"{_shown(agent.backend)} is not allowed: expected "
                                              f"{' or '.join(localservice.BACKENDS)}")
        if agent.backend == "command":
            missing = [k for k in _COMMANDS if not getattr(agent, k)]
            if missing:
                self.fail("nova_compute", f"backend command needs {', '.join(missing)}")
            for k in _COMMANDS:
                try:
                    localservice.check_template(getattr(agent, k))
                except ValueError as e:
                    self.fail(f"nova_compute.{k}", str(e))
        return agent

    def tuning(self, value) -> Tuning:
        fields = tuple(f.name for f in dataclasses.fields(Tuning))
        t = self.mapping(value, "tuning", fields)
        seconds = config.duration(1)
        out = {}
        for k, v in ((k, v) for k, v in t.items() if v is not None):
            raw = self.kind(v, f"tuning.{k}", seconds)
            value = seconds.parse(raw)
            if value != int(value):
                self.fail(f"tuning.{k}", f"{_shown(raw)} is not allowed: expected whole seconds")
            out[k] = value
        return Tuning(**out)

    def isolation(self, value) -> timing.Settings:
        """The guard's settings (and the fallback level's margin), read by the guard's own parser: one reader for
        the inventory, the guard's agent and the fence device (timing.parse)."""
        i = self.mapping(value, "isolation", tuple(timing.FIELDS))
        try:
            return timing.parse({k: "true" if v is True else "false" if v is False else self.text(v, f"isolation.{k}")
                                 for k, v in i.items() if v is not None})
        except timing.SettingsError as e:
            raise error(self.source, None, str(e)) from None


_BMC_KEYS = ("address", "port", "user") + PASSWORD_SOURCES
_COMMANDS = ("start_command", "stop_command", "status_command")
#: what a non-text value is called where text is expected (never its value: it may be a password)
_KINDS = {bool: "a boolean", int: "a number", float: "a number"}
