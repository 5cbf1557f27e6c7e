"""The glance filesystem store backend: an image's data in the store (or staged) against its record (`observe`),
and the files of a store directory (`list_files`, for the sweep's orphan pass)."""
from __future__ import annotations

import hashlib
import os
import urllib.parse
from typing import Any, Mapping, Sequence

from crashup_lib.health.bound import Bounded, time_left
from crashup_lib.health.model import RESOURCE, HealthError, Observation, Resource, StoredFile
from crashup_lib.health.realities import image_data_reality
from crashup_lib.log import redact


class GlanceFileBackend:
    """glance's filesystem store: the image's data file in `datadirs` (glance's filesystem_store_datadir(s): the
    file is named by the image id) or at a file:// location of the record, checked against the record's size and
    digest (os_hash_algo/os_hash_value, else the md5 `checksum`); the staging area (`staging_dir`, glance's
    node_staging_uri, default file:///tmp/staging/) for uploads and imports that did not finish.
    A location in another store (rbd://, swift+...) cannot be told from here: unknown.
    `verify_digest=False` checks sizes only (hashing a large image reads all of it: give the timeout room)."""
    level = RESOURCE

    def __init__(self, datadirs: Sequence[str] = ("/var/lib/glance/images",), *, staging_dir: str | None =
                 "/tmp/staging", verify_digest: bool = True, timeout: float = 60.0, name: str = "glance-file"):
        self.datadirs, self.staging_dir = tuple(datadirs), staging_dir
        self.verify_digest, self.timeout, self.name = verify_digest, timeout, name
        self._listing = Bounded()

    def list_files(self, datadir: str) -> list[StoredFile]:
        """The regular files of one store directory, within `timeout` (an NFS store can hang). HealthError, one
        line, when it cannot be listed."""
        return self._listing.call(f"{self.name} list:{datadir}", lambda: _files(datadir), time_left(self.timeout),
                                  f"{self.name} {datadir}: listing files")

    def _candidates(self, resource: Resource) -> list[str]:
        paths = []
        for location in resource.record.get("locations") or ():
            url = location.get("url") if isinstance(location, Mapping) else str(location)
            parsed = urllib.parse.urlparse(url or "")
            if parsed.scheme != "file":
                raise HealthError(f"image location {redact(url)!r} is not in a filesystem store")
            paths.append(urllib.parse.unquote(parsed.path))
        return paths or [os.path.join(d, resource.id) for d in self.datadirs]

    def observe(self, resource: Resource) -> Observation:
        record = resource.record
        expected = record.get("size")
        paths = [p for p in self._candidates(resource) if os.path.isfile(p)]
        staged = bool(self.staging_dir) and os.path.isfile(os.path.join(self.staging_dir, resource.id))
        stored = os.path.getsize(paths[0]) if paths else None
        digest_ok = None
        if stored is not None and stored == expected and self.verify_digest:
            digest_ok = _digest_matches(paths[0], record)
        reality = image_data_reality(stored, staged, expected, digest_ok)
        if paths:
            seen = f"{paths[0]}: {stored} bytes (recorded {expected})"
            seen += {None: "", True: ", digest matches", False: ", digest differs"}[digest_ok]
        else:
            seen = "no data in " + ", ".join(self._candidates(resource))
        if staged:
            seen += f"; staged in {self.staging_dir}"
        return Observation(reality, seen, self.name)


def _files(directory: str) -> list[StoredFile]:
    with os.scandir(directory) as entries:
        return [StoredFile(e.name, e.path, e.stat(follow_symlinks=False).st_size) for e in entries
                if e.is_file(follow_symlinks=False)]


def _digest_matches(path: str, record: Mapping[str, Any]) -> bool | None:
    algo, wanted = record.get("os_hash_algo"), record.get("os_hash_value")
    if not (algo and wanted):
        algo, wanted = "md5", record.get("checksum")
    if not wanted:
        return None
    h = hashlib.new(algo, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == wanted
