"""The isolation settings and the one deadline derived from them (docs/isolation.md).

ONE source of the timings: the inventory's `isolation:` section, rendered both into the guard's clone (agent
parameters) and into the fallback fence device (its parameters); both read them back with `parse`, and
`deadline` says how long after the node's loss its guard has certainly acted, so the fence agent never claims an
off before that. A leaf: the fence agent (an adapter) imports it.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import re
from typing import Mapping


class Policy(enum.Enum):
    DESTROY = "destroy"                   # the guests are killed: nothing can write to their disks any more
    PAUSE = "pause"                       # the guests are paused: their memory kept, for an operator to judge


class SettingsError(ValueError):
    """A bad isolation setting, as one line naming the setting."""


@dataclasses.dataclass(frozen=True)
class Settings:
    enabled: bool = False
    #: the loss must last this long (the grace: a shorter blip never counts). Above a controller's stall: in the lab
    #: a compute node's cut hung the pacemaker-controld that held the connections for ~34 s (pacemakerd killed and
    #: respawned it) and every other node of that controller had no quorate answer for 38.5 s (docs/isolation.md)
    isolation_timeout: float = 60.0
    probe_interval: float = 2.0           # between the end of one probe and the start of the next
    probe_timeout: float = 5.0            # one probe (crm_node --quorum) at most
    action_timeout: float = 30.0          # stopping nova-compute and destroying the guests at most
    watchdog: str = ""                    # the device's path; "" (or none) = no device: see docs/isolation.md
    watchdog_timeout: float = 0.0         # the device's timeout when one is armed
    policy: Policy = Policy.DESTROY
    margin: float = 10.0                  # the fallback fence agent waits deadline + margin (clock skew, slack)


#: the settings by name, in the order of the agents' metadata
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
#: what the guard's clone is given (agents/crashup daemon=isolation), and what fixes the fallback level's wait (its
#: fence device's parameters): both from here, so a new setting reaches both or neither
GUARD = tuple(n for n in FIELDS if n not in ("enabled", "margin"))
FENCE = tuple(n for n in FIELDS if n not in ("enabled", "policy"))
_NUMBERS = {"isolation_timeout": (1, 3600), "probe_interval": (0.1, 600), "probe_timeout": (0.1, 600),
            "action_timeout": (1, 3600), "watchdog_timeout": (0, 3600), "margin": (0, 3600)}
_NUMBER = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?")
_DEVICE = re.compile(r"/[A-Za-z0-9_./-]{1,250}")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "")


def deadline(settings: Settings) -> float:
    """Seconds after the node's loss by which its guard has certainly acted (or its watchdog reset it).

    The last good probe started before the loss; the guard decides once the loss has lasted isolation_timeout,
    at the latest one interval and one probe later; then its action is bounded. A guard that hangs stops petting
    the watchdog after its last good probe (at most one probe timeout after the loss), so the device resets the
    node by then: the certain time is the later of the two."""
    guard = settings.probe_interval + settings.probe_timeout + settings.isolation_timeout + settings.action_timeout
    if settings.watchdog and settings.watchdog_timeout > 0:
        return max(guard, settings.probe_timeout + settings.watchdog_timeout)
    return guard


def _number(name: str, text: str) -> float:
    low, high = _NUMBERS[name]
    if not _NUMBER.fullmatch(text):
        raise SettingsError(f"isolation: {name}: {text[:40]!r} is not a number of seconds")
    value = float(text)
    if not low <= value <= high:
        raise SettingsError(f"isolation: {name}: {text} is not between {low:g} and {high:g} seconds")
    return value


def parse(values: Mapping[str, str]) -> Settings:
    """Settings from text values (agent parameters, fence device options, the inventory), defaults for what is
    missing or empty; an unknown name or a bad value is a SettingsError. Checked together: the grace holds two
    probes at least, and a watchdog needs a timeout longer than a tolerated blip, else the device would reset a node
    the guard keeps."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise SettingsError(f"isolation: unknown setting {unknown[0][:40]!r}")
    found: dict[str, object] = {}
    for name, raw in values.items():
        text = raw.strip() if isinstance(raw, str) else raw
        if not isinstance(text, str):
            raise SettingsError(f"isolation: {name}: not a text value")
        if text == "" and name != "enabled":
            continue
        if name == "enabled":
            if text.lower() not in _TRUE + _FALSE:
                raise SettingsError(f"isolation: enabled: {text[:40]!r} is not true or false")
            found[name] = text.lower() in _TRUE
        elif name == "policy":
            try:
                found[name] = Policy(text.lower())
            except ValueError:
                raise SettingsError(f"isolation: policy: {text[:40]!r} is not destroy or pause") from None
        elif name == "watchdog":
            if text.lower() == "none":
                continue
            if not _DEVICE.fullmatch(text) or ".." in text.split("/"):
                raise SettingsError(f"isolation: watchdog: {text[:40]!r} is not a device path (or none)")
            found[name] = text
        else:
            found[name] = _number(name, text)
    settings = Settings(**found)
    return check(settings)


def check(settings: Settings) -> Settings:
    """`settings` if they hold together, else a SettingsError."""
    for name in _NUMBERS:
        if not math.isfinite(getattr(settings, name)):
            raise SettingsError(f"isolation: {name}: not a finite number")
    if settings.watchdog and settings.watchdog_timeout <= 0:
        raise SettingsError("isolation: watchdog needs a watchdog_timeout")
    # one lost probe leaves the guard without a good answer for probe_interval + max(probe_interval, probe_timeout)
    # at most (guard.py starts the next probe at once after a hung one): the grace holds that and a probe more
    least = settings.probe_interval + settings.probe_timeout + max(settings.probe_interval, settings.probe_timeout)
    if settings.isolation_timeout < least:
        raise SettingsError(f"isolation: isolation_timeout {settings.isolation_timeout:g}s must be at least "
                            f"probe_interval + probe_timeout + the longer of the two ({least:g}s): one lost probe "
                            "must never isolate")
    blip = settings.isolation_timeout + settings.probe_interval + settings.probe_timeout
    if settings.watchdog and settings.watchdog_timeout <= blip:
        raise SettingsError(f"isolation: watchdog_timeout {settings.watchdog_timeout:g}s must exceed "
                            f"isolation_timeout + probe_interval + probe_timeout ({blip:g}s): a blip the guard "
                            "tolerates would reset the node")
    return settings


def values(settings: Settings) -> dict[str, str]:
    """The settings as the text `parse` reads back (what `crashup pcs render` writes as agent and device params)."""
    out = {}
    for name in FIELDS:
        value = getattr(settings, name)
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, Policy):
            out[name] = value.value
        elif isinstance(value, (int, float)):
            out[name] = f"{value:.3f}".rstrip("0").rstrip(".")       # what _NUMBER reads: 3 decimals at most
        else:
            out[name] = value
    return out
