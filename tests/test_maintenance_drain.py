"""crashup drain / undrain: the pure decisions, and the runs against tests/fakes.py's FakeNova grown with the calls
the operator verbs make (MaintenanceNova: services that remember being disabled, live and cold migration, rebuild,
metadata)."""
import dataclasses
import time

import pytest

from crashup_lib import cli, config, nova, pacemaker
from crashup_lib.maintenance import common, drain
from crashup_lib.maintenance.drain import STOPPED_KEY, Action
from tests.fakes import FakeCluster, FakeNova, server


class MaintenanceNova(FakeNova):
    """FakeNova plus what the verbs call. A server with metadata `fake:no_live` is refused live migration (as nova
    refuses one with a PCI device); cold migration leaves it VERIFY_RESIZE on another host until confirmed."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.disabled: dict[str, str] = {}
        self.forced: set = set()
        self.calls: list[tuple[str, str]] = []
        self.images = {"img-backup": {"id": "img-backup", "name": "backup", "status": "ACTIVE"}}
        self._before_resize: dict[str, str] = {}

    def services(self, host=None, binary="nova-compute"):
        return [dataclasses.replace(s, status="disabled" if s.host in self.disabled else "enabled",
                                    disabled_reason=self.disabled.get(s.host), forced_down=s.host in self.forced,
                                    state="down" if s.host in self.forced else s.state)
                for s in super().services(host, binary)]

    def disable(self, host, reason):
        self.calls.append(("disable", host))
        self.disabled[host] = reason

    def enable(self, host):
        self.calls.append(("enable", host))
        self.disabled.pop(host, None)

    def _other(self, sid):
        return next(h for h in self.up if h != self._servers[sid].host and h not in self.disabled)

    def live_migrate(self, server_id, target_host=None):
        found = self._known("live_migrate", server_id)
        self.calls.append(("live_migrate", server_id))
        if "fake:no_live" in found.metadata:
            raise nova.NovaBadRequest("live_migrate", server_id, "HTTP 400: cannot live-migrate", status=400,
                                      nova_message="cannot live-migrate")
        self._update(server_id, host=target_host or self._other(server_id))

    def migrate(self, server_id, target_host=None):
        found = self._known("migrate", server_id)
        self.calls.append(("migrate", server_id))
        self._before_resize[server_id] = found.status
        to = target_host or self._other(server_id)
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._migrations.insert(0, nova.Migration(next(self._ids), server_id, found.host, to, "finished",
                                                  "migration", now, now))
        self._update(server_id, host=to, status="VERIFY_RESIZE")

    def confirm_resize(self, server_id):
        self._known("confirm_resize", server_id)
        self.calls.append(("confirm_resize", server_id))
        self._update(server_id, status=self._before_resize.pop(server_id))
        self._migrations = [dataclasses.replace(m, status="confirmed") if m.server_id == server_id and
                            m.status == "finished" else m for m in self._migrations]

    def rebuild(self, server_id, image_id):
        self._known("rebuild", server_id)
        self.calls.append(("rebuild", server_id))
        self._update(server_id, image_id=image_id)

    def set_metadata(self, server_id, key, value):
        found = self._known("set_metadata", server_id)
        self.calls.append(("set_metadata", server_id))
        self._update(server_id, metadata={**found.metadata, key: value})

    def delete_metadata(self, server_id, key):
        found = self._known("delete_metadata", server_id)
        self.calls.append(("delete_metadata", server_id))
        self._update(server_id, metadata={k: v for k, v in found.metadata.items() if k != key})

    def image(self, image_id):
        if image_id not in self.images:
            raise nova.NovaNotFound("image", image_id, "HTTP 404: no such image", status=404)
        return self.images[image_id]


class Events:
    def __init__(self):
        self.seen = []

    def emit(self, event):
        self.seen.append(event)
        return event

    def kinds(self):
        return [(e["type"], e["payload"].get("step") or e["payload"].get("action")) for e in self.seen]


def context(fake, cluster=None, **options):
    """The verbs' context over the fakes; `options`: crashup.conf options (read as CRASHUP_* variables)."""
    lines = []
    options = {"maintenance_timeout": 10, **options}
    cfg = config.load(env={f"CRASHUP_{k.upper()}": str(v) for k, v in options.items()})
    ctx = common.Context(cfg, fake, cluster or FakeCluster(), Events(), out=lines.append, sleep=lambda s: None)
    ctx.lines = lines
    return ctx


