"""crashup events on the OpenStack notification bus: the oslo envelope (against oslo.messaging's own code), the
priority table, the durable outbox (a writer killed mid-stream loses no accepted event), the background publisher
(refused, hanging or credential-refusing broker: bounded, one log line), secrets, configuration, the daemons' wiring,
the example consumer's decisions. The last tests run a real throwaway RabbitMQ (tests/lab/rabbitmq.py) when
rabbitmq-server is installed: end to end through `crashup events --follow --bus`, a frozen broker, oslo's listener."""
import datetime
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from crashup_lib import bus, config, log
from crashup_lib.events import bus as events_bus
from crashup_lib.events import contract, outbox as outbox_mod
from crashup_lib import events
from tests.fakes import FakeNova, server

REPO = pathlib.Path(__file__).resolve().parent.parent
NOVA_PY = REPO / ".venv-nova" / "bin" / "python"
PASSWORD = "Pa55-w0rd/x:y@z"                      # '/', ':' and '@' in it: percent-encoded in a URL
QUOTED = "Pa55-w0rd%2Fx%3Ay%40z"
OSLO_ORDER = ["message_id", "publisher_id", "event_type", "priority", "payload", "timestamp", "_unique_id"]


def event(type_=events.HOST_FAILED, subject="compute1", **payload):
    samples = {
        events.HOST_FAILED: {"host": subject, "node": subject, "fenced_at": 1738314900.0, "mode": "notify",
                             "instances": [], "repairs": []},
        events.INSTANCE_EVACUATION_FAILED: {"id": subject, "name": "vm", "source_host": "compute1",
                                            "reason": "no host", "attempts": 3},
        events.HOST_RECOVERED: {"host": subject, "node": subject, "mode": "auto", "evacuated": 1, "failed": 0,
                                "skipped": 0, "duration_s": 1.5},
    }
    return events.make_event(type_, subject, {**samples[type_], **payload})


