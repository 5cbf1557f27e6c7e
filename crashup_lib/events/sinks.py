"""Where events go. A sink has a `name`, a `send(event)` and says whether it is `durable`:

  JournalSink   durable: one JSON line per event, appended under flock and fsync'ed; the record of truth, so its
                failure raises JournalError (the Emitter lets the other sinks have the event first)
  WebhookSink   best effort: HTTP POST, signed with HMAC-SHA256 when a secret is configured; bounded retries
  CommandSink   best effort: runs a command (no shell) with the event on its stdin; bounded by a timeout

A durable sink has taken the event when send() returns (a crash after that loses nothing) and raises JournalError
when it cannot; a best-effort sink is bounded in time, never raises, and says what went wrong in one warning. Every
sink sends the same bytes, contract.to_json(event).

Verifying a webhook signature (receiver side): the header is ``X-Crashup-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact request body bytes, keyed with the content of webhook_secret_file stripped of surrounding
whitespace. Compute it over the raw body as received, before any JSON parsing, and compare in constant time::

    expected = "sha256=" + hmac.new(key, raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Crashup-Signature"])

(or verify_signature(raw_body, key, header) from this module). The body holds the event's id and time, so a
receiver refuses replays by remembering the ids it has seen and checking that time is recent.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import http.client
import os
import re
import shlex
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Sequence

from crashup_lib import __version__, log, proc
from crashup_lib.events.contract import to_json

_log = log.get("events")


class JournalError(OSError):
    """A durable sink (the journal, the record of truth) could not take the event."""


def warn(message: str) -> None:
    # redacted here as well: the 'crashup' logger's redacting filter does not see records of its child loggers
    _log.warning("%s", log.redact(message))


# --- journal ---------------------------------------------------------------------------------------------------------

class JournalSink:
    """Append each event as one JSON line. The journal is the record of truth: a failure raises JournalError.

    The line is written with one write() under an exclusive flock and fsync'ed before send() returns, so concurrent
    writers (the daemon, agents, the CLI) never interleave and an acknowledged event survives a crash. A partial
    last line left by a writer that died mid-write is closed with a newline first, so it costs only itself.
    """

    name = "journal"
    durable = True

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


# --- webhook ---------------------------------------------------------------------------------------------------------

def sign(body: bytes, key: bytes) -> str:
    """The X-Crashup-Signature value for body: 'sha256=' + hex HMAC-SHA256 keyed with key."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, key: bytes, header: str | None) -> bool:
    """For receivers: does the X-Crashup-Signature header match the raw body? Constant-time comparison."""
    return bool(header) and hmac.compare_digest(sign(body, key), header.strip())


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
    durable = False
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
            warn(f"events: webhook {_safe_url(self.url)}: not sent {what}: {e}")
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
        warn(f"events: webhook {_safe_url(self.url)} did not take {what} after {attempt} "
              f"attempt{'s' if attempt > 1 else ''}: {error}")
        return False


# --- command hook ----------------------------------------------------------------------------------------------------

class CommandSink:
    """Run a command with the event's JSON on its standard input. Never raises from send().

    No shell: a command line is split with shlex. The environment adds CRASHUP_EVENT_TYPE, CRASHUP_EVENT_ID and
    CRASHUP_EVENT_SUBJECT; the working directory is /. It runs through proc.run: in its own session, whose whole
    process group is killed past `timeout` seconds, its output bounded. A non-zero exit or a timeout is one warning
    (with the last line the command printed).
    """

    name = "command"
    durable = False

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
            env = dict(os.environ, CRASHUP_EVENT_TYPE=str(event["type"]), CRASHUP_EVENT_ID=str(event["id"]),
                       CRASHUP_EVENT_SUBJECT=str(event.get("subject", "")))
            done = proc.run(self.argv, self.timeout, input=to_json(event), env=env, cwd="/")
        except proc.NotInstalled as e:
            warn(f"events: hook command {program}: cannot run for {what}: {e}")
            return False
        except proc.TimedOut:
            warn(f"events: hook command {program} did not finish within {self.timeout:g}s for {what}: killed")
            return False
        except Exception as e:                      # noqa: BLE001 - a sink never raises into the recovery
            warn(f"events: hook command {program} failed for {what}: {e}")
            return False
        if done.returncode != 0:
            last = done.last_line(300)
            why = f"exit {done.returncode}" if done.returncode > 0 else f"killed by signal {-done.returncode}"
            warn(f"events: hook command {program} failed for {what}: {why}" + (f": {last}" if last else ""))
            return False
        _log.debug("events: hook command %s took %s", program, what)
        return True
