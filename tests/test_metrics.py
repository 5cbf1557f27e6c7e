"""Metrics: the journal folded into counters, the requests into gauges, the textfile the daemon writes."""
import json
import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from crashup_lib import cli, config, events, metrics
from crashup_lib.pacemaker import Hold, RecoveryRequest
from crashup_lib.recovery import daemon
from tests.fakes import FakeCluster, FakeNova
from tests.test_report import T0, ev, failed, one_recovery


def samples(text):
    """{(name, sorted labels): value} of a Prometheus text exposition, through Prometheus's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found, name, **labels):
    return found[name, tuple(sorted(labels.items()))]


def resource(type_, service="cinder", kind="volume"):
    return ev(type_, "r1", {"service": service, "resource_type": kind, "id": "r1", "state": "attaching",
                            "action": "reset-state", "reason": "x"}, T0)


def test_a_journal_becomes_counters_and_histograms():
    journal = one_recovery() + one_recovery(600, host="compute2") + [
        failed("compute3", "compute3", T0 + 900, T0 + 901, mode="notify"),
        ev(events.HOST_STORM, "compute3", {"hosts": ["compute3", "compute4", "compute5"], "window_s": 300,
                                           "limit": 2, "action": "evacuation stopped"}, T0 + 950),
        resource(events.RESOURCE_STALE_RECOVERED), resource(events.RESOURCE_STALE_UNRECOVERABLE),
        resource(events.RESOURCE_ORPHANED, "nova", "server")]
    tally = metrics.Tally()
    for event in journal:
        tally.add(event)
    found = samples(metrics.exposition(tally, None))
    assert value(found, "crashup_recoveries_total", mode="auto", outcome="partial") == 2
    assert value(found, "crashup_recoveries_total", mode="auto", outcome="complete") == 0
    assert value(found, "crashup_recoveries_total", mode="notify", outcome="notified") == 1
    assert value(found, "crashup_evacuations_total", outcome="evacuated") == 4
    assert value(found, "crashup_evacuations_total", outcome="failed") == 2
    # each recovery from its fencing (9.5 s), not from the pipeline's own start
    assert value(found, "crashup_recovery_duration_seconds_sum") == pytest.approx(19.0)
    assert value(found, "crashup_recovery_duration_seconds_bucket", le="5.0") == 0
    assert value(found, "crashup_recovery_duration_seconds_bucket", le="10.0") == 2
    assert value(found, "crashup_evacuation_duration_seconds_count") == 4
    assert value(found, "crashup_evacuation_duration_seconds_sum") == pytest.approx(11.0)
    assert value(found, "crashup_repairs_total", action="reset-active") == 2
    assert value(found, "crashup_storm_guard_trips_total") == 1
    assert value(found, "crashup_sweep_findings_total", service="cinder", resource_type="volume",
                 outcome="unrecoverable") == 1
    assert value(found, "crashup_sweep_findings_total", service="nova", resource_type="server",
                 outcome="orphaned") == 1
    assert not any(name == "crashup_recovery_requests_open" for name, _ in found)     # requests not known


def test_open_requests_by_hold_and_the_storm_guard():
    req = RecoveryRequest("c1", "recovering", "auto", T0, T0)
    found = samples(metrics.exposition(metrics.Tally(), {
        "c1": req, "c2": RecoveryRequest("c2", "recovering", "auto", T0, T0, hold=Hold.STORM),
        "c3": RecoveryRequest("c3", "pending", "auto", T0, T0, hold=Hold.STORM),
        "c4": RecoveryRequest("c4", "done", "auto", T0, T0)}))
    assert value(found, "crashup_recovery_requests_open", hold="storm") == 2
    assert value(found, "crashup_recovery_requests_open", hold="none") == 1
    assert value(found, "crashup_recovery_requests_open", hold="notified") == 0
    assert value(found, "crashup_storm_guard_held_hosts") == 2


def test_the_same_journal_gives_the_same_counters_so_a_restart_resets_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in one_recovery()) + "{torn\n")
    first = metrics.exposition(metrics.fold(events.read(str(path))), None)
    assert first == metrics.exposition(metrics.fold(events.read(str(path))), None)
    assert value(samples(first), "crashup_journal_skipped_lines") == 1


@settings(max_examples=200)
@given(st.lists(st.fixed_dictionaries({
    "type": st.sampled_from(events.TYPES),
    "payload": st.dictionaries(st.sampled_from(["host", "fenced_at", "mode", "failed", "duration_s", "action",
                                                "service", "resource_type"]),
                               st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=5),
                                         st.integers(-3, 3))),
    "time": st.just("2026-01-01T00:00:00.000Z")}), max_size=20))
def test_any_event_is_counted_or_skipped_never_an_error(found):
    tally = metrics.Tally()
    for event in found:
        tally.add(event)
    list(text_string_to_metric_families(metrics.exposition(tally, {})))


def test_the_config_wants_a_prom_file():
    assert config.load(env={"CRASHUP_METRICS_TEXTFILE": "/var/lib/node/crashup.prom"}).metrics_textfile
    with pytest.raises(config.ConfigError, match="ending in .prom"):
        config.load(env={"CRASHUP_METRICS_TEXTFILE": "/var/lib/node/crashup.txt"})


def test_the_daemon_writes_the_textfile_from_journal_and_requests_and_removes_it_at_stop(tmp_path):
    journal, textfile = tmp_path / "events.jsonl", tmp_path / "crashup.prom"
    journal.write_text("".join(json.dumps(e) + "\n" for e in one_recovery()))
    cfg = config.load(env={"CRASHUP_JOURNAL": str(journal), "CRASHUP_METRICS_TEXTFILE": str(textfile),
                           "CRASHUP_METRICS_INTERVAL": "1", "CRASHUP_OUTBOX_DIR": str(tmp_path / "outbox")})
    cluster = FakeCluster()
    cluster.write_request(RecoveryRequest("c9", "recovering", "auto", T0, T0, hold=Hold.STORM))
    d = daemon.Daemon(cfg, state_dir=str(tmp_path / "state"), cluster=cluster, nova_factory=FakeNova,
                      cinder_factory=lambda: None)
    runner = threading.Thread(target=d.run)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not textfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        found = samples(textfile.read_text())
        assert value(found, "crashup_evacuations_total", outcome="evacuated") == 2
        # an event appended later is counted by the next write, once
        with journal.open("a") as f:
            f.write(json.dumps(one_recovery(60)[2]) + "\n")
        deadline = time.monotonic() + 10
        while value(found, "crashup_evacuations_total", outcome="evacuated") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            found = samples(textfile.read_text())
        assert value(found, "crashup_evacuations_total", outcome="evacuated") == 3
        assert value(found, "crashup_storm_guard_held_hosts") == 1
        assert not [p for p in os.listdir(tmp_path) if p.startswith("crashup.prom.")]    # no temporary left
    finally:
        d.stop()
        runner.join(10)
    assert not textfile.exists()


def test_metrics_command_prints_the_exposition_and_says_when_the_cib_is_unreadable(tmp_path, monkeypatch, capsys):
    journal = tmp_path / "events.jsonl"
    journal.write_text("".join(json.dumps(e) + "\n" for e in one_recovery()))
    monkeypatch.setenv("CRASHUP_JOURNAL", str(journal))
    monkeypatch.setenv("CRASHUP_CONFIG", os.devnull)
    monkeypatch.setenv("PATH", str(tmp_path))                           # no cibadmin here
    assert cli.main(["metrics"]) == 1
    out, err = capsys.readouterr()
    assert value(samples(out), "crashup_recoveries_total", mode="auto", outcome="partial") == 1
    assert err.strip().splitlines() == ["crashup: recovery requests not read: cibadmin not found: is Pacemaker "
                                        "installed?"]
