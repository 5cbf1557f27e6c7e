"""The lab's BMC simulator (tests/lab/bmc.py) against real clients: pyghmi, ipmitool -I lanplus, fence_ipmilan."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PASSWORD = "lab-S3cret!"
FENCE_IPMILAN = "/usr/sbin/fence_ipmilan"

pytestmark = pytest.mark.skipif(not shutil.which("ipmitool") or not os.access(FENCE_IPMILAN, os.X_OK),
                                reason="needs ipmitool and Debian's fence-agents")

# A pyghmi client in its own process (pyghmi keeps per-process state, see /work/shared/notes/ipmi.md), one step
# per argument, each bounded by a SIGALRM deadline since pyghmi has no timeout of its own. Prints JSON
# [[step, result, seconds], ...] and stops at the first failing step.
PYGHMI_CLIENT = r"""
import json, os, signal, sys, time
from pyghmi.ipmi import command
from pyghmi.ipmi.private import session

class Deadline(Exception):
    pass

def expire(*_):
    raise Deadline()

signal.signal(signal.SIGALRM, expire)

# pyghmi client race (notes): a reply that the IO thread queued before the caller started waiting is only seen at
# the resend timer, 0.5-1 s later, and the command is then sent twice. Do not wait when a reply is already queued.
_io_wait = session._io_wait
def io_wait(timeout, myaddr=None, evq=None):
    if not any(queued.pktqueue for queued in session.sessionqueue):
        _io_wait(timeout, myaddr, evq)
session._io_wait = io_wait

port, user, deadline = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
out, cmd = [], None
for step in sys.argv[4:]:
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, deadline)
    try:
        if step == "login":
            session.Session.initting_sessions.clear()   # pyghmi reuses a dead session after a logout otherwise
            cmd = command.Command(bmc="127.0.0.1", userid=user, password=os.environ["PYGHMI_PASSWORD"], port=port)
            result = "ok"
        elif step == "status":
            result = cmd.get_power()["powerstate"]
        elif step in ("on", "off"):
            result = cmd.set_power(step, wait=False).get("pendingpowerstate", "unchanged")
        elif step in ("until-on", "until-off"):
            while cmd.get_power()["powerstate"] != step[6:]:
                time.sleep(0.05)
            result = step[6:]
        elif step == "logout":
            cmd.ipmi_session.logout()
            result = "ok"
    except Deadline:
        result = "deadline"
    except Exception as err:
        result = "error: %s" % err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    out.append([step, result, round(time.monotonic() - start, 3)])
    if result == "deadline" or result.startswith("error"):
        break
