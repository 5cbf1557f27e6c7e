"""crashup events: the envelope and payloads against events.schema.json, and the journal, webhook and command sinks."""
import datetime
import hashlib
import hmac
import http.server
import json
import logging
import multiprocessing
import os
import shlex
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crashup_lib import events
from crashup_lib.events import contract, journal

try:
    import jsonschema
except ImportError:                                   # pragma: no cover - `pip install -e .[test]` brings it
    jsonschema = None

SECRET = "S3cr3t-Hmac-Key-0xC0FFEE"
DELETE = object()
UUID1, UUID2 = "8a7b7a7e-0d6e-4a53-9a3b-1f0c1e2d3c4b", "0f1e2d3c-4b5a-4697-8877-665544332211"

SAMPLES = {
    "crashup.host.failed": ("compute1", {
        "host": "compute1", "node": "compute1.example.org", "fenced_at": "2025-01-31T09:15:00.042Z", "mode": "notify",
        "instances": [{"id": UUID1, "name": "web-1", "status": "ACTIVE", "task_state": None, "project_id": "p1"},
                      {"id": UUID2, "name": "", "status": "ACTIVE", "task_state": "rebooting", "project_id": "p2"}],
        "repairs": [{"id": UUID2, "from_task_state": "rebooting", "action": "reset-active"},
                    {"id": UUID1, "from_task_state": None, "action": "skip"}]}),
    "crashup.host.recovered": ("compute1", {
        "host": "compute1", "node": "compute1.example.org", "mode": "auto", "evacuated": 7, "failed": 1, "skipped": 0,
        "duration_s": 41.25}),
    "crashup.host.storm": ("compute3", {
        "hosts": ["compute1", "compute2", "compute3"], "window_s": 300, "limit": 2, "action": "evacuation stopped"}),
    "crashup.host.fencing_unconfirmed": ("compute1", {
        "host": "compute1", "node": "compute1.example.org", "reason": "no successful fencing of the node since 09:14"}),
    "crashup.instance.evacuated": (UUID1, {
        "id": UUID1, "name": "web-1", "source_host": "compute1", "target_host": "compute2", "duration_s": 12.5,
        "power_state": "running"}),
    "crashup.instance.evacuation_failed": (UUID2, {
        "id": UUID2, "name": "db-1", "source_host": "compute1", "reason": "No valid host was found.", "attempts": 2}),
    "crashup.instance.repaired": (UUID2, {
        "id": UUID2, "from_task_state": "rebooting", "from_vm_state": "active", "action": "reset-error",
        "host": "compute1"}),
    "crashup.resource.stale_recovered": ("vol-1", {
        "service": "cinder", "resource_type": "volume", "id": "vol-1", "state": "attaching", "action": "reset-state",
        "reason": "attaching for 2h, no attachment on the backend"}),
    "crashup.resource.stale_unrecoverable": ("img-1", {
        "service": "glance", "resource_type": "image", "id": "img-1", "state": "saving", "action": "none",
        "reason": "saving for 3h, the store has a partial object"}),
    "crashup.resource.orphaned": ("port-1", {
        "service": "neutron", "resource_type": "port", "id": "port-1", "state": "DOWN", "action": "delete",
        "reason": "bound to server that no longer exists"}),
    "crashup.instance.guest_failed": (UUID1, {
        "id": UUID1, "name": "web-1", "host": "compute1", "kind": "panic", "detail": "crashed (guest panicked)",
        "policy": "reboot", "policy_source": "flavor", "action": "reboot", "attempt": 1, "seen": "event",
        "reported_at": "2025-01-31T09:15:02.123Z"}),
    "crashup.instance.guest_left_down": (UUID1, {
        "id": UUID1, "name": "web-1", "host": "compute1", "kind": "killed",
        "detail": "stopped: qemu failed (killed or died)", "reboots": 3, "window_s": 3600}),
    "crashup.host.maintenance": ("compute1", {
        "host": "compute1", "node": "compute1", "verb": "drain", "step": "disabled", "servers": 3,
        "detail": "policy cold-migrate"}),
    "crashup.instance.maintenance": (UUID1, {
        "id": UUID1, "name": "web-1", "verb": "drain", "action": "live-migrate", "source_host": "compute1",
        "target_host": "compute2", "outcome": "done", "reason": ""}),
    "crashup.host.isolated": ("compute1", {
        "host": "compute1", "node": "compute1", "lost_for": 37.5, "reason": "crm_node did not finish within 5s",
        "policy": "destroy", "nova_compute": "stopped", "guests": [UUID1], "failed": [{"id": UUID2, "reason": "x"}],
        "libvirt": "", "complete": False}),
}


@pytest.fixture(scope="module")
def validator():
    if jsonschema is None:
        pytest.skip("jsonschema is not installed (pip install -c constraints.txt -e .[test])")
    schema = events.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def check(event):
    """Every event a test sees is checked against the schema when jsonschema is there."""
    if jsonschema is not None:
        jsonschema.Draft202012Validator(events.load_schema()).validate(event)
    return event


def sample(type_="crashup.host.failed"):
    subject, payload = SAMPLES[type_]
    return events.make_event(type_, subject, payload)


