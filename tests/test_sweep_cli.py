"""`crashup sweep`: modes, configuration errors (exit 2), runtime failures (exit 1), one line, no password."""
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.sweep_helpers import Rows, add_instance, nova_cell_pristine, sweep_daemon

__all__ = ["nova_cell_pristine"]
PASSWORD = "Cl3ar-Text-Pw"


def crashup(tmp_path, conf: str, *args, timeout=120):
    path = tmp_path / "crashup.conf"
    path.write_text(conf)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRASHUP_", "OS_"))}
    env.update(OS_CLIENT_CONFIG_FILE=str(tmp_path / "no-clouds.yaml"), HOME=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "crashup_lib.cli", "--config", str(path), "sweep", *args],
                          capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


EVENTS = "[events]\njournal = {journal}\n"


def test_a_mode_is_required(tmp_path):
    p = crashup(tmp_path, "")
    assert p.returncode == 2 and "one of the arguments --once --dry-run --daemon is required" in p.stderr


def test_no_database_configured_is_a_config_error(tmp_path):
    p = crashup(tmp_path, EVENTS.format(journal=tmp_path / "ev.jsonl"), "--once")
    assert p.returncode == 2
    assert one_line(p.stderr).startswith("crashup: config: the sweep has no database to sweep: set [sweep] "
                                         "nova_connection")


def test_an_unreadable_connection_file_is_a_config_error(tmp_path):
    p = crashup(tmp_path, f"[sweep]\ncinder_connection_file = {tmp_path}/missing\n", "--dry-run")
    assert p.returncode == 2
    assert one_line(p.stderr) == f"crashup: config: cinder_connection_file: '{tmp_path}/missing': no such file"


def test_a_database_down_exits_1_with_one_line_and_no_password(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = tmp_path / "nova.url"
    secret.write_text(f"# nova's cells\nmysql+pymysql://nova:{PASSWORD}@127.0.0.1:{port}/nova_cell0\n"
                      f"mysql+pymysql://nova:{PASSWORD}@127.0.0.1:{port}/nova\n")
    conf = (EVENTS.format(journal=tmp_path / "ev.jsonl")
            + f"[sweep]\nnova_connection_file = {secret}\ndb_timeout = 2\nlibvirt_uri =\n")
    p = crashup(tmp_path, conf, "--once")
    assert p.returncode == 1, p.stderr
    error = one_line(p.stderr)
    assert error.startswith("ERROR: sweep: nova: nova db 0: ") and "Can't connect to MySQL server" in error
    assert "could not sweep nova" in p.stdout
    assert PASSWORD not in p.stdout + p.stderr


def test_a_password_in_crashup_conf_is_never_shown(tmp_path):
    conf = f"[sweep]\nglance_connection = mysql+pymysql://glance:{PASSWORD}@127.0.0.1:1/glance\n"
    path = tmp_path / "c.conf"
    path.write_text(conf)
    p = subprocess.run([sys.executable, "-m", "crashup_lib.cli", "config", "show", "--file", str(path)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "mysql+pymysql://glance:***@127.0.0.1:1/glance" in p.stdout
    assert PASSWORD not in p.stdout


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, nova_cell_pristine):
    pytest.importorskip("libvirt")
    cell = tmp_path / "cell1.sqlite"
    shutil.copyfile(nova_cell_pristine, cell)
    rows = Rows(cell)
    stuck = add_instance(rows, task_state="spawning", vm_state="building")
    before = rows.get("instances", uuid=stuck)
    journal = tmp_path / "ev.jsonl"
    conf = (EVENTS.format(journal=journal)
            + f"[sweep]\nnova_connection = sqlite:///{cell}\nlibvirt_uri = test:///default\n"
            + "[recovery]\nrecovery_resync_count = 0\n")
    p = crashup(tmp_path, conf, "--dry-run")
    assert p.returncode == 0, p.stderr
    plan = [line for line in p.stdout.splitlines() if stuck in line]
    assert len(plan) == 1 and plan[0].startswith(f"would nova instance {stuck} on cmp1 [nova db]: error ")
    assert "observed absent" in plan[0]           # libvirt's test driver has no such domain
    assert p.stdout.splitlines()[-1].startswith("sweep (dry run): 1 stuck: 1 error")
    assert rows.get("instances", uuid=stuck) == before and not journal.exists()
    rows.close()


def test_the_daemon_sweeps_every_interval_and_exits_cleanly_on_sigterm(tmp_path, nova_cell_pristine):
    cell = tmp_path / "cell1.sqlite"
    shutil.copyfile(nova_cell_pristine, cell)
    conf = tmp_path / "crashup.conf"
    conf.write_text(EVENTS.format(journal=tmp_path / "ev.jsonl")
                    + f"[sweep]\nnova_connection = sqlite:///{cell}\nlibvirt_uri =\n"
                    + "[recovery]\nrecovery_interval_period = 1\n")
    text = sweep_daemon(tmp_path, conf, "sweep: 0 stuck")
    assert text.count("sweep: 0 stuck") >= 2 and "SIGTERM: stopping" in text and "daemon stopped" in text
    assert "Traceback" not in text
