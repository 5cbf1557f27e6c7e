"""The block-storage API as crashup needs it: volumes, their attachments, cinder's services (host recovery, the
Health Collector), and os-reset_status (the sweep, host recovery's repair). Session, adapter and error lines are
osapi's, as nova's client's.

What each call relies on (cinder 29.0.0):
  - GET /volumes/{id} (admin): `os-vol-host-attr:host` (backend "host@backend#pool"), `migration_status`, and
    `attachments[]` listing only the *attached* attachment records, each with `host_name` (the compute host the
    connector named; shown to admins and services only);
  - GET /attachments/detail?all_tenants=1&instance_id= (>= 3.27, the new attach flow nova uses since 3.44): every
    attachment record of a server, whatever its status (reserved, attaching, attached, detaching, error_*), but
    without the host: the volume's record has it;
  - GET /os-services?binary=: binary, host, zone, status enabled|disabled, state up|down, updated_at.
Every method is bounded by `timeout` seconds as a whole (pages and look-ups included); nothing is retried here.
Cinder's JSON is read in one place (the parse_* functions), which never raise on a missing or mistyped field.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

from crashup_lib import osapi
from crashup_lib.log import error_line

VOLUMES_MV = "3.0"           # volume detail with os-vol-host-attr:host, migration_status, attachments[].host_name
ATTACHMENTS_MV = "3.44"      # the attachments API (3.27) as nova uses it (3.44: attachment complete)
SERVICES_MV = "3.0"
PAGE = 1000                  # cinder's default osapi_max_limit


class CinderError(Exception):
    """A failed block-storage API call, one line: 'cinder <call> <id>: HTTP <status>: <cinder's message>'.
    `unavailable`: a timeout, a refused connection, a 5xx (cinder decided nothing we know of)."""

    def __init__(self, call: str, target: str, detail: str, status: int | None = None, unavailable: bool = False):
        self.status = status
        self.unavailable = unavailable or osapi.status_kind(status) == osapi.UNAVAILABLE
        super().__init__(error_line(f"cinder {call} {target}: {detail}", 1000))


# --- records ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Attachment:
    id: str                             # the attachment record's id (volume_attachment.id)
    server_id: str | None               # nova's instance uuid
    host_name: str | None               # the compute host attached to (volume view, admin); None from /attachments
    attached_at: str | None
    volume_id: str = ""
    status: str = "attached"            # attachments API: reserved, attaching, attached, detaching, error_*


@dataclasses.dataclass(frozen=True)
class Volume:
    id: str
    status: str                         # available, in-use, attaching, detaching, reserved, error, ...
    attach_status: str | None           # attached | detached | None (not in the API view: derived, see parse)
    migration_status: str | None
    host: str | None                    # os-vol-host-attr:host: "host@backend#pool" of its cinder-volume
    bootable: bool
    size: int | None
    attachments: tuple[Attachment, ...] = ()
    name: str = ""
    multiattach: bool = False
    updated_at: str | None = None

    def attached_to(self, server_id: str) -> tuple[Attachment, ...]:
        return tuple(a for a in self.attachments if a.server_id == server_id)


@dataclasses.dataclass(frozen=True)
class VolumeService:
    binary: str                         # cinder-volume, cinder-scheduler, cinder-backup
    host: str                           # cinder-volume: "host@backend"
    zone: str | None
    status: str                         # enabled | disabled
    state: str                          # up | down
    updated_at: str | None
    disabled_reason: str | None = None

    @property
    def backend(self) -> str:
        """The host@backend part a volume's host ("host@backend#pool") starts with."""
        return self.host.partition("#")[0]


# --- parsing cinder's JSON (the one place; never raises) ------------------------------------------------------------

