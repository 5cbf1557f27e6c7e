"""Bad input against the readers (issue 11): the events journal (`crashup events`, read, follow), the nova-compute
agent's heartbeat cache and clouds.yaml. Whatever is in the file: no exception, exactly the valid content, nothing
raw on a terminal, bounded memory and time, one clear line, no secret. Generated input (hypothesis) first, then the
real command, then one test per defect."""
import datetime
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crashup_lib import clouds, config, events, log, nova, watchdog
from crashup_lib.events import journal
from tests.helpers import REPO, agent_env

PROPERTY = settings(deadline=None, max_examples=250, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- generated input -------------------------------------------------------------------------------------------------

# text with what hurts: terminal controls, C1, line separators, lone surrogates, quotes and backslashes
NASTY = "\x00\x07\x08\t\n\r\x1b\x7f\x85\x9b\u2028\u2029\ud800\udfff\"\\"
text = st.text(st.characters() | st.sampled_from(NASTY), max_size=12)
word = st.text(st.characters() | st.sampled_from(NASTY), min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6)
ENVELOPE = ("specversion", "id", "time", "type", "source", "subject", "payload")
BAD_TIMES = ["", "yesterday", "2025-01-31T09:15:02Z", "2025-01-31 09:15:02.123Z", "2025-01-31T09:15:02.123Z\n",
             "2025-01-31T09:15:02.123+00:00", "\u0662025-01-31T09:15:02.123Z"]


@st.composite
def valid_events(draw) -> dict:
    when = draw(st.datetimes(datetime.datetime(2000, 1, 1), datetime.datetime(2100, 1, 1)))
    event = {"specversion": "1", "id": draw(word), "time": events.rfc3339(when), "type": draw(word),
             "source": draw(word), "subject": draw(word),
             "payload": draw(st.dictionaries(text, json_values, max_size=3))}
    event.update(draw(st.dictionaries(text.filter(lambda k: k not in ENVELOPE), json_values, max_size=2)))
    return event


@st.composite
def valid_lines(draw) -> tuple[bytes, dict]:
    event = draw(valid_events())
    line = events.to_json(event)                                          # what crashup writes: ASCII
    if draw(st.booleans()):
        try:                                                              # or raw UTF-8 (another writer)
            line = json.dumps(event, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:                                        # a lone surrogate has no UTF-8
            pass
    return line, json.loads(line)


@st.composite
def broken_events(draw) -> bytes:
    """An event with one thing wrong: a field missing or of the wrong type, a time not the contract's, NaN, a byte
    that is not UTF-8, cut short."""
    event = draw(valid_events())
    line = events.to_json(event)
    how = draw(st.sampled_from(["missing", "mistyped", "time", "nan", "byte", "cut"]))
    field = draw(st.sampled_from(ENVELOPE))
    if how == "missing":
        del event[field]
    elif how == "mistyped":
        wrong = [None, 1, 1.5, True, []] + (["x"] if field == "payload" else [{}, ""])
        event[field] = draw(st.sampled_from(wrong))
    elif how == "time":
        event["time"] = draw(st.sampled_from(BAD_TIMES))
    elif how == "nan":
        event["payload"]["n"] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif how == "byte":
        at = draw(st.integers(0, len(line)))
        return line[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])) + line[at:]
    else:
        return line[:draw(st.integers(1, len(line) - 1))]
    return json.dumps(event).encode()


garbage = (st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode())
           | text.map(lambda t: t.encode("utf-8", "surrogatepass"))).map(lambda b: b.replace(b"\n", b""))
blank = st.sampled_from([b"", b" ", b"\t\r", b"  \x0c"])
journal_lines = st.lists(valid_lines() | broken_events() | garbage | blank, max_size=12)

UNSAFE_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}


def unsafe(line: str) -> list[str]:
    return [c for c in line if unicodedata.category(c) in UNSAFE_CATEGORIES]


