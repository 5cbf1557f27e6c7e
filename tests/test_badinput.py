"""Bad input against the OCF parameter layer, the agents, configuration loading and the `crashup` command (issue 11):
every answer is the contract's (OCF: stop 0 and probe 7 on any configuration problem, else the right code and one
ocf-exit-reason line; CLI: one line, exit 2 for input and configuration), bounded in time, never a traceback, never
a secret. Generated input (hypothesis) first, then one test per defect the audit found."""
import contextlib
import importlib.machinery
import importlib.util
import io
import os
import pathlib
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crashup_lib import cli, config, localservice, log, ocf, proc
from tests.helpers import REPO, agent_env, run

NOVA_COMPUTE = REPO / "agents" / "nova-compute"
CRASHUP_AGENT = REPO / "agents" / "crashup"
PROPERTY = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load_agent(path: pathlib.Path):
    loader = importlib.machinery.SourceFileLoader(f"agent_{path.name.replace('-', '_')}", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module.agent


NOVA_COMPUTE_AGENT = _load_agent(NOVA_COMPUTE)


def _in_process(agent, action: str, env: dict[str, str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = agent.run([action], env=env)
    return rc, err.getvalue()


# what an operator may type into a parameter: mostly command-like text, with braces, quotes and odd characters
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("{}'\"\\ $;\n\r\x00:>!."),
                max_size=40)
_param_names = st.sampled_from(["start_command", "stop_command", "status_command", "backend", "unit", "nova_host",
                                "heartbeat_cache", "libvirt_uri", "config", "state_dir"])


@PROPERTY
@given(params=st.dictionaries(_param_names, _text | st.sampled_from(["", "{host}", "{host.x}", "1e99", "-1"]),
                              max_size=5))
def test_nova_compute_stop_and_probe_never_fail_on_configuration(tmp_path, params):
    """Whatever the parameters, a stop of a nova-compute that is not running succeeds (a failed stop fences the
    node) and a probe says not running: nothing but /bin/false ever runs here."""
    env = agent_env(OCF_RESKEY_backend="command", OCF_RESKEY_start_command="/bin/true",
                    OCF_RESKEY_stop_command="/bin/true", OCF_RESKEY_state_dir=str(tmp_path / "state"),
                    OCF_RESKEY_config=str(tmp_path / "none.conf"), OCF_RESKEY_CRM_meta_on_node="compute1")
    for name, value in params.items():
        if name == "state_dir" and not value.startswith("/"):
            value = str(tmp_path / "s") + value.replace("\x00", "")
        env[f"OCF_RESKEY_{name}"] = value.replace("\x00", "")        # an environment cannot carry NUL
    env["OCF_RESKEY_status_command"] = "/bin/false"
    if env.get("OCF_RESKEY_backend") == "systemd" or "backend" not in params:
        env["OCF_RESKEY_backend"] = "command"
    rc, err = _in_process(NOVA_COMPUTE_AGENT, "stop", env)
    assert rc == 0, err
    rc, err = _in_process(NOVA_COMPUTE_AGENT, "monitor", env)
    assert rc == 7, err
    assert "Traceback" not in err


@PROPERTY
@given(value=_text, ptype=st.sampled_from(ocf.PARAMETER_TYPES))
def test_a_parameter_parses_or_names_what_is_allowed(value, ptype):
    p = ocf.Parameter("x", "x", type=ptype, check=localservice.check_template if ptype == "string" else None)
    try:
        parsed = p.parse(value)
    except ValueError as e:
        assert str(e).startswith("expected ") or "placeholder" in str(e) or "brace" in str(e) or "split" in str(e)
        assert "\n" not in str(e)
    else:
        assert parsed is not None
        if ptype == "string" and parsed:
            assert "\n" not in parsed and "\r" not in parsed and "\x00" not in parsed


_conf_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"[recovery]", b"[events]", b"[sweep]", b"mode = auto", b"mode = sometimes",
                              b"recovery_stale_period = 99999999999999999999", b"concurrency = 1e3",
                              b"journal = relative", b"# caf\xe9", b"\x00", b"nova_connection = mysql://u:p/w@h/n",
                              b"  continued", b"host_map = a:b;a:c", b"[bogus]", b"mdoe = auto"]),
             max_size=8).map(b"\n".join))


