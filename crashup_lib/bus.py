"""The notification bus's broker (RabbitMQ, AMQP 0-9-1) through kombu: the transport URL, a publishing link whose
every call is bounded in wall-clock time, and a consumer. The one module that speaks AMQP.

Why kombu and not oslo.messaging: measured by `.venv/bin/python bench/bus.py` (one run, one throwaway RabbitMQ 3.10;
kombu 5.7 through this module, oslo.messaging 18.3 through its Notifier from the nova venv):

                          kombu      oslo.messaging
    import                50 ms      257 ms      (5x)   what a publish needs: kombu + pyamqp / oslo + rabbit driver
    import RSS            12 MiB     43 MiB      (3.6x) oslo pulls eventlet and a dozen oslo libraries
    one-shot process      0.10 s     0.31 s      (3x)   start, connect, publish one notification, exit
    publish, warm         0.4 ms     0.3 ms             kombu's waits for the broker's confirm, oslo's does not
    broker refused        raises     returns, message lost (logs "Could not send notification")
    broker frozen, warm   raises 2.0 s    still blocked at 20 s (2 x heartbeat_timeout_threshold: 120 s)
    frozen, new conn.     raises 2.0 s    returns after 5 s, message lost
    slow (+100 ms/chunk)  1.6 s      2.1 s

oslo.messaging never tells its caller that a notification was not sent, so it cannot feed an outbox that deletes
an event only once the broker has it, and on a frozen broker it blocks for minutes even with retry=0. kombu (oslo's
own rabbit driver is built on it) raises at once on a refused connection, within connect_timeout on a frozen one,
and with publisher confirms says when the broker took the message; the wall-clock bound here covers the rest. What
oslo's notifier adds (the "messagingv2" envelope, the topic exchange, the `<topic>.<priority>` routing key and its
default queue) is a few lines in crashup_lib.events.bus, checked byte for byte against oslo's own code by
tests/test_bus.py. kombu is imported where it is first needed, so only a process that publishes or consumes pays for
it, and it is the `bus` extra (pip install 'crashup[bus]'): compute nodes' agents never publish.

read_transport_url(path) gives a TransportUrl (rabbit://user:password@host:port/vhost), its password registered with
the redactor as soon as it is read (TransportUrl.safe() is the URL as it may be shown); Link publishes, each call
bounded in wall-clock time; consume() reads; every failure is a BusError: Unreachable (refused, reset, TimedOut),
Credentials (the broker refused user or password), Rejected (vhost, permissions, a nack).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import socket
import stat
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterable, Sequence

from crashup_lib import files, log
from crashup_lib.config import ConfigError

_log = log.get("bus")

DEFAULT_PORT, SSL_PORT = 5672, 5671
MAX_URL_FILE = 4096
HEARTBEAT = 30.0                # seconds, asked of the broker; idle() keeps it


class BusError(Exception):
    """The broker did not take what was asked, as one line without a secret. `kind` names the family."""
    kind = "error"


class Unreachable(BusError):
    kind = "unreachable"


class TimedOut(Unreachable):
    pass


class Credentials(BusError):
    kind = "credentials"


class Rejected(BusError):
    kind = "rejected"


def require() -> None:
    """ConfigError unless kombu is installed (without importing it: a check at start costs nothing)."""
    if "kombu" not in sys.modules and importlib.util.find_spec("kombu") is None:   # (kombu's lazy module: no spec)
        raise ConfigError("config: transport_url_file is set but kombu is not installed: "
                          "pip install 'crashup[bus]'")


# --- the transport URL -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class TransportUrl:
    endpoints: tuple[Endpoint, ...]
    virtual_host: str = "/"
    ssl: bool = False

    def safe(self, endpoint: Endpoint | None = None) -> str:
        """The URL as it may be shown: users, hosts, ports and vhost, never a password."""
        shown = [endpoint] if endpoint else self.endpoints
        hosts = ",".join(f"{e.user}@{_bracket(e.host)}:{e.port}" for e in shown)
        vhost = "" if self.virtual_host == "/" else urllib.parse.quote(self.virtual_host, safe="")
        return f"rabbit://{hosts}/{vhost}" + ("?ssl=1" if self.ssl else "")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_URL = re.compile(r"(?P<scheme>[a-z0-9+]+)://(?P<hosts>[^/?#]*)(?P<path>/[^?#]*)?(?:\?(?P<query>[^#]*))?")
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>\d{1,5}))?")
ALLOWED = ("rabbit://user:password@host:port/vhost (several hosts: user:password@host1:port,user:password@host2:port; "
           "special characters of the password percent-encoded; ?ssl=1 for TLS)")


def register_passwords(text: str) -> None:
    """Every password of a URL text (user:password@ before each host), raw and percent-decoded, registered with the
    redactor before anything can show it."""
    for part in re.split(r"[,\s]", text):
        credentials, at, _ = part.split("://", 1)[-1].rpartition("@")
        user, colon, secret = credentials.partition(":")
        if at and colon:
            log.register_secret(secret)
            log.register_secret(urllib.parse.unquote(secret))


def parse_transport_url(text: str) -> TransportUrl:
    """rabbit://user:password@host:port/vhost (oslo.messaging's form; amqp:// too) -> TransportUrl, or ValueError
    saying what is allowed (never quoting the URL: it holds a password)."""
    register_passwords(text)
    m = _URL.fullmatch(text.strip())
    if not m or m.group("scheme") not in ("rabbit", "amqp") or not m.group("hosts"):
        raise ValueError(f"expected {ALLOWED}")
    endpoints = []
    for entry in m.group("hosts").split(","):
        credentials, at, hostport = entry.rpartition("@")
        user, colon, password = credentials.partition(":")
        h = _HOST.fullmatch(hostport)
        if not at or not colon or not user or not h:
            raise ValueError(f"expected {ALLOWED}")
        port = int(h.group("port") or 0)
        if h.group("port") and not 0 < port < 65536:
            raise ValueError("a port between 1 and 65535")
        endpoints.append((h.group("v6") or h.group("name"), port, urllib.parse.unquote(user),
                          urllib.parse.unquote(password)))
    ssl = False
    for key, value in urllib.parse.parse_qsl(m.group("query") or "", keep_blank_values=True):
        if key != "ssl" or value.lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise ValueError("no query option but ssl=1")
        ssl = value.lower() in ("1", "true", "yes")
    default = SSL_PORT if ssl else DEFAULT_PORT
    vhost = urllib.parse.unquote((m.group("path") or "/")[1:]) or "/"
    return TransportUrl(tuple(Endpoint(h, p or default, u, pw) for h, p, u, pw in endpoints), vhost, ssl)


def read_transport_url(path: str) -> TransportUrl:
    """The one transport URL in `path`: a regular file no other user may read or anyone but its owner write (it holds
    a password), '#' comments allowed. ConfigError, one line naming the file and the problem, never the URL."""
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"config: transport_url_file = {log.shown(path, 200)}{problem}")
    try:
        with files.open_regular(path) as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            data = f.read(MAX_URL_FILE + 1)
        if len(data) > MAX_URL_FILE:
            raise files.FileProblem(f"larger than {MAX_URL_FILE // 1024} KiB")
        text = files.utf8(data)
    except files.FileProblem as e:
        raise bad(f": {e}") from None
    except OSError as e:
        raise bad(f": cannot read it: {e.strerror or e}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    register_passwords(" ".join(lines))
    if mode & 0o027:
        raise bad(f" holds a password but is mode {mode:04o} (readable by others or writable by its group): "
                  "chmod 600 it")
    if len(lines) != 1:
        raise bad(f" must hold one transport URL, not {len(lines) or 'none'}: {ALLOWED}")
    try:
        return parse_transport_url(lines[0])
    except ValueError as e:
        raise bad(f": not a transport URL: {e}") from None


# --- errors -> BusError ---------------------------------------------------------------------------------------------

def _code(error: BaseException) -> int | None:
    code = getattr(error, "reply_code", None) or getattr(error, "code", None)
    return code if isinstance(code, int) else None


def classify(error: BaseException, where: str, *, connecting: bool) -> BusError:
    """Any exception of kombu, py-amqp or a socket as a BusError naming `where` (the safe URL)."""
    if isinstance(error, BusError):
        return error
    code = _code(error)
    if isinstance(error, (socket.timeout, TimeoutError)):
        return TimedOut(f"{where}: no answer in time")
    if code == 403 and connecting:
        return Credentials(f"{where}: the broker refused the credentials (ACCESS_REFUSED): wrong user or password")
    if code in (403, 530, 404, 406) or type(error).__name__ == "MessageNacked":
        return Rejected(f"{where}: the broker refused: {log.error_line(error, 200)}")
    if isinstance(error, ConnectionRefusedError):
        return Unreachable(f"{where}: connection refused")
    if isinstance(error, OSError):
        return Unreachable(f"{where}: {error.strerror or log.error_line(error, 200)}")
    return Unreachable(f"{where}: {type(error).__name__}: {log.error_line(error, 200)}")


# --- bounded calls --------------------------------------------------------------------------------------------------

class _Bound:
    """fn() in a daemon worker joined with a wall-clock bound. Past it, `abort()` is called (it shuts the
    connection's socket down, which ends a blocked read or write) and TimedOut raised; while an abandoned worker
    still runs, the next call answers TimedOut at once instead of piling up threads."""

    def __init__(self):
        self._stuck: threading.Thread | None = None

    def __call__(self, fn: Callable[[], Any], timeout: float, abort: Callable[[], None], where: str) -> Any:
        if self._stuck is not None:
            if self._stuck.is_alive():
                raise TimedOut(f"{where}: an earlier call is still hanging")
            self._stuck = None
        box: list = []

        def run():
            try:
                box.append((True, fn()))
            except BaseException as e:      # noqa: BLE001 - handed to the caller's thread
                box.append((False, e))
        worker = threading.Thread(target=run, name="crashup-bus-io", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            abort()
            worker.join(0.2)
            if worker.is_alive():
                self._stuck = worker
            raise TimedOut(f"{where}: no answer within {timeout:g}s")
        ok, value = box[0]
        if ok:
            return value
        raise value


def _shutdown(conn) -> None:
    """Shut the socket of a kombu connection down (from another thread): a blocked recv/send returns at once."""
    sock = getattr(getattr(getattr(conn, "_connection", None), "transport", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _connection(url: TransportUrl, endpoint: Endpoint, timeout: float, heartbeat: float):
    import kombu                            # deferred: only a publishing or consuming process pays for it
    return kombu.Connection(hostname=endpoint.host, port=endpoint.port, userid=endpoint.user,
                            password=endpoint.password, virtual_host=url.virtual_host, ssl=url.ssl,
                            transport="pyamqp", connect_timeout=timeout, heartbeat=heartbeat,
                            transport_options={"confirm_publish": True, "read_timeout": timeout,
                                               "write_timeout": timeout})


def _connect(url: TransportUrl, timeout: float, heartbeat: float, first: int = 0):
    """A connected kombu Connection to the first endpoint that answers, starting at `first`; BusError otherwise
    (Credentials as soon as one refuses them: the others share the user)."""
    errors: list[BusError] = []
    order = url.endpoints[first:] + url.endpoints[:first]
    for endpoint in order:
        conn = _connection(url, endpoint, timeout, heartbeat)
        try:
            conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)   # one try, no sleeping
            return conn
        except Exception as e:              # noqa: BLE001 - classified
            _close_quietly(conn)
            error = classify(e, url.safe(endpoint), connecting=True)
            if isinstance(error, (Credentials, Rejected)):
                raise error from None
            errors.append(error)
    raise errors[0] if len(errors) == 1 else Unreachable("; ".join(str(e) for e in errors))


def _close_quietly(conn) -> None:
    try:
        conn.release()
    except Exception:                       # noqa: BLE001 - a dead connection's close may fail in any way
        pass


def _declare(conn, channel, exchange: str, queue=None, routing_keys: Iterable[str] = ()):
    """The topic exchange, and a queue (a kombu Queue) bound to it with each routing key. The exchange, and a named
    queue, are used as they are when they exist (whatever their durability: nova's services or oslo may have made
    them), else made: the exchange as oslo.messaging makes it by default (not durable, not auto-deleted), the queue
    as given. Returns the channel to go on with (a failed passive declare closes one)."""
    import kombu
    try:
        kombu.Exchange(exchange, type="topic", channel=channel).declare(passive=True)
    except conn.channel_errors as e:
        if _code(e) != 404:
            raise
        channel = conn.channel()            # the broker closed the channel on the 404
        kombu.Exchange(exchange, type="topic", durable=False, auto_delete=False, channel=channel).declare()
    if queue is None:
        return channel
    exists = False
    if queue.name:
        try:
            queue.bind(channel).queue_declare(passive=True)
            exists = True
        except conn.channel_errors as e:
            if _code(e) != 404:
                raise
            channel = conn.channel()
    bound = queue.bind(channel)
    if not exists:
        bound.queue_declare()
    for key in routing_keys:
        bound.bind_to(exchange=exchange, routing_key=key)
    queue.name = bound.name                 # a private queue's name is the broker's
    return channel


# --- publishing -----------------------------------------------------------------------------------------------------

class Link:
    """One publishing connection to the broker, opened on first use, reused, reopened after any failure (at once,
    within the same publish, when the broker dropped the connection since the last one). Every call ends within
    `timeout` seconds of wall-clock time, whatever the broker does (refuses, hangs, crawls), and either returns
    once the broker confirmed the message (publisher confirms) or raises a BusError."""

    def __init__(self, url: TransportUrl, timeout: float = 2.0, heartbeat: float = HEARTBEAT):
        self.url = url
        self.timeout = float(timeout)
        self.heartbeat = float(heartbeat)
        self._conn = None
        self._channel = None
        self._producer = None
        self._declared: set = set()
        self._next = 0                      # the endpoint to try first (the one that last worked)
        self._bound = _Bound()
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.url.safe()

    def publish(self, exchange: str, routing_key: str, body: dict, *, queue: str | None = None,
                message_id: str | None = None, durable_queues: Sequence[str] = ()) -> None:
        """Publish the JSON body to the exchange with the routing key (declaring the exchange, `queue` (not durable,
        as oslo's notifier makes it) and each of `durable_queues` bound with that key, once per connection);
        returns when the broker confirmed it."""
        start = time.monotonic()
        queues = ((queue, False),) if queue else ()
        queues += tuple((name, True) for name in durable_queues)
        with self._lock:
            reused = self._conn is not None
            try:
                self._call(lambda: self._publish(exchange, routing_key, body, queues, message_id), "publish")
            except Unreachable as e:    # a connection the broker dropped since (a restart): once more, anew
                left = self.timeout - (time.monotonic() - start)
                if not reused or isinstance(e, TimedOut) or left < 0.1:
                    raise
                self._call(lambda: self._publish(exchange, routing_key, body, queues, message_id), "publish", left)

    def idle(self) -> None:
        """Between publishes: read what the broker sent (heartbeats) and send ours. A dead connection is dropped
        quietly; the next publish opens another."""
        with self._lock:
            if self._conn is None or not self.heartbeat:
                return
            try:
                self._call(self._tick, "heartbeat")
            except BusError as e:
                _log.debug("events bus: connection to %s dropped while idle: %s", self.where, e)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._forget()
        if conn is not None:
            try:
                self._bound(lambda: _close_quietly(conn), min(self.timeout, 1.0), lambda: _shutdown(conn),
                            self.where)
            except BusError:
                pass

    def _call(self, fn: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        conn = self._conn
        try:
            return self._bound(fn, timeout or self.timeout, lambda: _shutdown(conn or self._conn),
                               f"{self.where} ({what})")
        except BaseException as e:
            error = classify(e, self.where, connecting=self._conn is None)
            dead, self._conn = self._conn, None
            self._forget()
            if dead is not None:
                _shutdown(dead)
                threading.Thread(target=_close_quietly, args=(dead,), daemon=True).start()
            if isinstance(e, BusError):
                raise
            raise error from None

    def _forget(self) -> None:
        self._channel = self._producer = None
        self._declared = set()

    def _publish(self, exchange, routing_key, body, queues, message_id) -> None:
        if self._conn is None:
            self._conn = _connect(self.url, self.timeout, self.heartbeat, self._next)
        if self._channel is None:
            self._channel = self._conn.channel()
        for key in [(exchange, None, None)] + [(exchange, q, routing_key) for q in queues]:
            if key not in self._declared:
                import kombu
                queue = kombu.Queue(key[1][0], durable=key[1][1], auto_delete=False) if key[1] else None
                self._channel = _declare(self._conn, self._channel, exchange, queue, [routing_key] if queue else [])
                self._declared.add(key)
                self._producer = None
        if self._producer is None:
            import kombu
            self._producer = kombu.Producer(self._channel)
        self._producer.publish(body, exchange=exchange, routing_key=routing_key, serializer="json",
                               delivery_mode=2, retry=False, timeout=self.timeout, confirm_timeout=self.timeout,
                               **({"message_id": message_id} if message_id else {}))

    def _tick(self) -> None:
        conn = self._conn
        try:
            while True:
                conn.drain_events(timeout=0)
        except (socket.timeout, TimeoutError):
            pass
        conn.heartbeat_check()


# --- consuming ------------------------------------------------------------------------------------------------------

def consume(url: TransportUrl, exchange: str, routing_keys: Iterable[str], on_body: Callable[[bytes], None],
            stop: threading.Event, *, timeout: float = 2.0, on_state: Callable[[str, str], None] | None = None,
            queue: str | None = None, backoff: tuple[float, float] = (0.5, 10.0)) -> None:
    """Call on_body(raw body) for each message routed to a queue bound to the exchange with each routing key, until
    `stop` is set (checked every second). queue None: a private queue (exclusive, deleted when we go); a name: a
    queue of that name (made durable if missing; one that exists is used as it is), which keeps messages while the
    consumer is away. The first connection's failure raises BusError; later losses are reported through
    on_state('lost'|'back', line), once per outage, and retried with backoff."""
    import kombu
    keys = list(routing_keys)
    say = on_state or (lambda state, line: None)
    connected_once, lost = False, False
    pause = backoff[0]
    while not stop.is_set():
        conn = None
        try:
            conn = _connect(url, timeout, HEARTBEAT)
            q = (kombu.Queue(queue, durable=True, auto_delete=False) if queue else
                 kombu.Queue("", exclusive=True, auto_delete=True, durable=False))
            channel = _declare(conn, conn.channel(), exchange, q, keys)
            kombu.Consumer(channel, queues=[q], on_message=lambda m: _deliver(m, on_body), no_ack=False,
                           auto_declare=False).consume()
            if lost:
                say("back", f"{url.safe()}: connected again")
            connected_once, lost, pause = True, False, backoff[0]
            last_beat = time.monotonic()
            while not stop.is_set():
                try:
                    conn.drain_events(timeout=1.0)
                except (socket.timeout, TimeoutError):
                    pass
                if time.monotonic() - last_beat >= HEARTBEAT / 3:
                    conn.heartbeat_check()
                    last_beat = time.monotonic()
            return
        except Exception as e:              # noqa: BLE001 - classified; KeyboardInterrupt goes through
            error = classify(e, url.safe(), connecting=False)
            if not connected_once:
                raise error from None
            if not lost:                    # once per outage
                say("lost", f"{error}; reconnecting" + ("" if queue else " (what is published meanwhile is not "
                                                                         "seen here: the journal has it)"))
            lost = True
            stop.wait(pause)
            pause = min(pause * 2, backoff[1])
        finally:
            if conn is not None:
                _close_quietly(conn)


def _deliver(message, on_body: Callable[[bytes], None]) -> None:
    """Acknowledged once on_body returned; a handler that raised has the message put back, a second later (at least
    once: a consumer de-duplicates by the event's id)."""
    try:
        on_body(message.body if isinstance(message.body, bytes) else str(message.body).encode("utf-8"))
    except Exception as e:                  # noqa: BLE001 - a handler's failure is not the bus's
        _log.warning("bus consumer: handler failed: %s: %s; the message goes back to the queue",
                     type(e).__name__, log.error_line(e))
        time.sleep(1.0)
        message.requeue()
        return
    message.ack()
