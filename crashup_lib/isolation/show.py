"""`crashup isolation`: what this node's guard sees (its state file) and what the cluster answers now."""
from __future__ import annotations

import json
import pathlib
import time

from crashup_lib import files
from crashup_lib.isolation import STATE_FILE, probe
from crashup_lib.isolation.timing import Settings, deadline

MAX_STATE = 64 * 1024


def read_view(state_dir: str) -> tuple[dict | None, str]:
    """The guard's last saved view, or None and why not (one line)."""
    path = pathlib.Path(state_dir) / STATE_FILE
    if not path.exists():
        return None, f"no guard state in {path} (is the guard running here?)"
    try:
        view = json.loads(files.read_text(str(path), MAX_STATE))
    except (files.FileProblem, OSError, ValueError) as e:
        return None, f"guard state {path} unreadable: {e}"
    return (view, "") if isinstance(view, dict) else (None, f"guard state {path} is not the guard's")


def text(view: dict | None, why: str, answer: str, said: str, settings: Settings, now: float) -> str:
    lines = [f"cluster now: {answer}" + (f" ({said})" if said else "")]
    if view is None:
        lines.append(f"guard: {why}")
        lines.append(f"settings: deadline {deadline(settings):g}s after a loss (these options' values)")
        return "\n".join(lines)
    age = now - float(view.get("at", now))
    lines.append(f"guard on {view.get('node')} ({view.get('host')}): {view.get('phase')}, last answer "
                 f"{view.get('answer')}" + (f" ({view['reason']})" if view.get("reason") else "")
                 + f", {age:.0f}s ago")
    if view.get("phase") != "healthy":
        lines.append(f"  no quorate cluster for {view.get('lost_for')}s")
    s = view.get("settings", {})
    lines.append(f"  isolated after {s.get('isolation_timeout')}s, then {s.get('policy')} the guests; certainly "
                 f"done {view.get('deadline')}s after a loss; watchdog "
                 + (f"{s.get('watchdog')} ({s.get('watchdog_timeout')}s)" if view.get("watchdog_armed") else "none"))
    o = view.get("outcome")
    if o:
        lines.append(f"  acted: nova-compute {o.get('nova_compute')}; guests stopped: {len(o.get('guests', []))}, "
                     f"failed: {len(o.get('failed', []))}" + (f"; libvirt: {o['libvirt']}" if o.get("libvirt") else ""))
    return "\n".join(lines)


def main(state_dir: str, settings: Settings, as_json: bool = False) -> int:
    """Print the guard's view and a probe now; exit 0 when the cluster answers quorate, 1 otherwise."""
    view, why = read_view(state_dir)
    answer, said = probe.quorum(settings.probe_timeout)
    if as_json:
        print(json.dumps({"now": answer.value, "reason": said, "guard": view, "problem": why}, indent=2))
    else:
        print(text(view, why, answer.value, said, settings, time.time()))
    return 0 if answer is probe.Answer.QUORATE else 1
