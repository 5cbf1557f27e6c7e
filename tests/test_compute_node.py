"""The compute-node agent's library parts: local service control (and libvirt), the heartbeat verdict and its cache,
the rejoin decisions (the rejoin loop: tests/test_rejoin.py)."""
import os
import time

import pytest

from crashup_lib import localservice, rejoin, watchdog
from crashup_lib.nova import Service
from crashup_lib.pacemaker import RecoveryRequest


def svc(host="compute1", state="up", forced_down=False, status="enabled", reason=None, updated="2026-11-21T10:00:00"):
    return Service(id="1", host=host, binary="nova-compute", state=state, status=status, forced_down=forced_down,
                   disabled_reason=reason, updated_at=updated)


def request(state="done", note=""):
    return RecoveryRequest(node="compute1", state=state, mode="auto", fenced_at=1.0, updated_at=2.0, note=note)


# --- localservice ---------------------------------------------------------------------------------------------------

def test_command_templates_fill_names_inside_words_without_a_shell():
    argv = localservice.command_argv("/opt/ctl --host={host} 'two words' {node}; rm -rf /", host="c1", node="n1")
    assert argv == ["/opt/ctl", "--host=c1", "two words", "n1;", "rm", "-rf", "/"]


@pytest.mark.parametrize("template, message", [("", "it is empty"), ("ctl 'open", "cannot split"),
                                               ("ctl {hots}", r"placeholder \{hots\} is not one of")])
def test_bad_command_templates_are_named(template, message):
    with pytest.raises(ValueError, match=message):
        localservice.command_argv(template, host="c1", node="n1")


def test_command_backend_names_every_missing_command():
    with pytest.raises(ValueError, match="needs stop_command, status_command"):
        localservice.commands("nova-compute", "start", "", " ", host="h", node="n")


def test_commands_run_bounded_with_one_line_errors(tmp_path):
    flag = tmp_path / "running"
    service = localservice.commands(
        "nova-compute", f"touch {flag}", f"rm -f {flag}", f"test -e {flag}", host="h", node="n")
    assert not service.running(5)
    service.start(5)
    assert service.running(5)
    service.stop(5)
    assert not service.running(5)
    failing = localservice.commands("x", "sh -c 'echo first; echo boom >&2; exit 3'", "sleep 5", "true")
    with pytest.raises(localservice.ServiceControlError, match=r"^start of x failed \(exit 3\): boom$"):
        failing.start(5)
    started = time.monotonic()
    with pytest.raises(localservice.ServiceControlError, match="did not finish within 0.3s"):
        failing.stop(0.3)
    assert time.monotonic() - started < 2
    with pytest.raises(localservice.ServiceControlError, match="/nonexistent/ctl not found"):
        localservice.commands("x", "/nonexistent/ctl", "true", "true").start(1)


def test_a_stop_waits_until_the_status_says_stopped_and_is_bounded(tmp_path):
    flag = tmp_path / "running"
    flag.touch()
    slow = localservice.commands("nova-compute", "true", f"sh -c '(sleep 0.5; rm -f {flag}) &'", f"test -e {flag}")
    slow.ensure_stopped(lambda: 30.0)
    assert not flag.exists()
    slow.ensure_stopped(lambda: 30.0)                                # not running: nothing to do
    flag.touch()
    stubborn = localservice.commands("nova-compute", "true", "true", f"test -e {flag}")
    left = iter([30.0, 30.0, 30.0, 30.0, 1.5, 1.5])     # status, stop, status, check; status, check: out of time
    naps = []
    with pytest.raises(localservice.ServiceControlError, match="^nova-compute still running after its stop command$"):
        stubborn.ensure_stopped(lambda: next(left), sleep=naps.append)
    assert naps == [localservice.STOP_POLL]


def test_status_checks_keep_a_second_to_report():
    assert localservice.status_timeout(60) == localservice.STATUS_TIMEOUT
    assert localservice.status_timeout(4) == 3 and localservice.status_timeout(0.2) == 0.5


