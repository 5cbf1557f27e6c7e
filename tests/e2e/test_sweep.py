"""The CrashUp sweep in the real lab: instances stuck in a task in nova's own cell database (made by nova's
migrations, written by the running nova), observed through real backends (nova's service heartbeat, the node's BMC
over IPMI) and the lab's hypervisor (nova's fake driver, tests/lab/hypervisor.py), fixed through nova's API or a
compare-and-swap on that database. Its events (stale_recovered, stale_unrecoverable, orphaned) reach the lab's
notification bus as the journal has them.

Stuck states are written to the database (the lab cannot hold a real task open: its fake driver finishes every task
at once, and a compute that is not there makes nova refuse most actions)."""
import datetime
import os
import sqlite3
import subprocess
import sys

import pytest

from crashup_lib import config, health, nova
from crashup_lib import events
from crashup_lib.events import bus as events_bus
from crashup_lib.sweep import fix, wiring
from crashup_lib.sweep.orphans import NovaOrphans
from crashup_lib.sweep.scan import cutoff
from crashup_lib.sweep.sweep import sweep_once
from tests.e2e.scenario import BusTap, boot, delete_servers, journal
from tests.helpers import wait_for
from tests.lab import pacemaker, topology
from tests.lab.hypervisor import FakeHypervisorBackend

pytestmark = pytest.mark.lab

CELLS = [topology.RUN_DIR / "nova" / f"{cell}.sqlite" for cell in ("cell1", "cell0")]
STALE_PERIOD = 60


