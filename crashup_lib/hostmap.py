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
    free = [h for h in hosts if h not in claimed]
    if node in free:
        return node
    candidates = [h for h in free if _same_machine(node, h)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise HostMapError(f"node {node!r} matches several nova-compute hosts by name: {_listing(candidates)}; "
                           f"map it explicitly in host_map")
    taken = [f"{h!r} is mapped to node {claimed[h]!r}" for h in hosts if h in claimed and _same_machine(node, h)]
    hint = f" ({'; '.join(taken)} by host_map)" if taken else ""
    raise HostMapError(f"node {node!r} matches no nova-compute host{hint}; known hosts: {_listing(hosts)}; "
                       f"map it in host_map")


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
    free = [n for n in nodes if n not in explicit]
    if host in free:
        return host
    candidates = [n for n in free if _same_machine(host, n)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise HostMapError(f"nova host {host!r} matches several Pacemaker nodes by name: {_listing(candidates)}; "
                           f"map them explicitly in host_map")
    taken = [f"{n!r} is mapped to host {explicit[n]!r}" for n in nodes if n in explicit and _same_machine(host, n)]
    hint = f" ({'; '.join(taken)} by host_map)" if taken else ""
    raise HostMapError(f"nova host {host!r} matches no Pacemaker node{hint}; known nodes: {_listing(nodes)}; "
                       f"map it in host_map")
