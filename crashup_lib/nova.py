"""The compute API as crashup needs it: plain REST over a keystoneauth1 session, plain frozen results, typed errors.

Why not openstacksdk or novaclient: a fence agent imports this module on every fencing, so it stays light
(keystoneauth1 is imported when a Nova is built, openstacksdk only by from_config to read clouds.yaml), and each
call here states exactly which nova behaviour it relies on (notes/nova.md):
  - evacuate is refused with 400 while the source service is up: force it down first (2.53+ PUT /os-services/{id});
  - evacuate at >= 2.95 leaves servers SHUTOFF on the new host, below that they come back in their old state;
  - forced_down=false is refused (400) while `done` evacuations remain: the source nova-compute must start first;
  - ?host= on /servers is admin-only and silently ignored for others (and openstacksdk's servers(host=) filters
    client-side on an empty field): the host of every server returned is checked here.

Every method is bounded by `timeout` seconds as a whole (pages and look-ups included); nothing is retried here:
the caller decides. Failures raise NovaError subclasses with one line naming the call, the host or server, the HTTP
status and nova's own message; never a token.
"""
from __future__ import annotations

import dataclasses
import re
import time
from datetime import datetime, timezone
from typing import Any

from crashup_lib import osapi
from crashup_lib.log import redact
from crashup_lib.osapi import cloud_session

SERVICES_MV = "2.53"         # service ids are UUIDs; PUT /os-services/{id} (forced_down, status) exists
SERVERS_MV = "2.98"          # 2.26 tags, 2.47 flavor with extra_specs embedded, 2.98 image properties embedded
MIGRATIONS_MV = "2.80"       # 2.59 paging and changes-since, 2.80 user/project ids
AGGREGATES_MV = "2.41"       # aggregate uuids
ACTIONS_MV = "2.1"           # os-start, os-stop, os-resetState: unchanged since 2.1
EVACUATE_STOPPED = "2.95"    # nova >= 2.95: an evacuated server ends SHUTOFF on its new host (nova's current default)
EVACUATE_KEEP_POWER = "2.94"  # 2.68..2.94: it ends as it was (ACTIVE stays ACTIVE); no "force" flag since 2.68
EVACUATE_MIN = "2.14"        # below 2.14 the caller had to tell nova about shared storage (onSharedStorage)
LIVE_MIGRATE_MV = "2.68"     # 2.25 block_migration "auto", 2.68 no "force" (the scheduler always checks the target)
MIGRATE_MV = "2.56"          # cold migration to a chosen host
REBUILD_MV = "2.93"          # 2.93 a volume-backed server's root volume is re-imaged too
PAGE = 1000                  # nova's default osapi_max_limit


# --- errors ----------------------------------------------------------------------------------------------------------

class NovaError(Exception):
    """A failed compute API call. str() is one line: 'nova <call> <target>: HTTP <status>: <nova's message>'."""

    def __init__(self, call: str, target: str | None, detail: str, status: int | None = None,
                 nova_message: str = "", request_id: str | None = None):
        self.call, self.target, self.status = call, target, status
        self.nova_message, self.request_id = nova_message, request_id
        where = f"nova {call}" + (f" {target}" if target else "")
        super().__init__(redact(" ".join(f"{where}: {detail}".split())))


class NovaBadRequest(NovaError):
    """400: nova refuses the request as such (e.g. evacuating from a host that is up, clearing forced_down while
    `done` evacuations remain for the host)."""


class NovaNotFound(NovaError):
    """404, or no such service."""


class NovaConflict(NovaError):
    """409: the server or service is in a state that does not allow it now (e.g. a task in progress)."""


class NovaUnavailable(NovaError):
    """5xx, a timeout, a refused connection: nova did not decide anything we know of."""


def _error_class(status: int | None) -> type[NovaError]:
    return {osapi.BAD_REQUEST: NovaBadRequest, osapi.NOT_FOUND: NovaNotFound, osapi.CONFLICT: NovaConflict,
            osapi.UNAVAILABLE: NovaUnavailable}.get(osapi.status_kind(status), NovaError)