@pytest.fixture
def logs(caplog, monkeypatch):
    """caplog that sees crashup's records even after log.setup() made the 'crashup' logger stop propagating."""
    monkeypatch.setattr(logging.getLogger("crashup"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="crashup")
    return caplog


# --- envelope, payloads, schema -----------------------------------------------------------------------------------

def test_samples_cover_every_type():
    assert set(SAMPLES) == set(events.TYPES)


@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_every_type_builds_and_validates(type_, validator):
    event = sample(type_)
    validator.validate(event)
    assert list(event) == ["specversion", "id", "time", "type", "source", "subject", "payload"]
    assert event["specversion"] == "1" and event["type"] == type_
    assert event["source"] == f"crashup@{socket.gethostname()}"
    assert event["subject"] == SAMPLES[type_][0] and event["payload"] == SAMPLES[type_][1]
    assert len(event["time"]) == 24 and event["time"].endswith("Z")
    when = datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 5
    line = events.to_json(event)
    assert b"\n" not in line and json.loads(line) == event
    validator.validate(json.loads(line))


def test_ids_are_unique_uuid4():
    ids = {sample()["id"] for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 36 and i[14] == "4" for i in ids)


def test_the_type_names_are_the_schemas_and_every_field_is_documented():
    schema = events.load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"]["enum"] == list(events.TYPES)
    assert [b["if"]["properties"]["type"]["const"] for b in schema["allOf"]] == list(events.TYPES)
    assert events.SPECVERSION == schema["properties"]["specversion"]["const"] == "1"

    def documented(where, node):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}.{key}: no description in the schema"
            documented(f"{where}.{key}", sub)
        if isinstance(node.get("items"), dict):
            documented(f"{where}[]", node["items"])
    documented("event", schema)
    for name, definition in schema["$defs"].items():
        assert definition.get("description"), name
        documented(name, definition)


# --- the run-time check is the schema: the same verdicts as jsonschema --------------------------------------------

def _changed(event, path, value):
    """A deep copy of event with the value at path (keys and list indexes) set to value, or deleted (DELETE)."""
    event = json.loads(json.dumps(event))
    *parents, last = path
    node = event
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return event


def _at(event, path):
    for key in path:
        event = event[key]
    return event


def _runtime_says(event) -> bool:
    try:
        events.check_event(event)
    except events.EventError as e:
        assert "\n" not in str(e) and str(e).startswith("event")
        return False
    return True


@pytest.fixture(scope="module")
def strict():
    """jsonschema, with the one reading the run-time check makes stricter on purpose: an integer is not 1.0."""
    if jsonschema is None:
        pytest.skip("jsonschema is not installed (pip install -c constraints.txt -e .[test])")
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)
    return cls(events.load_schema())


AGREE = [                                            # (type, path in the event, value): each one invalid
    ("crashup.host.failed", ("specversion",), "2"),
    ("crashup.host.failed", ("id",), "not-a-uuid"),
    ("crashup.host.failed", ("id",), UUID1.upper()),
    ("crashup.host.failed", ("time",), "2025-01-31T09:15:02Z"),
    ("crashup.host.failed", ("time",), "2025-01-31T09:15:02.123+00:00"),
    ("crashup.host.failed", ("type",), "crashup.host.exploded"),
    ("crashup.host.failed", ("type",), "crashup.host.recovered"),          # a type with another's payload
    ("crashup.host.failed", ("source",), "crashup@two words"),
    ("crashup.host.failed", ("source",), "nova@c1"),
    ("crashup.host.failed", ("subject",), ""),
    ("crashup.host.failed", ("extra",), 1),
    ("crashup.host.failed", ("payload",), DELETE),
    ("crashup.host.failed", ("payload",), []),
    ("crashup.host.failed", ("payload", "fenced_at"), "2025-01-31 09:15:00Z"),
    ("crashup.host.failed", ("payload", "fenced_at"), 1738314900),
    ("crashup.host.failed", ("payload", "mode"), None),
    ("crashup.host.failed", ("payload", "instances"), {}),
    ("crashup.host.failed", ("payload", "instances", 0, "task_state"), 0),
    ("crashup.host.failed", ("payload", "instances", 1, "status"), ""),
    ("crashup.host.failed", ("payload", "instances", 0, "spare"), "x"),
    ("crashup.host.failed", ("payload", "repairs", 0, "action"), "reset_active"),
    ("crashup.host.failed", ("payload", "repairs", 0, "action"), "-reset"),
    ("crashup.host.failed", ("payload", "repairs", 1, "from_task_state"), DELETE),
    ("crashup.host.recovered", ("payload", "duration_s"), -0.5),
    ("crashup.host.recovered", ("payload", "evacuated"), 1.5),
    ("crashup.host.recovered", ("payload", "failed"), False),
    ("crashup.host.storm", ("payload", "hosts"), []),
    ("crashup.host.storm", ("payload", "hosts", 0), ""),
    ("crashup.host.storm", ("payload", "hosts", 1), None),
    ("crashup.host.storm", ("payload", "limit"), "2"),
    ("crashup.host.storm", ("payload", "action"), "Evacuation stopped"),
    ("crashup.host.fencing_unconfirmed", ("payload", "node"), ""),
    ("crashup.instance.evacuated", ("payload", "power_state"), None),
    ("crashup.instance.evacuation_failed", ("payload", "attempts"), -1),
    ("crashup.instance.repaired", ("payload", "from_vm_state"), DELETE),
    ("crashup.resource.orphaned", ("payload", "service"), "keystone"),
    ("crashup.resource.stale_recovered", ("payload", "resource_type"), ""),
    ("crashup.resource.stale_unrecoverable", ("payload", "action"), "Reset"),
]


