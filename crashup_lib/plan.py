"""Which instances of a failed compute host to evacuate, in what order, to where: a Plan, as plain data.

Pure: no I/O, no clock, no randomness: the same input gives the same Plan, which `crashup plan HOST` prints as a
dry run and the evacuator runs (wave after wave, a wave's steps concurrently). Inputs: nova's records (nova.Server,
Aggregate, Service) as the client returns them, and each server's volume ids as cinder has them (None: not known).

The rules, in the order they apply (each is also a table of data below):

0. Storage (what the evacuation keeps): VOLUME when nova shows no image (boot from volume); SHARED when an aggregate
   of the failed host has metadata `crashup:shared_storage` true-ish (NFS, Ceph ephemeral: nova >= 2.14 finds it
   itself, the key tells crashup); else LOCAL: rebuilt from its image, its disk's data lost (a note warns).
1. Skip (SKIP_RULES, first match wins; `Skip.code` is machine-readable):
   already_moved   the instance's host is no longer the failed host: nova is the ledger (its host and evacuation
                   migration records), so a resumed plan never evacuates an instance twice
   deleting        vm_state deleted/soft-delete or task_state deleting/soft-deleting
   shelved         vm_state shelved / shelved_offloaded: not running, nova does not evacuate them, unshelve does
   in_progress     task_state rebuilding/rebuild_block_device_mapping/rebuild_spawning: an evacuation (or
                   rebuild) was already accepted; the evacuator polls it, stale-task repair handles it if stuck
   error           vm_state error and Policy.skip_error (otherwise ERROR instances are evacuated)
   opted_out       server metadata `<tag>` is false-ish: the owner opted out, this wins over every tag
   not_tagged      tagging is in use (see 2) and nothing tags this instance
   local_disk      LOCAL (see 0) and Policy.evacuate_local_disk off: it stays, and is back with its host
2. Evacuable (TAG_SOURCES): an instance is tagged when, with `<tag>` = Policy.evacuable_tag,
     server metadata `<tag>` is true-ish | server tag `<tag>` | flavor extra spec `<tag>`,
     `aggregate_instance_extra_specs:<tag>`, `trait:<tag>` or `trait:CUSTOM_<TAG>` is true-ish (traits:
     `required`) | image property `<tag>` is true-ish | an aggregate of the failed host has metadata `<tag>`
     true-ish (then all of the host's instances are).
   Filter mode: "tagged" when any instance given or any aggregate is tagged, else "all" (NovaEvacuate's rule:
   untagged clouds evacuate everything). Already-moved instances count too: pass the instances of the host's
   evacuation migrations (their host now elsewhere) and a resumed plan filters exactly as the first one did; or
   pass `filter_mode` explicitly (Plan.filter_mode of the first plan).
   True-ish: yes/true/on/1/y (crashup_lib.words), any case; false-ish: no/false/off/0/n.
   Masakari's `HA_Enabled=True` metadata works with `evacuable_tag = HA_Enabled`.
3. Prepare (PREPARE): nova evacuates only vm_state active/stopped/error with no task_state. An active instance
   with a leftover task is reset to active first ("reset-active"); every other state or leftover task is reset
   to error ("reset-error"), as Masakari does. Otherwise "none".
4. After (NOVA_LEAVES, WANTED): with keep_power_state on, the instance ends in the power state it had: "start"
   when it was ACTIVE and nova leaves it SHUTOFF (the microversion is one where nova stops evacuated servers),
   "stop" when it was SHUTOFF and nova leaves it ACTIVE (a stopped instance reset to error, at an older one);
   otherwise "none" (also for ERROR and other states, whose wanted power state is unknown, and always when
   keep_power_state is off). Which microversions stop them is nova.evacuate_leaves_stopped()'s to say.
5. Priority and waves: server metadata `crashup:priority` (an integer, higher first, default 0; a bad value
   counts as 0 and the step's reason says so). Restart group `crashup:group`: all members of a group share the
   priority of their highest member, so they land in one wave. One wave per priority, highest first; within a
   wave, stable order by name then id. Plan.steps is the waves concatenated.
6. Targets: Policy.target_host for every step when given (PlanError if it is the failed host, unknown, down,
   forced down or disabled); else the Policy.reserved_hosts that are up, enabled and not forced down, in order,
   round-robin across the steps in plan order (unusable ones are named in Plan.notes); else None: nova's
   scheduler chooses. Never the failed host, never a down or forced-down host.

Impossible input (a duplicate instance id, a bad microversion, an unusable target host) raises PlanError, a
ValueError whose message is one line an operator can act on.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any, Iterable, Mapping

from crashup_lib import nova
from crashup_lib import repair
from crashup_lib.words import FALSE_WORDS, TRUE_WORDS

__all__ = ["PlanError", "Policy", "Storage", "EvacuationStep", "Skip", "Wave", "Plan", "build_plan", "PRIORITY_KEY",
           "GROUP_KEY", "SHARED_STORAGE_KEY", "SKIP_RULES", "TAG_SOURCES", "AFTER_ACTIONS", "PREPARE_ACTIONS"]

PRIORITY_KEY = "crashup:priority"
GROUP_KEY = "crashup:group"
SHARED_STORAGE_KEY = "crashup:shared_storage"
PLAN_VERSION = 1
AFTER_ACTIONS = ("none", "start", "stop")
PREPARE_ACTIONS = ("none", "reset-active", "reset-error")
SCHEDULER = "(scheduler)"             # how render() shows a step without a fixed target


class Storage(enum.StrEnum):              # what an evacuation keeps of a server's disk (rule 0)
    VOLUME = "volume"              # boot from volume: cinder keeps it, nova attaches it on the new host
    SHARED = "shared"              # instance storage the new host sees too: nova reuses the disk
    LOCAL = "local"                # only on the failed host: rebuilt from the image, its data lost


class PlanError(ValueError):
    """The input cannot make a plan (unknown or unusable target host, duplicate instance ids...)."""


# --- inputs: nova's records ------------------------------------------------------------------------------------------

def _extra_specs(server: nova.Server) -> Mapping[str, Any]:
    return (server.flavor or {}).get("extra_specs") or {}


def _why_unusable(service: nova.Service) -> str:
    """Why a compute host cannot take instances ("down, forced down"...), "" when it can."""
    return ", ".join(w for w, bad in (("down", service.state != "up"), ("forced down", service.forced_down),
                                      ("disabled", service.status != "enabled")) if bad)


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the operator configured (config.py [evacuation]) plus the per-run choices of `crashup plan/recover`."""
    evacuable_tag: str = "evacuable"
    reserved_hosts: tuple[str, ...] = ()
    keep_power_state: bool = True
    skip_error: bool = False
    target_host: str | None = None
    evacuate_local_disk: bool = True

    def __post_init__(self):
        if not self.evacuable_tag:
            raise PlanError("policy: evacuable_tag must not be empty")
        object.__setattr__(self, "reserved_hosts", tuple(self.reserved_hosts))
        object.__setattr__(self, "target_host", self.target_host or None)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, skip_error: bool = False,
                    target_host: str | None = None) -> "Policy":
        return cls(evacuable_tag=cfg["evacuable_tag"], reserved_hosts=tuple(cfg["reserved_hosts"]),
                   keep_power_state=bool(cfg["keep_power_state"]), skip_error=skip_error, target_host=target_host,
                   evacuate_local_disk=bool(cfg.get("evacuate_local_disk", True)))