def world():
    return MaintenanceNova([server("run1", host="compute1"), server("run2", host="compute1",
                                                                     metadata={"fake:no_live": "1"}),
                            server("off1", host="compute1", status="SHUTOFF"), server("other", host="compute2")])


# --- decisions -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, policy, action", [
    ({}, "cold-migrate", Action.LIVE),
    ({"status": "PAUSED"}, "stop", Action.LIVE),
    ({"metadata": {"crashup:drain": "stop"}}, "cold-migrate", Action.STOP),
    ({"metadata": {"crashup:drain": "Cold-Migrate"}}, "stop", Action.COLD),
    ({"metadata": {"crashup:drain": "bogus"}}, "stop", Action.LIVE),
    ({"status": "SHUTOFF"}, "cold-migrate", Action.COLD),
    ({"status": "SHUTOFF"}, "stop", Action.STAY),
    ({"status": "SHUTOFF", "metadata": {STOPPED_KEY: "compute1"}}, "cold-migrate", Action.STAY),
    ({"status": "VERIFY_RESIZE", "vm_state": "resized"}, "stop", Action.CONFIRM),
    ({"task_state": "migrating"}, "stop", Action.FOLLOW),
])
def test_decide(fields, policy, action):
    assert drain.decide(server("s", **fields), "compute1", policy, ours=True).action is action


def test_fallback_is_the_servers_override_else_the_policy():
    assert drain.fallback(server("s"), "stop") is Action.STOP
    assert drain.fallback(server("s"), "cold-migrate") is Action.COLD
    assert drain.fallback(server("s", metadata={"crashup:drain": "stop"}), "cold-migrate") is Action.STOP


def test_refusals_name_what_a_drain_must_not_touch():
    servers = [server("busy", task_state="rebooting"), server("moving", task_state="migrating"),
               server("err", status="ERROR"), server("susp", status="SUSPENDED"),
               server("resize", status="VERIFY_RESIZE", vm_state="resized"), server("fine")]
    fresh = drain.refusals(servers, "compute1", ours=False)
    assert [r.split()[1] for r in fresh] == ["busy", "moving", "err", "susp", "resize"]
    resumed = drain.refusals(servers, "compute1", ours=True)
    assert not any("moving" in r or "resize" in r for r in resumed) and len(resumed) == 3


# --- drain, undrain ------------------------------------------------------------------------------------------------

def test_drain_then_undrain_with_the_stop_policy():
    fake = world()
    ctx = context(fake, drain_policy="stop")
    assert drain.drain(ctx, "compute1") == 0
    assert fake.disabled == {"compute1": drain.DRAIN_REASON}
    assert fake.server("run1").host != "compute1" and fake.server("run1").status == "ACTIVE"
    run2 = fake.server("run2")                      # could not live-migrate: stopped where it is, marked
    assert (run2.host, run2.status, run2.metadata.get(STOPPED_KEY)) == ("compute1", "SHUTOFF", "compute1")
    off1 = fake.server("off1")                      # stopped before: stays, unmarked
    assert (off1.host, off1.status, STOPPED_KEY in off1.metadata) == ("compute1", "SHUTOFF", False)
    assert fake.calls.index(("disable", "compute1")) < fake.calls.index(("live_migrate", "run1"))
    assert fake.calls.index(("set_metadata", "run2")) < fake.calls.index(("live_migrate", "run2")) + 2
    assert ctx.emitter.kinds() == [("crashup.host.maintenance", "disabled"), ("crashup.instance.maintenance",
                                   "live-migrate"), ("crashup.instance.maintenance", "stop"),
                                   ("crashup.host.maintenance", "finished")]
    assert fake.stops == ["run2"]

    ctx = context(fake)
    assert drain.undrain(ctx, "compute1") == 0
    assert fake.disabled == {}
    assert fake.starts == ["run2"]                  # exactly the one the drain stopped
    assert fake.server("run2").status == "ACTIVE" and STOPPED_KEY not in fake.server("run2").metadata
    assert fake.server("off1").status == "SHUTOFF"
    assert ("crashup.instance.maintenance", "start") in ctx.emitter.kinds()