@pytest.mark.parametrize("type_, path, value", AGREE)
def test_the_runtime_check_and_the_schema_refuse_the_same_events(type_, path, value, strict, validator):
    good = sample(type_)
    assert _runtime_says(good) and strict.is_valid(good) and validator.is_valid(good)
    bad = _changed(good, path, value)
    assert not strict.is_valid(bad) and not validator.is_valid(bad)
    assert not _runtime_says(bad)
    if path[0] == "payload" and len(path) > 1 and not strict.is_valid(bad):
        with pytest.raises(events.EventError):
            events.check_payload(type_, bad["payload"])


JSON_LEAVES = (st.none() | st.booleans() | st.integers(-2, 2**40)
               | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
               | st.text(st.characters(max_codepoint=0x7e, blacklist_characters="\n"), max_size=8)
               | st.sampled_from(["", "auto", "notify", "nova", "cinder", "evacuation stopped", "reset-state", "x",
                                  "2025-01-31T09:15:02.123Z", "2025-01-31T09:15:02+02:00", UUID1, "crashup@c1",
                                  *SAMPLES]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["id", "name", "host", "action", "x"]), inner,
                                             max_size=3), max_leaves=4)


def _like(value):
    """Values of the same JSON type as value (so that some changed events stay valid)."""
    if isinstance(value, str):
        return JSON_LEAVES.filter(lambda v: isinstance(v, str))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return st.integers(-1, 100) | st.floats(-1, 100).filter(lambda f: not f.is_integer())
    if isinstance(value, list):
        return st.lists(st.sampled_from(value), max_size=3) if value else st.just([])
    return st.just(value)


def _paths(value, path=()):
    """Every place in a JSON value a change can go: each key and index, and a new key in each object."""
    if isinstance(value, dict):
        yield path + ("new key",)
        for key, sub in value.items():
            yield path + (key,)
            yield from _paths(sub, path + (key,))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield path + (i,)
            yield from _paths(sub, path + (i,))


@settings(deadline=None, max_examples=300)
@given(data=st.data())
def test_the_runtime_check_and_the_schema_agree_on_generated_changes(data, strict):
    type_ = data.draw(st.sampled_from(sorted(SAMPLES)))
    event = sample(type_)
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(list(_paths(event))))
        values = JSON_VALUES if path[-1] == "new key" else _like(_at(event, path)) | JSON_VALUES
        if path[-1] != "new key" and not isinstance(path[-1], int):
            values |= st.just(DELETE)
        event = _changed(event, path, data.draw(values))
    assert _runtime_says(event) == strict.is_valid(event), event


def test_the_runtime_check_is_stricter_only_on_purpose(strict):
    """Where Python's reading of a pattern is wider than JSON Schema's (ECMA-262: a final $ is the end of the
    string, \\d is 0-9), and an integer field given 1.0 (valid JSON Schema, a bug in crashup)."""
    plain = jsonschema.Draft202012Validator(events.load_schema())
    stricter = [("crashup.host.failed", ("payload", "repairs", 0, "action"), "skip\n"),
                ("crashup.host.failed", ("time",), "2025-01-31T09:15:02.123Z\n"),
                ("crashup.host.failed", ("payload", "fenced_at"), "\u0662025-01-31T09:15:00.042Z"),
                ("crashup.host.recovered", ("payload", "evacuated"), 7.0)]
    for type_, path, value in stricter:
        event = _changed(sample(type_), path, value)
        assert not _runtime_says(event) and plain.is_valid(event), (path, value)


def test_a_schema_keyword_the_checker_does_not_know_stops_it():
    with pytest.raises(events.SchemaError, match="keyword maxLength not supported"):
        contract._Compiler({}).compile({"type": "string", "maxLength": 3})
    with pytest.raises(events.SchemaError, match="only references inside the schema"):
        contract._Compiler({}).compile({"$ref": "https://example.org/other.json"})


