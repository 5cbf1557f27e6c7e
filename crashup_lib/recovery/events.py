"""crashup events: versioned JSON documents about every recovery action, and the sinks that deliver them.

An event is a plain dict (the contract is events.schema.json beside this file, JSON Schema draft 2020-12)::

    {"specversion": "1", "id": "<uuid4>", "time": "2025-01-31T09:15:02.123Z", "type": "crashup.host.failed",
     "source": "crashup@<hostname>", "subject": "<host, server id or resource id>", "payload": {...}}

Build one with make_event(type, subject, payload): it refuses an unknown type, a missing or unknown payload key, a
value of the wrong kind or outside its enumeration, with one line that names the field. Those are cheap checks in
Python; the library never needs jsonschema at run time (the tests validate every event against the schema).

Sinks, each with send(event):
  JournalSink   one JSON line per event, appended under flock and fsync'ed: the record of truth, its failure raises
  WebhookSink   HTTP POST, signed with HMAC-SHA256 when a secret is configured; bounded retries, never raises
  CommandSink   runs a command (no shell) with the event on its stdin; bounded by a timeout, never raises
Emitter(sinks).emit(event) writes the journal first, then the others; Emitter.from_config(cfg) builds them from
the [events] options (journal, webhook_url, webhook_secret_file, hook_command).

Verifying a webhook signature (receiver side): the header is ``X-Crashup-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact request body bytes, keyed with the content of webhook_secret_file stripped of surrounding
whitespace. Compute it over the raw body as received, before any JSON parsing, and compare in constant time::

    expected = "sha256=" + hmac.new(key, raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Crashup-Signature"])

(or verify_signature(raw_body, key, header) from this module). The body holds the event's id and time, so a
receiver refuses replays by remembering the ids it has seen and checking that time is recent.

Reading back (crashup_lib.recovery.journal, re-exported here): read(path) returns every event of a journal (lines
that are not events skipped, counted, reported once); follow(path) yields events as they are appended; listing(event)
is the line `crashup events` prints, every field through sanitize() so no control character reaches a terminal.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Iterable, Mapping, Sequence

from crashup_lib import __version__, log
from crashup_lib.recovery.journal import Events, follow, listing, parse_line, read, sanitize  # noqa: F401 - the API

SPECVERSION = "1"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "events.schema.json")

_log = log.get("events")


class EventError(ValueError):
    """An event that does not follow the contract, phrased as one line naming the field."""


class JournalError(OSError):
    """The journal (the record of truth) could not be written."""


# --- the payloads, as cheap checks (events.schema.json is the documented contract; a test keeps them in step) ------
#
# A field's spec: "str" a non-empty string, "text" any string, "str?" a string or null, "time" an RFC 3339 string,
# "action" lower-case words joined by '-', "int" an integer >= 0, "num" a number >= 0, a tuple: one of these
# strings, [spec] or [spec, least]: a list of spec items (at least `least`), a dict: an object with exactly these keys.

MODES = ("auto", "notify")
SERVICES = ("nova", "cinder", "glance", "neutron")
STORM_ACTION = ("evacuation stopped",)
# nova's numeric power states (nova/compute/power_state.py) -> the names events carry
POWER_STATES = {0: "nostate", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended"}

_INSTANCE = {"id": "str", "name": "text", "status": "str", "task_state": "str?", "project_id": "text"}
_REPAIR = {"id": "str", "from_task_state": "str?", "action": "action"}
_RESOURCE = {"service": SERVICES, "resource_type": "str", "id": "str", "state": "str", "action": "action",
             "reason": "str"}

PAYLOADS: dict[str, dict[str, Any]] = {
    "crashup.host.failed": {"host": "str", "node": "str", "fenced_at": "time", "mode": MODES,
                            "instances": [_INSTANCE], "repairs": [_REPAIR]},
    "crashup.host.recovered": {"host": "str", "node": "str", "mode": MODES, "evacuated": "int", "failed": "int",
                               "skipped": "int", "duration_s": "num"},
    "crashup.host.storm": {"hosts": ["str", 1], "window_s": "num", "limit": "int", "action": STORM_ACTION},
    "crashup.host.fencing_unconfirmed": {"host": "text", "node": "str", "reason": "str"},
    "crashup.instance.evacuated": {"id": "str", "name": "text", "source_host": "str", "target_host": "str",
                                   "duration_s": "num", "power_state": "text"},
    "crashup.instance.evacuation_failed": {"id": "str", "name": "text", "source_host": "str", "reason": "str",
                                           "attempts": "int"},
    "crashup.instance.repaired": {"id": "str", "from_task_state": "str?", "from_vm_state": "str",
                                  "action": "action", "host": "str"},
    "crashup.resource.stale_recovered": _RESOURCE,
    "crashup.resource.stale_unrecoverable": _RESOURCE,
    "crashup.resource.orphaned": _RESOURCE,
}
TYPES: tuple[str, ...] = tuple(PAYLOADS)

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$", re.ASCII)
_ACTION = re.compile(r"^[a-z][a-z0-9-]*$")


def rfc3339(when: _dt.datetime | float | None = None) -> str:
    """RFC 3339 UTC with milliseconds: now, a POSIX timestamp, or a datetime (a naive one is taken as UTC)."""
    if when is None:
        moment = _dt.datetime.now(_dt.timezone.utc)
    elif isinstance(when, _dt.datetime):
        moment = when.replace(tzinfo=_dt.timezone.utc) if when.tzinfo is None else when.astimezone(_dt.timezone.utc)
    else:
        moment = _dt.datetime.fromtimestamp(float(when), _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check(where: str, spec: Any, value: Any) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise EventError(f"{where} must be an object, not {_kind(value)}")
        missing = [k for k in spec if k not in value]
        if missing:
            raise EventError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(map(repr, missing))}")
        unknown = sorted(k for k in value if k not in spec)
        if unknown:
            raise EventError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                             f" (allowed: {', '.join(spec)})")
        for key, sub in spec.items():
            _check(f"{where}.{key}", sub, value[key])
    elif isinstance(spec, list):
        if not isinstance(value, (list, tuple)):
            raise EventError(f"{where} must be a list, not {_kind(value)}")
        if len(spec) > 1 and len(value) < spec[1]:
            raise EventError(f"{where} must have at least {spec[1]} item{'s' if spec[1] > 1 else ''}")
        for i, item in enumerate(value):
            _check(f"{where}[{i}]", spec[0], item)
    elif isinstance(spec, tuple):
        if value not in spec:
            raise EventError(f"{where} must be one of {', '.join(map(repr, spec))}, not {value!r}")
    elif spec in ("str", "text", "str?", "time", "action"):
        if value is None and spec == "str?":
            return
        if not isinstance(value, str):
            raise EventError(f"{where} must be a string{' or null' if spec == 'str?' else ''}, not {_kind(value)}")
        if spec == "time" and not _RFC3339.fullmatch(value):
            raise EventError(f"{where} must be an RFC 3339 date-time (e.g. 2025-01-31T09:15:02.123Z), not {value!r}")
        if spec == "action" and not _ACTION.fullmatch(value):
            raise EventError(f"{where} must be lower-case words joined by '-' (e.g. 'reset-state'), not {value!r}")
        if spec in ("str", "time", "action") and not value:
            raise EventError(f"{where} must not be empty")
    elif spec in ("int", "num"):
        allowed = (int,) if spec == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise EventError(f"{where} must be {'an integer' if spec == 'int' else 'a number'}, not {_kind(value)}")
        if value < 0 or value != value:
            raise EventError(f"{where} must be >= 0, not {value!r}")
    else:                                           # pragma: no cover - a mistake in PAYLOADS
        raise AssertionError(f"bad spec {spec!r} for {where}")


def _normalize(type_: str, payload: dict) -> dict:
    """The few conversions that spare every caller the same lines: times and nova's numeric power states."""
    payload = dict(payload)
    if type_ == "crashup.host.failed" and isinstance(payload.get("fenced_at"), (_dt.datetime, int, float)) \
            and not isinstance(payload.get("fenced_at"), bool):
        payload["fenced_at"] = rfc3339(payload["fenced_at"])
    if type_ == "crashup.instance.evacuated":
        power = payload.get("power_state")
        if isinstance(power, int) and not isinstance(power, bool):
            payload["power_state"] = POWER_STATES.get(power, f"unknown-{power}")
    return payload