def ago(seconds):
    return (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")


def sweep_config(lab, **extra):
    overrides = {"nova_connection": " ".join(f"sqlite:///{p}" for p in CELLS),
                 "recovery_stale_period": str(STALE_PERIOD), "recovery_resync_count": "2",
                 "recovery_resync_interval": "1"}
    overrides.update(extra)
    return config.load(str(lab.CRASHUP_CONF), overrides=overrides, env={})


def sweep(lab, cfg, routes, *, dry_run=False, finders=None):
    """One sweep with the lab's configuration: its events go to the journal and the bus (the emitter is closed after,
    as the sweep's daemon does at its stop)."""
    said = []
    emitter = None if dry_run else events.Emitter.from_config(cfg)
    try:
        result = sweep_once(wiring.sweepers_from_config(cfg), health.Collector.from_config(cfg, routes),
                            emitter, stale_period=cfg.recovery_stale_period, dry_run=dry_run,
                            say=said.append, finders=finders)
    finally:
        if emitter is not None:
            emitter.close(10)
    return result, said


def row(uuid):
    """The instance's row as nova's database holds it (read-only, beside the running nova)."""
    with sqlite3.connect(f"file:{CELLS[0]}?mode=ro", uri=True, timeout=30) as db:
        return db.execute("SELECT vm_state, task_state, updated_at FROM instances WHERE uuid = ?",
                          (uuid,)).fetchone()


def recorded(lab, since, kind):
    return {e["payload"]["id"]: e["payload"] for e in journal(lab, since) if e["type"] == kind}


def stuck_pair(lab, host, count, prefix):
    """`count` servers on `host`; the first made stuck rebooting (its guest runs), the second stuck powering-off
    from active (its guest really shut off); both an hour old."""
    ids = boot(lab, host, count, prefix)
    conn = lab.connection()
    conn.compute.stop_server(ids[1])
    conn.compute.wait_for_server(conn.compute.get_server(ids[1]), status="SHUTOFF", interval=0.5, wait=120)
    box = lab.nova()
    box.set_instance_db(ids[0], task_state="rebooting", updated_at=ago(3600))
    box.set_instance_db(ids[1], task_state="powering-off", vm_state="active", updated_at=ago(3600))
    return ids, conn, box


@pytest.fixture(autouse=True)
def tidy(lab):
    yield
    for n in lab.nodes():
        lab.bmc_fault(n, "")
    delete_servers(lab)


def test_stuck_instances_end_in_the_state_the_rules_give(lab):
    ids, conn, box = stuck_pair(lab, lab.node("compute2").nova_host, 4, "stuck")
    box.set_instance_db(ids[2], task_state="image_snapshot", updated_at=ago(3600))   # guest running
    box.set_instance_db(ids[3], task_state="rebooting", updated_at=ago(5))           # not stale yet
    fresh = row(ids[3])
    since = datetime.datetime.now().timestamp()

    cfg = sweep_config(lab)
    result, _ = sweep(lab, cfg, {"nova": [health.NovaHeartbeatBackend(nova.Nova.from_config(cfg)),
                                          FakeHypervisorBackend(box)]})

    assert result.found == 3 and result.ok, result.summary()
    assert result.counts == {"reset": 2, "cas-update": 1}, result.summary()
    servers = {s.id: s for s in conn.compute.servers(all_projects=True)}
    for sid in (ids[0], ids[2]):                                # os-resetState: active, no task
        assert (servers[sid].vm_state, servers[sid].task_state, servers[sid].status) == ("active", None, "ACTIVE")
    assert (servers[ids[1]].vm_state, servers[ids[1]].task_state) == ("stopped", None)   # CAS: what the guest is
    assert row(ids[3]) == fresh                                 # younger than recovery_stale_period: untouched
    changes = recorded(lab, since, "crashup.resource.stale_recovered")
    assert {sid: changes[sid]["action"] for sid in ids[:3]} == {ids[0]: "reset-state", ids[1]: "cas-update",
                                                                ids[2]: "reset-state"}
    for e in journal(lab, since):
        events.check_payload(e["type"], e["payload"])


def test_dry_run_changes_nothing_and_a_racing_update_is_never_overwritten(lab):
    ids, _, box = stuck_pair(lab, lab.node("compute2").nova_host, 2, "race")
    before = {sid: row(sid) for sid in ids}
    cfg = sweep_config(lab)
    routes = {"nova": [FakeHypervisorBackend(box)]}

    result, said = sweep(lab, cfg, routes, dry_run=True)
    assert result.found == 2 and len(said) == 2 and all(line.startswith("would ") for line in said), said
    assert {sid: row(sid) for sid in ids} == before

    # the operator's command, on the lab's own configuration: a dry run prints the plan and changes nothing
    env = dict(os.environ, CRASHUP_CONFIG=str(lab.CRASHUP_CONF),
               CRASHUP_NOVA_CONNECTION=" ".join(f"sqlite:///{p}" for p in CELLS),
               CRASHUP_RECOVERY_STALE_PERIOD=str(STALE_PERIOD))
    cli = subprocess.run([sys.executable, "-m", "crashup_lib.cli", "sweep", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and all(sid in cli.stdout for sid in ids), (cli.stdout, cli.stderr)
    assert {sid: row(sid) for sid in ids} == before

    # nova moves the rows on between the sweep's read and its write: neither the API reset nor the CAS lands
    sweeper = wiring.sweepers_from_config(cfg)[0][1]()
    stuck = {s.id: s for s in sweeper.scan(cutoff(STALE_PERIOD, datetime.datetime.utcnow()))}
    racing = ago(1)
    for sid in ids:
        box.set_instance_db(sid, updated_at=racing)
    assert fix.apply(fix.plan(stuck[ids[0]], "running"), sweeper) == fix.LOST_RACE       # API route
    assert fix.apply(fix.plan(stuck[ids[1]], "shut_off"), sweeper) == fix.LOST_RACE      # database route
    assert row(ids[0])[:2] == ("active", "rebooting") and row(ids[1])[:2] == ("active", "powering-off")
    assert all(row(sid)[2].startswith(racing[:19]) for sid in ids)


def test_an_unreachable_host_is_retried_then_acted_on(lab):
    node = lab.node("compute3")
    ids = boot(lab, node.nova_host, 2, "unreach")
    box = lab.nova()
    ban = ["crm_resource", "--resource", f"{lab.NOVA_COMPUTE}-clone", "--node", node.name]
    subprocess.run(ban + ["--ban"], check=True, capture_output=True, timeout=60)  # its hypervisor stops answering
    try:
        pacemaker.wait_for(lambda st: not lab.compute_running(st, node), 120, f"nova-compute stopped on {node.name}")
        box.set_instance_db(ids[0], task_state="rebooting", updated_at=ago(3600))
        lab.bmc_fault(node, "hang")                                             # and its BMC too
        cfg = sweep_config(lab)
        hypervisor = FakeHypervisorBackend(box)
        ipmi = health.PowerBackend(lambda host: lab.bmc(node), timeout=3)
        since = datetime.datetime.now().timestamp()

        result, _ = sweep(lab, cfg, {"nova": [ipmi, hypervisor]})

        # asked 1 + recovery_resync_count times, then the rules' unknown: ERROR, with an alert
        assert hypervisor.calls == [ids[0]] * 3
        assert result.counts == {"error": 1}, result.summary()
        server = lab.connection().compute.get_server(ids[0])
        assert (server.vm_state, server.task_state) == ("error", None)
        alert = recorded(lab, since, "crashup.resource.stale_unrecoverable")[ids[0]]
        assert alert["action"] == "reset-error" and "unknown" in alert["reason"]

        # the BMC answers again and nova sees the host's service down: the task died with the host
        lab.bmc_fault(node, "")
        box.set_instance_db(ids[1], task_state="rebooting", updated_at=ago(3600))
        heartbeat = health.NovaHeartbeatBackend(nova.Nova.from_config(cfg))
        resource = health.Resource("nova", "instance", ids[1], node.nova_host)
        pacemaker.wait_for(lambda _: heartbeat.observe(resource).reality == health.HOST_DOWN, 120,
                           f"nova sees {node.nova_host} down")
        result, _ = sweep(lab, cfg, {"nova": [heartbeat, ipmi, FakeHypervisorBackend(box)]})
        assert result.counts == {"reset": 1}, result.summary()
        server = lab.connection().compute.get_server(ids[1])
        assert (server.vm_state, server.task_state) == ("active", None)
    finally:
        subprocess.run(ban + ["--clear"], check=True, capture_output=True, timeout=60)
    lab.wait_rejoined(node)


SWEEP_EVENTS = (events.RESOURCE_STALE_RECOVERED, events.RESOURCE_STALE_UNRECOVERABLE, events.RESOURCE_ORPHANED)


def test_the_sweeps_events_reach_the_bus_as_the_journal_has_them(lab):
    """A fix, an alert and an orphan in one sweep: each event on the bus once, equal to the journal's, at its priority
    (an unrecoverable resource is an ERROR notification), in the journal's order."""
    here, there = lab.node("compute2").nova_host, lab.node("compute3").nova_host
    ids, conn, box = stuck_pair(lab, here, 4, "sweepbus")                  # reset (running) and CAS (shut off)
    # nova places ids[2] on the other host, where no guest runs: the reboot cannot finish (error, an alert)
    box.set_instance_db(ids[2], task_state="rebooting", host=there, node=there, updated_at=ago(3600))
    # nova places ids[3] on the other host with no task: its guest here is an orphan (reported, never touched)
    box.set_instance_db(ids[3], host=there, node=there)
    hypervisor = FakeHypervisorBackend(box)
    since = datetime.datetime.now().timestamp()
    try:
        with BusTap(lab, {"e2e-sweep-bus": ["notifications.*"]}) as tap:
            result, _ = sweep(lab, sweep_config(lab), {"nova": [hypervisor]}, finders={"nova": NovaOrphans(hypervisor)})
            evs = [e for e in journal(lab, since) if e["type"] in SWEEP_EVENTS]
            wait_for("the sweep's events on the bus", lambda: {m["payload"]["id"] for _, _, m in tap.events()} >=
                     {e["id"] for e in evs}, 20, 0.1)
            got = [m for _, _, m in tap.events() if m["payload"]["id"] in {e["id"] for e in evs}]
    finally:
        for sid in ids[2:]:                                            # back where its guest is, for the clean-up
            box.set_instance_db(sid, task_state=None, host=here, node=here)
    # the orphan pass runs after the fixes: ids[2], in error now with no task, is an orphan here too
    assert result.counts == {"reset": 1, "cas-update": 1, "error": 1} and result.orphans == 2, result.summary()
    assert sorted((e["type"], e["payload"]["id"]) for e in evs) == sorted([
        (events.RESOURCE_STALE_RECOVERED, ids[0]), (events.RESOURCE_STALE_RECOVERED, ids[1]),
        (events.RESOURCE_STALE_UNRECOVERABLE, ids[2]), (events.RESOURCE_ORPHANED, ids[2]),
        (events.RESOURCE_ORPHANED, ids[3])])
    assert [m["payload"] for m in got] == evs                         # once each, as in the journal, in its order
    for msg in got:
        event = msg["payload"]
        assert (msg["message_id"], msg["event_type"]) == (event["id"], event["type"])
        assert msg["priority"] == events_bus.priority(event["type"])
    assert {m["payload"]["type"]: m["priority"] for m in got}[events.RESOURCE_STALE_UNRECOVERABLE] == "ERROR"