# --- results ---------------------------------------------------------------------------------------------------------

def _unhashed(**kw):
    return dataclasses.field(hash=False, **kw)      # dict fields: the record stays hashable by its other fields


@dataclasses.dataclass(frozen=True)
class Service:
    id: str
    host: str
    binary: str
    state: str                      # up | down (forced_down makes it down at once)
    status: str                     # enabled | disabled
    forced_down: bool
    disabled_reason: str | None
    updated_at: str | None


@dataclasses.dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str                     # ACTIVE, SHUTOFF, ERROR, REBUILD, ...
    task_state: str | None
    vm_state: str | None
    power_state: int | None         # nova's codes: 1 running, 4 shutdown, ...
    host: str | None
    flavor: dict = _unhashed()      # at >= 2.47: original_name, vcpus, ram, disk, ..., extra_specs
    image_id: str | None = None     # None: volume-backed
    metadata: dict = _unhashed(default_factory=dict)
    tags: tuple[str, ...] = ()
    updated_at: str | None = None
    project_id: str | None = None
    image_properties: dict = _unhashed(default_factory=dict)   # at >= 2.98 only (else empty)


@dataclasses.dataclass(frozen=True)
class Migration:
    id: int
    server_id: str
    source_compute: str | None
    dest_compute: str | None
    status: str                     # evacuation: accepted, pre-migrating, done (then completed, failed, error)
    migration_type: str
    created_at: str | None
    updated_at: str | None


@dataclasses.dataclass(frozen=True)
class Aggregate:
    id: int
    name: str
    hosts: tuple[str, ...]
    metadata: dict = _unhashed()
    availability_zone: str | None = None


def _service(d: dict) -> Service:
    return Service(id=str(d.get("id")), host=d.get("host") or "", binary=d.get("binary") or "",
                   state=d.get("state") or "", status=d.get("status") or "", forced_down=bool(d.get("forced_down")),
                   disabled_reason=d.get("disabled_reason"), updated_at=d.get("updated_at"))


def _server(d: dict) -> Server:
    image = d.get("image") or {}                   # "" for a volume-backed server
    return Server(id=d["id"], name=d.get("name") or "", status=d.get("status") or "",
                  task_state=d.get("OS-EXT-STS:task_state"), vm_state=d.get("OS-EXT-STS:vm_state"),
                  power_state=d.get("OS-EXT-STS:power_state"), host=d.get("OS-EXT-SRV-ATTR:host"),
                  flavor=d.get("flavor") or {}, image_id=image.get("id") if isinstance(image, dict) else None,
                  metadata=d.get("metadata") or {}, tags=tuple(d.get("tags") or ()), updated_at=d.get("updated"),
                  project_id=d.get("tenant_id"),
                  image_properties=(image.get("properties") or {}) if isinstance(image, dict) else {})


def _migration(d: dict) -> Migration:
    return Migration(id=d.get("id"), server_id=d.get("instance_uuid") or "", source_compute=d.get("source_compute"),
                     dest_compute=d.get("dest_compute"), status=d.get("status") or "",
                     migration_type=d.get("migration_type") or "", created_at=d.get("created_at"),
                     updated_at=d.get("updated_at"))


def _aggregate(d: dict) -> Aggregate:
    return Aggregate(id=d.get("id"), name=d.get("name") or "", hosts=tuple(d.get("hosts") or ()),
                     metadata=d.get("metadata") or {}, availability_zone=d.get("availability_zone"))


# --- microversions ---------------------------------------------------------------------------------------------------