@pytest.fixture
def logs(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("crashup"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="crashup")
    caplog.set_level(logging.DEBUG)
    return caplog


class FakeLink:
    """bus.Link's interface over a list; `error` raised by each publish, `hang` seconds slept first."""
    where = "rabbit://crashup@fake:5672/"
    timeout = 0.2

    def __init__(self, error=None, hang=0.0):
        self.sent, self.error, self.hang, self.closed = [], error, hang, False

    def publish(self, exchange, key, body, *, queue=None, message_id=None):
        if self.hang:
            time.sleep(self.hang)
        if self.error is not None:
            raise self.error
        self.sent.append((exchange, key, body, queue, message_id))

    def idle(self):
        pass

    def close(self):
        self.closed = True

    def subjects(self):
        return [json.loads(body["oslo.message"])["payload"]["subject"] for _, _, body, _, _ in self.sent]


def publisher(tmp_path, link, **kw):
    kw.setdefault("backoff", (0.02, 0.1))
    kw.setdefault("poll", 0.01)
    return events_bus.Publisher(outbox_mod.Outbox(str(tmp_path / "outbox")), link, **kw)


def wait_for(predicate, timeout=5.0, step=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# --- the envelope ----------------------------------------------------------------------------------------------------

def test_the_envelope_is_oslos_messagingv2_notification():
    e = event()
    body = events_bus.envelope(e)
    assert list(body) == ["oslo.version", "oslo.message"] and body["oslo.version"] == "2.0"
    inner = json.loads(body["oslo.message"])
    assert list(inner) == OSLO_ORDER
    assert inner["message_id"] == e["id"] and inner["_unique_id"] == e["id"].replace("-", "")
    assert inner["event_type"] == "crashup.host.failed" and inner["priority"] == "INFO"
    assert inner["publisher_id"] == f"crashup.{e['source'].partition('@')[2]}"
    assert inner["payload"] == e                            # the event as the schema defines it, id and all
    contract.check_event(inner["payload"])
    # oslo writes str(timeutils.utcnow()): a naive UTC datetime; ours is the event's own time
    assert inner["timestamp"] == str(datetime.datetime.strptime(e["time"], "%Y-%m-%dT%H:%M:%S.%fZ"))
    assert events_bus.oslo_timestamp("2025-01-31T09:15:02.123Z") == "2025-01-31 09:15:02.123000"
    assert events_bus.routing_keys(("notifications", "crashup"), events.INSTANCE_EVACUATION_FAILED) == \
        ["notifications.error", "crashup.error"]


ORACLE = r"""
import datetime, json, sys, uuid
from unittest import mock
from oslo_config import cfg
import oslo_messaging
from oslo_messaging._drivers import common
from oslo_utils import timeutils
data = json.load(sys.stdin)
sent = []
class Conn:
    def notify_send(self, exchange, topic, msg, retry=None, **kw):
        sent.append((exchange, topic, msg))
class Pool:
    def __enter__(self): return Conn()
    def __exit__(self, *exc): return False
conf = cfg.ConfigOpts()
conf([], project="crashup-test")
transport = oslo_messaging.get_notification_transport(conf, url="rabbit://u:p@127.0.0.1:1/")
transport._driver._get_connection = lambda *a, **k: Pool()
ids = iter([uuid.UUID(data["message_id"]), uuid.UUID(hex=data["unique_id"])])
when = datetime.datetime.fromisoformat(data["timestamp"])     # str(datetime): no fraction on a whole second
with mock.patch("uuid.uuid4", lambda: next(ids)), mock.patch.object(timeutils, "utcnow", lambda *a, **k: when):
    notifier = oslo_messaging.Notifier(transport, publisher_id=data["publisher_id"], driver="messagingv2",
                                       topics=["notifications"])
    getattr(notifier, data["priority"].lower())({}, data["event"]["type"], data["event"])
exchange, topic, msg = sent[0]
print(json.dumps({"exchange": exchange, "topic": topic, "msg": msg,
                  "ours": common.deserialize_msg(data["envelope"])}))
"""


@pytest.mark.skipif(not NOVA_PY.exists(), reason="no .venv-nova with oslo.messaging (make nova-venv)")
@pytest.mark.parametrize("type_, whole_second", [(events.HOST_FAILED, False), (events.INSTANCE_EVACUATION_FAILED, False),
                                                  (events.HOST_FAILED, True)])
def test_the_envelope_is_byte_for_byte_what_oslo_messaging_sends(type_, whole_second):
    """oslo.messaging's own Notifier (driver messagingv2, its rabbit driver up to the socket), given the same ids
    and time, sends the very bytes crashup sends, to the same exchange and routing key; and its driver's
    deserialize_msg reads crashup's envelope back to the message. On a whole second too (str() of a datetime then
    has no fraction: one event in a thousand)."""
    e = event(type_, "3f2a9a9e-1111-4222-8333-444455556666" if type_ != events.HOST_FAILED else "compute1")
    if whole_second:
        e["time"] = "2026-12-01T19:18:07.000Z"
    ours = events_bus.envelope(e)
    inner = json.loads(ours["oslo.message"])
    data = {"event": e, "envelope": ours, "message_id": inner["message_id"], "unique_id": inner["_unique_id"],
            "timestamp": inner["timestamp"], "publisher_id": inner["publisher_id"], "priority": inner["priority"]}
    done = subprocess.run([str(NOVA_PY), "-c", ORACLE], input=json.dumps(data), capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"oslo.messaging not importable in .venv-nova: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    oslo = json.loads(done.stdout.strip().splitlines()[-1])
    assert oslo["exchange"] == "openstack"
    assert oslo["topic"] == events_bus.routing_keys(["notifications"], type_)[0]
    assert oslo["msg"] == ours                              # the JSON text inside too, key order and spacing
    assert oslo["ours"] == inner


def test_the_priority_table_covers_every_type_and_says_error_for_failures():
    assert set(events_bus.PRIORITIES) == set(events.TYPES)
    assert set(events_bus.PRIORITIES.values()) <= {"INFO", "ERROR"}
    assert {t for t, p in events_bus.PRIORITIES.items() if p == "ERROR"} == {
        events.INSTANCE_EVACUATION_FAILED, events.RESOURCE_STALE_UNRECOVERABLE, events.HOST_STORM,
        events.HOST_FENCING_UNCONFIRMED, events.INSTANCE_GUEST_LEFT_DOWN}
    assert events_bus.priority("crashup.some.future_type") == "INFO"


def test_a_consumer_reads_the_event_back_and_ignores_everything_else():
    e = event()
    body = json.dumps(events_bus.envelope(e)).encode()
    assert events_bus.event_from_body(body) == e
    assert events_bus.event_from_body(events_bus.message(e)) == e                    # a bare (v1) message too
    nova = {"oslo.version": "2.0", "oslo.message": json.dumps({"event_type": "compute.instance.update",
                                                               "payload": {}})}
    for other in (json.dumps(nova), b"\xff\xfe", b"[]", b"{}", b'{"oslo.message": "{"}', b"NaN",
                  json.dumps({"oslo.message": json.dumps({"event_type": "crashup.x", "payload": {"id": 1}})})):
        assert events_bus.event_from_body(other) is None


# --- the outbox ------------------------------------------------------------------------------------------------------

def test_the_outbox_keeps_events_in_order_in_private_files(tmp_path):
    box = outbox_mod.Outbox(str(tmp_path / "outbox"))
    sent = [event(subject=f"compute{i}") for i in range(5)]
    names = [box.append(e) for e in sent]
    assert box.pending() == names == sorted(names)
    assert [box.read(n)["id"] for n in names] == [e["id"] for e in sent]
    assert oct(os.stat(box.directory).st_mode & 0o777) == "0o750"
    assert all(os.stat(os.path.join(box.directory, n)).st_mode & 0o777 == 0o640 for n in names)
    box.remove(names[0])
    assert box.pending() == names[1:] and box.read(names[0]) is None
    with pytest.raises(ValueError):
        outbox_mod.Outbox("relative/dir")


def test_a_new_process_appends_after_what_an_old_one_left_whatever_the_clock(tmp_path, monkeypatch):
    first = outbox_mod.Outbox(str(tmp_path / "o"))
    old = first.append(event(subject="old"))
    monkeypatch.setattr(time, "time_ns", lambda: 1000)           # the clock stepped back (NTP)
    new = outbox_mod.Outbox(str(tmp_path / "o")).append(event(subject="new"))
    assert first.pending() == [old, new]


def test_an_outbox_that_cannot_be_written_raises_a_journal_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = events_bus.BusSink(outbox_mod.Outbox(str(blocker / "outbox")))
    with pytest.raises(events.JournalError, match="events outbox .*: cannot append"):
        sink.send(event())
    emitter = events.Emitter([sink])                            # the emitter raises it after the others had it
    with pytest.raises(outbox_mod.OutboxError):
        emitter.emit(event())


WRITER = r"""
import sys
sys.path.insert(0, {repo!r})
from crashup_lib import events
from crashup_lib.events.outbox import Outbox
box = Outbox({directory!r})
for i in range(100000):
    box.append(events.make_event("crashup.host.recovered", f"e{{i:06d}}", {{"host": "h", "node": "h", "mode": "auto",
               "evacuated": 0, "failed": 0, "skipped": 0, "duration_s": 0}}))
    print(i, flush=True)                    # accepted: append() returned
"""


def test_a_writer_killed_mid_stream_loses_no_accepted_event_and_the_next_process_replays_them_in_order(tmp_path):
    directory = str(tmp_path / "outbox")
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), directory=directory)],
                            stdout=subprocess.PIPE, text=True)
    accepted = [int(proc.stdout.readline()) for _ in range(30)]
    proc.send_signal(signal.SIGKILL)                            # kill -9, mid-append most likely
    proc.wait()
    accepted += [int(line) for line in proc.stdout.read().split()]
    box = outbox_mod.Outbox(directory)
    left = [box.read(n)["subject"] for n in box.pending()]
    # every accepted event is there, in order, with nothing missing between them (the last append may have
    # landed without being reported: that is allowed, a torn one is not)
    assert left[:len(accepted)] == [f"e{i:06d}" for i in accepted]
    assert left == [f"e{i:06d}" for i in range(len(left))] and len(left) - len(accepted) <= 1
    box.clean(now=time.time() + outbox_mod.STALE_TMP + 1)        # a temporary file of the killed append, if any
    assert all(n.startswith(".lock") or n in box.pending() for n in os.listdir(directory))
    link = FakeLink()
    pub = publisher(tmp_path, link).start()                     # a new process's publisher: replays at start
    assert wait_for(lambda: len(link.sent) == len(left))
    assert pub.close(2)
    assert link.subjects() == left and box.pending() == []