def test_libvirt_check_names_what_is_wrong(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(localservice.ServiceNotInstalled, match="^virsh not installed \\(needed for libvirt_uri\\)$"):
        localservice.check_libvirt("qemu:///system", 5)
    virsh = bin_dir / "virsh"
    virsh.write_text("#!/bin/sh\necho 'error: failed to connect to the hypervisor' >&2\nexit 1\n")
    virsh.chmod(0o755)
    with pytest.raises(localservice.ServiceControlError, match="^libvirt at qemu:///system not answering: error: "
                                                               "failed to connect to the hypervisor$"):
        localservice.check_libvirt("qemu:///system", 5)
    virsh.write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    with pytest.raises(localservice.ServiceControlError, match="^libvirt at qemu:///system did not answer within"):
        localservice.check_libvirt("qemu:///system", 0.2)
    virsh.write_text("#!/bin/sh\necho 'Using library: libvirt 9.0.0'\n")
    localservice.check_libvirt("qemu:///system", 5)


def test_systemd_backend_uses_systemctl_verbs():
    unit = localservice.systemd("openstack-nova-compute")
    assert unit._argv == {"start": ["systemctl", "start", "openstack-nova-compute"],
                          "stop": ["systemctl", "stop", "openstack-nova-compute"],
                          "status": ["systemctl", "is-active", "--quiet", "openstack-nova-compute"]}


# --- watchdog -------------------------------------------------------------------------------------------------------

def test_a_running_compute_nova_sees_down_is_stuck():
    verdict = watchdog.judge("compute1", [svc(state="down", updated="T1"), svc("compute2")], 5.0)
    assert not verdict.healthy and "no heartbeat since T1: stuck" in verdict.reason and verdict.checked_at == 5.0


@pytest.mark.parametrize("computes, why", [
    ([svc()], "heartbeat fresh"),
    ([svc(state="down", forced_down=True), svc("compute2")], "forced down"),
    ([svc(state="down"), svc("compute2", state="down"), svc("compute3", state="down", forced_down=True)],
     "control-plane problem"),
    ([svc(state="down")], "control-plane problem"),       # alone: nothing to compare with, never restart blindly
    ([svc("compute2")], "no nova-compute service"),
])
def test_what_is_not_judged_stuck(computes, why):
    verdict = watchdog.judge("compute1", computes, 0.0)
    assert verdict.healthy and why in verdict.reason


def test_cache_round_trip_and_freshness(tmp_path):
    path = watchdog.cache_path(str(tmp_path / "state"), "compute1")
    assert watchdog.read_cache(path) is watchdog.NO_CACHE
    assert watchdog.write_cache(path, host="c1", checked_at=100.0, healthy=False, reason="stuck")
    cache = watchdog.read_cache(path)
    assert cache == watchdog.Cache(checked_at=100.0, healthy=False, reason="stuck", host="c1")
    assert watchdog.fresh(cache, 30, now=120.0) and not watchdog.fresh(cache, 30, now=131.0)
    assert not watchdog.fresh(cache, 30, now=90.0)                 # from the future: a clock step, re-check
    assert not watchdog.fresh({}, 30, now=1.0) and not watchdog.fresh(watchdog.NO_CACHE, 30, now=1.0)
    (tmp_path / "state" / "nova-compute-compute1.json").write_text("{not json")
    assert watchdog.read_cache(path) is watchdog.NO_CACHE


def test_the_cache_reads_like_the_dict_the_agent_expects(tmp_path):
    """agents/nova-compute reads cache.get("host"), cache.get("healthy", True), cache.get("reason", ...)."""
    path = str(tmp_path / "c.json")
    watchdog.write_cache(path, checked_at=5.0, healthy=True, reason="unchecked: config")       # no host
    cache = watchdog.read_cache(path)
    assert cache.get("host") is None and cache.get("host", "n1") == "n1" and cache.get("healthy", False) is True
    assert cache.get("reason", "stuck") == "unchecked: config" and cache.get("nope", 3) == 3
    assert watchdog.NO_CACHE.get("healthy", True) and watchdog.NO_CACHE.get("checked_at") is None


@pytest.mark.parametrize("content", [
    b'{"reason": null}', b'{"healthy": "yes"}', b"[]", b"\x00\xff\xfe garbage", b'{"checked_at": "x"}', b"",
    b'{"checked_at": 1, "healthy": false, "reason": null}', b'{"checked_at": 1, "healthy": 0, "reason": "r"}',
    b'{"checked_at": true, "healthy": true, "reason": "r"}', b'{"checked_at": NaN, "healthy": true, "reason": "r"}',
    b'{"checked_at": 1e999, "healthy": true, "reason": "r"}', b'{"checked_at": 1' + b"0" * 400 + b', "healthy": '
    b'true, "reason": "r"}', b'{"checked_at": 1, "healthy": false, "reason": "r", "host": ["c1"]}',
    b'{"checked_at": 1, "healthy": false, "reason": "r", "host": "c1; rm -rf /"}',
    b'{"checked_at": 1, "healthy": false, "reason": "stuck\\n\\u001b[2J"}', b"[" * 100000,
    b'{"checked_at": 1, "healthy": false, "reason": "' + b"r" * 5000 + b'"}',
])
def test_a_corrupt_cache_is_no_cache(tmp_path, content):
    """It used to give the monitor a traceback (or a reason of None, a host that is a list): now the monitor asks
    nova again."""
    path = tmp_path / "c.json"
    path.write_bytes(content)
    cache = watchdog.read_cache(str(path))
    assert cache is watchdog.NO_CACHE and not watchdog.fresh(cache, 30)


def test_a_cache_that_is_not_a_regular_file_never_blocks_the_monitor(tmp_path):
    fifo = tmp_path / "c.json"
    os.mkfifo(fifo)
    assert watchdog.read_cache(str(fifo)) is watchdog.NO_CACHE
    assert watchdog.read_cache(str(tmp_path)) is watchdog.NO_CACHE


def test_a_cache_that_cannot_be_written_costs_a_recheck_not_the_monitor(tmp_path):
    path = tmp_path / "state" / "c.json"
    assert watchdog.write_cache(str(path), checked_at=1.0, healthy=False, reason="old")
    assert not watchdog.write_cache(str(path), checked_at=2.0, healthy=True, reason="r", host="two words")
    assert not path.exists()                                         # the old verdict is not trusted again
    (tmp_path / "ro").write_text("a file where the folder should be")
    assert not watchdog.write_cache(str(tmp_path / "ro" / "c.json"), checked_at=1.0, healthy=True, reason="r")
    assert watchdog.write_cache(str(path), checked_at=1.0, healthy=False, reason="since \x1b[2J\nnever")
    assert watchdog.read_cache(str(path)).reason == "since \\x1b[2J\\nnever"   # made one printable line
    with pytest.raises(TypeError):
        watchdog.write_cache(str(path), checked_at=1.0, healthy=True, reason="r", colour="red")      # a bug


class Log:
    def __init__(self):
        self.warnings = []

    def warning(self, msg, *args):
        self.warnings.append(msg % args)


def test_a_heartbeat_check_asks_nova_once_and_caches_the_verdict(tmp_path):
    path = str(tmp_path / "c.json")
    log = Log()
    cache = watchdog.check_heartbeat(path, "compute1", lambda: [svc(state="down", updated="T1"), svc("compute2")],
                                     log, now=lambda: 50.0)
    assert not cache.healthy and cache.host == "compute1" and cache.reason.endswith("no heartbeat since T1: stuck")
    assert watchdog.read_cache(path) == cache and log.warnings == [cache.reason]
    assert watchdog.check_heartbeat(path, "compute1", lambda: [svc()], log, now=lambda: 60.0) == \
        watchdog.Cache(checked_at=60.0, healthy=True, reason="compute1: heartbeat fresh", host="compute1")
    assert len(log.warnings) == 1                                   # a healthy verdict is not warned about


def test_nova_unreachable_is_an_unchecked_healthy_verdict_cached_like_any_other(tmp_path):
    from crashup_lib.nova import NovaUnavailable
    path = str(tmp_path / "c.json")
    log = Log()

    def computes():
        raise NovaUnavailable("services", None, "cannot connect to http://nova:8774: refused")
    cache = watchdog.check_heartbeat(path, "compute1", computes, log, unreachable=NovaUnavailable, now=lambda: 7.0)
    assert cache.healthy and cache.reason == "unchecked: nova services: cannot connect to http://nova:8774: refused"
    assert watchdog.read_cache(path) == cache and cache.host == "compute1" and cache.checked_at == 7.0
    assert log.warnings == ["heartbeat of compute1 not checked: nova services: cannot connect to http://nova:8774: "
                            "refused"]
    with pytest.raises(NovaUnavailable):                            # only what the caller names is "unreachable"
        watchdog.check_heartbeat(path, "compute1", computes, log)


def test_an_unreadable_configuration_is_an_unchecked_verdict_without_a_host(tmp_path):
    path = str(tmp_path / "c.json")
    log = Log()
    cache = watchdog.unchecked(path, "config: mode = 'sometimes'", log, now=lambda: 3.0)
    assert cache == watchdog.read_cache(path) == watchdog.Cache(3.0, True, "unchecked: config: mode = 'sometimes'")
    assert log.warnings == ["heartbeat not checked: config: mode = 'sometimes'"]
    watchdog.forget(path)
    watchdog.forget(path)                                           # already gone: no failure
    assert watchdog.read_cache(path) is watchdog.NO_CACHE


# --- rejoin ---------------------------------------------------------------------------------------------------------

def test_nova_compute_is_held_while_the_recovery_is_open():
    assert "recovery of compute1 is still recovering (auto mode): 3 of 5" in \
        rejoin.hold_reason(request("recovering", "3 of 5"))
    assert rejoin.hold_reason(request("pending")) is not None
    for closed in (None, request("done"), request("released")):
        assert rejoin.hold_reason(closed) is None


@pytest.mark.parametrize("service, req, before, step", [
    (None, request(), None, rejoin.WAIT),
    (svc(state="down", forced_down=True), request(), "T0", rejoin.CLEAR_FORCED_DOWN),
    (svc(state="down", forced_down=True), None, None, rejoin.REFUSE),         # someone else's mark
    (svc(state="down"), request(), "T0", rejoin.WAIT),
    (svc(updated="T0"), request(), "T0", rejoin.WAIT),                        # the old heartbeat, not a new one
    (svc(updated="T1"), request(), "T0", rejoin.UP),
    (svc(updated="T1"), None, None, rejoin.UP),                               # never fenced: just started
    (svc(status="disabled", reason="crashup: fenced"), request(), None, rejoin.ENABLE),
    (svc(status="disabled", reason="maintenance"), request(), None, rejoin.UP),   # an operator's: left alone
])
def test_rejoin_steps_follow_novas_order(service, req, before, step):
    got, why = rejoin.next_step(service, req, before)
    assert got == step, why
    if step == rejoin.REFUSE:
        assert "openstack compute service set --up compute1 nova-compute" in why
