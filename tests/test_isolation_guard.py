"""The isolation guard's parts with I/O: act (nova-compute, guests), the watchdog device, the probe, the guard's
saved view and `crashup isolation`, the agent's daemon=isolation and the pcs clone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crashup_lib import libvirt as lv
from crashup_lib import pcs, proc
from crashup_lib.isolation import act, decide, probe, show
from crashup_lib.isolation.guard import Guard
from crashup_lib.isolation.timing import Policy, Settings
from crashup_lib.isolation.watchdog import MAGIC_CLOSE, Watchdog, WatchdogError
from crashup_lib.localservice import LocalService

U1, U2, U3 = "11111111-0000-4000-8000-000000000001", "11111111-0000-4000-8000-000000000002", \
    "11111111-0000-4000-8000-000000000003"


class Libvirt:
    """Domains by uuid -> state; virsh destroy/suspend change them (unless the uuid is stuck)."""

    def __init__(self, states, stuck=(), down=False):
        self.states, self.stuck, self.down, self.calls = dict(states), set(stuck), down, []

    def list(self, uri, timeout):
        if self.down:
            raise lv.LibvirtError(f"libvirt {uri}: no answer within {timeout:g}s")
        return [lv.DomainState(u, f"vm-{u[-1]}", s, 0, 1 if s != 5 else -1) for u, s in self.states.items()]

    def run(self, argv, timeout):
        self.calls.append(argv[3:])
        verb, uuid = argv[3], argv[4]
        if uuid in self.stuck:
            return proc.Done(1, "", "error: Failed to destroy domain: Timed out during operation")
        self.states[uuid] = 5 if verb == "destroy" else 3
        return proc.Done(0, "", "")


def service(tmp_path, stops=True):
    flag = tmp_path / "running"
    flag.write_text("")
    stop = ["rm", "-f", str(flag)] if stops else ["true"]
    return LocalService("nova-compute", stop, stop, ["test", "-e", str(flag)]), flag


def test_isolate_stops_nova_compute_then_destroys_every_active_guest(tmp_path):
    svc, flag = service(tmp_path)
    lib = Libvirt({U1: 1, U2: 3, U3: 5})                      # running, paused, shut off
    o = act.isolate(svc, "qemu:///system", Policy.DESTROY, 10, lister=lib.list, runner=lib.run)
    assert not flag.exists() and o.nova_compute == "stopped"
    assert sorted(o.stopped) == [U1, U2] and o.failed == () and o.complete
    assert lib.calls == [["destroy", U1], ["destroy", U2]]


def test_pause_leaves_paused_guests_alone_and_a_stuck_guest_is_reported(tmp_path):
    svc, _ = service(tmp_path)
    lib = Libvirt({U1: 1, U2: 3, U3: 1}, stuck={U3})
    o = act.isolate(svc, "qemu:///system", Policy.PAUSE, 10, lister=lib.list, runner=lib.run)
    assert o.stopped == (U1,) and [u for u, _ in o.failed] == [U3] and "Timed out" in o.failed[0][1]
    assert not o.complete and lib.calls == [["suspend", U1], ["suspend", U3]]


def test_guests_are_stopped_even_when_nova_compute_will_not_stop_and_libvirt_down_is_said(tmp_path):
    svc, flag = service(tmp_path, stops=False)
    lib = Libvirt({U1: 1})
    o = act.isolate(svc, "qemu:///system", Policy.DESTROY, 6, lister=lib.list, runner=lib.run)
    assert flag.exists() and "still running" in o.nova_compute and o.stopped == (U1,) and not o.complete
    o = act.isolate(None, "qemu:///system", Policy.DESTROY, 2, lister=Libvirt({}, down=True).list, runner=lib.run)
    assert "no answer" in o.problem and not o.complete


def test_nova_compute_is_stopped_as_the_nova_compute_agent_would():
    assert act.nova_compute("nova-compute", host="h", node="n")._argv["stop"] == ["systemctl", "stop", "nova-compute"]
    s = act.nova_compute("x", "/bin/ctl stop {host}", "/bin/ctl status {node}", host="h1", node="n1")
    assert s._argv["stop"] == ["/bin/ctl", "stop", "h1"] and s._argv["status"] == ["/bin/ctl", "status", "n1"]
    with pytest.raises(ValueError):
        act.nova_compute("x", "/bin/ctl stop", "", host="h", node="n")


def test_the_probe_reads_crm_nodes_answer_and_bounds_it(tmp_path):
    fake = tmp_path / "crm_node"
    fake.write_text("#!/bin/sh\necho \"$ANSWER\"; [ -n \"$SLEEP\" ] && sleep \"$SLEEP\"; exit ${RC:-0}\n")
    fake.chmod(0o755)
    env = dict(os.environ)
    try:
        for answer, rc, expected in (("1", "0", probe.Answer.QUORATE), ("0", "0", probe.Answer.INQUORATE),
                                     ("", "1", probe.Answer.NO_ANSWER)):
            os.environ.update(ANSWER=answer, RC=rc)
            assert probe.quorum(2, (str(fake),))[0] is expected
        os.environ.update(ANSWER="1", RC="0", SLEEP="5")
        answer, why, started, answered = probe.timed(0.3, (str(fake),))
        assert answer is probe.Answer.NO_ANSWER and "did not finish within 0.3s" in why and answered - started < 2
        assert probe.quorum(1, (str(tmp_path / "none"),))[0] is probe.Answer.NO_ANSWER
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_the_watchdog_is_petted_and_disarmed_by_the_magic_close(tmp_path):
    fifo = tmp_path / "watchdog"
    os.mkfifo(fifo)
    with pytest.raises(WatchdogError, match="cannot open"):
        Watchdog(str(fifo), 30).open()                  # nobody reads it: nothing would watch the node
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = Watchdog(str(fifo), 30)
        w.open()
        w.pet()
        w.pet()
        w.close(disarm=True)
        assert os.read(reader, 100) == b"\0\0" + MAGIC_CLOSE
        w.open()
        w.close(disarm=False)                           # a guard that dies leaves it armed
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)
    with pytest.raises(WatchdogError):
        Watchdog(str(tmp_path / "none"), 30).open()


def test_the_guard_acts_once_retries_what_failed_saves_its_view_and_pets_only_while_healthy(tmp_path):
    s = Settings(enabled=True, isolation_timeout=3, probe_interval=1, probe_timeout=1, action_timeout=2)
    clock = [0.0]
    answers = iter([probe.Answer.QUORATE] + [probe.Answer.NO_ANSWER] * 6 + [probe.Answer.QUORATE])
    outcomes = iter([act.Outcome("stopped", (U1,), ((U2, "stuck"),)), act.Outcome("stopped", (U2,))])
    acted, pets = [], []

    def prober(timeout):
        started = clock[0]
        clock[0] += 0.5
        return next(answers), "no answer", started, clock[0]

    def isolate(*args):
        acted.append(clock[0])
        return next(outcomes)

    class Pets:
        def pet(self):
            pets.append(clock[0])
    published = []

    class Emitter:
        def publish(self, *a):
            published.append(a)
    g = Guard(s, node="compute1", host="compute1.example", service=None, libvirt_uri="qemu:///system",
              state_dir=str(tmp_path), prober=prober, isolate=isolate, clock=lambda: clock[0],
              wait=lambda x: clock.__setitem__(0, clock[0] + x), emitter=Emitter(), watchdog=Pets())
    steps = [g.step() for _ in range(8)]
    assert decide.Step.ISOLATE in steps and steps[-1] is decide.Step.BACK
    assert len(acted) == 2 and acted[0] == pytest.approx(3.0)       # 3 s after the last good probe started
    assert [p[2]["guests"] for p in published] == [[U1], [U2]] and published[0][0] == "crashup.host.isolated"
    assert published[0][2]["complete"] is False and published[1][2]["complete"] is True
    assert pets[0] < 1 and all(t < 1 or t > acted[-1] for t in pets)   # none between the loss and the return
    view = json.loads((tmp_path / "isolation.json").read_text())
    assert view["phase"] == "healthy" and view["node"] == "compute1" and view["settings"]["isolation_timeout"] == "3"
    text = show.text(view, "", "quorate", "", s, view["at"])
    assert "guard on compute1 (compute1.example): healthy" in text


def test_crashup_isolation_prints_the_view_and_the_answer_and_refuses_a_bad_setting(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "crashup_lib.cli", "--config", str(tmp_path / "c.conf"),
                                     "isolation", *a], capture_output=True, text=True, timeout=30)
    (tmp_path / "c.conf").write_text("")
    done = run("--set", "probe_timeout=never")
    assert done.returncode == 2 and done.stderr.strip() == \
        "crashup: isolation: probe_timeout: 'never' is not a number of seconds"
    (tmp_path / "isolation.json").write_text("[]")
    done = run("--state-dir", str(tmp_path), "--set", "probe_timeout=1")
    assert done.returncode in (0, 1) and "is not the guard's" in done.stdout and "cluster now:" in done.stdout


def test_pcs_renders_the_guard_clone_with_the_inventorys_settings_only_when_enabled(tmp_path):
    def parse(text):
        (tmp_path / "inv.yaml").write_text(text)
        return pcs.load(str(tmp_path / "inv.yaml"))
    text = ("controllers: [ctl1]\ncomputes:\n  - name: compute1\n    bmc: {address: 192.0.2.1, user: a, "
            "password_file: /etc/x}\nnova_compute:\n  backend: command\n  start_command: /c start {host}\n"
            "  stop_command: /c stop {host}\n  status_command: /c status {host}\n")
    inv = parse(text + "isolation:\n  enabled: yes\n  isolation_timeout: 14\n  policy: pause\n")
    guard = [c for c in pcs.commands(inv) if "crashup-isolation" in c[2:4] or "crashup-isolation-clone" in c]
    create = guard[0]
    assert create[:6] == ["resource", "create", "crashup-isolation", "ocf:crashup:crashup", "daemon=isolation",
                          "config=/etc/crashup/crashup.conf"]
    assert {"isolation_timeout=14", "policy=pause", "nova_compute_stop_command=/c stop {host}",
            "nova_compute_status_command=/c status {host}"} <= set(create) and "clone" in create
    assert not any(a.startswith(("margin=", "enabled=", "watchdog=")) for a in create)
    assert guard[1][:4] == ["constraint", "location", "add", "crashup-isolation-not-on-ctl1"]
    assert not [c for c in pcs.commands(parse(text)) if "crashup-isolation" in " ".join(c)]


def test_a_guard_that_cannot_act_says_why_and_does_not_start(tmp_path, monkeypatch, capsys):
    from crashup_lib import config
    from crashup_lib.isolation import guard
    svc, _ = service(tmp_path)
    which = lambda name: "/usr/bin/virsh"
    assert act.ready(svc, "qemu:///system", 1, lister=Libvirt({U1: 1}).list, which=which) == ""
    assert "virsh not found" in act.ready(svc, "qemu:///system", 1, lister=Libvirt({}).list, which=lambda n: None)
    broken = LocalService("nova-compute", ["/nonexistent/ctl"], ["/nonexistent/ctl"], ["true"])
    assert "/nonexistent/ctl not found" in act.missing(broken, which=which)
    why = act.ready(svc, "qemu:///system", 0.5, lister=Libvirt({}, down=True).list, which=which)
    assert why.startswith("the guests could not be listed: ") and "no answer within 0.5s" in why
    ran = []
    monkeypatch.setattr(Guard, "run", lambda self, beat=None: ran.append(self))
    monkeypatch.setattr(guard.log, "setup", lambda *a, **k: None)
    rc = guard.main(config.load(None, env={}), Settings(enabled=True), node="n", host="h", service=broken,
                    libvirt_uri="test:///default", state_dir=str(tmp_path))
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crashup: ")]  # not the log's
    assert rc == 1 and ran == [] and len(said) == 1, said
    assert said[0].startswith("crashup: isolation guard not started: nova-compute could not be stopped: ")
    assert not (tmp_path / "isolation.pid").exists()


def test_the_agents_validate_all_refuses_an_isolation_guard_without_virsh(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {"PATH": str(bin_dir), "OCF_ROOT": "/usr/lib/ocf", "OCF_RESKEY_daemon": "isolation",
           "OCF_RESKEY_config": str(tmp_path / "none.conf"), "OCF_RESKEY_nova_compute_stop_command": "/bin/true stop",
           "OCF_RESKEY_nova_compute_status_command": "/bin/true status", "HOME": str(tmp_path)}
    agent = os.path.join(os.path.dirname(__file__), "..", "agents", "crashup")
    run = lambda: subprocess.run([sys.executable, agent, "validate-all"], env=env, capture_output=True, text=True,
                                 timeout=60)
    done = run()
    assert done.returncode == 5 and "virsh not found on PATH" in done.stderr and "Traceback" not in done.stderr
    (bin_dir / "virsh").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "virsh").chmod(0o755)
    done = run()
    assert done.returncode == 0, done.stderr


def test_the_watchdog_refuses_a_driver_that_set_a_longer_timeout(tmp_path, monkeypatch):
    from crashup_lib.isolation import watchdog
    device = tmp_path / "watchdog0"                     # not a FIFO: the timeout ioctl is made
    device.write_bytes(b"")
    asked = []

    def ioctl(fd, request, buf, mutate):
        asked.append((request, buf[0], mutate))
        buf[0] = driver[0]
        return 0
    monkeypatch.setattr(watchdog.fcntl, "ioctl", ioctl)
    driver = [30]
    w = Watchdog(str(device), 29.5)
    w.open()
    assert asked == [(watchdog.WDIOC_SETTIMEOUT, 30, True)] and w.fd is not None
    w.close(disarm=True)
    driver = [60]
    with pytest.raises(WatchdogError, match="the driver set a 60s timeout, longer than the 30s asked for"):
        w.open()
    assert w.fd is None and device.read_bytes() == MAGIC_CLOSE         # disarmed again (written at offset 0)


def test_the_guard_times_isolation_on_the_monotonic_clock_whatever_the_wall_clock_does(tmp_path):
    import inspect
    import time as time_module
    assert inspect.signature(probe.timed).parameters["clock"].default is time_module.monotonic
    g = Guard(Settings(enabled=True), node="n", host="h", service=None, libvirt_uri="test:///default",
              state_dir=str(tmp_path))
    assert g.clock is time_module.monotonic and g.wall is time_module.time
    s = Settings(enabled=True, isolation_timeout=3, probe_interval=1, probe_timeout=1, action_timeout=2)
    mono, wall, acted = [100.0], [5000.0], []

    def prober(timeout):
        started = mono[0]
        mono[0] += 0.5
        wall[0] -= 3600                                 # NTP steps the wall clock back an hour on every probe
        return (probe.Answer.QUORATE if started < 100.4 else probe.Answer.NO_ANSWER), "cut", started, mono[0]
    g = Guard(s, node="n", host="h", service=None, libvirt_uri="test:///default", state_dir=str(tmp_path),
              prober=prober, isolate=lambda *a: acted.append(mono[0]) or act.Outcome("stopped"),
              clock=lambda: mono[0], wall=lambda: wall[0], wait=lambda x: mono.__setitem__(0, mono[0] + x))
    for _ in range(6):
        g.step()
    assert acted and acted[0] == pytest.approx(103.0)
    view = json.loads((tmp_path / "isolation.json").read_text())
    assert view["phase"] == "isolated" and view["at"] == wall[0]                # wall time, only for the view
    assert view["at"] - view["since"] == pytest.approx(view["lost_for"], abs=0.1)


def test_the_labs_hypervisor_sampling_skips_a_sample_libvirt_did_not_answer(monkeypatch):
    """tests/e2e/test_isolation.py's Hypervisors: an error is no proof that nothing runs there."""
    e2e = pytest.importorskip("tests.e2e.test_isolation")

    class Error(Exception):
        pass

    class Conn:
        def __init__(self, uuids):
            self.uuids = uuids

        def listAllDomains(self, flags):
            if self.uuids is None:
                raise Error("cannot recv data: Connection reset by peer")
            return [type("D", (), {"UUIDString": lambda _, u=u: u})() for u in self.uuids]

        def close(self):
            pass
    running = {"compute1": [U1], "compute2": None}
    fake = type("libvirt", (), {"libvirtError": Error, "VIR_CONNECT_LIST_DOMAINS_ACTIVE": 1,
                                "registerErrorHandler": staticmethod(lambda *a: None),
                                "openReadOnly": staticmethod(lambda uri: Conn(running[uri.split("/")[-2]]))})
    monkeypatch.setattr(e2e, "libvirt", fake)
    hv = e2e.Hypervisors(["compute1", "compute2"])
    hv.sample()                                         # compute2 does not answer: U1 may run there too
    assert hv.samples == 0 and hv.active == {} and len(hv.errors) == 1 and hv.errors[0][1] == "compute2"
    running["compute2"] = [U1]
    hv.sample()
    assert hv.samples == 1 and hv.doubles and hv.doubles[0][1:] == (U1, ["compute1", "compute2"])
