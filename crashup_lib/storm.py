"""The storm guard's decision: do the hosts that failed within the window look like host failures to recover, or like
a shared cause (a partitioned management network, a bad rollout) where evacuating everything makes it worse?

Pure: the failed nodes, the fleet's size and the limits in, a Storm (or None) out.

- Without failure domains: more than `max_hosts` failed hosts, or more than `max_fraction` of the compute nodes,
  trips the guard (the guard's first rule, unchanged).
- With failure domains (`storm_domains`: node -> rack, power feed, top-of-rack switch...): a rack losing its power or
  its switch takes every host in it at once, and that is exactly the failure HA exists for. Failed hosts that all lie
  within at most `max_domains` domains are one incident: `max_hosts` does not apply to them. Hosts with no domain
  are each a domain of their own. `max_fraction` still applies to every failure: past it, the survivors could not
  take the load anyway, and so many hosts failing at once is more likely the network than the hosts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Limits:
    max_hosts: int                     # failed hosts allowed across domains (storm_max_hosts)
    max_fraction: float                # of all compute nodes, always (storm_max_fraction)
    max_domains: int = 1               # domains whose failures are one incident (storm_max_domains)
    domains: Mapping[str, str] = dataclasses.field(default_factory=dict)     # node -> domain (storm_domains)


@dataclasses.dataclass(frozen=True)
class Storm:
    hosts: tuple[str, ...]             # the failed nodes, sorted
    limit: int                         # the host limit that was passed
    domains: tuple[str, ...] = ()      # their failure domains, when domains are configured
    reason: str = ""


def domains_of(hosts: Sequence[str], domains: Mapping[str, str]) -> tuple[str, ...]:
    """The failure domains of `hosts`, sorted; a host with no domain is its own (named after it)."""
    return tuple(sorted({domains.get(h) or f"host:{h}" for h in hosts}))


def decide(failed: Sequence[str], computes: int, limits: Limits) -> Storm | None:
    """None: recover; a Storm: hold automatic evacuation. `failed`: the nodes with an open request fenced within the
    window (the one asking included); `computes`: how many compute nodes the cluster has."""
    hosts = tuple(sorted(set(failed)))
    by_fraction = int(limits.max_fraction * max(1, computes))
    if len(hosts) > by_fraction:
        return Storm(hosts, by_fraction, domains_of(hosts, limits.domains) if limits.domains else (),
                     f"more than {limits.max_fraction:g} of the {computes} compute nodes failed")
    if not limits.domains:
        if len(hosts) > limits.max_hosts:
            return Storm(hosts, min(limits.max_hosts, by_fraction),
                         reason=f"more than {limits.max_hosts} hosts failed")
        return None
    spread = domains_of(hosts, limits.domains)
    if len(spread) <= limits.max_domains or len(hosts) <= limits.max_hosts:
        return None
    return Storm(hosts, min(limits.max_hosts, by_fraction), spread,
                 f"more than {limits.max_hosts} hosts failed across {len(spread)} failure domains "
                 f"(more than {limits.max_domains})")
