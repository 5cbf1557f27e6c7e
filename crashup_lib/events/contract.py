"""The events contract: the type names, building an event, checking one against events.schema.json.

An event is a plain dict; its contract is events.schema.json beside this file (JSON Schema draft 2020-12)::

    {"specversion": "1", "id": "<uuid4>", "time": "2025-01-31T09:15:02.123Z", "type": "crashup.host.failed",
     "source": "crashup@<hostname>", "subject": "<host, server id or resource id>", "payload": {...}}

make_event(type, subject, payload) builds one; it refuses an unknown type, a missing or unknown payload key, a value
of the wrong kind or outside its enumeration, with one line that names the field. The check is the schema itself:
read once at import and compiled into small closures (the subset of JSON Schema the file uses, listed in _KEYWORDS;
any other keyword stops the import rather than being ignored). So there is no second table to keep in step, and no
jsonschema at run time: it is a test dependency, and the tests hold the two to the same verdicts.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import uuid
from typing import Any, Callable, Mapping

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "events.schema.json")

# The type names, for emitters to use instead of literals; the schema's "type" enum lists the same (a test says so).
HOST_FAILED = "crashup.host.failed"
HOST_RECOVERED = "crashup.host.recovered"
HOST_STORM = "crashup.host.storm"
HOST_FENCING_UNCONFIRMED = "crashup.host.fencing_unconfirmed"
INSTANCE_EVACUATED = "crashup.instance.evacuated"
INSTANCE_EVACUATION_FAILED = "crashup.instance.evacuation_failed"
INSTANCE_REPAIRED = "crashup.instance.repaired"
RESOURCE_STALE_RECOVERED = "crashup.resource.stale_recovered"
RESOURCE_STALE_UNRECOVERABLE = "crashup.resource.stale_unrecoverable"
RESOURCE_ORPHANED = "crashup.resource.orphaned"
INSTANCE_GUEST_FAILED = "crashup.instance.guest_failed"
INSTANCE_GUEST_LEFT_DOWN = "crashup.instance.guest_left_down"
HOST_MAINTENANCE = "crashup.host.maintenance"              # a step of crashup drain/undrain/evacuate on a host
INSTANCE_MAINTENANCE = "crashup.instance.maintenance"      # a server moved, stopped, started or rebuilt by a verb
HOST_ISOLATED = "crashup.host.isolated"                    # a cut-off node's guard took it out (docs/isolation.md)
TYPES: tuple[str, ...] = (HOST_FAILED, HOST_RECOVERED, HOST_STORM, HOST_FENCING_UNCONFIRMED, INSTANCE_EVACUATED,
                          INSTANCE_EVACUATION_FAILED, INSTANCE_REPAIRED, RESOURCE_STALE_RECOVERED,
                          RESOURCE_STALE_UNRECOVERABLE, RESOURCE_ORPHANED, INSTANCE_GUEST_FAILED,
                          INSTANCE_GUEST_LEFT_DOWN, HOST_MAINTENANCE, INSTANCE_MAINTENANCE, HOST_ISOLATED)

# nova's numeric power states (nova/compute/power_state.py) -> the names events carry
POWER_STATES = {0: "nostate", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended"}


class EventError(ValueError):
    """An event that does not follow the contract, phrased as one line naming the field."""


class SchemaError(RuntimeError):
    """events.schema.json uses something the run-time checker does not understand: a bug, found at import."""


def load_schema() -> dict:
    """events.schema.json, the documented contract (a fresh copy each call: the caller may change it)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def rfc3339(when: _dt.datetime | float | None = None) -> str:
    """RFC 3339 UTC with milliseconds: now, a POSIX timestamp, or a datetime (a naive one is taken as UTC)."""
    if when is None:
        moment = _dt.datetime.now(_dt.timezone.utc)
    elif isinstance(when, _dt.datetime):
        moment = when.replace(tzinfo=_dt.timezone.utc) if when.tzinfo is None else when.astimezone(_dt.timezone.utc)
    else:
        moment = _dt.datetime.fromtimestamp(float(when), _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def to_json(event: Mapping[str, Any]) -> bytes:
    """The one serialisation every sink uses: compact, ASCII, one line (so a journal line never breaks)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


# --- the schema, compiled ----------------------------------------------------------------------------------------
#
# A Check is called as check(where, value) and raises EventError naming `where`. As in JSON Schema, a keyword about
# one kind of value (pattern, minimum, required, items...) says nothing about a value of another kind: "type" does.

Check = Callable[[str, Any], None]

_KEYWORDS = {"$ref", "type", "const", "enum", "minLength", "pattern", "minimum", "required", "properties",
             "additionalProperties", "items", "minItems", "allOf", "if", "then"}
# annotations: "format" is one too in draft 2020-12 (each field's pattern says what is asserted)
_ANNOTATIONS = {"$schema", "$id", "$defs", "$comment", "title", "description", "format", "examples", "default"}
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "integer": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),   # 1.0: JSON, but a bug
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "array": ("a list", lambda v: isinstance(v, (list, tuple))),
    "boolean": ("a boolean", lambda v: isinstance(v, bool)),
    "null": ("null", lambda v: v is None),
}
# how a value that misses a pattern is told, by the field's format or by the pattern (else the pattern is shown)
_PATTERN_WORDS = {"date-time": "an RFC 3339 date-time (e.g. 2025-01-31T09:15:02.123Z)",
                  "^[a-z][a-z0-9-]*$": "lower-case words joined by '-' (e.g. 'reset-state')"}


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _plural(word: str, items) -> str:
    return word + ("s" if len(items) > 1 else "")


def _matcher(pattern: str) -> Callable[[str], bool]:
    """A JSON Schema pattern read as ECMA-262 reads it, where Python's reading is wider: \\d and \\w are ASCII
    (both readings must match) and a final $ ends the string (Python's also matches before a last newline)."""
    body = pattern[:-1]
    if pattern.endswith("$") and (len(body) - len(body.rstrip("\\"))) % 2 == 0:
        pattern = body + r"\Z"
    unicode, ascii_ = re.compile(pattern), re.compile(pattern, re.ASCII)
    return lambda text: unicode.search(text) is not None and ascii_.search(text) is not None


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)       # JSON: true is not 1


class _Compiler:
    """Schema nodes -> Checks, each $ref compiled once."""

    def __init__(self, root: Mapping[str, Any]):
        self.root = root
        self.refs: dict[str, Check] = {}

    def ref(self, ref: str) -> Check:
        if ref not in self.refs:
            if not ref.startswith("#/"):
                raise SchemaError(f"$ref {ref!r}: only references inside the schema are supported")
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            self.refs[ref] = self.compile(node)
        return self.refs[ref]

    def compile(self, node: Mapping[str, Any]) -> Check:
        unknown = set(node) - _KEYWORDS - _ANNOTATIONS
        if unknown:
            raise SchemaError(f"keyword{'s' if len(unknown) > 1 else ''} {', '.join(sorted(unknown))} not supported")
        checks: list[Check] = []
        if "$ref" in node:
            checks.append(self.ref(node["$ref"]))
        if "type" in node:
            checks.append(_type(node["type"]))
        if "const" in node or "enum" in node:
            checks.append(_enum([node["const"]] if "const" in node else node["enum"]))
        if "minLength" in node or "pattern" in node:
            checks.append(_string(node))
        if "minimum" in node:
            checks.append(_minimum(node["minimum"]))
        if {"required", "properties", "additionalProperties"} & set(node):
            checks.append(self.object(node))
        if "items" in node or "minItems" in node:
            checks.append(self.array(node))
        checks += [self.compile(sub) for sub in node.get("allOf", ())]
        if "if" in node:
            checks.append(self.conditional(node))
        if len(checks) == 1:
            return checks[0]

        def check_all(where: str, value: Any) -> None:
            for check in checks:
                check(where, value)
        return check_all

    def object(self, node: Mapping[str, Any]) -> Check:
        required = list(node.get("required", ()))
        properties = {key: self.compile(sub) for key, sub in node.get("properties", {}).items()}
        closed = node.get("additionalProperties", True)
        if closed not in (True, False):
            raise SchemaError("additionalProperties: only true or false are supported")

        def check_object(where: str, value: Any) -> None:
            if not isinstance(value, dict):
                return
            missing = [key for key in required if key not in value]
            if missing:
                raise EventError(f"{where}: missing required {_plural('key', missing)} {', '.join(map(repr, missing))}")
            if closed is False:
                extra = sorted(key for key in value if key not in properties)
                if extra:
                    raise EventError(f"{where}: unknown {_plural('key', extra)} {', '.join(map(repr, extra))} "
                                     f"(allowed: {', '.join(properties)})")
            for key, check in properties.items():
                if key in value:
                    check(f"{where}.{key}", value[key])
        return check_object

    def array(self, node: Mapping[str, Any]) -> Check:
        least = node.get("minItems", 0)
        item = self.compile(node["items"]) if "items" in node else None

        def check_array(where: str, value: Any) -> None:
            if not isinstance(value, (list, tuple)):
                return
            if len(value) < least:
                raise EventError(f"{where} must have at least {least} item{'s' if least > 1 else ''}")
            if item is not None:
                for i, element in enumerate(value):
                    item(f"{where}[{i}]", element)
        return check_array

    def conditional(self, node: Mapping[str, Any]) -> Check:
        condition = self.compile(node["if"])
        then = self.compile(node["then"]) if "then" in node else None

        def check_conditional(where: str, value: Any) -> None:
            try:
                condition(where, value)
            except EventError:
                return
            if then is not None:
                then(where, value)
        return check_conditional


def _type(names: str | list[str]) -> Check:
    kinds = [_KINDS[name] for name in ([names] if isinstance(names, str) else names)]
    expected = " or ".join(words for words, _ in kinds)

    def check_type(where: str, value: Any) -> None:
        if not any(test(value) for _, test in kinds):
            raise EventError(f"{where} must be {expected}, not {_kind(value)}")
    return check_type


def _enum(allowed: list[Any]) -> Check:
    def check_enum(where: str, value: Any) -> None:
        if not any(_same(value, choice) for choice in allowed):
            raise EventError(f"{where} must be one of {', '.join(map(repr, allowed))}, not {value!r}")
    return check_enum


def _string(node: Mapping[str, Any]) -> Check:
    least = node.get("minLength", 0)
    pattern = node.get("pattern")
    matches = _matcher(pattern) if pattern is not None else None
    words = _PATTERN_WORDS.get(node.get("format", ""), _PATTERN_WORDS.get(pattern, f"a string matching {pattern}"))

    def check_string(where: str, value: Any) -> None:
        if not isinstance(value, str):
            return
        if len(value) < least:
            raise EventError(f"{where} must not be empty" if least == 1 else
                             f"{where} must have at least {least} characters")
        if matches is not None and not matches(value):
            raise EventError(f"{where} must be {words}, not {value!r}")
    return check_string


def _minimum(least: float) -> Check:
    def check_minimum(where: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= least:   # NaN too
            raise EventError(f"{where} must be >= {least}, not {value!r}")
    return check_minimum


def _payload_checks(schema: Mapping[str, Any], compiler: _Compiler) -> dict[str, Check]:
    """type -> its payload's check, from the schema's dispatch: allOf [{if type is T, then payload is $ref}]."""
    found = {}
    for branch in schema.get("allOf", ()):
        type_ = branch["if"]["properties"]["type"]["const"]
        found[type_] = compiler.compile(branch["then"]["properties"]["payload"])
    return found


_SCHEMA = load_schema()
_COMPILER = _Compiler(_SCHEMA)
_EVENT = _COMPILER.compile(_SCHEMA)
_PAYLOADS = _payload_checks(_SCHEMA, _COMPILER)
SPECVERSION: str = _SCHEMA["properties"]["specversion"]["const"]
#: is this the envelope's time as the schema writes it (what the journal reader takes)?
is_event_time = _matcher(_SCHEMA["properties"]["time"]["pattern"])


# --- building and checking -------------------------------------------------------------------------------------

def _unknown(type_: Any) -> EventError:
    return EventError(f"unknown event type {type_!r}; known types: {', '.join(TYPES)}")


def check_payload(type: str, payload: Mapping[str, Any]) -> None:  # noqa: A002 - the contract's own word
    """Raise EventError unless type is known and payload has exactly its keys, each of the right kind."""
    if type not in _PAYLOADS:
        raise _unknown(type)
    _PAYLOADS[type](f"{type} payload", payload)


def check_event(event: Any) -> None:
    """Raise EventError unless event, envelope and payload, follows events.schema.json."""
    _EVENT("event", event)


def _normalize(type_: str, payload: dict) -> dict:
    """The few conversions that spare every caller the same lines: times and nova's numeric power states."""
    fenced_at = payload.get("fenced_at")
    if type_ == HOST_FAILED and isinstance(fenced_at, (_dt.datetime, int, float)) and not isinstance(fenced_at, bool):
        payload["fenced_at"] = rfc3339(fenced_at)
    power = payload.get("power_state")
    if type_ == INSTANCE_EVACUATED and isinstance(power, int) and not isinstance(power, bool):
        payload["power_state"] = POWER_STATES.get(power, f"unknown-{power}")
    return payload


def make_event(type: str, subject: str, payload: Mapping[str, Any]) -> dict:  # noqa: A002
    """A new event of this type about subject (a host, server or resource id). Raises EventError, naming the field."""
    if type not in _PAYLOADS:
        raise _unknown(type)
    if not isinstance(subject, str) or not subject:
        raise EventError(f"{type}: subject must be a non-empty string (host, server or resource id), "
                         f"not {subject!r}")
    if not isinstance(payload, Mapping):
        raise EventError(f"{type} payload must be an object, not {_kind(payload)}")
    payload = _normalize(type, dict(payload))
    _PAYLOADS[type](f"{type} payload", payload)
    try:                                            # a copy the caller cannot change afterwards, and JSON-clean
        payload = json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise EventError(f"{type} payload is not JSON-serialisable: {e}") from None
    return {"specversion": SPECVERSION, "id": str(uuid.uuid4()), "time": rfc3339(), "type": type,
            "source": f"crashup@{socket.gethostname()}", "subject": subject, "payload": payload}
