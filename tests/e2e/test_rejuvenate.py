"""Rejuvenation in the real lab (issue 17), through `crashup rejuvenate` as an operator types it: a rolling restart
of every compute node's nova-compute through Pacemaker, each restarted once, never two at a time (a sampler of the
nova box's computes), no recovery triggered, no server touched; and a roll that pauses while a host recovery is open
(a node crashed mid-roll) and resumes once it is done."""
import contextlib
import subprocess
import time

import pytest

from crashup_lib import pacemaker
from tests.e2e import scenario
from tests.e2e.scenario import Sampler, journal, wait_request

pytestmark = pytest.mark.lab


def crashup(lab, *args, timeout=600):
    argv = [str(lab.REPO / ".venv" / "bin" / "crashup"), "--config", str(lab.CRASHUP_CONF), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class ComputeSampler(Sampler):
    """The nova box's view of every nova-compute (running or not), sampled every 0.1 s in a thread: each host's
    stops (running -> not running) with their times, and the most stopped at one moment."""
    every = 0.1

    def __init__(self, lab, hosts):
        self.box, self.hosts = lab.nova(), list(hosts)
        self.stops = {h: [] for h in self.hosts}
        self.starts = {h: [] for h in self.hosts}
        self.most_down, self.samples = 0, 0
        self.last = {}

    def sample(self):
        try:
            computes = self.box.get_state()["computes"]
        except Exception:                           # noqa: BLE001 - the box busy: sample again
            return
        now, self.samples = time.time(), self.samples + 1
        running = {h: bool(computes.get(h)) for h in self.hosts}
        for h, up in running.items():
            if h in self.last and self.last[h] and not up:
                self.stops[h].append(now)
            if h in self.last and not self.last[h] and up:
                self.starts[h].append(now)
        self.last = running
        self.most_down = max(self.most_down, sum(not up for up in running.values()))


def servers_view(lab, ids):
    conn = lab.connection()
    by_id = {s.id: s for s in conn.compute.servers(all_projects=True)}
    return {sid: (by_id[sid].compute_host, by_id[sid].status, by_id[sid].task_state) for sid in ids}


def rejuvenation_events(lab, since):
    return [e for e in journal(lab, since)
            if e["type"] == "crashup.host.maintenance" and e["payload"]["verb"] == "rejuvenate"]


def fenced_since(since):
    return [e for e in pacemaker.fence_history() if e.completed is not None and e.completed >= int(since)]


@pytest.fixture
def tidy(lab):
    yield
    scenario.tidy_up(lab)


def test_rolling_rejuvenation_restarts_each_nova_compute_once_one_at_a_time_touching_nothing(lab, tidy):
    nodes = lab.nodes()
    hosts = [n.nova_host for n in nodes]
    ids = [sid for n in nodes for sid in scenario.boot(lab, n.nova_host, 1, f"rejuv-{n.name}")]
    before = servers_view(lab, ids)
    since = time.time()

    plan = crashup(lab, "rejuvenate", "--dry-run")
    assert plan.returncode == 0 and all(n.name in plan.stdout for n in nodes), (plan.stdout, plan.stderr)

    with ComputeSampler(lab, hosts) as sampler:
        started = time.monotonic()
        done = crashup(lab, "rejuvenate")
        took = time.monotonic() - started
    assert done.returncode == 0, (done.stdout, done.stderr)
    print(f"rolling rejuvenation of {len(nodes)} nodes: {took:.1f}s; sampler {sampler.samples} samples; "
          f"stops {sampler.stops}")
    assert all(len(sampler.stops[h]) == 1 for h in hosts), sampler.stops          # each restarted once
    assert all(len(sampler.starts[h]) == 1 for h in hosts), sampler.starts
    assert sampler.most_down == 1                                                  # never two at a time
    order = sorted(hosts, key=lambda h: sampler.stops[h][0])
    for a, b in zip(order, order[1:]):          # the next one stopped only after the previous one was back
        assert sampler.starts[a][0] < sampler.stops[b][0], (a, b, sampler.starts, sampler.stops)
    evs = rejuvenation_events(lab, since)
    restarted = [e["subject"] for e in evs if e["payload"]["step"] == "restarted"]
    assert sorted(restarted) == sorted(hosts), evs
    assert fenced_since(since) == []                                               # no recovery triggered
    assert all(lab.recovery_request(n) is None or lab.recovery_request(n).fenced_at < since for n in nodes)
    assert servers_view(lab, ids) == before                                        # no server touched
    guests = lab.nova().guests()
    assert all(sum(sid in held for held in guests.values()) == 1 for sid in ids), guests
    again = crashup(lab, "rejuvenate", "nowhere")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "unknown host 'nowhere'" in again.stderr


def test_rejuvenation_pauses_while_a_host_recovery_is_open_and_resumes_after(lab, tidy):
    first, second, failing = lab.nodes()[:3]
    hosts = [n.nova_host for n in (first, second, failing)]
    busy = scenario.boot(lab, second.nova_host, 1, "rejuv-busy")[0]
    lab.nova().set_instance_db(busy, task_state="rebooting")     # holds the roll at `second` (waiting_tasks)
    argv = [str(lab.REPO / ".venv" / "bin" / "crashup"), "--config", str(lab.CRASHUP_CONF), "rejuvenate"]
    # notify mode: the crashed node's recovery stays open until it is released, as long as the test needs
    with scenario.recovery_mode(lab, "notify"), ComputeSampler(lab, hosts) as sampler:
        since = time.time()
        roll = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def steps_now():
                return [(e["subject"], e["payload"]["step"]) for e in rejuvenation_events(lab, since)]
            limit = time.monotonic() + 120
            while (second.nova_host, "waiting_tasks") not in steps_now():
                assert time.monotonic() < limit and roll.poll() is None, ("the roll never waited", steps_now())
                time.sleep(0.5)
            lab.fail(failing, "crash")
            req = wait_request(lab, failing, ("pending", "recovering"), since)
            opened = time.time()
            lab.nova().set_instance_db(busy, task_state=None)      # the task is over: only the recovery holds it
            limit = time.monotonic() + 60
            while (second.nova_host, "paused") not in steps_now():
                assert time.monotonic() < limit and roll.poll() is None, ("the roll never paused", steps_now())
                time.sleep(0.5)
            time.sleep(8)                                          # held: nothing restarts while it is open
            held = steps_now()
            assert (second.nova_host, "restarting") not in held, held
            assert sampler.stops[second.nova_host] == [], sampler.stops
            released = time.time()
            assert crashup(lab, "release", failing.name).returncode == 0
            out, err = roll.communicate(timeout=600)
        finally:
            if roll.poll() is None:
                roll.kill()
    assert roll.returncode == 0, (out, err)
    evs = rejuvenation_events(lab, since)
    steps = [(e["subject"], e["payload"]["step"], scenario._epoch(e["time"])) for e in evs]
    restarting = [(h, t) for h, s, t in steps if s == "restarting"]
    print(f"recovery open from {req.fenced_at:.1f} (seen {opened:.1f}), released {released:.1f}; "
          f"restarts {[(h, round(t - since, 1)) for h, t in restarting]}")
    assert [h for h, _ in restarting] == hosts, steps           # each once, in order, the crashed one too
    assert restarting[0][1] < req.fenced_at and all(t > released for _, t in restarting[1:])
    resumed = [t for h, s, t in steps if s == "resumed"]
    assert resumed and released < resumed[0] <= restarting[1][1]
    assert [len(sampler.stops[h]) for h in hosts[:2]] == [1, 1], sampler.stops
    assert all(t > released for t in sampler.stops[second.nova_host])
    assert fenced_since(since) and all(e.target == failing.name for e in fenced_since(since))


@contextlib.contextmanager
def rejuvenation_interval(lab, value):
    """crashup.conf's [maintenance] rejuvenation_interval set inside the block (the daemon restarted to read it)."""
    conf = lab.CRASHUP_CONF.read_text()
    line = f"rejuvenation_interval = {value}\n"
    changed = conf.replace("[maintenance]\n", "[maintenance]\n" + line, 1) if "[maintenance]\n" in conf \
        else conf.rstrip("\n") + "\n\n[maintenance]\n" + line
    lab.CRASHUP_CONF.write_text(changed)
    scenario.restart_daemon()
    try:
        yield
    finally:
        lab.CRASHUP_CONF.write_text(conf)
        scenario.restart_daemon()


def test_the_daemons_periodic_roll_resumes_after_a_daemon_restart_rather_than_starting_again(lab, tidy):
    nodes = lab.nodes()
    hosts = [n.nova_host for n in nodes]
    for n in nodes:                                     # what earlier tests left: every node due again
        for name in ("crashup-rejuvenated", "crashup-rejuvenating"):
            subprocess.run(["crm_attribute", "--type", "nodes", "--node", n.name, "--name", name, "--delete",
                            "--lifetime", "forever"], capture_output=True, timeout=30)
    since = time.time()
    with ComputeSampler(lab, hosts) as sampler, rejuvenation_interval(lab, "1h"):
        def restarted():
            return [e["subject"] for e in rejuvenation_events(lab, since) if e["payload"]["step"] == "restarted"]
        limit = time.monotonic() + 120
        while not restarted():
            assert time.monotonic() < limit, rejuvenation_events(lab, since)
            time.sleep(0.2)
        first = restarted()[0]
        scenario.restart_daemon()                       # a failover, as the next daemon sees it
        failover = time.time()
        limit = time.monotonic() + 300
        while set(restarted()) != set(hosts):
            assert time.monotonic() < limit, rejuvenation_events(lab, since)
            time.sleep(0.5)
        time.sleep(20)                                  # nothing more: every node rejuvenated within the hour
        done = restarted()
    steps = [(e["subject"], e["payload"]["step"], round(scenario._epoch(e["time"]) - since, 1))
             for e in rejuvenation_events(lab, since)]
    print(f"periodic roll: {steps}; daemon restarted at {failover - since:.1f}s; stops {sampler.stops}")
    assert done.count(first) == 1, steps                # the node done before the failover was not done again
    assert sorted(set(done)) == sorted(hosts) and len(done) <= len(hosts) + 1, steps   # one may be resumed
    assert sampler.most_down == 1
    assert fenced_since(since) == []
    values = subprocess.run(["cibadmin", "--query", "--scope", "nodes"], capture_output=True, text=True,
                            timeout=30).stdout
    assert values.count('name="crashup-rejuvenated"') == len(nodes) and "crashup-rejuvenating" not in values
