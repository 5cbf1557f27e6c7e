"""Pacemaker node names <-> nova service hosts (pure: no I/O).

Real sites name the same machine differently: Pacemaker knows "compute1.example.org", nova-compute registered
"compute1" (or the reverse). Fencing the wrong host's nova service would evacuate a live host, so the mapping is
strict: the explicit map (`host_map`, pcmk_host_map syntax) wins and must name a known host; without an entry, an
exact name, then the short name (the part before the first dot, compared case-insensitively as DNS does), where one
side must be the short form of the other; and two candidates are an error, never a guess. A host or node that the
explicit map gives to someone else is never matched by name.
"""
from __future__ import annotations

from typing import Iterable, Mapping


class HostMapError(LookupError):
    """No single answer; the message (one line) names the candidates or the known names."""


def short(name: str) -> str:
    return name.split(".", 1)[0].lower()


def _same_machine(a: str, b: str) -> bool:
    """'compute1' ~ 'compute1.example.org' (either way round); two different FQDNs never match by short name."""
    a_l, b_l = a.lower(), b.lower()
    return a_l == b_l or ("." not in a_l and a_l == short(b_l)) or ("." not in b_l and b_l == short(a_l))


def _names(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))            # de-duplicated, order kept


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "(none)"


def resolve(node: str, nova_hosts: Iterable[str], explicit: Mapping[str, str] | None = None) -> str:
    """The nova service host of Pacemaker node `node`."""
    explicit = explicit or {}
    hosts = _names(nova_hosts)
    if node in explicit:
        host = explicit[node]
        if host not in hosts:
            raise HostMapError(f"host_map maps node {node!r} to {host!r}, which is not a nova-compute host "
                               f"(known: {_listing(hosts)})")
        return host
    # a host the map gives to another node is that node's, whatever its name looks like
    claimed = {h: n for n, h in explicit.items()}
    return _by_name(node, hosts, claimed, subject=f"node {node!r}", several="nova-compute hosts",
                    one="nova-compute host", known="hosts", owner="node", fix="map it explicitly")


def node_for_host(host: str, nodes: Iterable[str], explicit: Mapping[str, str] | None = None) -> str:
    """The Pacemaker node of nova service host `host` (the reverse of resolve, with the same rules)."""
    explicit = explicit or {}
    nodes = _names(nodes)
    mapped = sorted(n for n, h in explicit.items() if h == host)
    if len(mapped) > 1:
        raise HostMapError(f"host_map maps several nodes to host {host!r}: {_listing(mapped)}")
    if mapped:
        if mapped[0] not in nodes:
            raise HostMapError(f"host_map maps node {mapped[0]!r} to host {host!r}, but there is no such "
                               f"Pacemaker node (known: {_listing(nodes)})")
        return mapped[0]
    # a node with an explicit entry belongs to the host named there
    return _by_name(host, nodes, explicit, subject=f"nova host {host!r}", several="Pacemaker nodes",
                    one="Pacemaker node", known="nodes", owner="host", fix="map them explicitly")


def _by_name(name: str, pool: list[str], claimed: Mapping[str, str], *, subject: str, several: str, one: str,
             known: str, owner: str, fix: str) -> str:
    """The one member of `pool` named like `name` (exactly, else by short name), ignoring members `claimed` by the
    explicit map; HostMapError naming the candidates or the known names otherwise."""
    free = [p for p in pool if p not in claimed]
    if name in free:
        return name
    candidates = [p for p in free if _same_machine(name, p)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise HostMapError(f"{subject} matches several {several} by name: {_listing(candidates)}; {fix} in host_map")
    taken = [f"{p!r} is mapped to {owner} {claimed[p]!r}" for p in pool if p in claimed and _same_machine(name, p)]
    hint = f" ({'; '.join(taken)} by host_map)" if taken else ""
    raise HostMapError(f"{subject} matches no {one}{hint}; known {known}: {_listing(pool)}; map it in host_map")
