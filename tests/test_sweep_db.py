"""The sweep's database access: URLs as the services write them, bounded time, passwords never shown, the
compare-and-swap UPDATE."""
import datetime as dt
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from crashup_lib.sweep import db
from crashup_lib.sweep.db import Database, DbError

PASSWORD = "Sup3r-S3cret-pw"


@pytest.fixture
def things(tmp_path):
    path = tmp_path / "t.sqlite"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE things (id TEXT PRIMARY KEY, status TEXT, other TEXT, updated_at DATETIME, "
                  "deleted BOOLEAN)")
        c.executemany("INSERT INTO things VALUES (?, ?, 'x', ?, 0)",
                      [("a", "saving", "2025-01-31 10:00:00.000000"), ("b", "saving", None),
                       ("c", "saving", "2025-01-31 10:00:00.000000"), ("c2", "saving", "2025-01-31 10:00:00.000000")])
    return path


def test_utcnow_is_naive_utc():
    now = db.utcnow()
    assert now.tzinfo is None
    assert abs((dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - now).total_seconds()) < 5


def test_only_the_named_columns_are_reflected(things):
    t = Database(f"sqlite:///{things}").table("things", ("id", "status", "updated_at"))
    assert list(t.c.keys()) == ["id", "status", "updated_at"]


def test_a_missing_table_or_column_is_one_line(things):
    d = Database(f"sqlite:///{things}", name="glance db")
    with pytest.raises(DbError, match=r"^glance db: .*no table images: not this service's database\?$"):
        d.table("images", ("id",))
    with pytest.raises(DbError, match=r"^glance db: table things has no column size, checksum: "):
        d.table("things", ("id", "size", "checksum"))


def test_cas_update_changes_one_row_only_while_it_is_as_read(things):
    d = Database(f"sqlite:///{things}")
    t = d.table("things", ("id", "status", "updated_at", "deleted"))
    read = dt.datetime(2025, 1, 31, 10, 0)
    now = dt.datetime(2025, 1, 31, 12, 0)
    assert d.matches(t, {"id": "a"}, {"status": "saving", "updated_at": read})
    assert d.cas_update(t, {"id": "a"}, {"status": "saving", "updated_at": read}, {"status": "killed"}, now=now)
    # a second time it is not as read any more: nothing written
    assert not d.cas_update(t, {"id": "a"}, {"status": "saving", "updated_at": read}, {"status": "queued"})
    assert not d.matches(t, {"id": "a"}, {"status": "saving", "updated_at": read})
    # NULL-safe: a NULL updated_at matches NULL, and not a date
    assert not d.cas_update(t, {"id": "b"}, {"status": "saving", "updated_at": read}, {"status": "killed"})
    assert d.cas_update(t, {"id": "b"}, {"status": "saving", "updated_at": None}, {"status": "killed"}, now=now)
    with sqlite3.connect(things) as c:
        rows = dict(c.execute("SELECT id, status || ' ' || coalesce(updated_at, '-') FROM things").fetchall())
    assert rows["a"] == rows["b"] == "killed 2025-01-31 12:00:00.000000"


def test_cas_update_refuses_a_key_matching_several_rows_and_rolls_back(things):
    d = Database(f"sqlite:///{things}")
    t = d.table("things", ("id", "status", "other", "updated_at"))
    with pytest.raises(DbError, match="3 rows match"):
        d.cas_update(t, {"other": "x"}, {"status": "saving", "updated_at": dt.datetime(2025, 1, 31, 10)},
                     {"status": "killed"})
    with sqlite3.connect(things) as c:
        assert c.execute("SELECT count(*) FROM things WHERE status = 'killed'").fetchone() == (0,)


def test_urls_as_the_services_write_them():
    d = Database(f"mysql+pymysql://nova:{PASSWORD}@db.example.org/nova_cell1?charset=utf8", name="nova db")
    assert d.where == "mysql+pymysql://nova:***@db.example.org/nova_cell1?charset=utf8"
    assert PASSWORD not in repr(d)
    assert Database("mysql://nova:pw@db/nova").engine.dialect.driver == "pymysql"     # oslo.db's bare mysql://
    with pytest.raises(DbError, match=r"^nova db: postgresql\+psycopg2:// is not supported"):
        Database(f"postgresql+psycopg2://nova:{PASSWORD}@db/nova", name="nova db")


def test_a_missing_sqlite_file_is_not_created(tmp_path):
    path = tmp_path / "nope.sqlite"
    with pytest.raises(DbError, match="no such database file"):
        Database(f"sqlite:///{path}", name="cinder db")
    assert not path.exists()


def test_an_unreachable_database_is_one_line_without_the_password_and_bounded_in_time():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                     # closed once the block ends: connection refused
    d = Database(f"mysql+pymysql://cinder:{PASSWORD}@127.0.0.1:{port}/cinder", name="cinder db", timeout=2)
    t0 = time.monotonic()
    with pytest.raises(DbError) as e:
        d.table("volumes", ("id",))
    assert time.monotonic() - t0 < 3
    message = str(e.value)
    assert message.startswith("cinder db: ") and "Can't connect to MySQL server" in message
    assert PASSWORD not in message and "\n" not in message and "sqlalche.me" not in message


def test_a_server_that_never_answers_is_bounded_by_the_timeout():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)                                  # accepts (the kernel does), never says a word
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        d = Database(f"mysql+pymysql://nova:{PASSWORD}@127.0.0.1:{server.getsockname()[1]}/nova", timeout=1)
        t0 = time.monotonic()
        with pytest.raises(DbError) as e:
            d.table("instances", ("id",))
        took = time.monotonic() - t0
    finally:
        server.close()
    assert 0.9 <= took < 4, took
    assert PASSWORD not in str(e.value)


def test_agents_never_import_sqlalchemy():
    code = ("import sys, crashup_lib.ocf, crashup_lib.fencing, crashup_lib.config, crashup_lib.health; "
            "print('sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
