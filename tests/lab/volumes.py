"""Volumes for lab tests and the demo, over real HTTP against the lab's nova and cinder (no keystone: the admin token).

Standard library only.  A volume of the lab backend is a file (tests/lab/cinderbox/labdriver.py): `path()` names it,
`write_marker()` / `read_marker()` put bytes at its start and read them back (after an evacuation, say).

    v = Volumes.lab()                                   # the running lab's nova and cinder
    boot = v.create(bootable=True)                      # a blank bootable volume (the lab has no glance for cinder)
    server = v.boot_from_volume("bfv-1", boot["id"], host="compute1")
    data = v.create()
    v.attach(other_server_id, data["id"])               # a second volume on an image-backed server
    v.attachments(data["id"])                           # [{"server_id", "host_name", "attachment_id", ...}]
"""
from __future__ import annotations

import json
import pathlib
import time
import urllib.error
import urllib.request
from typing import Any

from tests.lab import topology
from tests.lab.cinder import api_message
from tests.lab.nova_env import ADMIN_TOKEN, IMAGE_ID

CINDER_MICROVERSION = "3.67"          # project-less URLs
NOVA_MICROVERSION = "2.95"            # `host` at boot (2.74), networks "none" (2.37)
MARKER_SIZE = 4096


class VolumeError(RuntimeError):
    """One line: the call, the HTTP status and the service's message; or what was not reached in time."""