def test_drain_with_the_cold_migrate_policy_empties_the_host():
    fake = world()
    ctx = context(fake)
    assert drain.drain(ctx, "compute1") == 0
    assert fake.servers_on_host("compute1") == []
    assert fake.server("off1").status == "SHUTOFF" and fake.server("run2").status == "ACTIVE"
    assert ("confirm_resize", "run2") in fake.calls and ("confirm_resize", "off1") in fake.calls


def test_an_interrupted_drain_resumes_where_it_was():
    fake = world()
    fake.disabled["compute1"] = drain.DRAIN_REASON      # the first run disabled it and cold-migrated run2...
    fake.migrate("run2")                                 # (now VERIFY_RESIZE on its new host)
    fake._update("run1", task_state="migrating")         # ...and run1's live migration is under way
    calls = len(fake.calls)
    ctx = context(fake)
    fake.failures = {}
    original = fake.server

    def server_read(sid):                                # the live migration ends on the first read
        if sid == "run1" and fake._servers["run1"].task_state:
            fake._update("run1", task_state=None, host="compute3")
        return original(sid)
    fake.server = server_read
    assert drain.drain(ctx, "compute1") == 0
    new = fake.calls[calls:]
    assert ("disable", "compute1") not in new and ("live_migrate", "run1") not in new
    assert ("confirm_resize", "run2") in new and ("migrate", "run2") not in new
    assert fake.servers_on_host("compute1") == []


@pytest.mark.parametrize("setup, name, says", [
    (lambda f, c: None, "compute9", "unknown host 'compute9'"),
    (lambda f, c: f._update("run1", task_state="rebooting"), "compute1", "is in a task (rebooting)"),
    (lambda f, c: f.disabled.update(compute1="hardware"), "compute1", "disabled by someone else (hardware)"),
    (lambda f, c: f.forced.add("compute1"), "compute1", "forced down"),
    (lambda f, c: c.write_request(pacemaker.RecoveryRequest("compute1", "recovering", "auto", time.time(),
                                                            time.time())), "compute1", "its recovery is open"),
    (lambda f, c: setattr(c, "has_quorum", False), "compute1", "no quorum"),
])
def test_drain_refuses_with_one_line_and_changes_nothing(setup, name, says):
    fake, cluster = world(), FakeCluster()
    setup(fake, cluster)
    cluster.has_quorum = cluster.has_quorum
    before = dict(fake._servers)
    ctx = context(fake, cluster)
    with pytest.raises(common.Refused) as e:
        drain.drain(ctx, name)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert [c for c in fake.calls if c[0] != "migrate"] == [] and fake._servers == before
    assert ctx.emitter.seen == []


def test_dry_run_prints_the_plan_and_changes_nothing():
    fake = world()
    ctx = context(fake, drain_policy="stop")
    assert drain.drain(ctx, "compute1", dry_run=True) == 0
    assert fake.calls == [] and ctx.emitter.seen == []
    text = "\n".join(ctx.lines)
    assert "run1" in text and "live-migrate" in text and "stopped before the drain: stays" in text


def test_undrain_refuses_a_host_disabled_by_someone_else():
    fake = world()
    fake.disabled["compute1"] = "hardware"
    with pytest.raises(common.Refused, match="not by crashup drain"):
        drain.undrain(context(fake), "compute1")
    assert fake.calls == []


