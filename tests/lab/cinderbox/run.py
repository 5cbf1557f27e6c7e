"""Start one cinder service as its console script would, with the lab's sqlite fix:

    python run.py cinder-api|cinder-scheduler|cinder-volume --config-file cinder.conf --log-file FILE

Three processes write one sqlite file; SQLAlchemy's pysqlite opens transactions deferred, and a transaction that
read and then writes fails at once with "database is locked" when another process wrote meanwhile (it happened on
the first evacuation).  Here every transaction begins IMMEDIATE (SQLAlchemy's documented recipe): the write lock is
taken first, and waited for up to the URL's ?timeout.  Lab-only: a cloud's cinder has MariaDB.  cinder.cmd.<x>
is imported first: it monkey-patches eventlet before sqlalchemy creates any lock.
"""
import importlib
import sqlite3
import sys


def _immediate_transactions():
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, 'connect')
    def _connect(dbapi_conn, record):
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.isolation_level = None     # no implicit BEGIN of pysqlite: _begin says how

    # oslo.db emits its own (deferred) BEGIN unless conn.info says a transaction is open: these engine-class
    # listeners run before its engine's, so BEGIN IMMEDIATE comes first and oslo.db's is skipped
    @event.listens_for(Engine, 'begin')
    def _begin(conn):
        if conn.dialect.name == 'sqlite' and 'in_transaction' not in conn.info:
            conn.exec_driver_sql('BEGIN IMMEDIATE')
            conn.info['in_transaction'] = True

    @event.listens_for(Engine, 'commit')
    @event.listens_for(Engine, 'rollback')
    def _end(conn):
        conn.info.pop('in_transaction', None)


def main():
    service = sys.argv.pop(1)
    if service not in ('cinder-api', 'cinder-scheduler', 'cinder-volume'):
        sys.exit('run.py: unknown cinder service %r' % service)
    module = importlib.import_module('cinder.cmd.' + service.split('-', 1)[1])
    _immediate_transactions()
    return module.main()


if __name__ == '__main__':
    sys.exit(main())
