"""The block-storage API: what crashup asks cinder (today os-reset_status, for the sweep); wave 2's volume-aware
recovery adds attachments here. Session, adapter and error lines are osapi's, as nova's client's."""
from __future__ import annotations

from typing import Any, Mapping

from crashup_lib import osapi
from crashup_lib.log import error_line


class CinderError(Exception):
    """A failed block-storage API call, one line: 'cinder <call> <id>: HTTP <status>: <cinder's message>'."""

    def __init__(self, call: str, target: str, detail: str, status: int | None = None):
        self.status = status
        super().__init__(error_line(f"cinder {call} {target}: {detail}", 1000))


class CinderApi:
    """os-reset_status over a keystoneauth1 session (the admin-only action; cinder's error body gives the line).
    Session, adapter and error lines are osapi's, as nova's client's."""

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
                   timeout=cfg.api_timeout)

    def reset_status(self, kind: str, resource_id: str, values: Mapping[str, Any]) -> None:
        """POST /{volumes|backups}/{id}/action {"os-reset_status": values}."""
        from keystoneauth1 import exceptions as ks_exc
        path = {"volume": "volumes", "volume_migration": "volumes", "backup": "backups"}[kind]
        call = "reset_status"
        try:
            resp = self._api.post(f"/{path}/{resource_id}/action", json={"os-reset_status": dict(values)},
                                  raise_exc=False, timeout=self.timeout)
        except ks_exc.ClientException as e:
            failure = osapi.transport_failure(e, timeout=self.timeout,
                                              where=osapi.endpoint(self._api, "the block-storage endpoint"))
            raise CinderError(call, resource_id, failure.detail, failure.status) from None
        if resp.status_code >= 400:
            raise CinderError(call, resource_id, f"HTTP {resp.status_code}: {osapi.error_message(resp)}",
                              resp.status_code)