def _mv(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def _mv_str(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def evacuate_microversion(keep_power_state: bool) -> str:
    """The microversion to evacuate at: EVACUATE_KEEP_POWER to have servers come back in the power state they had
    (an ACTIVE one stays ACTIVE), else EVACUATE_STOPPED (nova's current behaviour: all SHUTOFF)."""
    return EVACUATE_KEEP_POWER if keep_power_state else EVACUATE_STOPPED


def evacuate_leaves_stopped(microversion: str | None) -> bool:
    """Whether nova leaves a server evacuated at `microversion` SHUTOFF on its new host (>= EVACUATE_STOPPED; below
    it the server keeps its state). None or "latest" is the newest, which does. ValueError unless 'X.Y'."""
    text = str(microversion or "latest").strip().lower()
    if text == "latest":
        return True
    if not re.fullmatch(r"\d+\.\d+", text):
        raise ValueError(f"microversion {microversion!r} is not 'X.Y' or 'latest'")
    return _mv(text) >= _mv(EVACUATE_STOPPED)


# --- the client (session, adapter and error messages: osapi.py, shared with the block-storage client) ---------------

class Nova:
    def __init__(self, session, *, interface: str | None = "internal", region_name: str | None = None,
                 timeout: float = 30.0, endpoint_override: str | None = None):
        """`session`: a keystoneauth1 Session (its auth plugin finds the compute endpoint in the catalog, unless
        `endpoint_override`). `timeout`: bound on each method, in seconds."""
        # no retries below us: a retry of a POST is the caller's decision (evacuate twice is not harmless)
        self._api = osapi.adapter(session, "compute", interface=interface, region_name=region_name,
                                  endpoint_override=endpoint_override)
        self.timeout = float(timeout)
        self._max: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg) -> "Nova":
        """From a crashup Config: the clouds.yaml entry `cloud` (OS_CLIENT_CONFIG_FILE honoured, secure.yaml too),
        region_name, interface, api_timeout."""
        session, region = cloud_session(cfg, lambda why: NovaError("config", f"cloud {cfg.cloud!r}", why))
        return cls(session, interface=region.get_interface("compute") or cfg.interface,
                   region_name=region.get_region_name("compute") or cfg.region_name or None,
                   timeout=cfg.api_timeout, endpoint_override=region.get_endpoint("compute"))

    # -- plumbing ----------------------------------------------------------------------------------------------------
    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _request(self, call: str, target: str | None, method: str, path: str, *, deadline: float,
                 microversion: tuple[int, int] | None = None, body: Any = None,
                 params: dict | None = None) -> Any:
        """One HTTP request within what is left of `deadline`; the decoded JSON body (None when empty)."""
        from keystoneauth1 import exceptions as ks_exc      # with the session: the agents' idle paths never load it
        left = deadline - time.monotonic()
        if left <= 0:
            raise NovaUnavailable(call, target, f"no answer within {self.timeout:g}s")
        kwargs: dict[str, Any] = {}
        if microversion is not None:
            kwargs.update(microversion=_mv_str(microversion), microversion_service_type="compute")
        try:
            resp = self._api.request(path, method, json=body, params=params, raise_exc=False, timeout=left,
                                     **kwargs)
        except ks_exc.ClientException as e:
            failure = osapi.transport_failure(e, timeout=self.timeout, where=self._where())
            kind = NovaUnavailable if failure.unavailable else _error_class(failure.status)
            raise kind(call, target, failure.detail, status=failure.status) from None
        request_id = resp.headers.get("x-openstack-request-id") or resp.headers.get("x-compute-request-id")
        if resp.status_code >= 400:
            message = osapi.error_message(resp)
            raise _error_class(resp.status_code)(call, target, f"HTTP {resp.status_code}: {message}",
                                                 status=resp.status_code, nova_message=message,
                                                 request_id=request_id)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise NovaError(call, target, f"HTTP {resp.status_code} with a body that is not JSON",
                            status=resp.status_code, request_id=request_id) from None

    def _where(self) -> str:
        return osapi.endpoint(self._api, "the compute endpoint")

    def _negotiate(self, call: str, target: str | None, wanted: str, deadline: float,
                   needed: str | None = None) -> tuple[int, int]:
        """min(endpoint's max, wanted); NovaError when that is below what the call `needed`."""
        if self._max is None:
            self._discover(call, target, deadline)
        chosen = min(self._max, _mv(wanted))
        if needed and chosen < _mv(needed):
            why = f"asked for {wanted}" if _mv(wanted) < _mv(needed) else \
                f"the endpoint offers up to {_mv_str(self._max)}"
            raise NovaError(call, target, f"needs compute API microversion >= {needed}; {why}")
        return chosen

    def _discover(self, call: str, target: str | None, deadline: float) -> None:
        # the versioned endpoint answers its own version document: {"version": {"version": "2.104", ...}}
        doc = self._request(call, target, "GET", "/", deadline=deadline) or {}
        version = doc.get("version")
        if not isinstance(version, dict):        # an unversioned endpoint lists them all
            version = next((v for v in doc.get("versions") or () if v.get("id") == "v2.1"), None)
        if not isinstance(version, dict):
            raise NovaError(call, target, f"{self._where()} is not a compute API v2.1 endpoint (no version document)")
        self._max = _mv(version.get("version") or "2.1")   # "" on a legacy v2.0 endpoint: no microversions

    @property
    def max_microversion(self) -> str:
        """The endpoint's highest microversion (read once, on first use)."""
        if self._max is None:
            self._discover("version", None, self._deadline())
        return _mv_str(self._max)

    # -- services ----------------------------------------------------------------------------------------------------
    def services(self, host: str | None = None, binary: str | None = "nova-compute") -> list[Service]:
        return self._services("services", host, binary, self._deadline())

    def _services(self, call, host, binary, deadline) -> list[Service]:
        params = {k: v for k, v in (("host", host), ("binary", binary)) if v}
        mv = self._negotiate(call, host, SERVICES_MV, deadline)
        doc = self._request(call, host, "GET", "/os-services", deadline=deadline, microversion=mv, params=params)
        # filter again here: an exact host, whatever the server-side filter does with case or empty values
        return [s for s in map(_service, doc.get("services") or ())
                if (host is None or s.host == host) and (binary is None or s.binary == binary)]

    def service(self, host: str, binary: str = "nova-compute") -> Service:
        """The one `binary` service of `host`; NovaNotFound when there is none, NovaError when several."""
        return self._one_service("service", host, binary, self._deadline())

    def _one_service(self, call, host, binary, deadline) -> Service:
        found = self._services(call, host, binary, deadline)
        if not found:
            raise NovaNotFound(call, host, f"no {binary} service on host {host!r}")
        if len(found) > 1:
            raise NovaError(call, host, f"{len(found)} {binary} services on host {host!r} "
                            f"({', '.join(s.id for s in found)}): refusing to pick one")
        return found[0]

    def _update_service(self, call: str, host: str, body: dict) -> Service:
        deadline = self._deadline()
        mv = self._negotiate(call, host, SERVICES_MV, deadline, needed=SERVICES_MV)
        svc = self._one_service(call, host, "nova-compute", deadline)
        doc = self._request(call, host, "PUT", f"/os-services/{svc.id}", deadline=deadline, microversion=mv,
                            body=body)
        return _service((doc or {}).get("service") or {})

    def force_down(self, host: str, down: bool = True) -> Service:
        """Mark host's nova-compute forced down (down at once, no wait for service_down_time) or clear the mark.
        Clearing raises NovaBadRequest while `done` evacuations from the host remain: nova wants the source
        nova-compute started first (its start-up destroys the evacuated guests and marks them `completed`)."""
        return self._update_service("force_down" if down else "force_up", host, {"forced_down": bool(down)})

    def disable(self, host: str, reason: str) -> Service:
        return self._update_service("disable", host, {"status": "disabled", "disabled_reason": reason})

    def enable(self, host: str) -> Service:
        return self._update_service("enable", host, {"status": "enabled"})

    # -- servers -----------------------------------------------------------------------------------------------------
    def servers_on_host(self, host: str) -> list[Server]:
        """Every server nova places on `host`, all projects (admin only), all pages."""
        deadline = self._deadline()
        mv = self._negotiate("servers_on_host", host, SERVERS_MV, deadline)
        found: dict[str, Server] = {}
        params: dict[str, Any] = {"host": host, "all_tenants": "1", "limit": PAGE}
        while True:
            doc = self._request("servers_on_host", host, "GET", "/servers/detail", deadline=deadline,
                                microversion=mv, params=params) or {}
            page = doc.get("servers") or []
            for d in page:
                # without the admin role nova drops ?host= and hides hosts: this would be every server of the
                # project, not the host's. A server without its host (or a down cell's stub) stops us too.
                if "OS-EXT-SRV-ATTR:host" not in d:
                    raise NovaError("servers_on_host", host, "nova answered without server hosts: the credentials "
                                    "lack the admin role (or a cell is down)")
                if d["OS-EXT-SRV-ATTR:host"] == host:
                    found.setdefault(d["id"], _server(d))
            if not page or not any(link.get("rel") == "next" for link in doc.get("servers_links") or ()):
                return list(found.values())
            params["marker"] = page[-1]["id"]

    def server(self, server_id: str) -> Server:
        deadline = self._deadline()
        mv = self._negotiate("server", server_id, SERVERS_MV, deadline)
        doc = self._request("server", server_id, "GET", f"/servers/{server_id}", deadline=deadline, microversion=mv)
        return _server(doc["server"])

    def _action(self, call: str, server_id: str, body: dict, wanted: str = ACTIONS_MV,
                needed: str | None = None) -> None:
        deadline = self._deadline()
        mv = self._negotiate(call, server_id, wanted, deadline, needed=needed)
        self._request(call, server_id, "POST", f"/servers/{server_id}/action", deadline=deadline, microversion=mv,
                      body=body)

    def evacuate(self, server_id: str, target_host: str | None = None, microversion: str | None = None) -> None:
        """Ask nova to rebuild the server on another host (nova's scheduler picks it when target_host is None).
        Returns when nova accepted it (202); the caller polls server() / migrations() for the end.
        microversion: the wanted one, default EVACUATE_STOPPED (2.95: the server ends SHUTOFF); EVACUATE_KEEP_POWER
        (2.94) keeps an ACTIVE server ACTIVE. The source service must be down (force_down), else NovaBadRequest."""
        body = {"host": target_host} if target_host else {}    # no "force": it bypassed the scheduler's checks
        self._action("evacuate", server_id, {"evacuate": body}, wanted=microversion or EVACUATE_STOPPED,
                     needed=EVACUATE_MIN)

    def reset_state(self, server_id: str, state: str = "active") -> None:
        """os-resetState: vm_state to `state` and the task cleared (what a stuck task needs; the host is unchanged)."""
        if state not in ("active", "error"):
            raise ValueError(f"reset_state: state must be 'active' or 'error', not {state!r}")
        self._action("reset_state", server_id, {"os-resetState": {"state": state}})

    def start(self, server_id: str) -> None:
        self._action("start", server_id, {"os-start": None})

    def stop(self, server_id: str) -> None:
        self._action("stop", server_id, {"os-stop": None})

    def reboot(self, server_id: str, hard: bool = True) -> None:
        """A HARD reboot (nova destroys the guest and starts it again, from any power state: a crashed or killed
        guest too) or a SOFT one (asks the guest OS). Accepted (202); nova's task_state shows it until done."""
        self._action("reboot", server_id, {"reboot": {"type": "HARD" if hard else "SOFT"}})

    # -- moving and rebuilding (the operator verbs: crashup drain, restore) ------------------------------------------
    def live_migrate(self, server_id: str, target_host: str | None = None) -> None:
        """os-migrateLive, block migration "auto" (nova picks it from the storage); the scheduler checks the target
        (no "force" since 2.68). Accepted (202): follow it in migrations(migration_type="live-migration")."""
        self._action("live_migrate", server_id, {"os-migrateLive": {"host": target_host, "block_migration": "auto"}},
                     wanted=LIVE_MIGRATE_MV, needed="2.25")

    def migrate(self, server_id: str, target_host: str | None = None) -> None:
        """Cold migration (a resize to the same flavor): the server ends VERIFY_RESIZE on its new host until
        confirm_resize(); a stopped server stays stopped. A target host needs 2.56."""
        body = {"host": target_host} if target_host else None
        self._action("migrate", server_id, {"migrate": body}, wanted=MIGRATE_MV,
                     needed=MIGRATE_MV if target_host else None)

    def confirm_resize(self, server_id: str) -> None:
        self._action("confirm_resize", server_id, {"confirmResize": None})

    def rebuild(self, server_id: str, image_id: str) -> None:
        """Rebuild the server from `image_id` where it is: same id, ports (addresses), attached volumes, flavor and
        key; a volume-backed root is re-imaged (2.93+)."""
        self._action("rebuild", server_id, {"rebuild": {"imageRef": image_id}}, wanted=REBUILD_MV)

    def set_metadata(self, server_id: str, key: str, value: str) -> None:
        deadline = self._deadline()
        self._request("set_metadata", server_id, "PUT", f"/servers/{server_id}/metadata/{key}", deadline=deadline,
                      body={"meta": {key: value}})

    def delete_metadata(self, server_id: str, key: str) -> None:
        """Idempotent: a key already gone is fine (a missing server still raises NovaNotFound)."""
        try:
            self._request("delete_metadata", server_id, "DELETE", f"/servers/{server_id}/metadata/{key}",
                          deadline=self._deadline())
        except NovaNotFound:
            if key in self.server(server_id).metadata:
                raise

    def image(self, image_id: str) -> dict:
        """An image as nova's image proxy shows it ({id, name, status, ...}); NovaNotFound when there is none.
        The proxy exists up to 2.35 (read only: crashup only checks an image before it rebuilds from it)."""
        deadline = self._deadline()
        doc = self._request("image", image_id, "GET", f"/images/{image_id}", deadline=deadline,
                            microversion=(2, 1)) or {}
        return doc.get("image") or {}

    # -- migrations, aggregates --------------------------------------------------------------------------------------
    def migrations(self, server_id: str | None = None, source_compute: str | None = None,
                   migration_type: str | None = "evacuation",
                   changes_since: datetime | str | None = None) -> list[Migration]:
        """Migration records, newest first (nova's order). These are the ledger of a recovery: one `evacuation`
        record per evacuate call, `done` when rebuilt elsewhere, `completed` once the source host has cleaned up."""
        target = server_id or source_compute
        deadline = self._deadline()
        mv = self._negotiate("migrations", target, MIGRATIONS_MV, deadline)
        params: dict[str, Any] = {k: v for k, v in (("instance_uuid", server_id), ("source_compute", source_compute),
                                                    ("migration_type", migration_type)) if v}
        if changes_since is not None:
            if mv < (2, 59):
                raise NovaError("migrations", target, "changes_since needs compute API microversion >= 2.59")
            if isinstance(changes_since, datetime):
                if changes_since.tzinfo is None:       # nova's times are UTC
                    changes_since = changes_since.replace(tzinfo=timezone.utc)
                changes_since = changes_since.isoformat()
            params["changes-since"] = changes_since
        paged = mv >= (2, 59)                          # before 2.59 one answer holds them all
        if paged:
            params["limit"] = PAGE
        found: list[Migration] = []
        seen: set = set()
        while True:
            doc = self._request("migrations", target, "GET", "/os-migrations", deadline=deadline, microversion=mv,
                                params=params) or {}
            page = doc.get("migrations") or []
            for d in page:
                if d.get("id") not in seen:
                    seen.add(d.get("id"))
                    found.append(_migration(d))
            if not paged or not page or not any(link.get("rel") == "next"
                                                for link in doc.get("migrations_links") or ()):
                return found
            params["marker"] = page[-1]["uuid"]        # 2.59+: the marker is the migration's uuid

    def aggregates(self) -> list[Aggregate]:
        deadline = self._deadline()
        mv = self._negotiate("aggregates", None, AGGREGATES_MV, deadline)
        doc = self._request("aggregates", None, "GET", "/os-aggregates", deadline=deadline, microversion=mv) or {}
        return [_aggregate(d) for d in doc.get("aggregates") or ()]
