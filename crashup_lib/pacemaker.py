"""The cluster as crashup sees it: recovery requests in the CIB, fencing history, compute nodes.

Recovery requests are persistent node attributes (`crm_attribute --lifetime forever`): a remote node's transient
attributes are wiped whenever its connection stops (notes/pacemaker-lab.md), persistent ones survive that, a
controller failover and a full cluster restart. One request per node, a small JSON document in one attribute.

Everything here shells out to Pacemaker's own tools with a bound on time and parses their XML with the standard
library (this module is imported by fence agents: no lxml). Errors are PacemakerError with one line.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import subprocess
import time
import xml.etree.ElementTree as ET

REQUEST_ATTRIBUTE = "crashup-recovery"
#: the request's state alone, as a plain word: Pacemaker rules cannot read JSON, and the nova-compute clone's
#: location rule keeps it off a node whose recovery is open (pending or recovering) without any start blocking
STATE_ATTRIBUTE = "crashup-recovery-state"
#: states of a recovery request: pending (recorded at fencing), recovering (the daemon works on it),
#: done (auto mode finished), released (an operator or consumer released it, notify mode)
STATES = ("pending", "recovering", "done", "released")
OPEN_STATES = ("pending", "recovering")
MODES = ("auto", "notify")


class Hold(enum.Enum):
    """Why an open request waits, kept apart from its note (the note is for people; control flow reads this)."""
    NONE = "none"                                  # nothing holds it: the pipeline goes on
    FENCING_UNCONFIRMED = "fencing_unconfirmed"    # no confirmed fencing past the grace (and an event said so)
    NOTIFIED = "notified"                          # notify mode: handed to the operator, waiting for release
    STORM = "storm"                                # the storm guard stopped automatic evacuation
    WAITING_FOR_COMPUTE = "waiting_for_compute"    # no other nova-compute up to take the instances yet


#: The notes the version before `hold` existed wrote for each hold, exactly (frozen: never reworded, whatever the
#: pipeline says today).
_LEGACY_NOTES = {"notified: waiting for release": Hold.NOTIFIED,
                 "storm guard: automatic evacuation stopped": Hold.STORM,
                 "waiting for another nova-compute to be up to take the instances": Hold.WAITING_FOR_COMPUTE}


def _legacy_hold(note: str) -> Hold:
    """The hold of a request without a "hold" key: one written by the previous version (a daemon or a fence agent
    not yet upgraded), whose note was its hold. Derived here, once, as it is read; nothing else reads a note."""
    if note.startswith("fencing not confirmed"):
        return Hold.FENCING_UNCONFIRMED
    return _LEGACY_NOTES.get(note, Hold.NONE)


class PacemakerError(RuntimeError):
    """A Pacemaker tool failed or answered something unreadable; the message is one line."""


class NoQuorum(PacemakerError):
    """This node's partition has no quorum: it must not write a request, fence, or evacuate (the majority does)."""


