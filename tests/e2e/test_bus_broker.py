"""The lab's notification bus: a real RabbitMQ (tests/lab/rabbitmq.py), loopback only, its own vhost and user with a
password from a file, outages on demand (`python -m tests.lab fail bus --how stop|freeze|start`), nothing left by
`lab down`. The client side is kombu, as crashup's publisher uses."""
import pathlib
import stat
import subprocess
import sys
import time
import urllib.parse

import pytest

from tests.lab import rabbitmq, topology

pytestmark = pytest.mark.lab

kombu = pytest.importorskip("kombu")
BUS_PORTS = (topology.BUS_PORT, topology.BUS_DIST_PORT, topology.BUS_EPMD_PORT)


def lab_cli(*args):
    result = subprocess.run([sys.executable, "-m", "tests.lab", *args], cwd=topology.REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def transport_url(lab) -> str:
    return lab.TRANSPORT_URL_FILE.read_text().strip()


def amqp_url(lab, password=None, vhost=None) -> str:
    """The transport URL as kombu takes it (amqp://), optionally with another password or vhost."""
    parts = urllib.parse.urlsplit(transport_url(lab))
    user = parts.username
    password = urllib.parse.quote(password, safe="") if password is not None else parts.password
    path = "/" + urllib.parse.quote(vhost, safe="") if vhost is not None else parts.path
    return f"amqp://{user}:{password}@{parts.hostname}:{parts.port}{path}"


def connect(url, timeout=3):
    conn = kombu.Connection(url, connect_timeout=timeout, transport_options={"max_retries": 0})
    conn.connect()
    return conn


def listeners() -> list[tuple[str, int, str]]:
    """(address, port, users) of every listening TCP socket, from `ss -ltnp`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        address, _, port = fields[3].rpartition(":")
        found.append((address, int(port), " ".join(fields[5:])))
    return found


def wait_state(broker, wanted, timeout=10):
    limit = time.monotonic() + timeout
    while broker.state() != wanted:
        assert time.monotonic() < limit, f"broker {broker.state()}, not {wanted}, after {timeout}s"
        time.sleep(0.05)


def test_the_lab_writes_the_transport_url_file_and_configures_crashup_with_it(lab):
    url = transport_url(lab)
    assert stat.S_IMODE(lab.TRANSPORT_URL_FILE.stat().st_mode) == 0o600
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port, parts.path, parts.username) == \
        ("rabbit", "127.0.0.1", topology.BUS_PORT, "/crashup", "crashup")
    broker = lab.broker()
    assert parts.password == broker.password and len(broker.password) >= 32
    assert stat.S_IMODE(broker.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(broker.conf_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((broker.home / ".erlang.cookie").stat().st_mode) == 0o400
    from crashup_lib import config
    conf = lab.CRASHUP_CONF.read_text()
    if "transport_url_file" in config.BY_NAME:
        assert config.load(str(lab.CRASHUP_CONF), env={})["transport_url_file"] == str(lab.TRANSPORT_URL_FILE)
    else:
        assert "transport_url_file" not in conf
    assert broker.password not in conf
    # never on a command line: no process of the machine carries the password in its argv
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            assert broker.password.encode() not in (proc / "cmdline").read_bytes(), proc
        except OSError:
            pass


def test_the_crashup_user_logs_in_a_wrong_password_or_vhost_is_refused(lab):
    with connect(amqp_url(lab)) as conn:
        channel = conn.channel()
        channel.exchange_declare("openstack", "topic", durable=False, auto_delete=False)   # crashup may declare
        channel.close()
    with pytest.raises(Exception) as refused:
        connect(amqp_url(lab, password="not-the-password"))
    assert "ACCESS_REFUSED" in str(refused.value) or "403" in str(refused.value), repr(refused.value)
    with pytest.raises(Exception) as not_allowed:
        connect(amqp_url(lab, vhost="/"))
    assert "NOT_ALLOWED" in str(not_allowed.value) or "530" in str(not_allowed.value), repr(not_allowed.value)
    broker = lab.broker()
    assert broker.check() is None
    assert "ACCESS_REFUSED" in broker.check(password="not-the-password")


def test_the_vhosts_and_the_users_exist_and_nothing_else(lab):
    """crashup's vhost and user, and cinder's (its RPC apart from crashup's bus): no "/" vhost, no guest user."""
    from tests.lab import cinder
    broker = lab.broker()
    vhosts = broker.ctl("list_vhosts", "--quiet", "--no-table-headers")
    users = broker.ctl("list_users", "--quiet", "--no-table-headers")
    assert vhosts.returncode == 0 and users.returncode == 0, vhosts.stderr + users.stderr
    assert sorted(vhosts.stdout.split()) == sorted(["crashup", cinder.VHOST])
    assert sorted(line.split()[0] for line in users.stdout.splitlines()) == sorted(["crashup", cinder.BUS_USER])
    permissions = broker.ctl("list_user_permissions", cinder.BUS_USER, "--quiet", "--no-table-headers")
    assert [line.split()[0] for line in permissions.stdout.splitlines()] == [cinder.VHOST]   # not crashup's


def test_nothing_of_the_broker_listens_beyond_loopback(lab):
    broker = lab.broker()
    pids = {str(p) for p in broker.pids().values()}
    assert set(broker.pids()) == {"server", "beam", "epmd"}
    ours = [(a, p, u) for a, p, u in listeners() if p in BUS_PORTS or any(f"pid={pid}," in u for pid in pids)]
    assert {p for _, p, _ in ours} >= set(BUS_PORTS), ours
    assert all(a in ("127.0.0.1", "[::1]") for a, _, _ in ours), ours


def test_freeze_then_thaw(lab):
    broker = lab.broker()
    try:
        assert "frozen" in lab_cli("fail", "bus", "--how", "freeze")
        assert broker.state() == "frozen"
        started = time.monotonic()
        with pytest.raises(Exception):
            connect(amqp_url(lab), timeout=2)                       # the TCP connect works, nothing answers
        assert time.monotonic() - started < 10
        assert broker.check(timeout=1).startswith("no answer")
        assert "frozen" in lab_cli("status")
    finally:
        lab_cli("fail", "bus", "--how", "start")
    assert broker.state() == "running" and broker.check() is None
    with connect(amqp_url(lab)) as conn:
        queue = kombu.Queue("e2e-thawed", exchange=kombu.Exchange("e2e", "direct", auto_delete=True),
                            routing_key="k", auto_delete=True)
        producer = conn.Producer()
        producer.publish({"after": "thaw"}, exchange=queue.exchange, routing_key="k", declare=[queue])
        bound, message, limit = queue(producer.channel), None, time.monotonic() + 5
        while message is None and time.monotonic() < limit:
            message = bound.get(no_ack=True)
        assert message is not None and message.payload == {"after": "thaw"}
        bound.delete()


def test_stop_then_start_keeps_the_user_and_durable_definitions(lab):
    broker = lab.broker()
    with connect(amqp_url(lab)) as conn:
        channel = conn.channel()
        channel.exchange_declare("e2e-durable", "topic", durable=True, auto_delete=False)
        channel.close()
    # RabbitMQ keeps definitions in mnesia, whose log reaches the disk a moment after the declare: a SIGKILL within that
    # moment loses it (seen once on a loaded 2-core machine). A crash right after a declare is not what this tests.
    dumped = broker.ctl("eval", "mnesia:dump_log().")
    assert dumped.returncode == 0 and "dumped" in dumped.stdout, dumped.stdout + dumped.stderr
    epmd = broker.pids()["epmd"]
    try:
        assert "killed" in lab_cli("fail", "bus", "--how", "stop")
        assert broker.state() == "stopped"
        assert broker.check() == "connection refused"
        with pytest.raises(Exception):
            connect(amqp_url(lab), timeout=2)
        listening = {p for _, p, _ in listeners()}
        assert topology.BUS_PORT not in listening and topology.BUS_DIST_PORT not in listening
        assert broker.pids().get("epmd") == epmd                    # the broker crashed, not the machine
    finally:
        out = lab_cli("fail", "bus", "--how", "start")
    assert "started" in out or "running" in out
    assert broker.state() == "running" and broker.check() is None
    with connect(amqp_url(lab)) as conn:                             # same URL, same password
        channel = conn.channel()
        channel.exchange_declare("e2e-durable", "topic", durable=True, auto_delete=False, passive=True)
        channel.exchange_delete("e2e-durable")
        channel.close()


def test_a_standalone_broker_without_the_lab(tmp_path):
    """The same class on its own (no Pacemaker): free ports, a state directory of its own, all of it gone after."""
    broker = rabbitmq.Broker(tmp_path / "bus")
    try:
        broker.start()
        assert broker.port not in BUS_PORTS and broker.check() is None
        with connect(broker.url(), timeout=5) as conn:
            conn.channel().close()
        broker.freeze()
        assert broker.check(timeout=1).startswith("no answer")
        broker.thaw()
        assert broker.check() is None
        processes = broker._processes()
    finally:
        broker.stop()
    assert not any(rabbitmq._has_threads(p) for p in processes)
    assert broker.state() == "stopped" and not broker.pids()
    listening = {p for _, p, _ in listeners()}
    assert not listening & {broker.port, broker.dist_port, broker.epmd_port}


def _lab_scope(request) -> str:
    try:                                         # pytest's own record of the fixture (no public API for its scope)
        return request._pyfuncitem._fixtureinfo.name2fixturedefs["lab"][-1].scope
    except (AttributeError, KeyError, IndexError):
        return "unknown"


def test_lab_down_leaves_no_broker_behind(lab, request):
    """Last in this module: it takes the lab down (and brings it back only if the lab is shared beyond the module)."""
    broker = lab.broker()
    processes = {**broker._processes(), **{p: b"" for p in broker.pids().values()}}
    assert processes
    home = f"-home\0{broker.home}\0".encode()
    lab.down(quiet=True)
    try:
        assert not any(rabbitmq._has_threads(p) for p in processes), processes
        for proc in pathlib.Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert home not in cmdline, cmdline                          # no VM of the lab's broker
            assert not (b"epmd" in cmdline and f"\0{topology.BUS_EPMD_PORT}\0".encode() in cmdline), cmdline
        assert not {p for _, p, _ in listeners()} & set(BUS_PORTS)
        assert not lab.BUS_DIR.exists() and not lab.TRANSPORT_URL_FILE.exists()
    finally:
        if _lab_scope(request) not in ("module", "function"):
            lab.up(quiet=True)