@pytest.mark.parametrize("type_, change, message", [
    ("crashup.host.failed", {"node": DELETE}, "missing required key 'node'"),
    ("crashup.host.failed", {"nodes": "x"}, "unknown key 'nodes'"),
    ("crashup.host.failed", {"mode": "automatic"}, "mode must be one of 'auto', 'notify', not 'automatic'"),
    ("crashup.host.failed", {"fenced_at": "yesterday"}, "fenced_at must be an RFC 3339 date-time"),
    ("crashup.host.failed", {"instances": [{"id": UUID1}]}, "instances[0]: missing required keys 'name', 'status'"),
    ("crashup.host.failed", {"repairs": [{"id": UUID1, "from_task_state": "x", "action": "Reset State"}]},
     "repairs[0].action must be lower-case words"),
    ("crashup.host.recovered", {"evacuated": "7"}, "evacuated must be an integer, not str"),
    ("crashup.host.recovered", {"failed": -1}, "failed must be >= 0"),
    ("crashup.host.recovered", {"skipped": True}, "skipped must be an integer, not bool"),
    ("crashup.host.storm", {"action": "carry on"}, "action must be one of 'evacuation stopped'"),
    ("crashup.host.storm", {"hosts": "compute1"}, "hosts must be a list, not str"),
    ("crashup.host.storm", {"hosts": []}, "hosts must have at least 1 item"),
    ("crashup.host.fencing_unconfirmed", {"reason": ""}, "reason must not be empty"),
    ("crashup.instance.evacuated", {"duration_s": "12"}, "duration_s must be a number, not str"),
    ("crashup.instance.evacuation_failed", {"attempts": 1.5}, "attempts must be an integer, not float"),
    ("crashup.instance.repaired", {"host": DELETE}, "missing required key 'host'"),
    ("crashup.resource.orphaned", {"service": "swift"}, "service must be one of 'nova', 'cinder'"),
])
def test_a_bad_payload_is_refused_with_a_clear_message(type_, change, message, validator):
    subject, payload = SAMPLES[type_]
    payload = dict(payload)
    for key, value in change.items():
        if value is DELETE:
            del payload[key]
        else:
            payload[key] = value
    with pytest.raises(events.EventError) as caught:
        events.make_event(type_, subject, payload)
    text = str(caught.value)
    assert message in text and text.startswith(type_), text
    assert "\n" not in text
    # the schema refuses it too: the Python checks and the contract say the same
    good = events.make_event(type_, subject, SAMPLES[type_][1])
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**good, "payload": payload})


@pytest.mark.parametrize("args, message", [
    (("crashup.host.exploded", "c1", {}),
     "unknown event type 'crashup.host.exploded'; known types: crashup.host.failed"),
    (("crashup.host.storm", "", SAMPLES["crashup.host.storm"][1]), "subject must be a non-empty string"),
    (("crashup.host.storm", "c3", ["compute1"]), "payload must be an object, not list"),
    (("crashup.host.recovered", "c1", {**SAMPLES["crashup.host.recovered"][1], "duration_s": float("inf")}),
     "not JSON-serialisable"),
])
def test_bad_type_subject_or_values_are_refused(args, message):
    with pytest.raises(events.EventError) as caught:
        events.make_event(*args)
    assert message in str(caught.value)


def test_times_and_power_states_are_normalised_and_the_payload_is_a_copy(validator):
    subject, payload = SAMPLES["crashup.host.failed"]
    fenced = datetime.datetime(2025, 1, 31, 9, 15, 0, 42999, tzinfo=datetime.timezone.utc)
    payload = {**payload, "fenced_at": fenced, "instances": [dict(i) for i in payload["instances"]]}
    event = events.make_event("crashup.host.failed", subject, payload)
    validator.validate(event)
    assert event["payload"]["fenced_at"] == "2025-01-31T09:15:00.042Z"
    payload["instances"][0]["name"] = "changed later"
    assert event["payload"]["instances"][0]["name"] == "web-1"
    assert events.rfc3339(fenced.timestamp()) == "2025-01-31T09:15:00.042Z"
    assert events.rfc3339(datetime.datetime(2025, 1, 31, 9, 15)) == "2025-01-31T09:15:00.000Z"   # naive = UTC

    subject, payload = SAMPLES["crashup.instance.evacuated"]
    event = events.make_event("crashup.instance.evacuated", subject, {**payload, "power_state": 4})
    assert event["payload"]["power_state"] == "shutdown"
    validator.validate(event)


