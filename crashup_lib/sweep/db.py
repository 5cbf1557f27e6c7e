"""The sweep's access to the services' databases: SQLAlchemy Core 2.0, bounded in time, secrets never shown.

URLs are written as the services write them in their own [database] connection option: `sqlite:///path` or
`mysql+pymysql://user:password@host/db` (a bare `mysql://` means PyMySQL here: it is the driver crashup installs).
Only the columns the sweep needs are reflected, so an unrelated schema change of a service does not matter and a
missing column is one clear line. Time is bounded per call: sqlite's busy timeout (a locked database), PyMySQL's
connect, read and write timeouts (a host that does not answer).

The one write is a compare-and-swap: `UPDATE t SET ..., updated_at = now WHERE <key> AND <col> <=> :read ...`,
NULL-safe (a row stuck since its creation has updated_at NULL), true only when exactly one row changed. A row that
moved on since the scan read it is left alone.

SQLAlchemy is imported when a Database is built (only `crashup sweep` does): agents never pay for it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
from typing import Any, Iterator, Mapping, Sequence

from crashup_lib.log import error_line, register_secret, shown

DRIVERS = {"sqlite": "sqlite", "sqlite+pysqlite": "sqlite", "mysql": "mysql+pymysql", "mysql+pymysql": "mysql+pymysql"}


class DbError(Exception):
    """A database problem as one line naming the database (password hidden)."""


def utcnow() -> _dt.datetime:
    """Naive UTC, as nova, cinder, glance and neutron store their timestamps (oslo.utils timeutils.utcnow())."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def _sa():
    try:
        import sqlalchemy
    except ImportError:
        raise DbError("SQLAlchemy is not installed (pip install 'crashup[sweep]')") from None
    return sqlalchemy


def _line(error: BaseException) -> str:
    """The driver's own message when there is one (SQLAlchemy's str() adds the SQL and a link), on one line."""
    return error_line(getattr(error, "orig", None) or error)


class Database:
    """One service database. `name` labels it in logs (e.g. 'nova cell1'); `where` is its URL without password."""

    def __init__(self, url: str, *, name: str = "", timeout: float = 10.0):
        sa = _sa()
        try:
            parsed = sa.engine.make_url(url)
        except Exception:                       # ArgumentError, ValueError: the URL itself is not shown whole
            raise DbError(f"{name or 'database'}: not a database URL: {shown(url)}") from None
        if parsed.password:
            register_secret(str(parsed.password))
        driver = DRIVERS.get(parsed.drivername)
        if driver is None:
            raise DbError(f"{name or 'database'}: {parsed.drivername}:// is not supported "
                          "(sqlite:///path or mysql+pymysql://user:password@host/db)")
        parsed = parsed.set(drivername=driver)
        self.name = name or parsed.render_as_string(hide_password=True)
        self.where = parsed.render_as_string(hide_password=True)
        self.timeout = float(timeout)
        if driver == "sqlite":
            path = parsed.database or ""
            if not path or path == ":memory:" or not os.path.isfile(path):
                # sqlite would create an empty file and every table would be "missing"
                raise DbError(f"{self.name}: {self.where}: no such database file")
            connect_args: dict[str, Any] = {"timeout": self.timeout}          # how long a lock is waited for
        else:
            connect_args = {"connect_timeout": max(1, round(self.timeout)), "read_timeout": self.timeout,
                            "write_timeout": self.timeout}
        from sqlalchemy.pool import NullPool
        try:
            # NullPool: a connection per use; the sweep runs once a minute, a pooled one would go stale between
            self.engine = sa.create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
        except ImportError:                     # PyMySQL missing
            raise DbError(f"{self.name}: the {driver} driver is not installed (pip install 'crashup[sweep]')") \
                from None
        except sa.exc.SQLAlchemyError as e:
            raise DbError(f"{self.name}: {self.where}: {_line(e)}") from None
        self._tables: dict[tuple[str, tuple[str, ...]], Any] = {}

    def __repr__(self) -> str:
        return f"Database({self.name!r}, {self.where!r})"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        sa = _sa()
        try:
            yield
        except DbError:
            raise
        except sa.exc.NoSuchTableError as e:
            raise DbError(f"{self.name}: {self.where}: no table {e}: not this service's database?") from None
        except (sa.exc.SQLAlchemyError, OSError) as e:
            raise DbError(f"{self.name}: {what}: {_line(e)}") from None

    @contextlib.contextmanager
    def begin(self) -> Iterator[Any]:
        """A connection in a transaction: committed at the end, rolled back on any exception."""
        with self._errors("transaction"):
            with self.engine.begin() as conn:
                yield conn

    def table(self, name: str, columns: Sequence[str]):
        """The table with only these columns, reflected once. DbError naming what is missing."""
        key = (name, tuple(columns))
        if key not in self._tables:
            sa = _sa()
            with self._errors(f"reading the {name} table's columns"):
                with self.engine.connect() as conn:
                    found = sa.Table(name, sa.MetaData(), autoload_with=conn, include_columns=list(columns))
            missing = [c for c in columns if c not in found.c]
            if missing:
                raise DbError(f"{self.name}: table {name} has no column {', '.join(missing)}: not this service's "
                              "database, or a release the sweep does not know")
            self._tables[key] = found
        return self._tables[key]

    def rows(self, statement) -> list[dict[str, Any]]:
        with self._errors("query"):
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(statement).mappings()]

    def scalar(self, statement) -> Any:
        with self._errors("query"):
            with self.engine.connect() as conn:
                return conn.execute(statement).scalar_one()

    def matches(self, table, key: Mapping[str, Any], expect: Mapping[str, Any]) -> bool:
        """Whether the row still holds what was read (the re-check before a change through an API)."""
        sa = _sa()
        return self.scalar(sa.select(sa.func.count()).select_from(table).where(*_where(table, key, expect))) == 1

    def cas_update(self, table, key: Mapping[str, Any], expect: Mapping[str, Any], values: Mapping[str, Any], *,
                   stamp: str | None = "updated_at", now: _dt.datetime | None = None) -> bool:
        """UPDATE one row only while `expect` still holds (NULL-safe); `stamp` set to now. True: exactly one row
        changed; False: the row moved on since it was read (or is gone), nothing written."""
        with self.begin() as conn:
            return update(conn, table, key, expect, values, stamp=stamp, now=now) == 1


def _where(table, key: Mapping[str, Any], expect: Mapping[str, Any]) -> list:
    return ([table.c[k] == v for k, v in key.items()]
            + [table.c[k].is_not_distinct_from(v) for k, v in expect.items()])


def update(conn, table, key: Mapping[str, Any], expect: Mapping[str, Any], values: Mapping[str, Any], *,
           stamp: str | None = "updated_at", now: _dt.datetime | None = None) -> int:
    """The compare-and-swap UPDATE inside the caller's transaction; the number of rows changed. More than one
    (a key that is not one) raises DbError, which rolls the transaction back."""
    sa = _sa()
    if not key:
        raise ValueError("a compare-and-swap needs a key")
    values = dict(values)
    if stamp:
        values[stamp] = now or utcnow()
    count = conn.execute(sa.update(table).where(*_where(table, key, expect)).values(**values)).rowcount
    if count > 1:
        raise DbError(f"{table.name}: {count} rows match {dict(key)}: refused, rolled back")
    return count
