"""Helpers of the sweep's tests: real service schemas in sqlite, rows written as the services write them, fakes.

nova's cell schema is made by nova's own migrations (nova 34 in .venv-nova, what `make nova-venv` builds), cinder's
and glance's by theirs (tests/lab/schemas.py, .venv-schemas); neutron's tables are the few the sweep reads, with
neutron's names and types (no neutron venv here).
"""
from __future__ import annotations

import datetime as dt
import os
import pathlib
import shutil
import subprocess
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOVA_PYTHON = REPO / ".venv-nova" / "bin" / "python"
NOW = dt.datetime(2025, 1, 31, 12, 0, 0)
STALE = 600.0
OLD = NOW - dt.timedelta(hours=2)
FRESH = NOW - dt.timedelta(seconds=60)

NOVA_SYNC = """
import sys
from nova.db.main import api
from nova.db import migration
import nova.conf
CONF = nova.conf.CONF
try:                      # [profiler], which nova's DB API reads once osprofiler is installed (nova.config does this)
    from osprofiler import opts as profiler_opts
    profiler_opts.set_defaults(CONF)
except ImportError:
    pass
CONF([], project='nova')
CONF.set_override('connection', sys.stdin.read().strip(), group='database')
api.configure(CONF)
migration.db_sync(database='main')
"""