# --- outputs -------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvacuationStep:
    """Evacuate one server: first `prepare` (a reset-state), then evacuate to `target` (None: the scheduler
    chooses), then `after` once it is on its new host."""
    server_id: str
    name: str
    priority: int                  # the effective priority (the group's highest when in a restart group)
    group: str | None
    target: str | None
    after: str                     # one of AFTER_ACTIONS
    prepare: str                   # one of PREPARE_ACTIONS
    reason: str                    # why it is included, and any note (bad priority, reset, power state)
    wave: int                      # index into Plan.waves
    project_id: str = ""
    state: str = ""                # vm_state it had when planned
    storage: Storage = Storage.LOCAL
    volumes: tuple[str, ...] | None = None   # ids of the volumes cinder attaches to it (None: not known)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Skip:
    server_id: str
    name: str
    code: str                      # one of the SKIP_RULES codes
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Wave:
    """Steps that may run concurrently (bounded by the evacuator's concurrency); waves run in order."""
    index: int
    priority: int
    steps: tuple[EvacuationStep, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted({s.group for s in self.steps if s.group}))


@dataclasses.dataclass(frozen=True)
class Plan:
    host: str                                  # the failed host (nova's name)
    filter_mode: str                           # "tagged" or "all"
    evacuable_tag: str
    microversion: str                          # the one the after-actions assume ("latest" when not given)
    steps: tuple[EvacuationStep, ...]
    skipped: tuple[Skip, ...]
    waves: tuple[Wave, ...]
    notes: tuple[str, ...] = ()                # plan-wide remarks: unusable reserved hosts, filter mode

    @property
    def empty(self) -> bool:
        return not self.steps

    def step(self, server_id: str) -> EvacuationStep:
        for step in self.steps:
            if step.server_id == server_id:
                return step
        raise KeyError(server_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: plain str/int/bool/None, lists and dicts."""
        return {
            "version": PLAN_VERSION,
            "host": self.host,
            "filter_mode": self.filter_mode,
            "evacuable_tag": self.evacuable_tag,
            "microversion": self.microversion,
            "steps": [s.to_dict() for s in self.steps],
            "skipped": [s.to_dict() for s in self.skipped],
            "waves": [{"index": w.index, "priority": w.priority, "groups": list(w.groups),
                       "steps": [s.server_id for s in w.steps]} for w in self.waves],
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """A human table: a summary line, the steps by wave, the skipped instances, the notes."""
        filt = (f"instances tagged {self.evacuable_tag!r}" if self.filter_mode == "tagged"
                else f"all instances (none tagged {self.evacuable_tag!r})")
        lines = [f"Plan for {self.host}: {len(self.steps)} to evacuate in {len(self.waves)} "
                 f"wave{'s' if len(self.waves) != 1 else ''}, {len(self.skipped)} skipped; "
                 f"filter: {filt}; nova microversion {self.microversion}"]
        if self.steps:
            rows = [(str(s.wave + 1), str(s.priority), s.name or "-", s.server_id, s.group or "-", s.state or "-",
                     s.target or SCHEDULER, s.prepare, s.after, s.reason) for s in self.steps]
            lines += [""] + _table(("WAVE", "PRIO", "NAME", "ID", "GROUP", "STATE", "TARGET", "PREPARE", "AFTER",
                                    "REASON"), rows)
        else:
            lines += ["", "Nothing to evacuate."]
        if self.skipped:
            rows = [(s.name or "-", s.server_id, s.code, s.reason) for s in self.skipped]
            lines += ["", "Skipped:"] + _table(("NAME", "ID", "CODE", "REASON"), rows)
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        if self.steps:                  # DISK: what the evacuation keeps; VOLUMES ?: cinder not asked or not heard
            rows = [(s.name or "-", s.server_id, s.storage, "?" if s.volumes is None else " ".join(s.volumes) or "-")
                    for s in self.steps]
            lines += ["", "Disks:"] + _table(("NAME", "ID", "DISK", "VOLUMES"), rows)
        return "\n".join(lines) + "\n"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [line(header)] + [line(r) for r in rows]


# --- the rules as data ---------------------------------------------------------------------------------------------

DELETING_VM_STATES = ("deleted", "soft-delete", "soft_deleted")
DELETING_TASKS = ("deleting", "soft-deleting", "soft_deleting")
SHELVED_VM_STATES = ("shelved", "shelved_offloaded")
EVACUATING_TASKS = ("rebuilding", "rebuild_block_device_mapping", "rebuild_spawning")


@dataclasses.dataclass(frozen=True)
class _Facts:
    """What the skip rules look at, worked out once per instance."""
    server: nova.Server
    state: str                     # its vm_state
    failed_host: str
    tag: str
    skip_error: bool
    filter_mode: str
    tagged_by: str | None          # the first tag source, or None
    opted_out: bool
    local_lost: bool               # LOCAL, and Policy.evacuate_local_disk is off


#: (code, predicate, reason) in order; the first match skips the instance
SKIP_RULES: tuple[tuple[str, Any, Any], ...] = (
    ("already_moved", lambda f: f.server.host is not None and f.server.host != f.failed_host,
     lambda f: f"already moved: nova has it on {f.server.host}"),
    ("deleting", lambda f: f.state in DELETING_VM_STATES or (f.server.task_state or "") in DELETING_TASKS,
     lambda f: f"being deleted (vm_state {f.state}, task_state {f.server.task_state})"),
    ("shelved", lambda f: f.state in SHELVED_VM_STATES,
     lambda f: f"{f.state}: not running, nova does not evacuate it (unshelve places it)"),
    ("in_progress", lambda f: (f.server.task_state or "") in EVACUATING_TASKS,
     lambda f: f"evacuation or rebuild already in progress (task_state {f.server.task_state})"),
    ("error", lambda f: f.state == "error" and f.skip_error,
     lambda f: "in ERROR and skip_error is on"),
    ("opted_out", lambda f: f.opted_out,
     lambda f: f"opted out: server metadata {f.tag}={f.server.metadata.get(f.tag)}"),
    ("not_tagged", lambda f: f.filter_mode == "tagged" and f.tagged_by is None,
     lambda f: "not tagged (tagging is in use on this host)"),
    ("local_disk", lambda f: f.local_lost,
     lambda f: "local disk and evacuate_local_disk is off: it stays and comes back with the host"),
)


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


def _is_true(value: Any) -> bool:
    return _word(value) in TRUE_WORDS


def _is_false(value: Any) -> bool:
    return _word(value) in FALSE_WORDS


def _trait_name(tag: str) -> str:
    """os-traits' custom trait spelling of a tag: CUSTOM_ + upper case, anything else -> '_'."""
    name = re.sub(r"[^A-Z0-9_]", "_", tag.upper())
    return name if name.startswith("CUSTOM_") else "CUSTOM_" + name


def _flavor_keys(tag: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((tag, f"aggregate_instance_extra_specs:{tag}", f"trait:{tag}",
                                f"trait:{_trait_name(tag)}")))


def _flavor_true(key: str, value: Any) -> bool:
    return _is_true(value) or (key.startswith("trait:") and _word(value) == "required")


#: (source name, finder(server, tag) -> the "key=value" that tags it, or None); first match is the reason
TAG_SOURCES: tuple[tuple[str, Any], ...] = (
    ("server metadata", lambda s, t: f"{t}={s.metadata[t]}" if t in s.metadata and _is_true(s.metadata[t])
     else None),
    ("server tag", lambda s, t: t if t in s.tags else None),
    ("flavor extra spec", lambda s, t: next((f"{k}={_extra_specs(s)[k]}" for k in _flavor_keys(t)
                                             if k in _extra_specs(s) and _flavor_true(k, _extra_specs(s)[k])),
                                            None)),
    ("image property", lambda s, t: f"{t}={s.image_properties[t]}"
     if t in s.image_properties and _is_true(s.image_properties[t]) else None),
)


def _tagged_by(server: nova.Server, tag: str) -> str | None:
    for source, find in TAG_SOURCES:
        found = find(server, tag)
        if found:
            return f"{source} {found}"
    return None


#: (vm_state it is evacuated from, nova stops evacuated instances) -> the state nova leaves it in
NOVA_LEAVES: dict[tuple[str, bool], str] = {
    ("active", False): "ACTIVE", ("active", True): "SHUTOFF",
    ("stopped", False): "SHUTOFF", ("stopped", True): "SHUTOFF",
    ("error", False): "ACTIVE", ("error", True): "SHUTOFF",
}
#: vm_state before the failure -> the power state keep_power_state restores (absent: unknown, left as nova leaves it)
WANTED: dict[str, str] = {"active": "ACTIVE", "stopped": "SHUTOFF"}
#: (state nova leaves, state wanted) -> after action
AFTER: dict[tuple[str, str], str] = {("SHUTOFF", "ACTIVE"): "start", ("ACTIVE", "SHUTOFF"): "stop"}


def _prepare(server: nova.Server, state: str) -> tuple[str, str]:
    """(prepare action, the vm_state nova sees at evacuate time): the pipeline's repair table decides, so the dry
    run shows exactly the resets recovery will make."""
    decision = repair.decide(server)
    if decision is None or decision.action == "skip":
        return "none", state
    return decision.action, "active" if decision.action == "reset-active" else "error"


def _after(state: str, evacuated_from: str, nova_stops: bool, keep_power_state: bool) -> str:
    wanted = WANTED.get(state)
    if not keep_power_state or not wanted:
        return "none"
    return AFTER.get((NOVA_LEAVES[(evacuated_from, nova_stops)], wanted), "none")


def _parse_priority(value: Any) -> tuple[int, str]:
    """(priority, note): a bad value counts as 0 and says so."""
    if value is None:
        return 0, ""
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value).strip()), ""
    except ValueError:
        return 0, f"{PRIORITY_KEY}={value!r} is not an integer: 0 used"


