"""One typed, validated configuration for every crashup part.

Sources, lowest to highest precedence: built-in defaults < INI file (/etc/crashup/crashup.conf, or $CRASHUP_CONFIG)
< environment (CRASHUP_<OPTION>) < explicit overrides (an OCF agent's OCF_RESKEY_* parameters, CLI flags).
The most specific source wins: a resource's parameters describe that resource. Every value is checked where it is
read; a bad one stops the program with one line naming the key, the value, where it came from and what is allowed.
Secrets are never option values: options name files or clouds.yaml entries that hold them (the one exception, the
sweep's database URLs, may hold a password as the services' own configuration does; each has a *_connection_file
twin to keep it out of crashup.conf, and a password is redacted wherever a value is shown).
"""
from __future__ import annotations

import collections
import configparser
import difflib
import os
import re
from collections.abc import Iterable, Mapping

from crashup_lib import files
from crashup_lib.log import one_line, redact, register_secret, shown, text_problem
from crashup_lib.words import FALSE_WORDS, TRUE_WORDS

DEFAULT_PATH = "/etc/crashup/crashup.conf"
MAX_FILE = 1024 * 1024                   # bytes: a configuration file is a few KB; /dev/zero is not one
MAX_SECONDS = 366 * 86400.0              # no duration crashup waits on is longer; beyond, a typo (or an overflow)
MAX_INTEGER = 2 ** 31 - 1
#: CRASHUP_* variables that are not options: the file's path, what crashup gives its hook command, the test lab's
FOREIGN_ENV = re.compile(r"CRASHUP_(?:CONFIG|EVENT_\w+|LAB_\w+|\w+_VENV)")


class ConfigError(ValueError):
    """A configuration problem, already phrased as the one line an operator needs."""


# --- value kinds: each parses a string or raises ValueError("what is allowed") ------------------------------------

# Named tuples, not dataclasses or typing: the compute agent's monitor loads this module (dataclasses and typing
# cost it ~10 ms of imports).
class Kind(collections.namedtuple("Kind", "describe parse multiline", defaults=(False,))):
    """describe: what is allowed, in words; parse: str -> value or ValueError; multiline: a list that may continue
    on the next INI line."""
    __slots__ = ()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(minimum: float = 0, maximum: float = MAX_SECONDS) -> Kind:
    allowed = f"a duration in seconds (e.g. 30, 90s, 10m, 1h), at least {minimum:g}s and at most {maximum:g}s"

    def parse(raw: str) -> float:
        m = _DURATION.match(raw)
        if not m:
            raise ValueError(allowed)
        value = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if not minimum <= value <= maximum:
            raise ValueError(allowed)
        return value
    return Kind(allowed, parse)


def integer(minimum: int = 0, maximum: int = MAX_INTEGER) -> Kind:
    allowed = f"an integer >= {minimum} <= {maximum}"

    def parse(raw: str) -> int:
        if len(raw.strip()) > 12:            # int() of 10,000 digits is slow, and no such count makes sense
            raise ValueError(allowed)
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(allowed) from None
        if not minimum <= value <= maximum:
            raise ValueError(allowed)
        return value
    return Kind(allowed, parse)


def fraction() -> Kind:
    allowed = "a number between 0 and 1 (e.g. 0.5)"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(allowed) from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(allowed)
        return value
    return Kind(allowed, parse)


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("a boolean (yes/no, true/false, on/off, 1/0)")


BOOLEAN = Kind("a boolean (yes/no, true/false, on/off, 1/0)", parse_bool)


def choice(*values: str) -> Kind:
    allowed = "one of " + ", ".join(values)

    def parse(raw: str) -> str:
        word = raw.strip().lower()
        if word not in values:
            raise ValueError(allowed)
        return word
    return Kind(allowed, parse)


def text(pattern: str | None = None, allowed: str = "any text") -> Kind:
    def parse(raw: str) -> str:
        value = raw.strip()
        if pattern and not re.fullmatch(pattern, value):
            raise ValueError(allowed)
        return value
    return Kind(allowed, parse)