@PROPERTY
@given(data=_conf_bytes)
def test_configuration_loads_or_fails_with_one_line(tmp_path, data):
    path = tmp_path / "crashup.conf"
    path.write_bytes(data)
    try:
        cfg = config.load(str(path), env={})
    except config.ConfigError as e:
        message = str(e)
        assert message.startswith("config") and "\n" not in message and "\r" not in message
        assert len(message) < 1000 and "p/w" not in message
    else:
        assert cfg.recovery_stale_period < config.MAX_SECONDS + 1


@PROPERTY
@given(name=st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20), value=_text)
def test_environment_variables_are_options_or_refused(name, value):
    var = "CRASHUP_" + name.upper()
    try:
        config.load("/nonexistent-crashup.conf", env={var: value.replace("\x00", "")})
    except config.ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert name.lower() in config.BY_NAME or config.FOREIGN_ENV.fullmatch(var)


# --- defect 1: nova-compute stop and probe on every configuration typo ------------------------------------------------

BASE = dict(OCF_RESKEY_backend="command", OCF_RESKEY_start_command="/bin/true", OCF_RESKEY_status_command="/bin/true",
            OCF_RESKEY_CRM_meta_on_node="compute1")


@pytest.mark.parametrize("extra", [
    {"OCF_RESKEY_stop_command": "/bin/true {hots}"},
    {"OCF_RESKEY_stop_command": ""},
    {"OCF_RESKEY_stop_command": "/bin/true {host.x}"},
    {"OCF_RESKEY_stop_command": "/bin/true {0}"},
    {"OCF_RESKEY_stop_command": "/bin/true }"},
    {"OCF_RESKEY_stop_command": "/bin/true 'unbalanced"},
    {"OCF_RESKEY_stop_command": "/bin/true {host:>9999999999}"},
    {"OCF_RESKEY_stop_command": "/bin/true", "OCF_RESKEY_state_dir": "/etc/hostname"},
    {"OCF_RESKEY_stop_command": "/bin/true", "OCF_RESKEY_status_command": "/nonexistent/status"},
    {"OCF_RESKEY_stop_command": "/bin/true", "OCF_RESKEY_status_command": "/bin/true\nreboot"},
], ids=lambda e: repr(e)[:60])
def test_nova_compute_stop_succeeds_and_probe_says_not_running_on_configuration_typos(tmp_path, extra):
    env = agent_env(**{**BASE, "OCF_RESKEY_state_dir": str(tmp_path), **extra})
    stop = run([NOVA_COMPUTE, "stop"], env=env)
    assert stop.returncode == 0 and "nothing this configuration could have started" in stop.stderr
    probe = run([NOVA_COMPUTE, "monitor"], env=env)
    assert probe.returncode == 7 and "reporting not running" in probe.stderr
    start = run([NOVA_COMPUTE, "start"], env=env)
    assert start.returncode in (5, 6) and start.stderr.count("ocf-exit-reason:") == 1
    assert "Traceback" not in stop.stderr + probe.stderr + start.stderr


def test_a_status_command_that_hangs_leaves_no_child_behind(tmp_path):
    """defect 9: a monitor's timeout kills the whole process group, not only the shell."""
    script = tmp_path / "status"
    marker = f"93.{os.getpid()}"                       # unique: other test runs may share this machine
    script.write_text(f"#!/bin/sh\nsleep {marker}\n")
    script.chmod(0o755)
    env = agent_env(**{**BASE, "OCF_RESKEY_status_command": str(script), "OCF_RESKEY_stop_command": "/bin/true",
                       "OCF_RESKEY_state_dir": str(tmp_path), "OCF_RESKEY_CRM_meta_timeout": "2000",
                       "OCF_RESKEY_CRM_meta_interval": "10000"})
    result = run([NOVA_COMPUTE, "monitor"], env=env)
    assert result.returncode == 1 and "did not finish within" in result.stderr
    time.sleep(0.2)
    assert not _processes_with(f"sleep {marker}")


