"""The sweep's wiring: from configuration ([sweep], [openstack]) to what a round needs: the sweepers (each
service's databases and API client), the Health Collector's routes (its backends per service) and the orphan
finders. Nothing here connects to anything: databases and API clients are built on first use (SQLAlchemy,
keystoneauth1, openstacksdk and libvirt-python are imported then, so the agent's validate-all pays for none).
"""
from __future__ import annotations

from typing import Any, Callable

from crashup_lib import config as _config
from crashup_lib import health, log, nova
from crashup_lib.health import HealthError
from crashup_lib.sweep import fix, orphans as _orphans
from crashup_lib.cinder import CinderApi
from crashup_lib.sweep.cinder import CinderSweeper
from crashup_lib.sweep.db import Database
from crashup_lib.sweep.glance import GlanceSweeper
from crashup_lib.sweep.neutron import NeutronSweeper
from crashup_lib.sweep.nova import NovaSweeper
from crashup_lib.sweep.sweep import error_line

SERVICES = ("nova", "cinder", "glance", "neutron")

_log = log.get("sweep")


def connections(cfg, service: str) -> tuple[str, ...]:
    """The service's database URLs from <service>_connection or the file <service>_connection_file (URLs
    separated by blanks or lines, '#' comments). ConfigError, one line, when both are set or the file is bad."""
    inline, path = cfg[f"{service}_connection"], cfg[f"{service}_connection_file"]
    if inline and path:
        raise _config.ConfigError(f"config: set {service}_connection or {service}_connection_file, not both")
    if not path:
        return tuple(inline)
    text = _config.read_text(path, f"config: {service}_connection_file")
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    try:
        urls = _config.database_urls().parse(text)
    except ValueError as e:
        raise _config.ConfigError(f"config: {service}_connection_file = {path!r} holds something else than "
                                  f"{e}") from None
    if not urls:
        raise _config.ConfigError(f"config: {service}_connection_file = {path!r} holds no URL")
    return urls


class _Lazy:
    """An API client built on first use: a sweep that changes nothing through it (dry run, nothing stuck, no
    backend) needs no clouds.yaml; a failure to build it is then one resource's error, raised again next time."""

    def __init__(self, build: Callable[[], Any]):
        self._build, self._client = build, None

    def __getattr__(self, name: str):
        if self._client is None:
            self._client = self._build()
        return getattr(self._client, name)


def sweepers_from_config(cfg) -> list[tuple[str, Callable[[], fix.Sweeper]]]:
    """(service, factory) for each configured service; a factory's Sweeper is kept once built (reflected
    tables), a failing one is tried again next round. ConfigError when no service is configured."""
    found = []
    timeout = cfg.db_timeout
    for service in SERVICES:
        urls = connections(cfg, service)
        if not urls:
            continue
        if service != "nova" and len(urls) > 1:
            raise _config.ConfigError(f"config: {service}_connection: one URL, not {len(urls)}")
        if service == "nova":
            def make(urls=urls):
                cells = [Database(u, name=f"nova db {i}" if len(urls) > 1 else "nova db", timeout=timeout)
                         for i, u in enumerate(urls)]
                return NovaSweeper(cells, _Lazy(lambda: nova.Nova.from_config(cfg)))
        elif service == "cinder":
            def make(urls=urls):
                return CinderSweeper(Database(urls[0], name="cinder db", timeout=timeout),
                                     _Lazy(lambda: CinderApi.from_config(cfg)), cinder_observed(cfg))
        elif service == "glance":
            def make(urls=urls):
                return GlanceSweeper(Database(urls[0], name="glance db", timeout=timeout))
        else:
            def make(urls=urls):
                return NeutronSweeper(Database(urls[0], name="neutron db", timeout=timeout))
        found.append((service, _kept(make)))
    if not found:
        raise _config.ConfigError("config: the sweep has no database to sweep: set [sweep] nova_connection, "
                                  "cinder_connection, glance_connection or neutron_connection (or *_file)")
    return found


def _kept(make: Callable[[], fix.Sweeper]) -> Callable[[], fix.Sweeper]:
    box: list = []

    def get():
        if not box:
            box.append(make())
        return box[0]
    return get


