"""A Timeline as text: one line per milestone and per server, times in seconds since the fencing."""
from __future__ import annotations

from crashup_lib import events
from crashup_lib.events.journal import sanitize
from crashup_lib.report.timeline import Outcome, Timeline

NAME_WIDTH = 40


def render(t: Timeline) -> str:
    lines = [f"recovery of {sanitize(t.node)} (nova host {sanitize(t.host)}), {sanitize(t.mode)} mode, "
             f"fenced at {events.rfc3339(t.fenced_at)} (t = 0)"]
    rows: list[tuple[float, str]] = []
    names = dict(t.instances) | {e.server_id: e.name for e in t.evacuations}
    for mark in t.marks:
        who = f" {sanitize(names.get(mark.server_id) or mark.server_id, NAME_WIDTH)}:" if mark.server_id else ""
        rows.append((mark.at, f"{t.since(mark.at):+9.2f}s  {mark.kind.value:<20}{who} {sanitize(mark.label)}"))
    for e in t.evacuations:
        name = sanitize(e.name or e.server_id, NAME_WIDTH)
        if e.outcome is Outcome.EVACUATED:
            what = f"evacuated to {sanitize(e.target_host)} in {e.end - e.start:.2f}s" + \
                (f" ({sanitize(e.detail)})" if e.detail else "")
            span = f"{t.since(e.start):+9.2f}s -> {t.since(e.end):+.2f}s"
        else:
            what = f"evacuation FAILED: {sanitize(e.detail)}"
            span = f"{'':>10} -> {t.since(e.end):+.2f}s"
        rows.append((e.start, f"{span:<26}{name} ({e.server_id}): {what}"))
    lines += [f"  {line}" for _, line in sorted(rows, key=lambda r: r[0])]
    moved = {e.server_id for e in t.evacuations}
    left = [(sid, name) for sid, name in t.instances if sid not in moved]
    if left and t.recovered_at is None:
        lines.append(f"  not yet evacuated: {', '.join(sanitize(n or s, NAME_WIDTH) for s, n in left)}")
    if t.recovered_at is not None:
        lines.append(f"  fencing -> recovered: {t.since(t.recovered_at):.2f}s")
    elif t.state:
        lines.append(f"  recovery request: {sanitize(t.state)} ({sanitize(t.note)})")
    else:
        lines.append("  not finished in the journal")
    if t.skipped:
        lines.append(f"  {t.skipped} events about this recovery could not be read (fields missing)")
    return "\n".join(lines)
