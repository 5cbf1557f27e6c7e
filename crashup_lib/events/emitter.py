"""The Emitter: each event to every sink, durable ones first.

Emitter(sinks).emit(event) gives the event to the durable sinks (the journal) in the caller's thread, then to the
best-effort ones (webhook, hook) in order, in the caller's thread or, with background=True, in one worker thread so
a slow receiver never delays a recovery. A durable sink's failure is raised once the others had the event: the
caller (the recovery pipeline) retries its step, so an event is not lost. Emitter.from_config(cfg) builds the sinks
from the [events] options (journal, webhook_url, webhook_secret_file, hook_command, and the notification bus:
transport_url_file...). The bus is a durable sink too: its send() only appends the event to an fsync'ed outbox that
a background publisher drains (events/bus.py), so the broker never delays the caller. close() ends the background
work, each sink's own included (the bus's publisher), within its timeout.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterable, Mapping

from crashup_lib.events import bus
from crashup_lib.events.contract import make_event
from crashup_lib.events.sinks import CommandSink, JournalError, JournalSink, WebhookSink, warn


class Emitter:
    """Deliver each event to every sink: the durable ones first (their failure raises, after the other sinks had
    the event), then the others in order, each of which only ever warns.

    A sink is durable when its `durable` attribute is true (a sink without one is best effort). background=True
    hands the best-effort sinks to one worker thread (in order); call close() before the process exits to let it
    finish.
    """

    def __init__(self, sinks: Iterable[Any], *, background: bool = False):
        self.sinks = list(sinks)
        self.durable = [s for s in self.sinks if getattr(s, "durable", False)]
        self.best_effort = [s for s in self.sinks if not getattr(s, "durable", False)]
        self.background = background
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, background: bool = False) -> "Emitter":
        """Sinks from the [events] options: journal, the bus (transport_url_file: its publisher starts, replaying
        what a previous process left), webhook_url (+ webhook_secret_file), hook_command. ConfigError for a bad
        one."""
        # the bus's outbox before the journal: a process killed between the two leaves the event for the bus (what
        # the operator's tooling acts on) rather than only in the journal; the step's retry writes both again
        sinks: list[Any] = []
        bus_sink = bus.from_config(cfg)
        if bus_sink is not None:
            sinks.append(bus_sink)
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
        for sink in self.durable:
            try:
                sink.send(event)
            except JournalError as e:
                journal_error = journal_error or e
        if self.background and self.best_effort:
            self._enqueue(event)
        else:
            self._deliver(event)
        if journal_error is not None:
            raise journal_error
        return event

    def _deliver(self, event: dict) -> None:
        for sink in self.best_effort:
            try:
                sink.send(event)
            except Exception as e:                  # noqa: BLE001 - a custom sink's bug must not stop a recovery
                warn(f"events: sink {getattr(sink, 'name', type(sink).__name__)} failed for {event.get('type')} "
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
        """Wait for the background deliveries queued so far, then close the sinks that have a close(timeout)
        (the bus's publisher: it publishes what the broker takes in the time left); False if something did not end
        within timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            worker, q = self._worker, self._queue
            self._worker = self._queue = None
        ended = True
        if worker is not None and q is not None:
            q.put(None)
            worker.join(timeout)
            ended = not worker.is_alive()
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                left = 30.0 if end is None else max(0.0, end - time.monotonic())
                try:
                    ended = close(left) is not False and ended
                except Exception as e:          # noqa: BLE001 - a custom sink's bug must not stop a shutdown
                    warn(f"events: closing sink {getattr(sink, 'name', type(sink).__name__)} failed: {e}")
                    ended = False
        return ended

    def __enter__(self) -> "Emitter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