@PROPERTY
@given(lines=journal_lines, newline_at_end=st.booleans())
def test_the_reader_yields_exactly_the_valid_events_and_lists_them_safely(tmp_path, lines, newline_at_end):
    path = tmp_path / "events.jsonl"
    raw = [x[0] if isinstance(x, tuple) else x for x in lines]
    expected = [x[1] for x in lines if isinstance(x, tuple)]
    broken = sum(1 for x in lines if not isinstance(x, tuple) and x.strip())
    path.write_bytes(b"\n".join(raw) + (b"\n" if newline_at_end else b""))
    got = events.read(str(path))
    assert list(got) == expected and got.broken == broken
    for event in got:
        shown = events.listing(event)
        assert not unsafe(shown), shown
        shown.encode("utf-8")                                             # no lone surrogate left
    if newline_at_end:                                                    # follow waits for a last line's end
        with events.follow(str(path), from_start=True, timeout=0, poll_interval=0) as follower:
            assert list(follower) == expected and follower.broken == broken


@PROPERTY
@given(data=st.lists(st.binary(max_size=9) | st.just(b"\n") | st.just(b"y" * 30), max_size=16).map(b"".join),
       cuts=st.lists(st.integers(0, 400), max_size=6), limit=st.integers(1, 25))
def test_lines_come_out_the_same_however_the_bytes_are_chunked_and_never_held_past_the_limit(data, cuts, limit):
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    lines, out = journal._Lines(limit), []
    for start, end in zip(bounds, bounds[1:]):
        out.extend(lines.feed(data[start:end]))
        assert len(lines._part) <= limit
    *complete, last = data.split(b"\n")
    assert out == [line if len(line) <= limit else None for line in complete] + ([None] if len(last) > limit else [])
    assert lines.rest() == (None if len(last) > limit else last)


# --- the heartbeat cache ------------------------------------------------------------------------------------------

cache_fields = st.fixed_dictionaries({}, optional={
    "checked_at": json_values | st.floats() | st.integers(min_value=-10**400, max_value=10**400),
    "healthy": json_values, "reason": json_values | text, "host": json_values | word})
good_caches = st.fixed_dictionaries(
    {"checked_at": st.floats(0, 4e9), "healthy": st.booleans(), "reason": st.text(max_size=40)},
    optional={"host": st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True)})
cache_files = (st.binary(max_size=300) | cache_fields.map(lambda d: json.dumps(d).encode())
               | good_caches.map(lambda d: json.dumps(d).encode())
               | json_values.map(lambda v: json.dumps(v).encode()))


@PROPERTY
@given(content=cache_files)
def test_read_cache_never_raises_and_gives_nothing_or_well_typed_values(tmp_path, content):
    path = tmp_path / "nova-compute-c1.json"
    path.write_bytes(content)
    cache = watchdog.read_cache(str(path))
    assert isinstance(cache, watchdog.Cache)
    watchdog.fresh(cache, 30)
    if cache is watchdog.NO_CACHE:
        return
    assert type(cache.checked_at) is float and math.isfinite(cache.checked_at)
    assert type(cache.healthy) is bool and type(cache.reason) is str and log.text_problem(cache.reason) is None
    assert cache.host is None or (type(cache.host) is str and cache.host.strip() == cache.host != "")


@PROPERTY
@given(fields=good_caches)
def test_a_cache_written_is_read_back_the_same(tmp_path, fields):
    path = str(tmp_path / "state" / "nova-compute-c1.json")
    assert watchdog.write_cache(path, **fields)
    assert watchdog.read_cache(path) == watchdog.Cache(**{**fields, "checked_at": float(fields["checked_at"]),
                                                          "reason": log.one_line(fields["reason"])})


# --- clouds.yaml ---------------------------------------------------------------------------------------------------

yamlish = st.text(st.sampled_from("clouds:auth password -[]{}&*!|>'\"#%@`,?\n\t\x00\ufeff\u2028ab1"), max_size=80)


@PROPERTY
@given(content=st.binary(max_size=120) | yamlish.map(lambda t: t.encode("utf-8")), suffix=st.sampled_from(
    [".yaml", ".json"]))
def test_a_clouds_file_is_read_or_refused_in_one_line(tmp_path, content, suffix):
    path = tmp_path / f"clouds{suffix}"
    path.write_bytes(content)
    try:
        doc = clouds.read_clouds_file(str(path))
    except clouds.CloudsFileError as e:
        message = str(e)
        assert message.startswith(f"clouds file {path}: ") and "\n" not in message and not unsafe(message)
    else:
        assert doc is None or isinstance(doc, dict)


# --- the real command ------------------------------------------------------------------------------------------------