def optional_path() -> Kind:
    allowed = "an absolute path, or empty for none"

    def parse(raw: str) -> str:
        value = raw.strip()
        if value and not value.startswith("/"):
            raise ValueError(allowed)
        return value
    return Kind(allowed, parse)


def optional_url() -> Kind:
    allowed = "an http:// or https:// URL, or empty for none"

    def parse(raw: str) -> str:
        value = raw.strip()
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(allowed)
        return value
    return Kind(allowed, parse)


def parse_host_map(raw: str) -> dict[str, str]:
    """pcmk_host_map syntax: 'node1:host1;node2:host2' (',' or spaces also separate entries)."""
    mapping: dict[str, str] = {}
    for entry in re.split(r"[;,\s]+", raw.strip()):
        if not entry:
            continue
        node, sep, host = entry.partition(":")
        if not sep or not node or not host:
            raise ValueError("pcmk_host_map syntax: 'node1:host1;node2:host2'")
        if node in mapping and mapping[node] != host:
            raise ValueError(f"pcmk_host_map syntax without duplicates ({node!r} maps twice)")
        mapping[node] = host
    return mapping


HOST_MAP = Kind("pcmk_host_map syntax: 'node1:host1;node2:host2'", parse_host_map)


def parse_domains(raw: str) -> dict[str, str]:
    try:
        return parse_host_map(raw)
    except ValueError:
        raise ValueError("'node1:rack1;node2:rack1;node3:rack2' (a node once)") from None


DOMAINS = Kind("'node1:rack1;node2:rack1;node3:rack2' (a node once)", parse_domains, multiline=True)


def words() -> Kind:
    def parse(raw: str) -> tuple[str, ...]:
        return tuple(w for w in re.split(r"[,\s]+", raw.strip()) if w)
    return Kind("a comma- or space-separated list", parse, multiline=True)


def names(pattern: str, allowed: str, *, empty: bool = False) -> Kind:
    """A comma- or space-separated list of names, each matching pattern: at least one unless `empty`."""
    def parse(raw: str) -> tuple[str, ...]:
        found = tuple(w for w in re.split(r"[,\s]+", raw.strip()) if w)
        if (not found and not empty) or not all(re.fullmatch(pattern, w) for w in found):
            raise ValueError(allowed)
        return found
    return Kind(allowed, parse, multiline=True)


DB_SCHEMES = ("sqlite", "sqlite+pysqlite", "mysql", "mysql+pymysql")


def database_urls() -> Kind:
    allowed = ("database URLs as the service's own [database] connection writes them, space-separated "
               "(sqlite:///path, mysql+pymysql://user:password@host/db), or empty for none")

    def parse(raw: str) -> tuple[str, ...]:
        urls = tuple(raw.split())
        for url in urls:
            register_secret(url_password(url))      # before anything can show it
        if any(u.partition("://")[0] not in DB_SCHEMES or not u.partition("://")[1] for u in urls):
            raise ValueError(allowed)
        return urls
    return Kind(allowed, parse, multiline=True)


def url_password(url: str) -> str | None:
    """The password of scheme://user:password@host/..., split as SQLAlchemy does (a '/' may be in it)."""
    m = re.match(r"[\w+.-]+://[^:/@\s]*:([^@\s]*)@", url)
    return m.group(1) if m else None


# --- the options ---------------------------------------------------------------------------------------------------

class Option(collections.namedtuple("Option", "name section kind default help")):
    __slots__ = ()


def _connection(service: str, what: str) -> tuple[Option, Option]:
    """The sweep's database of a service: URLs inline, or a file holding them (no password in crashup.conf)."""
    return (Option(f"{service}_connection", "sweep", database_urls(), "",
                   f"{what}, as URLs; empty: {service} is not swept"),
            Option(f"{service}_connection_file", "sweep", optional_path(), "",
                   f"a file (mode 0600) holding {service}_connection's URLs instead, one per line, so that no "
                   "password sits in this file"))


