"""Run one OpenStack service's own schema migrations against a database URL (what `<service>-manage db sync` does).

Runs under the schemas venv's python (tests/lab/schemas.py starts it), never under crashup's.  Reads one JSON object
{"service": "cinder"|"glance"|"nova", "url": "..."} from stdin, so the URL and its password appear in no argv,
environment or file; prints "SCHEMA OK <service> <revision>" on success.  The services' logs go to stderr.
"""
import json
import sys


def _conf(project, url):
    from oslo_config import cfg
    conf = cfg.CONF
    # no config files: a host's /etc/<service>/*.conf must not leak in
    conf([], project=project, default_config_files=[], default_config_dirs=[])
    _db_opts(conf, url)
    return conf


def _db_opts(conf, url):
    conf.set_override('connection', url, group='database')
    # oslo.db retries a refused connection 10 times 10 s apart: the database is local and ready, fail fast
    conf.set_override('max_retries', 1, group='database')
    conf.set_override('retry_interval', 1, group='database')


def cinder(url):
    # cinder-manage db sync: cinder.cmd.manage DbCommands.sync -> cinder.db.migration.db_sync
    from cinder import objects
    objects.register_all()
    _conf('cinder', url)
    from cinder.db import migration
    migration.db_sync()
    return migration.db_version()


def glance(url):
    # glance-manage db_sync: expand, migrate (data migrations), contract
    from glance.cmd import manage
    _conf('glance', url)
    from glance.db.sqlalchemy import alembic_migrations
    manage.DbCommands().sync()
    return ','.join(alembic_migrations.get_current_alembic_heads() or ())


def nova(url):
    # nova-manage db sync: the cell database ("main"), as tests/lab/novabox/server.py _setup_real_dbs makes it
    import nova.conf
    from nova import config
    from nova.db import migration
    from nova.db.main import api as main_db_api
    conf = nova.conf.CONF
    config.set_lib_defaults()           # what nova.config.parse_args does before parsing, minus rpc
    if config.profiler:
        config.profiler.set_defaults(conf)
    conf([], project='nova', default_config_files=[], default_config_dirs=[])
    _db_opts(conf, url)
    main_db_api.configure(conf)
    migration.db_sync(database='main')
    return str(migration.db_version(database='main'))


SERVICES = {'cinder': cinder, 'glance': glance, 'nova': nova}


def main():
    req = json.load(sys.stdin)
    fn = SERVICES[req['service']]
    try:
        rev = fn(req['url'])
    except BaseException as e:       # glance-manage's sync ends with sys.exit() on a failure
        why = (str(e).strip().splitlines() or [''])[0]
        sys.stdout.write('SCHEMA FAIL %s: %s\n' % (type(e).__name__, why))
        sys.stdout.flush()
        return 1
    sys.stdout.write('SCHEMA OK %s %s\n' % (req['service'], rev))
    sys.stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