def make_nova_cell(path: pathlib.Path) -> pathlib.Path:
    """A nova cell database made by nova's own migrations (nova-manage db sync)."""
    if not os.access(NOVA_PYTHON, os.X_OK):
        pytest.skip(f"no nova venv at {NOVA_PYTHON.parent.parent} (make nova-venv builds it): nova's real schema "
                    "is needed")
    env = dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING="1", PYTHONWARNINGS="ignore")
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    p = subprocess.run([str(NOVA_PYTHON), "-c", NOVA_SYNC], input=f"sqlite:///{path}", capture_output=True,
                       text=True, env=env, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"nova db sync failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return path


def service_schema(service: str, directory: pathlib.Path, name: str | None = None) -> pathlib.Path:
    """cinder's or glance's real schema (their own db sync), or a skip saying why it cannot be had."""
    from tests.lab import schemas
    if not schemas.venv_is_current():
        pytest.skip(f"no schemas venv at {schemas.VENV} (python -m tests.lab.schemas builds it): {service}'s real "
                    "schema is needed")
    return schemas.sqlite_schema(service, directory, name=name)


NEUTRON_DDL = """
CREATE TABLE standardattributes (id BIGINT NOT NULL PRIMARY KEY, resource_type VARCHAR(255) NOT NULL,
    description VARCHAR(255), revision_number BIGINT DEFAULT '0' NOT NULL, created_at DATETIME, updated_at DATETIME);
CREATE TABLE ports (project_id VARCHAR(255), id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(255),
    network_id VARCHAR(36) NOT NULL, mac_address VARCHAR(32) NOT NULL, admin_state_up BOOLEAN NOT NULL,
    status VARCHAR(16) NOT NULL, device_id VARCHAR(255) NOT NULL, device_owner VARCHAR(255) NOT NULL,
    standard_attr_id BIGINT NOT NULL UNIQUE REFERENCES standardattributes (id) ON DELETE CASCADE,
    ip_allocation VARCHAR(16));
CREATE TABLE ml2_port_bindings (port_id VARCHAR(36) NOT NULL REFERENCES ports (id) ON DELETE CASCADE,
    host VARCHAR(255) DEFAULT '' NOT NULL, vif_type VARCHAR(64) NOT NULL, vnic_type VARCHAR(64) DEFAULT 'normal'
    NOT NULL, profile VARCHAR(4095) DEFAULT '' NOT NULL, vif_details VARCHAR(4095) DEFAULT '' NOT NULL,
    status VARCHAR(16) DEFAULT 'ACTIVE' NOT NULL, PRIMARY KEY (port_id, host));
CREATE TABLE routers (project_id VARCHAR(255), id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(255),
    status VARCHAR(16), admin_state_up BOOLEAN, gw_port_id VARCHAR(36), enable_snat BOOLEAN DEFAULT 1 NOT NULL,
    flavor_id VARCHAR(36), standard_attr_id BIGINT NOT NULL UNIQUE REFERENCES standardattributes (id)
    ON DELETE CASCADE);
"""


def make_neutron(path: pathlib.Path) -> pathlib.Path:
    """neutron's ports, routers, their standard attributes and port bindings (neutron 29's names and types)."""
    import sqlite3
    with sqlite3.connect(path) as conn:
        conn.executescript(NEUTRON_DDL)
    conn.close()
    return path


@pytest.fixture(scope="session")
def nova_cell_pristine(tmp_path_factory):
    return make_nova_cell(tmp_path_factory.mktemp("nova-schema") / "cell.sqlite")


@pytest.fixture
def nova_cells(nova_cell_pristine, tmp_path):
    """Two cells (cell0, cell1), each a copy of the pristine migrated database."""
    paths = []
    for name in ("cell0", "cell1"):
        path = tmp_path / f"{name}.sqlite"
        shutil.copyfile(nova_cell_pristine, path)
        paths.append(path)
    return paths


class Rows:
    """Writes and reads rows of a service's table with SQLAlchemy, so dates are stored as the services store them
    (the sqlite dialect's DATETIME format)."""

    def __init__(self, path: pathlib.Path):
        import sqlalchemy as sa
        self.sa = sa
        self.engine = sa.create_engine(f"sqlite:///{path}")
        self.md = sa.MetaData()

    def table(self, name: str):
        if name not in self.md.tables:
            self.sa.Table(name, self.md, autoload_with=self.engine)
        return self.md.tables[name]

    def add(self, name: str, **values):
        with self.engine.begin() as conn:
            conn.execute(self.sa.insert(self.table(name)).values(**values))
        return values

    def get(self, name: str, **key) -> dict:
        t = self.table(name)
        with self.engine.connect() as conn:
            return dict(conn.execute(self.sa.select(t).where(*[t.c[k] == v for k, v in key.items()]))
                        .mappings().one())

    def set(self, name: str, key: dict, **values) -> None:
        t = self.table(name)
        with self.engine.begin() as conn:
            conn.execute(self.sa.update(t).where(*[t.c[k] == v for k, v in key.items()]).values(**values))

    def close(self):
        self.engine.dispose()


def add_instance(rows: Rows, *, task_state=None, vm_state="active", updated_at=OLD, created_at=None, host="cmp1",
                 deleted=0, power_state=1, **more) -> str:
    instance_uuid = str(uuid.uuid4())
    rows.add("instances", uuid=instance_uuid, task_state=task_state, vm_state=vm_state, updated_at=updated_at,
             created_at=created_at or (updated_at or OLD) - dt.timedelta(minutes=5), host=host, node=host,
             deleted=deleted, power_state=power_state, **more)
    return instance_uuid


class FakeNova:
    """Records os-resetState calls; `fail` raises instead (an API answering 500)."""

    def __init__(self, fail: Exception | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def reset_state(self, server_id: str, state: str = "active") -> None:
        if self.fail:
            raise self.fail
        self.calls.append((server_id, state))


class FakeCinder:
    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    def reset_status(self, kind, resource_id, values) -> None:
        self.calls.append((kind, resource_id, dict(values)))


class FakeCollector:
    """Answers a fixed Observation per resource id (default: `default`)."""

    def __init__(self, answers: dict | None = None, default: str = "unknown", settled: bool = True):
        self.answers, self.default, self.settled = answers or {}, default, settled
        self.asked: list[str] = []

    def observe(self, resource):
        from crashup_lib.health import Observation
        self.asked.append(resource.id)
        answer = self.answers.get(resource.id, self.default)
        if isinstance(answer, Observation):
            return answer
        return Observation(answer, f"fake says {answer}", "fake", settled=self.settled)


class Journal:
    """An Emitter writing a journal in a temporary directory; .events() reads them back."""

    def __init__(self, path: pathlib.Path):
        from crashup_lib import events
        self.path, self._events = path, events
        self.emitter = events.Emitter([events.JournalSink(str(path))])

    def events(self) -> list[dict]:
        return list(self._events.read(str(self.path)))


def validator():
    jsonschema = pytest.importorskip("jsonschema")
    from crashup_lib import events
    return jsonschema.Draft202012Validator(events.load_schema(),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def sweep_daemon(tmp_path, conf, marker: str, count: int = 2) -> str:
    """Run `crashup sweep --daemon` on `conf` until its log says `marker` `count` times (at most 60 s), stop it with
    SIGTERM (it must exit 0) and return what it logged."""
    import signal
    import sys
    import time
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRASHUP_", "OS_", "INVOCATION_ID"))}
    log = tmp_path / "sweep-daemon.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "crashup_lib.cli", "--config", str(conf), "sweep",
                                 "--daemon"], stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 60
            while log.read_text().count(marker) < count and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    return log.read_text()