print(json.dumps(out))
"""


class Sim:
    """One running simulator: its process, state dir and port."""

    def __init__(self, proc, state: pathlib.Path, port: int):
        self.proc, self.state, self.port = proc, state, port

    def set_fault(self, text: str):
        (self.state / "fault").write_text(text)

    def power_log(self) -> list[dict]:
        path = self.state / "power.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def log(self) -> str:
        return (self.state / "bmc.log").read_text()

    def ipmitool(self, *args, suite=17, user="admin", password=PASSWORD, options=(), timeout=30):
        cmd = ["ipmitool", "-I", "lanplus", "-C", str(suite), "-H", "127.0.0.1", "-p", str(self.port),
               "-U", user, "-E", *options, *args]
        return _run(cmd, env=dict(os.environ, IPMI_PASSWORD=password), timeout=timeout)

    def power_status(self, **kw) -> str:
        result = self.ipmitool("power", "status", **kw)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def fence(self, action, password=PASSWORD, **options):
        lines = [f"ip=127.0.0.1", f"ipport={self.port}", "username=admin", f"password={password}", "lanplus=1",
                 f"action={action}"] + [f"{key}={value}" for key, value in options.items()]
        return _run([FENCE_IPMILAN], stdin="\n".join(lines) + "\n", timeout=60)

    def pyghmi(self, *steps, user="admin", password=PASSWORD, deadline=5.0) -> list:
        result = _run([sys.executable, "-c", PYGHMI_CLIENT, str(self.port), user, str(deadline), *steps],
                      env=dict(os.environ, PYGHMI_PASSWORD=password), timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def logins(self) -> list[str]:
        return re.findall(r"login: admin from (\S+), cipher suite", self.log())


def _run(cmd, stdin=None, env=None, timeout=30):
    start = time.monotonic()
    result = subprocess.run(cmd, input=stdin, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    result.elapsed = time.monotonic() - start
    return result


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def start_bmc(tmp_path):
    procs = []

    def start(*extra, initial="on") -> Sim:
        pwfile = tmp_path / "password"
        pwfile.write_text(PASSWORD + "\n")
        state = tmp_path / "state"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.bmc", "--name", "compute1", "--address", "127.0.0.1", "--port", "0",
             "--user", "admin", "--password-file", str(pwfile), "--state-dir", str(state),
             "--initial-power", initial, *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        _wait(lambda: (state / "ready").exists() or proc.poll() is not None, 10, "the ready file")
        assert proc.poll() is None, proc.communicate()[1]
        words = (state / "ready").read_text().split()
        assert words[:3] == ["ready", "compute1", "127.0.0.1"]
        assert proc.stdout.readline().split() == words
        return Sim(proc, state, int(words[3]))

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture
def bmc(start_bmc) -> Sim:
    return start_bmc()


# ------------------------------------------------------------------------------------------------- clients --

def test_pyghmi_client_status_off_on_logout(bmc):
    steps = bmc.pyghmi("login", "status", "off", "until-off", "on", "status", "logout")
    assert [(s, r) for s, r, _ in steps] == [("login", "ok"), ("status", "on"), ("off", "off"),
                                            ("until-off", "off"), ("on", "on"), ("status", "on"),
                                            ("logout", "ok")]
    assert all(seconds < 1.0 for _, _, seconds in steps), steps      # no resend waits anywhere
    assert "cipher suite 17" in bmc.log()                           # pyghmi proposes 17 first: negotiated
    assert "logout: admin" in bmc.log()
    log = bmc.power_log()
    assert [(e["command"], e["from"], e["to"]) for e in log] == [("off", "on", "off"), ("on", "off", "on")]
    assert log[0]["bmc"] == "compute1" and log[0]["client"] == bmc.logins()[0]
    assert log[0]["time"] <= log[1]["time"] <= time.time()


@pytest.mark.parametrize("suite", [3, 17])
def test_ipmitool_lanplus_suites(bmc, suite):
    assert bmc.power_status(suite=suite) == "Chassis Power is on"
    off = bmc.ipmitool("power", "off", suite=suite)
    assert off.returncode == 0 and "Down/Off" in off.stdout, off.stderr
    assert bmc.power_status(suite=suite) == "Chassis Power is off"
    assert bmc.ipmitool("power", "on", suite=suite).returncode == 0
    assert bmc.power_status(suite=suite) == "Chassis Power is on"
    assert [e["command"] for e in bmc.power_log()] == ["off", "on"]
    info = bmc.ipmitool("mc", "info", suite=suite)                  # Get Device ID
    assert info.returncode == 0 and re.search(r"IPMI Version\s+: 2.0", info.stdout), info.stderr
    assert f"cipher suite {suite}" in bmc.log() and f"cipher suite {20 - suite}" not in bmc.log()
    assert PASSWORD not in bmc.log()


def test_fence_ipmilan_status_and_off(bmc):
    status = bmc.fence("status")
    assert (status.returncode, status.stdout.strip()) == (0, "Status: ON"), status.stderr
    off = bmc.fence("off", power_wait=0)
    assert off.returncode == 0 and "Success: Powered OFF" in off.stdout, off.stderr
    status = bmc.fence("status")
    assert (status.returncode, status.stdout.strip()) == (2, "Status: OFF"), status.stderr
    again = bmc.fence("off")
    assert again.returncode == 0 and "Already OFF" in again.stdout
    log = bmc.power_log()
    assert [e["command"] for e in log] == ["off"]                   # exactly one off, never a reset
    assert "cipher suite 17" in bmc.log()          # ipmitool without -C picks the best of Get Channel Cipher Suites
    assert (log[0]["from"], log[0]["to"]) == ("on", "off")


def test_initial_power_off(start_bmc):
    sim = start_bmc(initial="off")
    assert sim.power_status() == "Chassis Power is off"
    assert sim.fence("status").returncode == 2


# --------------------------------------------------------------------------------------------------- power --

def test_off_hook_finishes_before_status_reads_off(start_bmc, tmp_path):
    off_mark, on_mark = tmp_path / "off-hook-done", tmp_path / "on-hook-done"
    sim = start_bmc("--on-power-off", f"sh -c 'sleep 0.6; touch {off_mark}'", "--power-off-delay", "0.3",
                    "--on-power-on", f"sh -c 'echo $BMC_NAME $BMC_POWER > {on_mark}'")
    sent = time.monotonic()
    off = sim.ipmitool("power", "off")
    assert off.returncode == 0 and off.elapsed < 0.5                 # the reply does not wait for the hook
    assert sim.power_status() == "Chassis Power is on" and not off_mark.exists()
    _wait(lambda: sim.power_status() == "Chassis Power is off", 5, "power off")
    assert off_mark.exists()                                        # off is only reported once the hook is done
    assert time.monotonic() - sent >= 0.9                           # hook 0.6 s + --power-off-delay 0.3 s
    assert sim.ipmitool("power", "on").returncode == 0
    assert sim.power_status() == "Chassis Power is on"              # on at once, the hook follows
    _wait(on_mark.exists, 5, "the power-on hook")
    _wait(lambda: on_mark.read_text() == "compute1 on\n", 1, "the on hook's output")


def test_reset_cycle_soft_diag(start_bmc, tmp_path):
    hooks = tmp_path / "hooks"
    sim = start_bmc("--on-power-off", f"sh -c 'echo off >> {hooks}'", "--on-power-on", f"sh -c 'echo on >> {hooks}'")
    for command, expect in [("reset", "off on"), ("cycle", "off on off on"), ("diag", "off on off on"),
                            ("soft", "off on off on off")]:
        assert sim.ipmitool("power", command).returncode == 0, command
        _wait(lambda: hooks.exists() and hooks.read_text().split() == expect.split(), 5, f"{command} hooks")
    _wait(lambda: sim.power_status() == "Chassis Power is off", 5, "soft off")
    time.sleep(0.2)
    assert hooks.read_text().split() == "off on off on off".split()      # diag ran no hook
    assert [(e["command"], e["from"], e["to"]) for e in sim.power_log()] == [
        ("reset", "on", "on"), ("cycle", "on", "on"), ("diag", "on", "on"), ("soft", "on", "off")]


# ---------------------------------------------------------------------------------------------------- login --

@pytest.mark.parametrize("suite", [3, 17])
def test_ipmitool_bad_credentials_fail_fast(bmc, suite):
    for user, password in [("admin", "wrong-password"), ("nobody", PASSWORD)]:
        result = bmc.ipmitool("power", "status", suite=suite, user=user, password=password, options=["-v"])
        assert result.returncode != 0 and result.elapsed < 2, (user, result.elapsed)
        assert "Unable to establish IPMI v2 / RMCP+ session" in result.stderr
        if user == "admin":
            assert "RAKP 2 HMAC is invalid" in result.stderr
        else:
            assert "RAKP 2 message indicates an error : unauthorized name" in result.stderr
    assert "refused: user 'nobody', RAKP2 status 0x0d" in bmc.log()
    assert bmc.power_status(suite=suite) == "Chassis Power is on"


def test_pyghmi_bad_credentials_fail_fast(bmc):
    [(_, wrong_password, seconds)] = bmc.pyghmi("login", password="wrong-password")
    assert wrong_password == "error: Incorrect password provided" and seconds < 2
    [(_, unknown_user, seconds)] = bmc.pyghmi("login", user="nobody")
    assert unknown_user == "error: Unauthorized name in RAKP2" and seconds < 2
    fence = bmc.fence("status", password="wrong-password")
    assert fence.returncode == 1 and fence.elapsed < 2


def _rmcp(payload_type, body, session_id=0):
    return (b"\x06\x00\xff\x07\x06" + bytes([payload_type]) + struct.pack("<II", session_id, 0)
            + struct.pack("<H", len(body)) + body)


class RawLogin:
    """A hand-made RMCP+ login with cipher suite 3, for what no real client sends."""

    client_sid = b"\x11\x22\x33\x44"
    role, user = 0x14, b"admin"

    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2)
        self.addr = ("127.0.0.1", port)

    def exchange(self, payload_type, body, reply_type):
        self.sock.sendto(_rmcp(payload_type, body), self.addr)
        reply = self.sock.recv(512)
        assert reply[5] == reply_type
        return reply[16:]

    def open(self, auth=1, integrity=1, conf=1):
        reply = self.exchange(0x10, bytes([1, 4, 0, 0]) + self.client_sid + bytes(
            [0, 0, 0, 8, auth, 0, 0, 0, 1, 0, 0, 8, integrity, 0, 0, 0, 2, 0, 0, 8, conf, 0, 0, 0]), 0x11)
        assert reply[4:8] == self.client_sid
        self.managed_sid = reply[8:12]
        return reply

    def rakp1(self):
        self.rm = os.urandom(16)
        reply = self.exchange(0x12, bytes([2, 0, 0, 0]) + self.managed_sid + self.rm
                              + bytes([self.role, 0, 0, len(self.user)]) + self.user, 0x13)
        assert reply[:2] == bytes([2, 0]) and reply[4:8] == self.client_sid
        self.rc, self.guid = reply[8:24], reply[24:40]
        return reply

    def rakp3(self, password: bytes):
        namedata = bytes([self.role, len(self.user)]) + self.user
        signed = hmac.new(password, self.rc + self.client_sid + namedata, hashlib.sha1).digest()
        reply = self.exchange(0x14, bytes([3, 0, 0, 0]) + self.managed_sid + signed, 0x15)
        sik = hmac.new(password, self.rm + self.rc + namedata, hashlib.sha1).digest()
        self.k1 = hmac.new(sik, b"\x01" * 20, hashlib.sha1).digest()
        return reply

    def signed(self, payload_type, payload):
        """A packet in the session, with a valid integrity code (whatever the payload is)."""
        body = _rmcp(payload_type | 0x40, payload, struct.unpack("<I", self.managed_sid)[0])
        return body + hmac.new(self.k1, body[4:], hashlib.sha1).digest()[:12]


def test_rmcp_status_codes_raw(bmc):
    """What no real client exercises: a refused cipher proposal, and a RAKP3 signed with a wrong password."""
    raw = RawLogin(bmc.port)
    assert raw.open(1, 0, 0)[1] == 0x11                             # suite 1 (no integrity): no cipher match
    opened = raw.open()                                             # suite 3
    assert opened[1] == 0 and opened[2] == 4
    rakp2 = raw.rakp1()
    namedata = bytes([raw.role, len(raw.user)]) + raw.user
    expected = hmac.new(PASSWORD.encode(), raw.client_sid + raw.managed_sid + raw.rm + raw.rc + raw.guid + namedata,
                        hashlib.sha1).digest()
    assert rakp2[40:60] == expected                                 # keyed by the password from the file
    rakp4 = raw.rakp3(b"not-the-password")
    assert rakp4[:2] == bytes([3, 0x0F]) and rakp4[4:8] == raw.client_sid    # invalid integrity check value
    assert "wrong password for 'admin'" in bmc.log()
    raw.open()
    raw.rakp1()
    assert raw.rakp3(PASSWORD.encode())[:2] == bytes([3, 0])
    assert "login: admin" in bmc.log()
    raw.sock.close()


def test_relogin_from_same_udp_port(bmc):
    steps = bmc.pyghmi("login", "status", "logout", "login", "status", "logout", "login", "status")
    assert [r for _, r, _ in steps] == ["ok", "on", "ok", "ok", "on", "ok", "ok", "on"]
    logins = bmc.logins()
    assert len(logins) == 3 and len(set(logins)) == 1                # pyghmi reuses its socket: same port
    assert bmc.proc.poll() is None and "Traceback" not in bmc.log()
    assert bmc.power_status() == "Chassis Power is on"


def test_garbage_packets_do_not_kill_it(bmc):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ("127.0.0.1", bmc.port)
    rng = random.Random(1234)
    header = b"\x06\x00\xff\x07"
    packets = [rng.randbytes(rng.randrange(0, 200)) for _ in range(300)]
    packets += [header + rng.randbytes(rng.randrange(0, 60)) for _ in range(300)]
    for ptype in (0x00, 0x01, 0x10, 0x12, 0x14, 0x40, 0xC0, 0x3F):  # every RMCP+ payload type, truncated or bogus
        for size in (0, 1, 4, 8, 20, 40, 100):
            packets.append(header + bytes([6, ptype]) + rng.randbytes(8) + struct.pack("<H", size)
                           + rng.randbytes(size // 2))
            packets.append(header + bytes([6, ptype]) + bytes(8) + struct.pack("<H", size) + bytes(size))
    packets += [header + b"\x00" + bytes(8) + bytes([n]) + rng.randbytes(n) for n in range(0, 12)]  # IPMI 1.5
    packets.append(header + b"\x06\x00" + bytes(8) + b"\x07\x00" + bytes([0x20, 0x18, 0xC8, 0x81, 0, 0x54, 0]))
    for packet in packets:
        sock.sendto(packet, addr)
    sock.close()
    # and inside a session: logged-in packets with a valid integrity code around garbage
    raw = RawLogin(bmc.port)
    raw.open()
    raw.rakp1()
    raw.rakp3(PASSWORD.encode())
    for size in range(0, 70):
        raw.sock.sendto(raw.signed(0xC0 if size % 2 else 0x00, rng.randbytes(size)), raw.addr)
        raw.sock.sendto(raw.signed(0x01, rng.randbytes(size)), raw.addr)
    raw.sock.close()
    time.sleep(0.3)
    assert bmc.proc.poll() is None
    assert bmc.power_status() == "Chassis Power is on"
    assert bmc.pyghmi("login", "status", "logout")[1][1] == "on"


# --------------------------------------------------------------------------------------------------- faults --

def test_fault_slow(bmc):
    bmc.set_fault("slow 0.3\n")
    slow = bmc.ipmitool("power", "status", options=["-N", "3"])
    assert slow.returncode == 0 and slow.stdout.strip() == "Chassis Power is on", slow.stderr
    assert slow.elapsed >= 1.5                     # 0.3 s on each of 5+ replies (login and the command)
    bmc.set_fault("")
    fast = bmc.ipmitool("power", "status")
    assert fast.returncode == 0 and fast.elapsed < 0.5


def test_fault_hang(bmc):
    bmc.set_fault("hang")
    ipmitool = subprocess.Popen(
        ["ipmitool", "-I", "lanplus", "-C", "17", "-H", "127.0.0.1", "-p", str(bmc.port), "-U", "admin", "-E",
         "-R", "1", "-N", "1", "power", "off"],
        env=dict(os.environ, IPMI_PASSWORD=PASSWORD), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = bmc.pyghmi("login", "status", deadline=1.5)
    assert [(s, r) for s, r, _ in steps] == [("login", "ok"), ("status", "deadline")]
    out, err = ipmitool.communicate(timeout=30)
    assert ipmitool.returncode != 0 and "Down/Off" not in out, (out, err)
    assert bmc.power_log() == []                    # the off was never carried out
    bmc.set_fault("\n")                             # re-read on every request: healthy again
    assert bmc.power_status() == "Chassis Power is on"


def test_fault_reject(bmc):
    bmc.set_fault("reject")
    off = bmc.ipmitool("power", "off")
    assert off.returncode != 0 and "Command not supported in present state" in off.stderr, off
    assert bmc.power_status() == "Chassis Power is on"              # status still answers
    assert bmc.pyghmi("login", "off")[1][1] == "error: Command not supported in present state"
    log = bmc.power_log()
    assert [(e["command"], e["from"], e["to"], e.get("fault")) for e in log] == [("off", "on", "on", "reject")] * 2


def test_fault_stuck(start_bmc, tmp_path):
    mark = tmp_path / "off-hook-ran"
    sim = start_bmc("--on-power-off", f"touch {mark}")
    sim.set_fault("stuck")
    off = sim.ipmitool("power", "off")
    assert off.returncode == 0 and "Down/Off" in off.stdout
    time.sleep(0.3)
    assert sim.power_status() == "Chassis Power is on" and not mark.exists()
    fence = sim.fence("status")
    assert fence.returncode == 0
    assert [(e["command"], e["to"], e.get("fault")) for e in sim.power_log()] == [("off", "on", "stuck")]


# ------------------------------------------------------------------------------------------------ process --

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_cleanly(bmc, signum):
    assert int((bmc.state / "bmc.pid").read_text()) == bmc.proc.pid
    bmc.proc.send_signal(signum)
    assert bmc.proc.wait(3) == 0
    assert not (bmc.state / "ready").exists() and not (bmc.state / "bmc.pid").exists()
    assert "Traceback" not in bmc.proc.stderr.read()


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "not a UDP port"),
    (["--address", "bmc.example"], "not an IP address"),
    (["--power-off-delay", "soon"], "not a number of seconds"),
    (["--on-power-off", "kill 'unbalanced"], "No closing quotation"),
    (["--initial-power", "maybe"], "invalid choice"),
    (["--password-file", "/nonexistent/password"], "cannot read --password-file"),
])
def test_bad_cli_input(tmp_path, args, message):
    pwfile = tmp_path / "password"
    pwfile.write_text(PASSWORD)
    base = ["--name", "compute1", "--user", "admin", "--password-file", str(pwfile), "--state-dir", str(tmp_path)]
    result = _run([sys.executable, "-m", "tests.lab.bmc", *base, *args])
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
