"""`crashup evacuate HOST [--to HOST]`: a damaged host that is still partly up, emptied by host recovery.

Never an evacuation while the host may still write to shared disks: crashup does not evacuate anything itself. It
asks Pacemaker to fence the node (pacemaker.request_fencing: the node's fencing level powers it off through its BMC,
confirmed, then fence_crashup_nova records the recovery request and forces its nova-compute down), and the recovery
daemon does the rest on its normal path (fencing proven, stale tasks repaired, the plan, evacuations followed to the
end, the host held off until done). This command follows the request and says how it ends.

`--to HOST` is the plan's target_host (`crashup plan --target`): it must reach the daemon, so it is written into the
recovery request (RecoveryRequest.target) before the fencing, which keeps an open request as it is; the DC's
transition that request starts (the hold rule stops nova-compute) is let finish before the fencing. If the wait or
the fencing fails or is interrupted, that request is written back released ("withdrawn"), so nothing holds the node
or fences it later; exit 1.

The state of an evacuation is the recovery request in the CIB, as for any failed host: nothing more is needed to
resume it (the daemon resumes it); running this again while it is open is refused (`crashup status` follows it).
"""
from __future__ import annotations

import time

from crashup_lib import pacemaker
from crashup_lib import plan as planning
from crashup_lib.maintenance.common import LOG, Context, Refused, find_host, follow_request, refuse_bad_target, \
    refuse_open_recovery
from crashup_lib.recovery import pipeline


def evacuate(ctx: Context, name: str, to: str | None = None, dry_run: bool = False, wait: bool = True) -> int:
    target = find_host(ctx, name)
    if not target.node:
        raise Refused(f"{target.host}: no Pacemaker node maps to it: crashup fences only the cluster's nodes "
                      "(see [pacemaker] host_map)")
    refuse_open_recovery(ctx, target)
    refuse_bad_target(ctx, target.host, to)
    try:
        the_plan = pipeline.plan_for_host(ctx.nova, target.host, ctx.cfg, target_host=to)
    except planning.PlanError as e:
        raise Refused(f"{target.host}: {e}") from None
    ctx.out(f"evacuate {target.host}: fence node {target.node} through Pacemaker (its level: power off, then nova), "
            f"then the recovery daemon evacuates it:\n{the_plan.render().rstrip()}")
    if dry_run:
        return 0
    ctx.require_quorum(f"fencing {target.node}")
    ctx.host_event(target, "evacuate", "fence_requested", len(the_plan.steps), f"to {to or '(plan)'}")
    ctx.out(f"{target.node}: fencing")
    since = time.time()
    written = None
    if to:                             # before the fencing: the daemon's first plan has it
        written = pacemaker.RecoveryRequest(
            node=target.node, state="pending", mode=ctx.cfg.get("mode", "auto"), fenced_at=since, updated_at=since,
            host=target.host, note=f"crashup evacuate --to {to}", target=to)
        ctx.cluster.write_request(written)
    try:
        # After the request: its hold rule stops nova-compute there, a transition the fencing must not cut (lab: the
        # stop left in flight makes the node UNCLEAN and its rejoin fails), so the DC settles first.
        ctx.cluster.wait_settled()
        ctx.cluster.request_fencing(target.node)
    except BaseException as e:         # Ctrl-C included: a request left open would get the node fenced later
        if written is not None:
            _withdraw(ctx, written, e)
        raise                          # the adapter's one line (PacemakerError), exit 1
    ctx.out(f"{target.node}: fenced; the recovery daemon takes it from here")
    return _follow(ctx, target, since) if wait else 0


def _withdraw(ctx: Context, written: pacemaker.RecoveryRequest, why: BaseException) -> None:
    """Close the request written for --to when its fencing did not happen: released, so the daemon neither holds the
    node's nova-compute off nor fences it again. Only while it is still ours (pending) and no fencing of the node is
    recorded since: if one happened after all (the command gave up waiting for it), the daemon owns the request."""
    try:
        current = ctx.cluster.request(written.node)
        ours = current is not None and current.state == "pending" and abs(current.fenced_at - written.fenced_at) < 1
        if ours and ctx.cluster.fenced_since(written.node, written.fenced_at) is None:
            ctx.cluster.write_request(current.moved_to(
                "released", f"crashup evacuate --to {written.target}: fencing failed "
                            f"({type(why).__name__}): withdrawn"))
    except Exception as e:            # the line the operator gets must still be the fencing's
        LOG.error("%s: the recovery request written for --to could not be withdrawn: %s (crashup release %s)",
                  written.node, e, written.node)


def _follow(ctx: Context, target, since: float) -> int:
    """The request until it is closed (or handed over in notify mode), its notes as progress."""
    req = follow_request(ctx, target.node, since)
    if not req.open:
        ctx.host_event(target, "evacuate", "finished", 0, f"recovery {req.state}: {req.note}")
    return 1 if req.open and req.hold is pacemaker.Hold.STORM else 0