def crashup_events(tmp_path, journal_path, *args, background=False):
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[events]\njournal = {journal_path}\n")
    argv = [sys.executable, "-m", "crashup_lib.cli", "--config", str(conf), "events", *args]
    if background:
        return subprocess.Popen(argv, env=agent_env(), cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    return subprocess.run(argv, env=agent_env(), cwd=REPO, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def sample(subject="compute1"):
    return events.make_event("crashup.host.recovered", subject, {
        "host": "compute1", "node": "compute1", "mode": "auto", "evacuated": 1, "failed": 0, "skipped": 0,
        "duration_s": 1.5})


def bad_journal(path, good: list[dict]) -> int:
    """A journal with the good events among every kind of bad line; returns how many bad lines."""
    no_time = {k: v for k, v in sample().items() if k != "time"}
    bad = [json.dumps(no_time).encode(), b"\xff\xfe\x00garbage", b"{not json", b"[1, 2]", b'{"time": 5}',
           json.dumps(dict(sample(), subject=["x"])).encode(), b'{"time": "' + b"x" * (2 << 20) + b'"}',
           events.to_json(sample())[:50]]
    lines = [events.to_json(good[0]), *bad[:4], events.to_json(good[1]), *bad[4:], events.to_json(good[2])]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(bad)


def test_crashup_events_lists_the_valid_events_of_a_bad_journal(tmp_path):
    path = tmp_path / "events.jsonl"
    good = [sample(), sample("compute\ud800"), sample("compute3")]            # a lone surrogate, as to_json writes it
    skipped = bad_journal(path, good)
    done = crashup_events(tmp_path, path)
    assert done.returncode == 0 and b"Traceback" not in done.stderr
    assert done.stdout.decode().splitlines() == [events.listing(e) for e in good]
    warning = f"WARNING: events: skipped {skipped} malformed lines in {path}"
    assert done.stderr.decode().strip().splitlines() == [warning]                    # one line for them all
    as_json = crashup_events(tmp_path, path, "--json")
    assert as_json.returncode == 0 and [json.loads(x) for x in as_json.stdout.splitlines()] == good


def test_crashup_events_shows_no_control_character_raw(tmp_path):
    """Needs cli._events to print events.listing(event)."""
    path = tmp_path / "events.jsonl"
    sneaky = dict(sample("compute1\x1b]0;owned\x07\x1b[2J\r\n\x9b1m\u2028"), type="crashup.host.\x1b[8mrecovered")
    path.write_bytes(events.to_json(sneaky) + b"\n")
    done = crashup_events(tmp_path, path)
    assert done.returncode == 0 and done.stdout.decode().splitlines() == [events.listing(sneaky)]
    assert not unsafe(done.stdout.decode().rstrip("\n"))


def read_lines(proc, count: int, timeout: float = 20) -> list[str]:
    got, deadline, buffered = [], time.monotonic() + timeout, b""
    while len(got) < count and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffered += chunk
            *complete, buffered = buffered.split(b"\n")
            got += [line.decode() for line in complete]
    return got


def test_crashup_events_follow_goes_on_after_bad_lines_and_a_truncation(tmp_path):
    path = tmp_path / "events.jsonl"
    good = [sample(), sample("compute2"), sample("compute3")]
    bad_journal(path, good)
    proc = crashup_events(tmp_path, path, "--follow", background=True)
    try:
        assert read_lines(proc, 3) == [events.listing(e) for e in good]
        later = [sample("compute4"), sample("compute5")]
        with open(path, "ab") as f:
            f.write(b'{"specversion": "1"}\n\xc0\xaf\n' + events.to_json(later[0]) + b"\n")
        assert read_lines(proc, 1) == [events.listing(later[0])]
        with open(path, "r+b") as f:                                       # copytruncate
            f.truncate(0)
        time.sleep(0.5)
        with open(path, "ab") as f:
            f.write(events.to_json(later[1]) + b"\n")
        assert read_lines(proc, 1) == [events.listing(later[1])]
    finally:
        proc.send_signal(signal.SIGTERM)          # SIGINT: ignored when the tests run from a background shell
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and b"Traceback" not in err


# --- one test per defect -------------------------------------------------------------------------------------------

def write_conf(tmp_path, clouds_text: str | bytes, cloud="c"):
    path = tmp_path / "clouds.yaml"
    path.write_bytes(clouds_text if isinstance(clouds_text, bytes) else clouds_text.encode())
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[openstack]\ncloud = {cloud}\nclouds_file = {path}\napi_timeout = 2\n")
    return config.load(str(conf), env={}), path


def from_config_error(cfg) -> str:
    with pytest.raises(nova.NovaError) as e:
        nova.Nova.from_config(cfg)
    return str(e.value)


CLOUD = ("clouds:\n  c:\n    auth_type: password\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n"
         "      username: admin\n      password: {password}\n")


def test_a_clouds_yaml_syntax_error_is_named_with_its_line_not_cloud_not_found(tmp_path, monkeypatch):
    """openstacksdk skips a file it cannot parse: it used to end in "Cloud c was not found"."""
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    cfg, path = write_conf(tmp_path, CLOUD.format(password="Pa55:w0rd: oops"))
    message = from_config_error(cfg)
    assert message == (f"nova config cloud 'c': clouds file {path}: not valid YAML at line 7, column 26: mapping "
                       "values are not allowed here")
    assert "Pa55" not in message                                          # where, never the line itself


@pytest.mark.parametrize("content, problem", [
    (b"clouds:\n  c:\n    auth: {password: \xff\xfe}\n", "line 3: byte 0xff is not UTF-8"),
    (b"clouds:\n\tc: {}\n", "not valid YAML at line 2, column 1: found character '\\t' that cannot start any token"),
    (b"- c\n", "not a mapping with a 'clouds' key (the document is a list)"),
    (b"clouds: [c]\n", "'clouds' is not a mapping of cloud names"),
    (b"clouds: " + b"[" * 100000, "nested too deeply"),
    (b"x" * (clouds.CLOUDS_MAX + 1), f"larger than {clouds.CLOUDS_MAX // 1024} KiB"),
])
def test_a_clouds_file_that_cannot_be_used_is_one_line_naming_it(tmp_path, monkeypatch, content, problem):
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    cfg, path = write_conf(tmp_path, content)
    message = from_config_error(cfg)
    assert message.startswith(f"nova config cloud 'c': clouds file {path}: {problem}") and "\n" not in message


def test_a_clouds_file_that_is_missing_or_not_a_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    cfg, path = write_conf(tmp_path, "")
    path.unlink()
    assert from_config_error(cfg).endswith(f"clouds file {path}: cannot read it: No such file or directory")
    os.mkfifo(path)                                                       # opening it must not wait for a writer
    assert from_config_error(cfg).endswith(f"clouds file {path}: not a regular file")
    path.unlink()
    cfg, path = write_conf(tmp_path, CLOUD.format(password="x"), cloud="other")
    assert from_config_error(cfg) == f"nova config cloud 'other': cannot load it from {path}: Cloud other was not " \
                                     "found."


def test_the_clouds_secrets_are_registered_as_soon_as_they_are_read(tmp_path, monkeypatch):
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    secrets = ["Cl0uds-Pa55word", "App-Cred-S3cret", "T0ken-gAAAA", "S3cure-Pa55"]
    text = CLOUD.format(password=secrets[0]) + (
        f"  d:\n    auth_type: v3applicationcredential\n    auth:\n      application_credential_id: id1\n"
        f"      application_credential_secret: {secrets[1]}\n  e:\n    auth: &a {{token: {secrets[2]}, again: *a}}\n")
    cfg, path = write_conf(tmp_path, text)
    secure = tmp_path / "secure.yaml"
    secure.write_text(f"clouds:\n  c:\n    auth:\n      password: {secrets[3]}\n")
    monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(secure))
    assert all(log.redact(f"<{s}>") == f"<{s}>" for s in secrets)
    nova.Nova.from_config(cfg)                                            # no connection made yet
    assert [log.redact(f"<{s}>") for s in secrets] == ["<***>"] * 4
    assert log.redact("id1") == "id1"                                     # an id is not a secret


def test_a_secure_file_with_a_syntax_error_is_named_too(tmp_path, monkeypatch):
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    cfg, _ = write_conf(tmp_path, CLOUD.format(password="x"))
    secure = tmp_path / "secure.yaml"
    secure.write_text("clouds:\n  c:\n    auth:\n      password: 'S3cure-unclosed\n")
    monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(secure))
    message = from_config_error(cfg)
    assert message.startswith(f"nova config cloud 'c': clouds file {secure}: not valid YAML at line 5")
    assert "S3cure" not in message