# --- the planner ---------------------------------------------------------------------------------------------------

def _targets(failed_host: str, hosts: dict[str, str], policy: Policy) -> tuple[tuple[str, ...], list[str]]:
    """(target hosts to round-robin over, empty for the scheduler; notes). `hosts`: compute host -> why it cannot
    take instances ("" when it can)."""
    notes: list[str] = []
    if policy.target_host:
        target = policy.target_host
        if target == failed_host:
            raise PlanError(f"target host {target} is the failed host")
        if target not in hosts:
            known = ", ".join(sorted(hosts)) or "none"
            raise PlanError(f"target host {target} is not a known compute host (known: {known})")
        if hosts[target]:
            raise PlanError(f"target host {target} cannot take instances: {hosts[target]}")
        return (target,), notes
    usable: list[str] = []
    for name in dict.fromkeys(policy.reserved_hosts):
        if name == failed_host:
            notes.append(f"reserved host {name} is the failed host: not used")
        elif name not in hosts:
            notes.append(f"reserved host {name} is not a known compute host: not used")
        elif hosts[name]:
            notes.append(f"reserved host {name} is {hosts[name]}: not used")
        else:
            usable.append(name)
    if policy.reserved_hosts and not usable:
        notes.append("no reserved host is usable: nova's scheduler chooses")
    return tuple(usable), notes


