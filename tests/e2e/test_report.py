"""Metrics and the recovery report in the real lab: a host with a few servers fails; the daemon's textfile (scraped
with Prometheus's own parser) counts the recovery and its evacuations, and `crashup report` draws one bar per
server."""
import os
import subprocess
import sys
import time

import pytest
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import scenario
from tests.e2e.scenario import assert_recovered_exactly_once, boot, wait_request
from tests.lab import pacemaker, topology

pytestmark = pytest.mark.lab
SERVERS = 4
EXAMPLE = topology.LAB_DIR / "log" / "report-example.svg"     # kept by `lab down`: docs/report-example.svg


def scrape(path):
    """{(name, sorted labels): value}, through Prometheus's text parser."""
    text = path.read_text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def crashup(lab, *argv):
    return subprocess.run([sys.executable, "-m", "crashup_lib.cli", *argv], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CRASHUP_CONFIG": str(lab.CRASHUP_CONF)})


@pytest.fixture
def metrics_on(lab, tmp_path):
    """The daemon writes its metrics every second into a textfile (crashup.conf's [metrics], daemon restarted)."""
    textfile = tmp_path / "crashup.prom"
    conf = lab.CRASHUP_CONF.read_text()
    lab.CRASHUP_CONF.write_text(conf + f"\n[metrics]\nmetrics_textfile = {textfile}\nmetrics_interval = 1\n")
    scenario.restart_daemon()
    limit = time.monotonic() + 30
    while not textfile.exists() and time.monotonic() < limit:
        time.sleep(0.2)
    assert textfile.exists(), "the daemon wrote no metrics textfile"
    yield textfile
    lab.CRASHUP_CONF.write_text(conf)
    scenario.restart_daemon()
    scenario.tidy_up(lab)


def test_a_recovery_moves_the_counters_and_is_drawn_one_bar_per_server(lab, metrics_on):
    node = lab.node("compute1")
    before = scrape(metrics_on)
    assert get(before, "crashup_recovery_requests_open", hold="none") == 0
    ids = boot(lab, node.nova_host, SERVERS, "report")
    since = time.time()
    lab.fail(node, "crash")
    req = wait_request(lab, node, ("done",), since)
    assert req.note.startswith(f"{SERVERS} evacuated, 0 failed")
    assert_recovered_exactly_once(lab, node, ids)

    # the textfile catches up within a write or two
    limit = time.monotonic() + 15
    while True:
        after = scrape(metrics_on)
        moved = get(after, "crashup_evacuations_total", outcome="evacuated") - \
            get(before, "crashup_evacuations_total", outcome="evacuated")
        ended = get(after, "crashup_recovery_duration_seconds_count") - \
            get(before, "crashup_recovery_duration_seconds_count")
        # the requests' gauge is read at a write: the request closes in the CIB just after host.recovered
        closed = get(after, "crashup_recovery_requests_open", hold="none") == 0
        if (moved >= SERVERS and ended >= 1 and closed) or time.monotonic() > limit:
            break
        time.sleep(0.5)
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
    assert get(delta, "crashup_evacuations_total", outcome="evacuated") == SERVERS
    assert get(delta, "crashup_evacuations_total", outcome="failed") == 0
    assert get(delta, "crashup_recoveries_total", mode="auto", outcome="complete") == 1
    assert get(delta, "crashup_recoveries_total", mode="auto", outcome="partial") == 0
    assert get(delta, "crashup_recovery_duration_seconds_count") == 1
    assert get(delta, "crashup_evacuation_duration_seconds_count") == SERVERS
    took = get(delta, "crashup_recovery_duration_seconds_sum")
    assert 0 < took < 120, took
    assert get(after, "crashup_recovery_requests_open", hold="none") == 0
    assert get(after, "crashup_storm_guard_held_hosts") == 0
    # `crashup metrics` says the same as the daemon's file
    done = crashup(lab, "metrics")
    assert done.returncode == 0, done.stderr
    printed = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(done.stdout) for s in family.samples}
    assert get(printed, "crashup_evacuations_total", outcome="evacuated") == \
        get(after, "crashup_evacuations_total", outcome="evacuated")

    # the report: text and picture, one bar per server, from the fencing to the last evacuation
    EXAMPLE.parent.mkdir(parents=True, exist_ok=True)
    done = crashup(lab, "report", node.name, "--svg", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert f"recovery of {node.name}" in done.stdout and done.stdout.count(" evacuated to ") == SERVERS
    assert "fencing -> recovered:" in done.stdout
    root = etree.parse(str(EXAMPLE)).getroot()
    bars = root.xpath("//*[local-name()='rect'][contains(@class, 'bar')]")
    assert sorted(b.get("data-server") for b in bars) == sorted(ids)
    assert all(b.get("class") == "bar evacuated" for b in bars)
    assert len(root.xpath("//*[local-name()='line'][@class='milestone']")) == 3      # fenced, began, recovered
    # unknown node: one line, exit 2
    done = crashup(lab, "report", "compute9")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "crashup: compute9: no such node in the journal's recoveries nor a recovery request in the CIB"]
    lab.wait_rejoined(node)
    pacemaker.wait_for(lab.all_online(lab.nodes()), 90, "every node online")