def check_payload(type: str, payload: Mapping[str, Any]) -> None:  # noqa: A002 - the contract's own word
    """Raise EventError unless type is known and payload has exactly its keys, each of the right kind."""
    if type not in PAYLOADS:
        raise EventError(f"unknown event type {type!r}; known types: {', '.join(TYPES)}")
    _check(f"{type} payload", PAYLOADS[type], payload)


def make_event(type: str, subject: str, payload: Mapping[str, Any]) -> dict:  # noqa: A002
    """A new event of this type about subject (a host, server or resource id). Raises EventError, naming the field."""
    if type not in PAYLOADS:
        raise EventError(f"unknown event type {type!r}; known types: {', '.join(TYPES)}")
    if not isinstance(subject, str) or not subject:
        raise EventError(f"{type}: subject must be a non-empty string (host, server or resource id), "
                         f"not {subject!r}")
    if not isinstance(payload, Mapping):
        raise EventError(f"{type} payload must be an object, not {_kind(payload)}")
    payload = _normalize(type, dict(payload))
    check_payload(type, payload)
    try:                                            # a copy the caller cannot change afterwards, and JSON-clean
        payload = json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise EventError(f"{type} payload is not JSON-serialisable: {e}") from None
    return {"specversion": SPECVERSION, "id": str(uuid.uuid4()), "time": rfc3339(), "type": type,
            "source": f"crashup@{socket.gethostname()}", "subject": subject, "payload": payload}


