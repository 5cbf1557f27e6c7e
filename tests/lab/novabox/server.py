#!/usr/bin/env python3
"""The nova box: a real OpenStack Nova (API, conductor, scheduler, one nova-compute per --hosts name with nova's
fake virt driver) and Placement in one Python process, serving the compute API over real HTTP.

Runs under the nova venv's python (see tests/lab/nova_env.py, which also starts and stops it); imports neither
crashup nor tests.lab: everything comes from the command line.

It reuses nova's own functional-test harness (nova.tests, shipped in the nova wheel) for the plumbing: the
oslo.messaging 'fake://' in-process transport, nova's fake virt driver (one FakeDriver per compute host), nova's
in-process Glance/Neutron/Cinder fakes and an in-process Placement.  With --cinder-url (the lab's real cinder,
tests/lab/cinder.py) nova's Cinder fake is left out and nova calls that cinder over HTTP.  Databases are real sqlite files (api, cell0,
cell1 in --state-dir, WAL) made by nova's migrations, with real cell and host mappings.  Everything a client talks
to over HTTP (compute API, placement) is real nova / placement code; conductor, scheduler and nova-compute are real
nova managers.

    OS_NOVA_DISABLE_EVENTLET_PATCHING=1 python server.py --bind 127.0.0.1 --port 8774 --placement-port 8778 \\
        --hosts compute1,compute2,compute3 --state-dir DIR --log-file FILE
    -> binds both ports at once (a busy port fails in < 1 s), builds nova (~6 s), writes --state-file (default
       DIR/state.json, atomically) and prints "NOVABOX READY {json}".  SIGTERM/SIGINT: exits within ~3 s.

Real guests (--libvirt-uri 'qemu:///system?socket=.../{host}/libvirt-sock' --guest-kernel K --guest-initrd I):
a server whose flavor has the extra spec lab:guest=qemu is also a real qemu domain on its host's libvirtd (uuid =
instance uuid, name = instance.name, hw:watchdog_action -> an i6300esb watchdog, a pvpanic device, on_crash
preserve): spawn/destroy/reboot/power_off/power_on/evacuation act on it, get_info answers from it, and its
libvirt lifecycle events reach nova-compute as nova's libvirt driver sends them. Other servers stay fake.

Auth (no keystone): any "X-Auth-Token: <user>:<project>" is accepted; user "admin" gets the roles
admin,member,reader, others member,reader (keystoneauth1: token_endpoint.Token(url, "admin:admin")).

Control API (test side channel, not nova), JSON in and out, under http://<bind>:<port>/novabox/ :
    GET    /novabox/state                       pid, urls, computes {host: running}, services, db files
    POST   /novabox/computes/<host>/stop        nova-compute crashes: no more heartbeats or RPC.
                                                body {"power_off": true}: its hypervisor loses its guests too
    POST   /novabox/computes/<host>/start       (re)start nova-compute on the same fake hypervisor (a new
                                                ComputeManager: init_host runs, e.g. destroys evacuated guests);
                                                an unknown host is added as a new compute
    POST   /novabox/computes/<host>/hang        nova-compute hangs: its process "runs"
                                                (running: true) but sends no more heartbeats
    GET    /novabox/computes/<host>/guests      {"host", "running", "guests": [uuid...], "power_states": {uuid: s},
                                                "volumes": {uuid: [volume id...]}} (the guests' connected volumes)
                                                what that host's fake hypervisor holds (real
                                                guests: as its libvirtd last said, refreshed every second)
    GET    /novabox/guests                      {"guests": {host: [uuid...]}} for all hosts
    POST   /novabox/instances/<uuid>/db         body: columns to write in the cell DB (task_state, vm_state,
                                                power_state, updated_at, host, node, launched_at)
    POST   /novabox/faults                      {"match": regex, "status": 500, "delay": s, "count": n,
                                                 "body_match": regex (optional)}: the next n compute-API requests
                                                whose "METHOD PATH[?QUERY]" matches (re.search; and whose body
                                                matches body_match) wait delay s, then get that status (status
                                                null: then go on to nova, i.e. a slow API).  count -1: until
                                                cleared.  Answers the fault with its id.
    GET    /novabox/faults                      {"faults": [...]} still armed, with their hits
    DELETE /novabox/faults[/<id>]               disarm all (or one): {"cleared": n}
"""
import os
import sys

# Native threading instead of eventlet (nova >= 2025.2 supports both).
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')
for _v in ('OS_TEST_TIMEOUT', 'OS_STDOUT_CAPTURE', 'OS_STDERR_CAPTURE',
           'OS_LOG_CAPTURE'):
    os.environ.pop(_v, None)

import argparse  # noqa: E402
import http  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import socketserver  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid as uuidlib  # noqa: E402
from wsgiref import simple_server  # noqa: E402

LOG = logging.getLogger('novabox')
ARGS = None
CONTROLLER_HOST = 'controller'   # service host of the API, conductor, scheduler