def build_plan(failed_host: str, servers: Iterable[nova.Server], *, aggregates: Iterable[nova.Aggregate] = (),
               services: Iterable[nova.Service] = (), policy: Policy | None = None, microversion: str | None = None,
               filter_mode: str | None = None, volumes: Mapping[str, Iterable[str]] | None = None) -> Plan:
    """Plan the evacuation of `failed_host` (nova's service host name). See the module docstring for the rules.

    servers: the servers nova has on the host (plus, optionally, those already evacuated from it).
    aggregates: host aggregates; those the failed host belongs to count. services: the compute services (those of
    other binaries are ignored; the failed host's may be included).
    microversion: the compute API microversion evacuations will use (None: the latest).
    filter_mode: "tagged" or "all" to override the automatic choice (e.g. the first plan's, when resuming).
    volumes: server id -> ids of its volumes, for the servers cinder answered about (others: not known).
    """
    if not failed_host:
        raise PlanError("no failed host named")
    policy = policy or Policy()
    tag = policy.evacuable_tag
    try:
        nova_stops = nova.evacuate_leaves_stopped(microversion)
    except ValueError as e:
        raise PlanError(str(e)) from None
    shown_mv = str(microversion or "latest").strip()
    if filter_mode not in (None, "tagged", "all"):
        raise PlanError(f"filter_mode {filter_mode!r} is not 'tagged' or 'all'")

    servers = list(servers)
    seen: set[str] = set()
    for server in servers:
        if server.id in seen:
            raise PlanError(f"instance {server.id} is listed twice")
        seen.add(server.id)
    state = {s.id: (s.vm_state or "").lower() for s in servers}
    aggs = [a for a in aggregates if failed_host in a.hosts]
    host_states = {s.host: _why_unusable(s) for s in services if s.binary == "nova-compute"}

    targets, notes = _targets(failed_host, host_states, policy)

    tagged_aggregates = [a.name for a in aggs if tag in a.metadata and _is_true(a.metadata[tag])]
    shared = any(_is_true(a.metadata.get(SHARED_STORAGE_KEY)) for a in aggs)
    storage = {s.id: Storage.VOLUME if s.image_id is None else Storage.SHARED if shared else Storage.LOCAL
               for s in servers}
    tagged_by = {s.id: _tagged_by(s, tag) for s in servers}
    if tagged_aggregates:
        for server in servers:
            if tagged_by[server.id] is None:
                tagged_by[server.id] = f"aggregate {tagged_aggregates[0]} {tag}=true"
    if filter_mode is None:
        filter_mode = "tagged" if any(tagged_by.values()) else "all"
        if filter_mode == "all" and servers:
            notes.insert(0, f"no instance or aggregate of {failed_host} is tagged {tag!r}: all are evacuable")

    # 1-2: filter
    chosen: list[tuple[nova.Server, str]] = []
    skipped: list[Skip] = []
    for server in servers:
        facts = _Facts(server=server, state=state[server.id], failed_host=failed_host, tag=tag,
                       skip_error=policy.skip_error, filter_mode=filter_mode, tagged_by=tagged_by[server.id],
                       opted_out=tag in server.metadata and _is_false(server.metadata[tag]),
                       local_lost=storage[server.id] is Storage.LOCAL and not policy.evacuate_local_disk)
        for code, applies, reason in SKIP_RULES:
            if applies(facts):
                skipped.append(Skip(server.id, server.name, code, reason(facts)))
                break
        else:
            why = f"tagged: {facts.tagged_by}" if facts.tagged_by else "evacuable: nothing on the host is tagged"
            chosen.append((server, why))

    # 5: priorities, groups, waves
    own: dict[str, tuple[int, str]] = {i.id: _parse_priority(i.metadata.get(PRIORITY_KEY)) for i, _ in chosen}
    group_of = {i.id: (str(i.metadata.get(GROUP_KEY, "")).strip() or None) for i, _ in chosen}
    group_priority: dict[str, int] = {}
    for inst, _ in chosen:
        group = group_of[inst.id]
        if group is not None:
            group_priority[group] = max(group_priority.get(group, own[inst.id][0]), own[inst.id][0])

    def effective(inst: nova.Server) -> int:
        group = group_of[inst.id]
        return group_priority[group] if group is not None else own[inst.id][0]

    ordered = sorted(chosen, key=lambda c: (-effective(c[0]), c[0].name, c[0].id))
    priorities = sorted({effective(i) for i, _ in chosen}, reverse=True)
    wave_of = {p: n for n, p in enumerate(priorities)}

    steps: list[EvacuationStep] = []
    for n, (inst, why) in enumerate(ordered):
        prio = effective(inst)
        own_prio, prio_note = own[inst.id]
        parts = [why]
        if prio_note:
            parts.append(prio_note)
        if prio != own_prio:
            parts.append(f"priority {prio} from group {group_of[inst.id]} (own {own_prio})")
        prepare, evacuated_from = _prepare(inst, state[inst.id])
        if prepare != "none":
            parts.append(f"{prepare} first (vm_state {state[inst.id]}, task_state {inst.task_state})")
        after = _after(state[inst.id], evacuated_from, nova_stops, policy.keep_power_state)
        if after == "start":
            parts.append(f"start after: it was ACTIVE, nova {shown_mv} leaves it SHUTOFF")
        elif after == "stop":
            parts.append(f"stop after: it was SHUTOFF, nova {shown_mv} leaves it ACTIVE")
        if storage[inst.id] is Storage.LOCAL:
            parts.append("local disk: rebuilt from its image, its data is lost")
        vols = (volumes or {}).get(inst.id)
        steps.append(EvacuationStep(server_id=inst.id, name=inst.name, priority=prio, group=group_of[inst.id],
                                    target=targets[n % len(targets)] if targets else None, after=after,
                                    prepare=prepare, reason="; ".join(parts), wave=wave_of[prio],
                                    project_id=inst.project_id or "", state=state[inst.id], storage=storage[inst.id],
                                    volumes=None if vols is None else tuple(vols)))
    if any(s.storage is Storage.LOCAL for s in steps):
        notes.append(f"warning: {sum(s.storage is Storage.LOCAL for s in steps)} to evacuate have a local disk: "
                     "rebuilt from their images, their data is lost (evacuate_local_disk = yes)")

    waves = tuple(Wave(index=wave_of[p], priority=p, steps=tuple(s for s in steps if s.priority == p))
                  for p in priorities)
    skipped.sort(key=lambda s: (s.name, s.server_id))
    return Plan(host=failed_host, filter_mode=filter_mode, evacuable_tag=tag, microversion=shown_mv,
                steps=tuple(steps), skipped=tuple(skipped), waves=waves, notes=tuple(notes))