def to_json(event: Mapping[str, Any]) -> bytes:
    """The one serialisation every sink uses: compact, ASCII, one line (so a journal line never breaks)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def load_schema() -> dict:
    """events.schema.json, the documented contract (validating with it needs the jsonschema package)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


# --- signatures ------------------------------------------------------------------------------------------------------

def sign(body: bytes, key: bytes) -> str:
    """The X-Crashup-Signature value for body: 'sha256=' + hex HMAC-SHA256 keyed with key."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, key: bytes, header: str | None) -> bool:
    """For receivers: does the X-Crashup-Signature header match the raw body? Constant-time comparison."""
    return bool(header) and hmac.compare_digest(sign(body, key), header.strip())


# --- sinks -----------------------------------------------------------------------------------------------------------

class JournalSink:
    """Append each event as one JSON line. The journal is the record of truth: a failure raises JournalError.

    The line is written with one write() under an exclusive flock and fsync'ed before send() returns, so concurrent
    writers (the daemon, agents, the CLI) never interleave and an acknowledged event survives a crash. A partial
    last line left by a writer that died mid-write is closed with a newline first, so it costs only itself.
    """

    name = "journal"

    def __init__(self, path: str):
        if not path:
            raise ValueError("journal path is empty")
        self.path = path

    def send(self, event: Mapping[str, Any]) -> None:
        line = to_json(event) + b"\n"
        try:
            self._append(line)
        except OSError as e:
            message = f"events journal {self.path}: cannot append: {e.strerror or e}"
            raise (JournalError(e.errno, message) if e.errno else JournalError(message)) from e

    def _append(self, line: bytes) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o750, exist_ok=True)
            os.chmod(folder, 0o750)
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            if created:
                os.fchmod(fd, 0o640)
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line                 # close a torn line of a writer that died mid-write
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)                            # releases the lock
        if created:
            _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _safe_url(url: str) -> str:
    """The URL as it may be logged: no user:password@, no query string (tokens travel there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return urllib.parse.urlunsplit((parts.scheme, host + (f":{port}" if port else ""), parts.path,
                                    "..." if parts.query else "", ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be replayed as a bodiless GET by urllib and look delivered: treat it as a failure."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class WebhookSink:
    """POST each event as application/json; signed when a secret file is configured. Never raises from send().

    Headers: X-Crashup-Event (the type), X-Crashup-Id (the id), X-Crashup-Signature: sha256=<hex HMAC-SHA256 of the
    body>. Up to `attempts` tries, each bounded by `timeout`, with `backoff`, 2*`backoff`... seconds between them; a
    connection failure, a timeout, 408, 429 or 5xx is retried, any other answer is final. Worst case
    attempts*timeout + backoff*(2**(attempts-1)-1) seconds (3*5 + 1.5 by default), then one warning.
    """

    name = "webhook"
    RETRY_STATUS = frozenset({408, 425, 429})

    def __init__(self, url: str, secret_file: str | None = None, timeout: float = 5, *, attempts: int = 3,
                 backoff: float = 0.5):
        if not re.match(r"^https?://[^\s/]+", url or ""):
            raise ValueError(f"webhook url must be an http:// or https:// URL, not {_safe_url(url or '')!r}")
        self.url = url
        self.secret_file = secret_file or None
        self.timeout = float(timeout)
        self.attempts = max(1, int(attempts))
        self.backoff = float(backoff)
        self._opener = urllib.request.build_opener(_NoRedirect)
        if self.secret_file:
            self._secret()                          # an unreadable or empty secret stops at start, not at the event

    def _secret(self) -> bytes | None:
        """The key, read at each send (so it can be rotated); raises ValueError when configured but unusable."""
        if not self.secret_file:
            return None
        try:
            with open(self.secret_file, "rb") as f:
                key = f.read().strip()
        except OSError as e:
            raise ValueError(f"webhook secret file {self.secret_file}: {e.strerror or e}") from None
        if not key:
            raise ValueError(f"webhook secret file {self.secret_file} is empty")
        log.register_secret(key.decode("utf-8", "replace"))
        return key

    def request(self, event: Mapping[str, Any]) -> urllib.request.Request:
        body = to_json(event)
        headers = {"Content-Type": "application/json", "User-Agent": f"crashup/{__version__}",
                   "X-Crashup-Event": str(event["type"]), "X-Crashup-Id": str(event["id"])}
        key = self._secret()
        if key is not None:
            headers["X-Crashup-Signature"] = sign(body, key)
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def send(self, event: Mapping[str, Any]) -> bool:
        """Deliver; True when the receiver answered 2xx. Failures end in one warning, never an exception."""
        what = f"{event.get('type')} {event.get('id')}"
        try:
            req = self.request(event)
        except Exception as e:                      # noqa: BLE001 - a sink never raises into the recovery
            _warn(f"events: webhook {_safe_url(self.url)}: not sent {what}: {e}")
            return False
        error = "no attempt"
        for attempt in range(1, self.attempts + 1):
            retry = True
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    resp.read(65536)
                    status = resp.status
                if 200 <= status < 300:
                    _log.debug("events: webhook %s accepted %s (HTTP %s, attempt %d)",
                               _safe_url(self.url), what, status, attempt)
                    return True
                error = f"HTTP {status}"            # pragma: no cover - urllib raises for non-2xx
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code} {e.reason}"
                retry = e.code >= 500 or e.code in self.RETRY_STATUS
                e.close()
            except urllib.error.URLError as e:
                error = str(e.reason)
            except (OSError, http.client.HTTPException, ValueError) as e:
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except Exception as e:                  # noqa: BLE001
                error = f"{type(e).__name__}: {e}"
            if not retry:
                break
            if attempt < self.attempts:
                _log.debug("events: webhook %s: %s for %s, retrying", _safe_url(self.url), error, what)
                time.sleep(self.backoff * (2 ** (attempt - 1)))
        _warn(f"events: webhook {_safe_url(self.url)} did not take {what} after {attempt} "
              f"attempt{'s' if attempt > 1 else ''}: {error}")
        return False


class CommandSink:
    """Run a command with the event's JSON on its standard input. Never raises from send().

    No shell: a command line is split with shlex. The environment adds CRASHUP_EVENT_TYPE, CRASHUP_EVENT_ID and
    CRASHUP_EVENT_SUBJECT. The command runs in its own session; past `timeout` seconds its whole process group is
    killed. A non-zero exit or a timeout is one warning (with the last line the command printed).
    """

    name = "command"

    def __init__(self, command: str | Sequence[str], timeout: float = 10):
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        if not argv:
            raise ValueError("hook command is empty")
        self.argv = argv
        self.timeout = float(timeout)

    def send(self, event: Mapping[str, Any]) -> bool:
        """True when the command exited 0 in time."""
        what = f"{event.get('type')} {event.get('id')}"
        program = os.path.basename(self.argv[0])
        try:
            body = to_json(event)
            env = dict(os.environ, CRASHUP_EVENT_TYPE=str(event["type"]), CRASHUP_EVENT_ID=str(event["id"]),
                       CRASHUP_EVENT_SUBJECT=str(event.get("subject", "")))
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True,
                                    close_fds=True)
        except Exception as e:                      # noqa: BLE001 - a sink never raises into the recovery
            _warn(f"events: hook command {program}: cannot run for {what}: "
                  f"{e.strerror if isinstance(e, OSError) and e.strerror else e}")
            return False
        try:
            output, _ = proc.communicate(body, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _warn(f"events: hook command {program} did not finish within {self.timeout:g}s for {what}: killed")
            return False
        except Exception as e:                      # noqa: BLE001
            _kill_group(proc)
            _warn(f"events: hook command {program} failed for {what}: {e}")
            return False
        if proc.returncode != 0:
            last = next((ln for ln in reversed(output.decode("utf-8", "replace").splitlines()) if ln.strip()), "")
            why = f"exit {proc.returncode}" if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
            _warn(f"events: hook command {program} failed for {what}: {why}" + (f": {last[:300]}" if last else ""))
            return False
        _log.debug("events: hook command %s took %s", program, what)
        return True


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=2)
    except Exception:                               # noqa: BLE001 - a grandchild left the group and holds the pipe
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe:
                    pipe.close()
            except OSError:
                pass
        proc.kill()
        proc.wait()


def _warn(message: str) -> None:
    # redacted here as well: the 'crashup' logger's redacting filter does not see records of its child loggers
    _log.warning("%s", log.redact(message))


# --- the emitter -----------------------------------------------------------------------------------------------------

class Emitter:
    """Deliver each event to every sink: journals first (their failure raises, after the other sinks had the event),
    then the others in order, each of which only ever warns.

    background=True hands the non-journal sinks to one worker thread (in order), so a slow webhook or hook never
    delays a recovery; call close() before the process exits to let it finish.
    """

    def __init__(self, sinks: Iterable[Any], *, background: bool = False):
        self.sinks = list(sinks)
        self.journals = [s for s in self.sinks if isinstance(s, JournalSink)]
        self.others = [s for s in self.sinks if not isinstance(s, JournalSink)]
        self.background = background
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, background: bool = False) -> "Emitter":
        """Sinks from the [events] options: journal, webhook_url (+ webhook_secret_file), hook_command."""
        sinks: list[Any] = []
        if cfg.get("journal"):
            sinks.append(JournalSink(cfg["journal"]))
        if cfg.get("webhook_url"):
            sinks.append(WebhookSink(cfg["webhook_url"], cfg.get("webhook_secret_file") or None))
        if cfg.get("hook_command"):
            sinks.append(CommandSink(cfg["hook_command"]))
        return cls(sinks, background=background)

    def publish(self, type: str, subject: str, payload: Mapping[str, Any]) -> dict:  # noqa: A002
        """make_event + emit; returns the event."""
        return self.emit(make_event(type, subject, payload))

    def emit(self, event: dict) -> dict:
        journal_error: JournalError | None = None
        for sink in self.journals:
            try:
                sink.send(event)
            except JournalError as e:
                journal_error = journal_error or e
        if self.background and self.others:
            self._enqueue(event)
        else:
            self._deliver(event)
        if journal_error is not None:
            raise journal_error
        return event

    def _deliver(self, event: dict) -> None:
        for sink in self.others:
            try:
                sink.send(event)
            except Exception as e:                  # noqa: BLE001 - a custom sink's bug must not stop a recovery
                _warn(f"events: sink {getattr(sink, 'name', type(sink).__name__)} failed for {event.get('type')} "
                      f"{event.get('id')}: {type(e).__name__}: {e}")

    def _enqueue(self, event: dict) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._queue = queue.Queue()
                self._worker = threading.Thread(target=self._run, args=(self._queue,), name="crashup-events",
                                                daemon=True)
                self._worker.start()
            self._queue.put(event)

    def _run(self, q: queue.Queue) -> None:
        while True:
            event = q.get()
            if event is None:
                return
            self._deliver(event)

    def close(self, timeout: float | None = 30) -> bool:
        """Wait for the background deliveries queued so far; False if they did not end within timeout."""
        with self._lock:
            worker, q = self._worker, self._queue
            self._worker = self._queue = None
        if worker is None or q is None:
            return True
        q.put(None)
        worker.join(timeout)
        return not worker.is_alive()

    def __enter__(self) -> "Emitter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
