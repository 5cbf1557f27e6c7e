"""The controller agent's daemon handling (crashup_lib.presence): start waits for a pid and a heartbeat newer than
the start, a start that gives up takes its daemon back, a stop escalates to SIGKILL in time. The daemon here is a
small stand-in with the real one's files and command-line marker; ocf-tester runs the real one
(tests/test_agents_metadata.py)."""
import os
import sys
import time

import pytest

from crashup_lib import presence

DAEMON = """
import os, pathlib, signal, sys, time
state, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
if mode == "fail":
    print("starting", flush=True)
    sys.exit("config: mode = 'sometimes' is not one of auto, notify")
if mode == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(state / "daemon.pid").write_text(f"{os.getpid()}\\n")
while True:
    if mode != "mute":
        (state / "heartbeat").touch()
    time.sleep(0.05)
"""


def argv(state, mode):
    return [sys.executable, "-c", DAEMON, str(state), mode, "crashup_lib.cli", "daemon"]


def budget(seconds):
    until = time.monotonic() + seconds
    return lambda: until - time.monotonic()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def gone(pid, within=2.0):
    """The process ends: its command line empties as it exits, a moment before /proc shows it a zombie."""
    until = time.monotonic() + within
    while alive(pid):
        assert time.monotonic() < until, f"process {pid} still alive"
        time.sleep(0.01)


@pytest.fixture
def daemon(tmp_path):
    return presence.Presence(tmp_path / "state", *presence.RECOVERY)


def test_a_daemon_that_beats_is_started_and_stopped(daemon):
    pid = daemon.spawn(argv(daemon.state_dir, "beat"), dict(os.environ), b"daemon", budget(10))
    assert daemon.pid(b"daemon") == pid and daemon.pid(b"sweep") is None
    assert daemon.stop(b"daemon", budget(10)) is True
    assert daemon.pid(b"daemon") is None
    gone(pid)
    assert daemon.stop(b"daemon", budget(10)) is True                 # nothing running: done


def test_a_daemon_that_exits_fails_the_start_with_its_last_line(daemon):
    with pytest.raises(presence.DaemonFailed, match="^the recovery daemon did not start: config: mode = 'sometimes' "
                                                     "is not one of auto, notify$"):
        daemon.spawn(argv(daemon.state_dir, "fail"), dict(os.environ), b"daemon", budget(10))


def test_an_old_heartbeat_is_not_taken_and_a_start_that_gives_up_kills_its_daemon(daemon):
    daemon.state_dir.mkdir()
    daemon.heartbeat_file.touch()
    os.utime(daemon.heartbeat_file, (time.time() - 60, time.time() - 60))   # a previous daemon's
    started = time.monotonic()
    with pytest.raises(presence.DaemonFailed, match=r"^the sweep daemon did not start \(no heartbeat before the "
                                                     r"start timeout\)$"):
        daemon.spawn(argv(daemon.state_dir, "mute"), dict(os.environ), b"daemon", budget(2), name="sweep")
    assert time.monotonic() - started < 2
    gone(int(daemon.pid_file.read_text()))


def test_a_daemon_deaf_to_sigterm_is_killed_before_the_stop_times_out(daemon):
    pid = daemon.spawn(argv(daemon.state_dir, "deaf"), dict(os.environ), b"daemon", budget(10))
    started = time.monotonic()
    assert daemon.stop(b"daemon", budget(2.5)) is False
    assert 0.4 < time.monotonic() - started < 1.5
    gone(pid)