def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _bool(value: Any) -> bool:
    """cinder's booleans: bootable is the string "true"/"false" in the volume view, JSON true elsewhere."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value is True


def parse_attachment(d: Any, volume_id: str = "") -> Attachment | None:
    """One attachment, from a volume's attachments[] (attachment_id, server_id, host_name) or from the attachments
    API (id, instance, volume_id, status); None when it names no attachment id."""
    if not isinstance(d, dict):
        return None
    ident = _str(d.get("attachment_id")) if "attachment_id" in d else _str(d.get("id"))
    if ident is None:
        return None
    return Attachment(id=ident, server_id=_str(d.get("server_id")) or _str(d.get("instance")),
                      host_name=_str(d.get("host_name")), attached_at=_str(d.get("attached_at")),
                      volume_id=_str(d.get("volume_id")) or volume_id, status=_str(d.get("status")) or "attached")


def parse_volume(d: Any) -> Volume | None:
    """A volume's detail view -> Volume; None when it is not a volume (no id). attach_status is not in cinder's
    view: "attached" when it lists attachments, "detached" when it lists none and is not busy attaching, else None."""
    if not isinstance(d, dict) or _str(d.get("id")) is None:
        return None
    raw = d.get("attachments")
    attachments = tuple(a for a in (parse_attachment(x, d["id"]) for x in (raw if isinstance(raw, list) else ()))
                        if a is not None)
    status = _str(d.get("status")) or ""
    attach_status = "attached" if attachments else \
        ("detached" if status in ("available", "error", "creating") else None)
    return Volume(id=d["id"], status=status, attach_status=attach_status,
                  migration_status=_str(d.get("migration_status")) or _str(d.get("os-vol-mig-status-attr:migstat")),
                  host=_str(d.get("os-vol-host-attr:host")), bootable=_bool(d.get("bootable")),
                  size=_int(d.get("size")), attachments=attachments, name=_str(d.get("name")) or "",
                  multiattach=_bool(d.get("multiattach")), updated_at=_str(d.get("updated_at")))


def parse_service(d: Any) -> VolumeService | None:
    if not isinstance(d, dict) or _str(d.get("binary")) is None or _str(d.get("host")) is None:
        return None
    return VolumeService(binary=d["binary"], host=d["host"], zone=_str(d.get("zone")),
                         status=_str(d.get("status")) or "", state=_str(d.get("state")) or "",
                         updated_at=_str(d.get("updated_at")), disabled_reason=_str(d.get("disabled_reason")))


def _list(doc: Any, key: str) -> list:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, list) else []


def _has_next(doc: Any, key: str) -> bool:
    return any(isinstance(link, dict) and link.get("rel") == "next" for link in _list(doc, key + "_links"))


# --- the client ------------------------------------------------------------------------------------------------------

class CinderApi:
    """cinder's API over a keystoneauth1 session, admin credentials (host names, all projects, os-reset_status)."""

    def __init__(self, session, *, interface: str | None = "internal", region_name: str | None = None,
                 timeout: float = 30.0, endpoint_override: str | None = None):
        self._api = osapi.adapter(session, "block-storage", interface=interface, region_name=region_name,
                                  endpoint_override=endpoint_override)
        self.timeout = float(timeout)

    @classmethod
    def from_config(cls, cfg) -> "CinderApi":
        session, region = osapi.cloud_session(cfg, lambda why: CinderError("config", f"cloud {cfg.cloud!r}", why))
        return cls(session, interface=region.get_interface("block-storage") or cfg.interface,
                   region_name=region.get_region_name("block-storage") or cfg.region_name or None,
                   timeout=cfg.api_timeout, endpoint_override=region.get_endpoint("block-storage"))

    # -- plumbing ----------------------------------------------------------------------------------------------------
    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _request(self, call: str, target: str, method: str, path: str, *, deadline: float,
                 microversion: str | None = None, body: Any = None, params: dict | None = None,
                 missing_ok: bool = False) -> Any:
        """One HTTP request within what is left of `deadline`: the decoded JSON body (None when empty, or on 404
        with missing_ok)."""
        from keystoneauth1 import exceptions as ks_exc      # with the session: idle paths never load it
        left = deadline - time.monotonic()
        if left <= 0:
            raise CinderError(call, target, f"no answer within {self.timeout:g}s", unavailable=True)
        kwargs: dict[str, Any] = {}
        if microversion:
            kwargs.update(microversion=microversion, microversion_service_type="block-storage")
        try:
            resp = self._api.request(path, method, json=body, params=params, raise_exc=False, timeout=left,
                                     **kwargs)
        except ks_exc.ClientException as e:
            failure = osapi.transport_failure(e, timeout=self.timeout,
                                              where=osapi.endpoint(self._api, "the block-storage endpoint"))
            raise CinderError(call, target, failure.detail, failure.status, failure.unavailable) from None
        if resp.status_code == 404 and missing_ok:
            return None
        if resp.status_code >= 400:
            raise CinderError(call, target, f"HTTP {resp.status_code}: {osapi.error_message(resp)}",
                              resp.status_code)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise CinderError(call, target, f"HTTP {resp.status_code} with a body that is not JSON",
                              resp.status_code) from None

    def _pages(self, call: str, target: str, path: str, key: str, params: dict, microversion: str,
               deadline: float) -> list[dict]:
        """Every item of a paged list (marker = the last item's id), within `deadline`."""
        params = {**params, "limit": PAGE}
        found: list[dict] = []
        seen: set[str] = set()
        while True:
            doc = self._request(call, target, "GET", path, deadline=deadline, microversion=microversion,
                                params=params)
            page = [d for d in _list(doc, key) if isinstance(d, dict)]
            fresh = [d for d in page if str(d.get("id")) not in seen]
            seen.update(str(d.get("id")) for d in fresh)
            found += fresh
            if not fresh or not _has_next(doc, key):      # no progress: a broken marker must not loop
                return found
            params["marker"] = page[-1].get("id")

    # -- volumes -----------------------------------------------------------------------------------------------------
    def volume(self, volume_id: str) -> Volume | None:
        """The volume (admin view: host, migration_status, attachments with host_name); None when cinder has none."""
        doc = self._request("volume", volume_id, "GET", f"/volumes/{volume_id}", deadline=self._deadline(),
                            microversion=VOLUMES_MV, missing_ok=True)
        if doc is None:
            return None
        volume = parse_volume(doc.get("volume") if isinstance(doc, dict) else None)
        if volume is None:
            raise CinderError("volume", volume_id, "cinder answered without a volume")
        return volume

    def volumes(self, **filters: Any) -> list[Volume]:
        """Every volume of every project matching cinder's filters (e.g. host=, status=), all pages."""
        target = ",".join(f"{k}={v}" for k, v in sorted(filters.items())) or "all"
        found = self._pages("volumes", target, "/volumes/detail", "volumes", {"all_tenants": "1", **filters},
                            VOLUMES_MV, self._deadline())
        return [v for v in map(parse_volume, found) if v is not None]

    def attachments(self, server_id: str) -> list[Attachment]:
        """Every attachment record of the server (all projects, any status); host_name is None here (not in the
        attachments API): volumes_of() gives the attached ones with their host."""
        found = self._pages("attachments", server_id, "/attachments/detail", "attachments",
                            {"all_tenants": "1", "instance_id": server_id}, ATTACHMENTS_MV, self._deadline())
        return [a for a in map(parse_attachment, found) if a is not None and a.server_id == server_id]

    def volumes_of(self, server_id: str) -> list[Volume]:
        """The volumes the server has attachment records on (any status), each as cinder shows it now; a volume
        deleted meanwhile is left out. One bound for the whole: attachments, then each volume."""
        deadline = self._deadline()
        records = self._pages("volumes_of", server_id, "/attachments/detail", "attachments",
                              {"all_tenants": "1", "instance_id": server_id}, ATTACHMENTS_MV, deadline)
        ids = dict.fromkeys(a.volume_id for a in map(parse_attachment, records)
                            if a is not None and a.server_id == server_id and a.volume_id)
        found = []
        for volume_id in ids:
            doc = self._request("volumes_of", server_id, "GET", f"/volumes/{volume_id}", deadline=deadline,
                                microversion=VOLUMES_MV, missing_ok=True)
            volume = parse_volume(doc.get("volume")) if isinstance(doc, dict) else None
            if volume is not None:
                found.append(volume)
        return found

    # -- services ----------------------------------------------------------------------------------------------------
    def services(self, binary: str | None = None) -> list[VolumeService]:
        params = {"binary": binary} if binary else {}
        doc = self._request("services", binary or "all", "GET", "/os-services", deadline=self._deadline(),
                            microversion=SERVICES_MV, params=params)
        return [s for s in map(parse_service, _list(doc, "services"))
                if s is not None and (binary is None or s.binary == binary)]

    # -- actions -----------------------------------------------------------------------------------------------------
    def reset_status(self, kind: str, resource_id: str, values: Mapping[str, Any]) -> None:
        """POST /{volumes|backups}/{id}/action {"os-reset_status": values} (admin). For a volume,
        attach_status=detached also drops its attachment records (cinder's admin_actions)."""
        path = {"volume": "volumes", "volume_migration": "volumes", "backup": "backups"}[kind]
        self._request("reset_status", resource_id, "POST", f"/{path}/{resource_id}/action",
                      deadline=self._deadline(), body={"os-reset_status": dict(values)})