def test_the_library_needs_no_jsonschema_at_run_time():
    code = ("import sys; sys.modules['jsonschema'] = None\n"
            "from crashup_lib import events\n"
            "e = events.make_event('crashup.host.fencing_unconfirmed', 'c1', "
            "{'host': 'c1', 'node': 'c1', 'reason': 'r'})\n"
            "assert events.load_schema()['$id'] == 'urn:crashup:events:1'\n"
            "print(e['type'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "crashup.host.fencing_unconfirmed"


# --- journal -------------------------------------------------------------------------------------------------------

def test_journal_creates_its_folder_0750_and_file_0640(tmp_path):
    path = tmp_path / "var" / "crashup" / "events.jsonl"
    old = os.umask(0o077)
    try:
        events.JournalSink(str(path)).send(sample())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 2 and lines[1] == b""
    check(json.loads(lines[0]))


def _writer(path, writer, count):
    sink = events.JournalSink(path)
    subject, payload = SAMPLES["crashup.host.failed"]
    # lines of ~9 kB: larger than PIPE_BUF, so only the lock keeps them whole
    instances = [dict(payload["instances"][0], name=f"w{writer}-vm{i}") for i in range(80)]
    for seq in range(count):
        sink.send(events.make_event("crashup.host.failed", f"w{writer}",
                                    {**payload, "node": f"{writer}:{seq}", "instances": instances}))


def test_journal_append_under_concurrency_never_breaks_a_line(tmp_path):
    path = str(tmp_path / "events.jsonl")
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_writer, args=(path, w, 200)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    raw = open(path, "rb").read()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 800
    got = events.read(path)
    assert got.broken == 0 and len(got) == 800
    assert len({e["id"] for e in got}) == 800
    seqs = {}
    for e in got:
        writer, seq = e["payload"]["node"].split(":")
        seqs.setdefault(writer, []).append(int(seq))
    assert seqs == {str(w): list(range(200)) for w in range(4)}      # each writer's events in its own order
    check(got[0])
    check(got[-1])


def test_journal_failure_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sink = events.JournalSink(str(blocker / "events.jsonl"))
    with pytest.raises(events.JournalError, match=r"events journal .*/file/events.jsonl: cannot append"):
        sink.send(sample())


def test_journal_closes_a_line_torn_by_a_dead_writer(tmp_path):
    path = tmp_path / "events.jsonl"
    first = sample()
    path.write_bytes(events.to_json(first) + b"\n" + events.to_json(sample())[:40])   # died mid-write
    second = sample("crashup.host.recovered")
    events.JournalSink(str(path)).send(second)
    got = events.read(str(path))
    assert [e["id"] for e in got] == [first["id"], second["id"]]
    assert got.broken == 1 and got.broken_lines == [2]


def test_read_skips_and_counts_broken_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    good = [sample(t) for t in sorted(SAMPLES)]
    lines = [events.to_json(good[0]), b"{not json", b"", events.to_json(good[1]), b"[1, 2]", b'{"type": 1}',
             b"\xff\xfe binary", b"[" * 100000, events.to_json(good[2]), events.to_json(good[3])[:-5]]
    path.write_bytes(b"\n".join(lines))
    got = events.read(str(path))
    assert [e["id"] for e in got] == [e["id"] for e in good[:3]]
    assert got.broken == 6 and got.broken_lines == [2, 5, 6, 7, 8, 10]
    assert events.read(str(tmp_path / "missing.jsonl")) == [] and events.read(str(tmp_path / "missing")).broken == 0


def line_of(event, **changes):
    """The journal line of event with some envelope fields changed (DELETE removes one)."""
    changed = {k: v for k, v in {**event, **changes}.items() if v is not DELETE}
    return json.dumps(changed).encode()


def test_a_line_without_time_is_skipped_and_the_listing_goes_on(tmp_path, logs):
    """It used to end `crashup events` (and --follow) with KeyError: 'time'."""
    path = tmp_path / "events.jsonl"
    first, last = sample(), sample("crashup.host.recovered")
    path.write_bytes(b"\n".join([events.to_json(first), line_of(sample(), time=DELETE),
                                 line_of(sample(), subject=7), line_of(sample(), time="yesterday"),
                                 line_of(sample(), payload="x"), events.to_json(last)]) + b"\n")
    got = events.read(str(path))
    assert [e["id"] for e in got] == [first["id"], last["id"]] and got.broken_lines == [2, 3, 4, 5]
    assert [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING] == \
        [f"events: skipped 4 malformed lines in {path}"]                  # one line, not one per bad line
    with events.follow(str(path), from_start=True, timeout=0, poll_interval=0.01) as follower:
        assert [e["id"] for e in follower] == [first["id"], last["id"]] and follower.broken == 4


def test_lone_surrogates_invalid_utf8_and_nan(tmp_path):
    """A lone surrogate is valid JSON (crashup's own to_json writes one as \\ud800): it is read, and listed escaped.
    Bytes that are not UTF-8, NaN, a UTF-16 line: not events."""
    path = tmp_path / "events.jsonl"
    odd = events.make_event("crashup.host.storm", "compute\ud800", SAMPLES["crashup.host.storm"][1])
    raw_utf8 = json.dumps(sample(), ensure_ascii=False).replace("compute1", "cömpute\xff").encode()[:-1] + b"\xff}"
    nan = line_of(sample()).replace(b'"mode"', b'"x": NaN, "mode"')
    utf16, bom = line_of(sample()).decode().encode("utf-16"), "\ufeff".encode() + events.to_json(sample())
    path.write_bytes(b"\n".join([events.to_json(odd), raw_utf8, nan, utf16, bom]))
    got = events.read(str(path))
    assert [e["id"] for e in got] == [odd["id"]] and got.broken == 4
    assert events.listing(got[0]).endswith("compute\\ud800") and events.listing(got[0]).encode("utf-8")


@pytest.mark.parametrize("raw, shown", [
    ("\x1b]0;owned\x07\x1b[2J", "\\x1b]0;owned\\x07\\x1b[2J"),
    ("a\r\nb\tc\x00\x7f", "a\\r\\nb\\tc\\x00\\x7f"),
    ("\x9b31m\x85", "\\x9b31m\\x85"),                                   # C1: CSI and NEL
    ("x\u2028y\u2029", "x\\u2028y\\u2029"),                             # line and paragraph separators
    ("\udc80", "\\udc80"),
    ("café ☃ 東京", "café ☃ 東京"),                                       # printable text stays as it is
])
def test_listing_escapes_what_would_act_on_a_terminal(raw, shown):
    event = events.make_event("crashup.resource.orphaned", raw, SAMPLES["crashup.resource.orphaned"][1])
    line = events.listing(dict(event, type="crashup." + raw))
    assert line.startswith(event["time"] + "  crashup." + shown) and line.endswith(shown)
    assert events.sanitize(raw) == shown


def test_an_overlong_line_is_skipped_without_being_read_whole(tmp_path):
    import tracemalloc
    path = tmp_path / "events.jsonl"
    good = sample()
    with open(path, "wb") as f:
        f.write(b'{"time": "' + b"x" * (40 << 20))                   # 40 MiB without a newline, then a good line
        f.write(b"\n" + events.to_json(good) + b"\n" + b"y" * (3 << 20))
    tracemalloc.start()
    try:
        got = events.read(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e["id"] for e in got] == [good["id"]] and got.broken_lines == [1, 3]
    assert peak < 3 * journal.MAX_LINE
    with events.follow(str(path), from_start=True, timeout=0, poll_interval=0.01) as follower:
        assert [e["id"] for e in follower] == [good["id"]] and follower.broken == 2


def test_a_journal_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)                                                     # opening it would wait for a writer
    for reader in (events.read, events.follow):
        with pytest.raises(OSError, match="not a regular file"):
            reader(str(fifo))
    with pytest.raises(OSError, match="is a directory, not a file"):
        events.read(str(tmp_path))


