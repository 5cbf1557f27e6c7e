"""Reading an events journal back: read(path) for what is there, follow(path) for what comes; listing(event) for a
terminal.

A journal is written by crashup (sinks.JournalSink), but it is a file on disk: a writer that died mid-line, a disk
error, an operator's editor or a tool that appends its own lines may leave anything in it. So a reader takes only
lines that are events (below) and skips the rest, counts them and says so in one warning; it never stops on a line
and never holds a line longer than MAX_LINE in memory. listing() is what a terminal may be shown of an event.

An event, for a reader: one line of strict UTF-8 JSON (no NaN or Infinity), an object whose envelope fields have the
types events.schema.json gives them: specversion, id, type, source and subject non-empty strings, time an RFC 3339
UTC time as contract.rfc3339() writes it (the schema's pattern), payload an object. The rest of the contract is not
judged: a journal written by a newer crashup (fields and types are only ever added) is still listed.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable, Iterator, Mapping

from crashup_lib import files, log
from crashup_lib.events.contract import is_event_time

MAX_LINE = 1 << 20          # a "line" longer than this is garbage, not an event: skipped, never read whole
CHUNK = 1 << 16             # bytes read at a time
WARN_EVERY = 60.0           # seconds: follow() says it skipped lines at most this often

_log = log.get("events")

_TEXT_FIELDS = ("specversion", "id", "type", "source", "subject")
FIELD_WIDTH = 1000          # characters of one field in a listing line


# --- one line -> an event, one event -> a listing line ---------------------------------------------------------------

def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_event(value: Any) -> bool:
    """Does this decoded JSON value carry the envelope of an event (see the module's docstring)?"""
    return (isinstance(value, dict)
            and all(isinstance(value.get(key), str) and value[key] for key in _TEXT_FIELDS)
            and isinstance(value.get("time"), str) and is_event_time(value["time"])
            and isinstance(value.get("payload"), dict))


def parse_line(line: bytes) -> dict | None:
    """One journal line -> the event, or None when it is not one (torn, garbage, not UTF-8, not an event)."""
    try:
        value = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):            # UnicodeDecodeError is a ValueError
        return None
    return value if is_event(value) else None


def sanitize(value: Any, width: int = FIELD_WIDTH) -> str:
    """value as one printable line for a terminal: log.one_line (control characters, line separators and lone
    surrogates escaped, e.g. \\x1b), and a tab too, which would break the listing's columns."""
    return log.one_line(value if isinstance(value, str) else str(value), width).replace("\t", "\\t")


def listing(event: Mapping[str, Any]) -> str:
    """The line `crashup events` prints for an event: time, type, subject, each through sanitize()."""
    time_, type_, subject = (sanitize(event.get(key, "")) for key in ("time", "type", "subject"))
    return f"{time_}  {type_:<38}{subject}"


# --- bytes -> lines, bounded ------------------------------------------------------------------------------------------

class _Lines:
    """Bytes in, lines out, never more than MAX_LINE held: an over-long line is given once as None (as soon as it
    is known to be too long) and the rest of it, up to its newline, is dropped unread into memory."""

    def __init__(self, limit: int = MAX_LINE, *, dropping: bool = False):
        self.limit = limit
        self._part = bytearray()
        self._dropping = dropping                   # inside a line already given up on

    def feed(self, data: bytes) -> Iterator[bytes | None]:
        start = 0
        while (cut := data.find(b"\n", start)) >= 0:
            if self._dropping:
                self._dropping = False              # the end of a line already given as None
            elif len(self._part) + cut - start > self.limit:
                self._part.clear()
                yield None
            else:
                line = bytes(self._part) + data[start:cut]
                self._part.clear()
                yield line
            start = cut + 1
        if self._dropping:
            return
        if len(self._part) + len(data) - start > self.limit:
            self._part.clear()
            self._dropping = True
            yield None
        else:
            self._part += data[start:]

    def rest(self) -> bytes | None:
        """What follows the last newline (a torn last line, or b""); None while dropping an over-long line."""
        return None if self._dropping else bytes(self._part)


def _open(path: str):
    """The journal opened for reading; OSError when it cannot be (a FIFO would block, a device might never end)."""
    try:
        return files.open_regular(path)
    except files.Missing:
        raise FileNotFoundError(path) from None
    except files.FileProblem as e:
        raise OSError(f"events journal {path}: {e}") from None


def _skipped(path: str, count: int) -> None:
    _log.warning("%s", log.redact(f"events: skipped {count} malformed line{'s' if count != 1 else ''} in "
                                  f"{sanitize(path)}"))


# --- read ------------------------------------------------------------------------------------------------------------

class Events(list):
    """The events of a journal, in order; .broken counts the lines that were not events, .broken_lines numbers
    them (1-based)."""

    def __init__(self, events: Iterable[dict] = (), broken_lines: Iterable[int] = ()):
        super().__init__(events)
        self.broken_lines = list(broken_lines)

    @property
    def broken(self) -> int:
        return len(self.broken_lines)


def _blank(line: bytes | None) -> bool:
    return line is not None and not line.strip()


def _event(line: bytes | None) -> dict | None:
    return parse_line(line) if line is not None else None


