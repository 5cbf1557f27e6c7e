"""Events on the OpenStack notification bus: each crashup event as an oslo.messaging "messagingv2" notification,
through a durable outbox, so that publishing never delays a recovery and an accepted event is never lost.

The notification (what oslo.messaging's Notifier sends, checked against its own code by tests/test_bus.py)::

    exchange  control_exchange (default "openstack"), a topic exchange
    key       "<topic>.<priority lower-case>" for each topic of notification_topics (default "notifications"),
              e.g. notifications.info; a queue of that name is made if missing, as oslo's notifier does, so that
              nothing is lost before a listener exists; and each queue of notification_queues (durable) is bound
              with that key before the publish, so a consumer's own queue misses nothing across a broker restart
              (a restart drops the non-durable exchange and its bindings)
    body      {"oslo.version": "2.0", "oslo.message": "<JSON text of the message>"}
    message   {"message_id": <the event's id>, "publisher_id": "crashup.<host>", "event_type": <the event's type>,
               "priority": "INFO" | "ERROR", "payload": <the crashup event, as events.schema.json defines it>,
               "timestamp": <the event's time as oslo writes it, "2025-01-31 09:15:02.123000">,
               "_unique_id": <the event's id as 32 hex digits>}

The message_id and _unique_id are the event's id, the same each time an event is published again, so a consumer
drops duplicates by it (delivery is at least once). PRIORITIES says which events are ERROR (failures and what
needs an operator); the rest are INFO.

The path of an event: BusSink.send() (a durable sink: the caller's thread) appends it to the Outbox (fsync'ed) and
wakes the Publisher, a background thread that drains the outbox in order, each publish bounded in wall-clock time
(bus.Link), deleting an event once the broker confirmed it on every topic. While the broker is down it keeps the
events and retries with backoff (0.5 s doubling to 10 s), saying so in one log line when the broker becomes
unreachable (or refuses the credentials: named as such) and one when it is back. It starts by draining what a
previous process left; close() lets it drain for a bounded time, then stops it.
"""
from __future__ import annotations

import datetime as _dt
import json
import queue
import socket
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from crashup_lib import bus as broker
from crashup_lib import log
from crashup_lib.config import ConfigError
from crashup_lib.events import contract as c
from crashup_lib.events.journal import is_event
from crashup_lib.events.outbox import Outbox

_log = log.get("events")

OSLO_VERSION = "2.0"
# the one table: which events are ERROR notifications (an evacuation given up, a resource left broken, a recovery
# that cannot go on without an operator); every other type is INFO
PRIORITIES: dict[str, str] = {
    c.HOST_FAILED: "INFO",
    c.HOST_RECOVERED: "INFO",
    c.HOST_STORM: "ERROR",                      # automatic evacuation stopped: an operator must act
    c.HOST_FENCING_UNCONFIRMED: "ERROR",        # no evacuation until fencing is proven: an operator must look
    c.INSTANCE_EVACUATED: "INFO",
    c.INSTANCE_EVACUATION_FAILED: "ERROR",
    c.INSTANCE_REPAIRED: "INFO",
    c.RESOURCE_STALE_RECOVERED: "INFO",
    c.RESOURCE_STALE_UNRECOVERABLE: "ERROR",
    c.RESOURCE_ORPHANED: "INFO",
    c.INSTANCE_GUEST_FAILED: "INFO",
    c.INSTANCE_GUEST_LEFT_DOWN: "ERROR",        # a crash-looping guest left stopped: an operator must look
    c.HOST_MAINTENANCE: "INFO",                 # an operator verb's step (the operator is at the keyboard)
    c.INSTANCE_MAINTENANCE: "INFO",
    c.HOST_ISOLATED: "INFO",                    # a cut-off node took itself out; its recovery follows as usual
}
BACKOFF = (0.5, 10.0)           # seconds: first pause after a failure, and the longest
POLL = 0.25                     # seconds: how often an idle drainer looks for events other processes appended
LOCK_RETRY = 1.0                # seconds: how often a process that is not the drainer tries to become it


def priority(type_: str) -> str:
    return PRIORITIES.get(type_, "INFO")