class Volumes:
    def __init__(self, nova_url: str, cinder_url: str, volume_dir: str | pathlib.Path, *, token: str = ADMIN_TOKEN,
                 timeout: float = 30.0):
        self.nova_url = nova_url.rstrip("/")
        self.cinder_url = cinder_url.rstrip("/")
        self.volume_dir = pathlib.Path(volume_dir)
        self.token = token
        self.timeout = timeout

    @classmethod
    def lab(cls) -> "Volumes":
        from tests.lab import lab
        return cls(topology.nova_url(), topology.cinder_url(), lab.cinder().volume_dir)

    # -- HTTP ------------------------------------------------------------------------------------------------------
    def _call(self, base: str, version_header: tuple[str, str], method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method, headers={
            "X-Auth-Token": self.token, "Content-Type": "application/json", "Accept": "application/json",
            version_header[0]: version_header[1]})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise VolumeError(f"{method} {base + path}: HTTP {e.code}: {api_message(e.read())}") from None
        return json.loads(raw) if raw else None

    def cinder(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(self.cinder_url, ("OpenStack-API-Version", f"volume {CINDER_MICROVERSION}"), method, path,
                          body)

    def nova(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(self.nova_url, ("OpenStack-API-Version", f"compute {NOVA_MICROVERSION}"), method, path,
                          body)

    # -- volumes ---------------------------------------------------------------------------------------------------
    def create(self, size: int = 1, name: str | None = None, *, bootable: bool = False,
               timeout: float = 60.0) -> dict:
        """A new volume, available; bootable: marked so (nova refuses to boot from one that is not)."""
        body = {"size": size, **({"name": name} if name else {})}
        vol = self.cinder("POST", "/volumes", {"volume": body})["volume"]
        vol = self.wait(vol["id"], "available", timeout)
        if bootable:
            self.cinder("POST", f"/volumes/{vol['id']}/action", {"os-set_bootable": {"bootable": True}})
            vol = self.get(vol["id"])
        return vol

    def get(self, volume_id: str) -> dict:
        return self.cinder("GET", f"/volumes/{volume_id}")["volume"]

    def wait(self, volume_id: str, status: str | tuple[str, ...], timeout: float = 60.0) -> dict:
        """The volume once its status is `status` (one of them); VolumeError at 'error' or after `timeout`."""
        wanted = (status,) if isinstance(status, str) else status
        limit = time.monotonic() + timeout
        while True:
            vol = self.get(volume_id)
            if vol["status"] in wanted:
                return vol
            if vol["status"].startswith("error") and not any(w.startswith("error") for w in wanted):
                raise VolumeError(f"volume {volume_id} went {vol['status']} (wanted {'/'.join(wanted)})")
            if time.monotonic() > limit:
                raise VolumeError(f"volume {volume_id} still {vol['status']} after {timeout:g}s "
                                  f"(wanted {'/'.join(wanted)})")
            time.sleep(0.1)

    def delete(self, volume_id: str, timeout: float = 60.0) -> None:
        """Delete the volume (force: even if stuck) and wait until cinder no longer knows it."""
        self.cinder("POST", f"/volumes/{volume_id}/action", {"os-force_delete": {}})
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            try:
                self.get(volume_id)
            except VolumeError as e:
                if "HTTP 404" in str(e):
                    return
                raise
            time.sleep(0.1)
        raise VolumeError(f"volume {volume_id} not deleted after {timeout:g}s")

    def list(self) -> list[dict]:
        return self.cinder("GET", "/volumes/detail?all_tenants=1")["volumes"]

    def attachments(self, volume_id: str) -> list[dict]:
        """The volume's attachments as cinder shows them: server_id, host_name (the connector's host: the nova host
        of the attachment), attachment_id, attached_at, device."""
        return self.get(volume_id)["attachments"]

    def attachment_records(self, volume_id: str) -> list[dict]:
        """cinder's attachment records of the volume (GET /attachments/detail): id, status, instance, attach_mode,
        connection_info; reserved ones (no connector yet) included."""
        return self.cinder("GET", f"/attachments/detail?volume_id={volume_id}&all_tenants=1")["attachments"]

    # -- the file on the backend -----------------------------------------------------------------------------------
    def path(self, volume_id: str) -> pathlib.Path:
        return self.volume_dir / f"volume-{volume_id}"

    def write_marker(self, volume_id: str, text: str) -> None:
        """`text` at the start of the volume (what a guest would write to its disk), flushed to the file."""
        data = text.encode()
        if len(data) > MARKER_SIZE:
            raise VolumeError(f"marker longer than {MARKER_SIZE} bytes")
        with open(self.path(volume_id), "r+b") as f:
            f.write(data.ljust(MARKER_SIZE, b"\0"))
            f.flush()

    def read_marker(self, volume_id: str) -> str:
        with open(self.path(volume_id), "rb") as f:
            return f.read(MARKER_SIZE).rstrip(b"\0").decode(errors="replace")

    # -- servers ---------------------------------------------------------------------------------------------------
    def _boot(self, server: dict, wait: float) -> dict:
        created = self.nova("POST", "/servers", {"server": {"flavorRef": "1", "networks": "none", **server}})
        return self.wait_server(created["server"]["id"], "ACTIVE", wait) if wait else created["server"]

    def boot(self, name: str, host: str | None = None, *, wait: float = 180.0) -> dict:
        """An image-backed server (the lab image), ACTIVE (on `host` if given)."""
        return self._boot({"name": name, "imageRef": IMAGE_ID, **({"host": host} if host else {})}, wait)

    def boot_from_volume(self, name: str, volume_id: str, host: str | None = None, *,
                         delete_on_termination: bool = False, wait: float = 180.0) -> dict:
        """A server whose root disk is the (bootable) volume, ACTIVE (on `host` if given)."""
        bdm = {"boot_index": 0, "uuid": volume_id, "source_type": "volume", "destination_type": "volume",
               "delete_on_termination": delete_on_termination}
        return self._boot({"name": name, "imageRef": "", "block_device_mapping_v2": [bdm],
                           **({"host": host} if host else {})}, wait)

    def server(self, server_id: str) -> dict:
        return self.nova("GET", f"/servers/{server_id}")["server"]

    def wait_server(self, server_id: str, status: str | tuple[str, ...], timeout: float = 180.0) -> dict:
        """The server once its status is `status` (one of them) with no task; VolumeError at ERROR or timeout."""
        wanted = (status,) if isinstance(status, str) else status
        limit = time.monotonic() + timeout
        while True:
            s = self.server(server_id)
            if s["status"] in wanted and not s.get("OS-EXT-STS:task_state"):
                return s
            if s["status"] == "ERROR" and "ERROR" not in wanted:
                raise VolumeError(f"server {server_id} went ERROR: {s.get('fault', {}).get('message', '?')}")
            if time.monotonic() > limit:
                raise VolumeError(f"server {server_id} still {s['status']}/{s.get('OS-EXT-STS:task_state')} after "
                                  f"{timeout:g}s (wanted {status})")
            time.sleep(0.2)

    def host_of(self, server_id: str) -> str:
        return self.server(server_id)["OS-EXT-SRV-ATTR:host"]

    def attach(self, server_id: str, volume_id: str, *, timeout: float = 60.0) -> dict:
        """Attach the volume to the server through nova (os-volume_attachments); the volume once in-use."""
        self.nova("POST", f"/servers/{server_id}/os-volume_attachments", {"volumeAttachment": {"volumeId": volume_id}})
        return self.wait(volume_id, "in-use", timeout)

    def server_volumes(self, server_id: str) -> list[dict]:
        """nova's view: the server's volume attachments (volumeId, attachment_id, device, ...)."""
        return self.nova("GET", f"/servers/{server_id}/os-volume_attachments")["volumeAttachments"]
