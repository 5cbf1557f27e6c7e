"""An event's fields, read defensively. The journal reader passes any event whose envelope is right (a newer
crashup may add fields), so a payload may hold anything: these return None for a field that is absent or of the
wrong kind, and whoever reads one skips the event rather than fail on it."""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping


def event_time(event: Mapping[str, Any]) -> float | None:
    """The envelope's time (RFC 3339 UTC, as the journal reader checked it) as epoch seconds."""
    return epoch(event.get("time"))


def epoch(value: Any) -> float | None:
    """An RFC 3339 date-time (a payload's fenced_at) as epoch seconds; None when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()


def text(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def number(payload: Mapping[str, Any], key: str) -> float | None:
    """A finite, non-negative number (durations and counts); bool is not one."""
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)
