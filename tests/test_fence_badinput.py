"""Fence agents against bad input (issue 11): every failure is one short, printable 'Failed:' line and exit 1, in
bounded time, never a traceback or a hang, never a password.

Generated input goes to the parsers and to the whole FenceAgent.run of a fake power agent, in-process (no device, a
fake clock); one test per defect found by the audit runs the real fence_crashup_ipmi."""
import contextlib
import io
import logging
import os
import re
import stat
import subprocess
import time
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from crashup_lib import fencing, ipmi, log
from tests.helpers import REPO, Result, agent_env, free_port, run

IPMI = REPO / "fence" / "fence_crashup_ipmi"
NOVA = REPO / "fence" / "fence_crashup_nova"
PASSWORD = "Pw-9q!Zx7"
FAILED = re.compile(r"^(ERROR: )?Failed: ")
# what must never reach a terminal or a log line: C0 but tab, DEL, C1, line separators
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def assert_contract(rc: int, stdout: str, stderr: str, logged: str = "", secrets=(PASSWORD,)) -> None:
    assert rc in (0, 1, 2), (rc, stderr)
    assert "Traceback" not in stderr and "Traceback" not in logged
    failed = [line for line in stderr.splitlines() if FAILED.match(line)]
    assert len(failed) == (1 if rc == 1 else 0), stderr
    for line in failed:
        assert len(line) < 500, line
    for line in stderr.splitlines():
        assert line.isprintable(), line
    for line in logged.splitlines():               # a tab after the tag is ha_log's format
        assert not CONTROL.search(line), line
    for secret in secrets:
        assert secret not in stdout + stderr + logged


# --- a fake power agent, run in-process ------------------------------------------------------------------------------

class FakePower(fencing.FenceAgent):
    """Power state in a dict (plugs named *2 start OFF); fault=TEXT makes get_power fail like a defective agent,
    quoting the password."""
    name = "fence_fake_power"
    # never password_file/password_script here: generated input would run generated commands
    options = fencing.COMMON_OPTIONS + tuple(o for o in fencing.CREDENTIAL_OPTIONS
                                             if o.name not in ("password_file", "password_script")) + (
        fencing.Option("ipport", "port", type="integer", default="623", short="u", minimum=1, maximum=65535),
        fencing.Option("fault", "raise from get_power", metavar="text"),
        fencing.Option("method", "method", type="select", default="onoff", choices=("onoff", "cycle")),
    )
    required_for_actions = ("password",)

    def __init__(self):
        super().__init__()
        self.state = {}

    def get_power(self, req):
        if req.get("fault"):
            raise RuntimeError(f"device said:\n{req.get('fault')} for {req.password}")
        return self.state.get(req.plug, "off" if (req.plug or "").endswith("2") else "on")

    def set_power(self, req, state):
        self.state[req.plug] = state

    def list_plugs(self, req):
        return sorted((p, p) for p in self.state)


