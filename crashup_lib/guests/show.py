"""`crashup guests`: this node's guests as libvirt and nova see them, each with the policy that applies and from
where, and the failure its state shows. Read-only, bounded (libvirt's open and listing in a thread joined with a
timeout: a hung libvirtd is abandoned, one line said)."""
from __future__ import annotations

from crashup_lib import libvirt as lv
from crashup_lib import nova
from crashup_lib.guests import kinds, policy
from crashup_lib.guests.monitor import libvirt_uri

TIMEOUT = 10.0


def rows(cfg, host: str, client=None, opener=None) -> list[dict]:
    """One row per domain: uuid, name, state, failure (its kind, or ''), server status, policy and its source.
    `client`: a nova.Nova, or None not to ask nova (the policy is then the default's)."""
    found = []
    for d in lv.list_domains(libvirt_uri(cfg, host), TIMEOUT, opener):
        failure = kinds.from_state(d.state, d.reason)
        server = None
        if client is not None:
            try:
                server = client.server(d.uuid)
            except nova.NovaNotFound:
                server = None
        chosen = policy.choose(server, cfg.guest_failure_policy) if server is not None else None
        found.append({"uuid": d.uuid, "name": d.name, "state": f"{lv.state_name(d.state)}/{d.reason}",
                      "failure": failure.kind.value if failure else "",
                      "server": (f"{server.status}{'/' + server.task_state if server.task_state else ''}"
                                 f" on {server.host}") if server else ("-" if client is not None else "?"),
                      "policy": f"{chosen.policy.value} ({chosen.source})" if chosen else
                      f"{cfg.guest_failure_policy} (default)"})
    return found


def render(found: list[dict]) -> str:
    lines = [f"{'domain uuid':<38}{'name':<22}{'state':<14}{'failure':<10}{'server':<28}policy"]
    lines += [f"{r['uuid']:<38}{r['name']:<22}{r['state']:<14}{r['failure']:<10}{r['server']:<28}{r['policy']}"
              for r in found]
    return "\n".join(lines)
