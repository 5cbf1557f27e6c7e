"""The bus's durable outbox: events accepted for the notification bus and not yet confirmed by the broker.

One file per event in one directory (default /var/lib/crashup/outbox, beside the journal: /run would not survive a
reboot), named `<sequence>-<event id>.json`, where the sequence (20 digits) is the time of the append in nanoseconds,
raised when needed above every name this process has seen, so names sort in the order events were accepted: per
process strictly, between processes by time. Why a file per event rather than one append-only file:
- append() is atomic: the event is written to a temporary file, fsync'ed, renamed to its name and the directory
  fsync'ed before append() returns. A writer killed at any point leaves either the whole event or no event (a
  temporary file, removed later), never a torn one; there is no torn tail to repair and nothing to parse to find
  where the next event starts.
- done is one unlink(): no cursor file to fsync after each publish, no compaction of a file that only grows.
- several processes may append at once (the recovery daemon, the sweep daemon, `crashup recover`), each with names
  of its own, with no lock on the write path; one of them at a time drains (lock(): an flock on `.lock`), so an event
  is not published twice by two drainers and order is kept.
- an operator sees what waits with `ls`, and a file that is not an event (bad/) costs only itself.
Cost: two fsyncs per event, a few milliseconds, on the caller's thread, as the journal already does.

Failover: the directory is per controller unless outbox_dir is on storage the controllers share. Events accepted
on a controller that dies wait there until a crashup daemon runs on it again (they are in that controller's
journal too); the daemon that takes over publishes what it emits itself. On shared storage (NFS, CephFS: flock
works on both) the next daemon drains what the dead one left.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
import uuid
from typing import Any, Mapping

from crashup_lib import log
from crashup_lib.events.contract import to_json
from crashup_lib.events.sinks import JournalError, _fsync_dir

_log = log.get("events")

_NAME = re.compile(r"^(\d{20})-([0-9a-f-]{1,64})\.json$")
_TMP = ".tmp-"
STALE_TMP = 300.0           # seconds: a temporary file this old belongs to a writer that died mid-append
MAX_EVENT = 1 << 20         # bytes: an event file larger than this is not one of ours


class OutboxError(JournalError):
    """The outbox could not take the event (a durable sink's failure: the Emitter raises it)."""


class Outbox:
    """A directory of pending events: append() (durable), pending() (names in order), read(), remove(),
    quarantine(), lock()/unlock() (one drainer at a time)."""

    def __init__(self, directory: str):
        if not directory or not os.path.isabs(directory):
            raise ValueError(f"outbox directory must be an absolute path, not {directory!r}")
        self.directory = directory
        self._last = 0
        self._seq_lock = threading.Lock()
        self._lock_fd: int | None = None

    # --- writing -------------------------------------------------------------------------------------------------
    def append(self, event: Mapping[str, Any]) -> str:
        """Store the event durably (fsync'ed, renamed, directory fsync'ed); its file's name. OutboxError when it
        cannot."""
        try:
            return self._append(to_json(event) + b"\n", str(event.get("id", "")))
        except OSError as e:
            message = f"events outbox {self.directory}: cannot append: {e.strerror or e}"
            raise (OutboxError(e.errno, message) if e.errno else OutboxError(message)) from e

    def _append(self, data: bytes, event_id: str) -> str:
        self._ensure_dir()
        if not re.fullmatch(r"[0-9a-f-]{1,64}", event_id):
            event_id = uuid.uuid4().hex
        name = f"{self._sequence():020d}-{event_id}.json"
        tmp = os.path.join(self.directory, f"{_TMP}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, os.path.join(self.directory, name))
        except BaseException:
            _unlink(tmp)
            raise
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)                   # the rename is durable: the event is accepted
        finally:
            os.close(dfd)
        return name

    def _sequence(self) -> int:
        with self._seq_lock:
            if not self._last:              # above what a previous process left, whatever the clock says now
                names = self.pending()
                self._last = int(names[-1][:20]) if names else 0
            self._last = max(time.time_ns(), self._last + 1)
            return self._last

    def _ensure_dir(self) -> None:
        if os.path.isdir(self.directory):
            return
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        os.chmod(self.directory, 0o750)
        _fsync_dir(os.path.dirname(self.directory.rstrip("/")) or "/")

    # --- draining ------------------------------------------------------------------------------------------------
    def pending(self) -> list[str]:
        """The names of the events waiting, oldest first ([] when the directory does not exist yet)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _NAME.match(n))

    def __len__(self) -> int:
        return len(self.pending())

    def read(self, name: str) -> dict | None:
        """The event in `name`; None when it is gone (another drainer took it). ValueError when the file is not an
        event (quarantine() it)."""
        try:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_EVENT + 1)
        if len(data) > MAX_EVENT:
            raise ValueError(f"larger than {MAX_EVENT} bytes")
        try:
            event = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(f"not JSON: {log.error_line(e, 100)}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event.get("id"):
            raise ValueError("not an event (no type or id)")
        return event

    def remove(self, name: str) -> None:
        """The broker has it: done. (A crash before the unlink publishes it again: at least once.)"""
        _unlink(os.path.join(self.directory, name))

    def quarantine(self, name: str) -> str:
        """Move a file that is not an event to bad/, out of the way of the ones behind it; its new path."""
        bad = os.path.join(self.directory, "bad")
        os.makedirs(bad, mode=0o750, exist_ok=True)
        target = os.path.join(bad, name)
        os.replace(os.path.join(self.directory, name), target)
        return target

    def clean(self, now: float | None = None) -> int:
        """Remove the temporary files of writers that died mid-append (those events were never accepted)."""
        now = time.time() if now is None else now
        removed = 0
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        for name in names:
            if name.startswith(_TMP):
                path = os.path.join(self.directory, name)
                try:
                    if now - os.stat(path).st_mtime > STALE_TMP:
                        os.unlink(path)
                        removed += 1
                except OSError:
                    pass
        return removed

    # --- one drainer ---------------------------------------------------------------------------------------------
    def lock(self) -> bool:
        """Become the one drainer (an flock on .lock, held until unlock() or the process ends): True if so."""
        if self._lock_fd is not None:
            return True
        try:
            self._ensure_dir()
            fd = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            _log.debug("events outbox %s: cannot open its lock: %s", self.directory, e)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
