"""The real cinder, glance and nova schemas (their own migrations) hold what the CrashUp sweep reads and writes.

Needs the schemas venv (`make schemas-venv`); the MariaDB tests also need Debian's mariadb-server (`make deps`).
"""
import sqlite3

import pytest

from tests.lab import mariadb, schemas

pytestmark = pytest.mark.skipif(not schemas.venv_is_current(),
                                reason=f"schemas venv {schemas.VENV} missing or out of date: make schemas-venv")

#: table -> columns the sweep's scanners and fixers use
NEEDED = {
    "cinder": {
        "volumes": {"id", "status", "attach_status", "migration_status", "updated_at", "deleted", "host"},
        "volume_attachment": {"id", "volume_id", "attach_status", "instance_uuid", "updated_at", "deleted"},
        "backups": {"id", "volume_id", "status", "updated_at", "deleted", "host"},
    },
    "glance": {
        "images": {"id", "status", "updated_at", "deleted", "size", "checksum", "os_hash_value"},
    },
    "nova": {
        "instances": {"uuid", "vm_state", "task_state", "power_state", "host", "node", "updated_at", "deleted"},
    },
}
#: nova's index on (task_state, updated_at): what keeps the sweep's scan of 100k instances fast
NOVA_SCAN_INDEX = "instances_task_state_updated_at_idx"


def _sqlite_columns(path, table):
    with sqlite3.connect(path) as c:
        return {row[1] for row in c.execute(f"PRAGMA table_info({table})")}


@pytest.mark.parametrize("service", schemas.SERVICES)
def test_sqlite_schema_has_what_the_sweep_needs(service, tmp_path):
    path = schemas.sqlite_schema(service, tmp_path)
    for table, columns in NEEDED[service].items():
        missing = columns - _sqlite_columns(path, table)
        assert not missing, f"{service} {table} lacks {sorted(missing)}"


def test_sqlite_schema_is_a_fresh_copy(tmp_path):
    a = schemas.sqlite_schema("nova", tmp_path / "a")
    b = schemas.sqlite_schema("nova", tmp_path / "b")
    with sqlite3.connect(a) as c:
        c.execute("INSERT INTO instances (uuid, deleted) VALUES ('00000000-0000-0000-0000-000000000001', 0)")
    with sqlite3.connect(b) as c:
        assert c.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
        indexes = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert NOVA_SCAN_INDEX in indexes


def test_make_schema_failure_is_one_line_without_the_password():
    url = "mysql+pymysql://crashup:s3cretpw@127.0.0.1:1/nova"          # nothing listens on port 1
    with pytest.raises(schemas.SchemaError) as e:
        schemas.make_schema("nova", url, timeout=120)
    msg = str(e.value)
    assert "\n" not in msg and "s3cretpw" not in msg and "nova db sync" in msg and "***" in msg


def test_make_schema_refuses_an_unknown_service():
    with pytest.raises(schemas.SchemaError, match="unknown service"):
        schemas.make_schema("swift", "sqlite://")


# ---------------------------------------------------------------------------------------------------------- MariaDB
@pytest.fixture(scope="module")
def mariadb_server():
    why = mariadb.available()
    if why:
        pytest.skip(why)
    with mariadb.MariaDB() as db:
        yield db


@pytest.mark.parametrize("service", schemas.SERVICES)
def test_mariadb_schema_has_what_the_sweep_needs(service, mariadb_server):
    schemas.make_schema(service, mariadb_server.create_database(f"{service}_t"))
    for table, columns in NEEDED[service].items():
        rows = mariadb_server.query(f"SELECT column_name FROM information_schema.columns "
                                    f"WHERE table_schema = '{service}_t' AND table_name = '{table}';")
        missing = columns - {r[0] for r in rows}
        assert not missing, f"{service} {table} lacks {sorted(missing)}"
    if service == "nova":
        rows = mariadb_server.query("SELECT DISTINCT index_name FROM information_schema.statistics "
                                    "WHERE table_schema = 'nova_t' AND table_name = 'instances';")
        assert NOVA_SCAN_INDEX in {r[0] for r in rows}