def oslo_timestamp(event_time: str | None) -> str:
    """The event's RFC 3339 time as oslo writes a notification's timestamp: str() of a naive UTC datetime
    ('2025-01-31 09:15:02.123000'); now when the time is missing or unreadable."""
    try:
        moment = _dt.datetime.strptime(event_time or "", "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        moment = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    return str(moment)


def publisher_id(event: Mapping[str, Any]) -> str:
    """crashup.<host>: the host that made the event (its source, crashup@<host>), else this one."""
    source = event.get("source")
    host = source.partition("@")[2] if isinstance(source, str) and source.startswith("crashup@") else ""
    return f"crashup.{host or socket.gethostname()}"


def message(event: Mapping[str, Any]) -> dict:
    """The oslo notification message carrying the event (see the module's docstring)."""
    event_id = str(event["id"])
    return {"message_id": event_id, "publisher_id": publisher_id(event), "event_type": event["type"],
            "priority": priority(event["type"]), "payload": dict(event), "timestamp": oslo_timestamp(event.get("time")),
            "_unique_id": event_id.replace("-", "")}


def envelope(event: Mapping[str, Any]) -> dict:
    """The body published: oslo.messaging's messagingv2 envelope around message(event)."""
    return {"oslo.version": OSLO_VERSION,
            "oslo.message": json.dumps(message(event), ensure_ascii=True, allow_nan=False)}


def routing_keys(topics: Sequence[str], type_: str) -> list[str]:
    return [f"{topic}.{priority(type_).lower()}" for topic in topics]


def event_from_body(body: bytes | str | Mapping) -> dict | None:
    """A crashup event out of a notification's body as it comes off the bus (the messagingv2 envelope, or a bare
    message as the older messaging driver sends); None for anything else (other services' notifications,
    garbage)."""
    try:
        value = json.loads(body) if isinstance(body, (bytes, str)) else body
        if isinstance(value, dict) and "oslo.message" in value:
            value = json.loads(value["oslo.message"])
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not str(value.get("event_type", "")).startswith("crashup."):
        return None
    payload = value.get("payload")
    return payload if is_event(payload) else None


# --- publishing --------------------------------------------------------------------------------------------------

class Publisher:
    """The background thread that drains the outbox to the broker, in order (see the module's docstring).

    link: a bus.Link (or anything with publish(exchange, key, body, queue=, message_id=, durable_queues=), idle(),
    close(), where); queues: the durable queues every key is bound to (notification_queues);
    relink: called after the broker refused the credentials or access, to read the transport URL again (a fixed
    file is taken without a restart); returns a new link, or None to keep the old one.
    """

    def __init__(self, outbox: Outbox, link, *, exchange: str = "openstack",
                 topics: Sequence[str] = ("notifications",), queues: Sequence[str] = (),
                 relink: Callable[[], Any] | None = None, backoff: tuple[float, float] = BACKOFF, poll: float = POLL,
                 heartbeat_every: float = 10.0):
        self.outbox = outbox
        self.link = link
        self.exchange = exchange
        self.topics = tuple(topics)
        self.queues = tuple(queues)
        self.relink = relink
        self.backoff = backoff
        self.poll = poll
        self.heartbeat_every = heartbeat_every
        self.state = "unknown"              # unknown, up, unreachable, credentials, rejected
        self.down_since = 0.0
        self.published = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._thread: threading.Thread | None = None
        self._bad: set = set()

    def start(self) -> "Publisher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="crashup-bus", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop: go on publishing while the broker takes events, for at most `timeout` seconds, then end (what is
        left stays in the outbox for the next process). True when the thread ended in time."""
        self._drain_until = time.monotonic() + max(0.0, timeout - self.link_timeout() - 0.2)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            alive = self._thread.is_alive()
        else:
            alive = False
        if not alive:
            self.outbox.unlock()
            self.link.close()
        return not alive

    def link_timeout(self) -> float:
        return float(getattr(self.link, "timeout", 2.0))

    # --- the loop ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:              # noqa: BLE001 - a bug here must say so, not vanish with its thread
            _log.error("events bus: publisher stopped by a bug: %s: %s; events wait in %s",
                       type(e).__name__, log.error_line(e), self.outbox.directory)

    def _loop(self) -> None:
        pause = self.backoff[0]
        last_beat = time.monotonic()
        drainer = False
        while True:
            if self._stop.is_set() and (time.monotonic() >= self._drain_until or not drainer):
                return
            if not drainer:
                drainer = self.outbox.lock()
                if drainer:
                    self.outbox.clean()
                else:
                    self._sleep(LOCK_RETRY)
                    continue
            names = self.outbox.pending()
            if not names:
                if self._stop.is_set():
                    return
                if time.monotonic() - last_beat >= self.heartbeat_every:
                    self.link.idle()
                    last_beat = time.monotonic()
                self._sleep(self.poll)
                continue
            failed = self._drain(names)
            if failed is None:
                pause = self.backoff[0]
                last_beat = time.monotonic()
                continue
            if self._stop.is_set():
                return                      # the broker is down: what is left waits for the next process
            self._went_down(failed, len(self.outbox))
            self._sleep(pause, wakeable=False)
            pause = min(pause * 2, self.backoff[1])
            self._maybe_relink()

    def _sleep(self, seconds: float, wakeable: bool = True) -> None:
        if wakeable:
            self._wake.wait(seconds)
            self._wake.clear()
        else:                               # a backoff: new events do not hurry a broker that is down
            self._stop.wait(seconds)

    def _drain(self, names: list[str]) -> broker.BusError | None:
        """Publish the events in order; the error that stopped it, or None when all went."""
        for name in names:
            if self._stop.is_set() and time.monotonic() >= self._drain_until:
                return None
            try:
                event = self.outbox.read(name)
            except (OSError, ValueError) as e:
                self._set_aside(name, e)
                continue
            if event is None:
                continue
            try:
                for key in routing_keys(self.topics, str(event["type"])):
                    self.link.publish(self.exchange, key, envelope(event), queue=key, message_id=str(event["id"]),
                                      **({"durable_queues": self.queues} if self.queues else {}))
            except broker.BusError as e:
                return e
            except Exception as e:          # noqa: BLE001 - an event that cannot be sent (not JSON-able)
                self._set_aside(name, e)
                continue
            self.outbox.remove(name)
            self.published += 1
            self._came_back()
        return None

    def _set_aside(self, name: str, error: BaseException) -> None:
        try:
            where = self.outbox.quarantine(name)
        except OSError as e:
            if name not in self._bad:
                _log.error("events bus: outbox file %s is not an event (%s) and cannot be moved aside: %s",
                           name, log.error_line(error), e.strerror or e)
            self._bad.add(name)
            return
        _log.error("events bus: outbox file %s is not an event (%s): moved to %s", name, log.error_line(error),
                   where)

    def _went_down(self, error: broker.BusError, waiting: int) -> None:
        kind = error.kind
        if self.state == kind:
            _log.debug("events bus: still %s: %s", kind, error)
            return
        if self.state in ("unknown", "up"):
            self.down_since = time.monotonic()
        self.state = kind
        where = f"{waiting} event{'s' if waiting != 1 else ''} kept in {self.outbox.directory}"
        if kind == "credentials":
            _log.error("events bus: %s; %s until the transport_url_file is fixed (read again at each retry)",
                       error, where)
        elif kind == "rejected":
            _log.error("events bus: %s; %s, retrying", error, where)
        else:
            _log.warning("events bus: broker unreachable: %s; %s, retrying every %g s at most", error, where,
                         self.backoff[1])

    def _came_back(self) -> None:
        if self.state == "up":
            return
        if self.state == "unknown":
            _log.info("events bus: publishing to %s (exchange %s, topics %s)", getattr(self.link, "where", "?"),
                      self.exchange, ", ".join(self.topics))
        else:
            left = len(self.outbox)
            _log.info("events bus: broker %s reachable again after %.0f s; %d event%s left to replay",
                         getattr(self.link, "where", "?"), time.monotonic() - self.down_since, left,
                         "s" if left != 1 else "")
        self.state = "up"

    def _maybe_relink(self) -> None:
        if self.relink is None or self.state not in ("credentials", "rejected"):
            return
        try:
            fresh = self.relink()
        except ConfigError as e:
            _log.debug("events bus: transport_url_file not usable yet: %s", e)
            return
        if fresh is not None:
            self.link.close()
            self.link = fresh


class BusSink:
    """The sink the Emitter sees: durable (send() returns once the event is in the outbox, fsync'ed; its failure
    raises OutboxError, a JournalError). The Publisher does the rest in the background."""

    name = "bus"
    durable = True

    def __init__(self, outbox: Outbox, publisher: Publisher | None = None):
        self.outbox = outbox
        self.publisher = publisher

    def send(self, event: Mapping[str, Any]) -> None:
        self.outbox.append(event)
        if self.publisher is not None:
            self.publisher.wake()

    def close(self, timeout: float = 5.0) -> bool:
        return self.publisher.close(timeout) if self.publisher is not None else True


def from_config(cfg: Mapping[str, Any], *, start: bool = True) -> BusSink | None:
    """The bus sink from the [events] options (None when transport_url_file is empty), its publisher started:
    it replays what a previous process left. ConfigError, one line, for a bad file or option."""
    path = cfg.get("transport_url_file")
    if not path:
        return None
    url = broker.read_transport_url(path)
    broker.require()
    directory = cfg.get("outbox_dir") or ""
    if not directory:
        raise ConfigError("config: outbox_dir is empty: the bus needs a directory for its outbox")
    timeout = float(cfg.get("publish_timeout") or 2.0)
    topics = tuple(cfg.get("notification_topics") or ("notifications",))
    current = {"url": url}

    def relink():
        fresh = broker.read_transport_url(path)
        if fresh == current["url"]:
            return None
        current["url"] = fresh
        _log.info("events bus: transport_url_file changed: trying %s", fresh.safe())
        return broker.Link(fresh, timeout)
    publisher = Publisher(Outbox(directory), broker.Link(url, timeout),
                          exchange=cfg.get("control_exchange") or "openstack", topics=topics,
                          queues=tuple(cfg.get("notification_queues") or ()), relink=relink)
    if start:
        publisher.start()
    return BusSink(publisher.outbox, publisher)


# --- consuming -----------------------------------------------------------------------------------------------------

def follow(cfg: Mapping[str, Any], stop: threading.Event | None = None, *, queue_name: str | None = None,
           on_state: Callable[[str, str], None] | None = None, remember: int = 4096) -> Iterator[dict]:
    """The crashup events arriving on the bus, each once (duplicates, by id, among the last `remember`, dropped),
    until `stop` is set or the caller stops iterating. Binds `<topic>.*` of each notification topic on the control
    exchange; queue_name None is a private queue (see bus.consume). BusError when the broker cannot be reached at first."""
    path = cfg.get("transport_url_file")
    if not path:
        raise ConfigError("config: transport_url_file is empty: no bus to follow ([events] transport_url_file)")
    url = broker.read_transport_url(path)
    topics = tuple(cfg.get("notification_topics") or ("notifications",))
    stop = stop or threading.Event()
    arrived: queue.SimpleQueue = queue.SimpleQueue()
    seen: dict[str, None] = {}
    timeout = float(cfg.get("publish_timeout") or 2.0)

    def on_body(body: bytes) -> None:
        event = event_from_body(body)
        if event is None or event["id"] in seen:
            return
        seen[event["id"]] = None
        if len(seen) > remember:
            del seen[next(iter(seen))]
        arrived.put(event)

    def run():
        try:
            broker.consume(url, cfg.get("control_exchange") or "openstack", [f"{t}.*" for t in topics], on_body,
                           stop, timeout=timeout, on_state=on_state, queue=queue_name)
        except BaseException as e:          # noqa: BLE001 - handed to the caller
            arrived.put(e)
        finally:
            arrived.put(None)
    # the consumer runs in a thread; the caller's waits on the queue, where Ctrl-C and SIGTERM's handler reach it
    worker = threading.Thread(target=run, name="crashup-bus-follow", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = arrived.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout + 2.0)