@dataclasses.dataclass(frozen=True)
class RecoveryRequest:
    node: str                      # Pacemaker node name
    state: str
    mode: str
    fenced_at: float               # when fencing recorded the request (epoch seconds)
    updated_at: float
    host: str = ""                 # the nova service host, once resolved
    note: str = ""                 # the last thing worth telling an operator
    filter_mode: str = ""          # the first plan's ("tagged"/"all"): a resumed plan filters the same way
    hold: Hold = Hold.NONE         # why it waits; cleared by every move (moved_to)
    target: str = ""               # where its instances go (`crashup evacuate --to`): the plan's target_host
    forced: bool = False           # the operator let it past the storm guard (`crashup recover --force`)

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    def to_value(self) -> str:
        return json.dumps({"state": self.state, "mode": self.mode, "fenced_at": round(self.fenced_at, 3),
                           "updated_at": round(self.updated_at, 3), "host": self.host, "note": self.note,
                           "filter_mode": self.filter_mode, "hold": self.hold.value,
                           **({"target": self.target} if self.target else {}),
                           **({"forced": True} if self.forced else {})},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_value(cls, node: str, value: str) -> "RecoveryRequest":
        try:
            data = json.loads(value)
            request = cls(node=node, state=data["state"], mode=data["mode"], fenced_at=float(data["fenced_at"]),
                          updated_at=float(data.get("updated_at", data["fenced_at"])), host=data.get("host", ""),
                          note=data.get("note", ""), filter_mode=data.get("filter_mode", ""),
                          hold=Hold(data["hold"]) if "hold" in data else _legacy_hold(data.get("note", "")),
                          target=str(data.get("target", "")), forced=data.get("forced") is True)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PacemakerError(f"unreadable recovery request of {node}: {value[:80]!r} ({e})") from None
        if request.state not in STATES or request.mode not in MODES:
            raise PacemakerError(f"unreadable recovery request of {node}: state {request.state!r}, "
                                 f"mode {request.mode!r}")
        return request

    def moved_to(self, state: str, note: str = "", hold: Hold = Hold.NONE, **changes) -> "RecoveryRequest":
        if state not in STATES:
            raise ValueError(state)
        return dataclasses.replace(self, state=state, note=note, hold=hold, updated_at=time.time(), **changes)


def _run(argv: list[str], timeout: float = 15.0, accept=lambda done: done.returncode == 0) -> str:
    """The tool's output; PacemakerError (one line) when it is missing, hangs, or its answer is not `accept`ed."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise PacemakerError(f"{argv[0]} not found: is Pacemaker installed?") from None
    except subprocess.TimeoutExpired:
        raise PacemakerError(f"Timed out: {' '.join(argv[:3])} did not answer within {timeout:g}s") from None
    if not accept(done):
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise PacemakerError(f"{' '.join(argv[:3])} failed (exit {done.returncode}): "
                             f"{detail[-1] if detail else 'no output'}")
    return done.stdout


def _xml(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        raise PacemakerError(f"{what}: unreadable XML ({e})") from None


# --- recovery requests -----------------------------------------------------------------------------------------------

_NO_MATCH = 105                    # cibadmin's exit code when an XPath matches nothing (ENXIO)


def nodes_carrying(names: tuple[str, ...]) -> str:
    """The XPath of the CIB's nodes that carry one of the persistent attributes `names` (crashup's own: plain)."""
    wanted = " or ".join(f"@name='{n}'" for n in names)
    return f"/cib/configuration/nodes/node[instance_attributes/nvpair[{wanted}]]"


#: what always matches beside the nodes: a section every CIB has (the schema requires it), a few properties long; so
#: exit 0 is the only answer from a readable CIB and the idle watch tick is one cibadmin run, not "105, then ask
#: again whether the CIB could be read at all" (105 also means a CIB file that cannot be opened)
_FILLER = "/cib/configuration/crm_config"


def attributes_query(names: tuple[str, ...]) -> list[str]:
    """The one cibadmin run that reads the nodes carrying `names` (the daemon's watch tick; bench/scale.py times it)."""
    return ["cibadmin", "--query", "--xpath", f"{nodes_carrying(names)} | {_FILLER}"]


def _attributes(names: tuple[str, ...], timeout: float) -> dict[str, dict[str, str]]:
    """Persistent node attributes `names` (crashup's own: plain names, no quotes), {node: {name: value}}, from one
    query of only the nodes that carry one: the CIB manager filters (in C), so what this process reads and parses
    every watch tick is the size of the open work, not of the fleet (1,000 nodes: 208 KB for the whole nodes
    section). The filler always matches: several matches come inside <xpath-query>, the filler alone bare."""
    text = _run(attributes_query(names), timeout)
    root = _xml(text, "cibadmin --query --xpath")
    found: dict[str, dict[str, str]] = {}
    for node in root.iter("node"):
        name = node.get("uname") or node.get("id")
        for nvpair in node.iter("nvpair"):
            if nvpair.get("name") in names:
                found.setdefault(name, {})[nvpair.get("name")] = nvpair.get("value", "")
    return found


def survey(timeout: float = 15.0) -> tuple[dict[str, RecoveryRequest], list[RecoveryRequest]]:
    """Every node's recovery request, and those whose state mirror lags (a writer stopped between its two
    writes): the daemon puts those right."""
    found, lagging = {}, []
    for name, attrs in _attributes((REQUEST_ATTRIBUTE, STATE_ATTRIBUTE), timeout).items():
        if REQUEST_ATTRIBUTE in attrs:
            req = found[name] = RecoveryRequest.from_value(name, attrs[REQUEST_ATTRIBUTE])
            if attrs.get(STATE_ATTRIBUTE) != req.state:
                lagging.append(req)
    return found, lagging


def requests(timeout: float = 15.0) -> dict[str, RecoveryRequest]:
    """Every node's recovery request, from the CIB's nodes section (persistent attributes)."""
    return survey(timeout)[0]


def request(node: str, timeout: float = 15.0) -> RecoveryRequest | None:
    return requests(timeout).get(node)


def quorate(timeout: float = 15.0) -> bool:
    """Whether this node's partition has quorum (`crm_node --quorum` prints 1 or 0; it exits non-zero with 0)."""
    answer = _run(["crm_node", "--quorum"], timeout, accept=lambda done: done.stdout.strip() in ("0", "1"))
    return answer.strip() == "1"


def require_quorum(what: str, timeout: float = 15.0) -> None:
    """NoQuorum unless this partition is quorate: a controller cut off from the others acts on nothing (its CIB
    writes could even win when it joins again: the join keeps the CIB of the highest version)."""
    if not quorate(timeout):
        raise NoQuorum(f"no quorum: not {what} from a partition cut off from the majority")


def write_request(req: RecoveryRequest, timeout: float = 15.0) -> None:
    """The request, and its state mirror, ordered so that a stop between the two writes errs on the safe side:
    an opening request holds the node (mirror) first, a closing one is closed (request) before it lets go.
    Never from a partition without quorum (NoQuorum)."""
    require_quorum(f"writing the recovery request of {req.node}", timeout)
    if req.open:
        write_state_mirror(req, timeout)
    _run(["crm_attribute", "--type", "nodes", "--node", req.node, "--name", REQUEST_ATTRIBUTE,
          "--update", req.to_value(), "--lifetime", "forever"], timeout)
    if not req.open:
        write_state_mirror(req, timeout)


def write_state_mirror(req: RecoveryRequest, timeout: float = 15.0) -> None:
    _run(["crm_attribute", "--type", "nodes", "--node", req.node, "--name", STATE_ATTRIBUTE,
          "--update", req.state, "--lifetime", "forever"], timeout)


def record_failure(node: str, mode: str, timeout: float = 15.0) -> RecoveryRequest:
    """What fencing records: a new pending request, unless one is already being worked on (then it stays, with
    the new fencing time, and the daemon's idempotent pipeline carries on: never two recoveries of one failure)."""
    now = time.time()
    current = request(node, timeout)
    if current is not None and current.open:
        # a new fencing lifts any hold: the pipeline looks afresh (what a fence agent of the previous version, which
        # knows no hold, does too when it writes this over a request mid-upgrade)
        req = dataclasses.replace(current, fenced_at=now, updated_at=now, hold=Hold.NONE,
                                  note=f"fenced again while {current.state}")
    else:
        req = RecoveryRequest(node=node, state="pending", mode=mode, fenced_at=now, updated_at=now,
                              note="recorded by fencing")
    write_request(req, timeout)
    return req


# --- fencing history ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FenceEvent:
    target: str
    action: str                    # off, reboot, on
    state: str                     # success, failed, pending
    completed: float | None        # epoch seconds (Pacemaker keeps whole seconds)
    delegate: str | None


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%SZ", "%Y-%m-%d %H:%M:%S%z", "%a %b %d %H:%M:%S %Y"):
        try:
            parsed = datetime.datetime.strptime(text, fmt)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            return parsed.timestamp()
        except ValueError:
            continue
    return None


def fence_history(node: str = "*", timeout: float = 15.0) -> list[FenceEvent]:
    root = _xml(_run(["stonith_admin", "--history", node, "--verbose", "--output-as=xml"], timeout),
                "stonith_admin --history")
    events = []
    for el in root.iter("fence_event"):
        events.append(FenceEvent(target=el.get("target", ""), action=el.get("action", ""),
                                 state=el.get("status", el.get("state", "")),
                                 completed=_epoch(el.get("completed")), delegate=el.get("delegate")))
    return events


def fenced_since(node: str, since: float, timeout: float = 15.0) -> FenceEvent | None:
    """The successful power-removing fencing (off or reboot) of node completed at or after `since`, if any.
    Pacemaker records whole seconds, so `since` is compared rounded down."""
    for event in fence_history(node, timeout):
        if (event.target == node and event.state == "success" and event.action in ("off", "reboot")
                and event.completed is not None and event.completed >= int(since)):
            return event
    return None


def fencing_in_flight(node: str, timeout: float = 15.0) -> bool:
    return any(e.target == node and e.state == "pending" for e in fence_history(node, timeout))


SETTLE_WAIT = 30.0                 # at most this long for the DC's transition to finish before fencing from outside


def transition_running(timeout: float = 10.0) -> bool | None:
    """Whether the DC is carrying out a transition (not S_IDLE); None when crmadmin cannot tell (no DC yet)."""
    try:
        dc = _run(["crmadmin", "--quiet", "--dc_lookup"], timeout).strip()
        return _run(["crmadmin", "--quiet", "--status", dc], timeout).strip() != "S_IDLE" if dc else None
    except PacemakerError:
        return None


def wait_settled(limit: float = SETTLE_WAIT, *, running=transition_running, sleep=time.sleep,
                 clock=time.monotonic) -> bool:
    """Wait until the DC runs no transition, at most `limit` seconds; True if it settled.

    Before fencing from outside the scheduler: a fencing that cuts a remote node's connection under an action in
    flight on it (after a cluster restart: the probes of that node) leaves Pacemaker 2.1 waiting for that action's
    timeout plus cluster-delay (80 s in the lab) before it schedules anything else, such as the nova-computes that
    must be up to take the node's instances."""
    end = clock() + limit
    while running() is not False:
        if clock() >= end:
            return False
        sleep(0.5)
    return True


def request_fencing(node: str, timeout: float = 120.0) -> None:
    """Ask Pacemaker to fence `node` (reboot, through its fencing levels). Raises PacemakerError if it fails.
    Callers let the DC's transition finish first (wait_settled).

    Then the remote node's connection resource is refreshed. Fencing from outside the scheduler (this) leaves
    Pacemaker 2.1 believing a remote connection that the fencing broke is still up once it has cleared the
    connection's failure for its reconnect_interval: it schedules probes behind it, they fail "Not connected to
    remote executor", the stops that follow fail alike and get the node fenced, again and again (seen in the lab
    after a full cluster restart; ClusterLabs/pacemaker#1806 fixed a sibling). A refresh makes the scheduler probe
    the connection itself first. Never from a partition without quorum (NoQuorum)."""
    require_quorum(f"fencing {node}")
    _run(["stonith_admin", "--reboot", node, "--timeout", str(int(timeout))], timeout + 15)
    try:
        _run(["crm_resource", "--refresh", "--resource", node], 30)
    except PacemakerError:
        pass                       # a cluster node (no connection resource), or a refresh that could not run


# --- nodes ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    type: str                      # member | remote
    online: bool
    unclean: bool


def nodes(timeout: float = 15.0) -> list[Node]:
    root = _xml(_run(["crm_mon", "--one-shot", "--output-as=xml"], timeout), "crm_mon")
    section = root.find("nodes")
    return [Node(name=el.get("name", ""), type=el.get("type", ""), online=el.get("online") == "true",
                 unclean=el.get("unclean") == "true") for el in (section if section is not None else [])]


# --- the cluster as one object ---------------------------------------------------------------------------------------

# --- clone instances and node attributes (rejuvenation) ------------------------------------------------------------

def node_attribute(name: str, timeout: float = 15.0) -> dict[str, str]:
    """{node: value} of the persistent node attribute `name`."""
    return {node: attrs[name] for node, attrs in _attributes((name,), timeout).items()}


def set_node_attribute(node: str, name: str, value: str | None, timeout: float = 15.0) -> None:
    """Write (None: delete) a persistent node attribute."""
    change = ["--delete"] if value is None else ["--update", value]
    _run(["crm_attribute", "--type", "nodes", "--node", node, "--name", name, *change, "--lifetime", "forever"],
         timeout)


def running_on(resource: str, timeout: float = 15.0) -> set[str]:
    """The nodes where `resource` (a clone) has an active instance (crm_resource --locate); none when the resource is
    not configured (exit 105: its XML then names no node)."""
    root = _xml(_run(["crm_resource", "--locate", "--resource", resource, "--output-as=xml"], timeout,
                     accept=lambda done: done.returncode in (0, _NO_MATCH)), "crm_resource --locate")
    return {el.text.strip() for el in root.iter("node") if el.text and el.text.strip()}


def restart(resource: str, node: str, wait: float) -> None:
    """Restart the clone's instance on `node` (a ban, the stop, the ban cleared, the start); returns once the start
    is scheduled, not done (Pacemaker 2.1.5)."""
    _run(["crm_resource", "--restart", "--resource", resource, "--node", node, "--timeout", f"{int(wait)}s"],
         2 * wait + 30)


def clear_ban(resource: str, node: str, timeout: float = 30.0) -> None:
    """The ban a restart left (none: nothing to do; 105 is "no such object")."""
    _run(["crm_resource", "--clear", "--resource", resource, "--node", node], timeout,
         accept=lambda done: done.returncode in (0, _NO_MATCH))


class Cluster:
    """What the recovery daemon and pipeline ask of the cluster, as one object they are given (as they are given
    nova): this module's functions with their default time bounds. Tests give them tests/fakes.py's FakeCluster."""

    def survey(self) -> tuple[dict[str, RecoveryRequest], list[RecoveryRequest]]:
        return survey()

    def quorate(self) -> bool:
        return quorate()

    def requests(self) -> dict[str, RecoveryRequest]:
        return requests()

    def request(self, node: str) -> RecoveryRequest | None:
        return request(node)

    def write_request(self, req: RecoveryRequest) -> None:
        write_request(req)

    def write_state_mirror(self, req: RecoveryRequest) -> None:
        write_state_mirror(req)

    def nodes(self) -> list[Node]:
        return nodes()

    def fenced_since(self, node: str, since: float) -> FenceEvent | None:
        return fenced_since(node, since)

    def fencing_in_flight(self, node: str) -> bool:
        return fencing_in_flight(node)

    def wait_settled(self, limit: float = SETTLE_WAIT) -> bool:
        return wait_settled(limit)

    def request_fencing(self, node: str) -> None:
        request_fencing(node)

    def node_attribute(self, name: str) -> dict[str, str]:
        return node_attribute(name)

    def set_node_attribute(self, node: str, name: str, value: str | None) -> None:
        set_node_attribute(node, name, value)

    def running_on(self, resource: str) -> set[str]:
        return running_on(resource)

    def restart(self, resource: str, node: str, wait: float) -> None:
        restart(resource, node, wait)

    def clear_ban(self, resource: str, node: str) -> None:
        clear_ban(resource, node)
