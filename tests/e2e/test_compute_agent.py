"""ocf:crashup:nova-compute in the real lab: Pacemaker runs it as a clone on the compute nodes; a fenced host's
nova-compute comes back only after its recovery, in the order nova demands, and a stuck one is restarted."""
import subprocess
import threading
import time

import pytest

from tests.e2e.scenario import boot, daemon_stopped, delete_servers, wait_request
from tests.lab import pacemaker

pytestmark = pytest.mark.lab


class Sampler(threading.Thread):
    """Every 0.2 s, what is true at once: the node's request state, whether its nova-compute runs, and which
    hypervisor holds which guest."""

    def __init__(self, lab, node):
        super().__init__(daemon=True)
        self.lab, self.node, self.samples, self.halt = lab, node, [], threading.Event()

    def run(self):
        box = self.lab.nova()
        while not self.halt.is_set():
            req = self.lab.recovery_request(self.node)
            state = box.get_state()["computes"].get(self.node.nova_host)
            self.samples.append((time.time(), req.state if req else None, state, box.guests()))
            time.sleep(0.2)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.halt.set()
        self.join(10)


def service(lab, host):
    return next(s for s in lab.connection().compute.services() if s.host == host and s.binary == "nova-compute")


def test_a_fenced_host_rejoins_only_after_its_recovery_and_no_vm_ever_runs_twice(lab):
    node = lab.node("compute1")
    ids = boot(lab, node.nova_host, 3, "rejoin")
    since = time.time()
    with Sampler(lab, node) as sampler:
        lab.fail(node, "crash")
        wait_request(lab, node, ("done",), since)
        lab.wait_rejoined(node)
    open_and_running = [s for s in sampler.samples if s[1] in ("pending", "recovering") and s[2]]
    assert not open_and_running, open_and_running[:3]
    assert any(s[1] in ("pending", "recovering") for s in sampler.samples)     # the sampler saw the recovery
    for at, _, _, guests in sampler.samples:
        for sid in ids:
            holders = [h for h, g in guests.items() if sid in g]
            assert len(holders) <= 1, (at, sid, holders)
    # back in nova's order: the evacuated guests destroyed on the old host, forced-down cleared, enabled
    assert lab.nova().guests(node.nova_host) == []
    svc = service(lab, node.nova_host)
    assert not svc.is_forced_down and svc.status == "enabled" and svc.state == "up"
    conn = lab.connection()
    statuses = {m.server_id: m.status for m in conn.compute.migrations(migration_type="evacuation")
                if m.server_id in ids}
    assert statuses == {sid: "completed" for sid in ids}
    # Pacemaker never tried (and failed) a start during the recovery: the clone's rule held it
    st = pacemaker.status()
    assert not st.resources[f"{lab.NOVA_COMPUTE}-clone"].failed
    delete_servers(lab)


def test_a_host_whose_recovery_never_ran_stays_out_until_released(lab):
    node = lab.node("compute2")
    since = time.time()
    with daemon_stopped():                         # nobody recovers: the request stays pending
        lab.fail(node, "crash")
        wait_request(lab, node, ("pending",), since)
        pacemaker.wait_for(lambda st: st.nodes[node.name].online, 90, f"{node.name} back online")
        time.sleep(6)                              # more than a monitor interval and the failure-timeout's scale
        st = pacemaker.status()
        assert not lab.compute_running(st, node) and not st.resources[f"{lab.NOVA_COMPUTE}-clone"].failed
        assert lab.nova().get_state()["computes"][node.nova_host] is False
        assert service(lab, node.nova_host).is_forced_down
        crashup = [str(lab.REPO / ".venv" / "bin" / "crashup"), "--config", str(lab.CRASHUP_CONF)]
        released = subprocess.run(crashup + ["release", node.name], capture_output=True, text=True, timeout=60)
        assert released.returncode == 0, released.stderr
        started = time.monotonic()
        lab.wait_rejoined(node, timeout=60)
        print(f"released -> nova-compute up and forced-down cleared: {time.monotonic() - started:.2f}s")


def test_a_stuck_nova_compute_is_restarted_by_pacemaker(lab):
    node = lab.node("compute3")
    before = service(lab, node.nova_host).updated_at
    lab.nova().hang_compute(node.nova_host)                 # the process runs on, its heartbeats stop

    def restarted(st):
        failures = st.xml.decode()
        return "no heartbeat since" in failures and lab.compute_running(st, node)
    pacemaker.wait_for(restarted, 90, f"{node.name}'s stuck nova-compute seen and restarted")
    lab.wait_rejoined(node, timeout=60)
    assert service(lab, node.nova_host).updated_at != before
    subprocess.run(["crm_resource", "--cleanup", "--resource", f"{lab.NOVA_COMPUTE}-clone"], capture_output=True,
                   timeout=60)


def test_installed_agent_passes_ocf_tester_and_crm_resource_validate(lab, tmp_path):
    """The whole life cycle on a spare nova host (the box adds compute9 on its first start): start waits for nova
    to accept it, monitor, stop, and ocf-tester's own checks."""
    ctl = f"{lab.COMPUTE_CTL} http://10.200.0.1:8774"
    options = [f"config={lab.CRASHUP_CONF}", "backend=command", "nova_host=compute9",
               f"start_command={ctl} start {{host}}", f"stop_command={ctl} stop {{host}}",
               f"status_command={ctl} status {{host}}", f"state_dir={tmp_path}"]
    validate = subprocess.run(["crm_resource", "--validate", "--class", "ocf", "--provider", "crashup", "--agent",
                               "nova-compute"] + [a for o in options for a in ("--option", o)],
                              capture_output=True, text=True, timeout=60)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    tester = subprocess.run(["ocf-tester", "-n", "nova-compute-test"] + [a for o in options for a in ("-o", o)]
                            + [str(lab.OCF_DIR / "nova-compute")], capture_output=True, text=True, timeout=600,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCF_ROOT": "/usr/lib/ocf"})
    assert tester.returncode == 0, tester.stdout + tester.stderr
    assert lab.nova().get_state()["computes"]["compute9"] is False          # ocf-tester's last word was a stop