def test_a_file_that_is_not_an_event_is_set_aside_and_the_rest_goes_on(tmp_path, logs):
    box = outbox_mod.Outbox(str(tmp_path / "outbox"))
    box.append(event(subject="a"))
    bad = box.append(event(subject="b"))
    pathlib.Path(box.directory, bad).write_bytes(b"\x00garbage")
    box.append(event(subject="c"))
    link = FakeLink()
    pub = publisher(tmp_path, link).start()
    assert wait_for(lambda: len(link.sent) == 2)
    pub.close(1)
    assert link.subjects() == ["a", "c"]
    assert os.path.exists(os.path.join(box.directory, "bad", bad))
    assert sum("is not an event" in r.getMessage() for r in logs.records) == 1


# --- the publisher ---------------------------------------------------------------------------------------------------

def test_while_the_broker_refuses_events_wait_and_one_line_says_so_then_one_says_it_is_back(tmp_path, logs):
    link = FakeLink(error=bus.Unreachable("rabbit://crashup@fake:5672/: connection refused"))
    pub = publisher(tmp_path, link).start()
    sink = events_bus.BusSink(pub.outbox, pub)
    sent = [event(subject=f"compute{i}") for i in range(5)]
    for e in sent:
        sink.send(e)
    time.sleep(0.5)                                             # many retries
    assert len(pub.outbox) == 5 and link.sent == []
    down = [r for r in logs.records if "unreachable" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(down) == 1 and "connection refused" in down[0].getMessage() and " kept in " in down[0].getMessage()
    link.error = None
    assert wait_for(lambda: len(link.sent) == 5)
    assert link.subjects() == [e["subject"] for e in sent]      # in order
    assert [m for _, _, _, _, m in link.sent] == [e["id"] for e in sent]
    assert sum("reachable again" in r.getMessage() for r in logs.records) == 1
    assert pub.close(1) and link.closed and len(pub.outbox) == 0


def test_wrong_credentials_are_named_once_and_a_fixed_url_file_is_taken_without_a_restart(tmp_path, logs):
    refused = FakeLink(error=bus.Credentials("rabbit://crashup@fake:5672/: the broker refused the credentials"))
    good = FakeLink()
    fixed = threading.Event()
    pub = publisher(tmp_path, refused, relink=lambda: good if fixed.is_set() else None).start()
    sink = events_bus.BusSink(pub.outbox, pub)
    for i in range(3):
        sink.send(event(subject=f"c{i}"))
    time.sleep(0.4)
    lines = [r for r in logs.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR and "credentials" in lines[0].getMessage()
    fixed.set()
    assert wait_for(lambda: len(good.sent) == 3)
    assert good.subjects() == ["c0", "c1", "c2"] and refused.closed
    pub.close(1)


def test_each_event_goes_to_every_topic_with_its_priority(tmp_path):
    link = FakeLink()
    pub = publisher(tmp_path, link, exchange="nova", topics=("notifications", "crashup")).start()
    sink = events_bus.BusSink(pub.outbox, pub)
    sink.send(event(events.INSTANCE_EVACUATION_FAILED, "3f2a9a9e-1111-4222-8333-444455556666"))
    assert wait_for(lambda: len(link.sent) == 2)
    pub.close(1)
    assert [(x, k, q) for x, k, _, q, _ in link.sent] == [("nova", "notifications.error", "notifications.error"),
                                                          ("nova", "crashup.error", "crashup.error")]


def test_emit_returns_at_once_while_the_publisher_hangs_and_close_is_bounded(tmp_path):
    link = FakeLink(hang=3.0)
    pub = publisher(tmp_path, link).start()
    emitter = events.Emitter([events.JournalSink(str(tmp_path / "events.jsonl")), events_bus.BusSink(pub.outbox, pub)])
    for i in range(5):
        start = time.monotonic()
        emitter.publish(events.HOST_FAILED, f"c{i}", event(subject=f"c{i}")["payload"])
        assert time.monotonic() - start < 0.05
    start = time.monotonic()
    emitter.close(1.0)                                          # the fake hangs 3 s: close gives up at its bound
    assert time.monotonic() - start < 1.5
    assert len(outbox_mod.Outbox(str(tmp_path / "outbox"))) >= 4   # kept for the next process


def test_two_publishers_on_one_outbox_drain_it_once(tmp_path):
    a, b = FakeLink(), FakeLink()
    pa, pb = publisher(tmp_path, a).start(), publisher(tmp_path, b).start()
    sink_b = events_bus.BusSink(pb.outbox, pb)                 # the sweep daemon appends; one drains
    for i in range(20):
        sink_b.send(event(subject=f"c{i:02d}"))
    assert wait_for(lambda: len(a.sent) + len(b.sent) == 20)
    time.sleep(0.1)
    pa.close(1), pb.close(1)
    assert (a.sent == []) != (b.sent == [])                     # one of them did it all
    assert sorted(a.subjects() + b.subjects()) == (a.subjects() + b.subjects()) == [f"c{i:02d}" for i in range(20)]


@pytest.fixture
def silent_server():
    """A TCP server that accepts and never says a word (a frozen broker looks like this: the kernel accepts)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for s in held:
        s.close()


def url(port, password=PASSWORD):
    return bus.parse_transport_url(f"rabbit://crashup:{password.replace('/', '%2F').replace(':', '%3A').replace('@', '%40')}"
                                   f"@127.0.0.1:{port}/crashup")


def test_a_publish_to_a_silent_or_refusing_broker_raises_within_its_bound(silent_server, logs):
    link = bus.Link(url(silent_server), timeout=0.5)
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(bus.TimedOut):
            link.publish("openstack", "notifications.info", {"x": 1}, queue="notifications.info")
        assert time.monotonic() - start < 1.0
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    start = time.monotonic()
    with pytest.raises(bus.Unreachable, match="connection refused"):
        bus.Link(url(port), timeout=0.5).publish("openstack", "k", {"x": 1})
    assert time.monotonic() - start < 0.5
    assert PASSWORD not in logs.text and QUOTED not in logs.text


def test_errors_are_classified(silent_server):
    class AccessRefused(Exception):
        code = 403

    class NotAllowed(Exception):
        code = 530
    assert isinstance(bus.classify(AccessRefused("x"), "w", connecting=True), bus.Credentials)
    assert isinstance(bus.classify(AccessRefused("x"), "w", connecting=False), bus.Rejected)
    assert isinstance(bus.classify(NotAllowed("vhost"), "w", connecting=True), bus.Rejected)
    assert isinstance(bus.classify(socket.timeout(), "w", connecting=False), bus.TimedOut)
    assert isinstance(bus.classify(ConnectionResetError(104, "reset"), "w", connecting=False), bus.Unreachable)


# --- the transport URL, secrets, configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("text, hosts, vhost, ssl", [
    ("rabbit://u:p@h:5672/v", [("h", 5672, "u", "p")], "v", False),
    ("rabbit://u:p@h/", [("h", 5672, "u", "p")], "/", False),
    ("rabbit://u:p@h", [("h", 5672, "u", "p")], "/", False),
    (f"rabbit://crashup:{QUOTED}@10.0.0.1:5673/%2Fnova", [("10.0.0.1", 5673, "crashup", PASSWORD)], "/nova", False),
    ("rabbit://a:1@h1:5672,b:2@[fd00::1]:5671/v?ssl=1", [("h1", 5672, "a", "1"), ("fd00::1", 5671, "b", "2")],
     "v", True),
    ("amqp://u:p@h?ssl=true", [("h", 5671, "u", "p")], "/", True),
])
def test_transport_urls_as_oslo_writes_them(text, hosts, vhost, ssl):
    parsed = bus.parse_transport_url(text)
    assert [(e.host, e.port, e.user, e.password) for e in parsed.endpoints] == hosts
    assert (parsed.virtual_host, parsed.ssl) == (vhost, ssl)
    shown = repr(parsed) + parsed.safe()
    assert all(e.password not in shown.replace(f"{e.user}@", "") for e in parsed.endpoints if len(e.password) > 2)
    assert PASSWORD not in shown


@pytest.mark.parametrize("text", ["http://u:p@h/", "rabbit://h:5672/", f"rabbit://crashup:{PASSWORD}x@h/",
                                  "rabbit://u:secretpw@h:99999/", "rabbit://u:secretpw@h/v?heartbeat=1", "rabbit://"])
def test_a_bad_transport_url_is_refused_without_showing_it(text):
    with pytest.raises(ValueError) as info:
        bus.parse_transport_url(text)
    assert "secretpw" not in str(info.value) and PASSWORD not in str(info.value)


def write_url(path, text, mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("content, mode, message", [
    (None, 0o600, "no such file"),
    (f"rabbit://crashup:{QUOTED}@h/\n", 0o644, "mode 0644 (readable by others"),
    (f"rabbit://crashup:{QUOTED}@h/\n", 0o660, "writable by its group"),
    (f"rabbit://crashup:{QUOTED}@h/\nrabbit://crashup:{QUOTED}@i/\n", 0o600, "one transport URL, not 2"),
    ("# nothing\n", 0o600, "one transport URL, not none"),
    (f"http://crashup:{QUOTED}@h/\n", 0o600, "not a transport URL"),
    (b"\xff" * 10, 0o600, "not UTF-8"),
    ("x" * 5000, 0o600, "larger than 4 KiB"),
])
def test_a_bad_transport_url_file_is_one_line_without_the_password(tmp_path, content, mode, message):
    path = tmp_path / "url"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        path.chmod(mode)
    with pytest.raises(config.ConfigError) as info:
        bus.read_transport_url(str(path))
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("config: transport_url_file")
    assert PASSWORD not in text and QUOTED not in text
    assert PASSWORD in log._secrets or content is None or "crashup:" not in str(content)


def test_the_password_is_registered_as_soon_as_it_is_read(tmp_path):
    path = write_url(tmp_path / "url", f"# the bus\nrabbit://crashup:{QUOTED}@h:5672/v\n")
    parsed = bus.read_transport_url(path)
    assert parsed.endpoints[0].password == PASSWORD
    assert log.redact(f"x {PASSWORD} y {QUOTED}") == f"x {log.REDACTED} y {log.REDACTED}"
    assert PASSWORD not in repr(parsed)


def test_the_bus_options_and_their_errors(tmp_path):
    cfg = config.load(os.devnull, env={})
    assert (cfg.transport_url_file, cfg.notification_topics, cfg.control_exchange, cfg.publish_timeout,
            cfg.outbox_dir) == ("", ("notifications",), "openstack", 2.0, "/var/lib/crashup/outbox")
    cfg = config.load(os.devnull, env={"CRASHUP_NOTIFICATION_TOPICS": "notifications, crashup"})
    assert cfg.notification_topics == ("notifications", "crashup")
    for var, value in (("NOTIFICATION_TOPICS", ""), ("NOTIFICATION_TOPICS", "a/b"), ("CONTROL_EXCHANGE", "a b"),
                       ("PUBLISH_TIMEOUT", "0"), ("PUBLISH_TIMEOUT", "5m"), ("TRANSPORT_URL_FILE", "rel/path"),
                       ("OUTBOX_DIR", "outbox")):
        with pytest.raises(config.ConfigError) as info:
            config.load(os.devnull, env={f"CRASHUP_{var}": value})
        assert var.lower() in str(info.value) and "\n" not in str(info.value)
    assert "transport_url_file" in config.sample()


def test_no_password_reaches_any_log_line_or_error(tmp_path, logs, silent_server):
    path = write_url(tmp_path / "url", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/crashup\n")
    cfg = {"transport_url_file": path, "outbox_dir": str(tmp_path / "outbox"), "publish_timeout": 0.3}
    sink = events_bus.from_config(cfg)
    sink.publisher.backoff = (0.05, 0.1)
    sink.send(event())
    assert wait_for(lambda: sink.publisher.state == "unreachable", 3)
    sink.close(0.5)
    logging.getLogger("crashup.test").warning("the url was rabbit://crashup:%s@h/", PASSWORD)   # redacted too
    assert "unreachable" in logs.text
    handler = logging.StreamHandler(stream := __import__("io").StringIO())
    handler.addFilter(log.RedactingFilter())
    for record in logs.records:
        handler.handle(record)
    assert PASSWORD not in stream.getvalue() and QUOTED not in stream.getvalue()
    assert all(PASSWORD not in r.getMessage() for r in logs.records if r.name.startswith("crashup.events"))


# --- the command, the emitter, the daemons ---------------------------------------------------------------------------

def crashup(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "crashup_lib.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=str(REPO))


def conf(tmp_path, url_file="", more="", **extra):
    path = tmp_path / "crashup.conf"
    lines = ["[events]", f"journal = {tmp_path / 'events.jsonl'}", f"outbox_dir = {tmp_path / 'outbox'}"]
    if url_file:
        lines.append(f"transport_url_file = {url_file}")
    lines += [f"{k} = {v}" for k, v in extra.items()] + [more]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_crashup_events_bus_says_what_is_wrong_in_one_line(tmp_path, silent_server):
    done = crashup("--config", conf(tmp_path), "events", "--follow", "--bus")
    assert done.returncode == 2 and done.stderr.strip() == \
        "crashup: no bus configured ([events] transport_url_file)"
    done = crashup("--config", conf(tmp_path), "events", "--bus")
    assert done.returncode == 2 and "--bus goes with --follow" in done.stderr
    bad = write_url(tmp_path / "url", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/x\n", 0o644)
    done = crashup("--config", conf(tmp_path, bad), "events", "--follow", "--bus")
    assert done.returncode == 2 and "chmod 600" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    good = write_url(tmp_path / "url2", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/x\n")
    done = crashup("--config", conf(tmp_path, good, publish_timeout="0.5"), "events", "--follow", "--bus")
    assert done.returncode == 1 and "no answer" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert PASSWORD not in done.stderr + done.stdout and QUOTED not in done.stderr + done.stdout


def test_the_emitter_builds_the_bus_sink_and_close_stops_its_publisher(tmp_path, silent_server):
    path = write_url(tmp_path / "url", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/crashup\n")
    cfg = {"journal": str(tmp_path / "events.jsonl"), "transport_url_file": path,
           "outbox_dir": str(tmp_path / "outbox"), "publish_timeout": 0.3}
    emitter = events.Emitter.from_config(cfg)
    assert [s.name for s in emitter.sinks] == ["bus", "journal"]          # the outbox first: see from_config
    assert emitter.sinks[0].durable
    emitter.emit(event())
    start = time.monotonic()
    assert emitter.close(1.0)
    assert time.monotonic() - start < 1.2
    assert not emitter.sinks[0].publisher._thread.is_alive()
    assert len(outbox_mod.Outbox(cfg["outbox_dir"])) == 1       # the broker never answered: kept
    with pytest.raises(config.ConfigError, match="transport_url_file"):
        events.Emitter.from_config({**cfg, "transport_url_file": str(tmp_path / "missing")})


def test_the_outbox_has_the_event_before_the_journal_does(tmp_path, silent_server):
    """A process killed between its two durable writes must not leave an event the bus never gets: the outbox is
    written first."""
    path = write_url(tmp_path / "url", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/crashup\n")
    cfg = {"journal": str(tmp_path / "events.jsonl"), "transport_url_file": path,
           "outbox_dir": str(tmp_path / "outbox"), "publish_timeout": 0.3}
    emitter = events.Emitter.from_config(cfg)
    journal = emitter.sinks[1]
    boxed = []
    real_send = journal.send
    journal.send = lambda e: boxed.append(len(outbox_mod.Outbox(cfg["outbox_dir"]))) or real_send(e)
    emitter.emit(event())
    assert emitter.close(1.0)
    assert boxed == [1]                                           # in the outbox when the journal was written


def test_the_recovery_daemon_starts_the_publisher_and_stops_it_on_sigterm(tmp_path, silent_server):
    from crashup_lib.recovery import daemon as recovery_daemon
    from tests.fakes import FakeCluster
    path = write_url(tmp_path / "url", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/crashup\n")
    cfg = config.load(conf(tmp_path, path, publish_timeout="0.3"), env={})
    box = outbox_mod.Outbox(cfg.outbox_dir)
    box.append(event(subject="left-by-a-previous-daemon"))
    d = recovery_daemon.Daemon(cfg, state_dir=str(tmp_path / "state"), cluster=FakeCluster(),
                               nova_factory=lambda: FakeNova())
    runner = threading.Thread(target=d.run)
    runner.start()
    publisher_ = d.emitter().sinks[0].publisher
    assert wait_for(lambda: publisher_.state == "unreachable", 3)   # it tried the leftover at once
    start = time.monotonic()
    d.stop()
    runner.join(recovery_daemon.EMITTER_CLOSE + 2)
    assert not runner.is_alive() and not publisher_._thread.is_alive()
    assert time.monotonic() - start < recovery_daemon.EMITTER_CLOSE + 1
    assert len(box) == 1


def test_the_sweep_closes_its_emitter_and_the_publisher_with_it(tmp_path, silent_server, monkeypatch):
    from crashup_lib.sweep import daemon as sweep_daemon
    path = write_url(tmp_path / "url", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/crashup\n")
    more = f"[sweep]\nnova_connection = sqlite:///{tmp_path / 'nova.db'}\nlibvirt_uri =\n"
    cfg = config.load(conf(tmp_path, path, more, publish_timeout="0.3"), env={})
    made = []
    real = events.Emitter.from_config
    monkeypatch.setattr(events.Emitter, "from_config", classmethod(
        lambda cls, c, **kw: made.append(real(c, **kw)) or made[-1]))
    out = __import__("io").StringIO()
    start = time.monotonic()
    assert sweep_daemon.run(cfg, "once", out=out) in (0, 1)         # an empty database: the round fails, fine
    assert time.monotonic() - start < sweep_daemon.EMITTER_CLOSE
    assert [s.name for s in made[0].sinks] == ["bus", "journal"]
    assert not made[0].sinks[0].publisher._thread.is_alive()


def test_crashup_recover_closes_its_emitter_even_when_the_recovery_fails(tmp_path, silent_server, monkeypatch):
    """`crashup recover` runs one recovery in the foreground: its publisher is stopped before the command ends, within
    the daemon's bound, whatever the recovery did (what the broker did not take stays in the outbox)."""
    import argparse
    from crashup_lib import cli, pacemaker
    from crashup_lib.recovery import daemon as recovery_daemon
    path = write_url(tmp_path / "url", f"rabbit://crashup:{QUOTED}@127.0.0.1:{silent_server}/crashup\n")
    cfg_path = conf(tmp_path, path, publish_timeout="0.3")
    request = type("Req", (), {"open": True, "hold": pacemaker.Hold.NONE, "fenced_at": 0.0})()
    monkeypatch.setattr(pacemaker, "Cluster", lambda: type("C", (), {"request": lambda self, node: request,
                                                                      "running_on": lambda self, rsc: set()})())
    emitters = []

    class Failing:
        def __init__(self, daemon):
            self.daemon = daemon

        def recover(self, req):
            emitters.append(self.daemon.emitter())
            emitters[-1].emit(event(subject="compute1"))
            raise RuntimeError("nova went away")

    monkeypatch.setattr(recovery_daemon.Daemon, "recovery", lambda self: Failing(self))
    args = argparse.Namespace(config=cfg_path, node="compute1", force=False)
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        cli._recover(args)
    assert time.monotonic() - start < recovery_daemon.EMITTER_CLOSE + 1
    publisher_ = emitters[0].sinks[0].publisher
    assert not publisher_._thread.is_alive()
    assert len(publisher_.outbox) == 1                               # the broker is silent: kept for the daemon


# --- the example consumer ----------------------------------------------------------------------------------------------

def load_consumer():
    import importlib.util
    spec = importlib.util.spec_from_file_location("example_consumer", REPO / "docs" / "examples" / "consumer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failed_event(servers):
    return events.make_event(events.HOST_FAILED, "compute1", {
        "host": "compute1", "node": "compute1", "fenced_at": 1738314900.0, "mode": "notify", "repairs": [],
        "instances": [{"id": s.id, "name": s.name, "status": s.status, "task_state": None, "project_id": "p"}
                      for s in servers]})


def test_the_example_consumer_evacuates_the_active_servers_to_the_least_loaded_hosts_then_releases():
    consumer = load_consumer()
    on_failed = [server("a"), server("b"), server("off", status="SHUTOFF"), server("c")]
    cloud = FakeNova(on_failed + [server("x", host="compute2")], up=("compute2", "compute3"))
    e = failed_event(on_failed)
    released = []
    lines = consumer.recover(events_bus.event_from_body(json.dumps(events_bus.envelope(e))), cloud,
                             released.append, sleep=lambda s: None)
    assert [(sid, target) for sid, target, _ in cloud.evacuations] == [
        ("a", "compute3"), ("b", "compute2"), ("c", "compute3")]      # compute2 had one server already
    assert released == ["compute1"] and lines[-1] == "compute1: released"
    assert cloud.server("off").host == "compute1"                       # left for its owner
    # delivered again (at least once): nothing is evacuated twice
    cloud.evacuations.clear()
    lines = consumer.recover(e, cloud, released.append, sleep=lambda s: None)
    assert cloud.evacuations == [] and all("skipped" in line for line in lines[:-1])
    dry = FakeNova([server("a")], up=("compute2",))
    assert consumer.recover(failed_event([server("a")]), dry, released.append, dry_run=True) == \
        ["a: evacuate to compute2 (dry run)"] and dry.evacuations == []
    with pytest.raises(RuntimeError, match="no compute host up"):
        consumer.plan(e, FakeNova(up=()).services(), {})


# --- against a real RabbitMQ (tests/lab/rabbitmq.py), when rabbitmq-server is installed ------------------------------

def _rabbitmq_unavailable():
    try:
        from tests.lab import rabbitmq
    except ImportError:
        return "tests/lab/rabbitmq.py is not there"
    return rabbitmq.available()


needs_broker = pytest.mark.skipif(bool(_rabbitmq_unavailable()), reason=f"needs a RabbitMQ: {_rabbitmq_unavailable()}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    from tests.lab import rabbitmq
    b = rabbitmq.Broker(tmp_path_factory.mktemp("rabbitmq"))
    b.start()
    yield b
    b.stop()


def broker_conf(tmp_path, broker, **extra):
    url_file = broker.write_url_file(tmp_path / "bus-url")
    return conf(tmp_path, str(url_file), **extra)


def read_lines(stream, into: list):
    for line in stream:
        into.append(line)


@needs_broker
def test_end_to_end_a_frozen_broker_delays_no_emit_and_loses_no_event(tmp_path, broker):
    path = broker_conf(tmp_path, broker, publish_timeout="1")
    cfg = config.load(path, env={})
    follower = subprocess.Popen([sys.executable, "-m", "crashup_lib.cli", "--config", path, "events", "--follow",
                                 "--bus", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=str(REPO))
    printed: list = []
    threading.Thread(target=read_lines, args=(follower.stdout, printed), daemon=True).start()
    emitter = events.Emitter.from_config(cfg)
    try:
        def ids():
            return [json.loads(line)["id"] for line in printed]
        probes = []
        end = time.monotonic() + 20
        while not printed and time.monotonic() < end:              # until the follower's queue is bound
            probes.append(emitter.emit(event(subject="probe"))["id"])
            time.sleep(0.2)
        assert printed, follower.stderr.read() if follower.poll() is not None else "follower printed nothing"
        assert wait_for(lambda: len(ids()) >= 1)
        sent = [emitter.emit(event(events.HOST_RECOVERED, f"before{i}")) for i in range(3)]
        assert wait_for(lambda: all(e["id"] in ids() for e in sent), 10)
        broker.freeze()
        try:
            for i in range(5):
                start = time.monotonic()
                sent.append(emitter.emit(event(events.INSTANCE_EVACUATION_FAILED,
                                               f"3f2a9a9e-1111-4222-8333-44445555666{i}")))
                assert time.monotonic() - start < 0.05             # the recovery path is not delayed
            time.sleep(1.5)
        finally:
            broker.thaw()
        sent += [emitter.emit(event(events.HOST_RECOVERED, f"after{i}")) for i in range(3)]
        assert wait_for(lambda: all(e["id"] in ids() for e in sent), 30), (len(ids()), follower.stderr)
        got = [i for i in ids() if i not in probes]
        assert got == [e["id"] for e in sent]                      # in order, each once, none lost
        assert len(outbox_mod.Outbox(cfg.outbox_dir)) == 0
        start = time.monotonic()
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(10) == 0 and time.monotonic() - start < 5
    finally:
        emitter.close(3)
        if follower.poll() is None:
            follower.kill()


@needs_broker
def test_events_a_killed_process_left_are_published_by_the_next_one(tmp_path, broker):
    refused = tmp_path / "refused-url"
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dead = port.getsockname()[1]
    port.close()
    write_url(refused, broker.transport_url().replace(f":{broker.port}/", f":{dead}/") + "\n")
    script = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
              "from crashup_lib import events\n"
              f"e = events.Emitter.from_config({{'transport_url_file': {str(refused)!r}, "
              f"'outbox_dir': {str(tmp_path / 'outbox')!r}}})\n"
              "for i in range(4):\n"
              "    e.publish('crashup.host.recovered', f'h{i}', {'host': 'h', 'node': 'h', 'mode': 'auto', "
              "'evacuated': 0, 'failed': 0, 'skipped': 0, 'duration_s': 0})\n"
              "print('accepted', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "accepted"
    proc.kill()
    proc.wait()
    cfg = config.load(broker_conf(tmp_path, broker), env={})
    got, stop = [], threading.Event()
    url_ = bus.read_transport_url(cfg.transport_url_file)
    consumer = threading.Thread(target=bus.consume, args=(url_, "openstack", ["notifications.*"],
                                                          lambda b: got.append(events_bus.event_from_body(b)), stop),
                                kwargs={"queue": "crashup-test-replay"}, daemon=True)
    consumer.start()
    time.sleep(1.0)
    sink = events_bus.from_config(cfg)                          # the next daemon: replays at start
    try:
        assert wait_for(lambda: len(got) == 4, 20)
        assert [e["subject"] for e in got] == ["h0", "h1", "h2", "h3"]
    finally:
        sink.close(2)
        stop.set()
        consumer.join(5)


@needs_broker
def test_wrong_credentials_on_a_real_broker_are_one_error_line(tmp_path, broker, logs):
    path = tmp_path / "bad-url"
    write_url(path, broker.transport_url().replace(f":{broker.password}@", f":{QUOTED}@") + "\n")
    sink = events_bus.from_config({"transport_url_file": str(path), "outbox_dir": str(tmp_path / "outbox")})
    sink.publisher.backoff = (0.05, 0.1)
    for i in range(3):
        sink.send(event(subject=f"c{i}"))
    assert wait_for(lambda: sink.publisher.state == "credentials", 5)
    time.sleep(0.5)
    sink.close(1)
    lines = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING and r.name.startswith("crashup")]
    assert len(lines) == 1 and "refused the credentials" in lines[0]
    assert PASSWORD not in logs.text and QUOTED not in logs.text and broker.password not in logs.text


LISTENER = r"""
import json, sys, threading
from oslo_config import cfg
import oslo_messaging
conf = cfg.ConfigOpts()
conf([], project="crashup-test")
transport = oslo_messaging.get_notification_transport(conf, url=sys.stdin.readline().strip())
got = threading.Event()
out = threading.Lock()       # the threading executor calls error() from several threads: one whole line each
class Endpoint:
    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        line = json.dumps({"publisher_id": publisher_id, "event_type": event_type, "payload": payload,
                           "message_id": metadata["message_id"], "timestamp": metadata["timestamp"]})
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if metadata["message_id"] == wanted:
            got.set()
wanted = sys.stdin.readline().strip()
listener = oslo_messaging.get_notification_listener(transport, [oslo_messaging.Target(topic="notifications")],
                                                    [Endpoint()], executor="threading")
listener.start()
with out:                    # earlier tests' ERRORs still queued may come first: whole lines, before or after it
    sys.stdout.write("ready\n")
    sys.stdout.flush()
got.wait(30)
listener.stop()
listener.wait()
"""


@needs_broker
@pytest.mark.skipif(not NOVA_PY.exists(), reason="no .venv-nova with oslo.messaging (make nova-venv)")
def test_oslo_messagings_own_listener_receives_crashups_notification(tmp_path, broker):
    listener = subprocess.Popen([str(NOVA_PY), "-c", LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    try:
        e = event(events.INSTANCE_EVACUATION_FAILED, "3f2a9a9e-1111-4222-8333-444455556666")
        listener.stdin.write(broker.transport_url() + "\n" + e["id"] + "\n")
        listener.stdin.flush()
        while (line := listener.stdout.readline()).strip() != "ready":    # the queue's earlier ERRORs may come first
            assert line, listener.stderr.read()[-2000:]
        link = bus.Link(bus.parse_transport_url(broker.transport_url()), 2.0)
        link.publish("openstack", "notifications.error", events_bus.envelope(e), queue="notifications.error")
        link.close()
        got = {}
        while got.get("message_id") != e["id"]:                   # the queue may hold earlier tests' ERRORs
            line = listener.stdout.readline()
            assert line, listener.stderr.read()[-2000:]
            got = json.loads(line)
        assert got == {"publisher_id": events_bus.publisher_id(e), "event_type": e["type"], "payload": e,
                       "message_id": e["id"], "timestamp": events_bus.oslo_timestamp(e["time"])}
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait()


@needs_broker
def test_a_broker_restart_is_one_lost_line_and_one_back_line_and_loses_no_event(tmp_path, broker, logs):
    path = broker_conf(tmp_path, broker, publish_timeout="1")
    cfg = config.load(path, env={})
    follower = subprocess.Popen([sys.executable, "-m", "crashup_lib.cli", "--config", path, "events", "--follow",
                                 "--bus", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=str(REPO))
    printed: list = []
    threading.Thread(target=read_lines, args=(follower.stdout, printed), daemon=True).start()
    sink = events_bus.from_config(cfg)
    emitter = events.Emitter([sink])
    try:
        while not printed:                                         # until the follower's queue is bound
            emitter.emit(event(subject="probe"))
            time.sleep(0.2)
        broker.kill()                                              # a crash: resets, then refusals
        sent = [emitter.emit(event(events.HOST_RECOVERED, f"during{i}")) for i in range(3)]
        assert wait_for(lambda: sink.publisher.state == "unreachable", 10)
        broker.start()
        sent += [emitter.emit(event(events.HOST_RECOVERED, f"after{i}")) for i in range(2)]
        assert wait_for(lambda: len(sink.outbox) == 0, 30)         # all published once the broker is back
        assert sink.publisher.state == "up"
        # the broker's default queue kept them (the follower's private queue was gone with the broker)
        got, stop = [], threading.Event()
        url_ = bus.read_transport_url(cfg.transport_url_file)
        drain = threading.Thread(target=bus.consume, args=(url_, "openstack", ["notifications.info"],
                                                           lambda b: got.append(events_bus.event_from_body(b)), stop),
                                 kwargs={"queue": "notifications.info"}, daemon=True)
        drain.start()
        assert wait_for(lambda: all(e["id"] in [g["id"] for g in got] for e in sent), 15)
        order = [g["id"] for g in got if g["subject"] != "probe"]
        assert [i for i in order if i in {e["id"] for e in sent}] == [e["id"] for e in sent]
        stop.set()
        drain.join(5)
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(10) == 0
        err = follower.stderr.read()
        assert err.count("crashup: bus lost:") == 1 and err.count("crashup: bus back:") == 1, err
        lines = [r.getMessage() for r in logs.records if r.name == "crashup.events" and r.levelno >= logging.INFO
                 and ("unreachable" in r.getMessage() or "reachable again" in r.getMessage())]
        assert len(lines) == 2, lines
        assert broker.password not in err + logs.text
    finally:
        emitter.close(3)
        if follower.poll() is None:
            follower.kill()
        if broker.state() != "running":
            broker.start()


@needs_broker
def test_a_consumers_own_queue_in_notification_queues_misses_nothing_across_a_broker_restart(tmp_path, broker):
    """A broker restart drops the non-durable exchange and every binding to it: a consumer's durable queue named in
    notification_queues is bound again by crashup's publisher before its next publish, so what crashup publishes
    before the consumer is back reaches it; a queue not named there misses it (the reason for the option)."""
    path = broker_conf(tmp_path, broker, notification_queues="e2e-own, e2e-own2", publish_timeout="1")
    cfg = config.load(path, env={})
    assert cfg.notification_queues == ("e2e-own", "e2e-own2")
    url_ = bus.read_transport_url(cfg.transport_url_file)
    sink = events_bus.from_config(cfg)
    emitter = events.Emitter([sink])
    got: dict[str, list] = {"e2e-own": [], "e2e-not-named": []}
    try:
        first = emitter.emit(event(subject="before"))
        assert wait_for(lambda: len(sink.outbox) == 0, 15)
        stop = threading.Event()
        drain = threading.Thread(target=bus.consume, args=(url_, "openstack", ["notifications.*"],
                                                           lambda b: None, stop),
                                 kwargs={"queue": "e2e-not-named"}, daemon=True)
        drain.start()                                              # declared and bound, then gone
        assert wait_for(lambda: "e2e-not-named" in broker.ctl("list_queues", "-p", broker.vhost, "--quiet",
                                                              "name").stdout.split(), 15)
        stop.set()
        drain.join(5)
        broker.kill()
        broker.start()                                             # the exchange and both queues' bindings are gone
        after = emitter.emit(event(events.HOST_RECOVERED, subject="after"))
        assert wait_for(lambda: len(sink.outbox) == 0, 30)
        for name, into in got.items():                             # the consumers come back only now
            stop = threading.Event()
            reader = threading.Thread(target=bus.consume, args=(url_, "openstack", ["notifications.info"],
                                                                lambda b, into=into: into.append(
                                                                    events_bus.event_from_body(b)), stop),
                                      kwargs={"queue": name}, daemon=True)
            reader.start()
            wait_for(lambda: after["id"] in [e["id"] for e in into if e], 3 if name == "e2e-not-named" else 15)
            stop.set()
            reader.join(5)
        assert [e["id"] for e in got["e2e-own"]] == [first["id"], after["id"]]
        assert after["id"] not in [e["id"] for e in got["e2e-not-named"] if e]
    finally:
        emitter.close(3)
        if broker.state() != "running":
            broker.start()
        for name in ("e2e-own", "e2e-own2", "e2e-not-named"):
            broker.ctl("delete_queue", "-p", broker.vhost, name)


def test_a_bus_without_kombu_installed_is_a_configuration_error(tmp_path, monkeypatch):
    path = write_url(tmp_path / "url", "rabbit://crashup:secretpw@127.0.0.1:5672/\n")
    monkeypatch.delitem(sys.modules, "kombu", raising=False)
    monkeypatch.setattr(bus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(config.ConfigError, match=r"kombu is not installed: pip install 'crashup\[bus\]'"):
        events_bus.from_config({"transport_url_file": path, "outbox_dir": str(tmp_path / "o")})
