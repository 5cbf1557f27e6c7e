"""What the guest monitor remembers across restarts, in one small JSON file (guest_state_file):
  handled    uuid -> the failure already acted on (kind, the qemu's domain id, when): a restarted monitor that finds
             the same crashed guest while reconciling does not act twice; forgotten once the guest runs again.
             `pending`: a reboot decided that nova has not accepted yet (it was down, or busy): a restarted monitor
             follows it up instead of leaving the guest down
  reboots    uuid -> when crashup rebooted it (time.time()), pruned to the window: the crash-loop counter
  left_down  uuids crashup left stopped: the operator starting one again starts its counter afresh
Written whole to a temporary file and renamed over the old one (a crash mid-write leaves the old file). A missing,
unreadable or corrupt file is an empty state (with a warning line): acting twice on one failure is bounded by the
crash-loop limit, refusing to start would leave every guest unwatched.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from crashup_lib import files

MAX_FILE = 1024 * 1024


@dataclasses.dataclass
class Handled:
    kind: str
    domain_id: int
    at: float
    pending: bool = False


@dataclasses.dataclass
class State:
    handled: dict[str, Handled] = dataclasses.field(default_factory=dict)
    reboots: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    left_down: set[str] = dataclasses.field(default_factory=set)

    def recent_reboots(self, uuid: str, now: float, window: float) -> int:
        return sum(1 for t in self.reboots.get(uuid, ()) if now - t < window)

    def prune(self, now: float, window: float, present: set[str] | None = None) -> None:
        """Drop reboots older than the window and, given the host's domains, what is about a domain gone."""
        self.reboots = {u: [t for t in ts if now - t < window] for u, ts in self.reboots.items()}
        self.reboots = {u: ts for u, ts in self.reboots.items() if ts}
        if present is not None:
            self.handled = {u: h for u, h in self.handled.items() if u in present}
            self.reboots = {u: ts for u, ts in self.reboots.items() if u in present}
            self.left_down &= present

    def to_json(self) -> str:
        return json.dumps({"handled": {u: dataclasses.asdict(h) for u, h in self.handled.items()},
                           "reboots": self.reboots, "left_down": sorted(self.left_down)}, sort_keys=True)


def load(path: str) -> tuple[State, str | None]:
    """The state in `path` and None, or an empty state and the problem in one line."""
    if not path or not os.path.exists(path):
        return State(), None
    try:
        doc = json.loads(files.read_text(path, MAX_FILE))
        return State(handled={str(u): Handled(str(h["kind"]), int(h["domain_id"]), float(h["at"]),
                                              bool(h.get("pending", False)))
                              for u, h in doc.get("handled", {}).items()},
                     reboots={str(u): [float(t) for t in ts] for u, ts in doc.get("reboots", {}).items()},
                     left_down={str(u) for u in doc.get("left_down", ())}), None
    except (files.FileProblem, ValueError, TypeError, KeyError, AttributeError) as e:
        return State(), f"guest state {path}: unreadable ({type(e).__name__}: {str(e)[:120]}): starting afresh"


def save(path: str, state: State) -> None:
    """Atomically (OSError to the caller)."""
    if not path:
        return
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