def cli_over(fake, monkeypatch, tmp_path):
    """The crashup command over `fake` and a FakeCluster: the path of its crashup.conf."""
    monkeypatch.setattr(nova.Nova, "from_config", classmethod(lambda cls, cfg: fake))
    monkeypatch.setattr(pacemaker, "Cluster", FakeCluster)
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[events]\njournal = {tmp_path / 'events.jsonl'}\n")
    return conf


def test_cli_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    fake = world()
    conf = cli_over(fake, monkeypatch, tmp_path)
    assert cli.main(["--config", str(conf), "drain", "compute9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crashup: unknown host 'compute9'") and err.count("\n") == 1
    assert cli.main(["--config", str(conf), "drain", "compute1", "--dry-run"]) == 0
    assert fake.calls == []


# --- review fixes (issue 18) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fail, says", [
    (lambda f, c: f.forced.add("compute1"), "forced down"),
    (lambda f, c: c.write_request(pacemaker.RecoveryRequest("compute1", "recovering", "auto", time.time(),
                                                            time.time())), "its recovery is open"),
    (lambda f, c: setattr(c, "has_quorum", False), "no quorum"),
])
def test_a_drain_stops_when_the_host_starts_failing_between_two_servers(fail, says, monkeypatch):
    """Between two servers the drain re-reads the host: one that fails meanwhile (fenced, its recovery open) or a
    partition cut off stops it, exit 1 (things were changed) with one line saying what was done."""
    fake, cluster = MaintenanceNova([server("a1", host="compute1"), server("a2", host="compute1")]), FakeCluster()
    live = fake.live_migrate

    def live_then_fail(sid, target_host=None):
        live(sid, target_host)
        fail(fake, cluster)
    monkeypatch.setattr(fake, "live_migrate", live_then_fail)
    ctx = context(fake, cluster)
    with pytest.raises(common.Halted) as e:
        drain.drain(ctx, "compute1")
    assert says in str(e.value) and "stopped after: compute1 disabled ('crashup drain'), 1 of 2 servers handled" \
        in str(e.value) and "\n" not in str(e.value)
    assert [c for c in fake.calls if c[0] == "live_migrate"] == [("live_migrate", "a1")]
    assert fake.server("a2").host == "compute1"


def test_cli_a_drain_halted_midway_exits_1_not_2(monkeypatch, capsys, tmp_path):
    fake = MaintenanceNova([server("a1", host="compute1"), server("a2", host="compute1")])
    live = fake.live_migrate
    monkeypatch.setattr(fake, "live_migrate", lambda sid, target_host=None: live(sid) or fake.forced.add("compute1"))
    conf = cli_over(fake, monkeypatch, tmp_path)
    assert cli.main(["--config", str(conf), "drain", "compute1"]) == 1
    err = capsys.readouterr().err
    assert "forced down" in err and "1 of 2 servers handled" in err and err.count("\n") == 1


def test_a_paused_server_is_never_marked_or_stopped():
    """nova stops only ACTIVE (and ERROR) servers and cold-migrates no PAUSED one: a paused server whose live
    migration fails is reported failed, unmarked and untouched, and the drain is incomplete (exit 1)."""
    fake = MaintenanceNova([server("p1", host="compute1", status="PAUSED", metadata={"fake:no_live": "1"})])
    ctx = context(fake, drain_policy="stop")
    assert drain.drain(ctx, "compute1") == 1
    p1 = fake.server("p1")
    assert (p1.status, STOPPED_KEY in p1.metadata) == ("PAUSED", False)
    assert fake.stops == [] and ("set_metadata", "p1") not in fake.calls and ("migrate", "p1") not in fake.calls
    assert any("it is PAUSED: nova neither stops nor cold-migrates it" in line for line in ctx.lines)


@pytest.mark.parametrize("override", ["stop", "cold-migrate"])
def test_a_paused_server_asking_for_stop_or_cold_migration_is_refused_up_front(override):
    fake = MaintenanceNova([server("p1", host="compute1", status="PAUSED", metadata={"crashup:drain": override})])
    with pytest.raises(common.Refused, match=f"is PAUSED with metadata crashup:drain = {override}"):
        drain.drain(context(fake), "compute1")
    assert fake.calls == []