# --- webhook -------------------------------------------------------------------------------------------------------

class Receiver:
    """A local HTTP server that records each request and answers with scripted statuses (then 200)."""

    def __init__(self):
        self.requests = []
        self.statuses = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers), body, self.path))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if status in (301, 302, 303, 307, 308):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webhook_posts_the_event_signed(receiver, secret_file, validator):
    event = sample()
    assert events.WebhookSink(receiver.url, secret_file).send(event) is True
    [(headers, body, path)] = receiver.requests
    assert path == "/hook"
    assert body == events.to_json(event)
    validator.validate(json.loads(body))
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Crashup-Event"] == "crashup.host.failed" and headers["X-Crashup-Id"] == event["id"]
    signature = headers["X-Crashup-Signature"]
    # what a receiver does: HMAC-SHA256 of the raw body with the secret (file content, whitespace stripped)
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert events.verify_signature(body, SECRET.encode(), signature)
    assert not events.verify_signature(body, b"another key", signature)
    assert not events.verify_signature(body + b" ", SECRET.encode(), signature)
    assert not events.verify_signature(body, SECRET.encode(), None)
    assert SECRET not in json.dumps(headers) and SECRET.encode() not in body


def test_webhook_without_secret_is_unsigned(receiver):
    assert events.WebhookSink(receiver.url).send(sample()) is True
    assert "X-Crashup-Signature" not in receiver.requests[0][0]


def test_webhook_retries_a_500_then_succeeds(receiver, secret_file, logs):
    receiver.statuses = [500]
    event = sample()
    assert events.WebhookSink(receiver.url, secret_file, backoff=0.05).send(event) is True
    assert len(receiver.requests) == 2
    assert receiver.requests[0][1] == receiver.requests[1][1] == events.to_json(event)
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("status, tries", [(400, 1), (302, 1), (503, 3)])
def test_webhook_gives_up_with_one_warning(receiver, status, tries, logs):
    receiver.statuses = [status] * 5
    assert events.WebhookSink(receiver.url, backoff=0.01).send(sample()) is False
    assert len(receiver.requests) == tries                     # a 4xx or a redirect is final, a 5xx is retried
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"HTTP {status}" in warnings[0] and f"after {tries} attempt" in warnings[0]


def test_webhook_unreachable_gives_up_within_the_bound(logs):
    sink = events.WebhookSink(f"http://127.0.0.1:{free_port()}/hook", timeout=1)   # default 3 attempts, backoff
    start = time.monotonic()
    assert sink.send(sample()) is False                                          # and no exception
    elapsed = time.monotonic() - start
    assert 1.4 <= elapsed < 1 * 3 + 1.5 + 1, elapsed                              # 0.5 s + 1 s of backoff
    [warning] = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert "after 3 attempts" in warning and "refused" in warning.lower()


def test_webhook_to_a_silent_server_is_bounded_by_its_timeout(logs):
    with socket.socket() as silent:                            # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        sink = events.WebhookSink(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.3, backoff=0.05)
        start = time.monotonic()
        assert sink.send(sample()) is False
        assert time.monotonic() - start < 0.3 * 3 + 0.15 + 1
    assert "timed out" in logs.text