class FakeClock:
    """fencing's time: delay, power_wait and power_timeout pass at once."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture(scope="module")
def logfile(tmp_path_factory):
    return tmp_path_factory.mktemp("badinput") / "ha.log"


@contextlib.contextmanager
def secrets_kept():
    """Generated input registers secrets like 'off' process-wide: forget them, or later tests read '***'."""
    saved = set(log._secrets)
    try:
        yield
    finally:
        log._secrets.clear()
        log._secrets.update(saved)


@contextlib.contextmanager
def isolated(logfile):
    """stdout/stderr captured as bytes, HA_LOGFILE set, and the process-wide logging and secrets left as found."""
    logfile.write_text("")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    env = {"HA_LOGFILE": str(logfile), "HA_DEBUGLOG": "", "HA_debug": "0"}
    try:
        with mock.patch.dict(os.environ, env), mock.patch.object(fencing.agent, "time", FakeClock()), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), secrets_kept():
            yield out, err
    finally:
        logging.getLogger("crashup").handlers.clear()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)


def run_in_process(logfile, argv, data=b""):
    with isolated(logfile) as (out, err):
        rc = FakePower().run(argv, stdin=io.BytesIO(data))
    out.flush(), err.flush()
    return (rc, out.buffer.getvalue().decode("utf-8"), err.buffer.getvalue().decode("utf-8"),
            logfile.read_text(encoding="utf-8", errors="backslashreplace"))


# --- generated input ------------------------------------------------------------------------------------------------

AGENT = FakePower()
NAMES = sorted(AGENT.by_input_name) + ["nodename", "nodeid"]
INTERESTING = ["", "0", "1", "-1", "nan", "NaN", "inf", "-inf", "1e400", "1e-400", "70000", "65535", "0.5", "3601",
               "1_0", " 5 ", "\u0665", "9" * 5000, "yes", "off", "on", "status", "reboot", "list", "list-status",
               "monitor", "metadata", "meta-data", "validate-all", "help", "version", "explode", "onoff", "cycle",
               "x" * 70000, PASSWORD, f"x{PASSWORD}", f"password={PASSWORD}", "'\"quoted\"'"]
values = st.one_of(st.sampled_from(INTERESTING), st.text(max_size=40), st.floats().map(str),
                   st.integers().map(str), st.text(max_size=20).map(lambda t: t + PASSWORD + t))
names = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
option_line = st.builds(lambda n, v: f"{n}={v}".encode(), names, values)
stdin_lines = st.lists(st.one_of(option_line, option_line, st.binary(max_size=30),
                                 st.sampled_from([b"# comment", b"", b"action=status", b"plug=n1", b"port=n2",
                                                  b"quiet=1", b"verbose=1", b"fault=boom", b"action=off", b"delay=5",
                                                  b"action=stat\xffus", b"ip=\xff", b"ip=a\x1b[2J"])),
                       max_size=12)


def stdin_data(lines, where):
    """The generated lines with the password line inserted at `where` (before or after the rest)."""
    lines = list(lines)
    lines.insert(min(where, len(lines)), f"password={PASSWORD}".encode())
    return b"\n".join(lines) + b"\n"


# argv as Python gives it: bytes that are not UTF-8 arrive surrogate-escaped
arg = st.one_of(st.sampled_from(["-o", "--action", "-n", "--plug", "--port", "-u", "--ipport", "--delay",
                                 "--deadline", "--power-timeout", "-v", "-q", "-h", "-V", "--fault", "--method",
                                 "-a", "--ip", "-l", "--", "-", "--frobnicate"]),
                values, st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape")))
argvs = st.lists(st.one_of(arg.map(lambda a: [a]), st.sampled_from([["-o", "status"], ["-n", "n2"]])),
                 min_size=1, max_size=10).map(lambda groups: sum(groups, []))


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(stdin_lines, st.integers(0, 12))
def test_stdin_parser_returns_clean_text_or_one_fence_error(lines, where):
    warnings = []
    try:
        with secrets_kept():
            raw, nodename = AGENT.parse_stdin(stdin_data(lines, where), warnings.append)
    except fencing.FenceError as e:
        assert len(str(e)) < 300 and str(e).isprintable() and PASSWORD not in str(e)
        return
    assert_clean(raw, warnings)
    assert nodename is None or nodename.isprintable()


def assert_clean(raw, warnings):
    """Parsed values are text a message can quote as it is (passwords: at least UTF-8, one line); warnings too."""
    for name, value in raw.items():
        assert log.text_problem(value) is None and (AGENT.by_name[name].secret or value.isprintable())
    for w in warnings:
        assert len(w) < 200 and w.isprintable() and PASSWORD not in w


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(argvs)
@example([f"--{PASSWORD}--"])                       # getopt quoted it in its error before anything was registered
@example(["--pass", PASSWORD + "x", f"--{PASSWORD}x"])
@example(["-vp", PASSWORD + "y", f"--{PASSWORD}y--"])              # a cluster of short options, as getopt reads it
@example([f"-vp{PASSWORD}z", f"--{PASSWORD}z--"])
def test_argv_parser_returns_clean_text_or_one_fence_error(argv):
    warnings = []
    try:
        with secrets_kept():
            raw = AGENT.parse_argv(["-p", PASSWORD] + argv, warnings.append)
    except fencing.FenceError as e:
        assert len(str(e)) < 300 and str(e).isprintable() and PASSWORD not in str(e)
        return
    assert_clean(raw, warnings)


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=30), st.sampled_from(INTERESTING)))
def test_numbers_are_finite_and_within_their_bounds(raw):
    for option in (fencing.Option("s", "", type="second", maximum=600), fencing.Option("i", "", type="integer"),
                   fencing.Option("p", "", type="integer", minimum=1, maximum=65535)):
        try:
            value = option.parse(raw)
        except ValueError as e:
            assert str(e).startswith(("a number of seconds from ", "an integer from "))
            continue
        high = option.maximum if option.maximum is not None else fencing.MAXIMUM[option.type]
        assert option.minimum <= value <= high


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(stdin_lines, st.integers(0, 12))
def test_run_from_stdin_keeps_the_contract(logfile, lines, where):
    result = run_in_process(logfile, [], stdin_data(lines, where))
    event(f"exit {result[0]}")
    assert_contract(*result)


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(argvs)
def test_run_from_argv_keeps_the_contract(logfile, argv):
    result = run_in_process(logfile, ["-p", PASSWORD] + argv)
    event(f"exit {result[0]}")
    assert_contract(*result)


def test_run_survives_a_defective_agent_quoting_the_password(logfile):
    rc, out, err, logged = run_in_process(logfile, [], f"action=off\nplug=n1\npassword={PASSWORD}\n"
                                                       "fault=boom\nverbose=1\n".encode())
    assert_contract(rc, out, err, logged)
    assert rc == 1 and "Failed: off: RuntimeError: device said:\\nboom for ***" in err
    assert "DEBUG: off: RuntimeError raised at test_fence_badinput.py:" in err      # where, in one line


def test_quiet_still_prints_the_failed_line(logfile):
    rc, out, err, logged = run_in_process(logfile, ["-q", "-o", "explode"])
    assert (rc, err) == (1, "Failed: Unrecognised action 'explode'\n")


def test_a_stdin_never_closed_is_a_timeout_not_a_hang(logfile):
    read_end, write_end = os.pipe()
    try:
        with open(read_end, "rb", closefd=False) as stdin, isolated(logfile) as (out, err), \
                mock.patch.object(fencing.options, "INPUT_TIMEOUT", 0.3):
            os.write(write_end, b"action=status\n")
            start = time.monotonic()
            rc = FakePower().run([], stdin=stdin)
            elapsed = time.monotonic() - start
        err.flush()
        assert rc == 1 and elapsed < 2
        assert "Failed: cannot read the options: Timed out: stdin was not closed within 0.3s" \
            in err.buffer.getvalue().decode()
    finally:
        os.close(read_end), os.close(write_end)


def test_many_unknown_options_are_warned_about_in_a_bounded_number_of_lines(logfile):
    rc, out, err, logged = run_in_process(logfile, [], b"".join(b"colour%d=blue\n" % i for i in range(500)))
    assert_contract(rc, out, err, logged)
    assert len(err.splitlines()) == fencing.MAX_WARNINGS + 2        # and a count of the rest, and the Failed line
    assert "480 more warnings about the input not shown" in err


# --- one test per defect, through the real fence_crashup_ipmi ------------------------------------------------------

def run_bytes(argv, data: bytes, log_file, timeout=30) -> Result:
    """An agent with raw bytes on stdin, as Pacemaker or a typo could send them; output decoded for reading."""
    start = time.monotonic()
    done = subprocess.run([str(a) for a in argv], input=data, capture_output=True, timeout=timeout,
                          env=agent_env(HA_LOGFILE=str(log_file)))
    return Result(done.returncode, done.stdout.decode("utf-8", "backslashreplace"),
                  done.stderr.decode("utf-8", "backslashreplace"), time.monotonic() - start)


def fence_ipmi(tmp_path, text, **extra):
    """fence_crashup_ipmi with `text` (str or bytes) on stdin after working options; (result, log text)."""
    options = dict(action="off", ip="127.0.0.1", ipport=free_port(), username="admin", login_timeout=1, **extra)
    head = "".join(f"{k}={v}\n" for k, v in options.items()).encode()
    log_file = tmp_path / "ha.log"
    result = run_bytes([IPMI], head + (text.encode() if isinstance(text, str) else text), log_file)
    logged = log_file.read_text(errors="backslashreplace") if log_file.exists() else ""
    assert_contract(result.returncode, result.stdout, result.stderr, logged)
    return result, logged


def failed_line(result) -> str:
    return next(line for line in result.stderr.splitlines() if FAILED.match(line))


# 1. unbounded reads
def test_password_file_dev_zero_is_refused_at_once(tmp_path):
    result, _ = fence_ipmi(tmp_path, "password_file=/dev/zero\n")
    assert result.returncode == 1 and result.elapsed < 5
    assert failed_line(result).endswith("Failed: cannot read the password file '/dev/zero': not a regular file")
    endless = tmp_path / "endless"                      # a regular file without a line break: read 4 KiB, no more
    endless.write_bytes(b"x" * 100_000)
    result, _ = fence_ipmi(tmp_path, f"password_file={endless}\n")
    assert failed_line(result).endswith(f"Failed: the password file '{endless}' has no line break in its first "
                                        "4096 bytes: not a password")


@pytest.mark.parametrize("content, problem", [(b"\xff\xfepw\n", "is not valid UTF-8"),
                                              (b"pw\x00rest\n", "is not text without control characters"),
                                              (b"\n" + PASSWORD.encode(), "is empty")])
def test_password_file_that_is_not_a_password_line(tmp_path, content, problem):
    path = tmp_path / "pw"
    path.write_bytes(content)
    result, _ = fence_ipmi(tmp_path, f"password_file={path}\n")
    assert result.returncode == 1 and f"Failed: the first line of the password file '{path}' {problem}" \
        in result.stderr


def test_stdin_is_read_only_up_to_64_kib(tmp_path):
    result, _ = fence_ipmi(tmp_path, f"password={PASSWORD}\n" + "# padding\n" * 7000)
    assert result.returncode == 1
    assert "Failed: cannot read the options: more than 64 KiB on stdin" in result.stderr


def test_password_script_output_is_read_only_up_to_4_kib(tmp_path):
    result, _ = fence_ipmi(tmp_path, "password_script=head -c 10000000 /dev/zero\n")
    assert result.returncode == 1 and result.elapsed < 5
    assert "Failed: the output of the password script 'head' has no line break in its first 4096 bytes" \
        in result.stderr


# 2. long values shortened, escaped
def test_a_huge_value_is_shortened_in_the_failed_line_and_the_log(tmp_path):
    result, logged = fence_ipmi(tmp_path, f"password={PASSWORD}\npower_timeout={'9' * 60000}x\n")
    line = failed_line(result)
    assert line.startswith("ERROR: Failed: option power_timeout='9999") and "...' is not a number of seconds" in line
    assert len(line) < 200 and max(len(entry) for entry in logged.splitlines()) < 300


def test_a_huge_value_on_the_command_line_is_shortened(tmp_path):
    result = run([IPMI, "-o", "status", "-a", "127.0.0.1", "-l", "admin", "-p", PASSWORD, "--ipport", "1" * 100000])
    assert_contract(result.returncode, result.stdout, result.stderr)
    assert result.returncode == 1 and len(result.stderr) < 500 and "option ipport='1111" in result.stderr


# 3. bytes that are not UTF-8, on stdin and on the command line
@pytest.mark.parametrize("line, message", [(b"action=stat\xffus", "option action on line 6 is not valid UTF-8"),
                                           (b"ip=10.0.\xff.1", "option ip on line 6 is not valid UTF-8"),
                                           (b"ip=10.0.0.1\x1b[2J", "option ip on line 6 is not text without "
                                                                   "control characters"),
                                           ("ip=10.0.0.1\u200b".encode(), "option ip on line 6 is not printable "
                                                                          "text")])       # a zero-width space
def test_a_bad_byte_on_stdin_is_one_failed_line(tmp_path, line, message):
    result, logged = fence_ipmi(tmp_path, line + b"\n")
    assert result.returncode == 1 and f"Failed: cannot read the options: {message}" in result.stderr
    assert f"Failed: cannot read the options: {message}" in logged


def test_a_bad_byte_on_the_command_line_is_one_failed_line(tmp_path):
    log_file = tmp_path / "ha.log"
    # os.fsdecode: the surrogate-escaped str Python makes of it; subprocess sends the original byte
    result = run([IPMI, "-o", "status", "-a", os.fsdecode(b"10.0.\xff.1"), "-l", "admin", "-p", PASSWORD],
                 env=agent_env(HA_LOGFILE=str(log_file)))
    assert_contract(result.returncode, result.stdout, result.stderr, log_file.read_text())
    assert "Failed: cannot read the options: option ip is not valid UTF-8" in result.stderr
    result = run([IPMI, "-o", os.fsdecode(b"stat\xffus"), "--frob\udcffnicate"])
    assert_contract(result.returncode, result.stdout, result.stderr)


# 4. a password script's children die with it
def processes_with(needle: bytes) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_timed_out_password_script_leaves_no_child_behind(tmp_path):
    needle = b"sleep\x00%d.%d" % (os.getpid() % 1000 + 300, time.time_ns() % 1000)   # unique to this run
    script = tmp_path / "getpw"
    script.write_text(f"#!/bin/sh\n{needle.decode().replace(chr(0), ' ')}\necho {PASSWORD}\n")
    script.chmod(stat.S_IRWXU)
    try:
        result, _ = fence_ipmi(tmp_path, f"password_script={script}\ndeadline=2\n")
        assert result.returncode == 1 and "Failed: Timed out" in result.stderr and result.elapsed < 5
        until = time.monotonic() + 3
        while processes_with(needle) and time.monotonic() < until:
            time.sleep(0.05)
        assert processes_with(needle) == []
    finally:
        for pid in processes_with(needle):      # only the sleeps this test started, by their id
            os.kill(pid, 9)


# 5. unclear or unbounded values
@pytest.mark.parametrize("option, message", [
    ("ipport=70000", "option ipport='70000' is not an integer from 1 to 65535"),
    ("ipport=0", "option ipport='0' is not an integer from 1 to 65535"),
    ("delay=inf", "option delay='inf' is not a number of seconds from 0 to 3600"),
    ("delay=1e400", "option delay='1e400' is not a number of seconds from 0 to 3600"),
    ("deadline=nan", "option deadline='nan' is not a number of seconds from 1 to 3600"),
    ("deadline=0", "option deadline='0' is not a number of seconds from 1 to 3600"),
    ("power_timeout=-1", "option power_timeout='-1' is not a number of seconds from 0 to 600"),
    ("power_wait=86400", "option power_wait='86400' is not a number of seconds from 0 to 600"),
    ("login_timeout=NaN", "option login_timeout='NaN' is not a number of seconds from 0 to 600"),
])
def test_numbers_out_of_bounds_are_named_at_parse_time(tmp_path, option, message):
    result, _ = fence_ipmi(tmp_path, f"password={PASSWORD}\n{option}\n")
    assert result.returncode == 1 and result.elapsed < 5 and f"Failed: {message}" in result.stderr


def test_a_name_that_does_not_resolve_is_said_so(tmp_path):
    result, _ = fence_ipmi(tmp_path, f"password={PASSWORD}\nip=bmc1.invalid\n")
    assert result.returncode == 1 and result.elapsed < 5
    # "cannot resolve BMC address ..." or, with a resolver that never answers, "Timed out resolving BMC address ..."
    assert "BMC address 'bmc1.invalid'" in failed_line(result) and ": -2" not in result.stderr


def test_bmc_errors_never_a_bare_errno_or_an_unreadable_value():
    import socket
    gai = socket.gaierror(-2, "Name or service not known")
    assert str(ipmi._describe(gai, "b:623", "admin")) == "BMC b:623: Name or service not known"
    assert str(ipmi._describe(KeyError(5), "b:623", "admin")) == "BMC b:623: unexpected reply (KeyError: 5)"
    for address, port in (("a" * 300, 623), ("bmc\n1", 623), ("", 623), ("bmc1", 70000)):
        with pytest.raises(ipmi.BmcError) as e:
            ipmi.Bmc(address, "admin", PASSWORD, port=port)
        assert len(str(e.value)) < 150 and not CONTROL.search(str(e.value))


# 6. messages about the password sources stay readable after redaction
def test_password_source_failures_are_not_blanked_out(tmp_path):
    result, _ = fence_ipmi(tmp_path, f"password_script={tmp_path}/no-such-script\n")
    assert f"Failed: cannot run the password script: {tmp_path}/no-such-script not found" in result.stderr
    result, _ = fence_ipmi(tmp_path, f"password_file={tmp_path}/no-such-file\n")
    assert "': no such file" in result.stderr and log.REDACTED not in result.stderr
    for message in (failed_line(result), "cannot run the password script: /x not found",
                    "the password script '/x' exited with status 3"):
        assert log.redact(message) == message


# 7. fence_crashup_nova prints nothing of its own past the log (keystoneauth's warnings included)
def test_nova_agent_output_is_only_log_lines_without_credentials(tmp_path):
    secret = "Nova-Pa55-word"
    url = f"http://127.0.0.1:{free_port()}"
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(f"clouds:\n  dead:\n    auth_type: password\n    auth:\n      auth_url: {url}/v3\n"
                      f"      username: admin\n      password: {secret}\n      project_name: admin\n"
                      f"      user_domain_name: Default\n      project_domain_name: Default\n")
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[openstack]\ncloud = dead\nclouds_file = {clouds}\napi_timeout = 1\n")
    log_file = tmp_path / "ha.log"
    result = run([NOVA], input=f"action=off\nport=compute1\nconfig_file={conf}\ndeadline=4\nverbose=1\n",
                 env=agent_env(HA_LOGFILE=str(log_file)))
    assert_contract(result.returncode, result.stdout, result.stderr, log_file.read_text(), secrets=(secret,))
    assert result.returncode == 1 and result.stdout == ""
    assert all(re.match(r"(DEBUG|INFO|WARNING|ERROR|CRIT): ", line) for line in result.stderr.splitlines()), \
        result.stderr
