"""Time bounds of backend calls: every call is bounded by the backend's `timeout` (lowered to what is left of the
nearest `crashup_lib.deadline`), so a hung libvirt daemon, BMC or API never hangs the sweep; the answer is then
unknown ("timed out"). Calls run in a worker thread joined with that timeout. libvirt needs it: its keepalive only
starts once virConnectOpen has returned, a TCP peer that accepts and never answers holds virConnectOpen forever, and
no signal gets it out (libvirt retries its poll() on EINTR without returning to Python). A thread left hanging is
abandoned (a daemon thread); while it hangs, further calls to the same endpoint answer unknown at once instead of
piling up threads. IPMI (pyghmi, pure Python) runs inline under crashup_lib.deadline's SIGALRM on the main thread
instead: an interrupted pyghmi call stops for good, an abandoned one would keep driving pyghmi's process-wide
session table while the next login uses it.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from crashup_lib import deadline
from crashup_lib.health.model import HealthError, Observation, error_line
from crashup_lib.rules import UNKNOWN


class Bounded:
    """Runs one backend call within `timeout`, as one of two ways:
    - in a daemon worker thread joined with the timeout (the default: libvirt blocks inside C, where no signal
      reaches it). One call at a time per key: while an abandoned call still hangs on an endpoint, the next call
      to it answers at once instead of adding a thread;
    - inline under crashup_lib.deadline, for backends that say `bounds_itself` (pure Python that SIGALRM
      interrupts, like pyghmi), when called on the main thread: an interrupted call stops for good, where an
      abandoned worker would go on driving pyghmi's shared session table under the next call's feet."""

    def __init__(self):
        self._hung: dict[str, tuple[threading.Thread, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, fn: Callable[[], Observation], timeout: float, what: str,
                 inline: bool = False) -> Observation:
        if inline and threading.current_thread() is threading.main_thread():
            return self._inline(fn, timeout, what)
        try:
            return self.call(key, fn, timeout, what)
        except HealthError as e:
            return Observation(UNKNOWN, str(e))

    def call(self, key: str, fn: Callable[[], Any], timeout: float, what: str) -> Any:
        """fn() in a daemon worker joined with `timeout`: its value, or HealthError (one line starting with
        `what`) when it timed out, still hangs since an earlier call, or raised."""
        with self._lock:
            previous, after = self._hung.get(key, (None, 0.0))
            if previous is not None and previous.is_alive():
                raise HealthError(f"{what}: timed out after {after:g}s and is still hanging")
            self._hung.pop(key, None)
        box: list = []

        def run():
            try:
                box.append(("ok", fn()))
            except Exception as e:          # becomes an unknown answer; BaseExceptions stay in the worker
                box.append(("error", e))

        worker = threading.Thread(target=run, name=f"health {key}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            with self._lock:
                self._hung[key] = (worker, timeout)
            raise HealthError(f"{what}: timed out after {timeout:g}s")
        if not box:
            raise HealthError(f"{what}: the call ended without an answer")
        status, value = box[0]
        if status == "error":
            raise HealthError(f"{what}: {error_line(value)}")
        return value

    @staticmethod
    def _inline(fn, timeout: float, what: str) -> Observation:
        if timeout <= 0:
            return Observation(UNKNOWN, f"{what}: no time left")
        try:
            with deadline.deadline(timeout, what):
                return fn()
        except deadline.DeadlineExceeded as e:
            if e.what != what:
                raise                       # an outer deadline: the caller's
            return Observation(UNKNOWN, f"{what}: timed out after {timeout:g}s")
        except Exception as e:
            return Observation(UNKNOWN, f"{what}: {error_line(e)}")


def time_left(timeout: float) -> float:
    """A call's bound: its own timeout, lowered to answer before the nearest crashup_lib.deadline fires."""
    left = deadline.remaining()
    if left is None:
        return timeout
    return max(0.0, min(timeout, left - min(0.5, left / 10)))