def test_webhook_bad_url_or_secret_stops_at_construction(tmp_path):
    with pytest.raises(ValueError, match="http:// or https://"):
        events.WebhookSink("ftp://example.org/x")
    with pytest.raises(ValueError, match="webhook secret file .*missing: No such file"):
        events.WebhookSink("http://127.0.0.1:1/", str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        events.WebhookSink("http://127.0.0.1:1/", str(tmp_path / "empty"))


def test_the_secret_never_appears_in_logs(receiver, secret_file, logs, tmp_path):
    # every path that logs: success (debug), retries, final failure, an unreachable url with credentials in it,
    # and a secret file that vanished after start
    receiver.statuses = [500, 500, 500]
    events.WebhookSink(receiver.url, secret_file, backoff=0.01).send(sample())
    events.WebhookSink(receiver.url, secret_file).send(sample())
    url = f"http://admin:{SECRET}@127.0.0.1:{free_port()}/hook?token={SECRET}"
    events.WebhookSink(url, secret_file, timeout=0.5, attempts=2, backoff=0.01).send(sample())
    moved = tmp_path / "moved.secret"
    moved.write_text(SECRET)
    sink = events.WebhookSink(receiver.url, str(moved))
    moved.unlink()
    assert sink.send(sample()) is False
    messages = "\n".join(r.getMessage() for r in logs.records)
    assert logs.records and "webhook" in messages and "not sent" in messages
    assert SECRET not in logs.text and SECRET not in messages
    assert len([r for r in logs.records if r.levelno == logging.WARNING]) == 3


# --- command hook --------------------------------------------------------------------------------------------------

def write_script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_command_hook_receives_the_json_on_stdin(tmp_path, validator):
    out = tmp_path / "got.json"
    script = write_script(tmp_path, "hook with space.py", """
        import json, os, sys
        data = sys.stdin.buffer.read()
        json.dump({"stdin": data.decode(), "type": os.environ["CRASHUP_EVENT_TYPE"],
                   "id": os.environ["CRASHUP_EVENT_ID"], "subject": os.environ["CRASHUP_EVENT_SUBJECT"],
                   "cwd": os.getcwd(), "path": os.environ.get("PATH"), "argv": sys.argv[1:]}, open(sys.argv[1], "w"))
        """)
    event = sample()
    sink = events.CommandSink(shlex.join([str(script), str(out)]) + " --flag")
    assert sink.send(event) is True
    got = json.loads(out.read_text())
    assert got["stdin"].encode() == events.to_json(event)
    validator.validate(json.loads(got["stdin"]))
    assert got["type"] == "crashup.host.failed" and got["id"] == event["id"] and got["subject"] == "compute1"
    assert got["cwd"] == "/" and got["path"] == os.environ.get("PATH")               # crashup's environment, and /
    assert got["argv"] == [str(out), "--flag"]                       # split like a shell would, run without one
    assert events.CommandSink([str(script), str(out)]).send(event) is True


def test_a_failing_command_warns_and_does_not_raise(tmp_path, logs):
    script = write_script(tmp_path, "fail.py", """
        import sys
        sys.stdin.read()
        print("ticketing system said no", file=sys.stderr)
        sys.exit(3)
        """)
    assert events.CommandSink(str(script)).send(sample()) is False
    [warning] = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert "fail.py failed for crashup.host.failed" in warning and "exit 3: ticketing system said no" in warning
    assert events.CommandSink(str(tmp_path / "does-not-exist")).send(sample()) is False
    assert "cannot run" in logs.records[-1].getMessage()
    assert events.CommandSink(["/bin/true"]).send(sample()) is True     # never reads stdin: fine
    with pytest.raises(ValueError, match="empty"):
        events.CommandSink("  ")


def test_a_hanging_command_is_killed_with_its_children_at_the_timeout(tmp_path, logs):
    pidfile = tmp_path / "child.pid"
    command = ["/bin/sh", "-c", f'sleep 60 & echo $! > {shlex.quote(str(pidfile))}; wait']
    start = time.monotonic()
    assert events.CommandSink(command, timeout=0.5).send(sample()) is False
    assert time.monotonic() - start < 3
    assert "did not finish within 0.5s" in logs.text
    child = int(pidfile.read_text())
    for _ in range(50):                                              # the grandchild went with its group
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break                                            # dead, waiting for init to reap it
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"hook's child {child} is still alive")


# --- emitter -------------------------------------------------------------------------------------------------------

def test_emitter_from_config_writes_the_journal_first(tmp_path, receiver, secret_file, validator):
    journal = tmp_path / "j" / "events.jsonl"
    seen = tmp_path / "seen"
    script = write_script(tmp_path, "hook.py", f"""
        import json, sys
        event = json.load(sys.stdin)
        ids = [json.loads(line)["id"] for line in open({str(journal)!r})]
        open({str(seen)!r}, "a").write(str(event["id"] in ids) + "\\n")
        """)
    cfg = {"journal": str(journal), "webhook_url": receiver.url, "webhook_secret_file": secret_file,
           "hook_command": str(script), "mode": "auto"}
    emitter = events.Emitter.from_config(cfg)
    assert [type(s) for s in emitter.sinks] == [events.JournalSink, events.WebhookSink, events.CommandSink]
    first = emitter.emit(sample())
    second = emitter.publish("crashup.host.recovered", *SAMPLES["crashup.host.recovered"])
    validator.validate(second)
    assert [e["id"] for e in events.read(str(journal))] == [first["id"], second["id"]]
    assert [json.loads(r[1])["id"] for r in receiver.requests] == [first["id"], second["id"]]
    assert seen.read_text() == "True\nTrue\n"                         # the hook found its event in the journal
    assert events.Emitter.from_config({"journal": "", "webhook_url": "", "hook_command": ""}).sinks == []


def test_emitter_delivers_to_the_others_then_raises_when_the_journal_fails(tmp_path, receiver, logs):
    class Broken:
        name = "broken"

        def send(self, event):
            raise RuntimeError("bug in a sink")

    blocker = tmp_path / "file"
    blocker.write_text("")
    emitter = events.Emitter([events.JournalSink(str(blocker / "events.jsonl")), Broken(),
                              events.WebhookSink(receiver.url)])
    with pytest.raises(events.JournalError):
        emitter.emit(sample())
    assert len(receiver.requests) == 1                                # the notification still went out
    assert "sink broken failed" in logs.text
    emitter = events.Emitter([Broken(), events.WebhookSink(receiver.url)])
    emitter.emit(sample())                                            # no journal: nothing raises
    assert len(receiver.requests) == 2