def _all_lines(f) -> Iterator[bytes | None]:
    lines = _Lines()
    while data := f.read(CHUNK):
        yield from lines.feed(data)
    rest = lines.rest()
    if rest:                                        # a last line without its newline (a torn write) counts too
        yield rest


def read(path: str, *, warn: bool = True) -> Events:
    """Every event of the journal at path. Lines that are not events are skipped, counted and (warn) reported in
    one warning; a missing journal has no events (other errors, e.g. permission denied, raise OSError)."""
    try:
        f = _open(path)
    except FileNotFoundError:
        return Events()
    found = Events()
    with f:
        for number, line in enumerate(_all_lines(f), 1):
            if _blank(line):
                continue
            event = _event(line)
            if event is None:
                found.broken_lines.append(number)
            else:
                found.append(event)
    if warn and found.broken:
        _skipped(path, found.broken)
    return found


# --- follow ----------------------------------------------------------------------------------------------------------

class follow:  # noqa: N801 - used like a function: for event in follow(path): ...
    """Iterate over the events appended to a journal from now on (or from its start), as they come.

    The position is taken when follow() is called, so an event appended after the call is seen even if iteration
    starts later. Polls every poll_interval seconds (inotify is not in the standard library); a partial last line
    waits for its end; lines that are not events are skipped, counted in .broken and reported in a warning once
    caught up (at most every WARN_EVERY seconds); the journal may not exist yet, be rotated (a new file at path:
    read from its start) or truncated in place (read again from its start). With timeout, iteration ends after that
    many seconds without a new event; otherwise it never ends (close() or break out of the loop).
    A journal that exists but cannot be opened (permission, not a regular file) raises OSError here, at once.
    """

    MAX_LINE = MAX_LINE

    def __init__(self, path: str, from_start: bool = False, *, poll_interval: float = 0.2,
                 timeout: float | None = None):
        self.path = path
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.broken = 0
        self._reported = 0
        self._warned_at: float | None = None
        self._file = None
        self._pos = 0
        self._lines = _Lines(self.MAX_LINE)
        try:
            self._open(at_end=not from_start, strict=True)
        except FileNotFoundError:
            pass                                    # not there yet: read from its start when it appears
        self._gen = self._events()

    def _open(self, at_end: bool, strict: bool = False) -> bool:
        try:
            f = _open(self.path)
        except OSError:
            if strict:
                raise
            return False
        self._file, self._pos, self._lines = f, 0, _Lines(self.MAX_LINE)
        if at_end:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - 65536)            # begin after the last complete line: a line being written
            f.seek(start)                           # right now is read whole once its end arrives
            cut = f.read(size - start).rfind(b"\n")
            if cut >= 0:
                self._pos = start + cut + 1
            elif start:                             # inside a line longer than what we looked at: drop its end
                self._pos, self._lines = size, _Lines(self.MAX_LINE, dropping=True)
        return True

    def _rotated(self) -> bool:
        """True when path is now another file than the one open; a truncation in place restarts from 0."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False                            # gone for now: keep the open one until a new file appears
        mine = os.fstat(self._file.fileno())
        if (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev):
            return True
        if mine.st_size < self._pos:                # truncated in place (copytruncate): start again at its start
            self._pos, self._lines = 0, _Lines(self.MAX_LINE)
        return False

    def _parse(self, line: bytes | None) -> dict | None:
        if _blank(line):
            return None
        event = _event(line)
        if event is None:
            self.broken += 1
        return event

    def _read(self) -> Iterator[dict]:
        """The events in what was appended since the last read, a chunk at a time (memory stays bounded)."""
        self._file.seek(self._pos)
        while data := self._file.read(CHUNK):
            self._pos += len(data)
            for line in self._lines.feed(data):
                event = self._parse(line)
                if event is not None:
                    yield event

    def _switch(self) -> None:
        """The journal was rotated: the torn line the old one ended with (if any) is broken; go to the new one."""
        rest = self._lines.rest()                   # None: an over-long line, counted already
        if rest and rest.strip():
            self.broken += 1
        self._close_file()
        self._open(at_end=False)

    def _report(self) -> None:
        """Once caught up: one warning for the lines skipped since the last one, at most every WARN_EVERY s."""
        now = time.monotonic()
        if self.broken > self._reported and (self._warned_at is None or now - self._warned_at >= WARN_EVERY):
            _skipped(self.path, self.broken - self._reported)
            self._reported, self._warned_at = self.broken, now

    def _events(self) -> Iterator[dict]:
        last = time.monotonic()
        try:
            while True:
                if self._file is None:
                    self._open(at_end=False)
                got = False
                if self._file is not None:
                    for event in self._read():
                        got = True
                        yield event
                    if not got and self._rotated():
                        self._switch()
                        continue
                self._report()
                if got:
                    last = time.monotonic()
                    continue
                if self.timeout is not None and time.monotonic() - last >= self.timeout:
                    return
                time.sleep(self.poll_interval)
        finally:
            self._close_file()

    def __iter__(self) -> "follow":
        return self

    def __next__(self) -> dict:
        return next(self._gen)

    def close(self) -> None:
        """Stop following: iteration ends and the journal is closed."""
        self._gen.close()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __enter__(self) -> "follow":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