# ---------------------------------------------------------------------------
# HTTP plumbing (bound before nova is built, so a busy port fails at once)
# ---------------------------------------------------------------------------
class _ThreadingWSGIServer(socketserver.ThreadingMixIn,
                           simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _QuietHandler(simple_server.WSGIRequestHandler):
    def setup(self):
        super().setup()
        # wsgiref writes headers and body separately: without NODELAY,
        # Nagle + delayed ACK add ~40 ms to every response on loopback.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # access log -> logging, not stderr
        LOG.debug('%s - %s', self.address_string(), fmt % args)


def _not_ready(environ, start_response):
    start_response('503 Service Unavailable',
                   [('Content-Type', 'application/json')])
    return [b'{"error": "nova box starting"}']


def bind(addr, port, name):
    try:
        srv = simple_server.make_server(addr, port, _not_ready,
                                        server_class=_ThreadingWSGIServer,
                                        handler_class=_QuietHandler)
    except OSError as e:
        sys.stderr.write('novabox: cannot bind %s %s:%d: %s\n'
                         % (name, addr, port, e))
        sys.stderr.flush()
        os._exit(2)
    srv.novabox_name = name
    return srv


def serve(srv, app):
    srv.set_app(app)
    t = threading.Thread(target=srv.serve_forever, args=(0.2,),
                         name='http-' + srv.novabox_name, daemon=True)
    t.start()


class FakeAuth(object):
    """Replaces keystone: token "<user>:<project>" -> identity headers read
    by nova's (stubbed) NovaKeystoneContext in the functional-test
    OSAPIFixture (X-Auth-User / X-Auth-Project-Id / X-Roles)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        token = environ.get('HTTP_X_AUTH_TOKEN')
        path = environ.get('PATH_INFO', '')
        if not token:
            if path.rstrip('/') in ('', '/v2', '/v2.1'):  # version discovery
                token = 'anonymous:anonymous'
            else:
                start_response('401 Unauthorized',
                               [('Content-Type', 'application/json')])
                return [b'{"error": {"code": 401, "message": '
                        b'"X-Auth-Token <user>:<project> required"}}']
        user, _, project = token.partition(':')
        project = project or user
        roles = 'reader,member,admin' if user == 'admin' else 'reader,member'
        environ['HTTP_X_AUTH_USER'] = user
        environ['HTTP_X_AUTH_PROJECT_ID'] = project
        environ['HTTP_X_ROLES'] = roles
        return self.app(environ, start_response)


# ---------------------------------------------------------------------------
# fault injection on the compute API
# ---------------------------------------------------------------------------
# nova's fault body names (nova.api.openstack.wsgi.Fault._fault_names)
_FAULT_NAMES = {400: 'badRequest', 401: 'unauthorized', 403: 'forbidden',
                404: 'itemNotFound', 405: 'badMethod', 409: 'conflictingRequest',
                413: 'overLimit', 415: 'badMediaType', 429: 'overLimit',
                501: 'notImplemented', 503: 'serviceUnavailable'}


class Faults(object):
    def __init__(self):
        self.lock = threading.Lock()
        self.armed = []          # dicts, in order of arming
        self.ids = itertools.count(1)

    def add(self, body):
        match = body.get('match')
        if not isinstance(match, str) or not match:
            raise ValueError('"match" (a regex on "METHOD PATH") required')
        status = body.get('status', 500)
        delay = body.get('delay', 0) or 0
        count = body.get('count', 1)
        body_match = body.get('body_match')
        if status is not None and (not isinstance(status, int) or
                                   not 100 <= status <= 599):
            raise ValueError('"status" must be an HTTP status or null')
        if not isinstance(delay, (int, float)) or not 0 <= delay <= 3600:
            raise ValueError('"delay" must be 0..3600 seconds')
        if status is None and not delay:
            raise ValueError('a fault needs a "status" or a "delay"')
        if not isinstance(count, int) or count == 0 or count < -1:
            raise ValueError('"count" must be >= 1, or -1 (until cleared)')
        f = {'id': next(self.ids), 'match': match, 'status': status,
             'delay': delay, 'count': count, 'body_match': body_match,
             'hits': 0,
             '_re': re.compile(match),
             '_body_re': (re.compile(body_match.encode())
                          if body_match else None)}
        with self.lock:
            self.armed.append(f)
        LOG.info('fault armed: %s', self.public(f))
        return self.public(f)

    @staticmethod
    def public(f):
        return {k: v for k, v in f.items() if not k.startswith('_')}

    def list(self):
        with self.lock:
            return [self.public(f) for f in self.armed]

    def clear(self, fid=None):
        with self.lock:
            keep = [f for f in self.armed
                    if fid is not None and f['id'] != fid]
            n = len(self.armed) - len(keep)
            self.armed = keep
        return n

    def take(self, environ):
        """The fault this request triggers (consuming one of its count), or
        None.  Reads the body only when a fault with body_match needs it."""
        if not self.armed:
            return None
        line = '%s %s' % (environ.get('REQUEST_METHOD', ''),
                          environ.get('PATH_INFO', ''))
        if environ.get('QUERY_STRING'):
            line += '?' + environ['QUERY_STRING']
        body = None
        with self.lock:
            candidates = [f for f in self.armed if f['_re'].search(line)]
        for f in candidates:
            if f['_body_re'] is not None:
                if body is None:
                    n = int(environ.get('CONTENT_LENGTH') or 0)
                    body = environ['wsgi.input'].read(n) if n else b''
                    environ['wsgi.input'] = io.BytesIO(body)
                if not f['_body_re'].search(body):
                    continue
            with self.lock:
                if f not in self.armed:      # used up meanwhile
                    continue
                f['hits'] += 1
                if f['count'] > 0:
                    f['count'] -= 1
                    if f['count'] == 0:
                        self.armed.remove(f)
            LOG.info('fault %d hits %s', f['id'], line)
            return f
        return None


def fault_response(f, start_response):
    status = f['status']
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = 'Error'
    name = _FAULT_NAMES.get(status, 'computeFault')
    data = json.dumps({name: {
        'code': status,
        'message': 'novabox injected fault %d (%s)' % (f['id'], f['match'])}
    }).encode()
    req_id = 'req-' + str(uuidlib.uuid4())
    start_response('%d %s' % (status, phrase), [
        ('Content-Type', 'application/json'),
        ('Content-Length', str(len(data))),
        ('x-openstack-request-id', req_id),
        ('x-compute-request-id', req_id)])
    return [data]


class Dispatcher(object):
    """/novabox/* -> control API; else armed faults, then nova."""

    def __init__(self, nova_app, control, faults):
        self.nova_app = nova_app
        self.control = control
        self.faults = faults

    def __call__(self, environ, start_response):
        path = environ.get('PATH_INFO', '')
        if path == '/novabox' or path.startswith('/novabox/'):
            return self.control(environ, start_response)
        f = self.faults.take(environ)
        if f is not None:
            if f['delay']:
                time.sleep(f['delay'])
            if f['status'] is not None:
                return fault_response(f, start_response)
        return self.nova_app(environ, start_response)


# ---------------------------------------------------------------------------
# CPU fixes for an idle box
# ---------------------------------------------------------------------------
def _patch_fake_transport():
    """oslo.messaging's fake driver busy-polls every 50 ms per listener
    (~20 listeners -> ~half a core when idle).  Make listeners sleep on a
    condition variable that deliver_message() notifies instead."""
    from oslo_messaging._drivers import base as drv_base
    from oslo_messaging._drivers import impl_fake
    cond = threading.Condition()
    gen = [0]
    orig_deliver = impl_fake.FakeExchange.deliver_message

    def deliver_message(self, *a, **kw):
        r = orig_deliver(self, *a, **kw)
        with cond:
            gen[0] += 1
            cond.notify_all()
        return r

    def poll_one(self, timeout=None):
        deadline = None if timeout is None else time.time() + timeout
        while not self._stopped.is_set():
            with cond:
                seen = gen[0]
            for target in self._targets:
                exchange = self._exchange_manager.get_exchange(target.exchange)
                (ctxt, message, reply_q, requeue) = exchange.poll(target,
                                                                  self._pool)
                if message is not None:
                    return impl_fake.FakeIncomingMessage(ctxt, message,
                                                         reply_q, requeue)
            pause = 1.0
            if deadline is not None:
                pause = min(pause, deadline - time.time())
                if pause < 0:
                    break
            with cond:
                cond.wait_for(lambda: gen[0] != seen, pause)
        return None

    impl_fake.FakeExchange.deliver_message = deliver_message
    impl_fake.FakeListener.poll = drv_base.batch_poll_helper(poll_one)


def _patch_skip_unused_allocation_reads():
    """ResourceTracker._update_to_placement() calls
    get_allocations_for_provider_tree() on *every* update: 1 + N placement
    GETs for N instances on the node (O(N^2) for N boots on one host).  The
    result is only used for a reshape (fake driver never asks for one) or
    PCI-in-placement ([pci]report_in_placement, off).  Return {} then."""
    import nova.conf
    from nova.scheduler.client import report
    orig = report.SchedulerReportClient.get_allocations_for_provider_tree

    def get_allocations_for_provider_tree(self, context, nodename):
        if nova.conf.CONF.pci.report_in_placement:
            return orig(self, context, nodename)
        return {}
    report.SchedulerReportClient.get_allocations_for_provider_tree = (
        get_allocations_for_provider_tree)


def _patch_hangable_heartbeat():
    """A compute marked `_novabox_hung` (control API: hang) stops reporting
    its heartbeat while its process "runs": a stuck nova-compute."""
    from nova.servicegroup.drivers import db
    orig = db.DbDriver._report_state

    def _report_state(self, service):
        if getattr(service, '_novabox_hung', False):
            return
        return orig(self, service)
    db.DbDriver._report_state = _report_state


# ---------------------------------------------------------------------------
# The "test case" that builds the cloud (never run as a test)
# ---------------------------------------------------------------------------
def make_box_class():
    # this import first: nova.tests.functional sets nova's threading mode
    from nova.tests.functional import integrated_helpers
    from nova.tests import fixtures as nova_fixtures
    import nova.conf

    class Box(integrated_helpers._IntegratedTestBase):
        # Real sqlite files + real CellMappings, nova's own target_cell()
        # switches DBs (nova's CellDatabases fixture emulates cells with
        # global locks and deadlocks under ~50 parallel requests).
        USES_DB = False
        USES_DB_SELF = True
        # real async RPC casts (evacuations run concurrently)
        CAST_AS_CALL = False
        ADMIN_API = True
        microversion = 'latest'
        STUB_KEYSTONE = True

        def runTest(self):  # pragma: no cover - never executed
            pass

        def _setup_real_dbs(self):
            import sqlite3
            from nova import context, objects
            from nova.db.api import api as api_db_api
            from nova.db import migration
            from nova.db.main import api as main_db_api

            d = ARGS.state_dir
            os.makedirs(d, exist_ok=True)
            self.db_files = {}

            def url(name):
                path = os.path.join(d, name + '.sqlite')
                for suffix in ('', '-wal', '-shm', '-journal'):
                    try:
                        os.unlink(path + suffix)
                    except FileNotFoundError:
                        pass
                with sqlite3.connect(path) as conn:
                    conn.execute('PRAGMA journal_mode=WAL')
                self.db_files[name] = path
                # timeout: how long sqlite waits for the write lock
                return 'sqlite:///%s?timeout=%d' % (path, ARGS.sqlite_timeout)

            api_url, cell0_url, cell1_url = (url('api'), url('cell0'),
                                             url('cell1'))
            # [database] = cell1 as for conductor/computes of a single-cell
            # deployment
            self.flags(connection=api_url, group='api_database')
            self.flags(connection=cell1_url, group='database')
            api_db_api.configure(nova.conf.CONF)
            main_db_api.configure(nova.conf.CONF)
            migration.db_sync(database='api')      # nova-manage api_db sync
            ctxt = context.get_admin_context()
            c0 = objects.CellMapping(             # cell_v2 map_cell0
                context=ctxt, uuid=objects.CellMapping.CELL0_UUID,
                name='cell0', transport_url='none:///',
                database_connection=cell0_url)
            c0.create()
            c1 = objects.CellMapping(             # cell_v2 create_cell
                context=ctxt, uuid='1d8e9fc4-7e0c-4b6a-9c1b-2a2b3c4d5e6f',
                name='cell1', transport_url='fake://nowhere/',
                database_connection=cell1_url)
            c1.create()
            for cm in (c0, c1):                   # nova-manage db sync
                with context.target_cell(ctxt, cm) as cctxt:
                    migration.db_sync(database='main', context=cctxt)
                self.cell_mappings[cm.name] = cm

        def _start_compute(self, host, cell_name=None):
            from nova import context, objects
            ctxt = context.get_admin_context()
            if host not in self.host_mappings:    # cell_v2 discover_hosts
                hm = objects.HostMapping(
                    context=ctxt, host=host,
                    cell_mapping=self.cell_mappings['cell1'])
                hm.create()
                self.host_mappings[host] = hm
            svc = self.start_service('compute', host=host)
            self.computes[host] = svc
            return svc

        def _setup_services(self):
            _flags(self)
            if ARGS.db_write_lock:
                self.useFixture(nova_fixtures.DatabaseWriteLock())
            self._setup_real_dbs()
            self.useFixture(nova_fixtures.DefaultFlavorsFixture())
            self.flags(host=CONTROLLER_HOST)
            self.conductor = self.start_service('conductor')
            self.scheduler = self.start_service('scheduler')
            for host in ARGS.hosts:
                self._start_compute(host)
            # start_service() leaves CONF.host = last compute; the API
            # service registers itself under CONF.host.
            self.flags(host=CONTROLLER_HOST)
            self.api_fixture = self.useFixture(nova_fixtures.OSAPIFixture(
                api_version='v2.1', stub_keystone=True))
            self.admin_api = self.api = self.api_fixture.admin_api
            if ARGS.cinder_url:
                _context_keeps_token(self)

    return Box


def _skip_cinder_fixture():
    """A real cinder (--cinder-url): nova's test base must not install its
    CinderFixture, which mocks ~20 nova.volume.cinder.API methods."""
    import fixtures
    from nova.tests import fixtures as nova_fixtures

    class NoCinderFixture(fixtures.Fixture):
        def __init__(self, test):
            super().__init__()
    nova_fixtures.CinderFixture = NoCinderFixture


def _cinder_flags(box):
    """nova -> the lab's cinder without keystone: the endpoint is fixed, user
    requests carry the user's token (see _context_keeps_token), requests of
    admin contexts without one (periodic tasks) the admin token; every request
    also carries a service token, as nova's [service_user] sends it, so that
    cinder (tests/lab/cinderbox/labauth.py) treats it as nova's.
    The fake virt driver needs no patch: its volume connector's host is the
    compute's own name (FakeDriver.init_host), so a cinder attachment's
    host_name is compute1..., as crashup checks after an evacuation."""
    import nova.conf
    from keystoneauth1 import loading as ks_loading
    conf = nova.conf.CONF
    for group in ('cinder', 'service_user'):
        conf.register_opts(
            ks_loading.get_auth_plugin_conf_options('admin_token'),
            group=group)
    url = ARGS.cinder_url
    box.flags(endpoint_template=url, auth_type='admin_token', endpoint=url,
              token='admin:admin', http_retries=0, group='cinder')
    box.flags(send_service_user_token=True, auth_type='admin_token',
              endpoint=url, token='nova:service', group='service_user')


def _context_keeps_token(box):
    """nova's stubbed keystone context (OSAPIFixture) drops the request's
    token; cinder needs it (nova calls cinder as the user, with the user's
    token): keep X-Auth-Token in the context, as keystonemiddleware does."""
    import fixtures
    from nova.api import auth as api_auth
    stub = api_auth.NovaKeystoneContext._create_context

    def create_context(env, **kwargs):
        ctx = stub(env, **kwargs)
        ctx.auth_token = env.get('HTTP_X_AUTH_TOKEN')
        return ctx
    box.useFixture(fixtures.MonkeyPatch(
        'nova.api.auth.NovaKeystoneContext._create_context', create_context))


def _flags(box):
    if ARGS.cinder_url:
        _cinder_flags(box)
    f = box.flags
    f(compute_driver=ARGS.driver)
    paste = os.path.join(sys.prefix, 'etc', 'nova', 'api-paste.ini')
    f(api_paste_config=paste, group='wsgi')
    # heartbeat / liveness: small numbers so "down" detection is quick
    f(report_interval=ARGS.report_interval,
      service_down_time=ARGS.service_down_time)
    # periodic tasks (update_available_resource, _poll_...) like real nova
    f(periodic_enable=ARGS.periodic)
    # nova's tests use 'error'; production default is 'warn'; the jsonschema
    # check of every response is costly, so skip it unless asked for
    f(response_validation=ARGS.response_validation, group='api')
    # tests want many servers in one project
    f(instances=-1, cores=-1, ram=-1, group='quota')
    # let many evacuations/builds run at once on one compute
    f(max_concurrent_builds=ARGS.max_concurrent_builds)


def build():
    # nova.tests.functional must be imported first: it sets up nova's
    # threading mode and refuses to run if eventlet was imported before
    box_class = make_box_class()
    if not ARGS.busy_poll:
        _patch_fake_transport()
    if not ARGS.all_placement_reads:
        _patch_skip_unused_allocation_reads()
    _patch_hangable_heartbeat()
    if ARGS.cinder_url:
        _skip_cinder_fixture()
    _patch_fake_driver_volumes()
    if ARGS.libvirt_uri:
        _patch_fake_driver_guests()
    box = box_class('runTest')
    _BOX[0] = box
    t0 = time.time()
    box.setUp()
    # nova.test.TestCase.setUp sets futurist's idle-worker poll to 10 ms to
    # speed up short tests; with ~200 idle pool threads that burns a whole
    # core forever.  Back to futurist's default.
    import futurist._thread
    futurist._thread.ThreadWorker.MAX_IDLE_FOR = 1
    LOG.info('nova services up in %.1fs', time.time() - t0)
    return box


# ---------------------------------------------------------------------------
# control API (test-harness side channel, not part of nova)
# ---------------------------------------------------------------------------
_POWER_STATES = {0: 'nostate', 1: 'running', 3: 'paused', 4: 'shutdown',
                 6: 'crashed', 7: 'suspended'}


def _cell_engine(box):
    from nova import context
    ctxt = context.get_admin_context()
    with context.target_cell(ctxt, box.cell_mappings['cell1']) as cctxt:
        return cctxt.db_connection.writer.get_engine()


def _running(svc):
    return svc is not None and not getattr(svc, '_novabox_stopped', False)


def _patch_fake_driver_volumes():
    """Lab-only: nova's FakeDriver records a volume attached to a running
    guest (attach_volume: _mounts[name][mountpoint] = connection_info), but
    not the volumes a guest is spawned with (boot from volume, the rebuild of
    an evacuation), and keeps them after destroy. Make its _mounts what a
    hypervisor holds, as libvirt's domain XML would: spawn connects the
    block device mapping's volumes, destroy drops the guest's."""
    from nova.virt import fake
    spawn, destroy = fake.FakeDriver.spawn, fake.FakeDriver.destroy

    def spawn_with_volumes(self, context, instance, *args, **kw):
        spawn(self, context, instance, *args, **kw)
        info = kw.get('block_device_info') or {}
        for bdm in info.get('block_device_mapping') or []:
            conn = bdm.get('connection_info')
            if conn:
                self._mounts.setdefault(instance.name, {})[
                    bdm.get('mount_device') or conn.get('serial')] = conn

    def destroy_with_volumes(self, context, instance, *args, **kw):
        destroy(self, context, instance, *args, **kw)
        self._mounts.pop(instance.name, None)

    fake.FakeDriver.spawn = spawn_with_volumes
    fake.FakeDriver.destroy = destroy_with_volumes

    def post_live_migration(self, context, instance, block_device_info,
                            migrate_data=None):
        # the source host after a live migration holds the guest no more
        # (nova's FakeLiveMigrateDriver does the same; FakeDriver kept it)
        self.destroy(context, instance, network_info=None,
                     block_device_info=block_device_info)

    fake.FakeDriver.post_live_migration = post_live_migration


# ---------------------------------------------------------------------------
# real guests (lab up --guests): servers of a flavor with lab:guest=qemu
# ---------------------------------------------------------------------------
GUEST_SPEC = 'lab:guest'
WATCHDOG_ACTIONS = ('reset', 'poweroff', 'pause', 'none')
_HVS = {}                # nova host -> _Hypervisor
_BOX = [None]            # the built box: is a host's nova-compute running
_EVENTS = None           # (hypervisor, LifecycleEvent) for _emit_events


def _domain_xml(uuid, name, memory_mb, kernel, initrd, cmdline, console_log,
                command_socket, watchdog_action=None):
    """A TCG guest booting the lab's kernel and initramfs directly: ttyS0 to
    a log file (appended: every boot's, a panic's trace survives the
    reboot), ttyS1 a unix socket the lab writes commands to; a watchdog
    as nova's libvirt driver makes it from hw:watchdog_action, and a pvpanic
    device with on_crash preserve (a panic leaves it CRASHED, for nova or
    crashup to act on)."""
    from xml.sax.saxutils import escape, quoteattr
    watchdog = ('<watchdog model="i6300esb" action=%s/>' % quoteattr(
        watchdog_action) if watchdog_action in WATCHDOG_ACTIONS else '')
    return """<domain type="qemu">
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit="MiB">%d</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64" machine="q35">hvm</type><kernel>%s</kernel>
    <initrd>%s</initrd><cmdline>%s</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>preserve</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type="file"><source path=%s append="on"/><target port="0"/>
    </serial>
    <serial type="unix"><source mode="bind" path=%s/><target port="1"/>
    </serial>
    <controller type="usb" model="none"/>
    <memballoon model="none"/>
    %s
    <panic model="isa"/>
  </devices>
</domain>""" % (escape(name), escape(uuid), memory_mb, escape(kernel),
                escape(initrd), escape(cmdline), quoteattr(console_log),
                quoteattr(command_socket), watchdog)


def _is_real(instance):
    try:
        specs = instance.flavor.extra_specs or {}
    except Exception:  # no flavor to read: not ours to make real
        return False
    return specs.get(GUEST_SPEC) == 'qemu'


class _Hypervisor(object):
    """One compute host's libvirtd: a connection (re-opened when lost: the
    node crashed and booted again) delivering lifecycle events to the
    host's driver, as nova's libvirt driver (virt/libvirt/host.py) does."""

    def __init__(self, host, driver):
        self.host, self.driver = host, driver
        self.uri = ARGS.libvirt_uri.replace('{host}', host)
        self.socket = self.uri.split('socket=', 1)[-1]
        self.guest_dir = os.path.join(os.path.dirname(self.socket), 'guests')
        self.lock = threading.Lock()
        self._conn = None
        # {uuid: nova power state} of every domain, refreshed in the
        # background (events, every second): the control API's view never
        # waits on libvirtd (a domain starting holds its lock for seconds)
        self.states = {}

    def conn(self):
        import libvirt
        with self.lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
            conn = libvirt.open(self.uri)
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                self._lifecycle, None)
            self._conn = conn
            LOG.info('novabox: connected to libvirtd of %s', self.host)
            return conn

    def _lifecycle(self, conn, dom, event, detail, opaque):
        import libvirt
        from nova.virt import event as virtevent
        transition = {
            libvirt.VIR_DOMAIN_EVENT_STOPPED:
                virtevent.EVENT_LIFECYCLE_STOPPED,
            libvirt.VIR_DOMAIN_EVENT_STARTED:
                virtevent.EVENT_LIFECYCLE_STARTED,
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
                virtevent.EVENT_LIFECYCLE_PAUSED,
            libvirt.VIR_DOMAIN_EVENT_RESUMED:
                virtevent.EVENT_LIFECYCLE_RESUMED,
        }.get(event)
        uuid = dom.UUIDString()
        LOG.info('novabox: %s: libvirt lifecycle event %d/%d of %s',
                 self.host, event, detail, uuid)
        _EVENTS.put((self, uuid, None if transition is None else
                     virtevent.LifecycleEvent(uuid, transition)))

    def refresh(self, uuid=None):
        """self.states anew (uuid: only that domain's entry)."""
        import libvirt
        try:
            if uuid is None:
                doms = self.conn().listAllDomains()
                self.states = {d.UUIDString(): self._map(d.state()[0])
                               for d in doms}
                return
            states = dict(self.states)
            st = self.power_state(uuid)
            if st is None:
                states.pop(uuid, None)
            else:
                states[uuid] = st
            self.states = states
        except libvirt.libvirtError as e:
            LOG.debug('novabox: %s: libvirtd: %s', self.host, e)
            if uuid is None:
                self.states = {}

    def domain(self, uuid):
        import libvirt
        try:
            return self.conn().lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def uuids(self):
        import libvirt
        try:
            return [d.UUIDString() for d in self.conn().listAllDomains()]
        except libvirt.libvirtError as e:
            LOG.warning('novabox: %s: libvirtd: %s', self.host, e)
            return []

    def power_state(self, uuid):
        """nova's power state of the domain, as nova's libvirt driver maps
        it; None when libvirtd holds no such domain."""
        dom = self.domain(uuid)
        return None if dom is None else self._map(dom.state()[0])

    @staticmethod
    def _map(state):
        import libvirt
        from nova.compute import power_state as ps
        return {libvirt.VIR_DOMAIN_RUNNING: ps.RUNNING,
                libvirt.VIR_DOMAIN_BLOCKED: ps.RUNNING,
                libvirt.VIR_DOMAIN_PAUSED: ps.PAUSED,
                libvirt.VIR_DOMAIN_SHUTDOWN: ps.SHUTDOWN,
                libvirt.VIR_DOMAIN_SHUTOFF: ps.SHUTDOWN,
                libvirt.VIR_DOMAIN_CRASHED: ps.CRASHED,
                libvirt.VIR_DOMAIN_PMSUSPENDED: ps.SUSPENDED,
                }.get(state, ps.NOSTATE)

    def define(self, instance):
        os.makedirs(self.guest_dir, exist_ok=True)
        specs = instance.flavor.extra_specs or {}
        xml = _domain_xml(
            instance.uuid, instance.name,
            max(96, min(int(instance.flavor.memory_mb), 256)),
            ARGS.guest_kernel, ARGS.guest_initrd, ARGS.guest_cmdline,
            os.path.join(self.guest_dir, instance.uuid + '.log'),
            os.path.join(self.guest_dir, instance.uuid + '.cmd'),
            specs.get('hw:watchdog_action'))
        return self.conn().defineXML(xml)

    def start(self, instance):
        dom = self.domain(instance.uuid) or self.define(instance)
        if not dom.isActive():
            try:                 # a socket left by a killed qemu
                os.unlink(os.path.join(self.guest_dir, instance.uuid + '.cmd'))
            except FileNotFoundError:
                pass
            dom.create()
        self.refresh(instance.uuid)

    def stop(self, uuid):
        dom = self.domain(uuid)
        if dom is not None and dom.isActive():
            dom.destroy()
        return dom

    def remove(self, uuid):
        dom = self.stop(uuid)
        if dom is not None:
            dom.undefine()
        self.refresh(uuid)


def _hv(driver):
    host = driver._host
    if host not in _HVS:
        _HVS[host] = _Hypervisor(host, driver)
    return _HVS[host]


#: nova's libvirt driver holds a STOPPED lifecycle event this long, and drops
#: it when another event of the domain comes first (a reboot's STARTED):
#: nova/virt/libvirt/host.py _event_emit_delayed
STOPPED_DELAY = 15.0


def _emit_events():
    """nova's manager handles an event synchronously (DB, RPC): never in
    libvirt's event loop thread. STOPPED waits STOPPED_DELAY as in nova."""
    from nova.virt import event as virtevent
    delayed = {}                       # uuid -> threading.Timer

    def emit(hv, ev):
        svc = _BOX[0].computes.get(hv.host) if _BOX[0] else None
        if _running(svc):              # a stopped one handles nothing
            hv.driver.emit_event(ev)

    while True:
        hv, uuid, ev = _EVENTS.get()
        hv.refresh(uuid)
        if ev is None:
            continue
        pending = delayed.pop(uuid, None)
        if pending is not None:
            pending.cancel()
        if ev.transition == virtevent.EVENT_LIFECYCLE_STOPPED:
            timer = delayed[uuid] = threading.Timer(STOPPED_DELAY, emit,
                                                    (hv, ev))
            timer.daemon = True
            timer.start()
        else:
            emit(hv, ev)


def _keep_connected():
    """Events flow only on an open connection: re-open a host's as soon as
    its libvirtd is back (the node booted), not at nova's next call."""
    while True:
        for hv in list(_HVS.values()):
            if os.path.exists(hv.socket):
                hv.refresh()
            else:
                hv.states = {}
        time.sleep(1)


def _patch_fake_driver_guests():
    """Lab-only (--libvirt-uri): a server whose flavor has lab:guest=qemu is
    a real qemu domain on its host's libvirtd (uuid = instance uuid, name =
    instance.name). FakeDriver keeps its bookkeeping (resources, instances);
    the domain is the truth for power states. Other servers stay fake."""
    import queue
    import libvirt
    from nova import exception
    from nova.virt import fake, hardware
    global _EVENTS
    _EVENTS = queue.Queue()
    libvirt.virEventRegisterDefaultImpl()   # before any connection opens
    libvirt.registerErrorHandler(lambda *a: None, None)  # errors are raised

    def loop():
        while True:
            libvirt.virEventRunDefaultImpl()
    for target in (loop, _emit_events, _keep_connected):
        threading.Thread(target=target, daemon=True,
                         name='novabox-' + target.__name__).start()
    F = fake.FakeDriver
    orig = {n: getattr(F, n) for n in (
        'init_host', 'spawn', 'destroy', 'reboot', 'power_off', 'power_on',
        'get_info', 'list_instances', 'list_instance_uuids')}

    def init_host(self, host):
        orig['init_host'](self, host)
        _hv(self)

    def spawn(self, context, instance, *a, **kw):
        orig['spawn'](self, context, instance, *a, **kw)
        if _is_real(instance):
            hv = _hv(self)
            hv.remove(instance.uuid)          # a rebuild: a fresh definition
            hv.define(instance)
            if kw.get('power_on', True):
                hv.start(instance)

    def destroy(self, context, instance, *a, **kw):
        if _is_real(instance):
            _hv(self).remove(instance.uuid)
        orig['destroy'](self, context, instance, *a, **kw)

    def reboot(self, context, instance, network_info, reboot_type, *a, **kw):
        if not _is_real(instance):
            return orig['reboot'](self, context, instance, network_info,
                                  reboot_type, *a, **kw)
        # SOFT too: the busybox guest ignores ACPI shutdown, and nova's
        # libvirt driver falls back to a hard reboot when a guest does not
        # stop
        hv = _hv(self)
        hv.stop(instance.uuid)
        hv.start(instance)
        if instance.uuid not in self.instances:
            orig['spawn'](self, context, instance, instance.image_meta,
                          None, None, None)
        self.instances[instance.uuid].state = hv.power_state(instance.uuid)

    def power_off(self, instance, timeout=0, retry_interval=0):
        if _is_real(instance):
            _hv(self).stop(instance.uuid)
        return orig['power_off'](self, instance, timeout, retry_interval)

    def power_on(self, context, instance, *a, **kw):
        if _is_real(instance):
            _hv(self).start(instance)
        return orig['power_on'](self, context, instance, *a, **kw)

    def get_info(self, instance, use_cache=True):
        if not _is_real(instance):
            return orig['get_info'](self, instance, use_cache)
        state = _hv(self).power_state(instance.uuid)
        if state is None:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        if instance.uuid in self.instances:
            self.instances[instance.uuid].state = state
        return hardware.InstanceInfo(state=state)

    def real_extra(self):
        """Domains on this host's libvirtd the fake bookkeeping lost (the
        host powered off): nova's init_host must see them, e.g. to destroy
        the source of an evacuation."""
        return [u for u in _hv(self).uuids() if u not in self.instances]

    def list_instance_uuids(self):
        return orig['list_instance_uuids'](self) + real_extra(self)

    def list_instances(self):
        hv = _hv(self)
        doms = [hv.domain(u) for u in real_extra(self)]
        return orig['list_instances'](self) + [d.name() for d in doms if d]

    for name, fn in (('init_host', init_host), ('spawn', spawn),
                     ('destroy', destroy), ('reboot', reboot),
                     ('power_off', power_off), ('power_on', power_on),
                     ('get_info', get_info),
                     ('list_instances', list_instances),
                     ('list_instance_uuids', list_instance_uuids)):
        setattr(F, name, fn)


def _driver_volumes(svc):
    """{uuid: [volume id...]} connected to each guest of a compute's
    FakeDriver (nova sets connection_info's serial to the volume id)."""
    driver = svc.manager.driver
    names = {i.name: u for u, i in dict(driver.instances).items()}
    return {names[n]: sorted(str(c.get('serial')) for c in dict(m).values()
                             if c.get('serial'))
            for n, m in dict(driver._mounts).items() if n in names}


def _driver_guests(svc):
    """{uuid: power state name} of a compute's FakeDriver (a C-level dict
    copy: safe against compute threads changing it meanwhile)."""
    driver = svc.manager.driver
    instances = dict(driver.instances)
    states = {u: getattr(i, 'state', None) for u, i in instances.items()}
    hv = _HVS.get(driver._host) if ARGS.libvirt_uri else None
    if hv is not None:          # real guests: as their libvirtd last said
        states.update(hv.states)
    return {u: _POWER_STATES.get(st, 'unknown')
            for u, st in sorted(states.items())}


def make_control(box, info, faults):
    import sqlalchemy as sa
    lock = threading.Lock()

    def reply(start_response, code, body):
        data = json.dumps(body, default=str).encode()
        start_response(code, [('Content-Type', 'application/json'),
                              ('Content-Length', str(len(data)))])
        return [data]

    def compute_action(host, action, body):
        with lock:
            svc = box.computes.get(host)
            if action == 'hang':
                if not _running(svc):
                    return '409 Conflict', {'error': 'not running'}
                svc._novabox_hung = True
                LOG.info('novabox: nova-compute %s hung (no more heartbeats)',
                         host)
                return '200 OK', {'host': host, 'action': action}
            if action == 'stop':
                if not _running(svc):
                    if svc is not None and body.get('power_off'):
                        # a host cut off earlier (service already stopped) is now powered off: its guests die
                        dropped = sorted(svc.manager.driver.instances)
                        svc.manager.driver.instances.clear()
                        return '200 OK', {'host': host, 'action': action, 'power_off': True,
                                          'guests_lost': dropped, 'already_stopped': True}
                    return '409 Conflict', {'error': 'not running'}
                svc.stop()
                svc._novabox_stopped = True
                dropped = []
                if body.get('power_off'):
                    dropped = sorted(svc.manager.driver.instances)
                    svc.manager.driver.instances.clear()
                LOG.info('novabox: nova-compute %s stopped%s', host,
                         ' and powered off (%d guests lost)' % len(dropped)
                         if body.get('power_off') else '')
                return '200 OK', {'host': host, 'action': action,
                                  'power_off': bool(body.get('power_off')),
                                  'guests_lost': dropped}
            if _running(svc):
                return '409 Conflict', {'error': 'already running'}
            if svc is None:
                box._start_compute(host)
            else:
                # new ComputeManager (init_host runs, e.g. destroys evacuated
                # guests), same fake hypervisor
                svc.stop = lambda *a, **k: None  # already stopped
                box.computes[host] = box.restart_compute_service(
                    svc, keep_hypervisor_state=True)
            # start_service() points CONF.host at the compute: back
            box.flags(host=CONTROLLER_HOST)
            LOG.info('novabox: nova-compute %s started', host)
            return '200 OK', {'host': host, 'action': action}

    def app(environ, start_response):
        path = environ['PATH_INFO'].rstrip('/').split('/')[2:]
        method = environ['REQUEST_METHOD']
        try:
            n = int(environ.get('CONTENT_LENGTH') or 0)
            raw = environ['wsgi.input'].read(n) if n else b''
            try:
                body = json.loads(raw or b'{}')
            except ValueError as e:
                return reply(start_response, '400 Bad Request',
                             {'error': 'body is not JSON: %s' % e})
            if not isinstance(body, dict):
                return reply(start_response, '400 Bad Request',
                             {'error': 'body must be a JSON object'})
            if path == ['state'] and method == 'GET':
                return reply(start_response, '200 OK', info())
            if path == ['guests'] and method == 'GET':
                return reply(start_response, '200 OK', {'guests': {
                    h: list(_driver_guests(s))
                    for h, s in sorted(box.computes.items())}})
            if (len(path) == 3 and path[0] == 'computes' and
                    method == 'POST' and path[2] in ('stop', 'start', 'hang')):
                code, res = compute_action(path[1], path[2], body)
                return reply(start_response, code, res)
            if (len(path) == 3 and path[0] == 'computes' and
                    path[2] == 'guests' and method == 'GET'):
                svc = box.computes.get(path[1])
                if svc is None:
                    return reply(start_response, '404 Not Found',
                                 {'error': 'no compute %s' % path[1]})
                g = _driver_guests(svc)
                return reply(start_response, '200 OK', {
                    'host': path[1], 'running': _running(svc),
                    'guests': list(g), 'power_states': g,
                    'volumes': _driver_volumes(svc)})
            if (len(path) == 3 and path[0] == 'instances' and
                    path[2] == 'db' and method == 'POST'):
                uuid = path[1]
                allowed = {'task_state', 'vm_state', 'power_state',
                           'updated_at', 'host', 'node', 'launched_at'}
                bad = set(body) - allowed
                if bad or not body:
                    return reply(start_response, '400 Bad Request',
                                 {'error': 'columns not allowed: %s (allowed:'
                                  ' %s)' % (sorted(bad), sorted(allowed))})
                eng = _cell_engine(box)
                sets = ', '.join('%s = :%s' % (k, k) for k in body)
                with eng.begin() as conn:
                    r = conn.execute(sa.text(
                        'UPDATE instances SET %s WHERE uuid = :uuid' % sets),
                        dict(body, uuid=uuid))
                return reply(start_response, '200 OK',
                             {'uuid': uuid, 'rows': r.rowcount})
            if path and path[0] == 'faults':
                if len(path) == 1 and method == 'GET':
                    return reply(start_response, '200 OK',
                                 {'faults': faults.list()})
                if len(path) == 1 and method == 'POST':
                    try:
                        f = faults.add(body)
                    except (ValueError, re.error) as e:
                        return reply(start_response, '400 Bad Request',
                                     {'error': str(e)})
                    return reply(start_response, '200 OK', f)
                if method == 'DELETE' and len(path) <= 2:
                    fid = int(path[1]) if len(path) == 2 else None
                    return reply(start_response, '200 OK',
                                 {'cleared': faults.clear(fid)})
            return reply(start_response, '404 Not Found',
                         {'error': 'no such control call: %s %s'
                          % (method, environ['PATH_INFO'])})
        except Exception as e:  # pragma: no cover
            LOG.exception('control API error')
            return reply(start_response, '500 Internal Server Error',
                         {'error': repr(e)})
    return app


def _url_host(addr):
    if addr in ('0.0.0.0', ''):
        return '127.0.0.1'
    return '[%s]' % addr if ':' in addr else addr


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_state(path, state):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(state, f, indent=2, default=str)
    os.replace(tmp, path)


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--bind', default='10.200.0.1',
                   help='address of the compute API and placement')
    p.add_argument('--port', type=int, default=8774)
    p.add_argument('--placement-port', type=int, default=8778,
                   help='0 = do not serve placement over HTTP')
    p.add_argument('--hosts', default='compute1,compute2,compute3',
                   help='comma-separated nova-compute host names')
    p.add_argument('--state-dir', default='.',
                   help='sqlite files go here (re-created at start)')
    p.add_argument('--state-file', default=None,
                   help='written when ready (default STATE_DIR/state.json)')
    p.add_argument('--log-file', default=None,
                   help="nova's log (default STATE_DIR/nova.log)")
    p.add_argument('--driver', default='fake.FakeDriver',
                   help='nova compute_driver (fake.FakeDriver has 1000 vcpus)')
    p.add_argument('--report-interval', type=int, default=2)
    p.add_argument('--service-down-time', type=int, default=6)
    p.add_argument('--periodic', action='store_true',
                   help='enable nova periodic tasks (off in nova tests)')
    p.add_argument('--debug', action='store_true')
    p.add_argument('--sqlite-timeout', type=int, default=60)
    p.add_argument('--no-db-write-lock', dest='db_write_lock',
                   action='store_false',
                   help="don't serialize writer transactions per sqlite DB "
                   "(nova's DatabaseWriteLock fixture); without it oslo.db's "
                   "deferred BEGIN gives 'database is locked' under load")
    p.add_argument('--max-concurrent-builds', type=int, default=10)
    p.add_argument('--response-validation', default='ignore',
                   choices=['ignore', 'warn', 'error'])
    p.add_argument('--all-placement-reads', action='store_true',
                   help="keep nova's O(N) allocation reads on every "
                   "resource-tracker update (slow with many servers/host)")
    p.add_argument('--busy-poll', action='store_true',
                   help="keep oslo.messaging fake driver's 50ms polling")
    p.add_argument('--cinder-url', default='',
                   help="a real cinder's block-storage v3 endpoint (no "
                   "keystone: token admin:admin); default: nova's in-process "
                   "CinderFixture")
    p.add_argument('--libvirt-uri', default='',
                   help="real guests: flavors with lab:guest=qemu get a qemu "
                   "domain on this libvirt URI ({host}: the nova host)")
    p.add_argument('--guest-kernel', default='',
                   help='the real guests\' kernel (an ELF vmlinux)')
    p.add_argument('--guest-initrd', default='')
    p.add_argument('--guest-cmdline', default='console=ttyS0')
    p.add_argument('--exit-with-pid', type=int, default=0,
                   help='exit (as on SIGTERM) once this process is gone '
                   '(a test runner killed without cleanup leaks no box)')
    args = p.parse_args()
    if args.libvirt_uri and not (args.guest_kernel and args.guest_initrd):
        p.error('--libvirt-uri needs --guest-kernel and --guest-initrd')
    args.hosts = [h.strip() for h in args.hosts.split(',') if h.strip()]
    if not args.hosts or len(set(args.hosts)) != len(args.hosts):
        p.error('--hosts: one or more distinct names')
    if args.placement_port and args.placement_port == args.port:
        p.error('--port and --placement-port must differ')
    args.state_dir = os.path.abspath(args.state_dir)
    os.makedirs(args.state_dir, exist_ok=True)
    args.state_file = os.path.abspath(
        args.state_file or os.path.join(args.state_dir, 'state.json'))
    args.log_file = os.path.abspath(
        args.log_file or os.path.join(args.state_dir, 'nova.log'))
    ARGS = args
    t_start = time.time()
    try:
        os.unlink(args.state_file)
    except FileNotFoundError:
        pass

    nova_srv = bind(args.bind, args.port, 'nova')
    place_srv = (bind(args.bind, args.placement_port, 'placement')
                 if args.placement_port else None)
    print('novabox: pid %d, ports bound, building nova for hosts %s'
          % (os.getpid(), ','.join(args.hosts)), flush=True)

    try:
        box = build()
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # atexit would hang joining nova's worker threads

    # nova's StandardLogging fixture logs into an in-memory buffer: send it
    # to a file instead so a long-running box does not grow without bound.
    root = logging.getLogger()
    logf = open(args.log_file, 'a', buffering=1)
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler):
            h.setStream(logf)
            h.setLevel(logging.DEBUG if args.debug else logging.INFO)
    box.stdlog.delete_stored_logs()
    # nova's test logging formats every DEBUG record (NullHandler) to catch
    # broken log calls; that costs CPU, so stop it unless --debug.
    if not args.debug:
        root.setLevel(logging.INFO)

    host = _url_host(args.bind)
    faults = Faults()

    def info():
        from nova import context, objects
        ctxt = context.get_admin_context()
        svcs = []
        with context.target_cell(ctxt, box.cell_mappings['cell1']) as cctxt:
            for s in objects.ServiceList.get_all(cctxt):
                svcs.append({'id': s.uuid, 'binary': s.binary,
                             'host': s.host, 'forced_down': s.forced_down,
                             'disabled': s.disabled})
        return {
            'pid': os.getpid(),
            'bind': args.bind,
            'port': args.port,
            'placement_port': args.placement_port,
            'compute_url': 'http://%s:%d/v2.1' % (host, args.port),
            'control_url': 'http://%s:%d/novabox' % (host, args.port),
            'placement_url': ('http://%s:%d' % (host, args.placement_port)
                              if args.placement_port else None),
            'hosts': args.hosts,
            'computes': {h: _running(c) for h, c in box.computes.items()},
            'services': svcs,
            'db_files': box.db_files,
            'log_file': args.log_file,
            'faults': faults.list(),
        }

    serve(nova_srv, Dispatcher(FakeAuth(box.api_fixture.app()),
                               make_control(box, info, faults), faults))
    if place_srv is not None:
        from placement import deploy
        serve(place_srv,
              deploy.loadapp(box.placement_fixture.conf_fixture.conf))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())

    state = info()
    state['startup_seconds'] = round(time.time() - t_start, 2)
    _write_state(args.state_file, state)
    LOG.info('novabox ready in %.1fs: %s', state['startup_seconds'],
             state['compute_url'])
    print('NOVABOX READY %s' % json.dumps(state, default=str), flush=True)

    while not stop.wait(0.5):
        if args.exit_with_pid and not _pid_alive(args.exit_with_pid):
            LOG.info('novabox: pid %d is gone', args.exit_with_pid)
            break
    LOG.info('novabox: shutting down')
    print('novabox: shutting down', flush=True)
    for s in (nova_srv, place_srv):
        if s is not None:
            s.shutdown()
            s.server_close()
    # nova's fixture cleanups may wait on RPC executor threads; the state is
    # throwaway (the sqlite files are re-created at next start): 1.5 s.
    t = threading.Thread(target=box.doCleanups, daemon=True)
    t.start()
    t.join(1.5)
    try:
        with open(args.state_file) as f:
            if json.load(f).get('pid') == os.getpid():
                os.unlink(args.state_file)
    except (OSError, ValueError):
        pass
    pid_file = os.path.join(args.state_dir, 'novabox.pid')  # nova_env's
    try:
        with open(pid_file) as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(pid_file)
    except OSError:
        pass
    print('novabox: exit', flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == '__main__':
    main()