def test_background_emitter_does_not_wait_for_slow_sinks(tmp_path):
    out = tmp_path / "out"
    script = write_script(tmp_path, "slow.py", f"""
        import sys, time
        data = sys.stdin.read()
        time.sleep(0.3)
        open({str(out)!r}, "a").write(data + "\\n")
        """)
    journal = tmp_path / "events.jsonl"
    with events.Emitter([events.JournalSink(str(journal)), events.CommandSink(str(script))],
                        background=True) as emitter:
        start = time.monotonic()
        sent = [emitter.emit(sample()) for _ in range(3)]
        assert time.monotonic() - start < 0.25
        assert len(events.read(str(journal))) == 3                     # the journal is written before emit returns
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [e["id"] for e in sent]


# --- follow --------------------------------------------------------------------------------------------------------

def append(path, data: bytes):
    with open(path, "ab") as f:
        f.write(data)


def test_follow_yields_only_events_appended_after_it_starts(tmp_path):
    path = str(tmp_path / "events.jsonl")
    sink = events.JournalSink(path)
    old = sample()
    sink.send(old)
    follower = events.follow(path, poll_interval=0.05, timeout=3)
    new = [sample("crashup.instance.evacuated"), sample("crashup.host.recovered")]
    sink.send(new[0])                                                 # before iteration starts: still "after"

    def later():
        time.sleep(0.3)
        sink.send(new[1])
    threading.Thread(target=later).start()
    got = [next(follower), next(follower)]
    follower.close()
    assert [e["id"] for e in got] == [e["id"] for e in new]
    with events.follow(path, from_start=True, timeout=0.3, poll_interval=0.05) as everything:
        assert [e["id"] for e in everything] == [old["id"]] + [e["id"] for e in new]


def test_follow_waits_for_the_end_of_a_partial_line(tmp_path):
    path = str(tmp_path / "events.jsonl")
    event, broken_then_good = sample(), sample("crashup.host.storm")
    line = events.to_json(event) + b"\n"
    append(path, b"")
    follower = events.follow(path, poll_interval=0.05, timeout=3)
    append(path, line[:25])

    def rest():
        time.sleep(0.3)
        append(path, line[25:] + b"garbage\n" + events.to_json(broken_then_good)[:10])
        time.sleep(0.3)
        append(path, events.to_json(broken_then_good)[10:] + b"\n")
    threading.Thread(target=rest).start()
    assert next(follower)["id"] == event["id"]
    assert next(follower)["id"] == broken_then_good["id"]
    assert follower.broken == 1
    follower.close()


def test_follow_started_mid_line_reads_that_line_whole(tmp_path):
    path = str(tmp_path / "events.jsonl")
    first, second = sample(), sample("crashup.host.recovered")
    line = events.to_json(second) + b"\n"
    append(path, events.to_json(first) + b"\n" + line[:30])           # a writer is mid-line as we start
    follower = events.follow(path, poll_interval=0.05, timeout=0.5)
    append(path, line[30:])
    assert [e["id"] for e in follower] == [second["id"]] and follower.broken == 0


def test_follow_a_journal_that_appears_later_and_is_rotated(tmp_path):
    path = str(tmp_path / "events.jsonl")
    follower = events.follow(path, poll_interval=0.05, timeout=3)
    a, b, c = sample(), sample("crashup.host.recovered"), sample("crashup.host.storm")

    def writer():
        time.sleep(0.2)
        events.JournalSink(path).send(a)                              # the journal appears
        time.sleep(0.3)
        os.rename(path, path + ".1")                                  # rotated away, then a new file
        events.JournalSink(path).send(b)
        events.JournalSink(path).send(c)
    threading.Thread(target=writer).start()
    got = [next(follower)["id"] for _ in range(3)]
    follower.close()
    assert got == [a["id"], b["id"], c["id"]]


def test_follow_ends_after_its_timeout_without_events(tmp_path):
    path = str(tmp_path / "events.jsonl")
    events.JournalSink(path).send(sample())
    start = time.monotonic()
    assert list(events.follow(path, timeout=0.3, poll_interval=0.05)) == []
    assert 0.3 <= time.monotonic() - start < 2


def test_follow_goes_on_after_bad_lines_and_a_truncation_in_place(tmp_path, logs):
    path = str(tmp_path / "events.jsonl")
    a, b, c = sample(), sample("crashup.host.recovered"), sample("crashup.host.storm")
    append(path, events.to_json(a) + b"\n")
    follower = events.follow(path, poll_interval=0.05, timeout=3)

    def writer():
        time.sleep(0.2)
        append(path, line_of(sample(), time=DELETE) + b"\n\xff\xfe\n" + events.to_json(b) + b"\n")
        time.sleep(0.3)
        with open(path, "r+b") as f:                                    # logrotate's copytruncate
            f.truncate(0)
        time.sleep(0.3)
        append(path, events.to_json(c) + b"\n")
    threading.Thread(target=writer).start()
    got = [next(follower)["id"] for _ in range(2)]
    follower.close()
    assert got == [b["id"], c["id"]] and follower.broken == 2
    warnings = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    assert warnings == [f"events: skipped 2 malformed lines in {path}"]