def _processes_with(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(pid)
    return found


# --- defect 2: crashup.conf read errors are configuration errors -------------------------------------------------------

@pytest.mark.parametrize("content, said", [
    (b"[recovery]\n# caf\xe9\nmode = auto\n", "line 2: byte 0xe9 is not UTF-8"),
    (b"\x7fELF\x02\x01\x01\x00\x00", "binary data"),
    (None, "is a directory"),
])
def test_unreadable_configuration_files_are_configuration_errors(tmp_path, content, said):
    path = tmp_path / "crashup.conf"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    check = run([sys.executable, "-m", "crashup_lib.cli", "config", "check", "--file", str(path)])
    assert check.returncode == 2 and check.stderr.count("\n") == 1
    assert check.stderr.startswith(f"crashup: config: '{path}': ") and said in check.stderr
    validate = run([CRASHUP_AGENT, "validate-all"],
                   env=agent_env(OCF_RESKEY_config=str(path), OCF_RESKEY_state_dir=str(tmp_path / "s")))
    assert validate.returncode == 6 and said in validate.stderr
    monitor = run([NOVA_COMPUTE, "monitor"], env=agent_env(**{
        **BASE, "OCF_RESKEY_stop_command": "/bin/true", "OCF_RESKEY_config": str(path),
        "OCF_RESKEY_state_dir": str(tmp_path / "s"), "OCF_RESKEY_CRM_meta_interval": "10000"}))
    assert monitor.returncode == 0 and "heartbeat not checked" in monitor.stderr   # never restarts nova-compute


def test_a_fifo_or_a_device_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(config.ConfigError, match="not a regular file"):
            config.load(str(path), env={})


def test_an_undecodable_connection_file_is_a_configuration_error(tmp_path):
    from crashup_lib.sweep import wiring
    urls = tmp_path / "urls"
    urls.write_bytes(b"mysql+pymysql://nova:s\xe9cret@db/nova\n")
    cfg = config.load(None, env={"CRASHUP_NOVA_CONNECTION_FILE": str(urls)})
    with pytest.raises(config.ConfigError, match="line 1: byte 0xe9 is not UTF-8"):
        wiring.connections(cfg, "nova")


# --- defect 3: a crashup start that gives up takes its daemon back ------------------------------------------------------

def test_a_start_that_times_out_leaves_no_daemon(tmp_path):
    env = agent_env(OCF_RESKEY_state_dir=str(tmp_path), OCF_RESKEY_config=str(tmp_path / "none.conf"),
                    OCF_RESKEY_CRM_meta_timeout="1000")
    start = run([CRASHUP_AGENT, "start"], env=env)
    assert start.returncode == 1
    time.sleep(1.5)
    assert not _processes_with(str(tmp_path))
    monitor = run([CRASHUP_AGENT, "monitor"], env=agent_env(OCF_RESKEY_state_dir=str(tmp_path)))
    assert monitor.returncode == 7


# --- defect 4: secrets ---------------------------------------------------------------------------------------------

def test_a_database_password_with_a_slash_is_never_shown(tmp_path):
    conf = tmp_path / "crashup.conf"
    conf.write_text("[sweep]\nnova_connection = mysql+pymysql://nova:Pa/ss:w@rd9@db1/nova\n")
    show = run([sys.executable, "-m", "crashup_lib.cli", "config", "show", "--file", str(conf)])
    assert show.returncode == 0 and "Pa/ss" not in show.stdout and "w@rd9" not in show.stdout
    assert "mysql+pymysql://nova:***@db1/nova" in show.stdout
    conf.write_text("[sweep]\nnova_connection = postgres://nova:Pa/ss:w@rd9@db1/nova\n")
    check = run([sys.executable, "-m", "crashup_lib.cli", "config", "check", "--file", str(conf)])
    assert check.returncode == 2 and "Pa/ss" not in check.stderr and "rd9" not in check.stderr


def test_a_library_warning_passes_the_redactor(tmp_path):
    """keystoneauth warns with an auth_url that may embed credentials: it reaches stderr only through crashup's
    redacting handlers."""
    code = ("import warnings, logging; from crashup_lib import log; log.register_secret('Sekr1t-pw');"
            "log.setup('t', stderr=True, syslog=False);"
            "warnings.warn('auth_url https://admin:Sekr1t-pw@keystone/v3 is deprecated');"
            "logging.getLogger('keystoneauth.session').warning('token Sekr1t-pw expired')")
    result = run([sys.executable, "-c", code])
    assert "Sekr1t-pw" not in result.stderr and result.stderr.count("***") == 2, result.stderr


def test_pcs_apply_masks_a_clear_bmc_password(capsys):
    def failing(argv):
        return proc.Done(1 if argv[0] == "pcs" else 0, "<cib/>", "Error: bad")
    assert cli.apply_pcs([["stonith", "create", "ipmi-c1", "fence_crashup_ipmi", "password=Cl3ar-pw"]],
                         run=failing) == 1
    err = capsys.readouterr().err
    assert "Cl3ar-pw" not in err and "password=***" in err


# --- defect 10: redaction leaves ordinary words alone -------------------------------------------------------------------

@pytest.mark.parametrize("text", ["cannot run password_script: No such file or directory",
                                  "cannot read password_file /etc/x: Permission denied",
                                  "webhook_secret_file: Permission denied"])
def test_redaction_does_not_garble_messages_about_where_secrets_are(text):
    assert log.redact(text) == text


@given(secret=st.text(st.characters(codec="ascii", min_codepoint=33), min_size=3, max_size=30))
@settings(deadline=None, max_examples=100)
def test_a_registered_secret_never_survives_redaction(secret):
    kept = set(log._secrets)
    try:
        log.register_secret(secret)
        for text in (f"password={secret}", f"x {secret} y", f"mysql://u:{secret}@h/db", f'{{"token": "{secret}"}}'):
            assert secret not in log.redact(text)
    finally:                             # per example: the autouse fixture (conftest) restores per test only
        log._secrets.clear()
        log._secrets.update(kept)


# --- defect 12 (configuration) and 15 -------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("recovery_stale_period", "99999999999999999999"), ("recovery_stale_period", "1" * 400),
    ("storm_max_hosts", "9" * 5000), ("region_name", "R\r[events]"), ("journal", "/var/log/x\n/etc/passwd"),
])
def test_values_beyond_reason_are_refused_at_load(option, value):
    with pytest.raises(config.ConfigError, match=f"^config: {option} = .* is not allowed: expected") as e:
        config.load(None, env={f"CRASHUP_{option.upper()}": value})
    assert len(str(e.value)) < 400 and "\n" not in str(e.value) and "\r" not in str(e.value)


def test_an_unknown_crashup_variable_is_an_error_with_a_suggestion():
    with pytest.raises(config.ConfigError, match=r"CRASHUP_MOED'?: no such option \(did you mean mode\?\)"):
        config.load(None, env={"CRASHUP_MOED": "notify"})
    assert config.load(None, env={"CRASHUP_EVENT_ID": "x", "CRASHUP_CONFIG": "/nonexistent", "CRASHUP_MODE":
                                  "notify"} | {"CRASHUP_CONFIG": ""}).mode == "notify"


def test_the_cli_prints_odd_bytes_without_a_traceback(tmp_path):
    bad = os.fsdecode(b"/tmp/\xff\x1b[2J.conf")
    result = run([sys.executable, "-m", "crashup_lib.cli", "config", "check", "--file", bad])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "\x1b" not in result.stderr
