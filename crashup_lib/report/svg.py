"""A Timeline as an SVG picture, written by hand (no plotting library on a controller): a Gantt-like chart with
seconds since the fencing on the axis, a dashed line per milestone (fenced, recovery began, recovered...), one bar
per server (evacuate call -> final state on the new host; red when it failed), a diamond where a stale task was
repaired, and a legend. Every text passes the journal's sanitizer and XML escaping: names come from nova."""
from __future__ import annotations

import math
from xml.sax.saxutils import escape, quoteattr

from crashup_lib import events
from crashup_lib.events.journal import sanitize
from crashup_lib.report.timeline import Kind, Outcome, Timeline

WIDTH = 1000
LEFT = 290                  # the plot starts here; server names on its left
RIGHT = WIDTH - 40
ROW = 24
BAR = 14
MARK_LINE = 16              # each milestone's label has its own line above the plot
COLOURS = {Outcome.EVACUATED: "#2e8b57", Outcome.FAILED: "#c0392b"}
MARK_COLOURS = {Kind.FENCED: "#444444", Kind.BEGAN: "#1f6fb2", Kind.RECOVERED: "#2e8b57", Kind.STORM: "#d35400",
                Kind.UNCONFIRMED: "#c0392b", Kind.REPAIRED: "#8e44ad"}
NAME_WIDTH = 38
HALO = 'stroke="white" stroke-width="3" paint-order="stroke"'      # a label stays readable across a line
CHAR = 6.8                  # an average character's width at font-size 12, to place a label where it fits


def _t(value: str, width: int = 200) -> str:
    return escape(sanitize(value, width))


def nice_step(span: float, ticks: int = 8) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over span seconds."""
    raw = max(span, 1e-3) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def render(t: Timeline) -> str:
    milestones = [m for m in t.marks if m.kind is not Kind.REPAIRED]
    repairs = [m for m in t.marks if m.kind is Kind.REPAIRED]
    rows = list(t.evacuations)
    moved = {e.server_id for e in rows}
    waiting = [(sid, name) for sid, name in t.instances if sid not in moved]
    start = min([0.0] + [t.since(e.start) for e in rows])
    span = max(t.since(t.end) - start, 1.0)
    step = nice_step(span)
    stop = math.ceil((start + span) / step) * step
    first = math.floor(start / step) * step

    def x(seconds: float) -> float:
        return LEFT + (seconds - first) / (stop - first) * (RIGHT - LEFT)

    top = 58 + MARK_LINE * len(milestones)                  # title, then the milestones' labels
    height_rows = ROW * (len(rows) + len(waiting) or 1)
    axis_y = top + height_rows + 6
    legend_y = axis_y + 48
    height = legend_y + 4 * 18 + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
           f"<title>crashup recovery of {_t(t.node)}</title>",
           f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="20" y="24" font-size="16" font-weight="bold">recovery of {_t(t.node)} '
           f'(nova host {_t(t.host)}), {_t(t.mode)} mode</text>',
           f'<text x="20" y="42" fill="#555">fenced at {events.rfc3339(t.fenced_at)} (t = 0); '
           f'{_summary(t)}</text>']
    # grid and axis
    tick = first
    while tick <= stop + step / 2:
        out.append(f'<line x1="{x(tick):.1f}" y1="{top - 4}" x2="{x(tick):.1f}" y2="{axis_y}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{axis_y + 16}" text-anchor="middle">{tick:g}</text>')
        tick = round(tick + step, 9)
    out.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{RIGHT}" y2="{axis_y}" stroke="#333"/>')
    out.append(f'<text x="{(LEFT + RIGHT) / 2:.0f}" y="{axis_y + 34}" text-anchor="middle">'
               f'seconds since the fencing</text>')
    # milestones: a dashed line each, its label on its own line above the plot
    for i, m in enumerate(milestones):
        colour, mx, ly = MARK_COLOURS[m.kind], x(t.since(m.at)), 58 + MARK_LINE * i
        anchor = "end" if mx > (LEFT + RIGHT) / 2 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<line class="milestone" x1="{mx:.1f}" y1="{ly - 4}" x2="{mx:.1f}" y2="{axis_y}" '
                   f'stroke="{colour}" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{mx + dx:.1f}" y="{ly}" text-anchor="{anchor}" fill="{colour}" {HALO}>'
                   f'{t.since(m.at):.2f}s {_t(m.label, 90)}</text>')
    # one row per server: its bar, or a note that it was not evacuated (yet)
    for i, e in enumerate(rows):
        y = top + ROW * i
        x0, x1 = x(t.since(e.start)), max(x(t.since(e.end)), x(t.since(e.start)) + 2)
        colour = COLOURS[e.outcome]
        tip = (f"{e.name or e.server_id}: {e.outcome.value} "
               + (f"to {e.target_host} in {e.end - e.start:.2f}s" if e.outcome is Outcome.EVACUATED else e.detail))
        out.append(f'<text x="{LEFT - 8}" y="{y + BAR - 2}" text-anchor="end">{_t(e.name or e.server_id, NAME_WIDTH)}'
                   f'</text>')
        out.append(f'<rect class="bar {e.outcome.value}" data-server={quoteattr(sanitize(e.server_id))} '
                   f'x="{x0:.1f}" y="{y}" width="{x1 - x0:.1f}" height="{BAR}" rx="2" fill="{colour}"'
                   + ('' if e.start_known else ' fill-opacity="0.45"') + f'><title>{_t(tip, 300)}</title></rect>')
        label = (f"{sanitize(e.target_host, 40)} {e.end - e.start:.1f}s" if e.outcome is Outcome.EVACUATED
                 else f"failed: {sanitize(e.detail, 60)}")
        out.append(_bar_label(label, x0, x1, y + BAR - 2, colour, "white" if e.start_known else "#5a1a12"))
        for r in (r for r in repairs if r.server_id == e.server_id):
            out.append(_diamond(x(t.since(r.at)), y + BAR / 2, r.label))
    for j, (sid, name) in enumerate(waiting):
        y = top + ROW * (len(rows) + j)
        out.append(f'<text x="{LEFT - 8}" y="{y + BAR - 2}" text-anchor="end">{_t(name or sid, NAME_WIDTH)}</text>')
        out.append(f'<text x="{LEFT + 4}" y="{y + BAR - 2}" fill="#777">not evacuated'
                   f'{"" if t.recovered_at is not None else " (yet)"}</text>')
        for r in (r for r in repairs if r.server_id == sid):
            out.append(_diamond(x(t.since(r.at)), y + BAR / 2, r.label))
    out += _legend(legend_y)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _bar_label(label: str, x0: float, x1: float, y: float, colour: str, inside: str) -> str:
    """A bar's label where it fits: after the bar, else inside it, else before it."""
    width = CHAR * len(label)
    if x1 + 4 + width <= WIDTH - 10:
        return f'<text x="{x1 + 4:.1f}" y="{y}" fill="{colour}" {HALO}>{escape(label)}</text>'
    if x1 - x0 >= width + 8:
        return f'<text x="{x1 - 4:.1f}" y="{y}" text-anchor="end" fill="{inside}">{escape(label)}</text>'
    return f'<text x="{x0 - 4:.1f}" y="{y}" text-anchor="end" fill="{colour}" {HALO}>{escape(label)}</text>'