def routes_from_config(cfg) -> dict:
    """The Health Collector's backends per service (cinder's per kind), from [sweep] and [openstack]. Only
    resource-level backends make a route (a host that is up says nothing about a guest)."""
    routes: dict = {}
    if cfg.libvirt_uri:
        try:
            heartbeat = health.NovaHeartbeatBackend(_Lazy(lambda: nova.Nova.from_config(cfg)),
                                                    timeout=cfg.api_timeout + 5)
            routes["nova"] = [heartbeat, health.LibvirtBackend(cfg.libvirt_uri)]
        except HealthError as e:
            _log.warning("sweep: nova instances are not observed: %s", error_line(e))
    if cfg.glance_datadirs:
        routes["glance"] = [health.GlanceFileBackend(cfg.glance_datadirs)]
    routes.update(cinder_routes(cfg))
    return routes


def _volume_connections(cfg):
    """The guest reader of volume connections (libvirt_uri), or None: not configured, or libvirt-python missing
    (one warning)."""
    if not cfg.libvirt_uri:
        return None
    try:
        return health.LibvirtVolumes(cfg.libvirt_uri)
    except HealthError as e:
        _log.warning("sweep: cinder volumes stuck attaching/detaching are not observed: %s", error_line(e))
        return None


def cinder_observed(cfg) -> frozenset:
    """The questions about stuck cinder resources the configured backends answer (health/cinder.py): the
    CinderSweeper leaves the others unobserved."""
    found = set()
    if cfg.cinder_volume_dirs:
        found.add(health.VOLUME_STORE)
    if cfg.libvirt_uri and _volume_connections(cfg) is not None:
        found.add(health.CONNECTION)
    if cfg.cinder_backup_dirs:
        found.add(health.BACKUP_STORE)
    return frozenset(found)


def cinder_routes(cfg, guests=None) -> dict:
    """cinder's routes: volumes and migrations through cinder-volume's heartbeat (os-services) and the volume
    files of cinder_volume_dirs; volumes stuck attaching/detaching through the instance's host (nova's heartbeat)
    and its guest's disks (`guests`, a health.GuestReader; default: libvirt_uri's); backups through
    cinder-backup's heartbeat and cinder_backup_dirs. A kind with nothing configured has no route."""
    routes: dict = {}
    api = _Lazy(lambda: CinderApi.from_config(cfg))
    services = health.CinderServiceBackend(api, timeout=cfg.api_timeout + 5)
    guests = guests if guests is not None else _volume_connections(cfg)
    volume = []
    if guests is not None:
        heartbeat = health.NovaHeartbeatBackend(_Lazy(lambda: nova.Nova.from_config(cfg)),
                                                timeout=cfg.api_timeout + 5)
        volume += [health.InstanceHeartbeatBackend(heartbeat), health.VolumeConnectionBackend(guests)]
    if cfg.cinder_volume_dirs:
        files = health.VolumeFileBackend(cfg.cinder_volume_dirs)
        volume.append(files)
        routes[("cinder", "volume_migration")] = [services, files]
    if volume:
        routes[("cinder", "volume")] = [services, *volume]
    if cfg.cinder_backup_dirs:
        routes[("cinder", "backup")] = [services, health.BackupFileBackend(cfg.cinder_backup_dirs)]
    return routes


def finders_from_config(cfg) -> dict:
    """The orphan finders per service: nova through libvirt_uri (the hosts of the instances and of the compute
    nodes), glance through glance_datadirs. None for a service whose listing is not configured."""
    finders: dict = {}
    if cfg.libvirt_uri:
        try:
            finders["nova"] = _orphans.NovaOrphans(health.LibvirtBackend(cfg.libvirt_uri),
                                                   extra_hosts=lambda sweeper: sweeper.compute_hosts())
        except HealthError as e:
            _log.warning("sweep: nova guests are not listed for orphans: %s", error_line(e))
    if cfg.glance_datadirs:
        finders["glance"] = _orphans.GlanceOrphans(health.GlanceFileBackend(cfg.glance_datadirs))
    return finders