OPTIONS: tuple[Option, ...] = (
    # what happens when a compute host fails
    Option("mode", "recovery", choice("auto", "notify"), "auto",
           "auto: evacuate the failed host's instances; notify: emit an event and leave recovery to the operator's "
           "own tooling (the host stays down until released)"),
    Option("recovery_interval_period", "recovery", duration(1), "60",
           "how often the CrashUp sweep looks for resources stuck in a task"),
    Option("recovery_stale_period", "recovery", duration(1), "600",
           "how long a resource may stay in an in-progress task before the sweep treats it as stuck"),
    Option("recovery_resync_count", "recovery", integer(0, 100), "3",
           "how many times an unreachable host is checked again before crashup acts on what it knows"),
    Option("recovery_resync_interval", "recovery", duration(0), "10",
           "time between those checks"),
    Option("storm_max_hosts", "recovery", integer(1), "2",
           "more failed compute hosts than this within storm_window stops automatic evacuation (storm guard)"),
    Option("storm_max_fraction", "recovery", fraction(), "0.5",
           "the same guard as a fraction of all compute hosts"),
    Option("storm_window", "recovery", duration(1), "300",
           "the window the storm guard counts failures in"),
    Option("storm_domains", "recovery", DOMAINS, "",
           "each compute node's failure domain (rack, power feed, switch): failed hosts within storm_max_domains "
           "domains are one incident, which storm_max_hosts does not stop (storm_max_fraction still does)"),
    Option("storm_max_domains", "recovery", integer(1), "1",
           "how many failure domains one incident may span"),
    # how instances are evacuated
    Option("evacuable_tag", "evacuation", text(r"[A-Za-z0-9_.:-]+", "a tag name (letters, digits, _.:-)"),
           "evacuable", "instances whose flavor, image, server metadata or aggregate carries this tag are "
           "evacuated; when no instance on the host is tagged, all are"),
    Option("concurrency", "evacuation", integer(1, 64), "8",
           "evacuations in flight at once"),
    Option("instance_timeout", "evacuation", duration(10), "300",
           "how long one instance may take to reach a final state on its new host"),
    Option("keep_power_state", "evacuation", BOOLEAN, "yes",
           "evacuated instances keep the power state they had (nova >= 2.95 would leave them stopped)"),
    Option("reserved_hosts", "evacuation", words(), "",
           "hosts to evacuate to, in order of preference; empty lets nova's scheduler choose"),
    Option("evacuate_local_disk", "evacuation", BOOLEAN, "yes",
           "evacuate instances whose disk is local to the failed host (not a volume, not on an aggregate with "
           "metadata crashup:shared_storage=true): nova rebuilds them from their images and their disk's data is "
           "lost (the plan warns); no: they stay on the host, which is still let back, and come back with it"),
    Option("volume_checks", "evacuation", BOOLEAN, "yes",
           "read cinder (the block-storage endpoint of the cloud) around each evacuation: repair a volume left "
           "attaching/detaching by the failed host first, check each volume is attached on the new host after; "
           "no: volumes are not read (a cloud without cinder)"),
    # the operator verbs (crashup drain, undrain, evacuate, restore)
    Option("drain_policy", "maintenance", choice("cold-migrate", "stop"), "cold-migrate",
           "what `crashup drain` does with a server that cannot live-migrate (and a stopped one): cold-migrate it, "
           "or stop it where it is (`crashup undrain` starts again those that were running); a server's metadata "
           "crashup:drain (live, cold-migrate or stop) overrides it"),
    Option("maintenance_timeout", "maintenance", duration(10), "600",
           "how long a verb follows one server's move, stop, start or rebuild, and `crashup evacuate` the host's "
           "recovery, before it gives up (what was started goes on in nova; run the verb again to resume)"),
    # rejuvenation (crashup rejuvenate, and the recovery daemon's periodic roll: docs/runbook.md)
    Option("rejuvenation_interval", "maintenance", duration(0), "0",
           "how old a compute node's last rejuvenation (a graceful restart of rejuvenation_resources through "
           "Pacemaker, one node at a time) may get before the recovery daemon rolls it again; 0: never (off)"),
    Option("rejuvenation_resources", "maintenance",
           names(r"[A-Za-z0-9_.:-]+", "Pacemaker clone ids (letters, digits, _.:-), at least one"),
           "nova-compute-clone",
           "the Pacemaker clones a rejuvenation restarts on a node, in this order (add libvirtd's clone when "
           "Pacemaker runs libvirtd)"),
    Option("rejuvenation_task_wait", "maintenance", duration(0), "300",
           "how long a rejuvenation waits for a node's servers to finish their tasks before it skips that node"),
    # reaching OpenStack
    Option("cloud", "openstack", text(r"[^\s]+", "a clouds.yaml entry name"), "crashup",
           "the clouds.yaml entry crashup uses (credentials stay in clouds.yaml/secure.yaml)"),
    Option("clouds_file", "openstack", optional_path(), "",
           "clouds.yaml to read (empty: openstacksdk's usual places, or $OS_CLIENT_CONFIG_FILE)"),
    Option("region_name", "openstack", text(), "", "region, when the cloud has several"),
    Option("interface", "openstack", choice("public", "internal", "admin"), "internal",
           "which endpoints of the catalog to use"),
    Option("api_timeout", "openstack", duration(1, 600), "30", "bound on one OpenStack API call"),
    # mapping Pacemaker to nova
    Option("host_map", "pacemaker", HOST_MAP, "",
           "explicit Pacemaker node name -> nova host map; without an entry, names are matched by short name"),
    # where events go
    Option("journal", "events", optional_path(), "/var/lib/crashup/events.jsonl",
           "JSON-lines journal of every event"),
    Option("webhook_url", "events", optional_url(), "", "HTTP endpoint that receives each event (POST)"),
    Option("webhook_secret_file", "events", optional_path(), "",
           "file holding the HMAC key that signs webhook requests"),
    Option("hook_command", "events", optional_path(), "",
           "command run with each event as JSON on its standard input"),
    Option("transport_url_file", "events", optional_path(), "",
           "a file (mode 0600) holding the transport URL of the OpenStack notification bus, "
           "rabbit://user:password@host:port/vhost, as nova's [DEFAULT] transport_url; empty: no event goes to the "
           "bus (docs/custom-recovery.md)"),
    Option("notification_topics", "events", names(r"[A-Za-z0-9_.-]+", "topic names (letters, digits, _.-), "
                                                  "comma- or space-separated, at least one"), "notifications",
           "oslo.messaging's [oslo_messaging_notifications] topics: each event is published with the routing key "
           "<topic>.info or <topic>.error"),
    Option("notification_queues", "events", names(r"[A-Za-z0-9_.:-]+", "queue names (letters, digits, _.:-), "
                                                  "comma- or space-separated", empty=True), "",
           "durable queues of consumers that must not miss an event (e.g. a custom recovery's): crashup declares "
           "each and binds it to every routing key it publishes with, before it publishes; a broker restart drops "
           "the exchange and every binding to it, and a consumer binds again only once it is back"),
    Option("control_exchange", "events", text(r"[A-Za-z0-9_.:-]+", "an exchange name (letters, digits, _.:-)"),
           "openstack", "the topic exchange notifications go to (oslo.messaging's control_exchange)"),
    Option("publish_timeout", "events", duration(0.1, 60), "2",
           "bound on one publish to the bus, connecting included (the publisher runs in the background: a "
           "recovery never waits for it)"),
    Option("outbox_dir", "events", optional_path(), "/var/lib/crashup/outbox",
           "where events wait, fsync'ed, until the bus has them; on storage the controllers share, a failover "
           "hands what is left to the next daemon"),
    # the CrashUp sweep (`crashup sweep`): a service is swept only when its database is configured
    *_connection("nova", "the nova cell databases, cell0 and every cell (nova-manage cell_v2 list_cells --verbose "
                         "shows them)"),
    *_connection("cinder", "cinder's database"),
    *_connection("glance", "glance's database"),
    *_connection("neutron", "neutron's database"),
    Option("db_timeout", "sweep", duration(1, 300), "10",
           "bound on connecting to a service database, on each query, and on waiting for a sqlite lock"),
    Option("libvirt_uri", "sweep", text(), "qemu+tcp://{host}/system",
           "how the sweep reads an instance's guest ({host}: the instance's nova host); empty: nova instances are "
           "not observed, hence never changed"),
    Option("glance_datadirs", "sweep", words(), "/var/lib/glance/images",
           "glance's filesystem_store_datadir(s), where the sweep checks an image's data; empty: images are not "
           "observed, hence never changed"),
    Option("cinder_volume_dirs", "sweep", words(), "",
           "where a file-backed cinder store keeps its volumes as volume-<id> files (the NFS driver's share mount "
           "points): the sweep checks there that a volume stuck in a task (creating, deleting, extending, ...) "
           "exists, and asks cinder's os-services whether its cinder-volume is up; volumes stuck attaching or "
           "detaching are checked on the instance's host instead (nova's heartbeat, the guest's disks through "
           "libvirt_uri); empty: volumes are not observed, hence never changed"),
    Option("cinder_backup_dirs", "sweep", words(), "",
           "cinder's posix or NFS backup store (backup_posix_path, the share's mount point), where the sweep "
           "checks a backup stuck in a task, with cinder-backup's heartbeat; empty: backups are not observed, "
           "hence never changed"),
    # the guest monitor on each compute node (`crashup guests --daemon`, docs/guests.md); option names are global,
    # hence the guest_ prefix ([sweep] has a libvirt_uri of its own)
    Option("guest_monitor", "guests", BOOLEAN, "no",
           "run the guest monitor on every compute node: `crashup pcs render` adds its clone (crashup-guests)"),
    Option("guest_libvirt_uri", "guests", text(r"[^\s]+", "a libvirt URI without spaces"), "qemu:///system",
           "the node's own libvirt ({host}: the node's nova host), read-only"),
    Option("guest_host", "guests", text(r"[A-Za-z0-9_.-]*", "a host name (letters, digits, _.-), or empty"), "",
           "this node's nova host; empty: host_map's entry for the Pacemaker node, else the node's name, else "
           "the hostname (nova's own default for its host)"),
    Option("guest_failure_policy", "guests", choice("notify", "reboot", "none"), "notify",
           "what a failed guest gets when its server, flavor and image say nothing (crashup:guest_failure_policy): "
           "notify: an event; reboot: a HARD reboot through nova; none: left to nova and the operator"),
    Option("guest_max_reboots", "guests", integer(0, 100), "3",
           "at most this many reboots of one guest within guest_reboot_window; one more failure leaves it stopped "
           "(nova stop) with an ERROR event"),
    Option("guest_reboot_window", "guests", duration(1), "3600", "the window the crash-loop limit counts in"),
    Option("guest_state_file", "guests", optional_path(), "/var/lib/crashup/guests.json",
           "the failures already handled and the reboots made, so that a restarted monitor does not act twice"),
    # Prometheus metrics (docs/metrics.md): the recovery daemon writes them for node_exporter's textfile collector
    Option("metrics_textfile", "metrics", text(r"(/[^\s]*\.prom)?", "an absolute path ending in .prom (what "
                                                "node_exporter's textfile collector reads), or empty for none"), "",
           "the file the recovery daemon writes its metrics to (atomic rename), e.g. "
           "/var/lib/prometheus/node-exporter/crashup.prom; empty: no metrics (`crashup metrics` prints them)"),
    Option("metrics_interval", "metrics", duration(1, 3600), "15", "how often the metrics file is written"),
    # logging
    Option("debug", "logging", BOOLEAN, "no", "log debug messages"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(o.section for o in OPTIONS))


class Config(Mapping[str, object]):
    """Validated values by option name (also as attributes), with where each value came from."""

    def __init__(self, values: dict[str, object], sources: dict[str, str]):
        self._values = values
        self.sources = sources

    def __getitem__(self, name: str) -> object:
        return self._values[name]

    def __getattr__(self, name: str) -> object:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def read_text(path: str, what: str = "config", limit: int = MAX_FILE) -> str:
    """A small UTF-8 text file, or ConfigError naming it and the problem (missing, a directory, unreadable,
    too big, binary, not UTF-8: every way a file can be wrong is a configuration error, never a traceback)."""
    if path == os.devnull:                   # the usual way to say "no file"
        return ""
    try:
        return files.read_text(path, limit)
    except files.FileProblem as e:
        raise ConfigError(f"{what}: {shown(path, 200)}: {e}") from None


def _read_file(path: str, required: bool) -> dict[str, tuple[str, str]]:
    """INI file -> {option: (raw value, source)}. Unknown sections and keys are errors: a typo must not pass."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    if not required and not os.path.lexists(path):
        return {}
    try:
        parser.read_string(read_text(path), source=path)
    except configparser.Error as e:
        first = one_line(str(e).splitlines()[0], 200)
        raise ConfigError(f"config: {path}: not a valid INI file: {redact(first)}") from None
    found: dict[str, tuple[str, str]] = {}
    for section in parser.sections():
        if section not in SECTIONS:
            raise ConfigError(f"config: {path}: unknown section [{section}]{_suggest(section, SECTIONS)}; "
                              f"sections are {', '.join(SECTIONS)}")
        for key, raw in parser.items(section):
            option = BY_NAME.get(key)
            if option is None:
                raise ConfigError(f"config: {path} [{section}]: unknown option {key!r}{_suggest(key, BY_NAME)}")
            if option.section != section:
                raise ConfigError(f"config: {path}: option {key!r} belongs in [{option.section}], not [{section}]")
            found[key] = (raw, f"{path} [{section}]")
    return found


def load(path: str | None = None, overrides: Mapping[str, str] | None = None,
         override_source: str = "parameter", env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the whole configuration. Raises ConfigError with one line on the first bad value."""
    env = os.environ if env is None else env
    explicit_path = path or env.get("CRASHUP_CONFIG")
    raw: dict[str, tuple[str, str]] = {o.name: (o.default, "default") for o in OPTIONS}
    raw.update(_read_file(explicit_path or DEFAULT_PATH, required=bool(explicit_path)))
    for var, value in env.items():
        if not var.startswith("CRASHUP_") or FOREIGN_ENV.fullmatch(var):
            continue
        name = var[len("CRASHUP_"):].lower()
        if name not in BY_NAME:
            raise ConfigError(f"config: environment {shown(var)}: no such option"
                              f"{_suggest(name, BY_NAME)} (variables are CRASHUP_<OPTION>, e.g. CRASHUP_MODE)")
        raw[name] = (value, f"environment {var}")
    for name, value in (overrides or {}).items():
        if name in BY_NAME:
            raw[name] = (value, f"{override_source} {name}")
    values: dict[str, object] = {}
    for name, (value, source) in raw.items():
        option = BY_NAME[name]
        try:
            problem = text_problem(value.replace("\n", " ") if option.kind.multiline else value)
            if problem:
                raise ValueError(problem)
            values[name] = option.kind.parse(value)
        except ValueError as e:
            raise ConfigError(f"config: {name} = {shown(value)} (from {source}) is not allowed: expected {e}") \
                from None
    return Config(values, {name: source for name, (_, source) in raw.items()})


def sample() -> str:
    """The commented sample file installed as /etc/crashup/crashup.conf.sample (generated, so it never drifts)."""
    lines = ["# crashup configuration. Every option is shown with its default, commented out.",
             "# Precedence: defaults < this file < environment CRASHUP_<OPTION> < resource parameters.", ""]
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for option in (o for o in OPTIONS if o.section == section):
            lines.append(f"# {option.help}")
            lines.append(f"# allowed: {option.kind.describe}")
            lines.append(f"#{option.name} = {option.default}")
            lines.append("")
    return "\n".join(lines)