def _summary(t: Timeline) -> str:
    if t.recovered_at is not None:
        return f"recovered {t.since(t.recovered_at):.2f}s after the fencing"
    return f"not finished ({_t(t.state)}: {_t(t.note, 80)})" if t.state else "not finished in the journal"


def _diamond(cx: float, cy: float, label: str) -> str:
    r = 6
    return (f'<path class="repair" d="M{cx:.1f} {cy - r:.1f} L{cx + r:.1f} {cy:.1f} L{cx:.1f} {cy + r:.1f} '
            f'L{cx - r:.1f} {cy:.1f} Z" fill="{MARK_COLOURS[Kind.REPAIRED]}"><title>{_t(label)}</title></path>')


def _legend(y: float) -> list[str]:
    items = [(f'<rect x="20" y="{y - 10}" width="24" height="{BAR - 2}" fill="{COLOURS[Outcome.EVACUATED]}"/>',
              "evacuated: from the evacuate call to the server's final state on its new host (label: host, seconds)"),
             (f'<rect x="20" y="{y + 8}" width="24" height="{BAR - 2}" fill="{COLOURS[Outcome.FAILED]}" '
              f'fill-opacity="0.45"/>', "evacuation failed for good (its first call is not in the journal: drawn "
                                        "from the recovery's start)"),
             (_diamond(32, y + 31, "repair"), "stale task repaired before the evacuation"),
             (f'<line x1="20" y1="{y + 49}" x2="44" y2="{y + 49}" stroke="#444" stroke-dasharray="4 3"/>',
              "milestone: fenced (t = 0), recovery began, storm guard, recovered")]
    out = []
    for i, (shape, words) in enumerate(items):
        out += [shape, f'<text x="54" y="{y + 18 * i}">{escape(words)}</text>']
    return out
