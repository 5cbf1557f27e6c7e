"""Which guest-failure policy applies to a server (pure).

Policies: `notify` (an event crashup.instance.guest_failed, nothing else), `reboot` (a HARD reboot through nova's
API, so nova stays the source of truth, at most guest_max_reboots in guest_reboot_window), `none` (crashup leaves
the guest alone: nova's own hw:watchdog_action, or the operator, decides).

Keys, following nova's naming (flavor extra specs namespaced `ns:key`, as `hw:watchdog_action`; image properties
with `_`, as `hw_watchdog_action`):
  server metadata      crashup:guest_failure_policy     the server's owner, for this one server
  flavor extra spec    crashup:guest_failure_policy     the operator, for a class of servers
  image property       crashup_guest_failure_policy     the image's owner (read at compute API >= 2.98)
  crashup.conf         [guests] guest_failure_policy    the site's default (notify)
The most specific wins, in that order, as crashup.conf's own sources do: a policy is per server, and the owner of a
server knows best what its guest wants (and every reboot stays bounded by the crash-loop limit whatever they chose).
A value that is not a policy is skipped (with a problem line) and the next source decides.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Mapping

METADATA_KEY = "crashup:guest_failure_policy"
FLAVOR_KEY = "crashup:guest_failure_policy"
IMAGE_KEY = "crashup_guest_failure_policy"


class Policy(str, enum.Enum):
    NOTIFY = "notify"
    REBOOT = "reboot"
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class Chosen:
    policy: Policy
    source: str                              # "server metadata", "flavor", "image", "default"
    problems: tuple[str, ...] = ()           # values skipped, one line each


def parse(value) -> Policy | None:
    """A policy from a key's value ('Reboot ' is reboot), None when it names none."""
    if not isinstance(value, str):
        return None
    try:
        return Policy(value.strip().lower())
    except ValueError:
        return None


def choose(server, default: Policy | str) -> Chosen:
    """The policy of a nova.Server (metadata, flavor extra specs, embedded image properties), else `default`."""
    flavor = server.flavor if isinstance(server.flavor, Mapping) else {}
    sources = (("server metadata", METADATA_KEY, server.metadata),
               ("flavor", FLAVOR_KEY, flavor.get("extra_specs")),
               ("image", IMAGE_KEY, server.image_properties))
    problems = []
    for where, key, mapping in sources:
        if not isinstance(mapping, Mapping) or key not in mapping:
            continue
        found = parse(mapping[key])
        if found is not None:
            return Chosen(found, where, tuple(problems))
        problems.append(f"{where} {key}={str(mapping[key])[:60]!r} is not a policy (notify, reboot, none): skipped")
    return Chosen(Policy(default), "default", tuple(problems))
